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

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::handlers::{self, Peer};
use super::socket::{self, AdminError, SocketFile};
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

/// Most header fields in an admin request.
const MAX_HEADERS: usize = 32;

/// hyper's read buffer, which bounds the request head (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 16 * 1024;

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

    /// Serves until `shutdown` completes; then stops accepting, removes the socket file and
    /// gives in-flight requests [`DRAIN_TIMEOUT`] to finish.
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
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);

        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "admin connection limit reached; closing new connection"
                );
                continue;
            };
            let state = state.clone();
            let reloader = reloader.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                serve_connection(stream, state, reloader, owner_uid, watcher).await;
                drop(slot);
            });
        }

        drop(listener);
        drop(socket);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("admin requests still in flight at the end of the drain timeout");
        }
        tracing::info!("admin socket closed");
    }

    /// Serves on a task of its own until [`AdminHandle::stop`] (or until the handle is
    /// dropped).
    pub fn spawn(self) -> AdminHandle {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.await;
        }));
        AdminHandle {
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A running admin server started with [`AdminServer::spawn`].
#[derive(Debug)]
pub struct AdminHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// Stops accepting, removes the socket file and waits for in-flight requests to finish
    /// (at most [`DRAIN_TIMEOUT`]).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::error!(%error, "the admin server task failed");
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "admin connection ended with an error"),
        Err(_) => tracing::debug!("admin connection closed at its time limit"),
    }
}
