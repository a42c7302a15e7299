//! `portcullis audit verify` and `portcullis audit export`.
//!
//! Both read the audit files directly, so they work beside a running sidecar, on a copy of
//! the files, or on a machine that only has the files (and, for a keyed chain, the key).
//! Exit status: 0 success, 1 a broken chain, 2 a usage, configuration or I/O problem.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::chain::{self, ChainKey, HMAC_KEY_KIND};
use super::export::{self, ExportFilter};
use super::time;
use super::verify::{self, VerifyError};
use crate::config::Config;
use crate::keys::secret_file;
use crate::orgs::is_org_id;

/// The policy file used when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// Exit status for a chain that does not verify.
const EXIT_BROKEN: u8 = 1;

/// Exit status for usage, configuration and I/O problems.
const EXIT_USAGE: u8 = 2;

/// The `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every link of the hash chain. Prints the first broken seq and exits 1.
    Verify {
        /// The policy file, for the audit directory and HMAC key (default
        /// /etc/portcullis/portcullis.toml when no PATH is given).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The chain's HMAC key file, when it is keyed (instead of the policy's).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// Audit files or directories, oldest first (default: the policy's audit directory).
        paths: Vec<PathBuf>,
    },
    /// Print one organization's records as JSON lines, oldest first.
    Export {
        /// The policy file, for the audit directory.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The organization id.
        #[arg(long)]
        org: String,
        /// Only records at or after this ISO-8601 time (e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this ISO-8601 time.
        #[arg(long)]
        until: Option<String>,
    },
}

/// Runs an `audit` subcommand and returns the process exit status.
pub fn run(command: AuditCommand) -> ExitCode {
    let outcome = match command {
        AuditCommand::Verify {
            config,
            hmac_key_file,
            paths,
        } => run_verify(config.as_deref(), hmac_key_file.as_deref(), paths),
        AuditCommand::Export {
            config,
            org,
            since,
            until,
        } => run_export(&config, org, since.as_deref(), until.as_deref()),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_verify(
    config: Option<&Path>,
    key_file: Option<&Path>,
    mut paths: Vec<PathBuf>,
) -> Result<ExitCode, String> {
    let policy = match (config, paths.is_empty()) {
        (Some(path), _) => Some(load(path)?),
        (None, true) => Some(load(Path::new(DEFAULT_CONFIG))?),
        (None, false) => None,
    };
    if paths.is_empty() {
        if let Some(policy) = &policy {
            paths.push(policy.audit.dir.clone());
        }
    }
    let key_file = key_file
        .map(Path::to_owned)
        .or_else(|| policy.as_ref().and_then(|p| p.audit.hmac_key_file.clone()));
    let key = match key_file {
        None => ChainKey::plain(),
        Some(path) => load_key(&path)?,
    };
    match verify::verify(&paths, &key) {
        Ok(verified) => {
            let range = match (verified.first_seq, verified.last_seq) {
                (Some(first), Some(last)) => format!(" (seq {first}-{last})"),
                _ => String::new(),
            };
            println!(
                "ok: {} records{range} in {} file(s); every link verifies{}",
                verified.records,
                verified.files,
                if key.is_keyed() {
                    " (HMAC-SHA256)"
                } else {
                    " (SHA-256)"
                }
            );
            if !verified.from_genesis && verified.records > 0 {
                println!(
                    "note: the first record links to a file not given, so the chain is checked \
                     from seq {} on",
                    verified.first_seq.unwrap_or(0)
                );
            }
            if let Some(path) = verified.incomplete_tail {
                eprintln!(
                    "note: the last line of {} is incomplete (a write in progress, or torn by a \
                     crash; the next start cuts and records it)",
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(broken)) => {
            println!("broken: {broken}");
            println!("first broken seq: {}", broken.seq);
            Ok(ExitCode::from(EXIT_BROKEN))
        }
        Err(error) => Err(error.to_string()),
    }
}

fn run_export(
    config: &Path,
    org: String,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<ExitCode, String> {
    if !is_org_id(&org) {
        return Err("--org must be an organization id".to_owned());
    }
    let parse = |flag: &str, value: Option<&str>| {
        value
            .map(|text| {
                time::parse_iso8601(text).ok_or_else(|| {
                    format!("{flag} must be an ISO-8601 time such as 2026-11-01T00:00:00Z")
                })
            })
            .transpose()
    };
    let filter = ExportFilter {
        org,
        since: parse("--since", since)?,
        until: parse("--until", until)?,
    };
    let policy = load(config)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let count = export::export(&policy.audit.dir, &filter, &mut out).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    eprintln!("exported {count} record(s)");
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|error| error.to_string())
}

/// Loads an existing key file; verification never creates one.
fn load_key(path: &Path) -> Result<ChainKey, String> {
    if !path.exists() {
        return Err(format!(
            "{} file {} does not exist",
            HMAC_KEY_KIND.name,
            path.display()
        ));
    }
    let secret = secret_file::load_or_create::<{ chain::DIGEST_LEN }>(path, &HMAC_KEY_KIND)
        .map_err(|error| error.to_string())?;
    Ok(ChainKey::keyed(secret.expose()))
}
