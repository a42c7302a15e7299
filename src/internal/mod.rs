//! The internal listener: plain HTTP/1.1 for operators and the backend, never for partners.
//!
//! It serves `GET /metrics` (and whatever else [`router`] names) on an address that
//! validation keeps on loopback unless the operator opts out (`[internal]`). It has no TLS
//! and no keys, so it runs under the same hardening as the admin socket ([`local_http`]): a
//! connection cap, a header read timeout, a lifetime per connection, small request heads,
//! and a drain on shutdown.

pub mod problem;
pub mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::local_http::{self, Limits, Running};
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

/// The listener's hardening (see [`local_http`]); keep-alive, for Prometheus scrapes.
const LIMITS: Limits = Limits {
    name: "internal",
    max_connections: MAX_CONNECTIONS,
    header_read_timeout: HEADER_READ_TIMEOUT,
    connection_timeout: CONNECTION_TIMEOUT,
    drain_timeout: DRAIN_TIMEOUT,
    keep_alive: true,
};

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
        local_http::serve(listener, LIMITS, shutdown, |stream, watcher| {
            let state = state.clone();
            let service = service_fn(move |request| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(router::handle(&state, request).await)
                }
            });
            local_http::serve_connection(stream, service, LIMITS, watcher)
        })
        .await;
        tracing::info!("internal listener closed");
    }

    /// Serves on a task of its own until [`InternalHandle::stop`] (or until the handle is
    /// dropped).
    pub fn spawn(self) -> InternalHandle {
        let local_addr = self.local_addr;
        let running = Running::spawn("internal", |stopped| {
            self.serve(async move {
                let _ = stopped.await;
            })
        });
        InternalHandle {
            local_addr,
            running,
        }
    }
}

/// A running internal listener started with [`InternalServer::spawn`].
#[derive(Debug)]
pub struct InternalHandle {
    local_addr: SocketAddr,
    running: Running,
}

impl InternalHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for in-flight requests to finish (at most
    /// [`DRAIN_TIMEOUT`]).
    pub async fn stop(self) {
        self.running.stop().await;
    }
}
