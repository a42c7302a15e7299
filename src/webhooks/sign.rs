//! Webhook signature schemes: pure functions that sign an event, and their verifying twin.
//!
//! Three schemes, chosen once in the policy (`[webhooks] scheme`), so that each partner's
//! receiver can keep the library it already uses:
//!
//! | scheme | headers | signed content | HMAC key |
//! |---|---|---|---|
//! | `standard` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` | `id.ts.body` | base64-decoded part after `whsec_` |
//! | `stripe` | `<header>: t=<ts>,v1=<hex>` | `ts.body` | the secret text itself |
//! | `split` | `<id header>`, `<timestamp header>`, `<signature header>: <hex>` | `ts.body` | the secret text itself |
//!
//! All signatures are HMAC-SHA256. While a secret rotates, every scheme carries one signature
//! per secret, so a receiver holding either the old or the new secret accepts the delivery:
//! `standard` separates them with a space (`v1,<a> v1,<b>`, as the spec says), `stripe`
//! repeats the `v1=` entry (`t=<ts>,v1=<a>,v1=<b>`, as Stripe does), and `split` separates
//! them with a comma (`<a>,<b>`, the HTTP list syntax; verification also accepts spaces).
//!
//! The HMAC is aws-lc's (the crypto library TLS already uses): its assembly SHA-256 is
//! several times faster than a portable one on CPUs without SHA extensions, and signing sits
//! on the delivery hot path. Verification compares every candidate in constant time
//! (`subtle`) and refuses a timestamp more than the tolerance away from the receiver's
//! clock, in either direction, which bounds how long a captured delivery can be replayed.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use subtle::ConstantTimeEq;

use crate::keys::hex;

pub use super::secret::{Secret, SecretError};

/// Bytes of an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// How far a timestamp may be from the verifier's clock, either way: five minutes, the
/// value the Standard Webhooks spec and Stripe both document.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Most candidate signatures looked at in one header; more only costs the verifier time.
const MAX_CANDIDATES: usize = 8;

/// `standard`: the event id header.
pub const STANDARD_ID_HEADER: HeaderName = HeaderName::from_static("webhook-id");
/// `standard`: the unix timestamp header.
pub const STANDARD_TIMESTAMP_HEADER: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `standard`: the signature list header.
pub const STANDARD_SIGNATURE_HEADER: HeaderName = HeaderName::from_static("webhook-signature");

/// How outbound webhooks are signed, chosen once in the policy (`[webhooks] scheme`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature: v1,<base64 HMAC-SHA256 of id.ts.body>`; the key is the base64
    /// text after `whsec_`, decoded.
    Standard,
    /// Stripe style: `<header>: t=<ts>,v1=<hex HMAC-SHA256 of ts.body>`; the key is the
    /// secret string itself.
    Stripe {
        /// The signature header, e.g. `X-Klinivo-Signature`.
        header: HeaderName,
    },
    /// Three headers: the event id, the timestamp and the hex HMAC-SHA256 of `ts.body`.
    Split {
        /// Header carrying the event id, e.g. `x-voti-event-id`.
        id_header: HeaderName,
        /// Header carrying the unix timestamp, e.g. `x-voti-timestamp`.
        timestamp_header: HeaderName,
        /// Header carrying the hex signature, e.g. `x-voti-signature`.
        signature_header: HeaderName,
    },
}

impl Scheme {
    /// The scheme's name as written in the policy and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Standard => "standard",
            Scheme::Stripe { .. } => "stripe",
            Scheme::Split { .. } => "split",
        }
    }
}

/// Why a delivery's signature was not accepted. Messages name headers, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("the {0} header is missing")]
    MissingHeader(HeaderName),
    /// A header is present but cannot be read.
    #[error("the {header} header is malformed: {reason}")]
    Malformed {
        /// The header.
        header: HeaderName,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The timestamp is older than the tolerance allows (a replay, or a very late delivery).
    #[error("the timestamp is {age_secs} s old, more than the {tolerance_secs} s tolerance")]
    Stale {
        /// Seconds between the timestamp and now.
        age_secs: u64,
        /// The tolerance in seconds.
        tolerance_secs: u64,
    },
    /// The timestamp is further in the future than the tolerance allows.
    #[error(
        "the timestamp is {ahead_secs} s in the future, more than the {tolerance_secs} s tolerance"
    )]
    Future {
        /// Seconds between now and the timestamp.
        ahead_secs: u64,
        /// The tolerance in seconds.
        tolerance_secs: u64,
    },
    /// No signature in the header was made with any of the secrets for this body.
    #[error("no signature matches the body with the given secret(s)")]
    NoMatch,
}

/// Signs one delivery: the headers to send, in order.
///
/// `secrets` holds the current secret first and then any secret still inside its rotation
/// grace; each adds one signature. `id` is the event id, sent unchanged on every attempt so
/// receivers can de-duplicate; it should be a visible-ASCII token (ours are generated), and
/// an id that cannot be a header value is left out rather than altered, so the receiver
/// refuses the delivery instead of accepting a changed id. With no secret, no signature
/// header is produced and receivers refuse the delivery: the caller must always pass one.
pub fn sign(
    scheme: &Scheme,
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(HeaderName, HeaderValue)> {
    let ts = timestamp.to_string();
    let mut headers = Vec::with_capacity(3);
    match scheme {
        Scheme::Standard => {
            let mut value = String::with_capacity(secrets.len() * 48);
            for secret in secrets {
                let tag = tag(
                    secret.hmac_key(scheme),
                    &[id.as_bytes(), ts.as_bytes()],
                    body,
                );
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str("v1,");
                BASE64.encode_string(tag.as_ref(), &mut value);
            }
            push_text(&mut headers, STANDARD_ID_HEADER, id);
            push_text(&mut headers, STANDARD_TIMESTAMP_HEADER, &ts);
            if !value.is_empty() {
                push_text(&mut headers, STANDARD_SIGNATURE_HEADER, &value);
            }
        }
        Scheme::Stripe { header } => {
            let mut value = String::with_capacity(2 + ts.len() + secrets.len() * 68);
            value.push_str("t=");
            value.push_str(&ts);
            for secret in secrets {
                let tag = tag(secret.hmac_key(scheme), &[ts.as_bytes()], body);
                value.push_str(",v1=");
                hex::encode_into(tag.as_ref(), &mut value);
            }
            if !secrets.is_empty() {
                push_text(&mut headers, header.clone(), &value);
            }
        }
        Scheme::Split {
            id_header,
            timestamp_header,
            signature_header,
        } => {
            let mut value = String::with_capacity(secrets.len() * 65);
            for secret in secrets {
                let tag = tag(secret.hmac_key(scheme), &[ts.as_bytes()], body);
                if !value.is_empty() {
                    value.push(',');
                }
                hex::encode_into(tag.as_ref(), &mut value);
            }
            push_text(&mut headers, id_header.clone(), id);
            push_text(&mut headers, timestamp_header.clone(), &ts);
            if !value.is_empty() {
                push_text(&mut headers, signature_header.clone(), &value);
            }
        }
    }
    headers
}

/// Checks a received delivery: `Ok` when the timestamp is within `tolerance` of `now` and
/// one of the signatures was made over `body` with one of `secrets`.
///
/// Every comparison is constant time. Only the first instance of each header is read.
/// Signatures of versions other than `v1` are ignored, as both Standard Webhooks and
/// Stripe specify, so a sender may add newer ones.
pub fn verify(
    scheme: &Scheme,
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    match scheme {
        Scheme::Standard => {
            let id = text_header(headers, &STANDARD_ID_HEADER)?;
            let ts_text = text_header(headers, &STANDARD_TIMESTAMP_HEADER)?;
            let signatures = text_header(headers, &STANDARD_SIGNATURE_HEADER)?;
            let ts = parse_timestamp(&STANDARD_TIMESTAMP_HEADER, ts_text)?;
            let candidates: Vec<Vec<u8>> = signatures
                .split(' ')
                .filter_map(|entry| entry.strip_prefix("v1,"))
                .filter_map(|encoded| BASE64.decode(encoded).ok())
                .take(MAX_CANDIDATES)
                .collect();
            if candidates.is_empty() {
                return Err(VerifyError::Malformed {
                    header: STANDARD_SIGNATURE_HEADER,
                    reason: "no `v1,<base64>` signature",
                });
            }
            check_age(ts, now, tolerance)?;
            matches_any(
                scheme,
                secrets,
                &[id.as_bytes(), ts_text.as_bytes()],
                body,
                &candidates,
            )
        }
        Scheme::Stripe { header } => {
            let value = text_header(headers, header)?;
            let mut ts_text = None;
            let mut candidates = Vec::new();
            for entry in value.split(',') {
                let Some((key, item)) = entry.trim().split_once('=') else {
                    return Err(VerifyError::Malformed {
                        header: header.clone(),
                        reason: "an entry is not `key=value`",
                    });
                };
                match key {
                    "t" if ts_text.is_some() => {
                        return Err(VerifyError::Malformed {
                            header: header.clone(),
                            reason: "more than one `t=` entry",
                        })
                    }
                    "t" => ts_text = Some(item),
                    "v1" if candidates.len() < MAX_CANDIDATES => {
                        if let Some(tag) = hex::decode_array::<TAG_BYTES>(item) {
                            candidates.push(tag.to_vec());
                        }
                    }
                    _ => {}
                }
            }
            let Some(ts_text) = ts_text else {
                return Err(VerifyError::Malformed {
                    header: header.clone(),
                    reason: "no `t=` timestamp",
                });
            };
            let ts = parse_timestamp(header, ts_text)?;
            if candidates.is_empty() {
                return Err(VerifyError::Malformed {
                    header: header.clone(),
                    reason: "no `v1=<hex>` signature",
                });
            }
            check_age(ts, now, tolerance)?;
            matches_any(scheme, secrets, &[ts_text.as_bytes()], body, &candidates)
        }
        Scheme::Split {
            id_header,
            timestamp_header,
            signature_header,
        } => {
            let id = text_header(headers, id_header)?;
            if id.is_empty() {
                return Err(VerifyError::Malformed {
                    header: id_header.clone(),
                    reason: "empty event id",
                });
            }
            let ts_text = text_header(headers, timestamp_header)?;
            let signatures = text_header(headers, signature_header)?;
            let ts = parse_timestamp(timestamp_header, ts_text)?;
            let candidates: Vec<Vec<u8>> = signatures
                .split([',', ' '])
                .filter(|item| !item.is_empty())
                .filter_map(hex::decode_array::<TAG_BYTES>)
                .map(|tag| tag.to_vec())
                .take(MAX_CANDIDATES)
                .collect();
            if candidates.is_empty() {
                return Err(VerifyError::Malformed {
                    header: signature_header.clone(),
                    reason: "no 64-character lowercase hex signature",
                });
            }
            check_age(ts, now, tolerance)?;
            matches_any(scheme, secrets, &[ts_text.as_bytes()], body, &candidates)
        }
    }
}

/// HMAC-SHA256 under `key` of each prefix part followed by a dot, then the body.
fn tag(key: &hmac::Key, prefix: &[&[u8]], body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    for part in prefix {
        context.update(part);
        context.update(b".");
    }
    context.update(body);
    context.sign()
}

/// Whether any candidate is the tag of the content under any secret. Each comparison is
/// constant time; only the outcome (some match or none) can be observed.
fn matches_any(
    scheme: &Scheme,
    secrets: &[Secret],
    prefix: &[&[u8]],
    body: &[u8],
    candidates: &[Vec<u8>],
) -> Result<(), VerifyError> {
    let mut matched = subtle::Choice::from(0);
    for secret in secrets {
        let expected = tag(secret.hmac_key(scheme), prefix, body);
        for candidate in candidates {
            matched |= candidate.as_slice().ct_eq(expected.as_ref());
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// Refuses a timestamp more than `tolerance` away from `now`.
fn check_age(ts: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    let tolerance_secs = tolerance.as_secs();
    let diff = i128::from(now) - i128::from(ts);
    let magnitude = u64::try_from(diff.unsigned_abs()).unwrap_or(u64::MAX);
    if magnitude <= tolerance_secs {
        Ok(())
    } else if diff > 0 {
        Err(VerifyError::Stale {
            age_secs: magnitude,
            tolerance_secs,
        })
    } else {
        Err(VerifyError::Future {
            ahead_secs: magnitude,
            tolerance_secs,
        })
    }
}

/// Reads decimal unix seconds (digits only, as every scheme sends them).
fn parse_timestamp(header: &HeaderName, text: &str) -> Result<i64, VerifyError> {
    let malformed = || VerifyError::Malformed {
        header: header.clone(),
        reason: "the timestamp is not decimal unix seconds",
    };
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    text.parse().map_err(|_| malformed())
}

/// The first value of `name` as text.
fn text_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.clone()))?;
    value.to_str().map_err(|_| VerifyError::Malformed {
        header: name.clone(),
        reason: "not visible ASCII",
    })
}

/// Appends a header whose value is `text`, leaving it out if `text` cannot be a header value.
fn push_text(headers: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, text: &str) {
    if let Ok(value) = HeaderValue::from_str(text) {
        headers.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_checked_both_ways_at_the_boundary() {
        let tol = Duration::from_secs(300);
        assert!(check_age(1000, 1300, tol).is_ok());
        assert!(check_age(1300, 1000, tol).is_ok());
        assert_eq!(
            check_age(1000, 1301, tol),
            Err(VerifyError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check_age(1301, 1000, tol),
            Err(VerifyError::Future {
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(check_age(i64::MIN, i64::MAX, tol).is_err());
    }

    #[test]
    fn timestamps_are_digits_only() {
        let name = STANDARD_TIMESTAMP_HEADER;
        assert_eq!(parse_timestamp(&name, "1614265330"), Ok(1_614_265_330));
        for bad in ["", "-5", "+5", "1.5", " 1", "12345678901234567890", "1e9"] {
            assert!(parse_timestamp(&name, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_that_cannot_be_a_header_is_left_out() {
        let secret = Secret::generate().unwrap();
        let headers = sign(&Scheme::Standard, &[secret], "bad\nid", 1, b"{}");
        assert!(headers.iter().all(|(name, _)| name != STANDARD_ID_HEADER));
    }
}
