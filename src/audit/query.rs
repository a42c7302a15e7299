//! A tenant's view of the audit trail: its own records only, newest first, filtered, in pages
//! linked by opaque keyset cursors.
//!
//! Isolation is structural: the organization comes from the caller's verified key, never from
//! the request, and every read goes through [`AuditIndex`] keys that start with that
//! organization. A cursor names the organization it was issued for; presented by another
//! organization it is answered like an unknown resource (404), so a leaked cursor reveals
//! nothing.
//!
//! A page examines at most [`SCAN_BUDGET`] index entries. A filter that matches rarely can
//! therefore return fewer than `limit` events (even none) together with a `next_cursor`:
//! clients page on while a cursor is returned, as with any keyset API.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::index::{AuditIndex, IndexEntry};
use super::record::{is_route_name, StoredRecord};
use super::time;
use crate::keys::hex;
use crate::orgs::is_org_id;
use crate::store::StoreError;

/// Events per page when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;

/// Largest `limit`.
pub const MAX_LIMIT: usize = 500;

/// Most index entries one page examines.
pub const SCAN_BUDGET: usize = 10_000;

/// Version tag at the start of every cursor, so the format can change.
const CURSOR_VERSION: &str = "c1";

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Events per page, 1-500.
    pub limit: usize,
    /// Only events at or after this instant (microseconds).
    pub since: Option<u64>,
    /// Only events before this instant (microseconds).
    pub until: Option<u64>,
    /// Only events of this route.
    pub route: Option<String>,
    /// Only events with this status.
    pub status: Option<u16>,
    /// Only events with this code.
    pub code: Option<String>,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            since: None,
            until: None,
            route: None,
            status: None,
            code: None,
            cursor: None,
        }
    }
}

/// A query parameter the endpoint cannot use. Messages are fixed text: they never repeat
/// what the request sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `limit` is not 1-500.
    #[error("`limit` must be a whole number from 1 to 500")]
    Limit,
    /// `since` is not an ISO-8601 instant.
    #[error("`since` must be an ISO-8601 time with an offset, e.g. 2026-11-23T08:00:00Z")]
    Since,
    /// `until` is not an ISO-8601 instant.
    #[error("`until` must be an ISO-8601 time with an offset, e.g. 2026-11-24T08:00:00Z")]
    Until,
    /// `since` is not before `until`.
    #[error("`since` must be before `until`")]
    Range,
    /// `route` is not a route name.
    #[error("`route` must be a route name such as notes.read")]
    Route,
    /// `status` is not an HTTP status.
    #[error("`status` must be an HTTP status from 100 to 599")]
    Status,
    /// `code` is not a problem code.
    #[error("`code` must be a problem code such as auth.invalid")]
    Code,
    /// `cursor` was not issued by this API.
    #[error("`cursor` must be a next_cursor value returned by this API, unchanged")]
    Cursor,
    /// A parameter appears twice.
    #[error("each query parameter may appear only once")]
    Repeated,
    /// A parameter this endpoint does not know.
    #[error("unknown query parameter; this endpoint takes limit, since, until, route, status, code and cursor")]
    Unknown,
}

impl Query {
    /// Parses a query string (`None`: no query).
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut parsed = Self::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for pair in query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name);
            let value = decode(value);
            let field = match name.as_ref() {
                "limit" => "limit",
                "since" => "since",
                "until" => "until",
                "route" => "route",
                "status" => "status",
                "code" => "code",
                "cursor" => "cursor",
                _ => return Err(QueryError::Unknown),
            };
            if seen.contains(&field) {
                return Err(QueryError::Repeated);
            }
            seen.push(field);
            parsed.set(field, &value)?;
        }
        if let (Some(since), Some(until)) = (parsed.since, parsed.until) {
            if since >= until {
                return Err(QueryError::Range);
            }
        }
        Ok(parsed)
    }

    fn set(&mut self, field: &str, value: &str) -> Result<(), QueryError> {
        match field {
            "limit" => {
                self.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(QueryError::Limit)?;
            }
            "since" => self.since = Some(time::parse_iso8601(value).ok_or(QueryError::Since)?),
            "until" => self.until = Some(time::parse_iso8601(value).ok_or(QueryError::Until)?),
            "route" => {
                if !is_route_name(value) {
                    return Err(QueryError::Route);
                }
                self.route = Some(value.to_owned());
            }
            "status" => {
                self.status = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or(QueryError::Status)?,
                );
            }
            "code" => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || matches!(b, b'.' | b'_'));
                if !valid {
                    return Err(QueryError::Code);
                }
                self.code = Some(value.to_owned());
            }
            _ => self.cursor = Some(Cursor::decode(value).ok_or(QueryError::Cursor)?),
        }
        Ok(())
    }

    fn filters_fields(&self) -> bool {
        self.route.is_some() || self.status.is_some() || self.code.is_some()
    }

    fn in_window(&self, ts: u64) -> bool {
        self.since.is_none_or(|since| ts >= since) && self.until.is_none_or(|until| ts < until)
    }

    fn matches(&self, entry: &IndexEntry) -> bool {
        if !self.filters_fields() {
            return true;
        }
        let Some(record) = StoredRecord::decode(&entry.line) else {
            return false;
        };
        self.route
            .as_ref()
            .is_none_or(|route| record.route.as_ref() == Some(route))
            && self
                .status
                .is_none_or(|status| record.status == Some(status))
            && self
                .code
                .as_ref()
                .is_none_or(|code| record.code.as_ref() == Some(code))
    }
}

fn decode(text: &str) -> Cow<'_, str> {
    let spaced: Cow<'_, str> = if text.contains('+') {
        Cow::Owned(text.replace('+', " "))
    } else {
        Cow::Borrowed(text)
    };
    match percent_decode_str(&spaced).decode_utf8_lossy() {
        Cow::Borrowed(_) => spaced,
        Cow::Owned(decoded) => Cow::Owned(decoded),
    }
}

/// Where a page ended: the organization it belongs to and the sequence number the next page
/// starts below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    org: String,
    before: u64,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        let mut text = String::from(CURSOR_VERSION);
        hex::encode_into(&self.before.to_be_bytes(), &mut text);
        hex::encode_into(self.org.as_bytes(), &mut text);
        text
    }

    /// Reads a cursor this module encoded; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let body = text.strip_prefix(CURSOR_VERSION)?;
        if body.len() % 2 != 0 || body.len() < 18 || !body.is_ascii() {
            return None;
        }
        let (seq_hex, org_hex) = body.split_at(16);
        let before = u64::from_be_bytes(hex::decode_array::<8>(seq_hex)?);
        let org_bytes = hex::decode_vec(org_hex);
        let org = String::from_utf8(org_bytes?).ok()?;
        is_org_id(&org).then_some(Self { org, before })
    }
}

/// One page of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Matching events, newest first.
    pub events: Vec<IndexEntry>,
    /// Where the next page starts, if there may be more.
    pub next_cursor: Option<Cursor>,
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryRunError {
    /// The cursor belongs to another organization: answered as not found.
    #[error("cursor of another organization")]
    ForeignCursor,
    /// The index could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `query` over `org`'s records. Blocking (reads the store and the files).
pub fn run(index: &AuditIndex, org: &str, query: &Query) -> Result<Page, QueryRunError> {
    let before = match &query.cursor {
        Some(cursor) if cursor.org != org => return Err(QueryRunError::ForeignCursor),
        Some(cursor) => Some(cursor.before),
        None => None,
    };
    let mut reader = index.reader();
    let mut events = Vec::new();
    let mut examined = 0usize;
    let mut last_seen = None;
    let mut exhausted = true;
    for located in index.newest_first(org, before) {
        let located = located?;
        let position = located.position;
        // Timestamps never decrease along the trail: nothing older can match `since`.
        if query.since.is_some_and(|since| position.ts < since) {
            break;
        }
        examined += 1;
        last_seen = Some(position.seq);
        if query.in_window(position.ts) {
            if let Some(entry) = reader.read(&located).filter(|entry| query.matches(entry)) {
                events.push(entry);
                if events.len() == query.limit {
                    exhausted = false;
                    break;
                }
            }
        }
        if examined >= SCAN_BUDGET {
            exhausted = false;
            break;
        }
    }
    let next_cursor = match (exhausted, last_seen) {
        (false, Some(seq)) if seq > 1 => Some(Cursor {
            org: org.to_owned(),
            before: seq,
        }),
        _ => None,
    };
    Ok(Page {
        events,
        next_cursor,
    })
}

/// Record `seq` of `org`, if it is `org`'s. Blocking.
pub fn one(index: &AuditIndex, org: &str, seq: u64) -> Result<Option<IndexEntry>, StoreError> {
    Ok(index
        .find(org, seq)?
        .and_then(|located| index.reader().read(&located)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::files;
    use crate::audit::index::{NewBlock, Position};
    use crate::store::Store;

    #[test]
    fn parses_every_parameter_and_refuses_mistakes_without_echoing_them() {
        let query = Query::parse(Some(
            "limit=10&since=2026-11-23T00:00:00%2B00:00&until=2026-11-24T00:00:00Z\
             &route=notes.read&status=404&code=route.unknown",
        ))
        .unwrap();
        assert_eq!(query.limit, 10);
        assert_eq!(query.since, time::parse_iso8601("2026-11-23T00:00:00Z"));
        assert_eq!(query.route.as_deref(), Some("notes.read"));
        assert_eq!(query.status, Some(404));
        assert_eq!(query.code.as_deref(), Some("route.unknown"));
        assert_eq!(Query::parse(None).unwrap(), Query::default());

        for (text, error) in [
            ("limit=0", QueryError::Limit),
            ("limit=501", QueryError::Limit),
            ("limit=ten", QueryError::Limit),
            ("since=yesterday", QueryError::Since),
            ("until=2026-11-23", QueryError::Range),
            ("route=/v1/patients/123", QueryError::Route),
            ("status=99", QueryError::Status),
            ("code=Auth.Invalid", QueryError::Code),
            ("cursor=abc", QueryError::Cursor),
            ("limit=1&limit=2", QueryError::Repeated),
            ("ssn=123-45-6789", QueryError::Unknown),
        ] {
            let text = if text.starts_with("until") {
                format!("since=2026-11-23&{text}")
            } else {
                text.to_owned()
            };
            assert_eq!(Query::parse(Some(&text)), Err(error), "{text}");
            assert!(!error.to_string().contains("123-45-6789"));
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let cursor = Cursor {
            org: "acme".to_owned(),
            before: 42,
        };
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text), Some(cursor));
        assert_eq!(Cursor::decode(&text[..text.len() - 1]), None);
        assert_eq!(Cursor::decode(&text.to_uppercase()), None);
        assert_eq!(Cursor::decode(&text.replacen("c1", "c2", 1)), None);
        // An org id that is not an org id.
        let bad = format!("c1{}{}", "00".repeat(7) + "2a", hex::encode(b"A B"));
        assert_eq!(Cursor::decode(&bad), None);
    }

    /// An index over one audit file holding `entries` (organization, seq), with status 200
    /// for even and 404 for odd sequence numbers, and `ts = seq * 1000`.
    fn indexed(entries: &[(&'static str, u64)]) -> (tempfile::TempDir, AuditIndex) {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        files::prepare_dir(&audit).unwrap();
        let index =
            AuditIndex::open(&Store::open(&dir.path().join("data")).unwrap(), &audit).unwrap();
        let name = files::file_name(1, 0);
        let mut text = Vec::new();
        let mut groups: Vec<(&str, Vec<Position>)> = Vec::new();
        for (org, seq) in entries {
            let status = if seq % 2 == 0 { 200 } else { 404 };
            let line =
                format!("{{\"seq\":{seq},\"ts\":\"x\",\"kind\":\"request\",\"status\":{status}}}");
            let position = Position {
                seq: *seq,
                ts: seq * 1000,
                offset: text.len() as u64,
                len: line.len() as u32,
            };
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
            match groups.iter_mut().find(|(o, _)| o == org) {
                Some((_, positions)) => positions.push(position),
                None => groups.push((org, vec![position])),
            }
        }
        std::fs::write(audit.join(&name), text).unwrap();
        let blocks: Vec<NewBlock<'_>> = groups
            .iter()
            .map(|(org, records)| NewBlock {
                org,
                file: &name,
                records,
            })
            .collect();
        index.insert(blocks, None).unwrap();
        (dir, index)
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn pages_walk_one_organization_newest_first() {
        let entries: Vec<(&str, u64)> = (1..=7)
            .map(|seq| (if seq % 3 == 0 { "other" } else { "acme" }, seq))
            .collect();
        let (_dir, index) = indexed(&entries);
        let mut query = Query {
            limit: 2,
            ..Query::default()
        };
        let first = run(&index, "acme", &query).unwrap();
        assert_eq!(seqs(&first), vec![7, 5]);
        query.cursor = first.next_cursor.clone();
        let second = run(&index, "acme", &query).unwrap();
        assert_eq!(seqs(&second), vec![4, 2]);
        query.cursor = second.next_cursor.clone();
        let third = run(&index, "acme", &query).unwrap();
        assert_eq!(seqs(&third), vec![1]);
        assert_eq!(third.next_cursor, None);

        assert!(matches!(
            run(
                &index,
                "other",
                &Query {
                    cursor: first.next_cursor,
                    ..Query::default()
                }
            ),
            Err(QueryRunError::ForeignCursor)
        ));
    }

    #[test]
    fn filters_and_time_bounds_apply() {
        let entries: Vec<(&str, u64)> = (1..=6).map(|seq| ("acme", seq)).collect();
        let (_dir, index) = indexed(&entries);
        let only_ok = Query {
            status: Some(200),
            ..Query::default()
        };
        assert_eq!(seqs(&run(&index, "acme", &only_ok).unwrap()), vec![6, 4, 2]);
        let window = Query {
            since: Some(2000),
            until: Some(5000),
            ..Query::default()
        };
        assert_eq!(seqs(&run(&index, "acme", &window).unwrap()), vec![4, 3, 2]);
    }
}
