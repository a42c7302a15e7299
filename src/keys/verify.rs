//! Checking a presented key: the heart of authentication.
//!
//! Every way of being wrong about the secret (bad format, other namespace, unknown id, wrong
//! secret, old secret past its grace) is the same [`VerifyError::Invalid`], reached through the
//! same work: one HMAC of the presented secret (or of a fixed dummy when there is no secret to
//! hash), one record load (of a placeholder record when there is no such key) and two
//! constant-time comparisons. So neither the answer nor its timing tells a caller whether an id
//! exists. Only a caller who holds the right secret learns that a key is revoked or expired.
//!
//! The env part is bound too: a test key's secret presented as `<ns>_live_<id>_...` is
//! invalid, so the env a caller reads from a verified record is the env the partner sent.

use std::sync::Arc;

use subtle::{Choice, ConstantTimeEq};

use super::format::{parse_key, KeyId, SECRET_LEN};
use super::record::KeyRecord;
use super::registry::KeyRegistry;

/// Hashed in place of a secret when the presented text is not a key, so that path costs the
/// same HMAC as the others.
const DUMMY_SECRET: &[u8; SECRET_LEN] = b"0000000000000000000000000000000000000000";

/// Compared against when a key has no previous secret; a match on it is discarded.
const DUMMY_HASH: [u8; 32] = [0u8; 32];

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum VerifyError {
    /// Malformed, another deployment's, unknown, or the wrong secret (deliberately one case).
    #[error("invalid API key")]
    Invalid,
    /// The secret matched, but the key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The secret matched, but the key passed its expiry.
    #[error("API key expired")]
    Expired,
}

/// A refused key, with the id it claimed to be.
///
/// `presented_id` is set whenever the text had this deployment's key shape, whether or not
/// such a key exists, so the caller can throttle failed attempts per key id (and per client
/// address) without this module revealing which ids are real. It is safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct VerifyFailure {
    /// The refusal.
    pub error: VerifyError,
    /// The id part of a well-formed presented key.
    pub presented_id: Option<KeyId>,
}

impl KeyRegistry {
    /// Authenticates `presented` (the raw credential text) at time `now` (unix seconds).
    ///
    /// On success returns the key's record; the caller then applies scopes, gating and the
    /// allowlist from it, and calls [`KeyRegistry::touch`]. Reads memory only; never blocks
    /// on admin writes for longer than an index insert.
    pub fn verify(&self, presented: &str, now: u64) -> Result<Arc<KeyRecord>, VerifyFailure> {
        let parsed = parse_key(presented)
            .ok()
            .filter(|parsed| parsed.namespace() == self.namespace.as_str());
        let presented_id = parsed.map(|parsed| parsed.id());
        let presented_env = parsed.map(|parsed| parsed.env());
        let secret: &[u8] = parsed.map_or(DUMMY_SECRET.as_slice(), |parsed| parsed.secret());

        let computed = self.hasher.hash(secret);
        let slot = presented_id.and_then(|id| self.slot(id));
        let found = slot.is_some();
        let record = slot
            .unwrap_or_else(|| Arc::clone(&self.placeholder))
            .record
            .load_full();

        // Both comparisons always run, against a dummy when there is no previous secret.
        let previous = record.previous.map_or(DUMMY_HASH, |p| p.hash);
        let previous_live = record.previous.is_some_and(|p| now < p.valid_until);
        let matched = computed.ct_eq(&record.hash)
            | (computed.ct_eq(&previous) & Choice::from(u8::from(previous_live)));
        let same_key = found
            && Some(record.env) == presented_env
            && record.namespace == self.namespace.as_str();

        let fail = |error| VerifyFailure {
            error,
            presented_id,
        };
        if !(bool::from(matched) && same_key) {
            return Err(fail(VerifyError::Invalid));
        }
        if record.is_revoked() {
            return Err(fail(VerifyError::Revoked));
        }
        if record.is_expired(now) {
            return Err(fail(VerifyError::Expired));
        }
        Ok(record)
    }
}
