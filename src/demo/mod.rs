//! `portcullis demo`: the sidecar in front of the bundled fake clinical backend.
//!
//! Everything a newcomer needs is made on the spot: a private CA and server certificate in the
//! data directory, the fake backend on a loopback port, and the sidecar with the demo policy
//! (`config/demo.toml`, compiled in so the command works from any directory).

pub mod backend;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::admin::{AdminError, AdminServer};
use crate::admin_log::{AdminActionKind, AdminLogError};
use crate::config::{Config, ConfigError, SourceText};
use crate::internal::{InternalError, InternalServer};
use crate::keys::{Env, KeyError, MintRequest, Secret};
use crate::orgs::OrgError;
use crate::pki::{self, PkiError};
use crate::policy::{Policy, PolicyError};
use crate::server::{Server, ServerError};
use crate::state::{unix_now, State, StateError};
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
    /// The store or registries could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// The demo organization could not be created.
    #[error(transparent)]
    Org(#[from] OrgError),
    /// The demo key could not be minted.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The demo's admin actions could not be recorded.
    #[error(transparent)]
    AdminLog(#[from] AdminLogError),
    /// The admin socket could not be opened.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The internal (metrics) listener could not be bound.
    #[error(transparent)]
    Internal(#[from] InternalError),
}

/// The organization the demo key belongs to.
pub const DEMO_ORG: &str = "demo-clinic";

/// Who the demo's own admin actions are recorded as.
const DEMO_ACTOR: &str = "portcullis-demo";

/// Scopes of the demo key: it can read notes and links but not create links, so the banner
/// can show a `403 perm.denied` next to the successes.
const DEMO_SCOPES: [&str; 2] = ["notes:read", "patients:read"];

/// A running demo: the sidecar is bound and the backend is serving.
pub struct Demo {
    server: Server,
    admin: AdminServer,
    internal: InternalServer,
    backend: DemoBackend,
    state: std::sync::Arc<State>,
    ca: PathBuf,
    key: Secret,
}

impl Demo {
    /// Creates certificates if needed, starts the backend and binds the sidecar.
    pub async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        let data_error = |source| DemoError::DataDir {
            path: options.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&options.data_dir).map_err(data_error)?;
        // Absolute from here on, so paths printed and written into the policy mean the same
        // thing whatever the working directory.
        let data_dir = std::fs::canonicalize(&options.data_dir).map_err(data_error)?;
        let pki = pki::ensure_dev_pki(&data_dir.join("certs"), &["localhost", "127.0.0.1", "::1"])?;
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
            ("storage.data_dir", path_value(&data_dir)),
            // The metrics listener on a free loopback port, printed in the banner.
            ("internal.listen", toml::Value::from("127.0.0.1:0")),
        ];
        let source = SourceText::new("config/demo.toml (built in)", DEMO_POLICY);
        let config = Config::parse_with_overrides(&source, &data_dir, &overrides)?;
        let state = State::open(Policy::new(config)?)?;
        let key = mint_demo_key(&state)?;
        let socket = state.policies.current().config.admin.socket.clone();
        let admin = AdminServer::bind(state.clone(), &socket)?;
        let internal_listen = state
            .policies
            .current()
            .config
            .internal
            .as_ref()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |internal| {
                internal.listen
            });
        let internal = InternalServer::bind(state.clone(), internal_listen).await?;
        let server = Server::bind(state.clone()).await?;
        Ok(Self {
            server,
            admin,
            internal,
            backend,
            state,
            ca: pki.ca,
            key,
        })
    }

    /// The sandbox key minted for this run (shown once, in the banner).
    pub fn key(&self) -> &Secret {
        &self.key
    }

    /// The shared state, e.g. for the admin socket.
    pub fn state(&self) -> &std::sync::Arc<State> {
        &self.state
    }

    /// The sidecar's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The internal listener's bound address (`/metrics`).
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal.local_addr()
    }

    /// The CA certificate clients must trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// The welcome text: the sandbox key, URLs and ready-to-paste `curl` lines.
    pub fn banner(&self) -> String {
        let base = format!("https://localhost:{}", self.local_addr().port());
        let ca = self.ca.display();
        let key = self.key.expose_secret();
        let socket = self
            .state
            .policies
            .current()
            .config
            .admin
            .socket
            .display()
            .to_string();
        let curl = format!("curl --cacert {ca} -H 'Authorization: Bearer {key}'");
        format!(
            "Portcullis demo is running (fake data only).\n\
             \n  sidecar       {base}   (TLS; trust the demo CA {ca})\
             \n  backend       http://{backend}   (bundled fake clinical API)\
             \n  organization  {DEMO_ORG}\
             \n  sandbox key   {key}\
             \n                (scopes: notes:read, patients:read; shown once, stored only as a hash)\
             \n  admin socket  {socket}\
             \n  metrics       http://{internal}/metrics   (internal listener, loopback only)\n\
             \nTry:\
             \n  {curl} '{base}/v1/clinical-notes?note_local_id=local_note_demo_123'\
             \n  {curl} '{base}/v1/patients/external-link?external_system=demo_ehr&external_patient_id=ehr_demo_456'\
             \n  {curl} {base}/v1/auth/whoami\
             \n  {curl} -X POST {base}/v1/patients/link -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-link-001' \\\
             \n       -d '{{\"external_system\":\"demo_ehr\",\"external_patient_id\":\"ehr_demo_789\",\"patient_local_id\":\"local_pat_demo_124\"}}'   # 403 perm.denied\
             \n  curl --cacert {ca} '{base}/v1/clinical-notes'        # 401 auth.missing\
             \n  portcullis keys list --admin-socket {socket}\n\
             \nPress Ctrl-C to stop.",
            backend = self.backend.local_addr(),
            internal = self.internal_addr(),
        )
    }

    /// The admin socket the `portcullis keys|orgs` commands can reach this demo on.
    pub fn admin_socket(&self) -> &Path {
        self.admin.path()
    }

    /// Serves the sidecar and the admin socket until `shutdown` completes, then drains, closes
    /// the admin socket and stops the backend.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let admin = self.admin.spawn();
        let internal = self.internal.spawn();
        self.server.serve(shutdown).await;
        internal.stop().await;
        admin.stop().await;
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

/// Creates the demo organization on first run and mints a fresh sandbox key for this run.
fn mint_demo_key(state: &State) -> Result<Secret, DemoError> {
    let now = unix_now();
    if state.orgs.get(DEMO_ORG).is_none() {
        state.orgs.create(DEMO_ORG, "Demo Clinic", now)?;
        state.admin_log.append(
            AdminActionKind::OrgCreated,
            DEMO_ACTOR,
            DEMO_ORG,
            Some(DEMO_ORG),
            now,
        )?;
    }
    let scopes = DEMO_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let mut request = MintRequest::new(DEMO_ORG, Env::Test, scopes);
    request.label = Some("portcullis demo".to_owned());
    let minted = state.keys.mint(request, now)?;
    state.admin_log.append(
        AdminActionKind::KeyMinted,
        DEMO_ACTOR,
        &minted.record.id.to_string(),
        Some(DEMO_ORG),
        now,
    )?;
    Ok(minted.key)
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::from(path.display().to_string())
}
