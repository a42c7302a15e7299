//! The `Idempotency-Key` request header.
//!
//! Partners send it two ways: bare, as Stripe documents (`Idempotency-Key: 3f1c…`), or as a
//! structured-field string (RFC 8941 §3.3.3), as the IETF Idempotency-Key draft writes it
//! (`Idempotency-Key: "3f1c…"`). Both spell the same key: the quoted form is unescaped first,
//! so a client that changes style keeps its key. Either way the key itself is 1–255 visible
//! ASCII characters.
//!
//! Clients often build keys from patient or order ids, so an [`IdempotencyKey`] has no
//! `Display`, a redacting `Debug`, and is wiped on drop; only a keyed hash of it is stored.

use std::fmt;

use http::header::{HeaderMap, HeaderName};

use crate::keys::secret::wipe;

/// The request header that carries the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest key accepted, in characters (after unquoting).
pub const MAX_KEY_LEN: usize = 255;

/// Why a request's `Idempotency-Key` cannot be used. Messages describe the rule, never the
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyHeaderError {
    /// No `Idempotency-Key` field.
    #[error("this route requires an Idempotency-Key header")]
    Missing,
    /// More than one `Idempotency-Key` field: which one the client meant is unknowable.
    #[error("send exactly one Idempotency-Key header")]
    Repeated,
    /// The field is not a key in either accepted form.
    #[error(
        "the Idempotency-Key must be 1-255 visible ASCII characters, bare or as a quoted string"
    )]
    Malformed,
}

/// A validated key value, unquoted.
pub struct IdempotencyKey(Vec<u8>);

impl IdempotencyKey {
    /// The key's bytes, for hashing only.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdempotencyKey(<redacted>)")
    }
}

impl Drop for IdempotencyKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// The key a request carries.
pub fn from_headers(headers: &HeaderMap) -> Result<IdempotencyKey, KeyHeaderError> {
    let mut fields = headers.get_all(IDEMPOTENCY_KEY).iter();
    let first = fields.next().ok_or(KeyHeaderError::Missing)?;
    if fields.next().is_some() {
        return Err(KeyHeaderError::Repeated);
    }
    parse(first.as_bytes())
}

/// Parses one field value: optional surrounding whitespace, then a bare key or a quoted
/// string whose only escapes are `\"` and `\\`.
pub fn parse(field: &[u8]) -> Result<IdempotencyKey, KeyHeaderError> {
    let value = trim_whitespace(field);
    let key = match value.split_first() {
        Some((b'"', quoted)) => unquote(quoted)?,
        _ => IdempotencyKey(value.to_vec()),
    };
    let valid = (1..=MAX_KEY_LEN).contains(&key.0.len()) && key.0.iter().all(u8::is_ascii_graphic);
    if valid {
        Ok(key)
    } else {
        Err(KeyHeaderError::Malformed)
    }
}

/// The characters of a structured-field string after its opening quote, unescaped; the
/// closing quote must end the value.
fn unquote(quoted: &[u8]) -> Result<IdempotencyKey, KeyHeaderError> {
    let mut key = IdempotencyKey(Vec::with_capacity(quoted.len()));
    let mut bytes = quoted.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.0.push(escaped),
                _ => return Err(KeyHeaderError::Malformed),
            },
            b'"' if bytes.next().is_none() => return Ok(key),
            b'"' => return Err(KeyHeaderError::Malformed),
            other => key.0.push(other),
        }
    }
    Err(KeyHeaderError::Malformed)
}

/// Strips optional whitespace (space and tab) around a field value.
fn trim_whitespace(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parsed(value: &str) -> Result<Vec<u8>, KeyHeaderError> {
        parse(value.as_bytes()).map(|key| key.as_bytes().to_vec())
    }

    #[test]
    fn bare_and_quoted_forms_name_the_same_key() {
        assert_eq!(parsed("demo-link-001").unwrap(), b"demo-link-001");
        assert_eq!(parsed("\"demo-link-001\"").unwrap(), b"demo-link-001");
        assert_eq!(parsed("  \tdemo-link-001 ").unwrap(), b"demo-link-001");
        assert_eq!(parsed(r#""a\"b\\c""#).unwrap(), br#"a"b\c"#);
        // A bare key may hold any visible character, quotes included.
        assert_eq!(parsed(r#"ab"c"#).unwrap(), br#"ab"c"#);
    }

    #[test]
    fn length_limits_are_inclusive() {
        assert!(parsed(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert_eq!(
            parsed(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(KeyHeaderError::Malformed)
        );
        let quoted = format!("\"{}\"", "k".repeat(MAX_KEY_LEN));
        assert!(parsed(&quoted).is_ok());
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in [
            "",
            "   ",
            "\"\"",
            "a b",
            "\"a b\"",
            "\"unterminated",
            "\"a\"b",
            "\"a\" b",
            r#""bad\escape""#,
            "\"trailing\\",
            "caf\u{e9}",
            "tab\tinside",
        ] {
            assert_eq!(parsed(value), Err(KeyHeaderError::Malformed), "{value:?}");
        }
        assert_eq!(
            parse(&[0x6b, 0x80, 0x6b]).map(|_| ()),
            Err(KeyHeaderError::Malformed)
        );
    }

    #[test]
    fn missing_and_repeated_fields() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            from_headers(&headers).map(|_| ()),
            Err(KeyHeaderError::Missing)
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("one"));
        assert!(from_headers(&headers).is_ok());
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("two"));
        assert_eq!(
            from_headers(&headers).map(|_| ()),
            Err(KeyHeaderError::Repeated)
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let key = parse(b"patient-12345").unwrap();
        assert_eq!(format!("{key:?}"), "IdempotencyKey(<redacted>)");
    }
}
