//! The admin socket file: claiming its path safely, and giving it back.
//!
//! Whoever can connect to this socket can mint production credentials, so the file is bound
//! inside a directory this process creates private (0700) when it is missing, chmod-ed to 0600
//! before a single connection is accepted, and removed when the server stops. A socket file
//! left behind by a crash is recognised (nothing answers on it) and replaced; one that answers
//! belongs to a running instance and is never touched; a path that is not a socket at all is
//! never deleted.

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Permissions of the socket file: the owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// Permissions of a socket directory this process creates.
pub const DIRECTORY_MODE: u32 = 0o700;

/// Why the admin socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket path has no parent directory or file name.
    #[error("the admin socket path {} does not name a file in a directory", path.display())]
    BadPath {
        /// The configured path.
        path: PathBuf,
    },
    /// The missing parent directory could not be created.
    #[error("cannot create the admin socket directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket sits at the path; it is left alone.
    #[error("{} exists and is not a socket; move it away or configure another [admin] socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A running process answers on the socket.
    #[error("another process is already serving the admin socket {} (is portcullis already running?)", path.display())]
    AlreadyRunning {
        /// The path.
        path: PathBuf,
    },
    /// The existing socket could not be checked (e.g. permission denied).
    #[error("cannot check the existing admin socket {}: {source}", path.display())]
    Probe {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The stale socket could not be removed.
    #[error("cannot remove the stale admin socket {}: {source}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Binding failed (path too long, directory not writable, ...).
    #[error("cannot bind the admin socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be restricted to its owner; it was removed again.
    #[error("cannot restrict the admin socket {} to mode 0600: {source}", path.display())]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The socket file this process bound, removed when dropped unless another file has taken its
/// place since. It is recognised by device, inode and change time, not by name: file systems
/// such as tmpfs hand a freed inode number straight to the next file. (Change times are kept
/// at the kernel's coarse clock tick, so a replacement made within the same few milliseconds
/// could pass for ours; nothing in Portcullis replaces a live socket, so this is a safeguard
/// against outside interference, not a lock.)
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: Identity,
    owner_uid: u32,
}

/// What tells one file from another that later took the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The uid owning the socket file, which is this process's effective uid.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| Identity::of(&meta) == self.identity);
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(%error, path = %self.path.display(), "cannot remove the admin socket");
            }
        }
    }
}

/// Claims `path`: creates the directory if missing, clears a stale socket, binds, restricts
/// the file to 0600. The returned listener is non-blocking and has accepted nothing yet.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), AdminError> {
    let (Some(parent), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(AdminError::BadPath {
            path: path.to_owned(),
        });
    };
    ensure_directory(parent)?;
    clear_stale(path)?;

    let bind_error = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    let meta = match restrict(path) {
        Ok(meta) => meta,
        Err(source) => {
            // Never leave a socket with loose permissions behind.
            let _ = std::fs::remove_file(path);
            return Err(AdminError::Permissions {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file = SocketFile {
        path: path.to_owned(),
        identity: Identity::of(&meta),
        owner_uid: meta.uid(),
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok((listener, file))
}

/// Creates `dir` (and its missing parents) private to this user; an existing directory is
/// left as the operator made it (it may be a systemd `RuntimeDirectory`).
fn ensure_directory(dir: &Path) -> Result<(), AdminError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let error = |source| AdminError::Directory {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIRECTORY_MODE)
        .create(dir)
        .map_err(error)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    std::fs::set_permissions(dir, Permissions::from_mode(DIRECTORY_MODE)).map_err(error)
}

/// Removes a socket file nobody answers on; refuses a live socket and anything not a socket.
fn clear_stale(path: &Path) -> Result<(), AdminError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(AdminError::Probe {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(AdminError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale admin socket");
            std::fs::remove_file(path).map_err(|source| AdminError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(AdminError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Sets the socket to 0600 and returns its metadata as it now stands.
fn restrict(path: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.mode() & 0o777 != SOCKET_MODE {
        return Err(io::Error::other("the mode did not take effect"));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn creates_a_private_directory_and_a_0600_socket_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/portcullis/admin.sock");
        let (listener, file) = bind(&path).unwrap();
        assert_eq!(mode(&path), SOCKET_MODE);
        assert_eq!(mode(path.parent().unwrap()), DIRECTORY_MODE);
        assert_eq!(mode(&dir.path().join("run")), DIRECTORY_MODE);
        assert_eq!(file.path(), path);
        drop(listener);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        // A socket whose listener is gone: what a crash leaves behind.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, _file) = bind(&path).unwrap();
        assert_eq!(mode(&path), SOCKET_MODE);

        assert!(matches!(
            bind(&path),
            Err(AdminError::AlreadyRunning { .. })
        ));
        // The refused attempt left the live socket in place.
        assert!(UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn never_deletes_a_file_that_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        std::fs::write(&path, "important").unwrap();
        let error = bind(&path).unwrap_err();
        assert!(matches!(error, AdminError::NotASocket { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "important");
    }

    #[test]
    fn leaves_a_replacement_socket_alone_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        // Past the kernel's coarse timestamp tick, so the replacement's change time differs.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _other = UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists(), "another process's socket was removed");
    }

    #[test]
    fn refuses_a_path_without_a_file_name() {
        assert!(matches!(
            bind(Path::new("/")),
            Err(AdminError::BadPath { .. })
        ));
    }
}
