//! The policy file exactly as written: every field optional and spanned, so validation can
//! apply defaults and point at the line of each mistake. Nothing outside `config` sees these
//! types; the rest of the crate works with the validated [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A spanned optional value: absent keys take their documented default.
pub type Opt<T> = Option<Spanned<T>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<Spanned<RawServer>>,
    pub upstream: Option<Spanned<RawUpstream>>,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub ratelimit: RawRateLimit,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    pub internal: Option<Spanned<RawInternal>>,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[server]`: the TLS listener and its limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Opt<String>,
    pub cert: Opt<String>,
    pub key: Opt<String>,
    pub tls_handshake_timeout: Opt<String>,
    pub header_read_timeout: Opt<String>,
    pub drain_timeout: Opt<String>,
    pub cert_check_interval: Opt<String>,
    pub max_header_bytes: Opt<i64>,
    pub max_headers: Opt<i64>,
    pub max_body_bytes: Opt<i64>,
    pub max_connections: Opt<i64>,
    pub trusted_proxies: Opt<Vec<String>>,
    pub proxy_protocol: Opt<bool>,
    #[serde(default)]
    pub http2: RawHttp2,
}

/// `[server.http2]`: stream limits that blunt rapid-reset and stream-flood attacks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Opt<i64>,
    pub max_pending_accept_reset_streams: Opt<i64>,
    pub max_local_error_reset_streams: Opt<i64>,
    pub keep_alive_interval: Opt<String>,
    pub keep_alive_timeout: Opt<String>,
}

/// `[upstream]`: the backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Opt<String>,
    pub sandbox_url: Opt<String>,
    pub connect_timeout: Opt<String>,
    pub response_timeout: Opt<String>,
    pub pool_max_idle_per_host: Opt<i64>,
    pub pool_idle_timeout: Opt<String>,
    pub ca_file: Opt<String>,
}

/// `[storage]`: where state lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub data_dir: Opt<String>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Opt<String>,
    pub method: Opt<String>,
    pub path: Opt<String>,
    pub scope: Opt<String>,
    pub any_key: Opt<bool>,
    pub limit: Opt<String>,
    pub idempotency: Opt<bool>,
}

/// `[auth]`: how partners present keys and what happens around verification.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub namespace: Opt<String>,
    pub pepper_file: Opt<String>,
    pub credential_headers: Opt<Vec<String>>,
    pub revoke_keys_found_in_urls: Opt<bool>,
    pub whoami_path: Opt<String>,
    pub health_path: Opt<String>,
    pub max_failures_per_ip: Opt<i64>,
    pub max_failures_per_key: Opt<i64>,
    pub failure_window: Opt<String>,
}

/// `[admin]`: the local administration socket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Opt<String>,
}

/// `[ratelimit]`: the default per-key limit, reporting, and named route classes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_minute: Opt<i64>,
    pub burst: Opt<i64>,
    pub daily_quota: Opt<i64>,
    pub headers: Opt<String>,
    #[serde(default)]
    pub classes: BTreeMap<Spanned<String>, Spanned<RawLimitClass>>,
}

/// `[ratelimit.classes.<name>]`: a limit and/or quota routes opt into.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitClass {
    pub requests_per_minute: Opt<i64>,
    pub burst: Opt<i64>,
    pub daily_quota: Opt<i64>,
}

/// `[idempotency]`: which writes need an `Idempotency-Key`, and how their answers are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub methods: Opt<Vec<String>>,
    pub retention: Opt<String>,
    pub lease: Opt<String>,
    pub max_body_bytes: Opt<i64>,
    pub max_response_bytes: Opt<i64>,
    pub key_file: Opt<String>,
    pub durability: Opt<String>,
    pub store_failures: Opt<bool>,
    pub sweep_interval: Opt<String>,
    pub sweep_batch: Opt<i64>,
}

/// `[audit]`: the PHI-free, hash-chained audit trail and its query endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub enabled: Opt<bool>,
    pub dir: Opt<String>,
    pub client_ip: Opt<String>,
    pub commit_interval: Opt<String>,
    pub queue_capacity: Opt<i64>,
    pub when_full: Opt<String>,
    pub block_timeout: Opt<String>,
    pub rotate_bytes: Opt<i64>,
    pub rotate_daily: Opt<bool>,
    pub hmac_key_file: Opt<String>,
    pub query_path: Opt<String>,
    pub query_scope: Opt<String>,
}

/// `[webhooks]`: signing, subscriptions and delivery of outbound events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    pub enabled: Opt<bool>,
    pub scheme: Opt<String>,
    pub stripe_header: Opt<String>,
    pub split_id_header: Opt<String>,
    pub split_timestamp_header: Opt<String>,
    pub split_signature_header: Opt<String>,
    pub event_types: Opt<Vec<String>>,
    pub ingest_token_file: Opt<String>,
    pub retry_schedule: Opt<Vec<String>>,
    pub retry_jitter: Opt<f64>,
    pub delivery_timeout: Opt<String>,
    pub endpoint_concurrency: Opt<i64>,
    pub max_in_flight: Opt<i64>,
    pub allow_private_destinations: Opt<bool>,
    pub ca_file: Opt<String>,
    pub rotation_grace: Opt<String>,
    pub subscriptions_path: Opt<String>,
    pub deliveries_path: Opt<String>,
    pub scope: Opt<String>,
    pub max_event_bytes: Opt<i64>,
    pub max_subscriptions_per_org: Opt<i64>,
    pub retention: Opt<String>,
    pub dead_retention: Opt<String>,
}

/// `[internal]`: the plain-HTTP listener for metrics and backend events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInternal {
    pub listen: Opt<String>,
    pub allow_non_loopback: Opt<bool>,
}

/// `[logging]`: the format and verbosity of the log lines on stderr.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Opt<String>,
    pub level: Opt<String>,
}
