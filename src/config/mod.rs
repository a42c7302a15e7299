//! The TOML policy: schema, defaults and validation.
//!
//! A policy file is read once into [`Config`], a plain immutable value with every default
//! applied and every reference checked. Mistakes are collected, not stopped at, so one
//! `portcullis check-config` run shows all of them as `file:line:column: key: message`.

mod raw;
mod source;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};

use crate::audit::{ClientIpMode, WhenFull};
use crate::gate::idempotency::Durability;
use crate::gate::ratelimit::{HeaderStyle, Rate};
use crate::gate::route::PathTemplate;
use crate::webhooks::sign::Scheme;

pub use source::{Location, SourceText};

/// A validated policy: what the sidecar runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TLS listener and its limits.
    pub server: ServerConfig,
    /// The backend.
    pub upstream: UpstreamConfig,
    /// Where state is kept.
    pub storage: StorageConfig,
    /// How keys are presented and verified.
    pub auth: AuthConfig,
    /// The administration socket.
    pub admin: AdminConfig,
    /// Request limits, daily quotas and how they are reported.
    pub ratelimit: RateLimitConfig,
    /// Which writes need an `Idempotency-Key`, and how their answers are kept.
    pub idempotency: IdempotencyConfig,
    /// The audit trail and its query endpoint.
    pub audit: AuditConfig,
    /// Outbound webhooks: signing, subscriptions, delivery.
    pub webhooks: WebhooksConfig,
    /// The internal listener (metrics, backend events); `None` when `[internal]` is absent.
    pub internal: Option<InternalConfig>,
    /// Log format and level.
    pub logging: LoggingConfig,
    /// The routes partners may call, in file order.
    pub routes: Vec<RouteConfig>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the TLS listener binds.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A client that has not finished the TLS handshake by then is dropped.
    pub tls_handshake_timeout: Duration,
    /// An HTTP/1.1 client must send a complete header section within this time, counted from
    /// the connection's start or the previous answer, so it also closes idle keep-alive
    /// connections.
    pub header_read_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// How often the certificate and key files are checked for a renewal (certbot and
    /// similar replace them without telling anyone).
    pub cert_check_interval: Duration,
    /// Largest header section accepted, counted as RFC 9113 §6.5.2 does (name + value + 32).
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request.
    pub max_headers: usize,
    /// Largest request body accepted; enforced while streaming.
    pub max_body_bytes: u64,
    /// Most client connections held open at once; more are closed on accept.
    pub max_connections: usize,
    /// HTTP/2 stream limits.
    pub http2: Http2Config,
    /// Load balancers whose `X-Forwarded-For` is believed; empty means the TCP peer is the
    /// client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections from trusted proxies open with a PROXY protocol v2 header naming the
    /// client; connections from anywhere else are served as direct clients.
    pub proxy_protocol: bool,
}

/// `[server.http2]`.
#[derive(Debug, Clone)]
pub struct Http2Config {
    /// Concurrent streams one connection may open.
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before being accepted (rapid-reset defence).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client errors before closing the connection.
    pub max_local_error_reset_streams: usize,
    /// How often a PING checks an idle HTTP/2 connection.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The production backend (`http` or `https`, optional path prefix).
    pub url: Uri,
    /// Where test-key traffic goes, when set, so sandbox data never reaches production.
    pub sandbox_url: Option<Uri>,
    /// Time allowed to open a TCP (and TLS) connection to the backend.
    pub connect_timeout: Duration,
    /// Time allowed from sending a request until the backend's response head arrives.
    pub response_timeout: Duration,
    /// Idle pooled connections kept per backend host.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Extra PEM CA bundle trusted for `https` backends, besides the system roots.
    pub ca_file: Option<PathBuf>,
}

/// `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory for the sidecar's state.
    pub data_dir: PathBuf,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The key prefix of this deployment (`pcl` in `pcl_live_…`).
    pub namespace: String,
    /// File holding the HMAC pepper for stored key hashes (created 0600 if missing).
    pub pepper_file: PathBuf,
    /// Where a key may be presented.
    pub credential_headers: Vec<CredentialHeader>,
    /// A valid key found in a URL is revoked on the spot (it has leaked into logs).
    pub revoke_keys_found_in_urls: bool,
    /// Path of the built-in identity endpoint, if enabled.
    pub whoami_path: Option<String>,
    /// Path of the unauthenticated liveness endpoint, if enabled.
    pub health_path: Option<String>,
    /// Failed authentications one client address may make per `failure_window`.
    pub max_failures_per_ip: u32,
    /// Failed authentications against one key id per `failure_window`.
    pub max_failures_per_key: u32,
    /// The window the failure budgets refill over.
    pub failure_window: Duration,
}

/// A header a partner may put its key in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization: Bearer <key>`.
    AuthorizationBearer,
    /// `X-API-Key: <key>`.
    XApiKey,
}

impl CredentialHeader {
    /// The header name.
    pub fn name(self) -> http::HeaderName {
        match self {
            Self::AuthorizationBearer => http::header::AUTHORIZATION,
            Self::XApiKey => http::HeaderName::from_static("x-api-key"),
        }
    }
}

/// `[ratelimit]`.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Every key's own limit unless its record carries an override.
    pub default: Rate,
    /// Requests one key may have forwarded per UTC day over all routes, if limited.
    pub daily_quota: Option<u32>,
    /// Which rate-limit header fields answers carry.
    pub headers: HeaderStyle,
    /// Named limits that routes opt into with `limit = "<name>"`.
    pub classes: BTreeMap<String, Arc<LimitClass>>,
}

/// One `[ratelimit.classes.<name>]`: a limit for a kind of route (writes, outbound calls),
/// applied per key on top of the key's own limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitClass {
    /// The class name, shown to partners as the `RateLimit-Policy` name.
    pub name: Arc<str>,
    /// Requests per minute and burst for each key on the class's routes, if limited.
    pub rate: Option<Rate>,
    /// Requests per key per UTC day on the class's routes, if limited.
    pub daily_quota: Option<u32>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Unix socket of the admin API (mode 0600).
    pub socket: PathBuf,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Stable name, used in audit records and metrics instead of the raw path.
    pub name: String,
    /// The method this route answers.
    pub method: Method,
    /// The path template.
    pub path: PathTemplate,
    /// The scope a key needs for this route.
    pub scope: ScopeRequirement,
    /// The route class whose limit and quota also apply, if any.
    pub limit: Option<Arc<LimitClass>>,
    /// Whether the route requires an `Idempotency-Key`; `None` follows
    /// [`IdempotencyConfig::methods`].
    pub idempotency: Option<bool>,
}

/// `[idempotency]`.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// Methods whose routes require an `Idempotency-Key` unless a route says otherwise.
    pub methods: Vec<Method>,
    /// How long a key's record counts after its first request; afterwards the key is new.
    pub retention: Duration,
    /// How long a forwarded request may hold its key: the exchange must end within it, and a
    /// crash mid-request makes retries wait this long. Longer than
    /// `upstream.response_timeout` (twice it by default).
    pub lease: Duration,
    /// Largest request body on those routes; it is read whole to fingerprint it. Never more
    /// than `server.max_body_bytes`.
    pub max_body_bytes: u64,
    /// Largest answer kept for replay; larger answers are forwarded but not replayable.
    pub max_response_bytes: u64,
    /// File holding the secret that seals cached answers (created 0600 if missing).
    pub key_file: PathBuf,
    /// Whether records are flushed to disk before forwarding and before answering.
    pub durability: Durability,
    /// Keep 5xx answers and failed exchanges too (a retry then gets the failure again).
    pub store_failures: bool,
    /// How often expired records are swept.
    pub sweep_interval: Duration,
    /// Most records one sweep pass looks at.
    pub sweep_batch: usize,
}

/// `[audit]`. Everything but the query endpoint and `client_ip` takes effect at start.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Whether records are written at all (off only for measurements).
    pub enabled: bool,
    /// Directory of the audit files.
    pub dir: PathBuf,
    /// How much of the client address records keep.
    pub client_ip: ClientIpMode,
    /// Records collected before one write and `fdatasync`.
    pub commit_interval: Duration,
    /// Records that may wait for the writer (in-flight requests hold one slot each).
    pub queue_capacity: usize,
    /// What a request does when the queue is full.
    pub when_full: WhenFull,
    /// How long a request waits for room with `when_full = "block"` before `503`.
    pub block_timeout: Duration,
    /// A file is not grown past this size.
    pub rotate_bytes: u64,
    /// Start a new file each UTC day.
    pub rotate_daily: bool,
    /// File holding the HMAC key that keys the chain; plain SHA-256 when `None`.
    pub hmac_key_file: Option<PathBuf>,
    /// Path of the built-in query endpoint, if enabled.
    pub query_path: Option<String>,
    /// Scope a key needs for the query endpoint.
    pub query_scope: String,
}

/// `[webhooks]`. Off by default: no endpoints, no ingest, no delivery worker.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Whether webhooks run at all.
    pub enabled: bool,
    /// How deliveries are signed (one scheme for the deployment, as partners verify one).
    pub scheme: Scheme,
    /// Event types the backend may post, besides [`crate::webhooks::AUDIT_EVENT_TYPE`],
    /// which is always accepted.
    pub event_types: BTreeSet<String>,
    /// File holding the bearer token the backend presents to `POST /events`; required when
    /// enabled.
    pub ingest_token_file: Option<PathBuf>,
    /// Waits between attempts after a failure; after the last one the delivery is dead.
    pub retry_schedule: Vec<Duration>,
    /// Each wait is varied by up to this fraction either way, so failed receivers are not
    /// retried in lock step.
    pub retry_jitter: f64,
    /// One delivery attempt (connect, send, answer head) must finish within this.
    pub delivery_timeout: Duration,
    /// Deliveries in flight to one subscription at once.
    pub endpoint_concurrency: usize,
    /// Deliveries in flight over all subscriptions.
    pub max_in_flight: usize,
    /// Allow loopback and private receivers (tests and labs only; SSRF protection is off).
    pub allow_private_destinations: bool,
    /// Extra PEM CA bundle trusted for receivers, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// How long a rotated-out signing secret keeps signing alongside the new one.
    pub rotation_grace: Duration,
    /// Path of the subscription endpoints, if enabled.
    pub subscriptions_path: Option<String>,
    /// Path of the delivery status endpoint, if enabled.
    pub deliveries_path: Option<String>,
    /// Scope a key needs for the subscription and delivery endpoints.
    pub scope: String,
    /// Largest event body the backend may post.
    pub max_event_bytes: usize,
    /// Most subscriptions one organization may hold.
    pub max_subscriptions_per_org: usize,
    /// How long after its event was accepted a delivered or failed delivery's record is kept
    /// for the status endpoint; the outbox would otherwise grow for ever.
    pub retention: Duration,
    /// How long after its event was accepted a dead delivery waits in the dead-letter queue
    /// for a redelivery; then it ends as failed (`expired`) and the event's sealed data, which
    /// is PHI, is deleted.
    pub dead_retention: Duration,
}

/// `[internal]`: a plain-HTTP/1.1 listener for operators and the backend, never for partners.
#[derive(Debug, Clone)]
pub struct InternalConfig {
    /// Address it binds; loopback unless `allow_non_loopback` was set.
    pub listen: SocketAddr,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// How each log line is written.
    pub format: LogFormat,
    /// The filter directive (`info`, `debug`, `portcullis=debug,info`); the `PORTCULLIS_LOG`
    /// environment variable overrides it.
    pub level: String,
}

impl Default for LoggingConfig {
    /// Pretty lines at `info`.
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text, one event per line.
    Pretty,
    /// One JSON object per line with the event's fields at the top level (for journald
    /// exporters and log shippers).
    Json,
}

/// What a key must hold to use a route: deny by default, so "no scope" is spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRequirement {
    /// The key must carry this scope.
    Scope(String),
    /// Any valid key may call the route (`any_key = true`).
    AnyKey,
}

/// One mistake in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file the mistake is in.
    pub file: PathBuf,
    /// Where in the file.
    pub location: Location,
    /// The dotted key, e.g. `server.listen` or `route[2].path`.
    pub key: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.location.line,
            self.location.column,
            self.key,
            self.message
        )
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read; these are its mistakes, in file order.
    #[error("{}", render_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual mistakes (empty for a read error).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            Self::Invalid(issues) => issues,
            Self::Read { .. } => &[],
        }
    }
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates a policy file. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&SourceText::new(path, text), base)
    }

    /// Validates policy text; relative paths are resolved against `base_dir`.
    pub fn parse(source: &SourceText, base_dir: &Path) -> Result<Self, ConfigError> {
        validate::validate(source, base_dir)
    }
}

impl Config {
    /// Validates policy text after replacing some keys, e.g. the demo's listen address,
    /// generated certificate paths and the bundled backend's URL.
    ///
    /// `overrides` are dotted keys (`"server.listen"`); missing tables are created.
    pub fn parse_with_overrides(
        source: &SourceText,
        base_dir: &Path,
        overrides: &[(&str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let Ok(mut table) = source.text().parse::<toml::Table>() else {
            // Let the normal path report the syntax error with its location.
            return Self::parse(source, base_dir);
        };
        for (key, value) in overrides {
            set_dotted(&mut table, key, value.clone());
        }
        let text = toml::to_string(&table).map_err(|error| {
            ConfigError::Invalid(vec![ConfigIssue {
                file: source.path().to_owned(),
                location: Location { line: 1, column: 1 },
                key: "(file)".to_owned(),
                message: error.to_string(),
            }])
        })?;
        Self::parse(&SourceText::new(source.path(), text), base_dir)
    }
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.to_owned(), value);
}
