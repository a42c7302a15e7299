//! Live reload end to end: real TLS listener, real backends, real clients, the real admin
//! socket, and the real binary taking SIGHUP and `portcullis reload`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use portcullis::admin::protocol::ReloadView;
use portcullis::admin::AdminServer;
use portcullis::admin_log::AdminActionKind;
use portcullis::body::{empty_body, full_body};
use portcullis::config::Config;
use portcullis::keys::Env;
use portcullis::notify::Notifier;
use portcullis::policy::Policy;
use portcullis::reload::{ReloadTrigger, Reloader};
use portcullis::server::tls;
use portcullis::server::Server;
use portcullis::state::{unix_now, State};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A backend that names itself in `x-backend` and holds `/v1/echo/slow` for `slow`.
async fn named_backend(name: &'static str, slow: Duration) -> Backend {
    Backend::start(handler(move |request| async move {
        if request.uri().path().ends_with("/slow") {
            tokio::time::sleep(slow).await;
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("x-backend", name)
            .body(full_body(Bytes::from_static(b"{}")))
            .unwrap()
    }))
    .await
}

/// Routes of policy B: the default echo routes plus one A does not have.
fn routes_with_extra() -> String {
    format!(
        "{DEFAULT_ROUTES}\n[[route]]\nname = \"extra.get\"\nmethod = \"GET\"\npath = \"/v1/extra\"\nany_key = true\n"
    )
}

/// A sidecar started from a policy file, with a reloader over that file.
struct Live {
    pki: TestPki,
    policy: PathBuf,
    state: Arc<State>,
    reloader: Arc<Reloader>,
    addr: SocketAddr,
    key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Live {
    async fn start(pki: TestPki, text: &str) -> Live {
        let policy = pki.dir.path().join("policy.toml");
        std::fs::write(&policy, text).unwrap();
        let config = Config::load(&policy).expect("valid policy");
        let state = State::open(Policy::new(config).unwrap()).unwrap();
        state.orgs.create(TEST_ORG, "Test Org", unix_now()).unwrap();
        let key = mint(&state, TEST_ORG, Env::Test, &["notes:read"]);
        let server = Server::bind(state.clone()).await.unwrap();
        let addr = server.local_addr();
        let reloader = Arc::new(Reloader::new(
            &policy,
            state.clone(),
            server.cert_resolver(),
            Notifier::disabled(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Live {
            pki,
            policy,
            state,
            reloader,
            addr,
            key,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        key: &str,
    ) -> Request<portcullis::body::ProxyBody> {
        Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {key}"))
            .body(empty_body())
            .unwrap()
    }

    async fn get(&self, client: &TestClient, path: &str) -> (http::response::Parts, Bytes) {
        send(client, self.request(Method::GET, path, &self.key)).await
    }

    /// Writes `text` as the policy file and reloads it.
    async fn reload_with(&self, text: &str) -> portcullis::reload::ReloadOutcome {
        std::fs::write(&self.policy, text).unwrap();
        self.reloader.reload(ReloadTrigger::Signal, "sighup").await
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn settings(routes: &str, server: &str) -> Settings {
    Settings {
        routes: routes.to_owned(),
        server: server.to_owned(),
        ..Settings::default()
    }
}

fn backend_of(parts: &http::response::Parts) -> &str {
    parts
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The SHA-256 of the certificate a fresh TLS handshake with `addr` is served, trusting
/// every CA in `cas`.
async fn served_fingerprint(addr: SocketAddr, cas: &[&Path]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(portcullis::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    sha256_hex(leaf.as_ref())
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_fingerprint(cert: &Path, key: &Path) -> String {
    tls::fingerprint(&tls::load_certified_key(cert, key).unwrap())
}

/// Replaces `to` with the contents of `from` in one rename, as renewal tools do.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

async fn wait_for_fingerprint(addr: SocketAddr, cas: &[&Path], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if served_fingerprint(addr, cas).await == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reload under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request_and_each_takes_effect() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    // Limits high enough that the load loop measures reloads, not the rate limiter.
    let unlimited = "\n[ratelimit]\nrequests_per_minute = 1000000\nburst = 100000\n";
    let text_a = policy_text(
        &pki,
        &a.url(),
        &settings(&format!("{DEFAULT_ROUTES}{unlimited}"), ""),
    );
    let text_b = policy_text(
        &pki,
        &b.url(),
        &settings(&format!("{}{unlimited}", routes_with_extra()), ""),
    );
    let live = Arc::new(Live::start(pki, &text_a).await);

    // Clients hammer the sidecar over kept-alive HTTP/1.1 and HTTP/2 connections throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for i in 0..4 {
        let client = if i % 2 == 0 {
            h1_client(&live.pki.paths.ca)
        } else {
            h2_client(&live.pki.paths.ca)
        };
        let (live, stop, ok, failures) = (live.clone(), stop.clone(), ok.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = live.request(Method::GET, "/v1/echo/load", &live.key);
                match client.request(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => failures.lock().unwrap().push(response.status().to_string()),
                    Err(error) => failures.lock().unwrap().push(error.to_string()),
                }
            }
        }));
    }

    let probe = h1_client(&live.pki.paths.ca);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let to_b = round % 2 == 0;
        let reload_started = Instant::now();
        let outcome = live.reload_with(if to_b { &text_b } else { &text_a }).await;
        slowest = slowest.max(reload_started.elapsed());
        assert!(outcome.is_applied(), "round {round}: {:?}", outcome.result);
        assert_eq!(outcome.result.as_ref().unwrap().generation, round + 1);
        // A request sent after the reload returned runs on the new policy: its backend and
        // its routes.
        let (parts, _) = live.get(&probe, "/v1/echo/probe").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            backend_of(&parts),
            if to_b { "b" } else { "a" },
            "round {round}"
        );
        let (parts, body) = live.get(&probe, "/v1/extra").await;
        if to_b {
            assert_eq!(parts.status, StatusCode::OK, "round {round}");
        } else {
            assert_eq!(parts.status, StatusCode::NOT_FOUND, "round {round}");
            assert_eq!(problem(&parts, &body)["code"], "route.unknown");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.unwrap();
    }
    let served = ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "{served} requests, {} failures over 20 reloads in {:?} (slowest reload {:?})",
        failures.len(),
        started.elapsed(),
        slowest
    );
    assert!(
        failures.is_empty(),
        "requests failed across reloads: {failures:?}"
    );
    assert!(served >= 100, "the load loop barely ran: {served}");
    assert!(a.hits() > 0 && b.hits() > 0);
    let scrape = live.state.metrics.render().unwrap();
    assert!(
        scrape.contains("portcullis_config_reloads_total{result=\"success\"} 20"),
        "every reload is counted: {scrape}"
    );
    Arc::try_unwrap(live).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_finishes_on_the_policy_it_started_with() {
    let a = named_backend("a", Duration::from_millis(800)).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    let text_a = policy_text(&pki, &a.url(), &Settings::default());
    let text_b = policy_text(&pki, &b.url(), &Settings::default());
    let live = Arc::new(Live::start(pki, &text_a).await);
    let client = h1_client(&live.pki.paths.ca);
    let slow = {
        let (live, client) = (live.clone(), client.clone());
        tokio::spawn(async move { live.get(&client, "/v1/echo/slow").await })
    };
    while a.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(live.reload_with(&text_b).await.is_applied());
    let (parts, _) = live.get(&client, "/v1/echo/now").await;
    assert_eq!(backend_of(&parts), "b");
    let (parts, _) = slow.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(
        backend_of(&parts),
        "a",
        "the in-flight request kept its policy"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused reloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_changes_nothing_and_says_why() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    let text_a = policy_text(&pki, &a.url(), &Settings::default());
    let text_b = policy_text(&pki, &b.url(), &Settings::default());
    let live = Live::start(pki, &text_a).await;
    let client = h1_client(&live.pki.paths.ca);
    let before = served_fingerprint(live.addr, &[&live.pki.paths.ca]).await;

    let other_dir = live.pki.dir.path().join("elsewhere");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "syntax error",
            text_b.replacen("[server]", "[server", 1),
            vec!["policy.toml:1:"],
        ),
        (
            "invalid value",
            text_b.replacen("[server]\n", "[server]\nmax_headers = 0\n", 1),
            vec!["server.max_headers: must be between 1 and 1000"],
        ),
        (
            "changed listen address",
            text_b.replacen("127.0.0.1:0", "127.0.0.1:1", 1),
            vec![
                "server.listen: cannot change while portcullis runs",
                "restart",
            ],
        ),
        (
            "changed data directory and admin socket",
            text_b.replacen(
                &format!("data_dir = \"{}\"", live.pki.dir.path().display()),
                &format!(
                    "data_dir = \"{}\"\n[admin]\nsocket = \"{}/a.sock\"",
                    other_dir.display(),
                    other_dir.display()
                ),
                1,
            ),
            vec![
                "storage.data_dir: cannot change",
                "admin.socket: cannot change",
            ],
        ),
        (
            "unknown key",
            text_b.replacen("[upstream]\n", "[upstream]\ntimeout = \"1s\"\n", 1),
            vec!["upstream.timeout: unknown field"],
        ),
        (
            "zero certificate check interval",
            text_b.replacen("[server]\n", "[server]\ncert_check_interval = \"0s\"\n", 1),
            vec!["policy.toml:2:23: server.cert_check_interval: must be longer than zero"],
        ),
    ];
    for (what, text, wanted) in cases {
        let outcome = live.reload_with(&text).await;
        let error = outcome.result.expect_err(what);
        let reasons = error.reasons().join("\n");
        for needle in wanted {
            assert!(reasons.contains(needle), "{what}: {reasons}");
        }
        let (parts, _) = live.get(&client, "/v1/echo/x").await;
        assert_eq!(parts.status, StatusCode::OK, "{what}");
        assert_eq!(
            backend_of(&parts),
            "a",
            "{what}: the old policy keeps serving"
        );
    }

    // Every reason at once: a start-only change and a key that does not load.
    let broken_key = live.pki.dir.path().join("broken.key");
    std::fs::write(
        &broken_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = text_b.replacen("127.0.0.1:0", "127.0.0.1:1", 1).replacen(
        &live.pki.paths.key.display().to_string(),
        &broken_key.display().to_string(),
        1,
    );
    let error = live.reload_with(&text).await.result.unwrap_err();
    let reasons = error.reasons();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("server.listen"), "{reasons:?}");
    assert!(
        reasons[1].contains("cannot load private key"),
        "{reasons:?}"
    );
    assert_eq!(
        served_fingerprint(live.addr, &[&live.pki.paths.ca]).await,
        before,
        "the certificate was not touched"
    );

    // A key from another pair: refused, old certificate kept.
    let other = portcullis::pki::generate_dev_pki(
        &live.pki.dir.path().join("other"),
        &["localhost", "127.0.0.1"],
    )
    .unwrap();
    let text = text_b.replacen(
        &live.pki.paths.key.display().to_string(),
        &other.key.display().to_string(),
        1,
    );
    let reasons = live.reload_with(&text).await.result.unwrap_err().reasons();
    assert!(
        reasons[0].contains("does not match certificate"),
        "{reasons:?}"
    );

    // The reloader still works once the file is right.
    assert!(live.reload_with(&text_b).await.is_applied());
    let (parts, _) = live.get(&client, "/v1/echo/x").await;
    assert_eq!(backend_of(&parts), "b");
    let scrape = live.state.metrics.render().unwrap();
    let refused = scrape
        .lines()
        .find_map(|line| line.strip_prefix("portcullis_config_reloads_total{result=\"failure\"} "))
        .and_then(|count| count.parse::<u64>().ok());
    assert!(
        refused.is_some_and(|count| count >= 3),
        "refusals are counted: {scrape}"
    );
    assert!(scrape.contains("portcullis_config_reloads_total{result=\"success\"} 1"));
    live.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Limits survive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_and_a_changed_limit_applies() {
    let a = named_backend("a", Duration::ZERO).await;
    let pki = test_pki();
    let routes = |writes_burst: u32| {
        format!(
            "[[route]]\nname = \"echo.get\"\nmethod = \"GET\"\npath = \"/v1/echo/{{*rest}}\"\nany_key = true\n\n\
             [[route]]\nname = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{{*rest}}\"\nany_key = true\n\
             limit = \"writes\"\nidempotency = false\n\n\
             [ratelimit]\nrequests_per_minute = 1\nburst = 3\nheaders = \"draft\"\n\
             [ratelimit.classes.writes]\nrequests_per_minute = 1\nburst = {writes_burst}\n"
        )
    };
    let text_a = policy_text(&pki, &a.url(), &settings(&routes(10), ""));
    let text_b = policy_text(&pki, &a.url(), &settings(&routes(1), ""));
    let live = Live::start(pki, &text_a).await;
    let client = h1_client(&live.pki.paths.ca);
    let other = mint(&live.state, TEST_ORG, Env::Test, &[]);

    // The test key spends its whole default bucket.
    for _ in 0..3 {
        assert_eq!(
            live.get(&client, "/v1/echo/x").await.0.status,
            StatusCode::OK
        );
    }
    let (parts, body) = live.get(&client, "/v1/echo/x").await;
    assert_eq!(problem(&parts, &body)["code"], "rate.limited");

    assert!(live.reload_with(&text_b).await.is_applied());

    // Its default limit did not change, so its empty bucket was kept: still refused.
    let (parts, body) = live.get(&client, "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem(&parts, &body)["code"], "rate.limited");
    assert!(parts.headers.contains_key("retry-after"));

    // The changed class limit applies at once: one write, then the class refuses.
    let post = || live.request(Method::POST, "/v1/echo/w", &other);
    assert_eq!(send(&client, post()).await.0.status, StatusCode::OK);
    let (parts, body) = send(&client, post()).await;
    assert_eq!(problem(&parts, &body)["code"], "rate.limited");
    let policy = parts.headers["ratelimit-policy"].to_str().unwrap();
    assert!(policy.contains("\"writes\""), "{policy}");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_quota_stays_spent_across_a_reload() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    let routes = format!("{DEFAULT_ROUTES}\n[ratelimit]\ndaily_quota = 2\n");
    let text_a = policy_text(&pki, &a.url(), &settings(&routes, ""));
    let text_b = policy_text(&pki, &b.url(), &settings(&routes, ""));
    let live = Live::start(pki, &text_a).await;
    let client = h1_client(&live.pki.paths.ca);
    for _ in 0..2 {
        assert_eq!(
            live.get(&client, "/v1/echo/q").await.0.status,
            StatusCode::OK
        );
    }
    let (parts, body) = live.get(&client, "/v1/echo/q").await;
    assert_eq!(problem(&parts, &body)["code"], "quota.exceeded");

    assert!(live.reload_with(&text_b).await.is_applied());
    let (parts, body) = live.get(&client, "/v1/echo/q").await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem(&parts, &body)["code"], "quota.exceeded");
    assert!(parts.headers.contains_key("retry-after"));
    assert_eq!(b.hits(), 0, "nothing reached the new backend");
    live.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_handshakes() {
    let a = named_backend("a", Duration::ZERO).await;
    let pki = test_pki();
    let text = policy_text(&pki, &a.url(), &Settings::default());
    let live = Live::start(pki, &text).await;
    let first_ca = live.pki.paths.ca.clone();
    let second = portcullis::pki::generate_dev_pki(
        &live.pki.dir.path().join("second"),
        &["localhost", "127.0.0.1"],
    )
    .unwrap();
    let cas = [first_ca.as_path(), second.ca.as_path()];
    let original = file_fingerprint(&live.pki.paths.cert, &live.pki.paths.key);
    assert_eq!(served_fingerprint(live.addr, &cas).await, original);

    // A new pair from a second CA for the same names, under the same file names.
    replace_file(&second.key, &live.pki.paths.key);
    replace_file(&second.cert, &live.pki.paths.cert);
    let outcome = live
        .reloader
        .reload(ReloadTrigger::AdminSocket, "uid:0")
        .await;
    let renewed = file_fingerprint(&second.cert, &second.key);
    assert_ne!(renewed, original);
    assert_eq!(outcome.result.unwrap().certificate_sha256, renewed);
    assert_eq!(served_fingerprint(live.addr, &cas).await, renewed);

    // A client that trusts only the second CA now gets through.
    let client = h1_client(&second.ca);
    let (parts, _) = live.get(&client, "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::OK);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_files_are_picked_up_without_a_signal_and_a_half_written_pair_waits() {
    let a = named_backend("a", Duration::ZERO).await;
    let pki = test_pki();
    // certbot's layout: live/ symlinks pointing into archive/.
    let dir = pki.dir.path().to_owned();
    std::fs::create_dir_all(dir.join("archive")).unwrap();
    std::fs::create_dir_all(dir.join("live")).unwrap();
    std::fs::copy(&pki.paths.cert, dir.join("archive/cert1.pem")).unwrap();
    std::fs::copy(&pki.paths.key, dir.join("archive/key1.pem")).unwrap();
    let (live_cert, live_key) = (dir.join("live/cert.pem"), dir.join("live/key.pem"));
    std::os::unix::fs::symlink(dir.join("archive/cert1.pem"), &live_cert).unwrap();
    std::os::unix::fs::symlink(dir.join("archive/key1.pem"), &live_key).unwrap();
    let text = policy_text(
        &pki,
        &a.url(),
        &settings("", "cert_check_interval = \"100ms\""),
    )
    .replacen(
        &pki.paths.cert.display().to_string(),
        &live_cert.display().to_string(),
        1,
    )
    .replacen(
        &pki.paths.key.display().to_string(),
        &live_key.display().to_string(),
        1,
    );
    let live = Live::start(pki, &text).await;
    let original = file_fingerprint(&live_cert, &live_key);

    let second =
        portcullis::pki::generate_dev_pki(&dir.join("second"), &["localhost", "127.0.0.1"])
            .unwrap();
    let third = portcullis::pki::generate_dev_pki(&dir.join("third"), &["localhost"]).unwrap();
    let first_ca = live.pki.paths.ca.clone();
    let cas = [first_ca.as_path(), second.ca.as_path(), third.ca.as_path()];
    assert_eq!(served_fingerprint(live.addr, &cas).await, original);

    // Renewal, certbot style: new files in archive/, then the symlinks repointed.
    std::fs::copy(&second.cert, dir.join("archive/cert2.pem")).unwrap();
    std::fs::copy(&second.key, dir.join("archive/key2.pem")).unwrap();
    let repoint = |link: &Path, target: PathBuf| {
        let tmp = link.with_extension("new");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    };
    repoint(&live_cert, dir.join("archive/cert2.pem"));
    repoint(&live_key, dir.join("archive/key2.pem"));
    let renewed = file_fingerprint(&second.cert, &second.key);
    wait_for_fingerprint(live.addr, &cas, &renewed).await;

    // Half a renewal: the certificate of the third pair with the second pair's key. It does
    // not match, so the second pair stays in service...
    std::fs::copy(&third.cert, dir.join("archive/cert3.pem")).unwrap();
    repoint(&live_cert, dir.join("archive/cert3.pem"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_fingerprint(live.addr, &cas).await, renewed);
    let client = h1_client(&second.ca);
    assert_eq!(
        live.get(&client, "/v1/echo/x").await.0.status,
        StatusCode::OK
    );

    // ...until the matching key arrives.
    std::fs::copy(&third.key, dir.join("archive/key3.pem")).unwrap();
    repoint(&live_key, dir.join("archive/key3.pem"));
    let last = file_fingerprint(&third.cert, &third.key);
    wait_for_fingerprint(live.addr, &cas, &last).await;

    // Each swap is in the admin log with the certificate's digest; the half pair is not.
    let want = vec![
        ("portcullis".to_owned(), last[..32].to_owned()),
        ("portcullis".to_owned(), renewed[..32].to_owned()),
    ];
    let started = Instant::now();
    loop {
        let renewals: Vec<(String, String)> = live
            .state
            .admin_log
            .list(50)
            .unwrap()
            .into_iter()
            .filter(|a| a.action == AdminActionKind::CertificateRenewed)
            .map(|a| (a.actor, a.target))
            .collect();
        if renewals == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{renewals:?} != {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The admin endpoint, in process

async fn admin_call(socket: &Path, method: Method, body: &str) -> (http::response::Parts, Bytes) {
    let stream = UnixStream::connect(socket).await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri("/v1/reload")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full_body(body.to_owned()))
        .unwrap();
    send_over(stream, request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_reloads_or_answers_a_problem_with_every_reason() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    let text_a = policy_text(&pki, &a.url(), &Settings::default());
    let text_b = policy_text(&pki, &b.url(), &Settings::default());
    let live = Live::start(pki, &text_a).await;
    let socket = live.pki.dir.path().join("run/admin.sock");
    let admin = AdminServer::bind(live.state.clone(), &socket)
        .unwrap()
        .with_reloader(live.reloader.clone())
        .spawn();
    let client = h1_client(&live.pki.paths.ca);

    std::fs::write(
        &live.policy,
        text_b.replacen("127.0.0.1:0", "127.0.0.1:1", 1).replacen(
            "[server]\n",
            "[server]\nmax_headers = 0\n",
            1,
        ),
    )
    .unwrap();
    let (parts, body) = admin_call(&socket, Method::POST, "").await;
    assert_eq!(parts.status, StatusCode::UNPROCESSABLE_ENTITY);
    let json = problem(&parts, &body);
    assert_eq!(json["code"], "admin.reload_refused");
    assert_eq!(parts.headers["cache-control"], "no-store");
    let reasons: Vec<String> = serde_json::from_value(json["reasons"].clone()).unwrap();
    assert_eq!(
        reasons.len(),
        1,
        "validation stops before the comparison: {reasons:?}"
    );
    assert!(reasons[0].contains("server.max_headers"), "{reasons:?}");
    assert_eq!(backend_of(&live.get(&client, "/v1/echo/x").await.0), "a");

    std::fs::write(&live.policy, &text_b).unwrap();
    let (parts, body) = admin_call(&socket, Method::POST, "{}").await;
    assert_eq!(parts.status, StatusCode::OK);
    let view: ReloadView = serde_json::from_slice(&body).unwrap();
    assert_eq!(view.result, "applied");
    assert_eq!(view.generation, 1);
    assert_eq!(view.routes, 5);
    assert_eq!(
        view.certificate_sha256,
        file_fingerprint(&live.pki.paths.cert, &live.pki.paths.key)
    );
    assert_eq!(backend_of(&live.get(&client, "/v1/echo/x").await.0), "b");

    let (parts, body) = admin_call(&socket, Method::GET, "").await;
    assert_eq!(parts.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(parts.headers["allow"], "POST");
    assert_eq!(problem(&parts, &body)["code"], "admin.method_not_allowed");

    let (parts, body) = admin_call(&socket, Method::POST, "{\"force\":true}").await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem(&parts, &body)["code"], "admin.invalid");
    admin.stop().await;

    // An instance without a policy file (the demo) has nothing to reload.
    let bare = AdminServer::bind(live.state.clone(), &socket)
        .unwrap()
        .spawn();
    let (parts, body) = admin_call(&socket, Method::POST, "").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(problem(&parts, &body)["code"], "admin.not_found");
    bare.stop().await;
    live.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary: SIGHUP and `portcullis reload`

/// A `portcullis serve` child, killed when dropped.
struct Running {
    child: KillOnDrop,
    port: u16,
    log: mpsc::Receiver<String>,
}

impl Running {
    fn start(policy: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            // Started the way an operator often does, from the policy's directory with a
            // relative path, so relative paths in the file must survive a reload.
            .current_dir(policy.parent().unwrap())
            .args(["serve", "--config"])
            .arg(policy.file_name().unwrap())
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = child_lines(child.stderr.take().unwrap());
        let mut running = Running {
            child: KillOnDrop(child),
            port: 0,
            log,
        };
        running.port = listen_port(&running.wait_for_line("portcullis listening"));
        running
    }

    fn wait_for_line(&self, needle: &str) -> String {
        wait_for_line(&self.log, needle)
    }

    fn signal(&self, name: &str) {
        send_signal(&self.child, name);
    }
}

fn portcullis_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_LOG", "off")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_reload_command_reload_a_running_binary() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let pki = test_pki();
    let text_a = policy_text(&pki, &a.url(), &Settings::default());
    let text_b = policy_text(&pki, &b.url(), &settings(&routes_with_extra(), ""));
    // Every file the policy names, relative to the policy's directory.
    let dir = format!("{}/", pki.dir.path().display());
    let data_dir = format!("data_dir = \"{}\"", pki.dir.path().display());
    let relative = |text: String| {
        text.replace(&dir, "")
            .replace(&data_dir, "data_dir = \".\"")
    };
    let (text_a, text_b) = (relative(text_a), relative(text_b));
    assert!(text_a.contains("data_dir = \".\""), "{text_a}");
    assert!(text_a.contains("\"certs/"), "{text_a}");
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(&policy, &text_a).unwrap();
    // Provision an organization and a key, as an operator would before the first start.
    let key = {
        let state = State::open(Policy::new(Config::load(&policy).unwrap()).unwrap()).unwrap();
        state.orgs.create(TEST_ORG, "Test Org", unix_now()).unwrap();
        mint(&state, TEST_ORG, Env::Test, &[])
    };
    let running = Running::start(&policy);
    let client = h1_client(&pki.paths.ca);
    let get = |path: &str| {
        Request::get(format!("https://localhost:{}{path}", running.port))
            .header("authorization", format!("Bearer {key}"))
            .body(empty_body())
            .unwrap()
    };
    assert_eq!(backend_of(&send(&client, get("/v1/echo/x")).await.0), "a");

    // SIGHUP with policy B.
    std::fs::write(&policy, &text_b).unwrap();
    let digest_b = sha256_hex(text_b.as_bytes());
    running.signal("HUP");
    running.wait_for_line("policy reloaded");
    assert_eq!(backend_of(&send(&client, get("/v1/echo/x")).await.0), "b");
    assert_eq!(
        send(&client, get("/v1/extra")).await.0.status,
        StatusCode::OK
    );

    // SIGHUP with a broken file: refused, logged at warn with the reason, B keeps serving.
    let moved = text_a.replacen("127.0.0.1:0", "127.0.0.1:1", 1);
    std::fs::write(&policy, &moved).unwrap();
    running.signal("HUP");
    let line = running.wait_for_line("reload refused");
    assert!(
        line.contains("WARN") && line.contains("server.listen"),
        "{line}"
    );
    assert_eq!(backend_of(&send(&client, get("/v1/echo/x")).await.0), "b");

    // `portcullis reload` with a broken file: exit 1, every reason printed.
    let keyless = moved.replacen(
        &pki.paths.key.display().to_string().replace(&dir, ""),
        "/nonexistent/key.pem",
        1,
    );
    std::fs::write(&policy, &keyless).unwrap();
    let socket = pki.dir.path().join("admin.sock");
    let out = portcullis_cli(&["reload", "--admin-socket", socket.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Reload refused"), "{stderr}");
    assert!(
        stderr.contains("server.key: cannot read /nonexistent/key.pem"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(backend_of(&send(&client, get("/v1/echo/x")).await.0), "b");

    // A file that is not even TOML: the CLI (finding the socket through --config) says why
    // without asking the instance.
    std::fs::write(&policy, "[server\n").unwrap();
    let out = portcullis_cli(&["reload", "--config", policy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("policy.toml:1:"), "{stderr}");

    // Fixed again: `portcullis reload --config` finds the socket from the policy and succeeds.
    std::fs::write(&policy, &text_a).unwrap();
    let out = portcullis_cli(&["reload", "--config", policy.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Reloaded the policy (reload 2 since start)"),
        "{stdout}"
    );
    assert_eq!(backend_of(&send(&client, get("/v1/echo/x")).await.0), "a");
    assert_eq!(
        send(&client, get("/v1/extra")).await.0.status,
        StatusCode::NOT_FOUND
    );

    // `--json` prints the server's answer.
    let out = portcullis_cli(&[
        "reload",
        "--json",
        "--admin-socket",
        socket.to_str().unwrap(),
    ]);
    let view: ReloadView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view.generation, 3);
    assert_eq!(view.policy_sha256, sha256_hex(text_a.as_bytes()));

    // Every reload the instance was asked for is in the admin log, with who asked and which
    // file it read (the unparsable one was refused by the CLI and never reached it).
    let out = portcullis_cli(&[
        "admin-log",
        "--json",
        "--admin-socket",
        socket.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reloads: Vec<(String, String, String)> = list["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"].as_str().unwrap().starts_with("policy_"))
        .map(|a| {
            let field = |name: &str| a[name].as_str().unwrap().to_owned();
            (field("action"), field("actor"), field("target"))
        })
        .collect();
    let uid = format!(
        "uid:{}",
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&policy).unwrap())
    );
    let short = |hex: &str| hex[..32].to_owned();
    let digest_a = sha256_hex(text_a.as_bytes());
    assert_eq!(
        reloads,
        [
            ("policy_reloaded".into(), uid.clone(), short(&digest_a)),
            ("policy_reloaded".into(), uid.clone(), short(&digest_a)),
            (
                "policy_reload_refused".into(),
                uid.clone(),
                short(&sha256_hex(keyless.as_bytes()))
            ),
            (
                "policy_reload_refused".into(),
                "sighup".into(),
                short(&sha256_hex(moved.as_bytes()))
            ),
            ("policy_reloaded".into(), "sighup".into(), short(&digest_b)),
        ],
        "newest first"
    );

    running.signal("TERM");
    running.wait_for_line("portcullis stopped");

    // The same entries, oldest first, are admin records of the audit trail, whose chain
    // verifies through the real binary.
    let audit = pki.dir.path().join("audit");
    let mut audited = Vec::new();
    for file in portcullis::audit::files::list(&audit).unwrap() {
        for line in std::fs::read_to_string(&file.path).unwrap().lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            if record["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("policy_"))
            {
                let field = |name: &str| record[name].as_str().unwrap().to_owned();
                audited.push((field("action"), field("actor"), field("target")));
            }
        }
    }
    audited.reverse();
    assert_eq!(audited, reloads, "the audit trail holds every reload");
    let out = portcullis_cli(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing is listening any more: the CLI says so and fails.
    let out = portcullis_cli(&["reload", "--admin-socket", socket.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is portcullis running?"), "{stderr}");
}
