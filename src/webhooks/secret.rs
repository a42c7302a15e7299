//! Webhook signing secrets: generated, parsed, shown once, and never leaked by accident.
//!
//! A [`Secret`] has no `Display` and no `Serialize`, and its `Debug` is redacted, so it can
//! reach a log line or a stored record only through an explicit [`Secret::expose`] call that
//! reviewers can search for. Both the text and the decoded key are wiped when it is dropped.

use std::fmt;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::sign::Scheme;

/// The prefix of every Standard Webhooks secret; what follows it is base64.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a generated secret (256 bits).
pub const GENERATED_KEY_BYTES: usize = 32;

/// Bounds of the decoded key of a `whsec_` secret, as the Standard Webhooks spec asks.
const STANDARD_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Bounds, in characters, of a secret used as text (the `stripe` and `split` schemes).
const TEXT_CHARS: std::ops::RangeInclusive<usize> = 16..=256;

/// Why a secret was refused. The messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is too short or too long to be a secret.
    #[error("a signing secret is {min} to {max} characters long, this one has {len}")]
    Length {
        /// Characters given.
        len: usize,
        /// Fewest accepted.
        min: usize,
        /// Most accepted.
        max: usize,
    },
    /// The text holds a space, a control character or a non-ASCII character.
    #[error("a signing secret holds visible ASCII characters only (no spaces)")]
    Charset,
    /// The `standard` scheme needs the `whsec_<base64>` form.
    #[error("a standard webhooks secret starts with `whsec_`")]
    MissingPrefix,
    /// What follows `whsec_` is not base64.
    #[error("what follows `whsec_` is not valid base64")]
    Base64,
    /// What follows `whsec_` decodes to too few or too many bytes.
    #[error("what follows `whsec_` decodes to {len} bytes, a key has 24 to 64")]
    KeyLength {
        /// Decoded bytes.
        len: usize,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
}

/// A webhook signing secret.
///
/// The text (what the subscriber is shown once and what is stored sealed) is kept with, for a
/// `whsec_<base64>` secret, its decoded key, so signing never decodes on the hot path. Which
/// bytes key the HMAC depends on the scheme: the decoded key for `standard`, the text for
/// `stripe` and `split`.
#[derive(Clone)]
pub struct Secret {
    text: Zeroizing<String>,
    /// The base64-decoded part after `whsec_`, when the text has that form.
    decoded: Option<Zeroizing<Vec<u8>>>,
    /// HMAC keys prepared once (signing is on the delivery hot path): the text's, and the
    /// decoded bytes' when there are any. aws-lc wipes them when they are dropped.
    text_key: hmac::Key,
    decoded_key: Option<hmac::Key>,
}

impl Secret {
    /// A fresh `whsec_<base64 of 32 random bytes>` secret from the OS CSPRNG.
    ///
    /// That one form serves every scheme: `standard` keys the HMAC with the 32 bytes,
    /// `stripe` and `split` with the whole text, as their receivers' libraries do.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = Zeroizing::new([0u8; GENERATED_KEY_BYTES]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| SecretError::Random)?;
        let encoded_len = SECRET_PREFIX.len() + GENERATED_KEY_BYTES.div_ceil(3) * 4;
        let mut text = Zeroizing::new(String::with_capacity(encoded_len));
        text.push_str(SECRET_PREFIX);
        BASE64.encode_string(bytes.as_slice(), &mut text);
        Ok(Self::new(text, Some(Zeroizing::new(bytes.to_vec()))))
    }

    /// Reads a secret that fits at least one scheme: either `whsec_<base64 of 24–64 bytes>`,
    /// or 16–256 visible ASCII characters (the `stripe`/`split` form).
    ///
    /// Text starting with `whsec_` whose remainder is not valid base64 is still accepted as a
    /// text secret; [`Secret::parse_for`] is the strict check for one scheme.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        match standard_key(text) {
            Ok(key) => Ok(Self::new(Zeroizing::new(text.to_owned()), Some(key))),
            Err(standard_error) => {
                check_text(text).map_err(|text_error| {
                    // Explain the whsec_ problem when the text claims that form.
                    if text.starts_with(SECRET_PREFIX) && text_error != SecretError::Charset {
                        standard_error
                    } else {
                        text_error
                    }
                })?;
                Ok(Self::new(Zeroizing::new(text.to_owned()), None))
            }
        }
    }

    /// Reads a secret and checks it against the rule of `scheme`: `standard` needs
    /// `whsec_<base64 of 24–64 bytes>`, `stripe` and `split` accept 16–256 visible ASCII
    /// characters (a `whsec_` secret among them).
    pub fn parse_for(scheme: &Scheme, text: &str) -> Result<Self, SecretError> {
        match scheme {
            Scheme::Standard => {
                let decoded = standard_key(text)?;
                Ok(Self::new(Zeroizing::new(text.to_owned()), Some(decoded)))
            }
            Scheme::Stripe { .. } | Scheme::Split { .. } => {
                check_text(text)?;
                Ok(Self::new(
                    Zeroizing::new(text.to_owned()),
                    standard_key(text).ok(),
                ))
            }
        }
    }

    /// Wraps checked text and its decoded key, preparing both HMAC keys.
    fn new(text: Zeroizing<String>, decoded: Option<Zeroizing<Vec<u8>>>) -> Self {
        Self {
            text_key: hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()),
            decoded_key: decoded
                .as_ref()
                .map(|key| hmac::Key::new(hmac::HMAC_SHA256, key)),
            text,
            decoded,
        }
    }

    /// The secret text. Every call site is a place the secret leaves this wrapper: show it
    /// to the subscriber once, or seal it for storage; never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Whether the secret has the `whsec_<base64>` form the `standard` scheme expects.
    pub fn is_standard(&self) -> bool {
        self.decoded.is_some()
    }

    /// The bytes behind [`Secret::hmac_key`], for tests.
    #[cfg(test)]
    pub(crate) fn key_bytes(&self, scheme: &Scheme) -> &[u8] {
        match (scheme, &self.decoded) {
            (Scheme::Standard, Some(key)) => key.as_slice(),
            _ => self.text.as_bytes(),
        }
    }

    /// The prepared HMAC-SHA256 key under `scheme`: of the decoded bytes after `whsec_` for
    /// `standard` (of the raw text when the secret lacks that form, so sign and verify still
    /// agree), of the text itself for `stripe` and `split`.
    pub(crate) fn hmac_key(&self, scheme: &Scheme) -> &hmac::Key {
        match (scheme, &self.decoded_key) {
            (Scheme::Standard, Some(key)) => key,
            _ => &self.text_key,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The decoded key of a `whsec_<base64>` secret, or why the text is not one.
fn standard_key(text: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let encoded = text
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::MissingPrefix)?;
    let key = Zeroizing::new(BASE64.decode(encoded).map_err(|_| SecretError::Base64)?);
    if !STANDARD_KEY_BYTES.contains(&key.len()) {
        return Err(SecretError::KeyLength { len: key.len() });
    }
    Ok(key)
}

/// Checks the length and alphabet of a text secret.
fn check_text(text: &str) -> Result<(), SecretError> {
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretError::Charset);
    }
    if !TEXT_CHARS.contains(&text.len()) {
        return Err(SecretError::Length {
            len: text.len(),
            min: *TEXT_CHARS.start(),
            max: *TEXT_CHARS.end(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_standard_form_and_differ() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.expose().len(), 6 + 44);
        assert!(a.is_standard());
        assert_eq!(a.key_bytes(&Scheme::Standard).len(), 32);
        assert_ne!(a.expose(), b.expose());
        let again = Secret::parse_for(&Scheme::Standard, a.expose()).unwrap();
        assert_eq!(
            again.key_bytes(&Scheme::Standard),
            a.key_bytes(&Scheme::Standard)
        );
    }

    #[test]
    fn debug_is_redacted() {
        let secret = Secret::parse("a-very-secret-text-value").unwrap();
        let shown = format!("{secret:?}");
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn standard_rule_is_strict() {
        let standard = Scheme::Standard;
        assert_eq!(
            Secret::parse_for(&standard, "plain-text-secret-value").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            Secret::parse_for(&standard, "whsec_not*base64*at*all").unwrap_err(),
            SecretError::Base64
        );
        // 16 bytes of key: too short.
        assert_eq!(
            Secret::parse_for(&standard, "whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap_err(),
            SecretError::KeyLength { len: 16 }
        );
        assert!(Secret::parse_for(&standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }

    #[test]
    fn text_rule_bounds_length_and_alphabet() {
        let stripe = Scheme::Stripe {
            header: http::HeaderName::from_static("x-sig"),
        };
        assert!(matches!(
            Secret::parse_for(&stripe, "short").unwrap_err(),
            SecretError::Length { len: 5, .. }
        ));
        assert!(matches!(
            Secret::parse_for(&stripe, &"x".repeat(257)).unwrap_err(),
            SecretError::Length { len: 257, .. }
        ));
        assert_eq!(
            Secret::parse_for(&stripe, "has a space in it ok").unwrap_err(),
            SecretError::Charset
        );
        assert_eq!(
            Secret::parse_for(&stripe, "nön-ascii-secret-text").unwrap_err(),
            SecretError::Charset
        );
        let text = Secret::parse_for(&stripe, "whsec_this is fine?").unwrap_err();
        assert_eq!(text, SecretError::Charset);
        let ok = Secret::parse_for(&stripe, "sk_test_1234567890abcdef").unwrap();
        assert_eq!(ok.key_bytes(&stripe), b"sk_test_1234567890abcdef");
        assert!(Secret::parse("x".repeat(256).as_str()).is_ok());
    }

    #[test]
    fn parse_explains_a_broken_whsec_secret() {
        assert_eq!(
            Secret::parse("whsec_").unwrap_err(),
            SecretError::KeyLength { len: 0 }
        );
        // A long whsec_ text that is not base64 is still a usable text secret.
        let text = Secret::parse("whsec_not-base64-but-long-enough").unwrap();
        assert!(!text.is_standard());
    }
}
