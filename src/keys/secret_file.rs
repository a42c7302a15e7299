//! Server secrets kept in their own small files: the key-hash pepper and the idempotency
//! sealing key.
//!
//! Each secret lives outside the state store, so a copy of the store alone (a backup, a disk
//! image of the data directory) is useless without it. One code path creates and reads every
//! such file, so they all get the same guarantees: created once with mode 0600 (parents 0700)
//! from the OS CSPRNG, written to a temporary name, synced and linked into place without
//! replacing anything, and refused on load unless it is a regular file of exactly the right
//! size that neither group nor others can access.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::hex;
use super::secret::{fill_random, wipe, RandomError};

/// What a secret file holds, for messages that name the file and the consequence of losing it.
#[derive(Debug)]
pub struct SecretKind {
    /// Short name used in messages, e.g. `pepper`.
    pub name: &'static str,
    /// What replacing the file with a new secret costs, shown when the file is damaged.
    pub if_replaced: &'static str,
}

/// Why a secret file could not be used.
///
/// Messages name the file and the fix; they never include its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file exists but could not be read.
    #[error("cannot read {} file {}: {source}", kind.name, path.display())]
    Read {
        /// What the file holds.
        kind: &'static SecretKind,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A new file could not be written.
    #[error("cannot create {} file {}: {source}", kind.name, path.display())]
    Create {
        /// What the file holds.
        kind: &'static SecretKind,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a regular file.
    #[error("{} path {} is not a regular file", kind.name, path.display())]
    NotAFile {
        /// What the file should hold.
        kind: &'static SecretKind,
        /// The path.
        path: PathBuf,
    },
    /// The file does not hold exactly the expected number of bytes.
    #[error(
        "{} file {} must hold exactly {expected} bytes but holds {found}; restore it from \
         backup ({})",
        kind.name,
        path.display(),
        kind.if_replaced
    )]
    WrongSize {
        /// What the file holds.
        kind: &'static SecretKind,
        /// The file.
        path: PathBuf,
        /// The size a valid file has.
        expected: usize,
        /// Its size in bytes.
        found: u64,
    },
    /// Group or others have some access to the file.
    #[error(
        "{name} file {path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`",
        name = kind.name,
        path = path.display(),
        mode = mode & 0o777
    )]
    Permissions {
        /// What the file holds.
        kind: &'static SecretKind,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No randomness for a new secret.
    #[error("cannot generate the {}: {source}", kind.name)]
    Random {
        /// What the file would hold.
        kind: &'static SecretKind,
        /// The generator's failure.
        #[source]
        source: RandomError,
    },
}

/// Secret bytes read from or written to a secret file; wiped on drop, redacted in `Debug`.
pub struct SecretBytes<const N: usize>([u8; N]);

impl<const N: usize> SecretBytes<N> {
    /// The secret. Callers derive keys from it and let this value drop.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

impl<const N: usize> Drop for SecretBytes<N> {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Loads the `N`-byte secret at `path`, creating it (mode 0600, parent directories 0700) from
/// the OS CSPRNG if the file does not exist.
///
/// Two processes racing to create the file end up using the same secret: creation links a
/// finished temporary file into place and never replaces an existing one.
pub fn load_or_create<const N: usize>(
    path: &Path,
    kind: &'static SecretKind,
) -> Result<SecretBytes<N>, SecretFileError> {
    match fs::metadata(path) {
        Ok(_) => load(path, kind),
        Err(err) if err.kind() == io::ErrorKind::NotFound => create(path, kind),
        Err(source) => Err(SecretFileError::Read {
            kind,
            path: path.to_owned(),
            source,
        }),
    }
}

fn load<const N: usize>(
    path: &Path,
    kind: &'static SecretKind,
) -> Result<SecretBytes<N>, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        kind,
        path: path.to_owned(),
        source,
    };
    let not_a_file = || SecretFileError::NotAFile {
        kind,
        path: path.to_owned(),
    };
    if !fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(not_a_file());
    }
    let mut file = File::open(path).map_err(read_error)?;
    // Check the opened file itself, so a swap between the checks and the read is caught.
    let meta = file.metadata().map_err(read_error)?;
    let mode = meta.permissions().mode();
    if !meta.is_file() {
        return Err(not_a_file());
    }
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissions {
            kind,
            path: path.to_owned(),
            mode,
        });
    }
    let wrong_size = |found| SecretFileError::WrongSize {
        kind,
        path: path.to_owned(),
        expected: N,
        found,
    };
    if meta.len() != N as u64 {
        return Err(wrong_size(meta.len()));
    }
    // Read one byte more than expected to notice a file that grew after the size check.
    let mut buf = vec![0u8; N + 1];
    let mut filled = 0;
    let outcome = loop {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    break Ok(());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => break Err(err),
        }
    };
    let result = match outcome {
        Err(source) => Err(read_error(source)),
        Ok(()) if filled != N => Err(wrong_size(filled as u64)),
        Ok(()) => {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(&buf[..N]);
            Ok(SecretBytes(bytes))
        }
    };
    wipe(&mut buf);
    result
}

fn create<const N: usize>(
    path: &Path,
    kind: &'static SecretKind,
) -> Result<SecretBytes<N>, SecretFileError> {
    let create_error = |source| SecretFileError::Create {
        kind,
        path: path.to_owned(),
        source,
    };
    let random_error = |source| SecretFileError::Random { kind, source };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(create_error)?;

    let mut secret = SecretBytes([0u8; N]);
    fill_random(&mut secret.0).map_err(random_error)?;

    let mut suffix = [0u8; 4];
    fill_random(&mut suffix).map_err(random_error)?;
    let file_name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", hex::encode(&suffix)));

    let written = write_new_file(&tmp, &secret.0);
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name is removed whatever happened; the secret stays reachable only
    // through `path` (if the link succeeded).
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(&dir).map_err(create_error)?;
            Ok(secret)
        }
        // Another process created it first: use theirs, so both agree.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => load(path, kind),
        Err(source) => Err(create_error(source)),
    }
}

fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes a new directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_KIND: SecretKind = SecretKind {
        name: "test secret",
        if_replaced: "nothing depends on it",
    };

    #[test]
    fn sizes_other_than_the_pepper_size_work_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let created = load_or_create::<16>(&path, &TEST_KIND).unwrap();
        let loaded = load_or_create::<16>(&path, &TEST_KIND).unwrap();
        assert_eq!(created.expose(), loaded.expose());
        let err = load_or_create::<32>(&path, &TEST_KIND).unwrap_err();
        assert!(
            matches!(
                err,
                SecretFileError::WrongSize {
                    expected: 32,
                    found: 16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("test secret file"));
        assert!(err.to_string().contains("nothing depends on it"));
        assert_eq!(format!("{created:?}"), "SecretBytes(<redacted>)");
    }
}
