//! The plain-HTTP/1.1 serving both local control planes share: the admin socket (unix) and
//! the internal listener (loopback TCP).
//!
//! Neither has TLS or API keys in front of it, so both run under the same hardening, kept in
//! one place so the two cannot drift apart: a connection cap (connections past it are closed
//! on arrival, never queued), a deadline for the request head, small request heads, a
//! lifetime per connection, and on shutdown a bounded drain of requests in flight.

use std::future::Future;
use std::io;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::body::ProxyBody;

/// Most header fields in one request.
const MAX_HEADERS: usize = 32;

/// hyper's read buffer, which bounds the request head (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 16 * 1024;

/// Pause after a failed `accept`, so a persistent error (e.g. out of file descriptors) does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of one local listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// What the listener is called in logs (`admin`, `internal`).
    pub name: &'static str,
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// How long a client may take to send its request head (and, with keep-alive, how long
    /// an idle connection stays open).
    pub header_read_timeout: Duration,
    /// The longest a single connection may live, whatever it does.
    pub connection_timeout: Duration,
    /// How long in-flight requests may finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
}

/// A listener whose connections can be served: the local listeners are TCP or unix.
pub trait Accept: Send + 'static {
    /// One accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `shutdown` completes and hands each one, with a drain watcher,
/// to `connection` on a task of its own; then stops accepting, drops the listener and gives
/// in-flight requests `limits.drain_timeout` to finish.
pub async fn serve<L, C, F>(
    listener: L,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    connection: C,
) where
    L: Accept,
    C: Fn(L::Stream, Watcher) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept_stream() => match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, listener = limits.name, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                listener = limits.name,
                max = limits.max_connections,
                "connection limit reached; closing new connection"
            );
            continue;
        };
        let served = connection(stream, graceful.watcher());
        tokio::spawn(async move {
            served.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = limits.name,
            "requests still in flight at the end of the drain timeout"
        );
    }
}

/// Serves HTTP/1.1 on one accepted connection under `limits`, watched by the drain.
pub async fn serve_connection<S, V>(stream: S, service: V, limits: Limits, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: HttpService<Incoming, ResBody = ProxyBody> + Send + 'static,
    V::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(limits.keep_alive)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    match tokio::time::timeout(limits.connection_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, listener = limits.name, "connection ended with an error");
        }
        Err(_) => tracing::debug!(
            listener = limits.name,
            "connection closed at its time limit"
        ),
    }
}

/// A local listener serving on a task of its own, stopped by [`Running::stop`] or when
/// dropped.
#[derive(Debug)]
pub struct Running {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Spawns `serve`, which must stop when the future it is given completes.
    pub fn spawn<S, F>(name: &'static str, serve: S) -> Self
    where
        S: FnOnce(oneshot::Receiver<()>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Self {
            name,
            stop: Some(stop),
            task: Some(tokio::spawn(serve(stopped))),
        }
    }

    /// Stops accepting and waits for in-flight requests to finish (at most the drain
    /// timeout).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::error!(%error, listener = self.name, "the listener task failed");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
