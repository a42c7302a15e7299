//! Live reload: re-read the policy file `serve` was started with and put it into service
//! without dropping a connection.
//!
//! A reload (SIGHUP, `portcullis reload` over the admin socket) is all or nothing. The file
//! is read and validated as at start, the TLS certificate and key it names are loaded and
//! checked to match, a complete new [`Policy`] is built (route table, upstream client), and
//! settings that only take effect at start are compared with the running ones
//! ([`fixed`]). Only when all of that succeeds are the certificate and the policy swapped;
//! otherwise nothing changes, every reason is logged at warn and handed back to the caller.
//!
//! Requests in flight keep the `Arc<Policy>` they started with and finish on it; new requests
//! and new handshakes see the new one. Rate-limit buckets, quota counters, the failed-auth
//! throttle, idempotency records and the audit writer live in [`State`], not in the policy,
//! so a reload refills nobody: buckets are keyed by limit shape, so only a key whose limit
//! actually changed starts a bucket of the new shape.
//!
//! Reloads are serialized, so a SIGHUP and a CLI call never interleave, and each is framed by
//! `RELOADING=1` … `READY=1` for the service manager ([`Notifier`]). Every reload, applied or
//! refused, is an entry of the admin log (and so of the audit trail) naming who asked
//! (`sighup`, or the admin socket's `uid:<n>`) and the SHA-256 of the file it read: a
//! security team can tell which policy was in force when.

pub mod fixed;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use tokio::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::admin_log::AdminActionKind;
use crate::config::{Config, ConfigError, SourceText};
use crate::metrics::ReloadResult;
use crate::notify::Notifier;
use crate::policy::{Policy, PolicyError};
use crate::server::tls::{self, CertResolver, TlsError};
use crate::state::State;
pub use fixed::FixedChange;

/// What asked for a reload, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadTrigger {
    /// SIGHUP (what `systemctl reload` sends).
    Signal,
    /// `POST /v1/reload` on the admin socket (`portcullis reload`).
    AdminSocket,
}

impl ReloadTrigger {
    /// A stable label: `signal` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::AdminSocket => "admin",
        }
    }
}

/// One reason a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadProblem {
    /// The file is unreadable or has mistakes (each issue is `file:line:col: key: message`).
    #[error(transparent)]
    Config(ConfigError),
    /// The certificate or key it names does not load, or they do not match.
    #[error(transparent)]
    Tls(TlsError),
    /// The policy could not be built (e.g. the upstream CA file is unusable).
    #[error(transparent)]
    Policy(PolicyError),
    /// A setting that only takes effect at start differs.
    #[error("{0}")]
    Fixed(FixedChange),
    /// The reload itself failed (a panic in the loading task).
    #[error("the reload failed inside portcullis: {0}")]
    Internal(String),
}

/// A refused reload: the running policy and certificate stay in force.
#[derive(Debug, thiserror::Error)]
#[error("the policy was not reloaded; the running policy stays in force")]
pub struct ReloadError {
    /// Every reason found.
    pub problems: Vec<ReloadProblem>,
    /// SHA-256 (hex) of the refused file as read, when it could be read.
    pub policy_sha256: Option<String>,
}

impl ReloadError {
    /// One line per reason: each configuration mistake on its own.
    pub fn reasons(&self) -> Vec<String> {
        self.problems
            .iter()
            .flat_map(|problem| match problem {
                ReloadProblem::Config(error) if !error.issues().is_empty() => {
                    error.issues().iter().map(ToString::to_string).collect()
                }
                other => vec![other.to_string()],
            })
            .collect()
    }
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// How many reloads this process has applied, this one included.
    pub generation: u64,
    /// Routes in the new policy.
    pub routes: usize,
    /// SHA-256 (hex) of the policy file as read.
    pub policy_sha256: String,
    /// SHA-256 of the certificate now served (see [`tls::fingerprint`]).
    pub certificate_sha256: String,
}

/// What one reload did; the value the metrics count (`metrics.reload(&outcome)`).
#[derive(Debug)]
pub struct ReloadOutcome {
    /// What asked for it.
    pub trigger: ReloadTrigger,
    /// Applied, or refused with every reason.
    pub result: Result<Reloaded, ReloadError>,
}

impl ReloadOutcome {
    /// Whether the new policy is in service.
    pub fn is_applied(&self) -> bool {
        self.result.is_ok()
    }

    /// A stable label: `applied` or `refused`.
    pub fn result_label(&self) -> &'static str {
        if self.is_applied() {
            "applied"
        } else {
            "refused"
        }
    }
}

/// Everything a reload replaces, loaded and checked before anything is swapped.
struct Prepared {
    policy: Policy,
    certified: CertifiedKey,
    policy_sha256: String,
}

/// Reloads the policy of one running instance.
pub struct Reloader {
    config_path: PathBuf,
    state: Arc<State>,
    certs: Arc<CertResolver>,
    notifier: Notifier,
    /// Serializes reloads; counts the applied ones.
    generation: Mutex<u64>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the instance serving `state` with certificates from `certs`, re-reading
    /// `config_path` (the file it was started with) each time.
    pub fn new(
        config_path: impl Into<PathBuf>,
        state: Arc<State>,
        certs: Arc<CertResolver>,
        notifier: Notifier,
    ) -> Self {
        let config_path = config_path.into();
        // Relative paths in the file are resolved against its directory: keep that directory
        // meaning the same thing if the working directory changes.
        let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
        Self {
            config_path,
            state,
            certs,
            notifier,
            generation: Mutex::new(0),
        }
    }

    /// The policy file reloads read.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads the policy file and swaps the policy and certificate in, or changes nothing
    /// and says why; either way records it in the admin log as done by `actor`.
    pub async fn reload(&self, trigger: ReloadTrigger, actor: &str) -> ReloadOutcome {
        let mut generation = self.generation.lock().await;
        self.notifier.reloading();
        tracing::info!(trigger = trigger.as_str(), config = %self.config_path.display(), "reloading the policy");

        let path = self.config_path.clone();
        let running = self.state.policies.current();
        let prepared = tokio::task::spawn_blocking(move || prepare(&path, &running.config))
            .await
            .unwrap_or_else(|error| {
                Err(ReloadError {
                    problems: vec![ReloadProblem::Internal(error.to_string())],
                    policy_sha256: None,
                })
            });

        let result = prepared.map(|prepared| {
            let Prepared {
                policy,
                certified,
                policy_sha256,
            } = prepared;
            *generation += 1;
            let reloaded = Reloaded {
                generation: *generation,
                routes: policy.config.routes.len(),
                policy_sha256,
                certificate_sha256: tls::fingerprint(&certified),
            };
            // The certificate first: a request on the new policy never meets the old one.
            self.certs.replace(certified);
            self.state.policies.replace(policy);
            reloaded
        });
        let outcome = ReloadOutcome { trigger, result };
        // The one place every reload passes with its result: log it and count it.
        self.report(&outcome);
        self.state.metrics.reload(if outcome.result.is_ok() {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        });
        self.record(&outcome, actor).await;
        outcome
    }

    /// Writes the reload into the admin log (and so the audit trail). A failure to record is
    /// logged; it does not undo a reload that is already serving.
    async fn record(&self, outcome: &ReloadOutcome, actor: &str) {
        let (action, target) = match &outcome.result {
            Ok(reloaded) => (
                AdminActionKind::PolicyReloaded,
                short_digest(&reloaded.policy_sha256),
            ),
            Err(error) => (
                AdminActionKind::PolicyReloadRefused,
                error
                    .policy_sha256
                    .as_deref()
                    .map_or_else(|| "unreadable".to_owned(), short_digest),
            ),
        };
        let state = self.state.clone();
        let actor = actor.to_owned();
        let appended = tokio::task::spawn_blocking(move || {
            state
                .admin_log
                .append(action, &actor, &target, None, crate::state::unix_now())
        })
        .await;
        match appended {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "the reload is not in the admin log"),
            Err(error) => tracing::error!(%error, "the reload is not in the admin log"),
        }
    }

    fn report(&self, outcome: &ReloadOutcome) {
        let listen = self.state.policies.current().config.server.listen;
        match &outcome.result {
            Ok(reloaded) => {
                tracing::info!(
                    trigger = outcome.trigger.as_str(),
                    generation = reloaded.generation,
                    routes = reloaded.routes,
                    policy_sha256 = %reloaded.policy_sha256,
                    certificate_sha256 = %reloaded.certificate_sha256,
                    "policy reloaded; new requests use it"
                );
                self.notifier.ready(&format!(
                    "Serving on {listen}; policy reload {} applied",
                    reloaded.generation
                ));
            }
            Err(error) => {
                let reasons = error.reasons();
                for reason in &reasons {
                    tracing::warn!(trigger = outcome.trigger.as_str(), %reason, "reload refused");
                }
                tracing::warn!(
                    trigger = outcome.trigger.as_str(),
                    problems = reasons.len(),
                    "{error}"
                );
                self.notifier.ready(&format!(
                    "Serving on {listen}; last reload refused: {}",
                    reasons.first().map_or("", String::as_str)
                ));
            }
        }
    }
}

/// Loads and checks everything a reload would put into service. Blocking (file reads).
fn prepare(path: &Path, running: &Config) -> Result<Prepared, ReloadError> {
    // Read once: the digest recorded is of exactly the text validated.
    let text = std::fs::read_to_string(path).map_err(|source| ReloadError {
        problems: vec![ReloadProblem::Config(ConfigError::Read {
            path: path.to_owned(),
            source,
        })],
        policy_sha256: None,
    })?;
    let policy_sha256 = hex_digest(text.as_bytes());
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let config =
        Config::parse(&SourceText::new(path, text), base).map_err(|error| ReloadError {
            problems: vec![ReloadProblem::Config(error)],
            policy_sha256: Some(policy_sha256.clone()),
        })?;
    let mut problems: Vec<ReloadProblem> = fixed::changes(running, &config)
        .into_iter()
        .map(ReloadProblem::Fixed)
        .collect();
    let certified = tls::load_certified_key(&config.server.cert, &config.server.key)
        .map_err(|error| problems.push(ReloadProblem::Tls(error)))
        .ok();
    let policy = Policy::new(config)
        .map_err(|error| problems.push(ReloadProblem::Policy(error)))
        .ok();
    match (policy, certified) {
        (Some(policy), Some(certified)) if problems.is_empty() => Ok(Prepared {
            policy,
            certified,
            policy_sha256,
        }),
        _ => Err(ReloadError {
            problems,
            policy_sha256: Some(policy_sha256),
        }),
    }
}

/// SHA-256 of `bytes` as lowercase hex.
fn hex_digest(bytes: &[u8]) -> String {
    crate::keys::hex::encode(&Sha256::digest(bytes))
}

/// The first 32 hex digits of a digest: 128 bits, enough to name a file version, and the
/// shape of an admin-log target.
pub fn short_digest(hex: &str) -> String {
    hex.chars().take(32).collect()
}
