//! The built-in query endpoint: `GET <audit.query_path>` lists the caller's organization's
//! records, `GET <audit.query_path>/<seq>` shows one.
//!
//! The caller's key must hold `audit.query_scope` (default `audit:read`). The organization is
//! the key's; nothing in the request can name another. A record of another organization, an
//! unknown `seq` and another organization's cursor are all `404 route.unknown`, exactly like a
//! path that does not exist, so the answer is no oracle for what other tenants have.
//!
//! Answers are `application/json` and never cached:
//! `{"events":[…records, newest first…],"page":{"limit":50,"next_cursor":"c1…"|null}}`.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};

use super::query::{self, Query, QueryRunError};
use super::Audit;
use crate::body::{full_body, ProxyBody};
use crate::config::AuditConfig;
use crate::gate::authn::Authenticated;
use crate::problem::{Problem, ProblemCode};

/// Which audit endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The list of the caller's records.
    List,
    /// One record by `seq`; `None` when the last segment is not a sequence number.
    One(Option<u64>),
}

/// The audit endpoint `method path` asks for, if any (only `GET` is served).
pub fn endpoint(method: &Method, path: &str, config: &AuditConfig) -> Option<Endpoint> {
    if method != Method::GET {
        return None;
    }
    let base = config.query_path.as_deref()?;
    if path == base {
        return Some(Endpoint::List);
    }
    let rest = path.strip_prefix(base)?.strip_prefix('/')?;
    let seq = (!rest.is_empty() && rest.len() <= 20 && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| rest.parse::<u64>().ok())
        .flatten()
        .filter(|seq| *seq > 0);
    Some(Endpoint::One(seq))
}

/// Answers an audit endpoint for an authenticated caller.
pub async fn answer(
    endpoint: Endpoint,
    query: Option<&str>,
    caller: &Authenticated,
    audit: &Audit,
    config: &AuditConfig,
) -> Result<Response<ProxyBody>, Problem> {
    if !caller.key.scopes.contains(&config.query_scope) {
        return Err(Problem::new(ProblemCode::PermDenied).with_detail(format!(
            "the audit trail requires the scope `{}`, which the API key does not have",
            config.query_scope
        )));
    }
    let Some(index) = audit.index().cloned() else {
        return Err(not_found());
    };
    let org = caller.org.id.clone();
    match endpoint {
        Endpoint::List => {
            let query = Query::parse(query).map_err(|error| {
                Problem::new(ProblemCode::InvalidQuery).with_detail(error.to_string())
            })?;
            let limit = query.limit;
            let page = tokio::task::spawn_blocking(move || query::run(&index, &org, &query))
                .await
                .map_err(|_| index_unavailable())?;
            match page {
                Ok(page) => {
                    let mut body = Vec::with_capacity(256 + page.events.len() * 400);
                    body.extend_from_slice(b"{\"events\":[");
                    for (n, event) in page.events.iter().enumerate() {
                        if n > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(&event.line);
                    }
                    body.extend_from_slice(
                        format!("],\"page\":{{\"limit\":{limit},\"next_cursor\":").as_bytes(),
                    );
                    match page.next_cursor {
                        Some(cursor) => {
                            body.push(b'"');
                            body.extend_from_slice(cursor.encode().as_bytes());
                            body.push(b'"');
                        }
                        None => body.extend_from_slice(b"null"),
                    }
                    body.extend_from_slice(b"}}");
                    Ok(json(body))
                }
                Err(QueryRunError::ForeignCursor) => Err(not_found()),
                Err(QueryRunError::Store(error)) => {
                    tracing::error!(%error, "cannot read the audit index");
                    Err(index_unavailable())
                }
            }
        }
        Endpoint::One(None) => Err(not_found()),
        Endpoint::One(Some(seq)) => {
            if query.is_some_and(|q| !q.is_empty()) {
                return Err(Problem::new(ProblemCode::InvalidQuery)
                    .with_detail("a single audit record takes no query parameters"));
            }
            let found = tokio::task::spawn_blocking(move || query::one(&index, &org, seq))
                .await
                .map_err(|_| index_unavailable())?;
            match found {
                Ok(Some(entry)) => Ok(json(entry.line)),
                Ok(None) => Err(not_found()),
                Err(error) => {
                    tracing::error!(%error, "cannot read the audit index");
                    Err(index_unavailable())
                }
            }
        }
    }
}

fn not_found() -> Problem {
    Problem::new(ProblemCode::RouteUnknown).with_detail("no route of this API matches the request")
}

fn index_unavailable() -> Problem {
    Problem::new(ProblemCode::AuditUnavailable)
        .with_detail("the audit trail cannot be read right now; retry shortly")
}

fn json(body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: Option<&str>) -> AuditConfig {
        AuditConfig {
            query_path: path.map(str::to_owned),
            ..AuditConfig::default()
        }
    }

    #[test]
    fn only_get_on_the_configured_path_and_its_children_is_an_endpoint() {
        let on = config(Some("/v1/audit/events"));
        let get = Method::GET;
        assert_eq!(
            endpoint(&get, "/v1/audit/events", &on),
            Some(Endpoint::List)
        );
        assert_eq!(
            endpoint(&get, "/v1/audit/events/42", &on),
            Some(Endpoint::One(Some(42)))
        );
        assert_eq!(
            endpoint(&get, "/v1/audit/events/0", &on),
            Some(Endpoint::One(None))
        );
        assert_eq!(
            endpoint(&get, "/v1/audit/events/John%20Smith", &on),
            Some(Endpoint::One(None))
        );
        assert_eq!(endpoint(&get, "/v1/audit/eventsx", &on), None);
        assert_eq!(endpoint(&Method::POST, "/v1/audit/events", &on), None);
        assert_eq!(endpoint(&get, "/v1/audit/events", &config(None)), None);
    }
}
