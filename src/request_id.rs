//! Request ids: one per request, sent to the backend, returned to the client, written to the
//! audit record.
//!
//! A client may bring its own id, but only in canonical UUID form. The id lands in audit
//! records and logs, so free text (which could carry a patient name) is replaced, never kept.

use std::fmt;

use http::{HeaderMap, HeaderValue};

/// The header that carries the id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request id in canonical lower-case UUID form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Adopts the client's `X-Request-Id` when it is a UUID, otherwise mints a fresh one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    /// Accepts `8-4-4-4-12` hex digits, in either case, and normalises to lower case.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let well_formed = bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        well_formed.then(|| Self(text.to_ascii_lowercase()))
    }

    /// A random version-4 UUID from the OS generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // The OS generator failing is not a reason to refuse a request; uniqueness is
            // still kept by the clock and a process-wide counter.
            fallback_bytes(&mut bytes);
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let mut text = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        Self(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a header value (always valid: it is ASCII hex and dashes).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn fallback_bytes(bytes: &mut [u8; 16]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    bytes[..8].copy_from_slice(&nanos.to_le_bytes());
    bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v4_and_round_trip() {
        let id = RequestId::generate();
        assert_eq!(RequestId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(&id.as_str()[14..15], "4");
        assert_ne!(RequestId::generate(), id);
    }

    #[test]
    fn client_ids_are_kept_only_when_uuid_shaped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_static("9F1C1B4E-2D7A-4C3B-8E5F-0A1B2C3D4E5F"),
        );
        assert_eq!(
            RequestId::from_headers(&headers).as_str(),
            "9f1c1b4e-2d7a-4c3b-8e5f-0a1b2c3d4e5f"
        );
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_static("John Smith MRN 12345"),
        );
        let replaced = RequestId::from_headers(&headers);
        assert!(!replaced.as_str().contains("Smith"));
        assert!(RequestId::parse(replaced.as_str()).is_some());
    }
}
