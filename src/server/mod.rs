//! The TLS listener: accept, sniff, handshake, serve HTTP/1.1 or HTTP/2, drain on shutdown.
//!
//! The HTTP version is taken from the ALPN protocol the TLS handshake settled on, never by
//! sniffing the first bytes of the decrypted stream, so every stage of a connection runs under
//! a timeout: the first byte and the handshake under `tls_handshake_timeout`, an HTTP/1.1
//! header section under `header_read_timeout`, an idle HTTP/2 connection under its PING
//! keep-alive.

pub mod cert_watch;
mod connection;
pub mod proxy_protocol;
pub mod sniff;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::state::State;
use tls::{CertResolver, TlsError};

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address is taken, not local, or not permitted.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the policy.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    state: Arc<State>,
    local_addr: SocketAddr,
}

impl Server {
    /// Loads the certificate and binds the listen address of the current policy.
    pub async fn bind(state: Arc<State>) -> Result<Self, ServerError> {
        let policy = state.policies.current();
        let config = &policy.config.server;
        let certified = tls::load_certified_key(&config.cert, &config.key)?;
        let resolver = Arc::new(CertResolver::new(certified));
        let acceptor = TlsAcceptor::from(tls::server_config(resolver.clone())?);
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            acceptor,
            resolver,
            state: state.clone(),
            local_addr,
        })
    }

    /// The address actually bound (useful when the policy asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate holder, for swapping in a renewed certificate.
    pub fn cert_resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for at most `server.drain_timeout`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            acceptor,
            resolver,
            state,
            ..
        } = self;
        let maintenance = state.spawn_maintenance();
        let cert_watch = cert_watch::spawn(resolver, state.clone());
        let max_connections = state.policies.current().config.server.max_connections;
        let slots = Arc::new(Semaphore::new(max_connections));
        let graceful = GracefulShutdown::new();
        let (stopping_tx, stopping_rx) = watch::channel(false);
        tokio::pin!(shutdown);

        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max_connections,
                    "connection limit reached; closing new connection"
                );
                drop(tcp);
                continue;
            };
            let connection = connection::Connection {
                acceptor: acceptor.clone(),
                state: state.clone(),
                watcher: graceful.watcher(),
                stopping: stopping_rx.clone(),
            };
            let open = state.metrics.connection_opened();
            tokio::spawn(async move {
                connection.serve(tcp, peer).await;
                drop(open);
                drop(slot);
            });
        }

        drop(listener);
        let _ = stopping_tx.send(true);
        let drain = state.policies.current().config.server.drain_timeout;
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached with requests still in flight");
        }
        maintenance.abort();
        cert_watch.abort();
        if let Err(error) = state.store.flush() {
            tracing::error!(%error, "cannot flush state on shutdown");
        }
    }
}
