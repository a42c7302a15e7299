//! Portcullis: a TLS-terminating security sidecar for clinical backends.
//!
//! The crate is organised as the request travels: [`server`] accepts and terminates TLS,
//! [`proxy`] runs the gates in [`gate`], and [`forward`] is the only code that talks to the
//! backend. [`config`] and [`policy`] hold what the operator decided; [`problem`] is the one
//! way a refusal is written. See `docs/architecture.md` for the whole picture.

pub mod admin;
pub mod admin_log;
pub mod audit;
pub mod body;
pub mod builtin;
pub mod config;
pub mod demo;
pub mod forward;
pub mod gate;
pub mod init;
pub mod internal;
pub mod keys;
pub mod local_http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod orgs;
pub mod pki;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod state;
pub mod store;
pub mod webhooks;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The one rustls crypto provider every TLS configuration in the process uses: aws-lc-rs.
///
/// Passing it explicitly to each config builder (instead of relying on a process default)
/// means no other crate's feature choice can silently change the cryptography in use.
pub fn tls_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
