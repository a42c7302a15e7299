//! The hash chain that makes the audit trail tamper-evident.
//!
//! Each line ends with `,"prev":"<hex>","hash":"<hex>"}` where `prev` is the previous line's
//! `hash` (32 zero bytes for the very first record) and
//! `hash = SHA-256(prev || canonical)`, `canonical` being the line with those two fields
//! removed (the record's own fields, closed by `}`). Editing, deleting or reordering a line
//! breaks a link. With an HMAC key the hash is `HMAC-SHA256(key, prev || canonical)`, so
//! someone who can write the files but not read the key cannot rebuild a consistent chain.

use std::path::Path;

use aws_lc_rs::{digest, hmac};
use subtle::ConstantTimeEq;

use crate::keys::hex;
use crate::keys::secret_file::{self, SecretFileError, SecretKind};

/// Length of a link in bytes.
pub const DIGEST_LEN: usize = 32;

/// One link of the chain.
pub type Digest = [u8; DIGEST_LEN];

/// The `prev` of the first record ever written.
pub const GENESIS: Digest = [0u8; DIGEST_LEN];

/// The fixed tail every line ends with, around the two hex digests.
const PREV_OPEN: &[u8] = b",\"prev\":\"";
const HASH_OPEN: &[u8] = b"\",\"hash\":\"";
const CLOSE: &[u8] = b"\"}";

/// Bytes the chain fields add to a record: both digests in hex plus their framing.
pub const TAIL_LEN: usize =
    PREV_OPEN.len() + 2 * DIGEST_LEN + HASH_OPEN.len() + 2 * DIGEST_LEN + CLOSE.len();

/// What the audit HMAC key file is, for messages about it.
pub static HMAC_KEY_KIND: SecretKind = SecretKind {
    name: "audit HMAC key",
    if_replaced: "records written under the old key can no longer be verified",
};

/// How links are computed: plain SHA-256, or HMAC-SHA256 under a secret key.
///
/// Both are computed with aws-lc (already linked for TLS), whose assembly SHA-256 is much
/// faster than a portable one on CPUs without SHA extensions; the writer hashes every record.
#[derive(Clone)]
pub struct ChainKey {
    mac: Option<hmac::Key>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.mac.is_some() {
            "ChainKey(hmac-sha256)"
        } else {
            "ChainKey(sha256)"
        })
    }
}

impl ChainKey {
    /// Unkeyed SHA-256 links: detects edits, but someone who can rewrite the whole file can
    /// recompute every hash.
    pub fn plain() -> Self {
        Self { mac: None }
    }

    /// HMAC-SHA256 links under `key`.
    pub fn keyed(key: &[u8; DIGEST_LEN]) -> Self {
        Self {
            mac: Some(hmac::Key::new(hmac::HMAC_SHA256, key)),
        }
    }

    /// Loads the key file, creating it (0600, from the OS CSPRNG) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretFileError> {
        let secret = secret_file::load_or_create::<DIGEST_LEN>(path, &HMAC_KEY_KIND)?;
        Ok(Self::keyed(secret.expose()))
    }

    /// Whether links are keyed.
    pub fn is_keyed(&self) -> bool {
        self.mac.is_some()
    }

    /// The link after `prev` for a record whose canonical bytes are `parts` concatenated.
    pub fn link(&self, prev: &Digest, parts: &[&[u8]]) -> Digest {
        let mut out = [0u8; DIGEST_LEN];
        match &self.mac {
            Some(key) => {
                let mut mac = hmac::Context::with_key(key);
                mac.update(prev);
                for part in parts {
                    mac.update(part);
                }
                out.copy_from_slice(mac.sign().as_ref());
            }
            None => {
                let mut hasher = digest::Context::new(&digest::SHA256);
                hasher.update(prev);
                for part in parts {
                    hasher.update(part);
                }
                out.copy_from_slice(hasher.finish().as_ref());
            }
        }
        out
    }
}

/// Completes an encoded record body (see [`super::record::encode_body`]) into a chained line
/// ending in `\n`, and returns its hash.
pub fn seal(key: &ChainKey, prev: &Digest, body: &mut Vec<u8>) -> Digest {
    seal_from(key, prev, body, 0)
}

/// [`seal`] for a record body that starts at `start` in `body` (records encoded one after
/// the other into one batch buffer).
pub fn seal_from(key: &ChainKey, prev: &Digest, body: &mut Vec<u8>, start: usize) -> Digest {
    let hash = key.link(prev, &[&body[start..], b"}"]);
    body.reserve(TAIL_LEN + 1);
    body.extend_from_slice(PREV_OPEN);
    push_hex(prev, body);
    body.extend_from_slice(HASH_OPEN);
    push_hex(&hash, body);
    body.extend_from_slice(CLOSE);
    body.push(b'\n');
    hash
}

/// A line taken apart: the record's body (without its closing brace) and both links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLine<'a> {
    /// The record's own fields, `{` up to but excluding the closing `}`.
    pub body: &'a [u8],
    /// The `prev` link.
    pub prev: Digest,
    /// The `hash` link.
    pub hash: Digest,
}

impl SplitLine<'_> {
    /// Whether `hash` is the right link for `body` after `prev`. Constant time.
    pub fn hash_matches(&self, key: &ChainKey) -> bool {
        let expected = key.link(&self.prev, &[self.body, b"}"]);
        bool::from(expected.ct_eq(&self.hash))
    }
}

/// Takes a line (without its `\n`) apart; `None` unless it ends in exactly the chain tail.
pub fn split(line: &[u8]) -> Option<SplitLine<'_>> {
    let body_len = line.len().checked_sub(TAIL_LEN)?;
    let (body, tail) = line.split_at(body_len);
    if body.first() != Some(&b'{') {
        return None;
    }
    let tail = tail.strip_prefix(PREV_OPEN)?;
    let (prev_hex, tail) = tail.split_at(2 * DIGEST_LEN);
    let tail = tail.strip_prefix(HASH_OPEN)?;
    let (hash_hex, tail) = tail.split_at(2 * DIGEST_LEN);
    if tail != CLOSE {
        return None;
    }
    Some(SplitLine {
        body,
        prev: decode_digest(prev_hex)?,
        hash: decode_digest(hash_hex)?,
    })
}

/// A digest in lowercase hex.
pub fn to_hex(digest: &Digest) -> String {
    hex::encode(digest)
}

fn push_hex(digest: &Digest, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * DIGEST_LEN, 0);
    hex::encode_to_slice(digest, &mut out[start..]);
}

fn decode_digest(text: &[u8]) -> Option<Digest> {
    hex::decode_array::<DIGEST_LEN>(std::str::from_utf8(text).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hmac as hmac_ref;
    use sha2::{Digest as _, Sha256};

    fn sealed(key: &ChainKey, prev: &Digest, body: &str) -> (Vec<u8>, Digest) {
        let mut line = body.as_bytes().to_vec();
        let hash = seal(key, prev, &mut line);
        (line, hash)
    }

    #[test]
    fn sealed_lines_split_and_verify() {
        for key in [ChainKey::plain(), ChainKey::keyed(&[7u8; 32])] {
            let (line, hash) = sealed(&key, &GENESIS, r#"{"seq":1"#);
            assert_eq!(line.last(), Some(&b'\n'));
            let parts = split(&line[..line.len() - 1]).unwrap();
            assert_eq!(parts.body, br#"{"seq":1"#);
            assert_eq!(parts.prev, GENESIS);
            assert_eq!(parts.hash, hash);
            assert!(parts.hash_matches(&key));
        }
    }

    #[test]
    fn plain_links_are_sha256_of_prev_and_the_canonical_record() {
        let (line, hash) = sealed(&ChainKey::plain(), &[1u8; 32], r#"{"seq":2"#);
        let mut input = vec![1u8; 32];
        input.extend_from_slice(br#"{"seq":2}"#);
        let expected: Digest = Sha256::digest(&input).into();
        assert_eq!(hash, expected);
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains(&format!("\"hash\":\"{}\"", to_hex(&expected))));
    }

    #[test]
    fn links_match_the_reference_sha256_and_hmac() {
        use hmac_ref::{KeyInit, Mac};
        let prev = [3u8; 32];
        let parts: [&[u8]; 2] = [br#"{"seq":5,"kind":"request""#, b"}"];
        let input = [&prev[..], parts[0], parts[1]].concat();
        let plain: Digest = Sha256::digest(&input).into();
        assert_eq!(ChainKey::plain().link(&prev, &parts), plain);
        let key = [0x5au8; 32];
        let mut padded = [0u8; 64];
        padded[..32].copy_from_slice(&key);
        let mut mac = <hmac_ref::Hmac<Sha256> as KeyInit>::new(&padded.into());
        mac.update(&input);
        let keyed: Digest = mac.finalize().into_bytes().into();
        assert_eq!(ChainKey::keyed(&key).link(&prev, &parts), keyed);
        let mut line = b"xx{\"seq\":5,\"kind\":\"request\"".to_vec();
        assert_eq!(seal_from(&ChainKey::plain(), &prev, &mut line, 2), plain);
        assert!(line.starts_with(b"xx{"));
    }

    #[test]
    fn any_change_breaks_the_link_and_keys_matter() {
        let key = ChainKey::keyed(&[9u8; 32]);
        let (line, _) = sealed(&key, &GENESIS, r#"{"seq":1,"status":200"#);
        let text = String::from_utf8(line).unwrap();
        let edited = text.replace("200", "201");
        let parts = split(edited.trim_end().as_bytes()).unwrap();
        assert!(!parts.hash_matches(&key));
        let parts = split(text.trim_end().as_bytes()).unwrap();
        assert!(parts.hash_matches(&key));
        assert!(!parts.hash_matches(&ChainKey::plain()));
        assert!(!parts.hash_matches(&ChainKey::keyed(&[8u8; 32])));
    }

    #[test]
    fn lines_without_an_exact_tail_do_not_split() {
        let (line, _) = sealed(&ChainKey::plain(), &GENESIS, r#"{"seq":1"#);
        let line = &line[..line.len() - 1];
        assert!(split(&line[..line.len() - 1]).is_none());
        assert!(split(b"").is_none());
        assert!(split(&[b'x'; TAIL_LEN + 4]).is_none());
        let mut upper = line.to_vec();
        let at = upper.len() - 5;
        upper[at] = b'A';
        assert!(split(&upper).is_none());
    }
}
