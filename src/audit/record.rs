//! The audit record: what is kept about every request and every administrative action, and
//! its one canonical JSON encoding.
//!
//! PHI cannot reach a record because no field can hold text a request chose. Every field is
//! an enum, a number, an id Portcullis minted or validated (request id in UUID form, key id,
//! organization id), a route name from the policy, or an operator's name for admin actions.
//! The types below enforce that at construction: there is no way to build an [`Event`] from a
//! raw path, header or body. An unmatched path is `route: null`, an unknown method `OTHER`.
//!
//! The encoding is written by hand, field by field in a fixed order, because its bytes are
//! hashed into the chain: the same record must always produce the same line.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use http::Method;
use serde::Deserialize;

use super::time;
use crate::admin_log::AdminActionKind;
use crate::keys::{Env, KeyId};
use crate::orgs::{is_display_text, is_org_id, MAX_ACTOR_CHARS};
use crate::problem::ProblemCode;
use crate::request_id::RequestId;

/// The actor of actions Portcullis takes by itself (repairs, automatic revocations).
pub const SYSTEM_ACTOR: &str = "portcullis";

/// An HTTP method as recorded: the standard methods by name, every extension method as
/// `OTHER` (an extension method is a token the client chose, so it is never copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `OPTIONS`.
    Options,
    /// `CONNECT`.
    Connect,
    /// `TRACE`.
    Trace,
    /// Any other method token.
    Other,
}

impl HttpMethod {
    /// The recorded form of `method`.
    pub fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::HEAD => Self::Head,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::PATCH => Self::Patch,
            Method::DELETE => Self::Delete,
            Method::OPTIONS => Self::Options,
            Method::CONNECT => Self::Connect,
            Method::TRACE => Self::Trace,
            _ => Self::Other,
        }
    }

    /// The text written to records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
            Self::Connect => "CONNECT",
            Self::Trace => "TRACE",
            Self::Other => "OTHER",
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of the client address a record keeps (`audit.client_ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpMode {
    /// The whole address.
    Full,
    /// IPv4 cut to its /24 network, IPv6 to its /48: enough to tell partners' networks
    /// apart, not enough to single out a host.
    #[default]
    Truncated,
    /// No address at all.
    Off,
}

/// IPv4 prefix kept in [`ClientIpMode::Truncated`].
const V4_PREFIX: u8 = 24;

/// IPv6 prefix kept in [`ClientIpMode::Truncated`].
const V6_PREFIX: u8 = 48;

/// A client address as recorded: whole, or a network written in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    addr: IpAddr,
    prefix: Option<u8>,
}

impl ClientAddr {
    /// What `mode` keeps of `ip` (IPv4-mapped IPv6 addresses are treated as IPv4).
    pub fn new(ip: IpAddr, mode: ClientIpMode) -> Option<Self> {
        let ip = ip.to_canonical();
        match mode {
            ClientIpMode::Off => None,
            ClientIpMode::Full => Some(Self {
                addr: ip,
                prefix: None,
            }),
            ClientIpMode::Truncated => {
                let prefix = match ip {
                    IpAddr::V4(_) => V4_PREFIX,
                    IpAddr::V6(_) => V6_PREFIX,
                };
                let network = ipnet::IpNet::new(ip, prefix).ok()?.trunc();
                Some(Self {
                    addr: network.addr(),
                    prefix: Some(prefix),
                })
            }
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(prefix) => write!(f, "{}/{prefix}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An identifier Portcullis issued or validated: an organization id, or the key id or
/// organization id an admin action targets (`[a-z0-9][a-z0-9-]{0,62}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// `text` if it has the shape of an id; `None` otherwise (such text is never recorded).
    pub fn new(text: &str) -> Option<Self> {
        is_org_id(text).then(|| Self(text.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An operator's name for an admin action (`uid:1000`, `portcullis`): set by whoever holds
/// the admin socket, never by a partner's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// `text` if it is 1-128 printable characters, as the admin log requires.
    pub fn new(text: &str) -> Option<Self> {
        is_display_text(text, MAX_ACTOR_CHARS).then(|| Self(text.to_owned()))
    }

    /// The actor Portcullis itself uses.
    pub fn system() -> Self {
        Self(SYSTEM_ACTOR.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The route a request matched: a policy route's name, or one of Portcullis's own endpoints.
/// Built-in names start with `@`, which policy names cannot contain, so the two never mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteName(Cow<'static, str>);

impl RouteName {
    /// The unauthenticated liveness endpoint.
    pub const HEALTH: Self = Self(Cow::Borrowed("@health"));
    /// The identity endpoint.
    pub const WHOAMI: Self = Self(Cow::Borrowed("@whoami"));
    /// The audit query endpoint.
    pub const AUDIT_EVENTS: Self = Self(Cow::Borrowed("@audit.events"));
    /// Creating a webhook subscription.
    pub const WEBHOOKS_CREATE: Self = Self(Cow::Borrowed("@webhooks.create"));
    /// Listing the caller's webhook subscriptions.
    pub const WEBHOOKS_LIST: Self = Self(Cow::Borrowed("@webhooks.list"));
    /// Reading one webhook subscription.
    pub const WEBHOOKS_GET: Self = Self(Cow::Borrowed("@webhooks.get"));
    /// Deleting a webhook subscription.
    pub const WEBHOOKS_DELETE: Self = Self(Cow::Borrowed("@webhooks.delete"));
    /// Rotating a webhook subscription's signing secret.
    pub const WEBHOOKS_ROTATE_SECRET: Self = Self(Cow::Borrowed("@webhooks.rotate_secret"));
    /// Any other request under the subscriptions path (answered 404).
    pub const WEBHOOKS_OTHER: Self = Self(Cow::Borrowed("@webhooks"));
    /// The built-in webhook delivery status endpoint.
    pub const WEBHOOK_DELIVERIES: Self = Self(Cow::Borrowed("@webhooks.deliveries"));

    /// A policy route's name. Validation already restricted names to 1-64 characters of
    /// `A-Z a-z 0-9 . _ : -`; anything else is refused here again rather than recorded.
    pub fn policy(name: &str) -> Option<Self> {
        is_route_name(name).then(|| Self(Cow::Owned(name.to_owned())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `text` is a name a record's `route` can hold (policy charset, or `@` built-ins).
pub fn is_route_name(text: &str) -> bool {
    let body = text.strip_prefix('@').unwrap_or(text);
    !body.is_empty()
        && text.len() <= 64
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Why a request got the answer it got, when it was not the backend's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditCode {
    /// Portcullis refused it with this problem code.
    Problem(ProblemCode),
    /// The client went away before an answer was ready (the request may have reached the
    /// backend).
    Cancelled,
}

impl AuditCode {
    /// The stable code text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Problem(code) => code.as_str(),
            Self::Cancelled => "request.cancelled",
        }
    }
}

/// One request that reached the sidecar, allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEvent {
    /// The request id (UUID), as returned in `X-Request-Id`.
    pub request_id: RequestId,
    /// The caller's organization, once its key verified.
    pub org: Option<Ident>,
    /// The caller's key id, once its key verified.
    pub key_id: Option<KeyId>,
    /// The key's environment.
    pub env: Option<Env>,
    /// The method.
    pub method: HttpMethod,
    /// The matched route, or `None` when no route matched.
    pub route: Option<RouteName>,
    /// The status sent, or `None` when no answer was sent.
    pub status: Option<u16>,
    /// The refusal code, or `None` for answers that came from the backend or a built-in.
    pub code: Option<AuditCode>,
    /// Time from arrival to the answer's head, in microseconds.
    pub latency_us: u64,
    /// Whether the answer was replayed from the idempotency cache.
    pub replayed: bool,
    /// The client address, as much of it as the policy keeps.
    pub client_ip: Option<ClientAddr>,
}

/// One administrative action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEvent {
    /// What was done.
    pub action: AdminActionKind,
    /// Who did it.
    pub actor: Actor,
    /// The key id or organization id acted on.
    pub target: Ident,
    /// The organization concerned, if any.
    pub org: Option<Ident>,
}

/// Something the audit trail itself did that an auditor must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemEvent {
    /// A torn last line (an interrupted write) was cut from a file at start.
    Repaired {
        /// The file repaired (a name Portcullis gave it).
        file: FileName,
        /// How many bytes were cut.
        truncated_bytes: u64,
    },
}

/// The name of an audit file, as Portcullis names them (`audit-<seq>-<date>.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName(String);

impl FileName {
    /// `name` if it is an audit file name.
    pub fn new(name: &str) -> Option<Self> {
        super::files::parse_file_name(name).map(|_| Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// A request.
    Request(RequestEvent),
    /// An admin action.
    Admin(AdminEvent),
    /// An action of the audit trail itself.
    System(SystemEvent),
}

impl EventBody {
    /// The organization whose trail the record belongs to, if any.
    pub fn org(&self) -> Option<&Ident> {
        match self {
            Self::Request(request) => request.org.as_ref(),
            Self::Admin(admin) => admin.org.as_ref(),
            Self::System(_) => None,
        }
    }

    /// [`EventBody::org`], taken out once the record is encoded (no copy).
    pub fn into_org(self) -> Option<Ident> {
        match self {
            Self::Request(request) => request.org,
            Self::Admin(admin) => admin.org,
            Self::System(_) => None,
        }
    }
}

/// A record before the writer numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened (microseconds since the epoch).
    pub ts: u64,
    /// What happened.
    pub body: EventBody,
}

/// Appends the canonical encoding of a record, without its chain fields and closing brace,
/// to `out`: `{"seq":…,"ts":"…",…`. The chain appends `,"prev":…,"hash":…}`.
pub fn encode_body(seq: u64, event: &Event, out: &mut Vec<u8>) {
    let mut json = JsonObject::open(out);
    json.number("seq", seq);
    json.timestamp("ts", event.ts);
    match &event.body {
        EventBody::Request(request) => encode_request(&mut json, request),
        EventBody::Admin(admin) => {
            json.string("kind", "admin");
            json.optional("org", admin.org.as_ref().map(Ident::as_str));
            json.string("action", admin_action_name(admin.action));
            json.string("actor", admin.actor.as_str());
            json.string("target", admin.target.as_str());
        }
        EventBody::System(SystemEvent::Repaired {
            file,
            truncated_bytes,
        }) => {
            json.string("kind", "system");
            json.string("action", "audit_repaired");
            json.string("actor", SYSTEM_ACTOR);
            json.string("target", file.as_str());
            json.number("truncated_bytes", *truncated_bytes);
        }
    }
}

fn encode_request(json: &mut JsonObject<'_>, request: &RequestEvent) {
    json.string("kind", "request");
    json.string("request_id", request.request_id.as_str());
    json.optional("org", request.org.as_ref().map(Ident::as_str));
    match request.key_id {
        Some(id) => json.display("key_id", id),
        None => json.null("key_id"),
    }
    json.optional("env", request.env.map(Env::as_str));
    json.string("method", request.method.as_str());
    json.optional("route", request.route.as_ref().map(RouteName::as_str));
    match request.status {
        Some(status) => json.number("status", u64::from(status)),
        None => json.null("status"),
    }
    json.optional("code", request.code.map(AuditCode::as_str));
    json.number("latency_us", request.latency_us);
    json.boolean("replayed", request.replayed);
    match request.client_ip {
        Some(ip) => json.display("client_ip", ip),
        None => json.null("client_ip"),
    }
}

/// The snake-case name of an admin action, as the admin log's JSON spells it.
pub fn admin_action_name(action: AdminActionKind) -> &'static str {
    match action {
        AdminActionKind::KeyMinted => "key_minted",
        AdminActionKind::KeyRotated => "key_rotated",
        AdminActionKind::KeyRevoked => "key_revoked",
        AdminActionKind::KeyUpdated => "key_updated",
        AdminActionKind::OrgCreated => "org_created",
        AdminActionKind::OrgUpdated => "org_updated",
        AdminActionKind::HipaaModeSet => "hipaa_mode_set",
        AdminActionKind::BaaRecorded => "baa_recorded",
        AdminActionKind::WebhookRedelivered => "webhook_redelivered",
        AdminActionKind::PolicyReloaded => "policy_reloaded",
        AdminActionKind::PolicyReloadRefused => "policy_reload_refused",
        AdminActionKind::CertificateRenewed => "certificate_renewed",
    }
}

/// The fields of a stored record that reading code needs, decoded leniently from a line.
///
/// Used to filter queries and exports and to find where a file's valid records end; it is
/// not a second source of truth (the line's bytes are).
#[derive(Debug, Clone, Deserialize)]
pub struct StoredRecord {
    /// Position in the trail.
    pub seq: u64,
    /// ISO-8601 timestamp.
    pub ts: String,
    /// `request`, `admin` or `system`.
    pub kind: String,
    /// The organization, if any.
    #[serde(default)]
    pub org: Option<String>,
    /// The route, if any.
    #[serde(default)]
    pub route: Option<String>,
    /// The status, if any.
    #[serde(default)]
    pub status: Option<u16>,
    /// The code, if any.
    #[serde(default)]
    pub code: Option<String>,
}

impl StoredRecord {
    /// Decodes one line (with or without its newline); `None` if it is not a record.
    pub fn decode(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }

    /// The timestamp in microseconds, if it parses.
    pub fn ts_micros(&self) -> Option<u64> {
        time::parse_iso8601(&self.ts)
    }
}

/// A minimal JSON object writer with a fixed, deterministic output.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn name(&mut self, name: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_string(name, self.out);
        self.out.push(b':');
    }

    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        write_string(value, self.out);
    }

    fn optional(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(name, value),
            None => self.null(name),
        }
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        time::push_padded(value, 0, self.out);
    }

    /// A value whose `Display` text never needs escaping (key ids, addresses), quoted.
    fn display(&mut self, name: &str, value: impl fmt::Display) {
        use std::io::Write as _;
        self.name(name);
        self.out.push(b'"');
        // Writing to a `Vec` cannot fail.
        let _ = write!(self.out, "{value}");
        self.out.push(b'"');
    }

    fn boolean(&mut self, name: &str, value: bool) {
        self.name(name);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn null(&mut self, name: &str) {
        self.name(name);
        self.out.extend_from_slice(b"null");
    }

    fn timestamp(&mut self, name: &str, micros: u64) {
        self.name(name);
        self.out.push(b'"');
        time::write_iso8601(micros, self.out);
        self.out.push(b'"');
    }
}

/// Writes `text` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`,
/// everything else as UTF-8.
///
/// Works on bytes: every byte that needs escaping is ASCII, and the bytes of a multi-byte
/// character are all `>= 0x80`, so runs between escapes are copied whole.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied..at]);
        out.extend_from_slice(escaped);
        copied = at + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_id() -> RequestId {
        RequestId::parse("9f1c1b4e-2d7a-4c3b-8e5f-0a1b2c3d4e5f").unwrap()
    }

    fn encoded(event: &Event) -> String {
        let mut out = Vec::new();
        encode_body(7, event, &mut out);
        out.push(b'}');
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_record_has_every_field_in_a_fixed_order() {
        let event = Event {
            ts: 1_795_420_800_000_001,
            body: EventBody::Request(RequestEvent {
                request_id: request_id(),
                org: Ident::new("acme"),
                key_id: Some("0a1b2c3d".parse().unwrap()),
                env: Some(Env::Live),
                method: HttpMethod::Post,
                route: RouteName::policy("patients.link"),
                status: Some(201),
                code: None,
                latency_us: 1234,
                replayed: true,
                client_ip: ClientAddr::new(
                    "203.0.113.77".parse().unwrap(),
                    ClientIpMode::Truncated,
                ),
            }),
        };
        assert_eq!(
            encoded(&event),
            r#"{"seq":7,"ts":"2026-11-23T08:00:00.000001Z","kind":"request","request_id":"9f1c1b4e-2d7a-4c3b-8e5f-0a1b2c3d4e5f","org":"acme","key_id":"0a1b2c3d","env":"live","method":"POST","route":"patients.link","status":201,"code":null,"latency_us":1234,"replayed":true,"client_ip":"203.0.113.0/24"}"#
        );
    }

    #[test]
    fn an_unmatched_refused_request_keeps_nulls_not_text() {
        let event = Event {
            ts: 0,
            body: EventBody::Request(RequestEvent {
                request_id: request_id(),
                org: None,
                key_id: None,
                env: None,
                method: HttpMethod::of(&Method::from_bytes(b"JOHNSMITH").unwrap()),
                route: None,
                status: Some(401),
                code: Some(AuditCode::Problem(ProblemCode::AuthMissing)),
                latency_us: 5,
                replayed: false,
                client_ip: None,
            }),
        };
        let text = encoded(&event);
        assert!(
            text.contains(r#""method":"OTHER","route":null,"status":401,"code":"auth.missing""#),
            "{text}"
        );
        assert!(!text.contains("JOHNSMITH"));
        let decoded = StoredRecord::decode(text.as_bytes()).unwrap();
        assert_eq!(decoded.seq, 7);
        assert_eq!(decoded.code.as_deref(), Some("auth.missing"));
        assert_eq!(decoded.ts_micros(), Some(0));
    }

    #[test]
    fn admin_and_system_records_carry_action_actor_and_target() {
        let admin = Event {
            ts: 0,
            body: EventBody::Admin(AdminEvent {
                action: AdminActionKind::BaaRecorded,
                actor: Actor::new("uid:1000").unwrap(),
                target: Ident::new("acme").unwrap(),
                org: Ident::new("acme"),
            }),
        };
        assert!(encoded(&admin).ends_with(
            r#""kind":"admin","org":"acme","action":"baa_recorded","actor":"uid:1000","target":"acme"}"#
        ));
        let repaired = Event {
            ts: 0,
            body: EventBody::System(SystemEvent::Repaired {
                file: FileName::new("audit-00000000000000000001-19700101.jsonl").unwrap(),
                truncated_bytes: 17,
            }),
        };
        assert!(encoded(&repaired).ends_with(
            r#""kind":"system","action":"audit_repaired","actor":"portcullis","target":"audit-00000000000000000001-19700101.jsonl","truncated_bytes":17}"#
        ));
    }

    #[test]
    fn constructors_refuse_free_text() {
        assert!(Ident::new("John Smith").is_none());
        assert!(Ident::new("mrn:12345").is_none());
        assert!(RouteName::policy("/v1/patients/123-45-6789").is_none());
        assert!(RouteName::policy("patients read").is_none());
        assert!(Actor::new("a\u{1b}[31m").is_none());
        assert!(FileName::new("notes.txt").is_none());
        assert_eq!(RouteName::HEALTH.as_str(), "@health");
        assert!(is_route_name("@whoami") && is_route_name("notes.read"));
        assert!(!is_route_name("@") && !is_route_name("a@b"));
    }

    #[test]
    fn client_addresses_are_kept_whole_truncated_or_not_at_all() {
        let v4: IpAddr = "198.51.100.23".parse().unwrap();
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.23".parse().unwrap();
        let show = |ip, mode| ClientAddr::new(ip, mode).map(|a| a.to_string());
        assert_eq!(show(v4, ClientIpMode::Full).unwrap(), "198.51.100.23");
        assert_eq!(
            show(v4, ClientIpMode::Truncated).unwrap(),
            "198.51.100.0/24"
        );
        assert_eq!(
            show(mapped, ClientIpMode::Truncated).unwrap(),
            "198.51.100.0/24"
        );
        assert_eq!(
            show(v6, ClientIpMode::Truncated).unwrap(),
            "2001:db8:abcd::/48"
        );
        assert_eq!(show(v6, ClientIpMode::Off), None);
    }

    #[test]
    fn strings_are_escaped_deterministically() {
        let mut out = Vec::new();
        write_string("a\"b\\c\u{1}é", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\u0001é\"");
    }
}
