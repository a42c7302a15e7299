//! Why the audit trail could not be opened, written, verified or exported.
//!
//! Messages name files and operations, never record contents (records are PHI-free, but a
//! damaged file could hold anything).

use std::io;
use std::path::PathBuf;

use crate::keys::secret_file::SecretFileError;
use crate::store::StoreError;

/// A failure of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit directory could not be created, restricted or listed.
    #[error("cannot prepare the audit directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An audit file could not be read.
    #[error("cannot read audit file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A torn last line could not be cut, or the file could not be opened for appending.
    #[error("cannot repair or open audit file {}: {source}", path.display())]
    Repair {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The HMAC key file is missing and cannot be created, or is unsafe.
    #[error(transparent)]
    Key(#[from] SecretFileError),
    /// The index in the state store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// An admin action's actor, target or organization does not have the shape the record
    /// requires (the admin log checks the same rules first, so this indicates a bug).
    #[error("an admin action with a malformed actor, target or organization cannot be recorded")]
    InvalidEvent,
    /// The writer has stopped (shutdown, or it failed); nothing more can be recorded.
    #[error("the audit writer is not running")]
    Stopped,
    /// The writer could not make everything queued durable (disk full, I/O error).
    #[error("the audit writer could not write to disk; see the portcullis log")]
    NotDurable,
}
