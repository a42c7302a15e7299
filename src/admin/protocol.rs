//! The admin API's wire format: paths, request bodies and answer bodies.
//!
//! Server and client both use these types, so the two cannot drift apart. Requests refuse
//! unknown fields (a misspelt `expires_in_secs` must not silently mint a key that never
//! expires); answers accept unknown fields, so an older client keeps working against a newer
//! server. Timestamps travel as RFC 3339 UTC text (`2030-01-31T12:00:00Z`), never as the unix
//! seconds they are stored as, because people read these answers.
//!
//! No answer type here can carry a secret or a hash except [`MintedKeyResponse`], whose `key`
//! the server fills exactly once per mint or rotation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::admin_log::{AdminAction, AdminActionKind};
use crate::keys::{Env, KeyRecord, KeyStatus, RateOverride, RevokeReason, Secret};
use crate::orgs::{BaaStatus, OrgRecord};

/// Every path starts with this version prefix, so the API can change shape later without
/// breaking scripts written against this one.
pub const API_PREFIX: &str = "/v1";

/// Collection of API keys: `GET` lists, `POST` mints.
pub const KEYS_PATH: &str = "/v1/keys";

/// Collection of organizations: `GET` lists, `POST` creates.
pub const ORGS_PATH: &str = "/v1/orgs";

/// The admin action log, newest first.
pub const ADMIN_ACTIONS_PATH: &str = "/v1/admin-actions";

/// `POST` re-reads the policy file the instance was started with and puts it into service.
pub const RELOAD_PATH: &str = "/v1/reload";

/// How long the previous secret keeps working after a rotation when the request names no
/// grace period: a day, enough to roll a new secret out to a partner's fleet.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 24 * 60 * 60;

/// The longest grace period a rotation may give the previous secret (30 days). A rotation is
/// often a reaction to a leak; an old secret that lives on for months defeats it.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 60 * 60;

/// How many admin actions a listing returns when it names no limit.
pub const DEFAULT_ACTIONS_LIMIT: usize = 50;

/// The most admin actions one listing may return.
pub const MAX_ACTIONS_LIMIT: usize = 1000;

/// The latest instant RFC 3339 text can show (`9999-12-31T23:59:59Z`), in unix seconds. Expiry
/// times beyond it are refused so every stored time prints.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// `GET`/`PATCH` path of one key.
pub fn key_path(id: &str) -> String {
    format!("{KEYS_PATH}/{id}")
}

/// `POST` path that rotates one key.
pub fn key_rotate_path(id: &str) -> String {
    format!("{KEYS_PATH}/{id}/rotate")
}

/// `POST` path that revokes one key.
pub fn key_revoke_path(id: &str) -> String {
    format!("{KEYS_PATH}/{id}/revoke")
}

/// `GET`/`PATCH` path of one organization.
pub fn org_path(id: &str) -> String {
    format!("{ORGS_PATH}/{id}")
}

/// `POST` path that records an organization's BAA evidence.
pub fn org_baa_path(id: &str) -> String {
    format!("{ORGS_PATH}/{id}/baa")
}

/// Unix seconds as RFC 3339 UTC text.
///
/// Never panics: a stored time beyond year 9999 (which validation prevents) prints as
/// `@<seconds>` instead of overflowing.
pub fn rfc3339(unix_secs: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(unix_secs)) {
        Some(time) if unix_secs <= MAX_TIMESTAMP => {
            humantime::format_rfc3339_seconds(time).to_string()
        }
        _ => format!("@{unix_secs}"),
    }
}

/// RFC 3339 UTC text (`2030-01-31T12:00:00Z`, fractions allowed) as unix seconds, rounded up
/// so an expiry never lands earlier than asked. `None` for anything else, including times
/// before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let time: SystemTime = humantime::parse_rfc3339(text).ok()?;
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    Some(since.as_secs() + u64::from(since.subsec_nanos() > 0))
}

/// Deserializes a field whose absence and explicit `null` mean different things: absent
/// leaves a value alone (`None`), `null` clears it (`Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Requests

/// `POST /v1/keys`: mint a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The organization the key acts for; it must exist.
    pub org: String,
    /// `test` or `live`.
    pub env: Env,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// An operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Expire this many seconds from now (exclusive with `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Expire at this RFC 3339 UTC time (exclusive with `expires_in_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// If not empty, the only client networks the key may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<IpNet>,
    /// A per-key rate limit instead of the policy default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateOverride>,
}

/// A rate change in `PATCH /v1/keys/{id}`: a missing half keeps the key's current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePatch {
    /// New sustained requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    /// New burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `PATCH /v1/keys/{id}`: change an active key. Absent fields stay as they are; `null`
/// clears a label, an expiry or a rate override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// Replace the scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Set (text) or clear (`null`) the label.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub label: Option<Option<String>>,
    /// Expire this many seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Expire at this RFC 3339 UTC time, or never (`null`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Option<String>>,
    /// Replace the allowlist; empty allows every network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_cidrs: Option<Vec<IpNet>>,
    /// Change (object) or remove (`null`) the rate override.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate: Option<Option<RatePatch>>,
}

/// `POST /v1/keys/{id}/rotate`. An empty body takes the default grace period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the previous secret keeps working; `0` ends it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<u64>,
}

/// `POST /v1/keys/{id}/revoke`. Takes no fields; the body may be empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {}

/// `POST /v1/orgs`: create an organization (HIPAA mode off, no BAA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// Stable id (`[a-z0-9][a-z0-9-]{0,62}`).
    pub id: String,
    /// Display name.
    pub name: String,
}

/// `PATCH /v1/orgs/{id}`: rename, or switch HIPAA mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgRequest {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// HIPAA mode on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hipaa_mode: Option<bool>,
}

/// `POST /v1/orgs/{id}/baa`: record BAA evidence, replacing what was recorded before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBaaRequest {
    /// `none`, `pending` or `signed`.
    pub status: BaaStatus,
    /// Where the evidence is (contract id, document URL, ticket); required for `signed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Answers

/// Whether a key works right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// It authenticates.
    Active,
    /// It passed its expiry.
    Expired,
    /// It was revoked, for good.
    Revoked,
}

impl KeyState {
    /// The word shown in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// A key as the admin API shows it: everything but its secret and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Public id.
    pub id: String,
    /// `<namespace>_<env>_<id>`, the part of the key that may be shown and logged.
    pub prefix: String,
    /// The organization it acts for.
    pub org: String,
    /// `test` or `live`.
    pub env: Env,
    /// Granted scopes, sorted.
    pub scopes: Vec<String>,
    /// Operator's note.
    pub label: Option<String>,
    /// Active, expired or revoked at the time of the answer.
    pub status: KeyState,
    /// When it was minted.
    pub created_at: String,
    /// When it stops working, if ever.
    pub expires_at: Option<String>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<RevokeReason>,
    /// Last successful use, to within a minute.
    pub last_used_at: Option<String>,
    /// Until when the secret before the last rotation still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<String>,
    /// Client networks it is limited to; empty means any.
    pub allow_cidrs: Vec<IpNet>,
    /// Its own rate limit, if it does not use the policy default.
    pub rate: Option<RateOverride>,
}

impl KeyView {
    /// The view of `record` at time `now` (which decides `expired`, and hides a previous
    /// secret whose grace period is over).
    pub fn new(record: &KeyRecord, now: u64) -> Self {
        let (status, revoked_at, revoke_reason) = match record.status {
            KeyStatus::Revoked { at, reason } => {
                (KeyState::Revoked, Some(rfc3339(at)), Some(reason))
            }
            KeyStatus::Active if record.is_expired(now) => (KeyState::Expired, None, None),
            KeyStatus::Active => (KeyState::Active, None, None),
        };
        Self {
            id: record.id.to_string(),
            prefix: record.display_prefix(),
            org: record.org.clone(),
            env: record.env,
            scopes: record.scopes.iter().cloned().collect(),
            label: record.label.clone(),
            status,
            created_at: rfc3339(record.created_at),
            expires_at: record.expires_at.map(rfc3339),
            revoked_at,
            revoke_reason,
            last_used_at: record.last_used_at.map(rfc3339),
            previous_secret_valid_until: record
                .previous
                .filter(|previous| previous.valid_until > now && !record.is_revoked())
                .map(|previous| rfc3339(previous.valid_until)),
            allow_cidrs: record.allow_cidrs.clone(),
            rate: record.rate,
        }
    }
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Sorted by organization, creation time and id.
    pub keys: Vec<KeyView>,
}

/// The full key text as the client reads it from an answer: redacted in `Debug` and wiped
/// from memory when dropped, like every other [`Secret`].
pub struct ReceivedKey(Secret);

impl ReceivedKey {
    /// The key text, to show the operator once.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ReceivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceivedKey(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for ReceivedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Self(Secret::from_string(text)))
    }
}

/// The answer to a mint or a rotation: the full key, once, and the record.
///
/// `K` is `&str` when the server writes it and [`ReceivedKey`] when the client reads it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MintedKeyResponse<K> {
    /// The full key text. Shown once; only its hash is stored.
    pub key: K,
    /// The key's record.
    #[serde(flatten)]
    pub record: KeyView,
    /// Things the operator should know (e.g. a live key whose organization is not yet
    /// allowed into production).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// BAA evidence as shown by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaaView {
    /// `none`, `pending` or `signed`.
    pub status: BaaStatus,
    /// Where the evidence is.
    pub reference: Option<String>,
    /// Who recorded it (`uid:<n>` for the admin socket).
    pub recorded_by: Option<String>,
    /// When it was recorded.
    pub recorded_at: Option<String>,
}

/// An organization as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgView {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// HIPAA mode.
    pub hipaa_mode: bool,
    /// BAA evidence.
    pub baa: BaaView,
    /// Whether its live keys may be used (HIPAA mode on and BAA signed).
    pub production_ready: bool,
    /// Why its live keys are refused, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_blocked_because: Option<String>,
    /// When it was created.
    pub created_at: String,
}

impl OrgView {
    /// The view of `record`.
    pub fn new(record: &OrgRecord) -> Self {
        let blocked = record.production_ready().err();
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            hipaa_mode: record.hipaa_mode,
            baa: BaaView {
                status: record.baa.status,
                reference: record.baa.reference.clone(),
                recorded_by: record.baa.recorded_by.clone(),
                recorded_at: record.baa.recorded_at.map(rfc3339),
            },
            production_ready: blocked.is_none(),
            production_blocked_because: blocked.map(|reason| reason.detail().to_owned()),
            created_at: rfc3339(record.created_at),
        }
    }
}

/// `GET /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgList {
    /// Sorted by id.
    pub orgs: Vec<OrgView>,
}

/// One admin action as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    /// Position in the log.
    pub seq: u64,
    /// When.
    pub at: String,
    /// What was done.
    pub action: AdminActionKind,
    /// Who did it.
    pub actor: String,
    /// The key id or org id acted on.
    pub target: String,
    /// The organization concerned.
    pub org: Option<String>,
}

impl ActionView {
    /// The view of `entry`.
    pub fn new(entry: &AdminAction) -> Self {
        Self {
            seq: entry.seq,
            at: rfc3339(entry.ts),
            action: entry.action,
            actor: entry.actor.clone(),
            target: entry.target.clone(),
            org: entry.org.clone(),
        }
    }
}

/// `GET /v1/admin-actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionList {
    /// Newest first.
    pub actions: Vec<ActionView>,
}

/// The dead-letter queue: `GET` lists dead webhook deliveries (`?org=&limit=`).
pub const WEBHOOK_DLQ_PATH: &str = "/v1/webhooks/dlq";

/// `POST` puts dead webhook deliveries back in the queue.
pub const WEBHOOK_REDELIVER_PATH: &str = "/v1/webhooks/redeliver";

/// How many dead deliveries a listing returns when it names no limit.
pub const DEFAULT_DLQ_LIMIT: usize = 50;

/// The most dead deliveries one listing may return.
pub const MAX_DLQ_LIMIT: usize = 1000;

/// `POST /v1/webhooks/redeliver`: one dead delivery by id, or every dead one (of `org`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverRequest {
    /// The dead delivery to send again (`dlv_…`); exclusive with `all_dead`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Every dead delivery (of `org` when given).
    #[serde(default)]
    pub all_dead: bool,
    /// Only this organization's deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// One webhook delivery as an operator sees it: ids, numbers and fixed error kinds only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// The delivery id.
    pub id: String,
    /// The event id (the same on every attempt).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The organization.
    pub org: String,
    /// The subscription.
    pub subscription_id: String,
    /// `pending`, `delivered`, `failed` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the event was accepted (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// The receiver's status on the last answered attempt.
    #[serde(default)]
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// `GET /v1/webhooks/dlq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

/// `POST /v1/webhooks/redeliver`: what went back in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeliverResponse {
    /// The deliveries now pending again, due at once.
    pub redelivered: Vec<DeliveryView>,
}

/// `POST /v1/reload` takes no options; an empty body is the same as `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {}

/// `POST /v1/reload` when the new policy is in service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    /// Always `"applied"`.
    pub result: String,
    /// How many reloads the instance has applied since it started, this one included.
    pub generation: u64,
    /// Routes in the policy now in service.
    pub routes: usize,
    /// SHA-256 (hex) of the policy file as it was read.
    pub policy_sha256: String,
    /// SHA-256 (hex) of the certificate new handshakes get.
    pub certificate_sha256: String,
}

/// An RFC 9457 problem document as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDocument {
    /// Short summary, the same for every occurrence of the code.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time.
    #[serde(default)]
    pub detail: String,
    /// Stable machine-readable code (`admin.not_found`, ...).
    #[serde(default)]
    pub code: String,
    /// Every reason, one per line, when there can be several (a refused reload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::keys::PreviousSecret;

    #[test]
    fn timestamps_print_as_rfc3339_and_never_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_900_000_000), "2030-03-17T17:46:40Z");
        assert_eq!(rfc3339(MAX_TIMESTAMP), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(MAX_TIMESTAMP + 1), "@253402300800");
        assert_eq!(rfc3339(u64::MAX), format!("@{}", u64::MAX));
    }

    #[test]
    fn rfc3339_parsing_is_strict_utc_and_rounds_up() {
        assert_eq!(parse_rfc3339("2030-03-17T17:46:40Z"), Some(1_900_000_000));
        assert_eq!(parse_rfc3339("2030-03-17T17:46:39.5Z"), Some(1_900_000_000));
        for bad in [
            "",
            "2030-03-17",
            "2030-03-17T17:46:40",
            "2030-03-17T17:46:40+01:00",
            "1900000000",
            "tomorrow",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn create_key_request_refuses_unknown_and_missing_fields() {
        let ok: CreateKeyRequest = serde_json::from_str(
            r#"{"org":"acme","env":"test","scopes":["notes:read"],"allow_cidrs":["10.0.0.0/8"],
                "rate":{"per_minute":600,"burst":50}}"#,
        )
        .unwrap();
        assert_eq!(ok.env, Env::Test);
        assert_eq!(ok.allow_cidrs, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(
            ok.rate,
            Some(RateOverride {
                per_minute: 600,
                burst: 50
            })
        );
        for bad in [
            r#"{"org":"acme","env":"test","scopes":[],"expires_in_secs":5}"#,
            r#"{"org":"acme","env":"prod","scopes":[]}"#,
            r#"{"org":"acme","scopes":[]}"#,
            r#"{"org":"acme","env":"test","scopes":[],"allow_cidrs":["10.0.0.1"]}"#,
            r#"{"org":"acme","env":"test","scopes":[],"rate":{"per_minute":-1,"burst":1}}"#,
        ] {
            assert!(
                serde_json::from_str::<CreateKeyRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn update_request_tells_absent_from_null() {
        let absent: UpdateKeyRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(absent, UpdateKeyRequest::default());
        let cleared: UpdateKeyRequest =
            serde_json::from_str(r#"{"label":null,"expires_at":null,"rate":null}"#).unwrap();
        assert_eq!(cleared.label, Some(None));
        assert_eq!(cleared.expires_at, Some(None));
        assert_eq!(cleared.rate, Some(None));
        let set: UpdateKeyRequest =
            serde_json::from_str(r#"{"label":"x","rate":{"burst":5}}"#).unwrap();
        assert_eq!(set.label, Some(Some("x".to_owned())));
        assert_eq!(
            set.rate,
            Some(Some(RatePatch {
                per_minute: None,
                burst: Some(5)
            }))
        );
        // What the client sends is read back the same way by the server.
        for request in [absent, cleared, set] {
            let text = serde_json::to_string(&request).unwrap();
            assert_eq!(
                serde_json::from_str::<UpdateKeyRequest>(&text).unwrap(),
                request
            );
        }
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"scope":["a"]}"#).is_err());
    }

    #[test]
    fn key_view_shows_state_and_no_hashes() {
        let mut record = KeyRecord {
            id: "0a1b2c3d".parse().unwrap(),
            org: "acme".to_owned(),
            env: Env::Live,
            scopes: BTreeSet::from(["b".to_owned(), "a".to_owned()]),
            label: None,
            created_at: 100,
            expires_at: Some(200),
            status: KeyStatus::Active,
            last_used_at: None,
            allow_cidrs: Vec::new(),
            hash: [0xab; 32],
            previous: Some(PreviousSecret {
                hash: [0xcd; 32],
                valid_until: 150,
            }),
            rate: None,
            namespace: "pcl".to_owned(),
        };
        let view = KeyView::new(&record, 120);
        assert_eq!(view.status, KeyState::Active);
        assert_eq!(view.scopes, ["a", "b"]);
        assert_eq!(view.prefix, "pcl_live_0a1b2c3d");
        assert_eq!(
            view.previous_secret_valid_until.as_deref(),
            Some("1970-01-01T00:02:30Z")
        );
        let text = serde_json::to_string(&view).unwrap();
        assert!(!text.contains("abab") && !text.contains("cdcd"), "{text}");
        assert!(!text.contains("hash"), "{text}");

        assert_eq!(KeyView::new(&record, 160).previous_secret_valid_until, None);
        assert_eq!(KeyView::new(&record, 200).status, KeyState::Expired);
        record.status = KeyStatus::Revoked {
            at: 130,
            reason: RevokeReason::Admin,
        };
        let revoked = KeyView::new(&record, 140);
        assert_eq!(revoked.status, KeyState::Revoked);
        assert_eq!(revoked.revoked_at.as_deref(), Some("1970-01-01T00:02:10Z"));
        assert_eq!(revoked.revoke_reason, Some(RevokeReason::Admin));
        assert_eq!(revoked.previous_secret_valid_until, None);
    }
}
