//! The server pepper: the HMAC key under which key secrets are stored.
//!
//! Stored hashes are `HMAC-SHA256(pepper, secret)`. The pepper lives in its own file, outside
//! the state store, so a copy of the store alone (a backup, a stolen disk image of the data
//! directory) cannot be used to test guesses. The file is created once with mode 0600 and is
//! refused if anyone but its owner can read it.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::secret::wipe;
use super::secret_file::{self, SecretFileError, SecretKind};

/// Bytes in a pepper.
pub const PEPPER_LEN: usize = 32;

/// Bytes in SHA-256's block; HMAC keys shorter than this are zero-padded to it.
const SHA256_BLOCK_LEN: usize = 64;

/// How the pepper file is named in messages.
static PEPPER_FILE: SecretKind = SecretKind {
    name: "pepper",
    if_replaced: "a new pepper invalidates every existing key",
};

/// Why the pepper file could not be used: the shared secret-file error, naming the pepper.
///
/// Messages name the file and the fix; they never include its contents.
pub type PepperError = SecretFileError;

/// The 32-byte server secret that keys stored hashes.
///
/// `Debug` is redacted and the bytes are wiped on drop.
pub struct Pepper {
    bytes: [u8; PEPPER_LEN],
}

impl Pepper {
    /// Loads the pepper from `path`, creating it (mode 0600, parent directories 0700) if the
    /// file does not exist.
    ///
    /// An existing file is used only if it is a regular file of exactly 32 bytes that neither
    /// group nor others can access. Creation writes a temporary file, syncs it and links it
    /// into place without replacing anything, so a crash never leaves a partial pepper and two
    /// processes racing to create it end up using the same one.
    pub fn load_or_create(path: &Path) -> Result<Self, PepperError> {
        let secret = secret_file::load_or_create::<PEPPER_LEN>(path, &PEPPER_FILE)?;
        Ok(Self {
            bytes: *secret.expose(),
        })
    }

    /// A pepper from known bytes, for tests and benchmarks. Deployments use
    /// [`Pepper::load_or_create`].
    pub fn from_bytes(bytes: [u8; PEPPER_LEN]) -> Self {
        Self { bytes }
    }

    /// The keyed hasher for secrets. HMAC zero-pads keys shorter than the hash block
    /// (RFC 2104 §2), so padding the 32 pepper bytes here gives the same MAC as keying with
    /// them directly, through a constructor that cannot fail.
    pub(crate) fn hasher(&self) -> KeyHasher {
        let mut key = [0u8; SHA256_BLOCK_LEN];
        key[..PEPPER_LEN].copy_from_slice(&self.bytes);
        let mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
        wipe(&mut key);
        KeyHasher { mac }
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

impl Drop for Pepper {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// HMAC-SHA256 keyed with the pepper, with the keyed state computed once.
///
/// Cloning the prepared state per call saves the two key-block compressions on every
/// verification.
#[derive(Clone)]
pub(crate) struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl KeyHasher {
    /// `HMAC-SHA256(pepper, secret)`.
    pub(crate) fn hash(&self, secret: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(secret);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::super::hex;
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_0600_and_reloads_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/pepper");
        let created = Pepper::load_or_create(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        assert_eq!(fs::read(&path).unwrap(), created.bytes);
        let loaded = Pepper::load_or_create(&path).unwrap();
        assert_eq!(loaded.bytes, created.bytes);
        assert_ne!(created.bytes, [0u8; PEPPER_LEN]);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 31, 33, 64] {
            let path = dir.path().join(format!("pepper{len}"));
            fs::write(&path, vec![7u8; len]).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = Pepper::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, PepperError::WrongSize { found, .. } if found == len as u64),
                "{err}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn group_or_world_access_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        Pepper::load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o610] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Pepper::load_or_create(&path).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, PepperError::Permissions { .. }), "{message}");
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        Pepper::load_or_create(&path).unwrap();
    }

    #[test]
    fn a_directory_is_not_a_pepper() {
        let dir = tempfile::tempdir().unwrap();
        let err = Pepper::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PepperError::NotAFile { .. }));
    }

    #[test]
    fn debug_is_redacted() {
        let pepper = Pepper::from_bytes([0xab; PEPPER_LEN]);
        assert_eq!(format!("{pepper:?}"), "Pepper(<redacted>)");
        assert_eq!(format!("{:?}", pepper.hasher()), "KeyHasher(<redacted>)");
    }

    #[test]
    fn padded_key_equals_plain_hmac() {
        let pepper = Pepper::from_bytes([0x42; PEPPER_LEN]);
        let mut plain = Hmac::<Sha256>::new_from_slice(&[0x42; PEPPER_LEN]).unwrap();
        plain.update(b"some secret");
        let expected: [u8; 32] = plain.finalize().into_bytes().into();
        assert_eq!(pepper.hasher().hash(b"some secret"), expected);
        // RFC 4231 test case 2 pins the construction to HMAC-SHA256 itself.
        let mut key = [0u8; PEPPER_LEN];
        key[..4].copy_from_slice(b"Jefe");
        let hash = Pepper::from_bytes(key)
            .hasher()
            .hash(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(&hash),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
