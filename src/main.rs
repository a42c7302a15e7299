//! The `portcullis` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::admin::cli::{
    self as admin_cli, AdminArgs, AdminCommand, KeysCommand, OrgsCommand,
};
use portcullis::admin::AdminServer;
use portcullis::audit::cli::{self as audit_cli, AuditCommand};
use portcullis::config::{Config, LoggingConfig};
use portcullis::internal::InternalServer;
use portcullis::notify::{self, Notifier};
use portcullis::policy::Policy;
use portcullis::reload::{ReloadTrigger, Reloader};
use portcullis::server::{tls, Server};
use portcullis::state::State;
use portcullis::webhooks::cli::{self as webhooks_cli, WebhooksCommand};
use portcullis::{demo, forward, logging};

/// Exit status for a configuration or start-up mistake the operator must fix.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A TLS-terminating security sidecar for clinical backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar with a policy file.
    Serve {
        /// The TOML policy file.
        #[arg(long, short, default_value = "/etc/portcullis/portcullis.toml")]
        config: PathBuf,
    },
    /// Validate a policy file (and the files it names) without starting anything.
    CheckConfig {
        /// The TOML policy file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the sidecar in front of the bundled fake clinical backend, with a generated CA.
    Demo {
        /// Address of the sidecar's TLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Directory for the demo's certificates and state (created if missing).
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
    },
    /// Manage API keys through the admin socket of a running portcullis.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage organizations, HIPAA mode and BAA evidence through the admin socket.
    Orgs {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Show the latest administrative actions, newest first.
    AdminLog {
        #[command(flatten)]
        admin: AdminArgs,
        /// How many entries to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Write a starter policy, server secrets and a first-run certificate into a directory,
    /// refusing to overwrite anything.
    Init {
        /// The configuration directory (created 0750 if missing).
        #[arg(long, default_value = "/etc/portcullis")]
        dir: PathBuf,
        /// A DNS name or IP address for the server certificate; repeat for more. localhost,
        /// 127.0.0.1 and ::1 are always added.
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
    },
    /// Verify the audit trail's hash chain, or export one organization's records.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Sign or verify webhook deliveries, as a partner's receiver would.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Make the running portcullis re-read its policy file (as SIGHUP does); prints why when
    /// the new policy is refused, and exits 1.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // `serve` starts logging once its configuration is read, in the format it names.
        logging::init(&LoggingConfig::default());
    }
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => serve_main(&config),
        Command::Demo { listen, data_dir } => run_async(async move {
            demo::run(demo::DemoOptions { listen, data_dir }, shutdown_signal())
                .await
                .map_err(|error| error.to_string())
        }),
        Command::Keys { admin, command } => run_admin(&admin, AdminCommand::Keys(command)),
        Command::Orgs { admin, command } => run_admin(&admin, AdminCommand::Orgs(command)),
        Command::Audit { command } => audit_cli::run(command),
        Command::Webhooks { command } => webhooks_cli::run(command),
        Command::Reload { admin } => run_admin(&admin, AdminCommand::Reload),
        Command::Init { dir, hostnames } => {
            init_command(&portcullis::init::InitOptions { dir, hostnames })
        }
        Command::AdminLog { admin, limit } => run_admin(
            &admin,
            AdminCommand::AdminLog {
                limit: usize::from(limit),
            },
        ),
    }
}

/// Runs one admin command: exit 1 when the call fails, 2 for usage or configuration mistakes.
fn run_admin(args: &AdminArgs, command: AdminCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(admin_cli::run(args, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portcullis: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `portcullis serve`: the configuration is read first, so `[logging]` decides the log format;
/// its mistakes go to stderr as plain lines (exit 2).
fn serve_main(path: &Path) -> ExitCode {
    // Relative paths in the policy resolve against its directory; anchor the file itself now
    // so that a reload (which re-reads it from wherever the process stands) sees the same
    // paths and does not mistake them for changed start-only settings.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.logging);
    run_async(serve(path, config))
}

/// Runs a future on a multi-threaded runtime; `Err` texts are printed as one line, exit 2.
fn run_async(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // Blocking work still running (a store call stuck on a failed disk) must not keep the
    // process from exiting once serving is over: dropping the runtime would wait for it.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// How long blocking work may still run after the async work is done.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `portcullis init`: the report on stdout, a refusal or failure on stderr.
fn init_command(options: &portcullis::init::InitOptions) -> ExitCode {
    match portcullis::init::run(options) {
        Ok(report) => {
            print!("{}", portcullis::init::next_steps(&report));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("portcullis: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut failed = false;
    if let Err(error) = tls::load_certified_key(&config.server.cert, &config.server.key) {
        eprintln!("{}: {error}", path.display());
        failed = true;
    }
    if let Err(error) = forward::Forwarder::new(&config.upstream) {
        eprintln!("{}: {error}", path.display());
        failed = true;
    }
    if failed {
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("ok");
    ExitCode::SUCCESS
}

async fn serve(config_path: PathBuf, config: Config) -> Result<(), String> {
    let notifier = Notifier::from_env();
    // Claim SIGHUP before anything else: its default action would end the process, and one
    // sent during start-up is kept and handled once serving begins.
    let hangup = hangup_signal()?;
    notifier.status("Starting: opening the stores");
    let policy = Policy::new(config).map_err(|error| error.to_string())?;
    let state = State::open(policy).map_err(|error| error.to_string())?;
    let socket = state.policies.current().config.admin.socket.clone();
    // If the TLS port cannot be bound below, dropping `admin` removes the socket file again.
    let admin = AdminServer::bind(state.clone(), &socket).map_err(|error| error.to_string())?;
    let internal = InternalServer::bind_configured(&state)
        .await
        .map_err(|error| error.to_string())?;
    let server = Server::bind(state.clone())
        .await
        .map_err(|error| error.to_string())?;
    let reloader = Arc::new(Reloader::new(
        &config_path,
        state.clone(),
        server.cert_resolver(),
        notifier.clone(),
    ));
    let admin = admin.with_reloader(reloader.clone()).spawn();
    let internal = internal.map(InternalServer::spawn);
    let reloads = spawn_reload_on_hangup(hangup, reloader);
    let watchdog = notifier.spawn_watchdog(notify::watchdog_interval());
    let listen = server.local_addr();
    tracing::info!(%listen, keys = state.keys.len(), "portcullis listening");
    // Bound and open: the service manager may now start what depends on us. Any listener
    // added to `serve` must be bound above this line.
    notifier.ready(&format!("Serving on {listen}"));
    let draining = notifier.clone();
    server
        .serve(async move {
            shutdown_signal().await;
            draining.stopping("Draining in-flight requests");
        })
        .await;
    reloads.abort();
    if let Some(internal) = internal {
        internal.stop().await;
    }
    admin.stop().await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Err(error) = state.audit.flush().await {
        tracing::error!(%error, "cannot write the last audit records");
    }
    tracing::info!("portcullis stopped");
    Ok(())
}

/// The SIGHUP stream, installed (and so no longer fatal) from the moment it is returned.
fn hangup_signal() -> Result<tokio::signal::unix::Signal, String> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).map_err(|error| format!("cannot handle SIGHUP: {error}"))
}

/// Reloads the policy on every SIGHUP (what `systemctl reload` sends) until aborted; the
/// outcome is logged and reported to the service manager by the reloader.
fn spawn_reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            reloader.reload(ReloadTrigger::Signal, "sighup").await;
        }
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
