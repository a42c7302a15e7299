//! API keys: their text format, the pepper their secrets are hashed under, their records and
//! the registry that mints, verifies, rotates and revokes them.
//!
//! A key reads `<namespace>_<env>_<id>_<secret>` ([`mod@format`]). Only
//! `HMAC-SHA256(pepper, secret)` is stored ([`pepper`]); the full key text exists once, in the
//! [`MintedKey`] handed to the administrator. The [`KeyRegistry`] answers every request from
//! memory and writes every change through to the store.
//!
//! What callers rely on:
//! - the authentication gate calls [`KeyRegistry::verify`], then [`KeyRegistry::touch`] on
//!   success, and [`KeyRegistry::looks_like_key`] / [`KeyRegistry::contains_key`] on URLs;
//! - the admin socket calls `mint`, `rotate`, `revoke`, `update`, `get` and `list`, records
//!   each change in [`crate::admin_log`], and renders records without their hashes.
//!
//! [`secret_file`] is the one way a server secret file (the pepper, the idempotency sealing
//! key) is created and read.

pub mod error;
pub mod format;
pub(crate) mod hex;
pub mod pepper;
pub mod record;
pub mod registry;
pub mod secret;
pub mod secret_file;
pub mod verify;

#[cfg(test)]
mod tests;

pub use error::KeyError;
pub use format::{display_prefix, parse_key, Env, FormatError, KeyId, Namespace, ParsedKey};
pub use pepper::{Pepper, PepperError};
pub use record::{
    KeyChanges, KeyRecord, KeyStatus, MintRequest, PreviousSecret, RateOverride, RevokeReason,
};
pub use registry::{KeyRegistry, MintedKey};
pub use secret::{RandomError, Secret};
pub use verify::{VerifyError, VerifyFailure};
