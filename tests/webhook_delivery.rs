//! Webhook delivery end to end: the real internal listener takes events, the real worker
//! delivers them over real HTTPS to in-process receivers (certificates from
//! `portcullis::pki`, trusted through `webhooks.ca_file`), the real TLS listener answers the
//! delivery status endpoint, the real admin socket redelivers from the dead-letter queue,
//! and a real `portcullis serve` child is killed with SIGKILL mid-stream.
//!
//! Time is a manual clock: the retry schedule runs in milliseconds of test time.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::admin::protocol::{
    DeliveryList, RedeliverRequest, RedeliverResponse, WEBHOOK_DLQ_PATH, WEBHOOK_REDELIVER_PATH,
};
use portcullis::admin::{AdminClient, AdminHandle, AdminServer};
use portcullis::body::{empty_body, full_body, ProxyBody};
use portcullis::config::{Config, SourceText};
use portcullis::gate::ratelimit::ManualClock;
use portcullis::internal::{InternalHandle, InternalServer};
use portcullis::keys::Env;
use portcullis::policy::Policy;
use portcullis::server::Server;
use portcullis::state::{unix_now, State};
use portcullis::webhooks::delivery::DeliveryStatus;
use portcullis::webhooks::secret::Secret;
use portcullis::webhooks::sign::{self, Scheme};
use portcullis::webhooks::subscriptions::{SubscriptionId, SubscriptionStatus};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "ingest-token-0123456789abcdef";
const ORG: &str = "acme";
const OTHER_ORG: &str = "globex";

// ---------------------------------------------------------------------------------------------
// Harness

type Plain = Client<HttpConnector, ProxyBody>;

/// A sidecar with webhooks on, its internal listener and admin socket, on a manual clock.
struct Hooks {
    pki: TestPki,
    text: String,
    state: Arc<State>,
    clock: Arc<ManualClock>,
    addr: SocketAddr,
    internal: Option<InternalHandle>,
    admin: Option<AdminHandle>,
    socket: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// A key of [`ORG`] with `manage_webhooks`.
    key: String,
    /// A key of [`OTHER_ORG`] with `manage_webhooks`.
    other_key: String,
    /// A key of [`ORG`] without it.
    weak_key: String,
    tls: TestClient,
    plain: Plain,
}

fn webhooks_section(pki: &TestPki, extra: &str) -> String {
    let token = pki.dir.path().join("ingest.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[webhooks]\nenabled = true\nevent_types = [\"note.signed\", \"lab.result\"]\n\
         ingest_token_file = \"{token}\"\n{private}\
         ca_file = \"{ca}\"\nretry_jitter = 0.0\n{schedule}\
         delivery_timeout = \"3s\"\nmax_event_bytes = 4096\n{extra}\n",
        token = token.display(),
        ca = pki.paths.ca.display(),
        private = if extra.contains("allow_private_destinations") {
            ""
        } else {
            "allow_private_destinations = true\n"
        },
        schedule = if extra.contains("retry_schedule") {
            ""
        } else {
            "retry_schedule = [\"1m\", \"2m\", \"4m\"]\n"
        },
    )
}

impl Hooks {
    async fn start(extra: &str) -> Hooks {
        let pki = test_pki();
        let settings = Settings {
            routes: format!("{DEFAULT_ROUTES}\n{}", webhooks_section(&pki, extra)),
            ..Settings::default()
        };
        let text = policy_text(&pki, "http://127.0.0.1:9", &settings);
        let clock = ManualClock::starting_at(unix_now());
        let state = open_state(&pki, &text, &clock);
        for org in [ORG, OTHER_ORG] {
            state.orgs.create(org, org, unix_now()).unwrap();
        }
        let keys = [
            mint(&state, ORG, Env::Test, &["manage_webhooks"]),
            mint(&state, OTHER_ORG, Env::Test, &["manage_webhooks"]),
            mint(&state, ORG, Env::Test, &["notes:read"]),
        ];
        Self::serve(
            Parked {
                pki,
                text,
                clock,
                keys,
            },
            state,
        )
        .await
    }

    /// Serves a parked sidecar's data directory again, on new ports.
    async fn resume(parked: Parked) -> Hooks {
        let state = open_state(&parked.pki, &parked.text, &parked.clock);
        Self::serve(parked, state).await
    }

    async fn serve(parked: Parked, state: Arc<State>) -> Hooks {
        let Parked {
            pki,
            text,
            clock,
            keys: [key, other_key, weak_key],
        } = parked;
        let server = Server::bind(state.clone()).await.expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let internal = InternalServer::bind(state.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("internal bind")
            .spawn();
        let socket = pki.dir.path().join("run/admin.sock");
        let admin = AdminServer::bind(state.clone(), &socket)
            .expect("admin bind")
            .spawn();
        let tls = h1_client(&pki.paths.ca);
        Hooks {
            pki,
            text,
            state,
            clock,
            addr,
            internal: Some(internal),
            admin: Some(admin),
            socket,
            stop: Some(stop),
            task: Some(task),
            key,
            other_key,
            weak_key,
            tls,
            plain: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A subscription of `org` to `events` at `url`; its secret.
    fn subscribe(&self, org: &str, url: &str, events: &[&str]) -> (SubscriptionId, Secret) {
        let events: BTreeSet<String> = events.iter().map(|e| (*e).to_owned()).collect();
        let created = self
            .state
            .subscriptions
            .create(org, &url.parse().unwrap(), events, unix_now() as i64, 100)
            .expect("subscription");
        (created.subscription.id, created.secret)
    }

    /// `POST /events` with `token` and `body`.
    async fn post_raw(
        &self,
        token: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (StatusCode, Value, http::HeaderMap) {
        self.post_authorized(token.map(|t| format!("Bearer {t}")).as_deref(), body)
            .await
    }

    /// `POST /events` with `authorization` as the whole `Authorization` value.
    async fn post_authorized(
        &self,
        authorization: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (StatusCode, Value, http::HeaderMap) {
        let port = self.internal.as_ref().unwrap().local_addr().port();
        let mut request = Request::post(format!("http://127.0.0.1:{port}/events"))
            .header("content-type", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = self
            .plain
            .request(request.body(full_body(body.into())).unwrap())
            .await
            .expect("internal listener answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (parts.status, value, parts.headers)
    }

    /// Posts an event that must be accepted; its id and delivery count.
    async fn post(&self, org: &str, event_type: &str, data: Value) -> (String, u64) {
        let body = json!({"org": org, "type": event_type, "data": data}).to_string();
        let (status, value, _) = self.post_raw(Some(TOKEN), body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{value}");
        (
            value["id"].as_str().unwrap().to_owned(),
            value["deliveries"].as_u64().unwrap(),
        )
    }

    /// `GET <deliveries_path>?query` with `key`.
    async fn deliveries(&self, key: &str, query: &str) -> (http::response::Parts, Value) {
        let request = Request::get(format!(
            "https://localhost:{}/v1/webhook-deliveries{query}",
            self.addr.port()
        ))
        .header("authorization", format!("Bearer {key}"))
        .body(empty_body())
        .unwrap();
        let (parts, body) = send(&self.tls, request).await;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (parts, value)
    }

    /// `portcullis webhooks dlq list --org ORG` through the real binary, which must succeed;
    /// its output.
    async fn dlq_list(&self, org: &str) -> String {
        let socket = self.socket.display().to_string();
        let (code, out) = cli(&[
            "webhooks",
            "dlq",
            "list",
            "--org",
            org,
            "--admin-socket",
            &socket,
        ])
        .await;
        assert_eq!(code, 0, "{out}");
        out
    }

    /// Moves the clock and wakes the worker.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.state.deliveries.wake();
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(&self.socket)
    }

    fn status_of(&self, org: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for record in self
            .state
            .deliveries
            .outbox()
            .list(Some(org), None, None, usize::MAX)
            .unwrap()
        {
            *counts.entry(record.status.as_str().to_owned()).or_default() += 1;
        }
        counts
    }

    /// Stops everything and waits until nothing holds the state, keeping the data directory.
    async fn park(mut self) -> Parked {
        self.halt().await;
        let weak = Arc::downgrade(&self.state);
        let Hooks {
            pki,
            text,
            clock,
            key,
            other_key,
            weak_key,
            state,
            ..
        } = self;
        drop(state);
        for _ in 0..300 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(weak.strong_count(), 0, "the old state is still in use");
        Parked {
            pki,
            text,
            clock,
            keys: [key, other_key, weak_key],
        }
    }

    async fn stop(mut self) {
        self.halt().await;
    }

    async fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(internal) = self.internal.take() {
            internal.stop().await;
        }
        if let Some(admin) = self.admin.take() {
            admin.stop().await;
        }
    }
}

/// A stopped sidecar's data directory, policy, clock and keys.
struct Parked {
    pki: TestPki,
    text: String,
    clock: Arc<ManualClock>,
    keys: [String; 3],
}

fn open_state(pki: &TestPki, text: &str, clock: &Arc<ManualClock>) -> Arc<State> {
    let config =
        Config::parse(&SourceText::new("test.toml", text), pki.dir.path()).expect("valid policy");
    State::open_with_clock(Policy::new(config).unwrap(), clock.limit_clock()).expect("state")
}

/// An in-process HTTPS receiver whose answers the test sets.
struct Receiver {
    backend: Backend,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    retry_after: Arc<Mutex<Option<String>>>,
}

impl Receiver {
    async fn start(pki: &TestPki, status: u16) -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let retry_after = Arc::new(Mutex::new(None::<String>));
        let (log, answer, delay, after) = (
            seen.clone(),
            status.clone(),
            delay_ms.clone(),
            retry_after.clone(),
        );
        let backend = Backend::start_tls(
            handler(move |request: Request<Incoming>| {
                let (log, answer, delay, after) =
                    (log.clone(), answer.clone(), delay.clone(), after.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let wait = delay.load(Ordering::SeqCst);
                    if wait > 0 {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    log.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        uri: parts.uri.to_string(),
                        headers: parts.headers,
                        body,
                    });
                    let mut response = Response::builder()
                        .status(answer.load(Ordering::SeqCst))
                        .header("content-type", "text/plain");
                    if let Some(value) = after.lock().unwrap().clone() {
                        response = response.header("retry-after", value);
                    }
                    response
                        .body(full_body("receiver body that must never be stored"))
                        .unwrap()
                }
            }),
            pki,
        )
        .await;
        Receiver {
            backend,
            seen,
            status,
            delay_ms,
            retry_after,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.backend.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Waits up to 10 s for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the real binary; its exit status and stdout followed by stderr.
async fn cli(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

/// The delivery records of `org`, by status.
fn records(hooks: &Hooks, org: &str) -> Vec<portcullis::webhooks::delivery::DeliveryRecord> {
    hooks
        .state
        .deliveries
        .outbox()
        .list(Some(org), None, None, usize::MAX)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Ingest

fn assert_problem_doc(
    status: StatusCode,
    value: &Value,
    headers: &http::HeaderMap,
    want: StatusCode,
    code: &str,
) {
    assert_eq!(status, want, "{value}");
    assert_eq!(value["code"], code, "{value}");
    assert_eq!(value["status"], want.as_u16());
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers.contains_key("x-request-id"));
    if want == StatusCode::UNAUTHORIZED {
        assert_eq!(headers["www-authenticate"], "Bearer", "{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_bad_tokens_bodies_organizations_and_types() {
    let hooks = Hooks::start("").await;
    let good = json!({"org": ORG, "type": "note.signed", "data": {"note": "x"}}).to_string();

    for (authorization, code) in [
        (None, "auth.missing"),
        (
            Some("Bearer ingest-token-0123456789abcdeX".to_owned()),
            "auth.invalid",
        ),
        (Some("Bearer short".to_owned()), "auth.invalid"),
        (Some(format!("Basic {TOKEN}")), "auth.missing"),
    ] {
        let (status, value, headers) = hooks
            .post_authorized(authorization.as_deref(), good.clone())
            .await;
        assert_problem_doc(status, &value, &headers, StatusCode::UNAUTHORIZED, code);
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let (status, value, _) = hooks
        .post_authorized(Some(&format!("bearer {TOKEN}")), good.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");

    let cases = [
        (
            "not json".to_owned(),
            StatusCode::BAD_REQUEST,
            "webhook.invalid_event",
        ),
        (
            json!({"org": ORG, "type": "note.signed"}).to_string(),
            StatusCode::BAD_REQUEST,
            "webhook.invalid_event",
        ),
        (
            json!({"org": ORG, "type": "note.signed", "data": [1]}).to_string(),
            StatusCode::BAD_REQUEST,
            "webhook.invalid_event",
        ),
        (
            json!({"org": ORG, "type": "note.signed", "data": {}, "extra": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "webhook.invalid_event",
        ),
        (
            json!({"org": "nobody", "type": "note.signed", "data": {}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook.unknown_org",
        ),
        (
            json!({"org": ORG, "type": "note.deleted", "data": {}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook.unknown_event",
        ),
        (
            json!({"org": ORG, "type": "audit.event", "data": {}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook.unknown_event",
        ),
        (
            json!({"org": ORG, "type": "note.signed", "data": {"pad": "x".repeat(5000)}})
                .to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
        ),
    ];
    for (body, want, code) in cases {
        let (status, value, headers) = hooks.post_raw(Some(TOKEN), body.clone()).await;
        assert_problem_doc(status, &value, &headers, want, code);
        // Problem details never repeat what the body carried.
        assert!(
            !value["detail"].as_str().unwrap().contains("nobody"),
            "{value}"
        );
    }

    // Other methods on the path, and unknown paths.
    let port = hooks.internal.as_ref().unwrap().local_addr().port();
    let response = hooks
        .plain
        .request(
            Request::get(format!("http://127.0.0.1:{port}/events"))
                .body(empty_body())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");

    // Accepted with nobody subscribed: 202 and nothing stored.
    let (id, deliveries) = hooks.post(ORG, "note.signed", json!({"n": 1})).await;
    assert!(id.starts_with("evt_") && id.len() == 36, "{id}");
    assert_eq!(deliveries, 0);
    assert!(records(&hooks, ORG).is_empty());
    hooks.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_delivered_signed_once_per_matching_subscription() {
    let hooks = Hooks::start("").await;
    let receiver = Receiver::start(&hooks.pki, 204).await;
    let (sub, secret) = hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    // Not matching: another type, another organization.
    hooks.subscribe(ORG, &receiver.url(), &["lab.result"]);
    hooks.subscribe(OTHER_ORG, &receiver.url(), &["note.signed"]);

    let data = json!({"patient": "Jane Roe", "note": {"id": 7}});
    let (event_id, deliveries) = hooks.post(ORG, "note.signed", data.clone()).await;
    assert_eq!(deliveries, 1);
    eventually("the delivery", || receiver.count() == 1).await;
    let seen = receiver.seen().remove(0);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/hook");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["webhook-id"], event_id.as_str());
    let now = (hooks.state.deliveries.now_ms() / 1000) as i64;
    sign::verify(
        &Scheme::Standard,
        std::slice::from_ref(&secret),
        &seen.headers,
        &seen.body,
        now,
        Duration::from_secs(300),
    )
    .expect("the signature verifies");
    let wrong = Secret::generate().unwrap();
    assert!(sign::verify(
        &Scheme::Standard,
        &[wrong],
        &seen.headers,
        &seen.body,
        now,
        Duration::from_secs(300)
    )
    .is_err());
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["type"], "note.signed");
    assert_eq!(body["org"], ORG);
    assert_eq!(body["data"], data);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));

    eventually("delivered", || {
        records(&hooks, ORG)
            .iter()
            .any(|r| r.status == DeliveryStatus::Delivered)
    })
    .await;
    let record = records(&hooks, ORG).remove(0);
    assert_eq!(record.subscription_id, sub.to_string());
    assert_eq!(record.attempts, 1);
    assert_eq!(record.last_status_code, Some(204));
    assert!(record.last_latency_ms.is_some());
    // Delivered everywhere: the event's data is gone from the outbox.
    let event = hooks
        .state
        .deliveries
        .outbox()
        .event(&event_id.parse().unwrap())
        .unwrap();
    assert!(event.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 1, "no duplicate without a failure");
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_schedule_end_dead_and_redeliver_from_the_dlq() {
    let hooks = Hooks::start("").await;
    let receiver = Receiver::start(&hooks.pki, 500).await;
    let (_sub, secret) = hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    let (event_id, _) = hooks.post(ORG, "note.signed", json!({"n": 1})).await;

    eventually("attempt 1", || receiver.count() == 1).await;
    let pending = || records(&hooks, ORG).remove(0);
    eventually("retry scheduled", || pending().attempts == 1).await;
    let first = pending();
    assert_eq!(first.status, DeliveryStatus::Pending);
    assert_eq!(first.last_status_code, Some(500));
    // Schedule [1m, 2m, 4m], no jitter: due exactly one minute later.
    assert_eq!(first.next_attempt_ms, Some(first.updated_ms + 60_000));

    // Each retry comes exactly when scheduled, not a second earlier.
    for (attempt, wait, next_wait) in [(2usize, 60u64, 120_000u64), (3, 120, 240_000), (4, 240, 0)]
    {
        hooks.advance(Duration::from_secs(wait - 1));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            receiver.count(),
            attempt - 1,
            "attempt {attempt} came early"
        );
        hooks.advance(Duration::from_secs(1));
        eventually("the next attempt", || receiver.count() == attempt).await;
        eventually("its outcome", || pending().attempts as usize == attempt).await;
        if next_wait > 0 {
            let record = pending();
            assert_eq!(record.status, DeliveryStatus::Pending);
            assert_eq!(record.next_attempt_ms, Some(record.updated_ms + next_wait));
        }
    }
    // All four attempts carried the same event id.
    let ids: BTreeSet<String> = receiver
        .seen()
        .iter()
        .map(|seen| seen.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, BTreeSet::from([event_id.clone()]));
    eventually("dead", || pending().status == DeliveryStatus::Dead).await;
    let dead = pending();
    assert_eq!(dead.attempts, 4);
    assert_eq!(dead.next_attempt_ms, None);
    assert_eq!(dead.last_error.map(|k| k.as_str()), Some("status"));
    // Dead keeps the data for a redelivery.
    assert!(hooks
        .state
        .deliveries
        .outbox()
        .event(&event_id.parse().unwrap())
        .unwrap()
        .is_some());
    hooks.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 4, "no attempt after the last one");

    // The DLQ through the admin socket.
    let admin = hooks.admin();
    let reply = admin
        .get(&format!("{WEBHOOK_DLQ_PATH}?org={ORG}"))
        .await
        .unwrap();
    let list: DeliveryList = admin.decode(&reply.body).unwrap();
    assert_eq!(list.deliveries.len(), 1);
    assert_eq!(list.deliveries[0].id, dead.id.to_string());
    assert_eq!(list.deliveries[0].status, "dead");
    let reply = admin
        .get(&format!("{WEBHOOK_DLQ_PATH}?org={OTHER_ORG}"))
        .await
        .unwrap();
    let list: DeliveryList = admin.decode(&reply.body).unwrap();
    assert!(list.deliveries.is_empty());

    receiver.status.store(200, Ordering::SeqCst);
    let request = RedeliverRequest {
        id: Some(dead.id.to_string()),
        all_dead: false,
        org: None,
    };
    let reply = admin.post(WEBHOOK_REDELIVER_PATH, &request).await.unwrap();
    let moved: RedeliverResponse = admin.decode(&reply.body).unwrap();
    assert_eq!(moved.redelivered.len(), 1);
    assert_eq!(moved.redelivered[0].attempts, 0);
    eventually("the redelivery", || receiver.count() == 5).await;
    eventually("delivered", || {
        pending().status == DeliveryStatus::Delivered
    })
    .await;
    let seen = receiver.seen().pop().unwrap();
    assert_eq!(seen.headers["webhook-id"], event_id.as_str());
    let now = (hooks.state.deliveries.now_ms() / 1000) as i64;
    sign::verify(
        &Scheme::Standard,
        &[secret],
        &seen.headers,
        &seen.body,
        now,
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(hooks
        .state
        .deliveries
        .outbox()
        .event(&event_id.parse().unwrap())
        .unwrap()
        .is_none());

    // Redelivering something not dead is a conflict; an unknown id is not found.
    let again = admin
        .post(WEBHOOK_REDELIVER_PATH, &request)
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("admin.conflict") || again.to_string().contains("not dead"),
        "{again}"
    );
    let unknown = RedeliverRequest {
        id: Some("dlv_00000000000000000000".to_owned()),
        all_dead: false,
        org: None,
    };
    let missing = admin
        .post(WEBHOOK_REDELIVER_PATH, &unknown)
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("admin.not_found")
            || missing.to_string().contains("no webhook delivery"),
        "{missing}"
    );

    // The redelivery is an admin action in the log.
    let actions = hooks.state.admin_log.list(10).unwrap();
    let action = actions
        .iter()
        .find(|a| a.action == portcullis::admin_log::AdminActionKind::WebhookRedelivered)
        .expect("recorded");
    assert_eq!(action.target, dead.id.hex_part());
    assert_eq!(action.org.as_deref(), Some(ORG));
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_not_repeated_before_its_retry_is_due() {
    // Many short attempts end while the worker is still walking the due entries it scanned:
    // none of those may be sent again until the clock reaches its retry.
    const EVENTS: usize = 60;
    let hooks = Hooks::start("endpoint_concurrency = 8").await;
    let receiver = Receiver::start(&hooks.pki, 500).await;
    hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    for n in 0..EVENTS {
        hooks.post(ORG, "note.signed", json!({ "n": n })).await;
    }
    eventually("every first attempt recorded", || {
        let records = records(&hooks, ORG);
        records.len() == EVENTS && records.iter().all(|r| r.attempts > 0)
    })
    .await;
    // Give a duplicate the time to happen, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts: Vec<u32> = records(&hooks, ORG).iter().map(|r| r.attempts).collect();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
    assert_eq!(receiver.count(), EVENTS, "one request per delivery");
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_all_dead_moves_only_the_named_organizations_queue() {
    let hooks = Hooks::start("retry_schedule = [\"1s\"]").await;
    let receiver = Receiver::start(&hooks.pki, 500).await;
    hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    hooks.subscribe(OTHER_ORG, &receiver.url(), &["note.signed"]);
    for org in [ORG, ORG, OTHER_ORG] {
        hooks.post(org, "note.signed", json!({})).await;
    }
    eventually("first attempts", || receiver.count() == 3).await;
    eventually("retries scheduled", || {
        records(&hooks, ORG)
            .iter()
            .chain(records(&hooks, OTHER_ORG).iter())
            .all(|r| r.attempts == 1)
    })
    .await;
    hooks.advance(Duration::from_secs(2));
    eventually("all dead", || {
        hooks.status_of(ORG).get("dead") == Some(&2)
            && hooks.status_of(OTHER_ORG).get("dead") == Some(&1)
    })
    .await;
    receiver.status.store(200, Ordering::SeqCst);
    // Through the real binary, as an operator would.
    let socket = hooks.socket.display().to_string();
    let out = hooks.dlq_list(ORG).await;
    assert_eq!(out.lines().count(), 3, "a header and two rows: {out}");
    assert!(
        out.lines()
            .skip(1)
            .all(|line| line.starts_with("dlv_") && line.contains(ORG)),
        "{out}"
    );
    let (code, out) = cli(&[
        "webhooks",
        "redeliver",
        "--all-dead",
        "--org",
        ORG,
        "--admin-socket",
        &socket,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Redelivered 2 dead deliveries"), "{out}");
    let (code, out) = cli(&["webhooks", "redeliver", "--admin-socket", &socket]).await;
    assert_eq!(code, 2, "an id or --all-dead is required: {out}");
    let (code, out) = cli(&[
        "webhooks",
        "redeliver",
        "dlv_00000000000000000000",
        "--admin-socket",
        &socket,
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no webhook delivery has this id"), "{out}");
    let admin = hooks.admin();
    eventually("redelivered", || {
        hooks.status_of(ORG).get("delivered") == Some(&2)
    })
    .await;
    assert_eq!(hooks.status_of(OTHER_ORG).get("dead"), Some(&1));
    // Both or neither: a request naming both is refused.
    let both = admin
        .post(
            WEBHOOK_REDELIVER_PATH,
            &RedeliverRequest {
                id: Some("dlv_00000000000000000000".into()),
                all_dead: true,
                org: None,
            },
        )
        .await
        .unwrap_err();
    assert!(both.to_string().contains("exactly one"), "{both}");
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ends_the_dead_letter_queue_then_forgets_finished_deliveries() {
    let hooks =
        Hooks::start("retry_schedule = [\"1s\"]\ndead_retention = \"2d\"\nretention = \"7d\"")
            .await;
    let receiver = Receiver::start(&hooks.pki, 500).await;
    hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    let (event_id, _) = hooks
        .post(ORG, "note.signed", json!({"patient": "Jane Roe"}))
        .await;
    let event_id: portcullis::webhooks::delivery::EventId = event_id.parse().unwrap();
    eventually("first attempt", || {
        records(&hooks, ORG).iter().all(|r| r.attempts == 1)
    })
    .await;
    hooks.advance(Duration::from_secs(2));
    eventually("dead", || hooks.status_of(ORG).get("dead") == Some(&1)).await;
    // The same path housekeeping takes, on the test's clock.
    let sweep = || {
        let policy = hooks.state.policies.current();
        hooks.state.deliveries.sweep_if_due(&policy.config.webhooks);
    };
    let day = Duration::from_secs(24 * 3600);
    let sealed_data_kept = || {
        hooks
            .state
            .deliveries
            .outbox()
            .event(&event_id)
            .unwrap()
            .is_some()
    };

    // Within dead_retention: still redeliverable, the sealed data kept.
    hooks.advance(day);
    sweep();
    assert_eq!(hooks.status_of(ORG).get("dead"), Some(&1));
    assert!(sealed_data_kept());

    // Past it: ended as failed (expired), and the event's data is gone.
    hooks.advance(day);
    sweep();
    let (parts, dead) = hooks.deliveries(&hooks.key, "?status=dead").await;
    assert_eq!(parts.status, StatusCode::OK, "{dead}");
    assert_eq!(dead["deliveries"].as_array().unwrap().len(), 0);
    let (_, failed) = hooks.deliveries(&hooks.key, "?status=failed").await;
    let failed = failed["deliveries"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["last_error"], "expired");
    assert_eq!(failed[0]["attempts"], 2);
    assert!(!sealed_data_kept());
    let out = hooks.dlq_list(ORG).await;
    assert!(
        !out.contains("dlv_"),
        "the dead-letter queue is empty: {out}"
    );

    // Past retention: the record itself is deleted.
    hooks.advance(5 * day);
    sweep();
    let (parts, all) = hooks.deliveries(&hooks.key, "").await;
    assert_eq!(parts.status, StatusCode::OK, "{all}");
    assert_eq!(all["deliveries"].as_array().unwrap().len(), 0, "{all}");
    assert!(
        hooks
            .state
            .deliveries
            .outbox()
            .count(DeliveryStatus::Failed)
            == 0
    );
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_and_ends_its_pending_deliveries() {
    let hooks = Hooks::start("").await;
    let receiver = Receiver::start(&hooks.pki, 500).await;
    let (sub, _) = hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    hooks.post(ORG, "note.signed", json!({"n": 1})).await;
    eventually("first attempt", || receiver.count() == 1).await;
    eventually("retry scheduled", || records(&hooks, ORG)[0].attempts == 1).await;
    // A second event while the first waits for its retry.
    receiver.delay_ms.store(0, Ordering::SeqCst);
    receiver.status.store(410, Ordering::SeqCst);
    hooks.post(ORG, "note.signed", json!({"n": 2})).await;
    eventually("the 410", || receiver.count() == 2).await;
    eventually("the subscription disabled", || {
        hooks
            .state
            .subscriptions
            .get_any(&sub)
            .unwrap()
            .unwrap()
            .status
            == SubscriptionStatus::Disabled
    })
    .await;
    eventually("both deliveries failed", || {
        hooks.status_of(ORG).get("failed") == Some(&2)
    })
    .await;
    for record in records(&hooks, ORG) {
        assert_eq!(record.last_error.map(|k| k.as_str()), Some("gone"));
        assert_eq!(record.next_attempt_ms, None);
    }
    // No more attempts, and new events no longer match it.
    hooks.advance(Duration::from_secs(3600));
    let (_, deliveries) = hooks.post(ORG, "note.signed", json!({"n": 3})).await;
    assert_eq!(deliveries, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 2);
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_and_503_sets_the_next_attempt_within_the_schedule() {
    let hooks = Hooks::start("").await;
    let receiver = Receiver::start(&hooks.pki, 429).await;
    *receiver.retry_after.lock().unwrap() = Some("90".to_owned());
    hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    hooks.post(ORG, "note.signed", json!({})).await;
    eventually("first attempt", || receiver.count() == 1).await;
    eventually("scheduled", || records(&hooks, ORG)[0].attempts == 1).await;
    let record = records(&hooks, ORG).remove(0);
    assert_eq!(record.last_status_code, Some(429));
    assert_eq!(
        record.next_attempt_ms,
        Some(record.updated_ms + 90_000),
        "Retry-After, not the 1m schedule"
    );
    hooks.advance(Duration::from_secs(61));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.count(), 1, "the schedule's 1m was overridden");
    // A 503 asking for a day is capped at the schedule's longest wait (4m).
    receiver.status.store(503, Ordering::SeqCst);
    *receiver.retry_after.lock().unwrap() = Some("86400".to_owned());
    hooks.advance(Duration::from_secs(30));
    eventually("second attempt", || receiver.count() == 2).await;
    eventually("scheduled", || records(&hooks, ORG)[0].attempts == 2).await;
    let record = records(&hooks, ORG).remove(0);
    assert_eq!(record.last_status_code, Some(503));
    assert_eq!(record.next_attempt_ms, Some(record.updated_ms + 240_000));
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_refused_at_delivery_time_is_a_failed_attempt_on_the_schedule() {
    // The subscription was stored while private receivers were allowed (written straight to
    // the store here); the running policy forbids them, so the resolver refuses it now.
    let hooks = Hooks::start("allow_private_destinations = false").await;
    let receiver = Receiver::start(&hooks.pki, 200).await;
    hooks.subscribe(ORG, &receiver.url(), &["note.signed"]);
    hooks.post(ORG, "note.signed", json!({})).await;
    eventually("the refused attempt", || {
        records(&hooks, ORG)
            .first()
            .is_some_and(|r| r.attempts == 1)
    })
    .await;
    let record = records(&hooks, ORG).remove(0);
    assert_eq!(record.status, DeliveryStatus::Pending);
    assert_eq!(
        record.last_error.map(|k| k.as_str()),
        Some("destination_refused")
    );
    assert_eq!(record.last_status_code, None);
    assert_eq!(
        record.next_attempt_ms,
        Some(record.updated_ms + 60_000),
        "no retry storm"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(records(&hooks, ORG)[0].attempts, 1);
    assert_eq!(receiver.count(), 0, "nothing reached the forbidden address");
    let (_, page) = hooks.deliveries(&hooks.key, "?status=pending").await;
    assert_eq!(page["deliveries"][0]["last_error"], "destination_refused");
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_another() {
    let hooks = Hooks::start("endpoint_concurrency = 2\nmax_in_flight = 16").await;
    let slow = Receiver::start(&hooks.pki, 200).await;
    slow.delay_ms.store(2_500, Ordering::SeqCst);
    let fast = Receiver::start(&hooks.pki, 200).await;
    hooks.subscribe(ORG, &slow.url(), &["note.signed"]);
    hooks.subscribe(ORG, &fast.url(), &["lab.result"]);
    // Fill the slow endpoint's slots and a backlog deeper than one short scan first.
    for n in 0..200 {
        hooks.post(ORG, "note.signed", json!({"n": n})).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for n in 0..5 {
        hooks.post(ORG, "lab.result", json!({"n": n})).await;
    }
    eventually("the fast endpoint's deliveries", || fast.count() == 5).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "fast deliveries took {took:?}"
    );
    assert!(slow.count() < 10, "the slow endpoint is still busy");
    hooks.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The status endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deliveries_endpoint_is_tenant_scoped_paginated_and_refuses_foreign_cursors() {
    let hooks = Hooks::start("").await;
    let ok = Receiver::start(&hooks.pki, 200).await;
    let failing = Receiver::start(&hooks.pki, 500).await;
    hooks.subscribe(ORG, &ok.url(), &["note.signed"]);
    hooks.subscribe(ORG, &failing.url(), &["lab.result"]);
    hooks.subscribe(OTHER_ORG, &ok.url(), &["note.signed"]);
    for n in 0..3 {
        hooks.post(ORG, "note.signed", json!({"n": n})).await;
    }
    hooks
        .post(ORG, "lab.result", json!({"secret": "Jane Roe"}))
        .await;
    hooks.post(OTHER_ORG, "note.signed", json!({})).await;
    eventually("settled", || {
        hooks.status_of(ORG).get("delivered") == Some(&3)
            && records(&hooks, ORG)
                .iter()
                .any(|r| r.attempts == 1 && r.status == DeliveryStatus::Pending)
            && hooks.status_of(OTHER_ORG).get("delivered") == Some(&1)
    })
    .await;

    let (parts, page) = hooks.deliveries(&hooks.key, "?limit=2").await;
    assert_eq!(parts.status, StatusCode::OK, "{page}");
    assert_eq!(parts.headers["cache-control"], "no-store");
    let listed = page["deliveries"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let cursor = page["page"]["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = hooks
        .deliveries(&hooks.key, &format!("?limit=2&cursor={cursor}"))
        .await;
    let rest = rest["deliveries"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 2);
    let (_, last) = hooks
        .deliveries(&hooks.key, &format!("?limit=2&cursor={}", "x"))
        .await;
    assert_eq!(last["code"], "request.invalid_query");
    let mut ids: Vec<String> = listed
        .iter()
        .chain(rest.iter())
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "pages do not overlap");

    let (_, pending) = hooks.deliveries(&hooks.key, "?status=pending").await;
    let pending = pending["deliveries"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 1);
    let one = &pending[0];
    assert_eq!(one["event_type"], "lab.result");
    assert_eq!(one["status"], "pending");
    assert_eq!(one["attempts"], 1);
    assert_eq!(one["last_status_code"], 500);
    assert_eq!(one["last_error"], "status");
    assert!(one["next_attempt_at"].as_str().unwrap().ends_with('Z'));
    assert!(one["last_latency_ms"].is_u64());
    assert!(one["event_id"].as_str().unwrap().starts_with("evt_"));
    let text = serde_json::to_string(&pending).unwrap();
    assert!(
        !text.contains("Jane Roe") && !text.contains("receiver body"),
        "{text}"
    );
    let (_, delivered) = hooks.deliveries(&hooks.key, "?status=delivered").await;
    assert_eq!(delivered["deliveries"].as_array().unwrap().len(), 3);

    // The other tenant sees only its own, and cannot use this tenant's cursor.
    let (_, theirs) = hooks.deliveries(&hooks.other_key, "").await;
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 1);
    let (parts, foreign) = hooks
        .deliveries(&hooks.other_key, &format!("?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign["code"], "route.unknown");
    // A cursor of another status filter is refused.
    let (parts, mixed) = hooks
        .deliveries(&hooks.key, &format!("?status=dead&cursor={cursor}"))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(mixed["code"], "request.invalid_query");

    // Scope, bad parameters, no key.
    let (parts, denied) = hooks.deliveries(&hooks.weak_key, "").await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(denied["code"], "perm.denied");
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    for bad in [
        "?status=lost",
        "?limit=0",
        "?limit=501",
        "?org=globex",
        "?status=dead&status=dead",
    ] {
        let (parts, problem) = hooks.deliveries(&hooks.key, bad).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(problem["code"], "request.invalid_query", "{bad}");
    }
    let (parts, missing) = hooks.deliveries("", "").await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert!(missing["code"].as_str().unwrap().starts_with("auth."));
    hooks.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The audit stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_subscription_receives_its_own_organizations_records_only() {
    let hooks = Hooks::start("").await;
    let siem = Receiver::start(&hooks.pki, 200).await;
    hooks.subscribe(ORG, &siem.url(), &["audit.event"]);
    // Requests of both organizations make audit records.
    for key in [&hooks.key, &hooks.other_key, &hooks.key] {
        let (parts, _) = hooks.deliveries(key, "?status=dead").await;
        assert_eq!(parts.status, StatusCode::OK);
    }
    eventually("two audit events", || siem.count() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = siem.seen();
    for delivery in &seen {
        let body: Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(body["type"], "audit.event");
        assert_eq!(body["org"], ORG);
        assert_eq!(body["data"]["org"], ORG, "{body}");
        assert!(body["data"]["seq"].is_u64());
    }
    let routes: Vec<String> = seen
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(&d.body).unwrap()["data"]["route"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        routes
            .iter()
            .filter(|r| *r == "@webhooks.deliveries")
            .count(),
        2,
        "{routes:?}"
    );
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_stream_continues_after_a_restart_without_repeats_or_gaps() {
    let hooks = Hooks::start("").await;
    let siem = Receiver::start(&hooks.pki, 200).await;
    hooks.subscribe(ORG, &siem.url(), &["audit.event"]);
    for _ in 0..2 {
        hooks.deliveries(&hooks.key, "").await;
    }
    eventually("two audit events recorded delivered", || {
        siem.count() == 2 && hooks.status_of(ORG).get("delivered") == Some(&2)
    })
    .await;
    let parked = hooks.park().await;

    // While no sidecar runs, an administrator changes the organization: an audit record the
    // stream has not seen.
    {
        let state = open_state(&parked.pki, &parked.text, &parked.clock);
        state
            .admin_log
            .append(
                portcullis::admin_log::AdminActionKind::OrgUpdated,
                "uid:0",
                ORG,
                Some(ORG),
                unix_now(),
            )
            .unwrap();
        state.audit.flush().await.unwrap();
    }
    let hooks = Hooks::resume(parked).await;
    hooks.deliveries(&hooks.key, "").await;
    eventually("the missed record and the new one", || siem.count() >= 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<Value> = siem
        .seen()
        .iter()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect();
    let mut seqs: Vec<u64> = bodies
        .iter()
        .map(|b| b["data"]["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    // Deliveries may arrive in any order; none repeats and none is missing.
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!((seqs.len(), distinct.len()), (4, 4), "{bodies:#?}");
    let missed = bodies
        .iter()
        .find(|b| b["data"]["action"] == "org_updated")
        .expect("the record written while no sidecar ran");
    assert_eq!(missed["org"], ORG);
    assert_eq!(
        hooks.state.deliveries.outbox().audit_mark().unwrap(),
        seqs.last().copied()
    );
    hooks.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A crash: the real binary, SIGKILLed while events are ingested and delivered

mod crash {
    use std::process::{Command, Stdio};

    use super::*;

    pub struct Running {
        pub child: KillOnDrop,
        pub internal: u16,
    }

    /// Starts the real binary and waits until both its listeners are up (they log in
    /// either order).
    pub fn serve(policy: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(policy)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = child_lines(child.stderr.take().unwrap());
        let child = KillOnDrop(child);
        let (mut internal, mut main) = (None, false);
        while internal.is_none() || !main {
            let line = wait_for_line(&log, "listening");
            if line.contains("internal listener listening") {
                internal = Some(listen_port(&line));
            } else if line.contains("portcullis listening") {
                main = true;
            }
        }
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || while log.recv().is_ok() {});
        Running {
            child,
            internal: internal.unwrap_or_default(),
        }
    }

    pub fn kill(running: &mut Running, signal: &str) {
        send_signal(&running.child, signal);
        wait_exit(&mut running.child, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_delivered_after_a_sigkill() {
    let pki = test_pki();
    let receiver = Receiver::start(&pki, 200).await;
    let settings = Settings {
        routes: format!(
            "{DEFAULT_ROUTES}\n{}\n[internal]\nlisten = \"127.0.0.1:0\"\n",
            webhooks_section(&pki, "endpoint_concurrency = 8\nretry_schedule = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]")
        ),
        ..Settings::default()
    };
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&pki, "http://127.0.0.1:9", &settings)).unwrap();
    {
        let config = Config::load(&policy).unwrap();
        let state = State::open(Policy::new(config).unwrap()).unwrap();
        state.orgs.create(ORG, ORG, unix_now()).unwrap();
        let events = BTreeSet::from(["note.signed".to_owned()]);
        state
            .subscriptions
            .create(
                ORG,
                &receiver.url().parse().unwrap(),
                events,
                unix_now() as i64,
                10,
            )
            .unwrap();
    }
    let plain: Plain = Client::builder(TokioExecutor::new()).build_http();
    let post = move |port: u16, n: usize| {
        let plain = plain.clone();
        async move {
            let body = json!({"org": ORG, "type": "note.signed", "data": {"n": n}}).to_string();
            let request = Request::post(format!("http://127.0.0.1:{port}/events"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(full_body(body))
                .unwrap();
            let response = plain.request(request).await.ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            let value: Value = serde_json::from_slice(&body).ok()?;
            (status == StatusCode::ACCEPTED).then(|| value["id"].as_str().unwrap().to_owned())
        }
    };

    let mut accepted: Vec<String> = Vec::new();
    let mut sidecar = crash::serve(&policy);
    // Eight clients ingest without pause while the worker delivers; the kill lands mid-stream.
    let port = sidecar.internal;
    let count = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for client in 0..8usize {
        let post = post.clone();
        let count = count.clone();
        loops.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0.. {
                match post(port, client * 100_000 + n).await {
                    Some(id) => {
                        ids.push(id);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    None => break,
                }
            }
            ids
        }));
    }
    eventually("ingest and delivery under way", || {
        count.load(Ordering::SeqCst) >= 200 && receiver.count() >= 50
    })
    .await;
    crash::kill(&mut sidecar, "KILL");
    for ids in loops {
        accepted.extend(ids.await.unwrap());
    }
    let refused = 8;
    let delivered_before = receiver.count();
    assert!(accepted.len() >= 200);

    let sidecar = crash::serve(&policy);
    let port = sidecar.internal;
    for n in 400..450 {
        if let Some(id) = post(port, n).await {
            accepted.push(id);
        }
    }
    let wanted: BTreeSet<String> = accepted.iter().cloned().collect();
    let started = Instant::now();
    loop {
        let seen: BTreeSet<String> = receiver
            .seen()
            .iter()
            .map(|s| s.headers["webhook-id"].to_str().unwrap().to_owned())
            .collect();
        if wanted.is_subset(&seen) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} accepted events never delivered",
            wanted.difference(&seen).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = receiver.count();
    let distinct: BTreeSet<String> = receiver
        .seen()
        .iter()
        .map(|s| s.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    eprintln!(
        "crash: {} accepted, {refused} requests cut off by the kill, {delivered_before} delivered before it, \
         {total} deliveries after restart for {} distinct events: {} duplicates",
        wanted.len(),
        distinct.len(),
        total - distinct.len()
    );
    drop(sidecar);
}
