//! The forwarder: the only code that talks to the backend.
//!
//! One pooled client per policy, bodies streamed both ways, header hygiene applied in one
//! place, and every backend fault turned into a `502`/`504` problem with a stable code.

pub mod headers;

use std::error::Error as StdError;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::{LimitTrip, ProxyBody};
use crate::config::UpstreamConfig;
use crate::problem::{Problem, ProblemCode};
use crate::request_id::{RequestId, REQUEST_ID_HEADER};
use crate::tls_provider;

/// Which backend a request is for: test keys go to the sandbox when one is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `upstream.url`.
    Production,
    /// `upstream.sandbox_url`, falling back to `upstream.url` when none is set.
    Sandbox,
}

/// What the forwarder needs to know about the request beyond the request itself.
#[derive(Debug, Clone)]
pub struct Outbound<'a> {
    /// Sent as `X-Request-Id`.
    pub request_id: &'a RequestId,
    /// Sent as `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// Which backend.
    pub destination: Destination,
    /// The verified caller, sent as `X-Portcullis-*`; `None` sends no identity.
    pub identity: Option<headers::Identity<'a>>,
    /// Headers that carried the partner's credential; never forwarded.
    pub credential_headers: &'a [http::HeaderName],
}

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// The extra CA bundle could not be read or parsed.
    #[error("cannot load upstream CA bundle {}: {reason}", path.display())]
    CaFile {
        /// The bundle.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("cannot build the upstream TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// A backend base URL split into the parts every request reuses.
#[derive(Debug, Clone)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without a trailing slash ("" for none).
    base_path: String,
}

impl Target {
    fn new(url: &Uri) -> Self {
        let base_path = url.path().trim_end_matches('/').to_owned();
        Self {
            scheme: url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: url
                .authority()
                .cloned()
                .unwrap_or_else(|| Authority::from_static("localhost")),
            base_path,
        }
    }

    fn uri_for(&self, original: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let joined = if self.base_path.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.base_path))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
    }
}

/// The pooled upstream client and its targets.
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    production: Target,
    sandbox: Option<Target>,
    response_timeout: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("production", &self.production)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Builds the client pool for `config`. Called at start and on every policy reload.
    pub fn new(config: &UpstreamConfig) -> Result<Self, ForwarderError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(root_store(config.ca_file.as_deref())?)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);

        Ok(Self {
            client,
            production: Target::new(&config.url),
            sandbox: config.sandbox_url.as_ref().map(Target::new),
            response_timeout: config.response_timeout,
        })
    }

    /// Sends `request` to the backend and streams its answer back.
    ///
    /// `trip` tells whether a failure was caused by the request body crossing its cap, which
    /// is the client's fault (`413`), not the backend's.
    pub async fn forward(
        &self,
        request: Request<ProxyBody>,
        outbound: &Outbound<'_>,
        trip: &LimitTrip,
    ) -> Result<Response<ProxyBody>, Problem> {
        let target = match outbound.destination {
            Destination::Sandbox => self.sandbox.as_ref().unwrap_or(&self.production),
            Destination::Production => &self.production,
        };
        let (mut parts, body) = request.into_parts();
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
        parts.uri = target.uri_for(&parts.uri).map_err(|_| {
            Problem::new(ProblemCode::InvalidPath)
                .with_detail("the request target cannot be forwarded")
        })?;
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_internal(&mut parts.headers);
        for name in outbound.credential_headers {
            parts.headers.remove(name);
        }
        if let Some(identity) = &outbound.identity {
            headers::set_identity(&mut parts.headers, identity);
        }
        headers::set_forwarded(&mut parts.headers, outbound.client_ip, host.as_deref());
        parts
            .headers
            .insert(REQUEST_ID_HEADER, outbound.request_id.header_value());

        let sent = tokio::time::timeout(
            self.response_timeout,
            self.client.request(Request::from_parts(parts, body)),
        );
        let response = match sent.await {
            Err(_elapsed) => {
                tracing::warn!(request_id = %outbound.request_id, "backend response timed out");
                return Err(Problem::new(ProblemCode::UpstreamTimeout)
                    .with_detail("the backend did not answer in time"));
            }
            Ok(Err(error)) => return Err(classify_failure(&error, trip, outbound.request_id)),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ))
    }
}

/// Sorts a failed exchange into the client's fault, a timeout or an unreachable backend.
fn classify_failure(
    error: &hyper_util::client::legacy::Error,
    trip: &LimitTrip,
    request_id: &RequestId,
) -> Problem {
    if trip.tripped() {
        return Problem::new(ProblemCode::RequestTooLarge)
            .with_detail("the request body exceeds the configured limit");
    }
    let timed_out = source_chain(error).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
    });
    tracing::warn!(request_id = %request_id, error = %error, source = ?error.source().map(ToString::to_string), "backend request failed");
    if timed_out {
        Problem::new(ProblemCode::UpstreamTimeout)
            .with_detail("the backend did not accept a connection in time")
    } else {
        Problem::new(ProblemCode::UpstreamUnavailable)
            .with_detail("the backend refused or dropped the connection")
    }
}

fn source_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

/// System roots plus the optional extra bundle for private backend CAs.
fn root_store(extra: Option<&Path>) -> Result<RootCertStore, ForwarderError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ForwarderError::CaFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(ForwarderError::CaFile {
                path: path.to_owned(),
                reason: "no certificates found".to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ForwarderError::CaFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found; https backends will not verify");
    }
    Ok(roots)
}

/// Shared so that every policy snapshot can hold the same forwarder when upstream settings
/// did not change.
pub type SharedForwarder = Arc<Forwarder>;
