//! Why a key operation failed.
//!
//! These errors go back to administrators (CLI, admin socket). They name key ids and rules,
//! never secrets, and never repeat rejected input, which could be a mistyped secret.

use super::format::{FormatError, KeyId};
use super::pepper::PepperError;
use super::secret::RandomError;
use crate::store::StoreError;

/// Why an administrative key operation (load, mint, rotate, revoke, update, touch) failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The pepper file could not be used.
    #[error(transparent)]
    Pepper(#[from] PepperError),
    /// Persistent state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness for an id or a secret.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The configured namespace is not a valid key namespace.
    #[error("invalid key namespace: {0}")]
    Namespace(#[source] FormatError),
    /// No key has this id.
    #[error("no API key with id {0}")]
    NotFound(KeyId),
    /// The key was already revoked; revocation happens once.
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(KeyId),
    /// The key is revoked and can no longer be rotated or changed.
    #[error("API key {0} is revoked and cannot be changed; mint a new key")]
    Revoked(KeyId),
    /// The organization id breaks the org id rules.
    #[error("organization id must be 1-63 characters of a-z, 0-9 and `-`, starting with a letter or digit")]
    InvalidOrg,
    /// A scope name breaks the scope rules.
    #[error("a scope is 1-64 characters of A-Z, a-z, 0-9, `.`, `_`, `:` and `-`")]
    InvalidScope,
    /// Too many scopes on one key.
    #[error("a key may carry at most {max} scopes")]
    TooManyScopes {
        /// The limit.
        max: usize,
    },
    /// The label is empty, too long or holds control characters.
    #[error("a label is 1-128 printable characters")]
    InvalidLabel,
    /// Too many CIDR blocks on one key.
    #[error("a key's allowlist holds at most {max} networks")]
    TooManyCidrs {
        /// The limit.
        max: usize,
    },
    /// A rate override with a zero rate or burst.
    #[error("a rate override needs per_minute and burst of at least 1")]
    InvalidRate,
    /// An expiry at or before the current time.
    #[error("the expiry must be in the future")]
    ExpiryNotInFuture,
    /// An update that changes nothing.
    #[error("no changes given")]
    NoChanges,
    /// No unused id was found (the id space is nearly full, or the RNG is broken).
    #[error("could not find an unused key id")]
    IdSpaceExhausted,
}
