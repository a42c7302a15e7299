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
use portcullis::pki::{self, DevPki};
use portcullis::policy::{Policy, PolicyHandle};
use portcullis::server::Server;
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

/// A running sidecar on an ephemeral loopback port.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub policies: PolicyHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    pub async fn start(upstream_url: &str, settings: Settings) -> Sidecar {
        let pki = test_pki();
        let text = policy_text(&pki, upstream_url, &settings);
        let config = Config::parse(&SourceText::new("test.toml", text), pki.dir.path())
            .expect("valid test policy");
        let policies = PolicyHandle::new(Policy::new(config).expect("policy"));
        let server = Server::bind(policies.clone()).await.expect("bind sidecar");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            pki,
            policies,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
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
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
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
         [storage]\ndata_dir = \"{data}\"\n\n{routes}",
        cert = pki.paths.cert.display(),
        key = pki.paths.key.display(),
        server = settings.server,
        upstream = settings.upstream,
        data = pki.dir.path().display(),
    )
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
