//! `portcullis demo`: the sidecar in front of the bundled fake clinical backend.
//!
//! Everything a newcomer needs is made on the spot: a private CA and server certificate in the
//! data directory, the fake backend on a loopback port, and the sidecar with the demo policy
//! (`config/demo.toml`, compiled in so the command works from any directory).

pub mod backend;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, SourceText};
use crate::pki::{self, PkiError};
use crate::policy::{Policy, PolicyError, PolicyHandle};
use crate::server::{Server, ServerError};
use backend::{DemoBackend, DemoBackendError};

/// The demo policy, as shipped in `config/demo.toml`.
pub const DEMO_POLICY: &str = include_str!("../../config/demo.toml");

/// Where and how the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The sidecar's TLS listen address.
    pub listen: SocketAddr,
    /// Certificates and state.
    pub data_dir: PathBuf,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The data directory could not be created.
    #[error("cannot create the demo data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The fake backend could not start.
    #[error(transparent)]
    Backend(#[from] DemoBackendError),
    /// The demo policy is invalid (a bug in the shipped file).
    #[error("the built-in demo policy is invalid:\n{0}")]
    Config(#[from] ConfigError),
    /// The policy could not be put into service.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The listener could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A running demo: the sidecar is bound and the backend is serving.
pub struct Demo {
    server: Server,
    backend: DemoBackend,
    ca: PathBuf,
}

impl Demo {
    /// Creates certificates if needed, starts the backend and binds the sidecar.
    pub async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        std::fs::create_dir_all(&options.data_dir).map_err(|source| DemoError::DataDir {
            path: options.data_dir.clone(),
            source,
        })?;
        let pki = pki::ensure_dev_pki(
            &options.data_dir.join("certs"),
            &["localhost", "127.0.0.1", "::1"],
        )?;
        let backend = DemoBackend::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;

        let overrides = [
            (
                "server.listen",
                toml::Value::from(options.listen.to_string()),
            ),
            ("server.cert", path_value(&pki.cert)),
            ("server.key", path_value(&pki.key)),
            (
                "upstream.url",
                toml::Value::from(format!("http://{}", backend.local_addr())),
            ),
            ("storage.data_dir", path_value(&options.data_dir)),
        ];
        let source = SourceText::new("config/demo.toml (built in)", DEMO_POLICY);
        let config = Config::parse_with_overrides(&source, &options.data_dir, &overrides)?;
        let server = Server::bind(PolicyHandle::new(Policy::new(config)?)).await?;
        Ok(Self {
            server,
            backend,
            ca: pki.ca,
        })
    }

    /// The sidecar's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The CA certificate clients must trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// The welcome text: URLs and ready-to-paste `curl` lines.
    pub fn banner(&self) -> String {
        let base = format!("https://localhost:{}", self.local_addr().port());
        let ca = self.ca.display();
        format!(
            "Portcullis demo is running (fake data only).\n\
             \n  sidecar  {base}   (TLS; trust the demo CA {ca})\
             \n  backend  http://{backend}   (bundled fake clinical API)\n\
             \nTry:\
             \n  curl --cacert {ca} '{base}/v1/clinical-notes?note_local_id=local_note_demo_123'\
             \n  curl --cacert {ca} '{base}/v1/patients/external-link?external_system=demo_ehr&external_patient_id=ehr_demo_456'\
             \n  curl --cacert {ca} -X POST {base}/v1/patients/link -H 'Content-Type: application/json' \\\
             \n       -d '{{\"external_system\":\"demo_ehr\",\"external_patient_id\":\"ehr_demo_789\",\"patient_local_id\":\"local_pat_demo_124\"}}'\
             \n  curl --cacert {ca} {base}/v1/not-a-route        # 404 route.unknown problem\n\
             \nPress Ctrl-C to stop.",
            backend = self.backend.local_addr(),
        )
    }

    /// Serves until `shutdown` completes, then drains and stops the backend.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        self.server.serve(shutdown).await;
        self.backend.shutdown().await;
    }
}

/// Runs the demo until `shutdown`, printing the banner once everything listens.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let demo = Demo::start(&options).await?;
    println!("{}", demo.banner());
    demo.serve(shutdown).await;
    Ok(())
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::from(path.display().to_string())
}
