//! What is stored about a key, and the validated requests that create or change it.
//!
//! A [`KeyRecord`] is stored as JSON in the `keys` tree under its id. It never holds the
//! secret, only the secret's HMAC; `Debug` leaves even that out, so a record can be logged
//! whole when debugging without putting anything secret-derived in the log.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::KeyError;
use super::format::{display_prefix, Env, KeyId};
use super::hex;
use crate::orgs::{is_display_text, is_org_id};

/// Most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;

/// Longest scope name, in characters.
pub const MAX_SCOPE_LEN: usize = 64;

/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 128;

/// Most CIDR blocks in one key's allowlist.
pub const MAX_CIDRS: usize = 256;

/// Why a key no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// An administrator revoked it.
    Admin,
    /// Portcullis revoked it after seeing it in a request URL, where it will have been logged
    /// by every proxy on the way.
    KeyInUrl,
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Admin => "admin",
            Self::KeyInUrl => "key_in_url",
        })
    }
}

/// Whether a key may be used. Revocation is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyStatus {
    /// In use.
    Active,
    /// Permanently disabled.
    Revoked {
        /// When (unix seconds).
        at: u64,
        /// Why.
        reason: RevokeReason,
    },
}

/// The secret a key had before its last rotation, honoured until `valid_until` so that
/// partners can roll the new secret out without an outage.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// HMAC of the old secret.
    #[serde(with = "hex::hash32")]
    pub(crate) hash: [u8; 32],
    /// The old secret is refused from this moment on (unix seconds, exclusive).
    pub valid_until: u64,
}

impl fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// A per-key rate limit replacing the policy default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateOverride {
    /// Sustained requests per minute (at least 1).
    pub per_minute: u32,
    /// Requests allowed in a burst (at least 1).
    pub burst: u32,
}

/// Everything known about one key, except its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's public id.
    pub id: KeyId,
    /// The organization the key acts for.
    pub org: String,
    /// Sandbox or production.
    pub env: Env,
    /// What the key may do; routes name the scope they require.
    pub scopes: BTreeSet<String>,
    /// An administrator's note ("Keragon prod connector").
    #[serde(default)]
    pub label: Option<String>,
    /// When the key was minted (unix seconds).
    pub created_at: u64,
    /// The key is refused from this moment on (unix seconds), if set.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Active or revoked.
    pub status: KeyStatus,
    /// Last successful use, to within a minute (unix seconds).
    #[serde(default)]
    pub last_used_at: Option<u64>,
    /// If not empty, the only client networks the key may be used from.
    #[serde(default)]
    pub allow_cidrs: Vec<IpNet>,
    /// HMAC of the current secret.
    #[serde(with = "hex::hash32")]
    pub(crate) hash: [u8; 32],
    /// The secret before the last rotation, during its grace period.
    #[serde(default)]
    pub previous: Option<PreviousSecret>,
    /// A per-key rate limit, if the policy default does not fit.
    #[serde(default)]
    pub rate: Option<RateOverride>,
    /// The namespace the key was minted under (the first part of its text).
    pub namespace: String,
}

impl KeyRecord {
    /// `<namespace>_<env>_<id>`: how the key is shown in logs and dashboards.
    pub fn display_prefix(&self) -> String {
        display_prefix(&self.namespace, self.env, self.id)
    }

    /// Whether the key was revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self.status, KeyStatus::Revoked { .. })
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("env", &self.env)
            .field("scopes", &self.scopes)
            .field("label", &self.label)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("status", &self.status)
            .field("last_used_at", &self.last_used_at)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("previous", &self.previous)
            .field("rate", &self.rate)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What an administrator asks for when minting a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    /// The organization (must be a valid org id; the caller checks it exists).
    pub org: String,
    /// Sandbox or production.
    pub env: Env,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
    /// Optional note.
    pub label: Option<String>,
    /// Optional expiry (unix seconds, must be in the future).
    pub expires_at: Option<u64>,
    /// Optional client network allowlist.
    pub allow_cidrs: Vec<IpNet>,
    /// Optional rate limit override.
    pub rate: Option<RateOverride>,
}

impl MintRequest {
    /// A request for a key with the given scopes and nothing optional set.
    pub fn new(org: impl Into<String>, env: Env, scopes: BTreeSet<String>) -> Self {
        Self {
            org: org.into(),
            env,
            scopes,
            label: None,
            expires_at: None,
            allow_cidrs: Vec::new(),
            rate: None,
        }
    }

    /// Checks every field, returning the allowlist in canonical form.
    pub(crate) fn validate(&self, now: u64) -> Result<Vec<IpNet>, KeyError> {
        if !is_org_id(&self.org) {
            return Err(KeyError::InvalidOrg);
        }
        validate_scopes(&self.scopes)?;
        validate_label(self.label.as_deref())?;
        validate_expiry(self.expires_at, now)?;
        validate_rate(self.rate)?;
        canonical_cidrs(&self.allow_cidrs)
    }
}

/// Changes to an existing key; `None` leaves a field as it is.
///
/// The `Option<Option<_>>` fields distinguish "leave alone" (`None`) from "clear"
/// (`Some(None)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Replace the scopes (takes effect on the next request).
    pub scopes: Option<BTreeSet<String>>,
    /// Set or clear the label.
    pub label: Option<Option<String>>,
    /// Set or clear the expiry.
    pub expires_at: Option<Option<u64>>,
    /// Replace the allowlist (empty allows every network).
    pub allow_cidrs: Option<Vec<IpNet>>,
    /// Set or clear the rate limit override.
    pub rate: Option<Option<RateOverride>>,
}

impl KeyChanges {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Validates the changes and applies them to a copy of `record`.
    pub(crate) fn apply(&self, record: &KeyRecord, now: u64) -> Result<KeyRecord, KeyError> {
        if self.is_empty() {
            return Err(KeyError::NoChanges);
        }
        let mut next = record.clone();
        if let Some(scopes) = &self.scopes {
            validate_scopes(scopes)?;
            next.scopes = scopes.clone();
        }
        if let Some(label) = &self.label {
            validate_label(label.as_deref())?;
            next.label = label.clone();
        }
        if let Some(expires_at) = self.expires_at {
            validate_expiry(expires_at, now)?;
            next.expires_at = expires_at;
        }
        if let Some(cidrs) = &self.allow_cidrs {
            next.allow_cidrs = canonical_cidrs(cidrs)?;
        }
        if let Some(rate) = self.rate {
            validate_rate(rate)?;
            next.rate = rate;
        }
        Ok(next)
    }
}

/// Whether `scope` is a valid scope name: 1-64 characters of `A-Z a-z 0-9 . _ : -`.
///
/// Scopes travel to the backend in `X-Portcullis-Scopes`, so they must be header-safe and
/// free of the list separators (comma, space).
pub fn is_scope(scope: &str) -> bool {
    (1..=MAX_SCOPE_LEN).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn validate_scopes(scopes: &BTreeSet<String>) -> Result<(), KeyError> {
    if scopes.len() > MAX_SCOPES {
        return Err(KeyError::TooManyScopes { max: MAX_SCOPES });
    }
    if scopes.iter().all(|s| is_scope(s)) {
        Ok(())
    } else {
        Err(KeyError::InvalidScope)
    }
}

fn validate_label(label: Option<&str>) -> Result<(), KeyError> {
    match label {
        Some(text) if !is_display_text(text, MAX_LABEL_CHARS) => Err(KeyError::InvalidLabel),
        _ => Ok(()),
    }
}

fn validate_expiry(expires_at: Option<u64>, now: u64) -> Result<(), KeyError> {
    match expires_at {
        Some(at) if at <= now => Err(KeyError::ExpiryNotInFuture),
        _ => Ok(()),
    }
}

fn validate_rate(rate: Option<RateOverride>) -> Result<(), KeyError> {
    match rate {
        Some(r) if r.per_minute == 0 || r.burst == 0 => Err(KeyError::InvalidRate),
        _ => Ok(()),
    }
}

/// Truncates each block to its network address and removes duplicates, keeping order.
fn canonical_cidrs(cidrs: &[IpNet]) -> Result<Vec<IpNet>, KeyError> {
    if cidrs.len() > MAX_CIDRS {
        return Err(KeyError::TooManyCidrs { max: MAX_CIDRS });
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(cidrs.len());
    for net in cidrs.iter().map(IpNet::trunc) {
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    pub(crate) fn sample_record() -> KeyRecord {
        KeyRecord {
            id: "0a1b2c3d".parse().unwrap(),
            org: "acme".to_owned(),
            env: Env::Live,
            scopes: scopes(&["notes:read"]),
            label: Some("connector".to_owned()),
            created_at: 100,
            expires_at: Some(200),
            status: KeyStatus::Revoked {
                at: 150,
                reason: RevokeReason::KeyInUrl,
            },
            last_used_at: Some(140),
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            hash: [0xab; 32],
            previous: Some(PreviousSecret {
                hash: [0xcd; 32],
                valid_until: 160,
            }),
            rate: Some(RateOverride {
                per_minute: 60,
                burst: 10,
            }),
            namespace: "pcl".to_owned(),
        }
    }

    #[test]
    fn record_json_round_trip_and_shape() {
        let record = sample_record();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["id"], "0a1b2c3d");
        assert_eq!(json["env"], "live");
        assert_eq!(json["status"]["state"], "revoked");
        assert_eq!(json["status"]["reason"], "key_in_url");
        assert_eq!(json["hash"], "ab".repeat(32));
        assert_eq!(json["previous"]["hash"], "cd".repeat(32));
        assert_eq!(json["allow_cidrs"][0], "10.0.0.0/8");
        let back: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(record.display_prefix(), "pcl_live_0a1b2c3d");
        assert!(record.is_revoked());
        assert!(record.is_expired(200));
        assert!(!record.is_expired(199));
    }

    #[test]
    fn debug_leaves_out_hashes() {
        let text = format!("{:?}", sample_record());
        assert!(!text.contains("171, 171"), "{text}");
        assert!(!text.contains("abab"), "{text}");
        assert!(text.contains("valid_until"));
    }

    #[test]
    fn bad_stored_hash_does_not_decode() {
        let mut json = serde_json::to_value(sample_record()).unwrap();
        json["hash"] = "AB".repeat(32).into();
        assert!(serde_json::from_value::<KeyRecord>(json).is_err());
    }

    #[test]
    fn mint_request_validation() {
        let ok = MintRequest::new("acme", Env::Test, scopes(&["notes:read", "READ_PATIENTS"]));
        assert!(ok.validate(10).is_ok());
        let check = |change: &dyn Fn(&mut MintRequest)| {
            let mut req = ok.clone();
            change(&mut req);
            req.validate(10).unwrap_err()
        };
        assert!(matches!(
            check(&|r| r.org = "Acme".into()),
            KeyError::InvalidOrg
        ));
        assert!(matches!(
            check(&|r| r.org = String::new()),
            KeyError::InvalidOrg
        ));
        assert!(matches!(
            check(&|r| r.scopes = scopes(&["a b"])),
            KeyError::InvalidScope
        ));
        assert!(matches!(
            check(&|r| r.scopes = scopes(&["a,b"])),
            KeyError::InvalidScope
        ));
        assert!(matches!(
            check(&|r| r.scopes = scopes(&[""])),
            KeyError::InvalidScope
        ));
        assert!(matches!(
            check(&|r| r.scopes = (0..65).map(|n| format!("s{n}")).collect()),
            KeyError::TooManyScopes { max: 64 }
        ));
        assert!(matches!(
            check(&|r| r.label = Some(String::new())),
            KeyError::InvalidLabel
        ));
        assert!(matches!(
            check(&|r| r.label = Some("a\u{7}b".into())),
            KeyError::InvalidLabel
        ));
        assert!(matches!(
            check(&|r| r.label = Some("x".repeat(129))),
            KeyError::InvalidLabel
        ));
        assert!(matches!(
            check(&|r| r.expires_at = Some(10)),
            KeyError::ExpiryNotInFuture
        ));
        assert!(matches!(
            check(&|r| r.rate = Some(RateOverride {
                per_minute: 0,
                burst: 1
            })),
            KeyError::InvalidRate
        ));
        assert!(matches!(
            check(&|r| r.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap(); 257]),
            KeyError::TooManyCidrs { max: 256 }
        ));
    }

    #[test]
    fn cidrs_are_canonical() {
        let mut req = MintRequest::new("acme", Env::Test, BTreeSet::new());
        req.allow_cidrs = vec![
            "10.1.2.3/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::1/32".parse().unwrap(),
        ];
        let cidrs = req.validate(0).unwrap();
        let text: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.0.0.0/8", "2001:db8::/32"]);
    }

    #[test]
    fn changes_apply_and_clear() {
        let mut record = sample_record();
        record.status = KeyStatus::Active;
        assert!(matches!(
            KeyChanges::default().apply(&record, 0),
            Err(KeyError::NoChanges)
        ));
        let changes = KeyChanges {
            scopes: Some(scopes(&["a", "b"])),
            label: Some(None),
            expires_at: Some(None),
            allow_cidrs: Some(Vec::new()),
            rate: Some(None),
        };
        let next = changes.apply(&record, 0).unwrap();
        assert_eq!(next.scopes, scopes(&["a", "b"]));
        assert_eq!(next.label, None);
        assert_eq!(next.expires_at, None);
        assert!(next.allow_cidrs.is_empty());
        assert_eq!(next.rate, None);
        assert_eq!(next.hash, record.hash);
        let past = KeyChanges {
            expires_at: Some(Some(5)),
            ..KeyChanges::default()
        };
        assert!(matches!(
            past.apply(&record, 5),
            Err(KeyError::ExpiryNotInFuture)
        ));
    }
}
