//! A state store that fails under the real binary: the disk refuses a write.
//!
//! The child runs with a file-size limit (`ulimit -f`, with `SIGXFSZ` ignored so the write
//! fails with `EFBIG` instead of killing the process), the way a full or failing disk makes
//! the storage engine's writes fail. Portcullis must then refuse at once, never hang, report
//! itself unhealthy, stop on SIGTERM, and keep every event it answered `202` for.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use portcullis::body::{empty_body, full_body};
use portcullis::config::Config;
use portcullis::policy::Policy;
use portcullis::state::{unix_now, State};

const ORG: &str = "acme";
const TOKEN: &str = "ingest-token-0123456789abcdef";

/// The largest audit file the second test's child may write (KiB): a few hundred records.
const AUDIT_FILE_LIMIT_KIB: u32 = 128;

/// The largest file the limited child may write (`ulimit -f` counts KiB).
const FILE_LIMIT_KIB: u32 = 6 * 1024;

/// A child process, killed if the test ends early.
struct Instance {
    child: KillOnDrop,
    log: std::sync::mpsc::Receiver<String>,
    /// "… listening" lines read while looking for another.
    seen: Vec<String>,
}

impl Instance {
    /// `portcullis serve`, under a file-size limit when `limit_kib` is given.
    fn serve(policy: &std::path::Path, limit_kib: Option<u32>) -> Self {
        let binary = env!("CARGO_BIN_EXE_portcullis");
        let mut command = match limit_kib {
            Some(kib) => {
                let mut command = Command::new("bash");
                command.arg("-c").arg(format!(
                    "trap '' XFSZ; ulimit -f {kib}; exec \"$0\" serve --config \"$1\""
                ));
                command.arg(binary).arg(policy);
                command
            }
            None => {
                let mut command = Command::new(binary);
                command.args(["serve", "--config"]).arg(policy);
                command
            }
        };
        let mut child = command
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash and the binary run");
        let log = child_lines(child.stderr.take().unwrap());
        Self {
            child: KillOnDrop(child),
            log,
            seen: Vec::new(),
        }
    }

    /// The port in the `listen=` field of the first line containing `needle`. Lines read
    /// on the way are kept: the listeners log in whichever order their tasks run.
    fn port(&mut self, needle: &str) -> u16 {
        let line = match self.seen.iter().position(|line| line.contains(needle)) {
            Some(at) => self.seen.remove(at),
            None => loop {
                let line = wait_for_line(&self.log, "listening");
                if line.contains(needle) {
                    break line;
                }
                self.seen.push(line);
            },
        };
        listen_port(&line)
    }

    /// SIGTERM, then the exit status; panics if the process is still there after `within`.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        send_signal(&self.child, "TERM");
        wait_exit(&mut self.child, within)
    }
}

/// `POST /events` with a body of about `size` bytes; status, JSON and headers.
async fn post_event(port: u16, size: usize) -> (StatusCode, serde_json::Value, http::HeaderMap) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let body = serde_json::json!({
        "org": ORG,
        "type": "note.signed",
        "data": {"text": "x".repeat(size)},
    })
    .to_string();
    let request = Request::post(format!("http://127.0.0.1:{port}/events"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(full_body(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("an answer within 10 s, never a hang")
        .expect("the internal listener answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        parts.headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_refuses_at_once_reports_unhealthy_stops_and_loses_no_accepted_event() {
    let pki = test_pki();
    let token = pki.dir.path().join("ingest.token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let settings = Settings {
        internal: true,
        routes: format!(
            "{DEFAULT_ROUTES}\n[webhooks]\nenabled = true\nevent_types = [\"note.signed\"]\n\
             ingest_token_file = \"{}\"\nallow_private_destinations = true\n\
             max_event_bytes = 1048576\n",
            token.display()
        ),
        ..Settings::default()
    };
    let text = policy_text(&pki, "http://127.0.0.1:9", &settings);
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(&policy, &text).unwrap();
    // An organization with one subscription, so every event is stored for delivery.
    {
        let state = State::open(Policy::new(Config::load(&policy).unwrap()).unwrap()).unwrap();
        state.orgs.create(ORG, "Acme", unix_now()).unwrap();
        state
            .subscriptions
            .create(
                ORG,
                &"https://127.0.0.1:1/hook".parse().unwrap(),
                ["note.signed".to_owned()].into_iter().collect(),
                unix_now() as i64,
                10,
            )
            .unwrap();
    }

    let mut limited = Instance::serve(&policy, Some(FILE_LIMIT_KIB));
    let tls_port = limited.port("portcullis listening");
    let internal_port = limited.port("internal listener listening");

    // Large events until the disk refuses one.
    let mut accepted = 0usize;
    let (status, problem, headers) = loop {
        let (status, value, headers) = post_event(internal_port, 900 * 1024).await;
        if status != StatusCode::ACCEPTED {
            break (status, value, headers);
        }
        accepted += 1;
        assert!(accepted < 40, "the file-size limit never refused a write");
    };
    assert!(accepted > 0, "the first events fit");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "webhook.unavailable");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "5");

    // From now on every store call fails fast, even a small one.
    let started = Instant::now();
    let (status, problem, _) = post_event(internal_port, 10).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "webhook.unavailable");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Health says so, for the load balancer.
    let health = Request::get(format!("https://localhost:{tls_port}/healthz"))
        .body(empty_body())
        .unwrap();
    let (parts, body) = send(&h1_client(&pki.paths.ca), health).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "unavailable");
    wait_for_line(&limited.log, "the state store failed");

    // SIGTERM still stops it: nothing waits on the failed engine.
    let status = limited.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");

    // Restarted without the limit: it serves again, and every event it answered 202 for is
    // there, waiting for delivery.
    let mut healthy = Instance::serve(&policy, None);
    let internal_port = healthy.port("internal listener listening");
    let (status, value, _) = post_event(internal_port, 10).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    let status = healthy.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let state = State::open(Policy::new(Config::load(&policy).unwrap()).unwrap()).unwrap();
    let stored = state
        .deliveries
        .outbox()
        .list(Some(ORG), None, None, usize::MAX)
        .unwrap();
    assert_eq!(stored.len(), accepted + 1, "no accepted event was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_trail_that_cannot_be_written_makes_the_instance_unhealthy() {
    let pki = test_pki();
    let text = policy_text(&pki, "http://127.0.0.1:9", &Settings::default());
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(&policy, &text).unwrap();
    // Each answered request adds a line to the audit file, which soon reaches the limit.
    let mut limited = Instance::serve(&policy, Some(AUDIT_FILE_LIMIT_KIB));
    let port = limited.port("portcullis listening");
    let client = h1_client(&pki.paths.ca);
    let health = || {
        Request::get(format!("https://localhost:{port}/healthz"))
            .body(empty_body())
            .unwrap()
    };
    let mut served = 0usize;
    let body = loop {
        let (parts, body) = send(&client, health()).await;
        if parts.status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert_eq!(parts.status, StatusCode::OK);
        served += 1;
        assert!(served < 20_000, "the audit file never reached the limit");
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["reason"], "audit trail");
    wait_for_line(&limited.log, "cannot write the audit trail");
    // Stopping does not wait for a disk that refuses.
    limited.terminate(Duration::from_secs(20));
}
