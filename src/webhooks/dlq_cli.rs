//! `portcullis webhooks dlq list` and `portcullis webhooks redeliver`: the dead-letter queue
//! of a running sidecar, through its admin socket.
//!
//! Exit status: 0 success, 1 the call failed (socket unreachable, refused), 2 a usage or
//! configuration mistake. `--json` prints the server's answer as it came.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::admin::cli::AdminArgs;
use crate::admin::protocol::{
    DeliveryList, DeliveryView, RedeliverRequest, RedeliverResponse, WEBHOOK_DLQ_PATH,
    WEBHOOK_REDELIVER_PATH,
};
use crate::admin::{AdminClient, ClientError};
use crate::config::Config;

/// `webhooks dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead deliveries, newest first.
    List(DlqListArgs),
}

/// `webhooks dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Only this organization's dead deliveries.
    #[arg(long)]
    org: Option<String>,
    /// How many, at most (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `webhooks redeliver ID | --all-dead [--org ORG]`.
#[derive(Debug, Args)]
pub struct RedeliverArgs {
    /// The dead delivery to send again (`dlv_…`).
    #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
    id: Option<String>,
    /// Every dead delivery (of --org when given).
    #[arg(long)]
    all_dead: bool,
    /// With --all-dead: only this organization's.
    #[arg(long, requires = "all_dead")]
    org: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Runs `webhooks dlq ...`.
pub fn run_dlq(command: DlqCommand) -> ExitCode {
    match command {
        DlqCommand::List(args) => run_admin(&args.admin, |client| async move {
            let mut path = format!("{WEBHOOK_DLQ_PATH}?limit={}", args.limit);
            if let Some(org) = &args.org {
                path.push_str("&org=");
                path.push_str(
                    &percent_encoding::utf8_percent_encode(org, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                );
            }
            let reply = client.get(&path).await?;
            if args.admin.json {
                return Ok(String::from_utf8_lossy(&reply.body).into_owned());
            }
            let list: DeliveryList = client.decode(&reply.body)?;
            Ok(table(&list.deliveries))
        }),
    }
}

/// Runs `webhooks redeliver ...`.
pub fn run_redeliver(args: RedeliverArgs) -> ExitCode {
    run_admin(&args.admin, |client| async move {
        let request = RedeliverRequest {
            id: args.id.clone(),
            all_dead: args.all_dead,
            org: args.org.clone(),
        };
        let reply = client.post(WEBHOOK_REDELIVER_PATH, &request).await?;
        if args.admin.json {
            return Ok(String::from_utf8_lossy(&reply.body).into_owned());
        }
        let moved: RedeliverResponse = client.decode(&reply.body)?;
        let mut text = format!(
            "Redelivered {} dead deliver{}; they are due now.",
            moved.redelivered.len(),
            if moved.redelivered.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
        if !moved.redelivered.is_empty() {
            text.push('\n');
            text.push_str(&table(&moved.redelivered));
        }
        Ok(text)
    })
}

/// Deliveries as an aligned table.
fn table(deliveries: &[DeliveryView]) -> String {
    if deliveries.is_empty() {
        return "No dead deliveries.".to_owned();
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "ORG".to_owned(),
        "TYPE".to_owned(),
        "SUBSCRIPTION".to_owned(),
        "ATTEMPTS".to_owned(),
        "LAST".to_owned(),
        "UPDATED".to_owned(),
    ]];
    for d in deliveries {
        let last = match (d.last_status_code, &d.last_error) {
            (Some(code), _) => code.to_string(),
            (None, Some(error)) => error.clone(),
            (None, None) => "-".to_owned(),
        };
        rows.push([
            d.id.clone(),
            d.org.clone(),
            d.event_type.clone(),
            d.subscription_id.clone(),
            d.attempts.to_string(),
            last,
            d.updated_at.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a command failed.
enum Failed {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Self {
        Self::Client(error)
    }
}

fn run_admin<F, Fut>(args: &AdminArgs, work: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<String, ClientError>>,
{
    let outcome = socket(args).and_then(|socket| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Failed::Usage(format!("cannot start the async runtime: {error}")))?;
        runtime
            .block_on(work(AdminClient::new(socket)))
            .map_err(Failed::from)
    });
    match outcome {
        Ok(text) => {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(Failed::Usage(message)) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(2)
        }
        Err(Failed::Client(error)) => {
            eprintln!("portcullis: {error}");
            ExitCode::from(1)
        }
    }
}

/// `--admin-socket`, or the socket of the policy named by `--config`.
fn socket(args: &AdminArgs) -> Result<PathBuf, Failed> {
    if let Some(path) = &args.admin_socket {
        return Ok(path.clone());
    }
    Config::load(&args.config)
        .map(|config| config.admin.socket)
        .map_err(|error| {
            Failed::Usage(format!(
                "cannot find the admin socket: the policy {} is not usable ({}); pass --admin-socket PATH",
                args.config.display(),
                error.to_string().lines().next().unwrap_or_default()
            ))
        })
}
