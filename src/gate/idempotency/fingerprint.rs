//! What identifies a cached request: its record scope (whose key it was) and its fingerprint
//! (what was asked).
//!
//! Both are SHA-256 based, keyed (HMAC-SHA256) with a secret derived from the idempotency key
//! file. Keys and paths often hold patient ids, and a plain hash of a short id can be reversed
//! by trying every id; keyed, a copy of the store alone cannot confirm any guess.
//!
//! - The **scope** is `<org> 0x00 <key id> 0x00 HMAC(idempotency key)`: the organization and
//!   the API key's public id stay readable (so records can be listed or purged per key), and
//!   two tenants, or two keys of one tenant, using the same key value never meet.
//! - The **fingerprint** covers the method, the route's name, the path, the query and the
//!   body, each length-prefixed so no two different requests encode alike.

use hmac::{Hmac, KeyInit, Mac};
use http::Method;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::key::IdempotencyKey;
use crate::keys::secret::wipe;

/// Bytes in a digest.
pub const DIGEST_LEN: usize = 32;

/// HMAC keys shorter than SHA-256's 64-byte block are zero-padded to it (RFC 2104 §2).
const BLOCK_LEN: usize = 64;

/// Domain labels, so a scope digest can never equal a fingerprint.
const SCOPE_LABEL: &[u8] = b"portcullis/idempotency/scope/v1";
const FINGERPRINT_LABEL: &[u8] = b"portcullis/idempotency/fingerprint/v1";

/// The keyed hash behind scopes and fingerprints.
#[derive(Clone)]
pub struct Digester {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digester(<redacted>)")
    }
}

/// The parts of a request the fingerprint covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestShape<'a> {
    /// The method.
    pub method: &'a Method,
    /// The policy's route name.
    pub route: &'a str,
    /// The path as sent.
    pub path: &'a str,
    /// The query as sent, if any (`None` and `Some("")` differ).
    pub query: Option<&'a str>,
    /// The whole body.
    pub body: &'a [u8],
}

impl Digester {
    /// A digester keyed with `key`.
    pub fn new(key: &[u8; DIGEST_LEN]) -> Self {
        let mut padded = [0u8; BLOCK_LEN];
        padded[..DIGEST_LEN].copy_from_slice(key);
        let mac = <Hmac<Sha256> as KeyInit>::new(&padded.into());
        wipe(&mut padded);
        Self { mac }
    }

    /// The store key of the record for `key` used by API key `key_id` of `org`.
    pub fn scope(&self, org: &str, key_id: &str, key: &IdempotencyKey) -> RecordScope {
        let mut mac = self.mac.clone();
        mac.update(SCOPE_LABEL);
        mac.update(key.as_bytes());
        let digest: [u8; DIGEST_LEN] = mac.finalize().into_bytes().into();
        let mut bytes = Vec::with_capacity(org.len() + key_id.len() + 2 + DIGEST_LEN);
        bytes.extend_from_slice(org.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(key_id.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&digest);
        RecordScope(bytes)
    }

    /// The fingerprint of one request.
    pub fn fingerprint(&self, shape: &RequestShape<'_>) -> Fingerprint {
        let mut mac = self.mac.clone();
        mac.update(FINGERPRINT_LABEL);
        for field in [
            shape.method.as_str().as_bytes(),
            shape.route.as_bytes(),
            shape.path.as_bytes(),
        ] {
            update_field(&mut mac, field);
        }
        match shape.query {
            None => mac.update(&[0]),
            Some(query) => {
                mac.update(&[1]);
                update_field(&mut mac, query.as_bytes());
            }
        }
        update_field(&mut mac, shape.body);
        Fingerprint(mac.finalize().into_bytes().into())
    }
}

fn update_field(mac: &mut Hmac<Sha256>, field: &[u8]) {
    mac.update(&(field.len() as u64).to_be_bytes());
    mac.update(field);
}

/// Where a record lives in the store, and the associated data its seal is bound to: a record
/// copied under another scope (another tenant's) fails to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordScope(Vec<u8>);

impl RecordScope {
    /// The store key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A scope from raw key bytes, for tests of the layers below the digester.
    #[cfg(test)]
    pub(crate) fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// A request's fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint([u8; DIGEST_LEN]);

impl Fingerprint {
    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; DIGEST_LEN]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Compares in constant time, so response timing says nothing about how close a forged
    /// request came.
    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::key;
    use super::*;

    fn digester() -> Digester {
        Digester::new(&[7; DIGEST_LEN])
    }

    fn shape<'a>(path: &'a str, query: Option<&'a str>, body: &'a [u8]) -> RequestShape<'a> {
        RequestShape {
            method: &Method::POST,
            route: "patients.link",
            path,
            query,
            body,
        }
    }

    #[test]
    fn every_part_of_the_request_changes_the_fingerprint() {
        let d = digester();
        let base = d.fingerprint(&shape("/v1/p", Some("a=1"), b"{}"));
        assert!(base.matches(&d.fingerprint(&shape("/v1/p", Some("a=1"), b"{}"))));
        let variants = [
            shape("/v1/q", Some("a=1"), b"{}"),
            shape("/v1/p", Some("a=2"), b"{}"),
            shape("/v1/p", None, b"{}"),
            shape("/v1/p", Some(""), b"{}"),
            shape("/v1/p", Some("a=1"), b"{ }"),
            RequestShape {
                method: &Method::PUT,
                ..shape("/v1/p", Some("a=1"), b"{}")
            },
            RequestShape {
                route: "other",
                ..shape("/v1/p", Some("a=1"), b"{}")
            },
        ];
        for variant in variants {
            assert!(!base.matches(&d.fingerprint(&variant)), "{variant:?}");
        }
        assert!(!d
            .fingerprint(&shape("/v1/p", None, b""))
            .matches(&d.fingerprint(&shape("/v1/p", Some(""), b""))));
        // Field boundaries are unambiguous.
        let split = |path, body| d.fingerprint(&shape(path, None, body));
        assert!(!split("/ab", b"c").matches(&split("/a", b"bc")));
    }

    #[test]
    fn scopes_separate_tenants_keys_and_secrets() {
        let d = digester();
        let k = key::parse(b"same-value").unwrap();
        let a = d.scope("org-a", "0a0a0a0a", &k);
        assert_eq!(a, d.scope("org-a", "0a0a0a0a", &k));
        assert_ne!(a, d.scope("org-b", "0a0a0a0a", &k));
        assert_ne!(a, d.scope("org-a", "0b0b0b0b", &k));
        assert_ne!(
            a,
            d.scope("org-a", "0a0a0a0a", &key::parse(b"other").unwrap())
        );
        assert_ne!(
            a,
            Digester::new(&[8; DIGEST_LEN]).scope("org-a", "0a0a0a0a", &k)
        );
        assert!(a.as_bytes().starts_with(b"org-a\x000a0a0a0a\x00"));
        assert!(!a
            .as_bytes()
            .windows(b"same-value".len())
            .any(|w| w == b"same-value"));
    }
}
