//! The internal listener: plain HTTP/1.1 for operators and the backend, never for partners.
//!
//! It serves `GET /metrics` (and whatever else [`router`] names) on an address that
//! validation keeps on loopback unless the operator opts out (`[internal]`). It has no TLS
//! and no keys, so it runs under the same hardening as the admin socket: a connection cap, a
//! header read timeout, a lifetime per connection, small request heads, and a drain on
//! shutdown.

pub mod problem;
pub mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::state::State;

pub use problem::InternalProblem;

/// Internal connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request head (and how long an idle keep-alive
/// connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a single connection may live, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long in-flight requests may finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most header fields in one request.
const MAX_HEADERS: usize = 32;

/// hyper's read buffer, which bounds the request head (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 16 * 1024;

/// Why the internal listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// The address is taken or not permitted.
    #[error("cannot listen on {addr} (internal listener): {source}")]
    Bind {
        /// The address from `[internal]`.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound internal listener, ready to serve.
pub struct InternalServer {
    state: Arc<State>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for InternalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl InternalServer {
    /// Binds `addr`; nothing is accepted until [`InternalServer::serve`].
    pub async fn bind(state: Arc<State>, addr: SocketAddr) -> Result<Self, InternalError> {
        let bind_error = |source| InternalError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            state,
            listener,
            local_addr,
        })
    }

    /// Binds the `[internal]` address of the current policy, if the section is present.
    pub async fn bind_configured(state: &Arc<State>) -> Result<Option<Self>, InternalError> {
        let policy = state.policies.current();
        match &policy.config.internal {
            Some(internal) => Self::bind(state.clone(), internal.listen).await.map(Some),
            None => Ok(None),
        }
    }

    /// The address actually bound (useful when the policy asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes; then stops accepting and gives in-flight requests
    /// [`DRAIN_TIMEOUT`] to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            state,
            listener,
            local_addr,
        } = self;
        tracing::info!(listen = %local_addr, "internal listener listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);

        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "internal accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "internal connection limit reached; closing new connection"
                );
                continue;
            };
            let state = state.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                serve_connection(stream, state, watcher).await;
                drop(slot);
            });
        }

        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("internal requests still in flight at the end of the drain timeout");
        }
        tracing::info!("internal listener closed");
    }

    /// Serves on a task of its own until [`InternalHandle::stop`] (or until the handle is
    /// dropped).
    pub fn spawn(self) -> InternalHandle {
        let local_addr = self.local_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.await;
        }));
        InternalHandle {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A running internal listener started with [`InternalServer::spawn`].
#[derive(Debug)]
pub struct InternalHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InternalHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for in-flight requests to finish (at most
    /// [`DRAIN_TIMEOUT`]).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::error!(%error, "the internal listener task failed");
            }
        }
    }
}

impl Drop for InternalHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, watcher: Watcher) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(router::handle(&state, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "internal connection ended with an error"),
        Err(_) => tracing::debug!("internal connection closed at its time limit"),
    }
}
