//! Certificate renewal without a signal: the cert and key files are checked every
//! `server.cert_check_interval` and a renewed pair is swapped into the [`CertResolver`].
//!
//! A check compares what `stat` says of each file's target (device, inode, size, modification
//! time), following symlinks, because certbot renews by pointing `live/…` symlinks at new files
//! in `archive/`. A change is loaded only when both files parse and the key matches the
//! certificate; anything else (a renewal caught half-written, a key from another pair) keeps
//! the last good certificate in service and logs one warning per distinct state of the files,
//! so the next change (the rest of the write) is tried again without filling the log meanwhile.
//! A swap is an entry of the admin log (`certificate_renewed`, with the new certificate's
//! digest), as a reload is, so the record shows when each certificate went into service.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::tls::{self, CertResolver};
use crate::admin_log::{AdminActionKind, AdminLog};
use crate::policy::PolicyHandle;
use crate::state::State;

/// What `stat` reports of one file's target; any difference means the file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<Self> {
        // `metadata` follows symlinks: the stamp is the target's.
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

/// The state of the cert and key files at one check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Both files stat'ed: their paths (which a reload may change) and stamps.
    Files {
        cert: (PathBuf, FileStamp),
        key: (PathBuf, FileStamp),
    },
    /// One of them could not be stat'ed (missing mid-rename, permissions).
    Unreadable(String),
}

impl Seen {
    fn now(cert: &Path, key: &Path) -> Self {
        match (FileStamp::of(cert), FileStamp::of(key)) {
            (Ok(c), Ok(k)) => Self::Files {
                cert: (cert.to_owned(), c),
                key: (key.to_owned(), k),
            },
            (Err(error), _) => Self::Unreadable(format!("{}: {error}", cert.display())),
            (_, Err(error)) => Self::Unreadable(format!("{}: {error}", key.display())),
        }
    }
}

/// Checks the files of the current policy every `server.cert_check_interval` (read afresh
/// each time, so a reload changes both the paths and the interval) until the task is aborted.
pub fn spawn(resolver: Arc<CertResolver>, state: Arc<State>) -> JoinHandle<()> {
    let policies = state.policies.clone();
    tokio::spawn(async move {
        let (cert, key) = paths(&policies);
        // The files as they were when the listener loaded them.
        let mut last = tokio::task::spawn_blocking(move || Seen::now(&cert, &key))
            .await
            .ok();
        loop {
            let interval = policies.current().config.server.cert_check_interval;
            tokio::time::sleep(interval).await;
            let (cert, key) = paths(&policies);
            let (resolver, state) = (resolver.clone(), state.clone());
            let previous = last.clone();
            let checked = tokio::task::spawn_blocking(move || {
                check(&resolver, &state.admin_log, &cert, &key, previous)
            })
            .await;
            match checked {
                Ok(seen) => last = Some(seen),
                Err(error) => tracing::warn!(%error, "the certificate check failed"),
            }
        }
    })
}

fn paths(policies: &PolicyHandle) -> (PathBuf, PathBuf) {
    let policy = policies.current();
    let server = &policy.config.server;
    (server.cert.clone(), server.key.clone())
}

/// One check: when the files differ from `last`, loads them and, if they make a good pair,
/// serves them. Returns what was seen. Blocking.
fn check(
    resolver: &CertResolver,
    admin_log: &AdminLog,
    cert: &Path,
    key: &Path,
    last: Option<Seen>,
) -> Seen {
    let seen = Seen::now(cert, key);
    if last.as_ref() == Some(&seen) {
        return seen;
    }
    if let Seen::Unreadable(reason) = &seen {
        tracing::warn!(
            %reason,
            "cannot check the certificate files; the current certificate stays in service"
        );
        return seen;
    }
    match tls::load_certified_key(cert, key) {
        Ok(certified) => {
            let fingerprint = tls::fingerprint(&certified);
            if fingerprint == tls::fingerprint(&resolver.current()) {
                tracing::debug!("certificate files touched; the certificate is unchanged");
            } else {
                resolver.replace(certified);
                tracing::info!(
                    cert = %cert.display(),
                    sha256 = %fingerprint,
                    "renewed certificate loaded from its files; new handshakes use it"
                );
                if let Err(error) = admin_log.append(
                    AdminActionKind::CertificateRenewed,
                    "portcullis",
                    &crate::reload::short_digest(&fingerprint),
                    None,
                    crate::state::unix_now(),
                ) {
                    tracing::error!(%error, "the certificate renewal is not in the admin log");
                }
            }
        }
        Err(error) => tracing::warn!(
            %error,
            "the certificate files changed but do not load as a matching pair; the last good \
             certificate stays in service"
        ),
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    #[test]
    fn a_mismatched_pair_keeps_the_last_good_one_until_it_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let first = pki::generate_dev_pki(&dir.path().join("a"), &["localhost"]).unwrap();
        let second = pki::generate_dev_pki(&dir.path().join("b"), &["localhost"]).unwrap();
        let live = dir.path().join("live");
        std::fs::create_dir(&live).unwrap();
        let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
        std::fs::copy(&first.cert, &cert).unwrap();
        std::fs::copy(&first.key, &key).unwrap();
        let resolver = CertResolver::new(tls::load_certified_key(&cert, &key).unwrap());
        let store = crate::store::Store::open(&dir.path().join("data")).unwrap();
        let log = AdminLog::open(&store).unwrap();
        let original = tls::fingerprint(&resolver.current());
        let seen = check(&resolver, &log, &cert, &key, None);

        // Unchanged files: nothing happens.
        let seen = check(&resolver, &log, &cert, &key, Some(seen));
        assert_eq!(tls::fingerprint(&resolver.current()), original);

        // Half of a renewal: the new certificate with the old key.
        std::fs::copy(&second.cert, &cert).unwrap();
        let seen = check(&resolver, &log, &cert, &key, Some(seen));
        assert_eq!(tls::fingerprint(&resolver.current()), original);

        // The other half arrives.
        std::fs::copy(&second.key, &key).unwrap();
        let seen = check(&resolver, &log, &cert, &key, Some(seen));
        let renewed = tls::fingerprint(&resolver.current());
        assert_ne!(renewed, original);
        assert_eq!(
            renewed,
            tls::fingerprint(&tls::load_certified_key(&second.cert, &second.key).unwrap())
        );

        let renewals: Vec<String> = log
            .list(10)
            .unwrap()
            .into_iter()
            .map(|entry| {
                assert_eq!(entry.action, AdminActionKind::CertificateRenewed);
                entry.target
            })
            .collect();
        assert_eq!(renewals, [renewed[..32].to_owned()], "one swap, one entry");

        // A missing file keeps what is served.
        std::fs::remove_file(&key).unwrap();
        let seen = check(&resolver, &log, &cert, &key, Some(seen));
        assert!(matches!(seen, Seen::Unreadable(_)));
        assert_eq!(tls::fingerprint(&resolver.current()), renewed);
    }

    #[test]
    fn stamps_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("link"),
        );
        std::fs::write(&a, "same").unwrap();
        std::fs::write(&b, "same").unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = FileStamp::of(&link).unwrap();
        assert_eq!(before, FileStamp::of(&a).unwrap());
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_ne!(
            FileStamp::of(&link).unwrap(),
            before,
            "a new target is a change"
        );
    }
}
