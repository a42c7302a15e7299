//! Secret text (a key's secret part, or a whole key) that must not leak by accident.
//!
//! [`Secret`] has no `Display`, no `Serialize` and a redacting `Debug`, so it cannot reach a
//! log line, an error message or a stored record without an explicit
//! [`Secret::expose_secret`] call that reviewers can search for. Its buffer is overwritten with
//! zeros when dropped.

use std::fmt;

use super::format::SECRET_BYTES;
use super::hex;

/// The operating system's random number generator failed.
///
/// Kept as its own type so the getrandom error stays out of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomError(getrandom::Error);

impl From<getrandom::Error> for RandomError {
    fn from(err: getrandom::Error) -> Self {
        Self(err)
    }
}

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the operating system's random number generator failed: {}",
            self.0
        )
    }
}

impl std::error::Error for RandomError {}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(RandomError::from)
}

/// A secret string: a key's secret part, or a full key shown once to an administrator.
pub struct Secret(String);

impl Secret {
    /// A fresh 40-character lowercase hex secret (160 bits) from the OS CSPRNG.
    pub(crate) fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; SECRET_BYTES];
        let filled = fill_random(&mut bytes);
        let secret = filled.map(|()| {
            let mut text = String::with_capacity(SECRET_BYTES * 2);
            hex::encode_into(&bytes, &mut text);
            Self(text)
        });
        wipe(&mut bytes);
        secret
    }

    /// Wraps text that is already secret (built with exact capacity by the caller so that no
    /// reallocation leaves a copy behind).
    pub(crate) fn from_string(text: String) -> Self {
        Self(text)
    }

    /// The secret text. Every call site is a place the secret leaves this wrapper: show it to
    /// the administrator once, or hash it; never log or store it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

/// Overwrites `bytes` with zeros in a way the optimizer keeps.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hex::is_lower_hex_digit;

    #[test]
    fn generated_secrets_are_40_lowercase_hex_and_distinct() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert_eq!(a.expose_secret().len(), 40);
        assert!(a.expose_secret().bytes().all(is_lower_hex_digit));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn debug_redacts() {
        let secret = Secret::from_string("abc123".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(<redacted>))");
    }

    #[test]
    fn wipe_zeroes() {
        let mut bytes = *b"secret";
        wipe(&mut bytes);
        assert_eq!(bytes, [0; 6]);
    }
}
