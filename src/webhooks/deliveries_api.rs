//! The built-in delivery status endpoint: `GET <webhooks.deliveries_path>` lists the
//! caller's organization's deliveries, newest first, optionally of one status.
//!
//! Query: `status=pending|delivered|failed|dead`, `limit` (1-500, default 50) and `cursor`
//! (the `next_cursor` of the previous page). The caller's key must hold `webhooks.scope`.
//! The organization is the key's; a cursor names the organization (and status) it was
//! issued for, and another organization's cursor is answered like an unknown path (`404`),
//! so it reveals nothing.
//!
//! Each delivery shows ids, status, attempts, the next attempt's time, the last status code,
//! latency and error kind: never the receiver's answer and never the event's data.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::delivery::{DeliveryId, DeliveryRecord, DeliveryStatus};
use super::outbox::Position;
use crate::body::{full_body, ProxyBody};
use crate::gate::authn::Authenticated;
use crate::keys::hex;
use crate::orgs::is_org_id;
use crate::problem::{Problem, ProblemCode};
use crate::state::State;

/// Deliveries per page when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;

/// Largest `limit`.
pub const MAX_LIMIT: usize = 500;

/// Version tag at the start of every cursor.
const CURSOR_VERSION: &str = "w1";

/// Whether `method path` is the delivery status endpoint.
pub fn is_endpoint(method: &Method, path: &str, deliveries_path: Option<&str>) -> bool {
    method == Method::GET && deliveries_path == Some(path)
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only deliveries in this status.
    pub status: Option<DeliveryStatus>,
    /// Deliveries per page.
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// Where a page ended, for one organization and status filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    org: String,
    status: Option<DeliveryStatus>,
    position: Position,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        let status = self.status.map_or("all", DeliveryStatus::as_str);
        let plain = format!(
            "{}|{}|{}|{}",
            self.org, status, self.position.created_ms, self.position.id
        );
        let mut text = String::from(CURSOR_VERSION);
        hex::encode_into(plain.as_bytes(), &mut text);
        text
    }

    /// Reads a cursor this module encoded; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let body = text.strip_prefix(CURSOR_VERSION)?;
        if body.len() % 2 != 0 || body.len() > 512 || !body.is_ascii() {
            return None;
        }
        let bytes = hex::decode_vec(body);
        let plain = String::from_utf8(bytes?).ok()?;
        let mut parts = plain.split('|');
        let org = parts.next()?.to_owned();
        let status = match parts.next()? {
            "all" => None,
            other => Some(DeliveryStatus::parse(other)?),
        };
        let created_ms = parts.next()?.parse().ok()?;
        let id: DeliveryId = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !is_org_id(&org) {
            return None;
        }
        Some(Self {
            org,
            status,
            position: Position { created_ms, id },
        })
    }
}

/// Parses the query string; errors are fixed text that never repeats the request.
pub fn parse(query: Option<&str>) -> Result<Query, &'static str> {
    let mut parsed = Query {
        status: None,
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| "query parameters must be UTF-8")?;
        let name = match name {
            "status" => "status",
            "limit" => "limit",
            "cursor" => "cursor",
            _ => {
                return Err("unknown query parameter; this endpoint takes status, limit and cursor")
            }
        };
        if seen.contains(&name) {
            return Err("each query parameter may appear only once");
        }
        seen.push(name);
        match name {
            "status" => {
                parsed.status = Some(
                    DeliveryStatus::parse(&value)
                        .ok_or("`status` must be one of pending, delivered, failed, dead")?,
                );
            }
            "limit" => {
                parsed.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or("`limit` must be a whole number from 1 to 500")?;
            }
            _ => {
                parsed.cursor = Some(Cursor::decode(&value).ok_or(
                    "`cursor` must be a next_cursor value returned by this API, unchanged",
                )?);
            }
        }
    }
    Ok(parsed)
}

/// One delivery as its tenant sees it.
#[derive(Debug, Serialize)]
struct View<'a> {
    id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    subscription_id: &'a str,
    status: &'static str,
    attempts: u32,
    created_at: String,
    next_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    last_latency_ms: Option<u64>,
    last_error: Option<&'static str>,
}

/// Unix milliseconds as RFC 3339 UTC text with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

impl<'a> View<'a> {
    fn new(record: &'a DeliveryRecord) -> Self {
        Self {
            id: record.id.as_str(),
            event_id: record.event_id.as_str(),
            event_type: &record.event_type,
            subscription_id: &record.subscription_id,
            status: record.status.as_str(),
            attempts: record.attempts,
            created_at: rfc3339_ms(record.created_ms),
            next_attempt_at: record.next_attempt_ms.map(rfc3339_ms),
            last_status_code: record.last_status_code,
            last_latency_ms: record.last_latency_ms,
            last_error: record.last_error.map(|kind| kind.as_str()),
        }
    }
}

#[derive(Debug, Serialize)]
struct PageView<'a> {
    deliveries: Vec<View<'a>>,
    page: PageInfo,
}

#[derive(Debug, Serialize)]
struct PageInfo {
    limit: usize,
    next_cursor: Option<String>,
}

/// Answers the endpoint for an authenticated caller.
pub async fn answer(
    query: Option<&str>,
    caller: &Authenticated,
    state: &State,
) -> Result<Response<ProxyBody>, Problem> {
    let policy = state.policies.current();
    let scope = &policy.config.webhooks.scope;
    if !caller.key.scopes.contains(scope) {
        return Err(Problem::new(ProblemCode::PermDenied).with_detail(format!(
            "webhook deliveries require the scope `{scope}`, which the API key does not have"
        )));
    }
    let query = parse(query)
        .map_err(|detail| Problem::new(ProblemCode::InvalidQuery).with_detail(detail))?;
    let org = caller.org.id.clone();
    let after = match &query.cursor {
        Some(cursor) if cursor.org != org => {
            return Err(Problem::new(ProblemCode::RouteUnknown)
                .with_detail("no route of this API matches the request"))
        }
        Some(cursor) if cursor.status != query.status => {
            return Err(Problem::new(ProblemCode::InvalidQuery)
                .with_detail("`cursor` belongs to a listing with another `status`"))
        }
        Some(cursor) => Some(cursor.position.clone()),
        None => None,
    };
    let outbox = state.deliveries.outbox().clone();
    let limit = query.limit;
    let status = query.status;
    let lookup = org.clone();
    let found = tokio::task::spawn_blocking(move || {
        outbox.list(Some(&lookup), status, after.as_ref(), limit + 1)
    })
    .await;
    let mut records = match found {
        Ok(Ok(records)) => records,
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot read the webhook outbox");
            return Err(unavailable());
        }
        Err(_) => return Err(unavailable()),
    };
    let next_cursor = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|last| {
            Cursor {
                org: org.clone(),
                status,
                position: Position {
                    created_ms: last.created_ms,
                    id: last.id.clone(),
                },
            }
            .encode()
        })
    } else {
        None
    };
    let page = PageView {
        deliveries: records.iter().map(View::new).collect(),
        page: PageInfo { limit, next_cursor },
    };
    let body = serde_json::to_vec(&page).map_err(|_| unavailable())?;
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn unavailable() -> Problem {
    Problem::new(ProblemCode::WebhookUnavailable)
        .with_detail("webhook deliveries cannot be read right now; retry shortly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = Cursor {
            org: "acme".to_owned(),
            status: Some(DeliveryStatus::Dead),
            position: Position {
                created_ms: 42,
                id: DeliveryId::generate().unwrap(),
            },
        };
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text), Some(cursor.clone()));
        let all = Cursor {
            status: None,
            ..cursor
        };
        assert_eq!(Cursor::decode(&all.encode()), Some(all));
        for bad in [
            "",
            "w1",
            "w1zz",
            "c1abcd",
            &text[..text.len() - 2],
            "w14142",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_parse_strictly() {
        let query = parse(Some("status=dead&limit=5")).unwrap();
        assert_eq!(query.status, Some(DeliveryStatus::Dead));
        assert_eq!(query.limit, 5);
        assert_eq!(parse(None).unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "status=lost",
            "limit=0",
            "limit=501",
            "limit=x",
            "cursor=abc",
            "status=dead&status=dead",
            "org=other",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
