//! The admin API's listener: HTTP/1.1 over the unix socket, one request per connection.
//!
//! The socket file is the first lock (mode 0600); the peer's uid from `SO_PEERCRED` is the
//! second: only the uid owning the socket (the one running portcullis) and root are served.
//! The uid check also covers the instant between `bind` and `chmod`, when a connection could
//! have been queued under looser permissions. Every connection runs under timeouts and a
//! connection cap, so a stuck or hostile local client cannot tie the server up.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::server::graceful::Watcher;
use tokio::net::{UnixListener, UnixStream};

use super::handlers::{self, Peer};
use super::socket::{self, AdminError, SocketFile};
use crate::local_http::{self, Limits, Running};
use crate::reload::Reloader;
use crate::state::State;

/// Admin connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a single connection may live, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long in-flight admin requests may finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's hardening (see [`local_http`]); one request per connection.
const LIMITS: Limits = Limits {
    name: "admin",
    max_connections: MAX_CONNECTIONS,
    header_read_timeout: HEADER_READ_TIMEOUT,
    connection_timeout: CONNECTION_TIMEOUT,
    drain_timeout: DRAIN_TIMEOUT,
    keep_alive: false,
};

/// A bound admin socket, ready to serve.
pub struct AdminServer {
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
    listener: std::os::unix::net::UnixListener,
    socket: SocketFile,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("path", &self.socket.path())
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Claims the socket at `path`: creates a missing parent directory (0700), replaces a
    /// stale socket, refuses a live one (and never deletes a file that is not a socket), binds
    /// and sets 0600.
    /// Nothing is accepted until [`AdminServer::serve`]; dropping the server removes the file.
    pub fn bind(state: Arc<State>, path: &Path) -> Result<Self, AdminError> {
        let (listener, socket) = socket::bind(path)?;
        Ok(Self {
            state,
            reloader: None,
            listener,
            socket,
        })
    }

    /// Serves `POST /v1/reload` (`portcullis reload`) with `reloader`; without one the
    /// endpoint answers that there is nothing to reload.
    pub fn with_reloader(mut self, reloader: Arc<Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Serves until `shutdown` completes; then stops accepting, gives in-flight requests
    /// [`DRAIN_TIMEOUT`] to finish and removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            state,
            reloader,
            listener,
            socket,
        } = self;
        let listener = match UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, path = %socket.path().display(), "cannot serve the admin socket");
                return;
            }
        };
        tracing::info!(path = %socket.path().display(), "admin socket listening");
        let owner_uid = socket.owner_uid();
        local_http::serve(listener, LIMITS, shutdown, |stream, watcher| {
            serve_connection(stream, state.clone(), reloader.clone(), owner_uid, watcher)
        })
        .await;
        drop(socket);
        tracing::info!("admin socket closed");
    }

    /// Serves on a task of its own until [`AdminHandle::stop`] (or until the handle is
    /// dropped).
    pub fn spawn(self) -> AdminHandle {
        AdminHandle(Running::spawn("admin", |stopped| {
            self.serve(async move {
                let _ = stopped.await;
            })
        }))
    }
}

/// A running admin server started with [`AdminServer::spawn`].
#[derive(Debug)]
pub struct AdminHandle(Running);

impl AdminHandle {
    /// Stops accepting, waits for in-flight requests to finish (at most [`DRAIN_TIMEOUT`])
    /// and removes the socket file.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

async fn serve_connection(
    stream: UnixStream,
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
    owner_uid: u32,
    watcher: Watcher,
) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(error) => {
            // Without a peer identity there is no actor to record: refuse the connection.
            tracing::warn!(%error, "cannot read the admin peer's credentials; closing");
            return;
        }
    };
    let peer = Peer {
        uid,
        allowed: uid == owner_uid || uid == 0,
    };
    let service = service_fn(move |request| {
        let state = state.clone();
        let reloader = reloader.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handlers::handle(request, state, reloader, peer).await,
            )
        }
    });
    local_http::serve_connection(stream, service, LIMITS, watcher).await;
}
