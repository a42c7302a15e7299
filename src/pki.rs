//! A private certificate authority for first runs, demos and tests.
//!
//! Real deployments bring their own certificates. For everything else Portcullis mints a small
//! CA and a server certificate signed by it, so clients can trust the CA with `--cacert`
//! exactly as they would a hospital's internal CA (a bare self-signed leaf is refused by
//! strict TLS clients).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// File names used inside the directory given to [`ensure_dev_pki`].
pub const CA_FILE: &str = "ca.pem";
/// The server certificate chain.
pub const CERT_FILE: &str = "server.pem";
/// The server private key (written 0600).
pub const KEY_FILE: &str = "server.key";

/// Paths of a generated CA and server certificate.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// The server private key.
    pub key: PathBuf,
}

/// Why certificates could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation failed.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Uses the CA and certificate in `dir` if all three files exist, else mints new ones for
/// `hosts` (DNS names or IP addresses).
pub fn ensure_dev_pki(dir: &Path, hosts: &[&str]) -> Result<DevPki, PkiError> {
    let pki = DevPki {
        ca: dir.join(CA_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    if pki.ca.is_file() && pki.cert.is_file() && pki.key.is_file() {
        return Ok(pki);
    }
    generate_dev_pki(dir, hosts)
}

/// Mints a fresh CA and a server certificate for `hosts`, valid for about two years.
pub fn generate_dev_pki(dir: &Path, hosts: &[&str]) -> Result<DevPki, PkiError> {
    let (first_year, last_year) = validity_years();
    let not_before = date_time_ymd(first_year, 1, 1);
    let not_after = date_time_ymd(last_year, 1, 1);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let server_key = KeyPair::generate()?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut server_params = CertificateParams::new(names)?;
    server_params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().copied().unwrap_or("localhost"),
    );
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    let server_cert = server_params.signed_by(&server_key, &*ca)?;

    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_error(dir))?;
    let pki = DevPki {
        ca: dir.join(CA_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    write_file(&pki.key, server_key.serialize_pem().as_bytes(), 0o600)
        .map_err(write_error(&pki.key))?;
    let chain = format!("{}{}", server_cert.pem(), ca.pem());
    write_file(&pki.cert, chain.as_bytes(), 0o644).map_err(write_error(&pki.cert))?;
    write_file(&pki.ca, ca.pem().as_bytes(), 0o644).map_err(write_error(&pki.ca))?;
    Ok(pki)
}

/// Writes via a temporary file and a rename, so a crash never leaves half a key behind.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// From the start of last year to the start of the year after next.
fn validity_years() -> (i32, i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Average Gregorian year: close enough for certificate validity bounds.
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    (year - 1, year + 2)
}
