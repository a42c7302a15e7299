//! Where webhooks may be sent (SSRF rules), and the one client that sends them.
//!
//! A subscriber chooses the URL, so the URL is untrusted: pointed at `127.0.0.1`, a private
//! network or a cloud metadata service, a webhook would let a partner make Portcullis probe
//! the hospital's own network. The rules are enforced twice:
//!
//! - [`check_url`] when a subscription is made: `https` only, no userinfo, no fragment, and
//!   an IP-literal host must not be a forbidden address;
//! - [`ReceiverClient`] at every delivery: its DNS resolver refuses a name when any address
//!   it resolves to is forbidden, so the check is made against the very addresses the
//!   connection uses, and a name that changes its answer after the subscription was made
//!   (DNS rebinding) gains nothing.
//!
//! `allow_private` (the policy's `allow_private_destinations`, false by default) lifts the
//! address rules for tests and labs; the `https` rule always holds.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::tls_provider;

/// Longest subscription URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Bytes of a receiver's answer read (and thrown away) before the connection is dropped.
pub const MAX_RESPONSE_DRAIN: usize = 64 * 1024;

/// Sent as `User-Agent` on every delivery, so receivers can tell webhooks apart.
const AGENT: &str = concat!("portcullis-webhooks/", env!("CARGO_PKG_VERSION"));

/// Why a receiver URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not an absolute URL.
    #[error("the url is not a valid absolute URL")]
    Invalid,
    /// Longer than [`MAX_URL_LEN`].
    #[error("the url is longer than {MAX_URL_LEN} characters")]
    TooLong,
    /// Any scheme but `https`.
    #[error("the url must use https")]
    NotHttps,
    /// `user:password@` in the authority: credentials do not belong in a URL.
    #[error("the url must not carry a user name or password")]
    Userinfo,
    /// No host, or port 0.
    #[error("the url must name a host (and a non-zero port if any)")]
    NoHost,
    /// A `#fragment`, which is never sent and so hides nothing but confusion.
    #[error("the url must not have a fragment")]
    Fragment,
    /// The host is an address (or resolves to one) on a loopback, private, link-local,
    /// metadata or otherwise non-public network.
    #[error("the url's host {0} is a loopback, private, link-local or reserved address")]
    ForbiddenAddress(IpAddr),
    /// The host is `localhost` or a name under `.localhost`, which always means this machine.
    #[error("the url's host is a name for this machine")]
    LocalName,
}

/// Checks a receiver URL when a subscription is made, and returns it parsed.
///
/// Rules: an absolute `https` URL of at most [`MAX_URL_LEN`] characters, a host, no
/// userinfo, no fragment, a non-zero port if one is given. Unless `allow_private`, an
/// IP-literal host must not be forbidden (see [`is_forbidden`]) and `localhost` names are
/// refused; other names are checked when they are resolved, at each delivery.
pub fn check_url(url: &str, allow_private: bool) -> Result<Uri, DestinationError> {
    if url.len() > MAX_URL_LEN {
        return Err(DestinationError::TooLong);
    }
    if url.contains('#') {
        return Err(DestinationError::Fragment);
    }
    let uri: Uri = url.parse().map_err(|_| DestinationError::Invalid)?;
    check_uri(&uri, allow_private, true)?;
    Ok(uri)
}

/// The rules of [`check_url`] on a parsed URI. Before each delivery they are applied again
/// with `local_names` false: there the resolver judges every name by its addresses.
fn check_uri(uri: &Uri, allow_private: bool, local_names: bool) -> Result<(), DestinationError> {
    let scheme = uri.scheme_str().ok_or(DestinationError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(DestinationError::NotHttps);
    }
    let authority = uri.authority().ok_or(DestinationError::Invalid)?;
    if authority.as_str().contains('@') {
        return Err(DestinationError::Userinfo);
    }
    let host = authority.host();
    if host.is_empty() || authority.port_u16() == Some(0) {
        return Err(DestinationError::NoHost);
    }
    if allow_private {
        return Ok(());
    }
    if let Some(ip) = literal_ip(host) {
        if is_forbidden(ip) {
            return Err(DestinationError::ForbiddenAddress(ip));
        }
    } else if local_names {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return Err(DestinationError::LocalName);
        }
    }
    Ok(())
}

/// The address of an IP-literal host (`192.0.2.1`, `[2001:db8::1]`), as the client would
/// connect to it without asking DNS.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Whether a webhook may never be delivered to `ip` (unless private destinations are allowed).
///
/// Refused: unspecified and "this network", loopback, RFC 1918 private, link-local (which
/// holds the `169.254.169.254` metadata service), CGNAT `100.64.0.0/10`, IETF protocol
/// assignments `192.0.0.0/24`, benchmarking `198.18.0.0/15`, documentation ranges, the 6to4
/// relay `192.88.99.0/24`, multicast, reserved `240.0.0.0/4` and broadcast; for IPv6 also
/// unique-local `fc00::/7` (with the `fd00:ec2::254` metadata address), link-local
/// `fe80::/10`, site-local `fec0::/10`, discard `100::/64`, documentation `2001:db8::/32` and
/// `3fff::/20`, benchmarking `2001:2::/48`, Teredo `2001::/32`, local NAT64 `64:ff9b:1::/48`;
/// and every IPv6 form that embeds an IPv4 address (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`) when the embedded address
/// is refused.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || ip.is_documentation()
        || ip.is_multicast()
        || a >= 240 // reserved 240.0.0.0/4 and broadcast
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(&s) {
        return forbidden_v4(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique-local fc00::/7 (fd00:ec2::254 metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local NAT64 64:ff9b:1::/48
        || s[..6].iter().all(|&x| x == 0) // the rest of ::/96 (IPv4-compatible, deprecated)
}

/// The IPv4 address an IPv6 address stands for, in the forms that route to it.
fn embedded_v4(s: &[u16; 8]) -> Option<Ipv4Addr> {
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated, RFC 2765)
    if s[..4].iter().all(|&x| x == 0)
        && ((s[4] == 0 && s[5] == 0xffff) || (s[4] == 0xffff && s[5] == 0))
    {
        return Some(tail(s[6], s[7]));
    }
    // ::a.b.c.d (compatible), but not :: or ::1 which are their own cases
    if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
        return Some(tail(s[6], s[7]));
    }
    // 64:ff9b::a.b.c.d (well-known NAT64 prefix)
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(tail(s[6], s[7]));
    }
    // 2002:aabb:ccdd::/48 (6to4)
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2]));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The guarded resolver

/// Why the resolver gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name resolves to a forbidden address.
    #[error("the host resolves to a forbidden address ({0})")]
    Forbidden(IpAddr),
    /// The lookup itself failed.
    #[error("lookup failed: {0}")]
    Lookup(io::Error),
    /// The lookup returned nothing.
    #[error("the host has no address")]
    NoAddress,
}

/// A DNS resolver that refuses a name when any address it resolves to is forbidden.
///
/// Refusing the whole name (rather than dropping the bad addresses) is the stricter choice:
/// a public name that also resolves to an internal address is misconfigured or hostile.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    /// A resolver that lets private addresses through only when `allow_private`.
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(ResolveError::Lookup)?
                .collect();
            if addrs.is_empty() {
                return Err(ResolveError::NoAddress);
            }
            if !allow_private {
                if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
                    return Err(ResolveError::Forbidden(bad.ip()));
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver client

/// Why the receiver client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverClientError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("cannot load the webhook CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("cannot build the webhook TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a delivery got no HTTP answer. A non-2xx answer is not an error here: it is a
/// [`ReceiverAnswer`] the worker judges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The URL breaks the destination rules, or its host resolves to a forbidden address.
    #[error("destination refused: {0}")]
    Forbidden(DestinationError),
    /// The host name could not be resolved.
    #[error("cannot resolve the receiver's host: {0}")]
    Dns(String),
    /// No TCP connection could be made.
    #[error("cannot connect to the receiver: {0}")]
    Connect(String),
    /// The TLS handshake failed (an untrusted or mismatched certificate, most often).
    #[error("TLS with the receiver failed: {0}")]
    Tls(String),
    /// No complete answer within the delivery timeout.
    #[error("the receiver did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Anything else (the connection dropped mid-answer, a protocol error).
    #[error("the delivery failed: {0}")]
    Other(String),
}

/// What a receiver answered. Its body is read (up to [`MAX_RESPONSE_DRAIN`]) and thrown
/// away: a receiver's answer may hold anything, and none of it is kept or logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverAnswer {
    /// The status code.
    pub status: StatusCode,
    /// `Retry-After`, as a delay from now, when present and readable.
    pub retry_after: Option<Duration>,
    /// From sending the request to the end of the (drained) answer.
    pub latency: Duration,
}

/// The HTTPS client for webhook receivers: system roots plus an optional extra CA, a
/// resolver that refuses forbidden addresses, a whole-request timeout, no redirects.
///
/// One instance is shared by every delivery; connections are pooled per receiver.
#[derive(Clone)]
pub struct ReceiverClient {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    allow_private: bool,
    timeout: Duration,
}

impl std::fmt::Debug for ReceiverClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverClient")
            .field("allow_private", &self.allow_private)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ReceiverClient {
    /// Builds the client. `extra_ca` is a PEM file of CA certificates trusted in addition to
    /// the system roots (for labs and tests); `timeout` bounds each whole delivery, from
    /// connecting to the end of the answer.
    pub fn new(
        allow_private: bool,
        extra_ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, ReceiverClientError> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(allow_private));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(root_store(extra_ca)?)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(16)
            .build(connector);
        Ok(Self {
            client,
            allow_private,
            timeout,
        })
    }

    /// POSTs one signed delivery and reports the answer.
    ///
    /// The URL is checked again (it may come from storage written under older rules); an
    /// IP-literal host is checked here because the connector does not resolve it. Redirects
    /// are not followed: a `3xx` is an answer like any other. `Content-Type:
    /// application/json` and a `User-Agent` are added unless `headers` carries them.
    pub async fn post(
        &self,
        url: &Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<ReceiverAnswer, DeliveryError> {
        check_uri(url, self.allow_private, false).map_err(DeliveryError::Forbidden)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        let map = request.headers_mut();
        for (name, value) in headers {
            map.append(name, value);
        }
        if !map.contains_key(CONTENT_TYPE) {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if !map.contains_key(USER_AGENT) {
            map.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        }

        let started = Instant::now();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| classify(&e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            drain(response.into_body()).await;
            Ok(ReceiverAnswer {
                status,
                retry_after,
                latency: started.elapsed(),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }
}

/// Reads and drops up to [`MAX_RESPONSE_DRAIN`] bytes of an answer, so a short answer leaves
/// the connection reusable and a long one is cut off.
async fn drain(mut body: hyper::body::Incoming) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen > MAX_RESPONSE_DRAIN {
                break;
            }
        }
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delay seconds or an HTTP date, as a delay from
/// `now` (zero for a date in the past). `None` when it is neither.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sorts a failed exchange into the [`DeliveryError`] kinds by walking its causes.
fn classify(error: &hyper_util::client::legacy::Error) -> DeliveryError {
    let mut timed_out = false;
    let mut io_reason = None;
    let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(resolve) = current.downcast_ref::<ResolveError>() {
            return match resolve {
                ResolveError::Forbidden(ip) => {
                    DeliveryError::Forbidden(DestinationError::ForbiddenAddress(*ip))
                }
                other => DeliveryError::Dns(other.to_string()),
            };
        }
        if let Some(tls) = tls_error(current) {
            return DeliveryError::Tls(tls.to_string());
        }
        if let Some(io) = current.downcast_ref::<io::Error>() {
            timed_out |= io.kind() == io::ErrorKind::TimedOut;
            io_reason.get_or_insert_with(|| io.to_string());
        }
        cause = current.source();
    }
    let reason = io_reason.unwrap_or_else(|| innermost(error));
    if timed_out {
        DeliveryError::Connect("connection timed out".to_owned())
    } else if error.is_connect() {
        DeliveryError::Connect(reason)
    } else {
        DeliveryError::Other(reason)
    }
}

/// The description of the deepest cause, which names what actually went wrong.
fn innermost(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The rustls error inside `error`, looking through `io::Error` wrappers (the TLS connector
/// nests one in another, and `io::Error::source` skips the wrapped error itself).
fn tls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = error.downcast_ref::<io::Error>()?.get_ref()?;
    tls_error(inner)
}

/// System roots plus the optional extra PEM bundle.
fn root_store(extra: Option<&Path>) -> Result<RootCertStore, ReceiverClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        let ca_error = |reason: String| ReceiverClientError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no certificates found".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found; webhook receivers cannot be verified");
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_retry_after(&v("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&v("Sun, 09 Sep 2001 01:48:20 GMT"), now),
            Some(Duration::from_secs(100))
        );
        assert_eq!(
            parse_retry_after(&v("Sun, 09 Sep 2001 01:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&v("soon"), now), None);
        assert_eq!(parse_retry_after(&v("-5"), now), None);
        assert_eq!(parse_retry_after(&v(""), now), None);
    }

    #[test]
    fn embedded_forms_follow_the_ipv4_rules() {
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        assert!(is_forbidden(v6("::ffff:127.0.0.1")));
        assert!(is_forbidden(v6("::ffff:0:10.0.0.1")));
        assert!(is_forbidden(v6("::169.254.169.254")));
        assert!(is_forbidden(v6("64:ff9b::192.168.1.1")));
        assert!(is_forbidden(v6("2002:7f00:1::")));
        assert!(!is_forbidden(v6("::ffff:8.8.8.8")));
        assert!(!is_forbidden(v6("64:ff9b::8.8.8.8")));
        assert!(!is_forbidden(v6("2002:0808:0808::1")));
    }
}
