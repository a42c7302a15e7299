//! From the file as written ([`super::raw`]) to a checked [`Config`], collecting every mistake.

mod audit;
mod idempotency;
mod internal;
mod logging;
mod webhooks;

use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};
use toml::Spanned;

use super::raw::{
    Opt, RawAdmin, RawAuth, RawConfig, RawHttp2, RawLimitClass, RawRateLimit, RawRoute, RawServer,
    RawStorage, RawUpstream,
};
use super::{
    AdminConfig, AuthConfig, Config, ConfigError, ConfigIssue, CredentialHeader, Http2Config,
    LimitClass, RateLimitConfig, RouteConfig, ScopeRequirement, ServerConfig, SourceText,
    StorageConfig, UpstreamConfig,
};
use crate::gate::ratelimit::{HeaderStyle, Rate};
use crate::gate::route::{PathTemplate, RouteTable};

/// Longest route name or scope name: they become audit fields and metric labels.
const MAX_NAME_LEN: usize = 64;

/// Sustained requests per minute a limit may allow.
const PER_MINUTE_RANGE: RangeInclusive<u64> = 1..=1_000_000;

/// Requests a limit may allow back to back.
const BURST_RANGE: RangeInclusive<u64> = 1..=100_000;

/// Requests a daily quota may allow (counts are 32-bit).
const DAILY_QUOTA_RANGE: RangeInclusive<u64> = 1..=1_000_000_000;

pub(super) fn validate(source: &SourceText, base_dir: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = match toml::from_str(source.text()) {
        Ok(raw) => raw,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let key = source.key_at(&span).unwrap_or_else(|| "(file)".to_owned());
            let issue = ConfigIssue {
                file: source.path().to_owned(),
                location: source.locate(span.start),
                key,
                message: error.message().trim().to_owned(),
            };
            return Err(ConfigError::Invalid(vec![issue]));
        }
    };
    let mut v = Validator {
        source,
        base_dir,
        issues: Vec::new(),
    };
    let server = v.server(raw.server);
    let upstream = v.upstream(raw.upstream);
    let storage = v.storage(raw.storage);
    let auth = v.auth(raw.auth, &storage);
    let admin = v.admin(raw.admin, &storage);
    let ratelimit = v.ratelimit(raw.ratelimit);
    let idempotency = v.idempotency(raw.idempotency, &storage, upstream.as_ref());
    let audit = v.audit(raw.audit, &storage, &auth);
    let webhooks = v.webhooks(raw.webhooks, &auth, &audit);
    let internal = v.internal(raw.internal);
    let logging = v.logging(raw.logging);
    let routes = v.routes(raw.routes, &ratelimit.classes);
    if !v.issues.is_empty() {
        let mut issues = v.issues;
        issues.sort_by_key(|issue| (issue.location.line, issue.location.column));
        return Err(ConfigError::Invalid(issues));
    }
    match (server, upstream, routes) {
        (Some(server), Some(upstream), Some(routes)) => Ok(Config {
            server,
            upstream,
            storage,
            auth,
            admin,
            ratelimit,
            idempotency,
            audit,
            webhooks,
            internal,
            logging,
            routes,
        }),
        // Every `None` above is accompanied by an issue, so this arm is only a safety net.
        _ => Err(ConfigError::Invalid(vec![ConfigIssue {
            file: source.path().to_owned(),
            location: source.locate(0),
            key: "(file)".to_owned(),
            message: "incomplete configuration".to_owned(),
        }])),
    }
}

struct Validator<'a> {
    source: &'a SourceText,
    base_dir: &'a Path,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn report(&mut self, key: impl Into<String>, span: &Range<usize>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            file: self.source.path().to_owned(),
            location: self.source.locate(span.start),
            key: key.into(),
            message: message.into(),
        });
    }

    fn required<'v, T>(
        &mut self,
        key: &str,
        value: &'v Opt<T>,
        parent: &Range<usize>,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.report(key, parent, "is required");
        }
        value.as_ref()
    }

    fn duration(&mut self, key: &str, value: &Opt<String>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.report(key, &value.span(), "must be longer than zero");
                default
            }
            Err(error) => {
                self.report(
                    key,
                    &value.span(),
                    format!("is not a duration ({error}); write e.g. \"500ms\", \"30s\", \"5m\""),
                );
                default
            }
        }
    }

    /// A duration within `range`; a range starting at zero takes any positive length up to
    /// its end. Outside it, the mistake is reported and `default` used.
    fn duration_in(
        &mut self,
        key: &str,
        value: &Opt<String>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let duration = self.duration(key, value, default);
        match value {
            Some(value) if !range.contains(&duration) => {
                let (min, max) = (range.start(), range.end());
                let message = if min.is_zero() {
                    format!("must be at most {}", humantime::format_duration(*max))
                } else {
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(*min),
                        humantime::format_duration(*max)
                    )
                };
                self.report(key, &value.span(), message);
                default
            }
            _ => duration,
        }
    }

    fn count(
        &mut self,
        key: &str,
        value: &Opt<i64>,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> u64 {
        let Some(value) = value else { return default };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.report(
                    key,
                    &value.span(),
                    format!("must be between {} and {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    fn readable_file(&mut self, key: &str, value: &Spanned<String>) -> PathBuf {
        let path = self.resolve(value.get_ref());
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => self.report(
                key,
                &value.span(),
                format!("{} is not a regular file", path.display()),
            ),
            Err(error) => self.report(
                key,
                &value.span(),
                format!("cannot read {}: {error}", path.display()),
            ),
        }
        path
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    fn server(&mut self, raw: Option<Spanned<RawServer>>) -> Option<ServerConfig> {
        let Some(raw) = raw else {
            self.report(
                "server",
                &(0..0),
                "the [server] section is required (listen, cert, key)",
            );
            return None;
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let listen = match &raw.listen {
            None => Some(default_listen()),
            Some(value) => match value.get_ref().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.report(
                        "server.listen",
                        &value.span(),
                        "is not an IP address with a port, e.g. \"0.0.0.0:8443\" or \"[::]:8443\"",
                    );
                    None
                }
            },
        };
        let cert = self
            .required("server.cert", &raw.cert, &span)
            .map(|v| self.readable_file("server.cert", v));
        let key = self
            .required("server.key", &raw.key, &span)
            .map(|v| self.readable_file("server.key", v));
        let config = ServerConfig {
            listen: listen?,
            cert: cert?,
            key: key?,
            tls_handshake_timeout: self.duration(
                "server.tls_handshake_timeout",
                &raw.tls_handshake_timeout,
                Duration::from_secs(10),
            ),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                &raw.header_read_timeout,
                Duration::from_secs(10),
            ),
            drain_timeout: self.duration(
                "server.drain_timeout",
                &raw.drain_timeout,
                Duration::from_secs(30),
            ),
            cert_check_interval: self.duration(
                "server.cert_check_interval",
                &raw.cert_check_interval,
                Duration::from_secs(30),
            ),
            max_header_bytes: self.count(
                "server.max_header_bytes",
                &raw.max_header_bytes,
                16 * 1024,
                1024..=1024 * 1024,
            ) as usize,
            max_headers: self.count("server.max_headers", &raw.max_headers, 100, 1..=1000) as usize,
            max_body_bytes: self.count(
                "server.max_body_bytes",
                &raw.max_body_bytes,
                10 * 1024 * 1024,
                1..=(1 << 40),
            ),
            max_connections: self.count(
                "server.max_connections",
                &raw.max_connections,
                4096,
                1..=1_000_000,
            ) as usize,
            http2: self.http2(&raw.http2),
            trusted_proxies: self.networks("server.trusted_proxies", &raw.trusted_proxies),
            proxy_protocol: raw.proxy_protocol.as_ref().is_some_and(|v| *v.get_ref()),
        };
        if let Some(flag) = raw.proxy_protocol.as_ref().filter(|v| *v.get_ref()) {
            if config.trusted_proxies.is_empty() {
                self.report(
                    "server.proxy_protocol",
                    &flag.span(),
                    "needs server.trusted_proxies: only the load balancers listed there may send a PROXY header",
                );
            }
        }
        Some(config)
    }

    fn http2(&mut self, raw: &RawHttp2) -> Http2Config {
        Http2Config {
            max_concurrent_streams: self.count(
                "server.http2.max_concurrent_streams",
                &raw.max_concurrent_streams,
                128,
                1..=10_000,
            ) as u32,
            max_pending_accept_reset_streams: self.count(
                "server.http2.max_pending_accept_reset_streams",
                &raw.max_pending_accept_reset_streams,
                20,
                1..=10_000,
            ) as usize,
            max_local_error_reset_streams: self.count(
                "server.http2.max_local_error_reset_streams",
                &raw.max_local_error_reset_streams,
                1024,
                1..=100_000,
            ) as usize,
            keep_alive_interval: self.duration(
                "server.http2.keep_alive_interval",
                &raw.keep_alive_interval,
                Duration::from_secs(30),
            ),
            keep_alive_timeout: self.duration(
                "server.http2.keep_alive_timeout",
                &raw.keep_alive_timeout,
                Duration::from_secs(10),
            ),
        }
    }

    fn upstream_url(&mut self, key: &str, value: &Spanned<String>) -> Option<Uri> {
        let problem = match Uri::from_str(value.get_ref()) {
            Err(error) => Some(format!("is not a URL ({error})")),
            Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                (Some("http" | "https"), Some(authority)) if authority.as_str().contains('@') => {
                    Some(
                        "must not carry credentials; backends are reached without userinfo"
                            .to_owned(),
                    )
                }
                (Some("http" | "https"), Some(_)) if uri.query().is_some() => {
                    Some("must not have a query string".to_owned())
                }
                (Some("http" | "https"), Some(_)) => return Some(uri),
                _ => Some("must be an absolute http:// or https:// URL".to_owned()),
            },
        };
        if let Some(problem) = problem {
            self.report(key, &value.span(), problem);
        }
        None
    }

    fn upstream(&mut self, raw: Option<Spanned<RawUpstream>>) -> Option<UpstreamConfig> {
        let Some(raw) = raw else {
            self.report(
                "upstream",
                &(0..0),
                "the [upstream] section is required (url)",
            );
            return None;
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let url = self
            .required("upstream.url", &raw.url, &span)
            .and_then(|v| self.upstream_url("upstream.url", v));
        let sandbox_url = match &raw.sandbox_url {
            None => Ok(None),
            Some(v) => self
                .upstream_url("upstream.sandbox_url", v)
                .map(Some)
                .ok_or(()),
        };
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|v| self.readable_file("upstream.ca_file", v));
        let config = UpstreamConfig {
            url: url?,
            sandbox_url: sandbox_url.ok()?,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                &raw.connect_timeout,
                Duration::from_secs(3),
            ),
            response_timeout: self.duration(
                "upstream.response_timeout",
                &raw.response_timeout,
                Duration::from_secs(30),
            ),
            pool_max_idle_per_host: self.count(
                "upstream.pool_max_idle_per_host",
                &raw.pool_max_idle_per_host,
                64,
                0..=10_000,
            ) as usize,
            pool_idle_timeout: self.duration(
                "upstream.pool_idle_timeout",
                &raw.pool_idle_timeout,
                Duration::from_secs(90),
            ),
            ca_file,
        };
        Some(config)
    }

    fn networks(&mut self, key: &str, value: &Opt<Vec<String>>) -> Vec<ipnet::IpNet> {
        let Some(value) = value else {
            return Vec::new();
        };
        let mut networks = Vec::new();
        for text in value.get_ref() {
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => networks.push(net.trunc()),
                Err(_) => self.report(
                    key,
                    &value.span(),
                    format!("\"{text}\" is not an IP address or CIDR block such as \"10.0.0.0/8\""),
                ),
            }
        }
        networks
    }

    fn auth(&mut self, raw: RawAuth, storage: &StorageConfig) -> AuthConfig {
        let namespace = match &raw.namespace {
            None => "pcl".to_owned(),
            Some(ns) if is_namespace(ns.get_ref()) => ns.get_ref().clone(),
            Some(ns) => {
                self.report(
                    "auth.namespace",
                    &ns.span(),
                    "must be 2-16 characters: a lower-case letter, then lower-case letters or digits",
                );
                "pcl".to_owned()
            }
        };
        let pepper_file = match &raw.pepper_file {
            None => storage.data_dir.join("pepper"),
            Some(path) => self.resolve(path.get_ref()),
        };
        let credential_headers = match &raw.credential_headers {
            None => vec![
                CredentialHeader::AuthorizationBearer,
                CredentialHeader::XApiKey,
            ],
            Some(names) => {
                let mut headers = Vec::new();
                for name in names.get_ref() {
                    match name.to_ascii_lowercase().as_str() {
                        "authorization" => headers.push(CredentialHeader::AuthorizationBearer),
                        "x-api-key" => headers.push(CredentialHeader::XApiKey),
                        _ => self.report(
                            "auth.credential_headers",
                            &names.span(),
                            format!("\"{name}\" is not supported; use \"authorization\" and/or \"x-api-key\""),
                        ),
                    }
                }
                if names.get_ref().is_empty() {
                    self.report(
                        "auth.credential_headers",
                        &names.span(),
                        "must name at least one header",
                    );
                }
                headers.dedup();
                headers
            }
        };
        AuthConfig {
            namespace,
            pepper_file,
            credential_headers,
            revoke_keys_found_in_urls: raw
                .revoke_keys_found_in_urls
                .as_ref()
                .is_none_or(|v| *v.get_ref()),
            whoami_path: self.builtin_path("auth.whoami_path", &raw.whoami_path, "/v1/auth/whoami"),
            health_path: self.builtin_path("auth.health_path", &raw.health_path, "/healthz"),
            max_failures_per_ip: self.count(
                "auth.max_failures_per_ip",
                &raw.max_failures_per_ip,
                30,
                1..=100_000,
            ) as u32,
            max_failures_per_key: self.count(
                "auth.max_failures_per_key",
                &raw.max_failures_per_key,
                10,
                1..=100_000,
            ) as u32,
            failure_window: self.duration(
                "auth.failure_window",
                &raw.failure_window,
                Duration::from_secs(60),
            ),
        }
    }

    /// A built-in endpoint path: absent takes the default, `""` disables the endpoint.
    fn builtin_path(&mut self, key: &str, value: &Opt<String>, default: &str) -> Option<String> {
        let Some(value) = value else {
            return Some(default.to_owned());
        };
        let text = value.get_ref();
        if text.is_empty() {
            return None;
        }
        let literal = PathTemplate::parse(text)
            .ok()
            .filter(|_| !text.contains('{'));
        if literal.is_none() {
            self.report(
                key,
                &value.span(),
                "must be a literal path starting with '/', or \"\" to disable",
            );
            return None;
        }
        Some(text.clone())
    }

    fn admin(&mut self, raw: RawAdmin, storage: &StorageConfig) -> AdminConfig {
        let socket = match &raw.socket {
            None => storage.data_dir.join("admin.sock"),
            Some(path) => self.resolve(path.get_ref()),
        };
        AdminConfig { socket }
    }

    fn storage(&mut self, raw: RawStorage) -> StorageConfig {
        let data_dir = match &raw.data_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                self.report("storage.data_dir", &dir.span(), "must not be empty");
                PathBuf::new()
            }
            Some(dir) => self.resolve(dir.get_ref()),
            None => PathBuf::from("/var/lib/portcullis"),
        };
        StorageConfig { data_dir }
    }

    fn ratelimit(&mut self, raw: RawRateLimit) -> RateLimitConfig {
        let per_minute = self.count(
            "ratelimit.requests_per_minute",
            &raw.requests_per_minute,
            u64::from(Rate::DEFAULT.per_minute()),
            PER_MINUTE_RANGE,
        );
        let burst = self.count(
            "ratelimit.burst",
            &raw.burst,
            u64::from(Rate::DEFAULT.burst()),
            BURST_RANGE,
        );
        let headers = match &raw.headers {
            None => HeaderStyle::default(),
            Some(style) => match style.get_ref().as_str() {
                "both" => HeaderStyle::Both,
                "legacy" => HeaderStyle::Legacy,
                "draft" => HeaderStyle::Draft,
                _ => {
                    self.report(
                        "ratelimit.headers",
                        &style.span(),
                        "must be \"both\", \"legacy\" (X-RateLimit-*) or \"draft\" (RateLimit-Policy and RateLimit)",
                    );
                    HeaderStyle::default()
                }
            },
        };
        let mut classes = BTreeMap::new();
        for (name, class) in &raw.classes {
            let key = format!("ratelimit.classes.{}", name.get_ref());
            if !is_policy_name(name.get_ref()) {
                self.report(
                    key,
                    &name.span(),
                    format!(
                        "class names must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ : -"
                    ),
                );
                continue;
            }
            let class = self.limit_class(&key, name.get_ref(), class);
            classes.insert(name.get_ref().clone(), Arc::new(class));
        }
        RateLimitConfig {
            default: to_rate(per_minute, burst).unwrap_or(Rate::DEFAULT),
            daily_quota: self.daily_quota("ratelimit.daily_quota", &raw.daily_quota),
            headers,
            classes,
        }
    }

    fn limit_class(&mut self, key: &str, name: &str, raw: &Spanned<RawLimitClass>) -> LimitClass {
        let span = raw.span();
        let raw = raw.get_ref();
        let field = |name: &str| format!("{key}.{name}");
        if raw.requests_per_minute.is_none() && raw.burst.is_none() && raw.daily_quota.is_none() {
            self.report(
                key,
                &span,
                "limits nothing: set requests_per_minute and burst, daily_quota, or both",
            );
        }
        let rate = match (&raw.requests_per_minute, &raw.burst) {
            (Some(_), Some(_)) => {
                let per_minute = self.count(
                    &field("requests_per_minute"),
                    &raw.requests_per_minute,
                    1,
                    PER_MINUTE_RANGE,
                );
                let burst = self.count(&field("burst"), &raw.burst, 1, BURST_RANGE);
                to_rate(per_minute, burst)
            }
            (Some(set), None) => {
                self.report(
                    field("requests_per_minute"),
                    &set.span(),
                    "a class limit needs both requests_per_minute and burst; add burst",
                );
                None
            }
            (None, Some(set)) => {
                self.report(
                    field("burst"),
                    &set.span(),
                    "a class limit needs both requests_per_minute and burst; add requests_per_minute",
                );
                None
            }
            (None, None) => None,
        };
        LimitClass {
            name: Arc::from(name),
            rate,
            daily_quota: self.daily_quota(&field("daily_quota"), &raw.daily_quota),
        }
    }

    fn daily_quota(&mut self, key: &str, value: &Opt<i64>) -> Option<u32> {
        value.as_ref()?;
        let quota = self.count(key, value, 0, DAILY_QUOTA_RANGE);
        u32::try_from(quota).ok().filter(|quota| *quota > 0)
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        classes: &BTreeMap<String, Arc<LimitClass>>,
    ) -> Option<Vec<RouteConfig>> {
        let mut routes = Vec::with_capacity(raw.len());
        let mut path_spans = Vec::with_capacity(raw.len());
        let mut complete = true;
        for (index, route) in raw.iter().enumerate() {
            match self.route(index, route, &raw[..index], classes) {
                Some(parsed) => {
                    path_spans.push(
                        route
                            .get_ref()
                            .path
                            .as_ref()
                            .map_or(route.span(), Spanned::span),
                    );
                    routes.push(parsed);
                }
                None => complete = false,
            }
        }
        if !complete {
            return None;
        }
        let shapes: Vec<_> = routes
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect();
        if let Err(conflicts) = RouteTable::build(&shapes) {
            for conflict in conflicts {
                let first = &routes[conflict.first];
                self.report(
                    format!("route[{}].path", conflict.second),
                    &path_spans[conflict.second],
                    format!(
                        "{} {} cannot be told apart from route \"{}\" ({} {})",
                        routes[conflict.second].method,
                        routes[conflict.second].path.as_str(),
                        first.name,
                        first.method,
                        first.path.as_str()
                    ),
                );
            }
            return None;
        }
        Some(routes)
    }

    fn route(
        &mut self,
        index: usize,
        spanned: &Spanned<RawRoute>,
        earlier: &[Spanned<RawRoute>],
        classes: &BTreeMap<String, Arc<LimitClass>>,
    ) -> Option<RouteConfig> {
        let span = spanned.span();
        let raw = spanned.get_ref();
        let key = |field: &str| format!("route[{index}].{field}");

        let name = self
            .required(&key("name"), &raw.name, &span)
            .and_then(|name| {
                let text = name.get_ref();
                if !is_policy_name(text) {
                    self.report(
                        key("name"),
                        &name.span(),
                        format!("must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ : -"),
                    );
                    return None;
                }
                let duplicate = earlier.iter().any(|other| {
                    other
                        .get_ref()
                        .name
                        .as_ref()
                        .is_some_and(|n| n.get_ref() == text)
                });
                if duplicate {
                    self.report(
                        key("name"),
                        &name.span(),
                        format!("route name \"{text}\" is used twice"),
                    );
                    return None;
                }
                Some(text.clone())
            });

        let method = self
            .required(&key("method"), &raw.method, &span)
            .and_then(|method| {
                let text = method.get_ref();
                let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(text.as_bytes()) {
                    Ok(m) if valid && m != Method::CONNECT && m != Method::TRACE => Some(m),
                    _ => {
                        self.report(
                        key("method"),
                        &method.span(),
                        "must be an upper-case HTTP method such as GET, POST, PUT, PATCH or DELETE \
                         (CONNECT and TRACE are never proxied)",
                    );
                        None
                    }
                }
            });

        let path = self
            .required(&key("path"), &raw.path, &span)
            .and_then(|path| match PathTemplate::parse(path.get_ref()) {
                Ok(template) => Some(template),
                Err(error) => {
                    self.report(key("path"), &path.span(), error.to_string());
                    None
                }
            });

        let any_key = raw.any_key.as_ref().is_some_and(|a| *a.get_ref());
        let scope = match &raw.scope {
            Some(scope) if any_key => {
                self.report(
                    key("scope"),
                    &scope.span(),
                    "set either scope or any_key = true, not both",
                );
                None
            }
            Some(scope) if !crate::keys::record::is_scope(scope.get_ref()) => {
                self.report(
                    key("scope"),
                    &scope.span(),
                    format!("must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ : - (the characters a key's scopes may hold)"),
                );
                None
            }
            Some(scope) => Some(ScopeRequirement::Scope(scope.get_ref().clone())),
            None if any_key => Some(ScopeRequirement::AnyKey),
            None => {
                self.report(
                    key("scope"),
                    &span,
                    "is required: name the scope a key needs, or set any_key = true to let every \
                     valid key call this route",
                );
                None
            }
        };

        let limit = match &raw.limit {
            None => Some(None),
            Some(class) => match classes.get(class.get_ref()) {
                Some(found) => Some(Some(found.clone())),
                None => {
                    self.report(
                        key("limit"),
                        &class.span(),
                        format!(
                            "names no route class; define [ratelimit.classes.{}] or remove the limit",
                            class.get_ref()
                        ),
                    );
                    None
                }
            },
        };

        Some(RouteConfig {
            name: name?,
            method: method?,
            path: path?,
            scope: scope?,
            limit: limit?,
            idempotency: raw.idempotency.as_ref().map(|value| *value.get_ref()),
        })
    }
}

/// A rate from validated counts (both already range-checked to at least 1).
fn to_rate(per_minute: u64, burst: u64) -> Option<Rate> {
    Rate::new(u32::try_from(per_minute).ok()?, u32::try_from(burst).ok()?)
}

/// Key namespaces: they are the first `_`-separated part of every key.
fn is_namespace(text: &str) -> bool {
    let bytes = text.as_bytes();
    (2..=16).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Route names: short, printable, safe as a metric label and an audit field.
fn is_policy_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The listen address used when `server.listen` is absent: loopback, so nothing is exposed
/// by accident.
fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8443))
}
