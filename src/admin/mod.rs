//! The admin API: keys, organizations, BAA evidence and the admin log, over a local unix
//! socket, and the client the `portcullis keys|orgs|admin-log` commands use.
//!
//! A unix socket rather than a TCP port: it cannot be reached from the network, the file mode
//! (0600) decides who may connect, and the kernel names the connecting user (`SO_PEERCRED`),
//! which becomes the actor of every recorded action (`uid:<n>`). The API is plain HTTP/1.1 with
//! JSON bodies and RFC 9457 problem documents, so `curl --unix-socket` works as well as the CLI.
//!
//! - [`protocol`]: paths and the JSON shapes both sides use;
//! - [`server`]: [`AdminServer`], the listener; `socket` claims the socket file, `router` and
//!   `handlers` answer requests, [`problem`] writes refusals;
//! - [`client`]: [`AdminClient`]; [`cli`]: the commands built on it.

pub mod cli;
pub mod client;
mod handlers;
pub mod problem;
pub mod protocol;
mod router;
pub mod server;
mod socket;

pub use client::{AdminClient, ClientError};
pub use problem::{AdminCode, AdminProblem};
pub use server::{AdminHandle, AdminServer};
pub use socket::{AdminError, DIRECTORY_MODE, SOCKET_MODE};
