//! The stored record: a small clear header and a sealed payload.
//!
//! ```text
//! version u8 | created_ms u64 | expires_ms u64 | lease_until_ms u64 | fingerprint [32]
//!            | nonce [24] | sealed payload (ciphertext + 16-byte tag)
//! ```
//!
//! Only what the store itself must read is in clear: the timestamps (the sweep removes
//! expired records without the key) and the fingerprint. Whether the request is still in
//! progress, and the whole answer (status, headers, body), is inside the seal. The seal's
//! associated data is the record's scope (its store key) and the clear header, so a record
//! moved to another tenant's scope, or whose timestamps or fingerprint were edited, fails to
//! open and is treated as absent.
//!
//! All integers are big-endian. Decoding checks every length, so damaged bytes are an error,
//! never a panic.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::fingerprint::{Fingerprint, RecordScope, DIGEST_LEN};
use super::seal::{SealError, Sealer, NONCE_LEN, TAG_LEN};
use crate::keys::secret::wipe;

/// The record layout this code writes.
pub const VERSION: u8 = 1;

/// Bytes in the clear header.
const HEADER_LEN: usize = 1 + 8 + 8 + 8 + DIGEST_LEN;

/// Offset of `expires_ms` in a record.
const EXPIRES_AT: usize = 1 + 8;

/// Prefix of the associated data, naming the construction.
const AAD_LABEL: &[u8] = b"portcullis/idempotency/record/v1";

/// Payload tags.
const PENDING: u8 = 0;
const STORED: u8 = 1;
const TOO_LARGE: u8 = 2;

/// The clear part of a record.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// When the first request with this key arrived (unix milliseconds).
    pub created_ms: u64,
    /// When the record stops counting (unix milliseconds): from then on the key is new again.
    pub expires_ms: u64,
    /// Until when the request holding the record may still finish (unix milliseconds); zero
    /// once an answer is recorded.
    pub lease_until_ms: u64,
    /// The request the key was first used for.
    pub fingerprint: Fingerprint,
}

/// What a record says about its request.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Forwarded, no answer yet.
    Pending,
    /// The answer to replay.
    Stored(StoredResponse),
    /// The answer was forwarded but was too large to keep, so it cannot be replayed.
    TooLarge {
        /// Its status.
        status: StatusCode,
    },
}

/// A backend answer kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The header fields worth replaying, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

/// Why stored bytes are not a usable record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Too short, or an unknown layout version.
    #[error("the record is truncated or of an unknown layout")]
    Layout,
    /// The seal did not open: another key, another scope, or altered bytes.
    #[error("the record does not authenticate")]
    Unauthentic,
    /// The seal opened but the payload inside does not decode (a bug, never input).
    #[error("the record's payload does not decode")]
    Payload,
}

/// Seals `payload` for `scope` under `header` into the bytes to store.
pub fn encode(
    sealer: &Sealer,
    scope: &RecordScope,
    header: &Header,
    payload: &Payload,
) -> Result<Vec<u8>, SealError> {
    let clear = encode_header(header);
    let mut plaintext = encode_payload(payload);
    let sealed = sealer.seal(&aad(scope, &clear), &plaintext);
    wipe(&mut plaintext);
    let sealed = sealed?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.ciphertext.len());
    bytes.extend_from_slice(&clear);
    bytes.extend_from_slice(&sealed.nonce);
    bytes.extend_from_slice(&sealed.ciphertext);
    Ok(bytes)
}

/// Opens stored bytes found under `scope`.
pub fn decode(
    sealer: &Sealer,
    scope: &RecordScope,
    bytes: &[u8],
) -> Result<(Header, Payload), RecordError> {
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || bytes[0] != VERSION {
        return Err(RecordError::Layout);
    }
    let (clear, rest) = bytes.split_at(HEADER_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| RecordError::Layout)?;
    let header = decode_header(clear).ok_or(RecordError::Layout)?;
    let plaintext = sealer
        .open(&aad(scope, clear), &nonce, ciphertext)
        .map_err(|_| RecordError::Unauthentic)?;
    let payload = decode_payload(plaintext).ok_or(RecordError::Payload)?;
    Ok((header, payload))
}

/// When a stored record expires, read from its clear header without the key.
pub fn expires_ms(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
        return None;
    }
    read_u64(bytes, EXPIRES_AT)
}

fn aad(scope: &RecordScope, clear: &[u8]) -> Vec<u8> {
    let scope = scope.as_bytes();
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 4 + scope.len() + clear.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(&(scope.len() as u32).to_be_bytes());
    aad.extend_from_slice(scope);
    aad.extend_from_slice(clear);
    aad
}

fn encode_header(header: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&header.created_ms.to_be_bytes());
    out[9..17].copy_from_slice(&header.expires_ms.to_be_bytes());
    out[17..25].copy_from_slice(&header.lease_until_ms.to_be_bytes());
    out[25..].copy_from_slice(header.fingerprint.as_bytes());
    out
}

fn decode_header(clear: &[u8]) -> Option<Header> {
    let fingerprint: [u8; DIGEST_LEN] = clear.get(25..HEADER_LEN)?.try_into().ok()?;
    Some(Header {
        created_ms: read_u64(clear, 1)?,
        expires_ms: read_u64(clear, 9)?,
        lease_until_ms: read_u64(clear, 17)?,
        fingerprint: Fingerprint::from_bytes(fingerprint),
    })
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let field: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(field))
}

fn encode_payload(payload: &Payload) -> Vec<u8> {
    match payload {
        Payload::Pending => vec![PENDING],
        Payload::TooLarge { status } => {
            let mut out = vec![TOO_LARGE];
            out.extend_from_slice(&status.as_u16().to_be_bytes());
            out
        }
        Payload::Stored(response) => {
            let header_bytes: usize = response
                .headers
                .iter()
                .map(|(n, v)| 6 + n.as_str().len() + v.len())
                .sum();
            let mut out = Vec::with_capacity(5 + header_bytes + response.body.len());
            out.push(STORED);
            out.extend_from_slice(&response.status.as_u16().to_be_bytes());
            // Header counts and sizes are bounded by the listener's limits far below these
            // widths; a field that somehow exceeds them is left out rather than mis-encoded.
            let fields: Vec<_> = response
                .headers
                .iter()
                .filter(|(name, value)| {
                    u16::try_from(name.as_str().len()).is_ok() && u32::try_from(value.len()).is_ok()
                })
                .take(usize::from(u16::MAX))
                .collect();
            out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (name, value) in fields {
                out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value.as_bytes());
            }
            out.extend_from_slice(&response.body);
            out
        }
    }
}

fn decode_payload(mut plaintext: Vec<u8>) -> Option<Payload> {
    let mut reader = Reader {
        bytes: &plaintext,
        at: 0,
    };
    let payload = match reader.u8()? {
        PENDING if reader.at == plaintext.len() => Payload::Pending,
        TOO_LARGE => {
            let status = StatusCode::from_u16(reader.u16()?).ok()?;
            (reader.at == plaintext.len()).then_some(Payload::TooLarge { status })?
        }
        STORED => {
            let status = StatusCode::from_u16(reader.u16()?).ok()?;
            let count = reader.u16()?;
            let mut headers = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let name_len = usize::from(reader.u16()?);
                let name = HeaderName::from_bytes(reader.take(name_len)?).ok()?;
                let value_len = usize::try_from(reader.u32()?).ok()?;
                let value = HeaderValue::from_bytes(reader.take(value_len)?).ok()?;
                headers.push((name, value));
            }
            let body_at = reader.at;
            let body = Bytes::from(plaintext.split_off(body_at));
            Payload::Stored(StoredResponse {
                status,
                headers,
                body,
            })
        }
        _ => return None,
    };
    wipe(&mut plaintext);
    Some(payload)
}

/// A bounds-checked cursor over decrypted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fingerprint::RecordScope;
    use super::super::seal::SealKeys;
    use super::*;

    fn header() -> Header {
        Header {
            created_ms: 1_000,
            expires_ms: 86_401_000,
            lease_until_ms: 31_000,
            fingerprint: Fingerprint::from_bytes([9; DIGEST_LEN]),
        }
    }

    fn stored() -> Payload {
        Payload::Stored(StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("a=1"),
                ),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("b=2"),
                ),
            ],
            body: Bytes::from_static(b"{\"note\":\"PHI canary\"}"),
        })
    }

    #[test]
    fn every_payload_round_trips() {
        let keys = SealKeys::from_master(&[3; 32]);
        let scope = RecordScope::from_stored(b"org\x00key\x00digest".to_vec());
        for payload in [
            Payload::Pending,
            stored(),
            Payload::TooLarge {
                status: StatusCode::OK,
            },
        ] {
            let bytes = encode(keys.sealer(), &scope, &header(), &payload).unwrap();
            assert_eq!(expires_ms(&bytes), Some(86_401_000));
            let (read, back) = decode(keys.sealer(), &scope, &bytes).unwrap();
            assert_eq!(read.created_ms, 1_000);
            assert_eq!(read.lease_until_ms, 31_000);
            assert!(read.fingerprint.matches(&header().fingerprint));
            assert_eq!(format!("{back:?}"), format!("{payload:?}"));
        }
    }

    #[test]
    fn the_answer_is_not_in_clear() {
        let keys = SealKeys::from_master(&[3; 32]);
        let scope = RecordScope::from_stored(b"s".to_vec());
        let bytes = encode(keys.sealer(), &scope, &header(), &stored()).unwrap();
        for needle in [&b"PHI canary"[..], b"application/json", b"set-cookie"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn moved_or_edited_records_do_not_open() {
        let keys = SealKeys::from_master(&[3; 32]);
        let scope = RecordScope::from_stored(b"org-a\x00k\x00d".to_vec());
        let bytes = encode(keys.sealer(), &scope, &header(), &stored()).unwrap();
        let elsewhere = RecordScope::from_stored(b"org-b\x00k\x00d".to_vec());
        assert_eq!(
            decode(keys.sealer(), &elsewhere, &bytes).unwrap_err(),
            RecordError::Unauthentic
        );
        // Extending the expiry in the clear header breaks the seal.
        let mut edited = bytes.clone();
        edited[EXPIRES_AT + 7] ^= 1;
        assert_eq!(
            decode(keys.sealer(), &scope, &edited).unwrap_err(),
            RecordError::Unauthentic
        );
        let mut version = bytes.clone();
        version[0] = 99;
        assert_eq!(
            decode(keys.sealer(), &scope, &version).unwrap_err(),
            RecordError::Layout
        );
        for len in [0, 1, HEADER_LEN, HEADER_LEN + NONCE_LEN + TAG_LEN - 1] {
            assert_eq!(
                decode(keys.sealer(), &scope, &bytes[..len]).unwrap_err(),
                RecordError::Layout
            );
        }
        assert_eq!(expires_ms(&bytes[..EXPIRES_AT + 4]), None);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        for plaintext in [
            vec![],
            vec![PENDING, 0],
            vec![TOO_LARGE, 0],
            vec![TOO_LARGE, 0, 200, 0],
            vec![STORED, 0, 200, 0, 1, 0, 4, b'a'],
            vec![STORED, 0, 200, 0, 1, 0, 1, b' ', 0, 0, 0, 0],
            vec![STORED, 3, 232],
            vec![7],
        ] {
            assert!(decode_payload(plaintext.clone()).is_none(), "{plaintext:?}");
        }
    }
}
