//! Encryption at rest for cached answers.
//!
//! A cached answer is clinical data (a replayed note is PHI), so every record is sealed with
//! XChaCha20-Poly1305, the extended-nonce member of the ChaCha20-Poly1305 family: its 192-bit
//! nonces can be drawn at random for every write without a practical chance of reuse over the
//! life of a key, which the 96-bit variant cannot promise at high write volumes.
//!
//! One 32-byte secret in the key file (created 0600 on first start, through the same code path
//! as the pepper) yields two independent subkeys by HMAC-SHA256 with fixed labels: one for the
//! AEAD and one for the keyed hashes of [`super::fingerprint`].

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit as AeadKeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::fingerprint::Digester;
use crate::keys::secret::{fill_random, wipe, RandomError};
use crate::keys::secret_file::{self, SecretFileError, SecretKind};

/// Bytes in the key file.
pub const KEY_FILE_LEN: usize = 32;

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 24;

/// Bytes the seal adds to a plaintext (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// How the key file is named in messages.
static KEY_FILE: SecretKind = SecretKind {
    name: "idempotency key",
    if_replaced: "a new key only makes cached answers unreadable: their requests are then \
                  forwarded again as new",
};

/// Labels of the two derived subkeys.
const SEAL_LABEL: &[u8] = b"portcullis/idempotency/seal/v1";
const DIGEST_LABEL: &[u8] = b"portcullis/idempotency/digest/v1";

/// HMAC keys shorter than SHA-256's 64-byte block are zero-padded to it (RFC 2104 §2).
const BLOCK_LEN: usize = 64;

/// Why a record could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No randomness for a nonce.
    #[error("cannot draw a nonce: {0}")]
    Random(#[from] RandomError),
    /// The cipher refused the input (only possible for inputs beyond its length limit).
    #[error("the record is too large to seal")]
    Cipher,
}

/// A record did not authenticate: another key, another scope, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the record does not open under this key and scope")]
pub struct OpenError;

/// The AEAD and the keyed digester, both derived from the key file.
pub struct SealKeys {
    sealer: Sealer,
    digester: Digester,
}

impl fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKeys(<redacted>)")
    }
}

impl SealKeys {
    /// Reads the key file at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretFileError> {
        let master = secret_file::load_or_create::<KEY_FILE_LEN>(path, &KEY_FILE)?;
        Ok(Self::from_master(master.expose()))
    }

    /// Keys derived from known bytes, for tests and benchmarks.
    pub fn from_master(master: &[u8; KEY_FILE_LEN]) -> Self {
        let mut seal_key = derive(master, SEAL_LABEL);
        let mut digest_key = derive(master, DIGEST_LABEL);
        let aead = XChaCha20Poly1305::new(&Key::from(seal_key));
        let digester = Digester::new(&digest_key);
        wipe(&mut seal_key);
        wipe(&mut digest_key);
        Self {
            sealer: Sealer { aead },
            digester,
        }
    }

    /// The AEAD.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The keyed digester for scopes and fingerprints.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }
}

/// `HMAC-SHA256(master, label)`.
fn derive(master: &[u8; KEY_FILE_LEN], label: &[u8]) -> [u8; 32] {
    let mut padded = [0u8; BLOCK_LEN];
    padded[..KEY_FILE_LEN].copy_from_slice(master);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&padded.into());
    wipe(&mut padded);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Seals and opens record payloads.
pub struct Sealer {
    aead: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// A sealed payload: a fresh random nonce and the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The nonce it was sealed under.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: Vec<u8>,
}

impl Sealer {
    /// Encrypts `plaintext` bound to `aad` under a fresh random nonce.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let ciphertext = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Cipher)?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// Decrypts and authenticates; any change to the key, the nonce, the ciphertext or `aad`
    /// fails.
    pub fn open(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        self.aead
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trip_and_every_tamper_fails() {
        let keys = SealKeys::from_master(&[1; KEY_FILE_LEN]);
        let sealer = keys.sealer();
        let sealed = sealer.seal(b"scope-a", b"clinical note").unwrap();
        assert_eq!(sealed.ciphertext.len(), b"clinical note".len() + TAG_LEN);
        assert_eq!(
            sealer
                .open(b"scope-a", &sealed.nonce, &sealed.ciphertext)
                .unwrap(),
            b"clinical note"
        );
        assert_eq!(
            sealer.open(b"scope-b", &sealed.nonce, &sealed.ciphertext),
            Err(OpenError)
        );
        let mut nonce = sealed.nonce;
        nonce[0] ^= 1;
        assert_eq!(
            sealer.open(b"scope-a", &nonce, &sealed.ciphertext),
            Err(OpenError)
        );
        let mut ciphertext = sealed.ciphertext.clone();
        ciphertext[3] ^= 0x80;
        assert_eq!(
            sealer.open(b"scope-a", &sealed.nonce, &ciphertext),
            Err(OpenError)
        );
        let other = SealKeys::from_master(&[2; KEY_FILE_LEN]);
        assert_eq!(
            other
                .sealer()
                .open(b"scope-a", &sealed.nonce, &sealed.ciphertext),
            Err(OpenError)
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let keys = SealKeys::from_master(&[1; KEY_FILE_LEN]);
        let a = keys.sealer().seal(b"", b"same").unwrap();
        let b = keys.sealer().seal(b"", b"same").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/idempotency.key");
        let first = SealKeys::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.sealer().seal(b"aad", b"kept").unwrap();
        let second = SealKeys::load_or_create(&path).unwrap();
        assert_eq!(
            second
                .sealer()
                .open(b"aad", &sealed.nonce, &sealed.ciphertext)
                .unwrap(),
            b"kept"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealKeys::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("idempotency key file"), "{err}");
        assert_eq!(format!("{first:?}"), "SealKeys(<redacted>)");
    }
}
