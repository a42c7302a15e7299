//! `portcullis reload`: asks the running instance to re-read its policy file.
//!
//! Exit status 0 means the new policy is in service. A refusal prints every reason the
//! instance gave (one per line) and exits 1; the instance keeps serving its current policy.

use std::path::{Path, PathBuf};

use super::{first_line, AdminArgs, CliError, Output};
use crate::admin::client::{printable, AdminClient};
use crate::admin::protocol::{ReloadRequest, ReloadView, RELOAD_PATH};
use crate::config::{Config, ConfigError};

/// Where the instance's data lives when the policy does not say (`storage.data_dir`).
const DEFAULT_DATA_DIR: &str = "/var/lib/portcullis";

/// Sends the reload and prints what came of it.
pub(super) async fn run(client: &AdminClient, out: &Output) -> Result<(), CliError> {
    let reply = client.post(RELOAD_PATH, &ReloadRequest {}).await?;
    out.reply(&reply, |json| {
        let view: ReloadView = client.decode(json)?;
        Ok(format!(
            "Reloaded the policy (reload {} since start): {} routes; policy sha256 {}; \
             certificate sha256 {}.\n",
            view.generation,
            view.routes,
            printable(&view.policy_sha256),
            printable(&view.certificate_sha256)
        ))
    })
}

/// `--admin-socket`, else the socket `--config` names. A policy with mistakes still names its
/// socket (or data directory) when it is valid TOML, and the instance then reports the
/// mistakes itself; a file that is not even TOML is refused here with its errors, and the
/// instance is not asked.
pub(super) fn socket_path(args: &AdminArgs) -> Result<PathBuf, CliError> {
    if let Some(path) = &args.admin_socket {
        return Ok(path.clone());
    }
    let error = match Config::load(&args.config) {
        Ok(config) => return Ok(config.admin.socket),
        Err(error) => error,
    };
    if let ConfigError::Read { .. } = error {
        return Err(CliError::Usage(format!(
            "cannot find the admin socket: {}; pass --admin-socket PATH",
            first_line(&error.to_string())
        )));
    }
    let text = std::fs::read_to_string(&args.config).unwrap_or_default();
    match text.parse::<toml::Table>() {
        Ok(table) => Ok(socket_from_table(&table, &args.config)),
        Err(_) => Err(CliError::Refused(format!(
            "the policy {} is not valid, so the running instance was not asked to reload it \
             and keeps its current policy:\n{}",
            args.config.display(),
            error
                .issues()
                .iter()
                .map(|issue| format!("  {issue}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
    }
}

/// `admin.socket`, else `<storage.data_dir>/admin.sock`, relative paths taken from the
/// policy file's directory as validation does.
fn socket_from_table(table: &toml::Table, config: &Path) -> PathBuf {
    let base = config.parent().unwrap_or_else(|| Path::new("."));
    let text = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|value| value.get(key))
            .and_then(toml::Value::as_str)
            .filter(|text| !text.trim().is_empty())
            .map(|text| base.join(text))
    };
    text("admin", "socket").unwrap_or_else(|| {
        text("storage", "data_dir")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join("admin.sock")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: &Path) -> AdminArgs {
        AdminArgs {
            admin_socket: None,
            config: config.to_owned(),
            json: false,
        }
    }

    #[test]
    fn a_broken_policy_still_names_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.toml");
        std::fs::write(
            &policy,
            "[server]\nmax_headers = 0\n[admin]\nsocket = \"run/a.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            socket_path(&args(&policy)).unwrap(),
            dir.path().join("run/a.sock")
        );
        std::fs::write(&policy, "[storage]\ndata_dir = \"/srv/pc\"\n").unwrap();
        assert_eq!(
            socket_path(&args(&policy)).unwrap(),
            PathBuf::from("/srv/pc/admin.sock")
        );
        std::fs::write(&policy, "[server\n").unwrap();
        let error = socket_path(&args(&policy)).unwrap_err();
        assert_eq!(error.exit_code(), 1);
        let text = error.to_string();
        assert!(text.contains("was not asked"), "{text}");
        assert!(text.contains("p.toml:1:"), "{text}");
        let missing = socket_path(&args(&dir.path().join("none.toml"))).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
    }
}
