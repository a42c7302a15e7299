//! The `portcullis keys`, `orgs` and `admin-log` commands: arguments, the admin call each one
//! makes, and what it prints.
//!
//! The commands are thin: they turn flags into a request of the admin API, send it through
//! [`AdminClient`], and print either the server's JSON (`--json`) or a human summary. All rules
//! are enforced by the server, so a script speaking to the socket directly gets the same
//! answers as the CLI.

mod reload;
mod render;
pub mod values;

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{ArgGroup, Args, Subcommand};
use ipnet::IpNet;

use super::client::{AdminClient, ClientError, Reply};
use super::protocol::{
    self, ActionList, CreateKeyRequest, CreateOrgRequest, KeyList, KeyView, MintedKeyResponse,
    OrgList, OrgView, RatePatch, ReceivedKey, RecordBaaRequest, RevokeKeyRequest, RotateKeyRequest,
    UpdateKeyRequest, UpdateOrgRequest, ADMIN_ACTIONS_PATH, KEYS_PATH, ORGS_PATH,
};
use crate::config::Config;
use crate::keys::{Env, RateOverride};
use crate::orgs::BaaStatus;

/// Where `--config` points when not given.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// Options every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin socket of the running portcullis [default: `[admin] socket` of --config].
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// The policy file whose `[admin] socket` to use when --admin-socket is not given.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `portcullis keys ...`
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Mint an API key; the full key is printed once.
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List {
        /// Only this organization's keys.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
    },
    /// Show one key.
    Show {
        /// The key id (8 hex characters, the third part of the key).
        id: String,
    },
    /// Change a key's scopes, label, expiry, allowlist or rate limit.
    Update(UpdateKeyArgs),
    /// Give a key a new secret; the old one keeps working for the grace period.
    Rotate {
        /// The key id.
        id: String,
        /// How long the old secret keeps working (`0s`: it stops now).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = values::grace_seconds)]
        grace: u64,
    },
    /// Revoke a key for good: the next request with it gets 401 auth.revoked.
    Revoke {
        /// The key id.
        id: String,
    },
}

/// `portcullis keys create`
#[derive(Debug, Clone, Args)]
pub struct CreateKeyArgs {
    /// The organization the key acts for.
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// `test` (sandbox) or `live` (production, gated on HIPAA mode and a signed BAA).
    #[arg(long, value_name = "ENV", value_parser = values::env)]
    pub env: Env,
    /// Comma-separated scopes.
    #[arg(long, value_name = "SCOPES", value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Expire after this long (e.g. 90d).
    #[arg(long, value_name = "DURATION", value_parser = values::positive_seconds)]
    pub expires_in: Option<u64>,
    /// A note for operators.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Only accept the key from this network (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = values::network)]
    pub allow_cidrs: Vec<IpNet>,
    /// A rate limit of its own, e.g. 600/min (needs --burst).
    #[arg(long, value_name = "RATE", value_parser = values::rate_per_minute, requires = "burst")]
    pub rate: Option<u32>,
    /// Requests allowed in a burst (needs --rate).
    #[arg(long, value_name = "N", value_parser = values::burst, requires = "rate")]
    pub burst: Option<u32>,
}

/// `portcullis keys update`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true)))]
pub struct UpdateKeyArgs {
    /// The key id.
    pub id: String,
    /// Replace the scopes (comma-separated).
    #[arg(long, value_name = "SCOPES", value_delimiter = ',', group = "change")]
    pub scopes: Option<Vec<String>>,
    /// Set the label.
    #[arg(
        long,
        value_name = "TEXT",
        group = "change",
        conflicts_with = "clear_label"
    )]
    pub label: Option<String>,
    /// Remove the label.
    #[arg(long, group = "change")]
    pub clear_label: bool,
    /// Expire this long from now.
    #[arg(long, value_name = "DURATION", value_parser = values::positive_seconds, group = "change", conflicts_with = "no_expiry")]
    pub expires_in: Option<u64>,
    /// Never expire.
    #[arg(long, group = "change")]
    pub no_expiry: bool,
    /// Replace the allowlist with these networks (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = values::network, group = "change", conflicts_with = "allow_any_address")]
    pub allow_cidrs: Vec<IpNet>,
    /// Remove the allowlist: accept the key from any address.
    #[arg(long, group = "change")]
    pub allow_any_address: bool,
    /// Set the sustained rate, e.g. 600/min.
    #[arg(long, value_name = "RATE", value_parser = values::rate_per_minute, group = "change", conflicts_with = "default_rate")]
    pub rate: Option<u32>,
    /// Set the burst.
    #[arg(long, value_name = "N", value_parser = values::burst, group = "change", conflicts_with = "default_rate")]
    pub burst: Option<u32>,
    /// Drop the key's own rate limit and use the policy default.
    #[arg(long, group = "change")]
    pub default_rate: bool,
}

/// `portcullis orgs ...`
#[derive(Debug, Clone, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization (HIPAA mode off, no BAA).
    Create {
        /// Stable id: a-z, 0-9 and `-`.
        id: String,
        /// Display name.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// List organizations.
    List,
    /// Show one organization with its BAA evidence.
    Show {
        /// The organization id.
        id: String,
    },
    /// Rename an organization or switch its HIPAA mode.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["hipaa_mode", "name"])))]
    Set {
        /// The organization id.
        id: String,
        /// HIPAA mode `on` or `off`.
        #[arg(long, value_name = "on|off", value_parser = values::on_off)]
        hipaa_mode: Option<bool>,
        /// New display name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Record BAA evidence; you are recorded as the one who did.
    Baa {
        /// The organization id.
        id: String,
        /// `none`, `pending` or `signed`.
        #[arg(long, value_name = "STATUS", value_parser = values::baa_status)]
        status: BaaStatus,
        /// Where the evidence is: contract id, document URL, ticket.
        #[arg(long, value_name = "TEXT")]
        evidence: String,
    },
}

/// One admin command.
#[derive(Debug, Clone)]
pub enum AdminCommand {
    /// `portcullis keys ...`
    Keys(KeysCommand),
    /// `portcullis orgs ...`
    Orgs(OrgsCommand),
    /// `portcullis admin-log`
    AdminLog {
        /// How many entries, newest first.
        limit: usize,
    },
    /// `portcullis reload`
    Reload,
}

/// Why an admin command failed, and which exit status that earns.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The operator must fix the invocation or the configuration (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The admin call failed (exit status 1).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Output could not be written (exit status 1).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The request was not sent because it could only be refused (exit status 1).
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    /// `2` for mistakes in the invocation or configuration, like the rest of the CLI; `1` for
    /// everything that went wrong at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Client(_) | Self::Output(_) | Self::Refused(_) => 1,
        }
    }
}

/// Runs one admin command against the socket `args` name.
pub async fn run(args: &AdminArgs, command: AdminCommand) -> Result<(), CliError> {
    let socket = match command {
        // The file is usually being reloaded because it was edited: find the socket even when
        // the edit broke it, so the running instance can say what is wrong.
        AdminCommand::Reload => reload::socket_path(args)?,
        _ => socket_path(args)?,
    };
    let client = AdminClient::new(socket);
    let out = Output { json: args.json };
    let result = match command {
        AdminCommand::Keys(command) => keys(&client, &out, command).await,
        AdminCommand::Orgs(command) => orgs(&client, &out, command).await,
        AdminCommand::Reload => reload::run(&client, &out).await,
        AdminCommand::AdminLog { limit } => {
            let reply = client
                .get(&format!("{ADMIN_ACTIONS_PATH}?limit={limit}"))
                .await?;
            out.reply(&reply, |json| {
                let list: ActionList = client.decode(json)?;
                Ok(render::action_table(&list.actions))
            })
        }
    };
    if let (true, Err(CliError::Client(ClientError::Problem(problem)))) = (args.json, &result) {
        // Scripts get the problem document on stdout too; the one-line summary goes to stderr.
        if let Ok(document) = serde_json::to_string(problem) {
            let _ = writeln!(std::io::stdout().lock(), "{document}");
        }
    }
    result
}

/// `--admin-socket`, or the socket of the policy named by `--config`.
fn socket_path(args: &AdminArgs) -> Result<PathBuf, CliError> {
    if let Some(path) = &args.admin_socket {
        return Ok(path.clone());
    }
    Config::load(&args.config)
        .map(|config| config.admin.socket)
        .map_err(|error| {
            CliError::Usage(format!(
                "cannot find the admin socket: the policy {} is not usable ({}); pass --admin-socket PATH",
                args.config.display(),
                first_line(&error.to_string())
            ))
        })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

async fn keys(client: &AdminClient, out: &Output, command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create(args) => {
            let request = create_request(args);
            let reply = client.post(KEYS_PATH, &request).await?;
            out.minted(client, &reply, |record| {
                format!(
                    "Created API key {} for {} ({}).",
                    record.id,
                    record.org,
                    record.env.as_str()
                )
            })
        }
        KeysCommand::List { org } => {
            let path = match &org {
                Some(org) => format!("{KEYS_PATH}?org={}", escape_id(org)),
                None => KEYS_PATH.to_owned(),
            };
            let reply = client.get(&path).await?;
            out.reply(&reply, |json| {
                let list: KeyList = client.decode(json)?;
                Ok(render::key_table(&list.keys))
            })
        }
        KeysCommand::Show { id } => {
            let reply = client.get(&protocol::key_path(&escape_id(&id))).await?;
            out.key(client, &reply, None)
        }
        KeysCommand::Update(args) => {
            let path = protocol::key_path(&escape_id(&args.id));
            let reply = client.patch(&path, &update_request(&args)).await?;
            out.key(client, &reply, Some("Updated"))
        }
        KeysCommand::Rotate { id, grace } => {
            let request = RotateKeyRequest {
                grace_seconds: Some(grace),
            };
            let reply = client
                .post(&protocol::key_rotate_path(&escape_id(&id)), &request)
                .await?;
            out.minted(client, &reply, |record| {
                let old = match &record.previous_secret_valid_until {
                    Some(until) => format!("the old secret keeps working until {until}"),
                    None => "the old secret no longer works".to_owned(),
                };
                format!("Rotated API key {}; {old}.", record.id)
            })
        }
        KeysCommand::Revoke { id } => {
            let reply = client
                .post(
                    &protocol::key_revoke_path(&escape_id(&id)),
                    &RevokeKeyRequest {},
                )
                .await?;
            out.key(client, &reply, Some("Revoked"))
        }
    }
}

async fn orgs(client: &AdminClient, out: &Output, command: OrgsCommand) -> Result<(), CliError> {
    let (reply, headline) = match command {
        OrgsCommand::Create { id, name } => (
            client
                .post(ORGS_PATH, &CreateOrgRequest { id, name })
                .await?,
            Some("Created"),
        ),
        OrgsCommand::List => {
            let reply = client.get(ORGS_PATH).await?;
            return out.reply(&reply, |json| {
                let list: OrgList = client.decode(json)?;
                Ok(render::org_table(&list.orgs))
            });
        }
        OrgsCommand::Show { id } => (
            client.get(&protocol::org_path(&escape_id(&id))).await?,
            None,
        ),
        OrgsCommand::Set {
            id,
            hipaa_mode,
            name,
        } => (
            client
                .patch(
                    &protocol::org_path(&escape_id(&id)),
                    &UpdateOrgRequest { name, hipaa_mode },
                )
                .await?,
            Some("Updated"),
        ),
        OrgsCommand::Baa {
            id,
            status,
            evidence,
        } => (
            client
                .post(
                    &protocol::org_baa_path(&escape_id(&id)),
                    &RecordBaaRequest {
                        status,
                        evidence: Some(evidence),
                    },
                )
                .await?,
            Some("Recorded BAA evidence for"),
        ),
    };
    out.reply(&reply, |json| {
        let org: OrgView = client.decode(json)?;
        let details = render::org_details(&org);
        Ok(match headline {
            Some(headline) => format!(
                "{headline} organization {}.\n\n{details}",
                super::client::printable(&org.id)
            ),
            None => details,
        })
    })
}

fn create_request(args: CreateKeyArgs) -> CreateKeyRequest {
    CreateKeyRequest {
        org: args.org,
        env: args.env,
        scopes: args.scopes,
        label: args.label,
        expires_in_seconds: args.expires_in,
        expires_at: None,
        allow_cidrs: args.allow_cidrs,
        rate: match (args.rate, args.burst) {
            (Some(per_minute), Some(burst)) => Some(RateOverride { per_minute, burst }),
            _ => None,
        },
    }
}

fn update_request(args: &UpdateKeyArgs) -> UpdateKeyRequest {
    UpdateKeyRequest {
        scopes: args.scopes.clone(),
        label: if args.clear_label {
            Some(None)
        } else {
            args.label.clone().map(Some)
        },
        expires_in_seconds: args.expires_in,
        expires_at: args.no_expiry.then_some(None),
        allow_cidrs: if args.allow_any_address {
            Some(Vec::new())
        } else if args.allow_cidrs.is_empty() {
            None
        } else {
            Some(args.allow_cidrs.clone())
        },
        rate: if args.default_rate {
            Some(None)
        } else if args.rate.is_some() || args.burst.is_some() {
            Some(Some(RatePatch {
                per_minute: args.rate,
                burst: args.burst,
            }))
        } else {
            None
        },
    }
}

/// Characters left as they are in ids put into paths and queries: those valid ids use.
const ID_SAFE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// An id typed by the operator, made safe to put in a path or query; the server judges
/// whether it is a valid id.
fn escape_id(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, ID_SAFE).to_string()
}

/// Where and how answers are printed.
struct Output {
    json: bool,
}

impl Output {
    /// Prints the raw JSON, or what `human` makes of it.
    fn reply(
        &self,
        reply: &Reply,
        human: impl FnOnce(&Bytes) -> Result<String, CliError>,
    ) -> Result<(), CliError> {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&reply.body)
                .and_then(|()| stdout.write_all(b"\n"))
                .and_then(|()| stdout.flush())
                .map_err(CliError::Output)
        } else {
            print(&human(&reply.body)?)
        }
    }

    /// A key record, with an optional headline.
    fn key(
        &self,
        client: &AdminClient,
        reply: &Reply,
        headline: Option<&str>,
    ) -> Result<(), CliError> {
        self.reply(reply, |json| {
            let key: KeyView = client.decode(json)?;
            let details = render::key_details(&key);
            Ok(match headline {
                Some(headline) => format!(
                    "{headline} API key {}.\n\n{details}",
                    super::client::printable(&key.id)
                ),
                None => details,
            })
        })
    }

    /// A freshly minted or rotated key: the key on its own line, the warning on stderr.
    fn minted(
        &self,
        client: &AdminClient,
        reply: &Reply,
        headline: impl FnOnce(&KeyView) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            return self.reply(reply, |_| Ok(String::new()));
        }
        let minted: MintedKeyResponse<ReceivedKey> = client.decode(&reply.body)?;
        let text = render::minted_key(
            &super::client::printable(&headline(&minted.record)),
            minted.key.expose_secret(),
            &minted.record,
        );
        print(&text)?;
        let mut stderr = std::io::stderr().lock();
        for warning in &minted.warnings {
            let _ = writeln!(stderr, "warning: {}", super::client::printable(warning));
        }
        let _ = writeln!(stderr, "{}", render::SHOWN_ONCE_WARNING);
        Ok(())
    }
}

fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Keys {
            #[command(flatten)]
            admin: AdminArgs,
            #[command(subcommand)]
            command: KeysCommand,
        },
        Orgs {
            #[command(flatten)]
            admin: AdminArgs,
            #[command(subcommand)]
            command: OrgsCommand,
        },
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("portcullis").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn create_parses_every_flag_into_the_request() {
        let Top::Keys { admin, command } = parse(&[
            "keys",
            "create",
            "--org",
            "acme",
            "--env",
            "live",
            "--scopes",
            "a,b",
            "--expires-in",
            "90d",
            "--label",
            "L",
            "--allow-cidr",
            "10.0.0.0/8",
            "--allow-cidr",
            "192.0.2.7",
            "--rate",
            "600/min",
            "--burst",
            "50",
            "--json",
            "--admin-socket",
            "/run/p.sock",
        ])
        .unwrap() else {
            panic!("keys")
        };
        assert!(admin.json);
        assert_eq!(admin.admin_socket, Some(PathBuf::from("/run/p.sock")));
        let KeysCommand::Create(args) = command else {
            panic!("create")
        };
        let request = create_request(args);
        assert_eq!(request.env, Env::Live);
        assert_eq!(request.scopes, ["a", "b"]);
        assert_eq!(request.expires_in_seconds, Some(90 * 86_400));
        assert_eq!(request.allow_cidrs.len(), 2);
        assert_eq!(
            request.rate,
            Some(RateOverride {
                per_minute: 600,
                burst: 50
            })
        );
    }

    #[test]
    fn create_needs_rate_and_burst_together_and_the_basics() {
        let base = [
            "keys", "create", "--org", "acme", "--env", "test", "--scopes", "a",
        ];
        assert!(parse(&base).is_ok());
        assert!(parse(&[&base[..], &["--rate", "600/min"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--burst", "5"]].concat()).is_err());
        assert!(parse(&["keys", "create", "--org", "acme", "--env", "test"]).is_err());
        assert!(
            parse(&["keys", "create", "--org", "acme", "--env", "prod", "--scopes", "a"]).is_err()
        );
    }

    #[test]
    fn update_needs_a_change_and_maps_clears() {
        assert!(parse(&["keys", "update", "0a1b2c3d"]).is_err());
        assert!(parse(&[
            "keys",
            "update",
            "0a1b2c3d",
            "--label",
            "x",
            "--clear-label"
        ])
        .is_err());
        let Top::Keys {
            command: KeysCommand::Update(args),
            ..
        } = parse(&[
            "keys",
            "update",
            "0a1b2c3d",
            "--clear-label",
            "--no-expiry",
            "--allow-any-address",
            "--burst",
            "9",
        ])
        .unwrap()
        else {
            panic!("update")
        };
        let request = update_request(&args);
        assert_eq!(request.label, Some(None));
        assert_eq!(request.expires_at, Some(None));
        assert_eq!(request.allow_cidrs, Some(Vec::new()));
        assert_eq!(
            request.rate,
            Some(Some(RatePatch {
                per_minute: None,
                burst: Some(9)
            }))
        );
        assert_eq!(request.scopes, None);
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"label": null, "expires_at": null, "allow_cidrs": [], "rate": {"burst": 9}})
        );
    }

    #[test]
    fn orgs_set_needs_a_change() {
        assert!(parse(&["orgs", "set", "acme"]).is_err());
        assert!(parse(&["orgs", "set", "acme", "--hipaa-mode", "on"]).is_ok());
        assert!(parse(&["orgs", "set", "acme", "--hipaa-mode", "yes"]).is_err());
        assert!(parse(&["orgs", "baa", "acme", "--status", "signed"]).is_err());
        assert!(parse(&[
            "orgs",
            "baa",
            "acme",
            "--status",
            "signed",
            "--evidence",
            "DocuSign 1"
        ])
        .is_ok());
    }

    #[test]
    fn socket_path_prefers_the_flag_then_the_config() {
        let args = AdminArgs {
            admin_socket: Some(PathBuf::from("/x.sock")),
            config: PathBuf::from("/nonexistent.toml"),
            json: false,
        };
        assert_eq!(socket_path(&args).unwrap(), PathBuf::from("/x.sock"));
        let error = socket_path(&AdminArgs {
            admin_socket: None,
            ..args
        })
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("pass --admin-socket"), "{error}");
        assert!(!error.to_string().contains('\n'));
    }

    #[test]
    fn ids_are_escaped_into_paths() {
        assert_eq!(escape_id("0a1b2c3d"), "0a1b2c3d");
        assert_eq!(escape_id("test-org"), "test-org");
        assert_eq!(escape_id("../orgs?x"), "%2E%2E%2Forgs%3Fx");
    }
}
