//! The integration harness: a real sidecar on an ephemeral TLS port, a real in-process backend
//! and real HTTP/1.1 and HTTP/2 clients that trust a freshly minted CA.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::body::{full_body, ProxyBody};
use portcullis::config::{Config, SourceText};
use portcullis::keys::{Env, MintRequest};
use portcullis::pki::{self, DevPki};
use portcullis::policy::Policy;
use portcullis::server::Server;
use portcullis::state::{unix_now, State};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A freshly minted CA and server certificate in a temporary directory.
pub struct TestPki {
    pub dir: TempDir,
    pub paths: DevPki,
}

pub fn test_pki() -> TestPki {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths =
        pki::generate_dev_pki(&dir.path().join("certs"), &["localhost", "127.0.0.1"]).expect("pki");
    TestPki { dir, paths }
}

// ---------------------------------------------------------------------------------------------
// Backend

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<ProxyBody>> + Send + Sync>;

/// An in-process HTTP/1.1 backend that runs `handler` for every request.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    pub async fn start(handler: Handler) -> Backend {
        Self::start_inner(handler, None).await
    }

    /// The same backend behind TLS, with a certificate from `pki`.
    pub async fn start_tls(handler: Handler, pki: &TestPki) -> Backend {
        let certified =
            portcullis::server::tls::load_certified_key(&pki.paths.cert, &pki.paths.key)
                .expect("backend cert");
        let resolver = Arc::new(portcullis::server::tls::CertResolver::new(certified));
        let mut config =
            (*portcullis::server::tls::server_config(resolver).expect("tls config")).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_inner(
            handler,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let handler = handler.clone();
                let counter = counter.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(request).await) }
                    });
                    let builder = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            hits,
            stop: Some(stop),
        }
    }

    /// A backend that records every request and answers with `200` and a JSON summary.
    pub async fn recording() -> (Backend, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler: Handler = Arc::new(move |request: Request<Incoming>| {
            let log = log.clone();
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/octet-stream")
                    .header("x-backend-answer", "yes")
                    .body(full_body(body))
                    .unwrap()
            })
        });
        (Backend::start(handler).await, seen)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

// ---------------------------------------------------------------------------------------------
// Sidecar

/// Extra policy text for a test sidecar.
#[derive(Default, Clone)]
pub struct Settings {
    /// Lines added to `[server]`.
    pub server: String,
    /// Lines added to `[upstream]`.
    pub upstream: String,
    /// Complete `[[route]]` blocks; the default echo routes when empty.
    pub routes: String,
    /// Lines added to `[auth]`.
    pub auth: String,
    /// Start the internal listener (`[internal]`) on an ephemeral loopback port.
    pub internal: bool,
}

/// Routes used when a test does not bring its own: every common method on `/v1/echo/...`.
pub const DEFAULT_ROUTES: &str = r#"
[[route]]
name = "echo.get"
method = "GET"
path = "/v1/echo/{*rest}"
any_key = true

[[route]]
name = "echo.post"
method = "POST"
path = "/v1/echo/{*rest}"
any_key = true

[[route]]
name = "echo.put"
method = "PUT"
path = "/v1/echo/{*rest}"
any_key = true

[[route]]
name = "echo.delete"
method = "DELETE"
path = "/v1/echo/{*rest}"
any_key = true

[[route]]
name = "notes.read"
method = "GET"
path = "/v1/notes/{id}"
scope = "notes:read"
"#;

/// The organization every test sidecar starts with.
pub const TEST_ORG: &str = "test-org";

/// A running sidecar on an ephemeral loopback port, with one organization and one test key.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub state: Arc<State>,
    /// A test key of [`TEST_ORG`] with the scope `notes:read`.
    pub key: String,
    text: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The internal listener's address, when [`Settings::internal`] asked for it.
    pub internal_addr: Option<SocketAddr>,
    internal: Option<portcullis::internal::InternalHandle>,
}

impl Sidecar {
    pub async fn start(upstream_url: &str, settings: Settings) -> Sidecar {
        let pki = test_pki();
        let text = policy_text(&pki, upstream_url, &settings);
        let state = open_state(&pki, &text);
        state
            .orgs
            .create(TEST_ORG, "Test Org", unix_now())
            .expect("org");
        let key = mint(&state, TEST_ORG, Env::Test, &["notes:read"]);
        Self::serve(pki, text, state, key).await
    }

    async fn serve(pki: TestPki, text: String, state: Arc<State>, key: String) -> Sidecar {
        let internal = portcullis::internal::InternalServer::bind_configured(&state)
            .await
            .expect("bind the internal listener")
            .map(portcullis::internal::InternalServer::spawn);
        let internal_addr = internal.as_ref().map(|handle| handle.local_addr());
        let server = Server::bind(state.clone()).await.expect("bind sidecar");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        // Dropping the sender (with the Sidecar) also starts the shutdown.
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            pki,
            state,
            key,
            text,
            stop: Some(stop),
            task: Some(task),
            internal_addr,
            internal,
        }
    }

    /// Stops the sidecar, waits until nothing holds its state, and starts it again on the
    /// same data directory (a new port).
    pub async fn restart(mut self) -> Sidecar {
        self.begin_shutdown();
        self.stopped().await;
        let Sidecar {
            pki,
            state,
            key,
            text,
            ..
        } = self;
        let weak = Arc::downgrade(&state);
        drop(state);
        for _ in 0..200 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(weak.strong_count(), 0, "the old state is still in use");
        let reopened = open_state(&pki, &text);
        Self::serve(pki, text, reopened, key).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// A request builder for `path` carrying the sidecar's test key.
    pub fn req(&self, method: http::Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {}", self.key))
    }

    /// `GET path` with the sidecar's test key.
    pub async fn get(&self, client: &TestClient, path: &str) -> (http::response::Parts, Bytes) {
        let request = self
            .req(http::Method::GET, path)
            .body(portcullis::body::empty_body());
        send(client, request.unwrap()).await
    }

    pub fn ca(&self) -> &Path {
        &self.pki.paths.ca
    }

    /// Starts the graceful shutdown (what SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the serve loop to finish draining.
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(internal) = self.internal.take() {
            internal.stop().await;
        }
    }

    /// One plain HTTP/1.1 request to the internal listener (`method path`, no body).
    pub async fn internal_request(
        &self,
        method: http::Method,
        path: &str,
    ) -> (http::response::Parts, Bytes) {
        let addr = self
            .internal_addr
            .expect("the sidecar was started with Settings::internal");
        let tcp = TcpStream::connect(addr).await.expect("connect internal");
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .body(portcullis::body::empty_body())
            .unwrap();
        send_over(tcp, request).await.expect("internal answer")
    }
}

fn open_state(pki: &TestPki, text: &str) -> Arc<State> {
    let config = Config::parse(&SourceText::new("test.toml", text), pki.dir.path())
        .expect("valid test policy");
    State::open(Policy::new(config).expect("policy")).expect("state")
}

/// Mints a key straight through the registry (the admin socket does the same).
pub fn mint(state: &State, org: &str, env: Env, scopes: &[&str]) -> String {
    let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    let minted = state
        .keys
        .mint(MintRequest::new(org, env, scopes), unix_now())
        .expect("mint");
    minted.key.expose_secret().to_owned()
}

pub fn policy_text(pki: &TestPki, upstream_url: &str, settings: &Settings) -> String {
    let routes = if settings.routes.is_empty() {
        DEFAULT_ROUTES
    } else {
        &settings.routes
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{server}\n\n\
         [upstream]\nurl = \"{upstream_url}\"\n{upstream}\n\n\
         [storage]\ndata_dir = \"{data}\"\n\n[auth]\n{auth}\n\n{routes}",
        cert = pki.paths.cert.display(),
        key = pki.paths.key.display(),
        server = settings.server,
        upstream = settings.upstream,
        auth = settings.auth,
        data = pki.dir.path().display(),
    ) + if settings.internal {
        "\n\n[internal]\nlisten = \"127.0.0.1:0\"\n"
    } else {
        ""
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

pub type TestClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

fn client_tls(ca: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("add ca");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(portcullis::tls_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// An HTTP/1.1-only client (ALPN `http/1.1`).
pub fn h1_client(ca: &Path) -> TestClient {
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca, &[]))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// An HTTP/2-only client (ALPN `h2`).
pub fn h2_client(ca: &Path) -> TestClient {
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca, &[]))
        .https_only()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

/// Sends a request and reads the whole answer.
pub async fn send(
    client: &TestClient,
    request: Request<ProxyBody>,
) -> (http::response::Parts, Bytes) {
    let response = client
        .request(request)
        .await
        .expect("request through the sidecar");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    (parts, body)
}

pub async fn get(client: &TestClient, url: &str) -> (http::response::Parts, Bytes) {
    send(
        client,
        Request::get(url)
            .body(portcullis::body::empty_body())
            .unwrap(),
    )
    .await
}

/// Parses a problem document and checks its media type and request id.
pub fn problem(parts: &http::response::Parts, body: &[u8]) -> serde_json::Value {
    assert_eq!(
        parts.headers["content-type"], "application/problem+json",
        "problem media type"
    );
    assert!(
        parts.headers.contains_key("x-request-id"),
        "x-request-id on every answer"
    );
    let json: serde_json::Value = serde_json::from_slice(body).expect("problem json");
    assert_eq!(json["status"], parts.status.as_u16());
    json
}

/// A raw TLS connection, for tests that must write bytes hyper's client never would.
pub async fn tls_connect(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::new(client_tls(ca, alpn)));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake")
}

pub fn ca_path(pki: &TestPki) -> PathBuf {
    pki.paths.ca.clone()
}

// ---------------------------------------------------------------------------------------------
// Streaming bodies

/// A body fed chunk by chunk from a channel, to prove that bytes flow before the end.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, ChannelBody { rx }.boxed())
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = portcullis::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// TLS over an already connected stream (e.g. after writing a PROXY protocol header).
pub async fn tls_over(
    tcp: TcpStream,
    ca: &Path,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_tls(ca, alpn)));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request over an established stream, answered in full.
pub async fn send_over<S>(
    stream: S,
    request: Request<ProxyBody>,
) -> hyper::Result<(http::response::Parts, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts, body))
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Streams a child's output lines into a channel, so a test can wait for one with a deadline.
pub fn child_lines(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line containing `needle` within 30 s; panics otherwise, naming it and showing
/// the last lines the child did print (so a failure says why it never got there).
pub fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = std::collections::VecDeque::new();
    let mut ended = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => {
                if seen.len() == 20 {
                    seen.pop_front();
                }
                seen.push_back(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    let how = if ended {
        "the child closed its output"
    } else {
        "timed out"
    };
    let last: Vec<String> = seen.into_iter().collect();
    panic!(
        "no line containing {needle:?} ({how}); its last lines:\n{}",
        last.join("\n")
    );
}

/// Asserts that a listener at its connection cap closed `extra` on arrival: it reads end of
/// stream (or an error) within 5 s instead of being kept waiting.
pub async fn assert_closed_on_arrival<S>(extra: &mut S)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(extra, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {closed:?}"
    );
}

/// A child process that is killed (and reaped) when dropped, so a failing test leaves no
/// server behind. It derefs to the [`std::process::Child`].
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The port of the address in a log line's `listen=` field (pretty format).
pub fn listen_port(line: &str) -> u16 {
    line.split("listen=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.trim_matches('"').rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no listen= port in {line:?}"))
}

/// Sends `signal` (a name: `TERM`, `HUP`, `KILL`) to `child` with kill(1).
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill(1) runs");
    assert!(sent.success(), "kill -{signal} failed");
}

/// Waits up to `within` for `child` to exit; its status. Panics if it is still running.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("still running {within:?} later");
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
