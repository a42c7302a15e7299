//! `portcullis init`: the files a first run needs, written once into the configuration
//! directory.
//!
//! An operator installing the sidecar should not have to hand-write a policy, generate secrets
//! with shell one-liners or mint a certificate before the service can start. `init` writes a
//! starter policy whose paths agree with `systemd/portcullis.service` (state in
//! `/var/lib/portcullis`, admin socket in `/run/portcullis`), the server secrets (created by
//! the same code the running server uses, so they pass its own checks), and a private CA with
//! a server certificate for a first TLS handshake.
//!
//! It never overwrites anything: every target path is checked before the first byte is
//! written, and if any exists nothing is written at all. Secrets and the TLS key live in the
//! configuration directory rather than the state directory, so a copy of the state alone (a
//! backup, a disk image) is useless without them.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::ServerName;

use crate::audit::chain::ChainKey;
use crate::gate::idempotency::seal::SealKeys;
use crate::keys::secret_file::SecretFileError;
use crate::keys::Pepper;
use crate::pki::{self, PkiError};

/// The policy file `init` writes, inside the directory.
pub const CONFIG_FILE: &str = "portcullis.toml";
/// The key-hash pepper, relative to the directory.
pub const PEPPER_FILE: &str = "pepper";
/// The idempotency sealing key, relative to the directory.
pub const IDEMPOTENCY_KEY_FILE: &str = "idempotency.key";
/// The audit chain's HMAC key, relative to the directory (kept off the audit volume).
pub const AUDIT_HMAC_KEY_FILE: &str = "audit-hmac.key";
/// The bearer token the backend posts webhook events with, relative to the directory.
pub const INGEST_TOKEN_FILE: &str = "events.token";
/// Subdirectory holding the CA, the server certificate and its key.
pub const TLS_DIR: &str = "tls";

/// The state directory of the systemd unit (`StateDirectory=portcullis`).
pub const UNIT_DATA_DIR: &str = "/var/lib/portcullis";
/// The admin socket inside the unit's runtime directory (`RuntimeDirectory=portcullis`).
pub const UNIT_ADMIN_SOCKET: &str = "/run/portcullis/admin.sock";

/// Mode of a directory `init` creates: the service's group may read the policy, others not.
pub const DIR_MODE: u32 = 0o750;
/// Mode of the policy file: no secrets in it, but nothing for other users either.
pub const CONFIG_MODE: u32 = 0o640;

/// Mode of secret files: the service user alone.
const SECRET_MODE: u32 = 0o600;

/// Names always added to the certificate, so checks on the host itself succeed.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What `portcullis init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The configuration directory (created 0750 if missing).
    pub dir: PathBuf,
    /// DNS names or IP addresses for the server certificate, the first one its common name.
    pub hostnames: Vec<String>,
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The directory.
    pub dir: PathBuf,
    /// Whether the directory had to be created.
    pub created_dir: bool,
    /// Every file written, in the order written.
    pub written: Vec<PathBuf>,
    /// The names the server certificate is valid for.
    pub hostnames: Vec<String>,
}

/// Why `init` wrote nothing, or stopped part-way.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Some target files exist already; nothing was written.
    #[error(
        "refusing to overwrite existing files; nothing was written. Move them away or choose \
         another --dir:{}",
        list_paths(.0)
    )]
    Exists(Vec<PathBuf>),
    /// The directory path names something that is not a directory.
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A name given for the certificate is neither a DNS name nor an IP address.
    #[error("--hostname {0:?} is neither a DNS name nor an IP address")]
    Hostname(String),
    /// A directory could not be created or restricted.
    #[error("cannot create directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The certificate could not be generated or written.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A secret file could not be created.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// The policy or the ingest token file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl InitError {
    /// Exit status: 2 when the operator must change the request, 1 when the system failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Exists(_) | Self::NotADirectory(_) | Self::Hostname(_) => 2,
            Self::Directory { .. } | Self::Pki(_) | Self::Secret(_) | Self::Config { .. } => 1,
        }
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().fold(String::new(), |mut out, path| {
        let _ = write!(out, "\n  {}", path.display());
        out
    })
}

/// Every file `init` writes into `dir`, in writing order (the policy last, so a run that
/// fails part-way never leaves a policy that names missing files).
pub fn target_files(dir: &Path) -> Vec<PathBuf> {
    let tls = dir.join(TLS_DIR);
    vec![
        tls.join(pki::KEY_FILE),
        tls.join(pki::CERT_FILE),
        tls.join(pki::CA_FILE),
        dir.join(PEPPER_FILE),
        dir.join(IDEMPOTENCY_KEY_FILE),
        dir.join(AUDIT_HMAC_KEY_FILE),
        dir.join(INGEST_TOKEN_FILE),
        dir.join(CONFIG_FILE),
    ]
}

/// Writes the starter files, refusing to touch an existing one.
pub fn run(options: &InitOptions) -> Result<InitReport, InitError> {
    let hostnames = certificate_names(&options.hostnames)?;
    let dir = options.dir.as_path();
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(InitError::NotADirectory(dir.to_owned())),
        _ => {}
    }
    let targets = target_files(dir);
    // `symlink_metadata`: a dangling symbolic link is in the way too.
    let existing: Vec<PathBuf> = targets
        .iter()
        .filter(|path| fs::symlink_metadata(path).is_ok())
        .cloned()
        .collect();
    if !existing.is_empty() {
        return Err(InitError::Exists(existing));
    }

    let created_dir = create_private_dir(dir)?;
    let tls = dir.join(TLS_DIR);
    create_private_dir(&tls)?;

    let names: Vec<&str> = hostnames.iter().map(String::as_str).collect();
    pki::generate_dev_pki(&tls, &names)?;
    // The same constructors the server uses at start: created 0600 from the OS CSPRNG, and a
    // file that appeared since the check above is loaded, never replaced.
    Pepper::load_or_create(&dir.join(PEPPER_FILE))?;
    SealKeys::load_or_create(&dir.join(IDEMPOTENCY_KEY_FILE))?;
    ChainKey::load_or_create(&dir.join(AUDIT_HMAC_KEY_FILE))?;
    let token_path = dir.join(INGEST_TOKEN_FILE);
    write_new(&token_path, ingest_token()?.as_bytes(), SECRET_MODE).map_err(|source| {
        InitError::Config {
            path: token_path.clone(),
            source,
        }
    })?;
    let config = dir.join(CONFIG_FILE);
    write_new(&config, starter_config().as_bytes(), CONFIG_MODE).map_err(|source| {
        InitError::Config {
            path: config.clone(),
            source,
        }
    })?;

    Ok(InitReport {
        dir: dir.to_owned(),
        created_dir,
        written: targets,
        hostnames,
    })
}

/// The operator's names, checked, followed by the local names not already among them.
fn certificate_names(given: &[String]) -> Result<Vec<String>, InitError> {
    let mut names: Vec<String> = Vec::with_capacity(given.len() + LOCAL_NAMES.len());
    for name in given {
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(InitError::Hostname(name.clone()));
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    for name in LOCAL_NAMES {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Creates `dir` (and missing parents) with [`DIR_MODE`]; an existing directory keeps its mode.
fn create_private_dir(dir: &Path) -> Result<bool, InitError> {
    let error = |source| InitError::Directory {
        path: dir.to_owned(),
        source,
    };
    if dir.is_dir() {
        return Ok(false);
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(error)?;
    // The umask may have taken bits away; the mode is part of the promise.
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(error)?;
    Ok(true)
}

/// A fresh ingest token: 32 bytes from the OS CSPRNG as 64 hex characters and a newline.
fn ingest_token() -> Result<String, InitError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| InitError::Config {
        path: PathBuf::from(INGEST_TOKEN_FILE),
        source: io::Error::other(error.to_string()),
    })?;
    let mut token = crate::keys::hex::encode(&bytes);
    token.push('\n');
    Ok(token)
}

/// Creates `path` with `mode`, failing if anything is already there.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The starter policy: the smallest working subset of `config/portcullis.toml`, with the
/// files `init` writes named relative to the policy and the unit's state and socket paths.
pub fn starter_config() -> String {
    format!(
        r#"# Portcullis starter policy, written by `portcullis init`.
# config/portcullis.toml in the source tree documents every option and its default.
# Relative paths are relative to the directory of this file.
# Check it after every edit:   portcullis check-config --config <this file>

[server]
# Loopback until you are ready: "0.0.0.0:443" serves partners (the systemd unit grants
# CAP_NET_BIND_SERVICE for ports below 1024).
listen = "127.0.0.1:8443"
# A private CA's certificate for a first run (clients trust {tls}/{ca}). Replace both files
# with the hospital's certificate; they are re-read on reload.
cert = "{tls}/{cert}"
key = "{tls}/{key}"

[upstream]
# The clinical backend this sidecar protects.
url = "http://127.0.0.1:8080"

[storage]
# The systemd unit's StateDirectory.
data_dir = "{data_dir}"

[auth]
# Keys read <namespace>_<env>_<id>_<secret>; pick the prefix partners will see.
namespace = "pcl"
# HMAC key for stored key hashes (0600, owned by the service user). Back it up: losing it
# invalidates every key.
pepper_file = "{pepper}"

[admin]
# In the systemd unit's RuntimeDirectory.
socket = "{socket}"

[idempotency]
# Seals cached answers at rest (0600, owned by the service user).
key_file = "{idempotency}"

[audit]
# Keys the audit hash chain; kept off the audit volume. Back it up: without it the chain
# cannot be verified.
hmac_key_file = "{audit}"

[internal]
# Loopback only: GET /metrics for Prometheus, POST /events for the backend's webhook events.
listen = "127.0.0.1:9464"

[webhooks]
# Off until partners subscribe. The backend then posts events to the internal listener's
# /events with this token (0600, owned by the service user) as a bearer token.
enabled = false
ingest_token_file = "{token}"

# Deny by default: partners reach only the routes listed here. One example; replace it.
[[route]]
name = "example.read"
method = "GET"
path = "/v1/example/{{id}}"
scope = "example:read"
"#,
        tls = TLS_DIR,
        ca = pki::CA_FILE,
        cert = pki::CERT_FILE,
        key = pki::KEY_FILE,
        data_dir = UNIT_DATA_DIR,
        pepper = PEPPER_FILE,
        socket = UNIT_ADMIN_SOCKET,
        idempotency = IDEMPOTENCY_KEY_FILE,
        audit = AUDIT_HMAC_KEY_FILE,
        token = INGEST_TOKEN_FILE,
    )
}

/// What to do after `init`, printed for the operator.
pub fn next_steps(report: &InitReport) -> String {
    let dir = report.dir.display();
    let mut out = String::new();
    if report.created_dir {
        let _ = writeln!(out, "created {dir}/ (mode 0750)");
    }
    for path in &report.written {
        let _ = writeln!(out, "wrote {}", path.display());
    }
    let _ = writeln!(
        out,
        "\nThe server certificate is valid for: {}",
        report.hostnames.join(", ")
    );
    let _ = write!(
        out,
        "\nNext steps:
  1. Edit {dir}/{CONFIG_FILE}: [upstream] url, [server] listen, the namespace and your routes
     (config/examples/ holds one policy per partner API style).
  2. portcullis check-config --config {dir}/{CONFIG_FILE}
  3. Let the service user read its files (as root, after systemd-sysusers; for /etc/portcullis
     systemd/portcullis.tmpfiles does the same):
       chgrp portcullis {dir} {dir}/{tls} {dir}/{CONFIG_FILE}
       chown portcullis:portcullis {dir}/{PEPPER_FILE} {dir}/{IDEMPOTENCY_KEY_FILE} {dir}/{AUDIT_HMAC_KEY_FILE} {dir}/{tls}/{key}
  4. systemctl enable --now portcullis    (see systemd/README.md)
  5. Clients trust {dir}/{tls}/{ca} until the hospital's certificate replaces {tls}/{cert} and {tls}/{key}.
  6. Back up {PEPPER_FILE}, {IDEMPOTENCY_KEY_FILE} and {AUDIT_HMAC_KEY_FILE} like private keys.
",
        tls = TLS_DIR,
        ca = pki::CA_FILE,
        cert = pki::CERT_FILE,
        key = pki::KEY_FILE,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_follow_the_operator_names_without_duplicates() {
        let names = certificate_names(&["sidecar.example.org".into(), "localhost".into()]).unwrap();
        assert_eq!(
            names,
            ["sidecar.example.org", "localhost", "127.0.0.1", "::1"]
        );
    }

    #[test]
    fn a_name_that_is_neither_dns_nor_ip_is_refused() {
        for bad in ["", "two words", "bad_under.score..", "-lead.example"] {
            let error = certificate_names(&[bad.into()]).unwrap_err();
            assert!(matches!(error, InitError::Hostname(_)), "{bad:?}: {error}");
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn the_policy_is_written_last() {
        let targets = target_files(Path::new("/x"));
        assert_eq!(targets.last().unwrap(), Path::new("/x/portcullis.toml"));
        assert_eq!(targets.len(), 8);
    }
}
