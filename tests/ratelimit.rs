//! Rate limits, daily quotas and their headers, through the real TLS listener.
//!
//! Sidecars here run on a [`ManualClock`], so refills, `Retry-After`, `X-RateLimit-Reset` and
//! the midnight quota reset are tested by moving time, never by sleeping. Every answer is
//! asserted by status, `code` and headers.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{HeaderMap, Method, StatusCode};
use portcullis::body::{empty_body, full_body};
use portcullis::config::{Config, ConfigError, SourceText};
use portcullis::gate::ratelimit::ManualClock;
use portcullis::keys::{Env, MintRequest, RateOverride};
use portcullis::policy::Policy;
use portcullis::server::Server;
use portcullis::state::{unix_now, State};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2030-01-01T00:00:00Z: a UTC midnight.
const MIDNIGHT: u64 = 1_893_456_000;
/// Noon of that day, far from any quota reset.
const NOON: u64 = MIDNIGHT + 12 * 3600;

// ---------------------------------------------------------------------------------------------
// A sidecar on a manual clock

/// A running sidecar whose limits, quotas and throttle read a [`ManualClock`].
struct Limited {
    addr: std::net::SocketAddr,
    pki: TestPki,
    state: Arc<State>,
    clock: Arc<ManualClock>,
    text: String,
    /// A test key of [`TEST_ORG`] with the scope `notes:read`.
    key: String,
    client: TestClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Limited {
    /// A sidecar with `policy` (a `[ratelimit]` section and routes) in front of `upstream`.
    async fn start(upstream: &str, policy: &str, start_at: u64) -> Limited {
        let pki = test_pki();
        let settings = Settings {
            routes: policy.to_owned(),
            ..Settings::default()
        };
        let text = policy_text(&pki, upstream, &settings);
        let clock = ManualClock::starting_at(start_at);
        let state = open(&pki, &text, &clock);
        state
            .orgs
            .create(TEST_ORG, "Test Org", unix_now())
            .expect("org");
        let key = mint(&state, TEST_ORG, Env::Test, &["notes:read"]);
        Self::serve(pki, text, clock, state, key).await
    }

    async fn serve(
        pki: TestPki,
        text: String,
        clock: Arc<ManualClock>,
        state: Arc<State>,
        key: String,
    ) -> Limited {
        let server = Server::bind(state.clone()).await.expect("bind sidecar");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let client = h1_client(&pki.paths.ca);
        Limited {
            addr,
            pki,
            state,
            clock,
            text,
            key,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Drains, lets go of the state and opens it again from the same data directory, on the
    /// same clock.
    async fn restart(mut self) -> Limited {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let Limited {
            pki,
            state,
            clock,
            text,
            key,
            ..
        } = self;
        let weak = Arc::downgrade(&state);
        drop(state);
        for _ in 0..200 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(weak.strong_count(), 0, "the old state is still in use");
        let state = open(&pki, &text, &clock);
        Self::serve(pki, text, clock, state, key).await
    }

    /// Swaps in a new policy, as a reload does.
    fn reload(&self, policy: &str, upstream: &str) {
        let settings = Settings {
            routes: policy.to_owned(),
            ..Settings::default()
        };
        let text = policy_text(&self.pki, upstream, &settings);
        let config = Config::parse(&SourceText::new("test.toml", text), self.pki.dir.path())
            .expect("valid reloaded policy");
        self.state
            .policies
            .replace(Policy::new(config).expect("policy"));
    }

    /// A key of [`TEST_ORG`] with its own rate limit.
    fn mint_with_rate(&self, per_minute: u32, burst: u32) -> String {
        let mut request = MintRequest::new(TEST_ORG, Env::Test, BTreeSet::new());
        request.rate = Some(RateOverride { per_minute, burst });
        let minted = self.state.keys.mint(request, unix_now()).expect("mint");
        minted.key.expose_secret().to_owned()
    }

    /// Wall-clock seconds of the manual clock.
    fn now(&self) -> u64 {
        self.state.limits.clock().since_epoch().as_secs()
    }

    async fn call(&self, method: Method, path: &str, key: &str) -> Answer {
        self.call_with(method, path, Some(&format!("Bearer {key}")))
            .await
    }

    async fn call_with(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        call(&self.client, self.addr, method, path, authorization).await
    }
}

fn open(pki: &TestPki, text: &str, clock: &Arc<ManualClock>) -> Arc<State> {
    let config = Config::parse(&SourceText::new("test.toml", text), pki.dir.path())
        .expect("valid test policy");
    State::open_with_clock(Policy::new(config).expect("policy"), clock.limit_clock())
        .expect("state")
}

// ---------------------------------------------------------------------------------------------
// Answers

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing {name} on a {} answer", self.status))
            .to_str()
            .expect("ascii header")
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name).parse().expect("a number")
    }

    fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }

    /// Asserts a problem answer: status, `code`, media type and request id.
    fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(self.code(), code, "{}", self.json);
        assert_eq!(self.json["status"], status.as_u16());
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert!(self.headers.contains_key("x-request-id"));
    }

    /// Asserts the full rate-limit header set, both vocabularies, against expected numbers.
    fn assert_limit(&self, policy: &str, per_minute: u32, remaining: u32, reset: u64, now: u64) {
        assert_eq!(self.number("x-ratelimit-limit"), u64::from(per_minute));
        assert_eq!(self.number("x-ratelimit-remaining"), u64::from(remaining));
        assert_eq!(self.number("x-ratelimit-reset"), reset, "reset");
        assert_eq!(
            self.header("ratelimit-policy"),
            format!("\"{policy}\";q={per_minute};w=60")
        );
        assert_eq!(
            self.header("ratelimit"),
            format!("\"{policy}\";r={remaining};t={}", reset - now)
        );
    }

    fn assert_no_limit_headers(&self) {
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "ratelimit-policy",
            "ratelimit",
        ] {
            assert!(
                !self.headers.contains_key(name),
                "{name} on a {} answer",
                self.status
            );
        }
    }
}

async fn call(
    client: &TestClient,
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> Answer {
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(format!("https://localhost:{}{path}", addr.port()));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    // Every call is a new write, so each carries its own Idempotency-Key.
    static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    request = request.header("idempotency-key", format!("ratelimit-call-{key}"));
    let body = if method == Method::POST {
        full_body(bytes::Bytes::from_static(b"{}"))
    } else {
        empty_body()
    };
    let (parts, body) = send(client, request.body(body).unwrap()).await;
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    }
}

/// A `[ratelimit]` section with the default echo routes.
fn with_default_routes(ratelimit: &str) -> String {
    format!("[ratelimit]\n{ratelimit}\n{DEFAULT_ROUTES}")
}

/// A policy whose POST echo route is in the class `writes`.
fn with_writes_class(ratelimit: &str, class: &str) -> String {
    let routes = DEFAULT_ROUTES.replace(
        "name = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{*rest}\"\nany_key = true\n",
        "name = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{*rest}\"\nany_key = true\nlimit = \"writes\"\n",
    );
    assert_ne!(routes, DEFAULT_ROUTES, "the POST route was found");
    format!("[ratelimit]\n{ratelimit}\n\n[ratelimit.classes.writes]\n{class}\n{routes}")
}

// ---------------------------------------------------------------------------------------------
// Limits and headers

#[tokio::test]
async fn headers_are_present_and_monotone_over_a_burst() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 5");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();
    let mut last_reset = 0;
    for n in 1..=5u32 {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        // One request comes back every second, so after n the bucket is full in n seconds.
        answer.assert_limit("default", 60, 5 - n, now + u64::from(n), now);
        let reset = answer.number("x-ratelimit-reset");
        assert!(
            reset > last_reset,
            "the reset moves out as the burst is spent"
        );
        last_reset = reset;
    }
    assert_eq!(backend.hits(), 5);
}

#[tokio::test]
async fn the_request_after_the_burst_is_refused_with_a_correct_retry_after() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 30\nburst = 3");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();
    for _ in 0..3 {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let refused = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    // 30 a minute: one request back every 2 s; all three back 6 s after the burst.
    assert_eq!(refused.header("retry-after"), "2");
    refused.assert_limit("default", 30, 0, now + 6, now);
    assert_eq!(
        backend.hits(),
        3,
        "a refused request never reaches the backend"
    );

    // Half a refill later the wait is shorter, and rounded up.
    sidecar.clock.advance(Duration::from_millis(500));
    let refused = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    assert_eq!(refused.header("retry-after"), "2");
    assert_eq!(refused.number("x-ratelimit-reset"), now + 6);
}

#[tokio::test]
async fn requests_succeed_again_after_the_advertised_times() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 20\nburst = 4");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    for _ in 0..4 {
        sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    }
    let refused = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    let retry_after = refused.number("retry-after");
    assert_eq!(retry_after, 3);

    // Just before Retry-After: still refused. At it: admitted, with nothing to spare.
    sidecar
        .clock
        .advance(Duration::from_secs(retry_after) - Duration::from_millis(1));
    let early = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    early.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    sidecar.clock.advance(Duration::from_millis(1));
    let admitted = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(admitted.status, StatusCode::CREATED);
    assert_eq!(admitted.number("x-ratelimit-remaining"), 0);

    // At X-RateLimit-Reset the bucket is full again: a whole burst goes through.
    let reset = admitted.number("x-ratelimit-reset");
    sidecar
        .clock
        .advance(Duration::from_secs(reset - sidecar.now()));
    for remaining in (0..4).rev() {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.number("x-ratelimit-remaining"), remaining);
    }
}

#[tokio::test]
async fn a_per_key_override_replaces_the_default() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 5");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();
    let generous = sidecar.mint_with_rate(120, 3);
    for (n, remaining) in [2u32, 1, 0].into_iter().enumerate() {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &generous).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        // 120 a minute refills every 500 ms: full in (n + 1) / 2 s, rounded up.
        let reset = now + (n as u64 + 2) / 2;
        answer.assert_limit("default", 120, remaining, reset, now);
    }
    let refused = sidecar.call(Method::GET, "/v1/echo/x", &generous).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    assert_eq!(refused.header("retry-after"), "1");

    // The key without an override still has the default.
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    answer.assert_limit("default", 60, 4, now + 1, now);
}

#[tokio::test]
async fn a_route_class_limit_applies_on_top_and_the_strictest_answers() {
    let (backend, _) = Backend::recording().await;
    let policy = with_writes_class(
        "requests_per_minute = 600\nburst = 50",
        "requests_per_minute = 60\nburst = 2",
    );
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();

    for remaining in [1, 0] {
        let answer = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        answer.assert_limit("writes", 60, remaining, now + 2 - u64::from(remaining), now);
    }
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    assert_eq!(refused.header("retry-after"), "1");
    refused.assert_limit("writes", 60, 0, now + 2, now);
    assert!(refused.json["detail"]
        .as_str()
        .unwrap()
        .contains("`writes`"));

    // Routes outside the class answer with the key's limit, which every request spent.
    let read = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(read.status, StatusCode::CREATED);
    assert_eq!(read.number("x-ratelimit-remaining"), 46);
    assert_eq!(read.header("ratelimit-policy"), "\"default\";q=600;w=60");

    // A key whose own limit is tighter than the class sees its own limit on class routes.
    let tight = sidecar.mint_with_rate(30, 1);
    let answer = sidecar.call(Method::POST, "/v1/echo/x", &tight).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    answer.assert_limit("default", 30, 0, now + 2, now);
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &tight).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
    assert_eq!(refused.header("retry-after"), "2");
    refused.assert_limit("default", 30, 0, now + 2, now);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn two_keys_do_not_share_a_bucket() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 2");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let other = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    for _ in 0..2 {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let refused = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");

    let now = sidecar.now();
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &other).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    answer.assert_limit("default", 60, 1, now + 1, now);
}

#[tokio::test]
async fn concurrent_requests_never_over_admit() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 20");
    let sidecar = Arc::new(Limited::start(&backend.url(), &policy, NOON).await);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                let client = h1_client(&sidecar.pki.paths.ca);
                let auth = format!("Bearer {}", sidecar.key);
                let mut statuses = Vec::new();
                for _ in 0..4 {
                    let answer = call(
                        &client,
                        sidecar.addr,
                        Method::GET,
                        "/v1/echo/x",
                        Some(&auth),
                    )
                    .await;
                    if answer.status == StatusCode::TOO_MANY_REQUESTS {
                        answer.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate.limited");
                    }
                    assert!(answer.headers.contains_key("x-ratelimit-remaining"));
                    statuses.push(answer.status);
                }
                statuses
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        for status in task.await.unwrap() {
            match status {
                StatusCode::CREATED => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(admitted, 20, "exactly the burst, with no time passing");
    assert_eq!(refused, 128 - 20);
    assert_eq!(backend.hits(), 20);
}

#[tokio::test]
async fn failed_authentication_does_not_spend_the_tenants_limit() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 3");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    // Same key id, wrong secret: the tenant's id is named but the caller is not the tenant.
    let (prefix, secret) = sidecar.key.rsplit_once('_').unwrap();
    let wrong = format!("{prefix}_{}", "A".repeat(secret.len()));
    for _ in 0..3 {
        let answer = sidecar.call(Method::GET, "/v1/echo/x", &wrong).await;
        answer.assert_problem(StatusCode::UNAUTHORIZED, "auth.invalid");
        answer.assert_no_limit_headers();
    }
    let missing = sidecar.call_with(Method::GET, "/v1/echo/x", None).await;
    missing.assert_problem(StatusCode::UNAUTHORIZED, "auth.missing");
    missing.assert_no_limit_headers();

    let now = sidecar.now();
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    answer.assert_limit("default", 60, 2, now + 1, now);
}

#[tokio::test]
async fn errors_after_authentication_carry_the_headers() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 60\nburst = 10");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();
    let unscoped = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);

    let denied = sidecar.call(Method::GET, "/v1/notes/1", &unscoped).await;
    denied.assert_problem(StatusCode::FORBIDDEN, "perm.denied");
    denied.assert_limit("default", 60, 9, now + 1, now);

    let unknown = sidecar.call(Method::GET, "/v2/nothing", &unscoped).await;
    unknown.assert_problem(StatusCode::NOT_FOUND, "route.unknown");
    unknown.assert_limit("default", 60, 8, now + 2, now);

    let whoami = sidecar
        .call(Method::GET, "/v1/auth/whoami", &unscoped)
        .await;
    assert_eq!(whoami.status, StatusCode::OK);
    whoami.assert_limit("default", 60, 7, now + 3, now);

    let health = sidecar.call(Method::GET, "/healthz", &unscoped).await;
    assert_eq!(health.status, StatusCode::OK);
    health.assert_no_limit_headers();
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn a_backend_failure_after_authentication_carries_the_headers() {
    // A port with nothing listening: the backend refuses the connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let policy = with_default_routes("requests_per_minute = 60\nburst = 10");
    let sidecar = Limited::start(&url, &policy, NOON).await;
    let now = sidecar.now();
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    answer.assert_problem(StatusCode::BAD_GATEWAY, "upstream.unavailable");
    answer.assert_limit("default", 60, 9, now + 1, now);
}

#[tokio::test]
async fn the_policy_picks_the_header_style_and_backend_values_never_leak() {
    let backend = Backend::start(handler(|_| async {
        http::Response::builder()
            .status(StatusCode::OK)
            .header("x-ratelimit-limit", "9999")
            .header("ratelimit-policy", "\"backend\";q=1;w=1")
            .header("ratelimit", "\"backend\";r=0;t=1")
            .body(empty_body())
            .unwrap()
    }))
    .await;

    let legacy = with_default_routes("requests_per_minute = 60\nburst = 5\nheaders = \"legacy\"");
    let sidecar = Limited::start(&backend.url(), &legacy, NOON).await;
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-ratelimit-limit"), "60");
    assert_eq!(answer.header("x-ratelimit-remaining"), "4");
    assert!(!answer.headers.contains_key("ratelimit-policy"));
    assert!(!answer.headers.contains_key("ratelimit"));

    let draft = with_default_routes("requests_per_minute = 60\nburst = 5\nheaders = \"draft\"");
    let sidecar = Limited::start(&backend.url(), &draft, NOON).await;
    let answer = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("ratelimit-policy"), "\"default\";q=60;w=60");
    assert_eq!(answer.header("ratelimit"), "\"default\";r=4;t=1");
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(!answer.headers.contains_key(name), "{name}");
    }
}

#[tokio::test]
async fn a_reload_keeps_the_state_of_unchanged_limits() {
    let (backend, _) = Backend::recording().await;
    let before = with_writes_class(
        "requests_per_minute = 600\nburst = 50",
        "requests_per_minute = 60\nburst = 3",
    );
    let sidecar = Limited::start(&backend.url(), &before, NOON).await;
    for _ in 0..3 {
        sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    }
    let write = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(write.number("x-ratelimit-remaining"), 2);

    // The class changes; the default does not.
    let after = with_writes_class(
        "requests_per_minute = 600\nburst = 50",
        "requests_per_minute = 120\nburst = 4",
    );
    sidecar.reload(&after, &backend.url());
    let read = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(read.status, StatusCode::CREATED);
    assert_eq!(
        read.number("x-ratelimit-remaining"),
        45,
        "the key's own bucket kept its state"
    );
    let write = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(write.status, StatusCode::CREATED);
    assert_eq!(write.number("x-ratelimit-limit"), 120);
    assert_eq!(
        write.number("x-ratelimit-remaining"),
        3,
        "the changed class starts a bucket of its new shape"
    );

    // Changing the default moves keys without an override to a bucket of the new shape.
    let tightened = with_writes_class(
        "requests_per_minute = 60\nburst = 10",
        "requests_per_minute = 120\nburst = 4",
    );
    sidecar.reload(&tightened, &backend.url());
    let read = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(read.number("x-ratelimit-limit"), 60);
    assert_eq!(read.number("x-ratelimit-remaining"), 9);
}

#[tokio::test]
async fn idle_keys_are_shed_from_memory() {
    let (backend, _) = Backend::recording().await;
    let policy = with_writes_class(
        "requests_per_minute = 60\nburst = 5",
        "requests_per_minute = 60\nburst = 2\ndaily_quota = 10",
    );
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let keys: Vec<String> = (0..3)
        .map(|_| mint(&sidecar.state, TEST_ORG, Env::Test, &[]))
        .collect();
    for key in &keys {
        let answer = sidecar.call(Method::POST, "/v1/echo/x", key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let limits = &sidecar.state.limits;
    assert_eq!(
        limits.buckets_in_memory(),
        6,
        "a key bucket and a class bucket each"
    );
    assert_eq!(limits.quota_counters_in_memory(), 3);
    sidecar.clock.advance(Duration::from_secs(60));
    limits.shed_idle();
    limits.shed_idle();
    assert_eq!(limits.buckets_in_memory(), 0);
    assert_eq!(limits.quota_counters_in_memory(), 0);

    // The quota was counted in the store, so shedding forgot nothing.
    let answer = sidecar.call(Method::POST, "/v1/echo/x", &keys[0]).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(limits.quota_counters_in_memory(), 1);
}

// ---------------------------------------------------------------------------------------------
// Daily quotas

#[tokio::test]
async fn a_spent_quota_is_refused_until_midnight_and_other_budgets_are_not() {
    let (backend, _) = Backend::recording().await;
    let policy = with_writes_class("requests_per_minute = 600\nburst = 50", "daily_quota = 3");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    let now = sidecar.now();
    for _ in 0..3 {
        let answer = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        // A class with only a quota leaves the key's own limit to answer.
        assert_eq!(answer.header("ratelimit-policy"), "\"default\";q=600;w=60");
    }
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    assert_eq!(
        refused.number("retry-after"),
        12 * 3600,
        "until midnight UTC"
    );
    refused.assert_limit("default", 600, 46, now + 1, now);
    assert!(refused.json["detail"]
        .as_str()
        .unwrap()
        .contains("`writes`"));
    assert_eq!(backend.hits(), 3);

    // Other routes, and other keys, are not affected.
    let read = sidecar.call(Method::GET, "/v1/echo/x", &sidecar.key).await;
    assert_eq!(read.status, StatusCode::CREATED);
    let other = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let write = sidecar.call(Method::POST, "/v1/echo/x", &other).await;
    assert_eq!(write.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_quota_survives_a_restart_and_resets_at_utc_midnight() {
    let (backend, _) = Backend::recording().await;
    let policy = with_writes_class(
        "requests_per_minute = 600\nburst = 50",
        "requests_per_minute = 300\nburst = 50\ndaily_quota = 2",
    );
    // One minute before midnight.
    let sidecar = Limited::start(&backend.url(), &policy, MIDNIGHT + 86_400 - 60).await;
    for _ in 0..2 {
        let answer = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    assert_eq!(refused.header("retry-after"), "60");

    let sidecar = sidecar.restart().await;
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    assert_eq!(refused.header("retry-after"), "60");
    assert!(refused.headers.contains_key("x-ratelimit-remaining"));

    // Midnight: a new day, a new budget.
    sidecar.clock.advance(Duration::from_secs(60));
    for _ in 0..2 {
        let answer = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        // Both buckets are as full; the class's lower rate makes it the tighter one.
        assert_eq!(answer.header("ratelimit-policy"), "\"writes\";q=300;w=60");
    }
    let refused = sidecar.call(Method::POST, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    assert_eq!(refused.number("retry-after"), 86_400);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn a_key_wide_quota_counts_every_forwarded_request() {
    let (backend, _) = Backend::recording().await;
    let policy = with_default_routes("requests_per_minute = 600\nburst = 50\ndaily_quota = 2");
    let sidecar = Limited::start(&backend.url(), &policy, NOON).await;
    // Refusals before forwarding do not count.
    let unknown = sidecar.call(Method::GET, "/v2/nothing", &sidecar.key).await;
    unknown.assert_problem(StatusCode::NOT_FOUND, "route.unknown");
    for method in [Method::GET, Method::POST] {
        let answer = sidecar.call(method, "/v1/echo/x", &sidecar.key).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let refused = sidecar.call(Method::PUT, "/v1/echo/x", &sidecar.key).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    assert_eq!(refused.number("retry-after"), 12 * 3600);
    assert!(!refused.json["detail"].as_str().unwrap().contains('`'));
}

#[tokio::test]
async fn concurrent_requests_never_exceed_a_quota() {
    let (backend, _) = Backend::recording().await;
    let policy = with_writes_class(
        "requests_per_minute = 1000000\nburst = 100000",
        "daily_quota = 25",
    );
    let sidecar = Arc::new(Limited::start(&backend.url(), &policy, NOON).await);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                let client = h1_client(&sidecar.pki.paths.ca);
                let auth = format!("Bearer {}", sidecar.key);
                let mut admitted = 0;
                for _ in 0..2 {
                    let answer = call(
                        &client,
                        sidecar.addr,
                        Method::POST,
                        "/v1/echo/x",
                        Some(&auth),
                    )
                    .await;
                    match answer.status {
                        StatusCode::CREATED => admitted += 1,
                        _ => answer.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 25);
    assert_eq!(backend.hits(), 25);
}

#[tokio::test]
async fn a_quota_survives_a_restart_on_the_production_clock() {
    // Keep clear of a UTC midnight, which would legitimately reset the quota mid-test.
    let to_midnight = 86_400 - unix_now() % 86_400;
    if to_midnight < 10 {
        tokio::time::sleep(Duration::from_secs(to_midnight + 1)).await;
    }
    let (backend, _) = Backend::recording().await;
    let settings = Settings {
        routes: with_writes_class("", "daily_quota = 1"),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let auth = format!("Bearer {}", sidecar.key);
    let answer = call(
        &client,
        sidecar.addr,
        Method::POST,
        "/v1/echo/x",
        Some(&auth),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.header("x-ratelimit-limit"), "600");
    let refused = call(
        &client,
        sidecar.addr,
        Method::POST,
        "/v1/echo/x",
        Some(&auth),
    )
    .await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");

    let sidecar = sidecar.restart().await;
    let client = h1_client(sidecar.ca());
    let refused = call(
        &client,
        sidecar.addr,
        Method::POST,
        "/v1/echo/x",
        Some(&auth),
    )
    .await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota.exceeded");
    let retry_after = refused.number("retry-after");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(backend.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// A directory with readable cert and key stand-ins, so only the mistake under test shows.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    dir
}

const BASE: &str = r#"[server]
cert = "cert.pem"
key = "key.pem"

[upstream]
url = "http://127.0.0.1:8080"

[[route]]
name = "calls.create"
method = "POST"
path = "/v1/outbound-calls"
scope = "outbound_calls"
"#;

fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
    Config::parse(&SourceText::new("policy.toml", text), base)
}

/// Asserts exactly one issue, at `line`, under `key`, whose message contains `needle`.
fn one_issue(text: &str, line: usize, key: &str, needle: &str) {
    let dir = config_dir();
    let error = parse(text, dir.path()).expect_err("the policy should be refused");
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "expected one issue, got:\n{error}");
    let issue = &issues[0];
    assert_eq!(issue.location.line, line, "line of: {issue}");
    assert_eq!(issue.key, key, "key of: {issue}");
    assert!(issue.message.contains(needle), "message of: {issue}");
}

/// [`BASE`] with a `limit` on the route (line 13) and a section starting on line 15.
fn with_ratelimit(section: &str, limit: Option<&str>) -> String {
    let mut text = BASE.to_owned();
    if let Some(class) = limit {
        text.push_str(&format!("limit = \"{class}\"\n"));
    } else {
        text.push('\n');
    }
    text.push_str(&format!("\n{section}\n"));
    text
}

#[test]
fn ratelimit_defaults_and_a_full_section() {
    let dir = config_dir();
    let config = parse(BASE, dir.path()).unwrap();
    let limits = &config.ratelimit;
    assert_eq!(
        (limits.default.per_minute(), limits.default.burst()),
        (600, 50)
    );
    assert_eq!(limits.daily_quota, None);
    assert_eq!(
        limits.headers,
        portcullis::gate::ratelimit::HeaderStyle::Both
    );
    assert!(limits.classes.is_empty());
    assert!(config.routes[0].limit.is_none());

    let text = with_ratelimit(
        "[ratelimit]\nrequests_per_minute = 120\nburst = 20\ndaily_quota = 10000\nheaders = \"draft\"\n\n\
         [ratelimit.classes.outbound-calls]\nrequests_per_minute = 10\nburst = 2\ndaily_quota = 500\n\n\
         [ratelimit.classes.bulk]\ndaily_quota = 50\n",
        Some("outbound-calls"),
    );
    let config = parse(&text, dir.path()).unwrap();
    let limits = &config.ratelimit;
    assert_eq!(
        (limits.default.per_minute(), limits.default.burst()),
        (120, 20)
    );
    assert_eq!(limits.daily_quota, Some(10_000));
    assert_eq!(
        limits.headers,
        portcullis::gate::ratelimit::HeaderStyle::Draft
    );
    let class = config.routes[0].limit.as_ref().expect("the route's class");
    assert_eq!(&*class.name, "outbound-calls");
    let rate = class.rate.expect("a class rate");
    assert_eq!((rate.per_minute(), rate.burst()), (10, 2));
    assert_eq!(class.daily_quota, Some(500));
    let bulk = &limits.classes["bulk"];
    assert_eq!((bulk.rate, bulk.daily_quota), (None, Some(50)));
}

#[test]
fn a_route_naming_an_unknown_class_is_refused() {
    one_issue(
        &with_ratelimit("", Some("writes")),
        13,
        "route[0].limit",
        "define [ratelimit.classes.writes]",
    );
}

#[test]
fn bad_ratelimit_values() {
    one_issue(
        &with_ratelimit("[ratelimit]\nburst = 0", None),
        16,
        "ratelimit.burst",
        "between 1 and 100000",
    );
    one_issue(
        &with_ratelimit("[ratelimit]\nrequests_per_minute = 2000000", None),
        16,
        "ratelimit.requests_per_minute",
        "between 1 and 1000000",
    );
    one_issue(
        &with_ratelimit("[ratelimit]\ndaily_quota = -1", None),
        16,
        "ratelimit.daily_quota",
        "between 1 and",
    );
    one_issue(
        &with_ratelimit("[ratelimit]\nheaders = \"ietf\"", None),
        16,
        "ratelimit.headers",
        "\"both\", \"legacy\"",
    );
    one_issue(
        &with_ratelimit("[ratelimit]\nper_hour = 5", None),
        16,
        "ratelimit.per_hour",
        "unknown field",
    );
}

#[test]
fn bad_route_classes() {
    one_issue(
        &with_ratelimit(
            "[ratelimit.classes.writes]\nrequests_per_minute = 60",
            Some("writes"),
        ),
        16,
        "ratelimit.classes.writes.requests_per_minute",
        "add burst",
    );
    one_issue(
        &with_ratelimit("[ratelimit.classes.writes]\nburst = 6", Some("writes")),
        16,
        "ratelimit.classes.writes.burst",
        "add requests_per_minute",
    );
    one_issue(
        &with_ratelimit(
            "[ratelimit.classes.writes]\nrequests_per_minute = 60\nburst = 0",
            Some("writes"),
        ),
        17,
        "ratelimit.classes.writes.burst",
        "between 1 and",
    );
    one_issue(
        &with_ratelimit(
            "[ratelimit.classes.writes]\ndaily_quota = 0",
            Some("writes"),
        ),
        16,
        "ratelimit.classes.writes.daily_quota",
        "between 1 and",
    );
    one_issue(
        &with_ratelimit(
            "[ratelimit.classes.writes]\ndaily_limit = 5",
            Some("writes"),
        ),
        16,
        "ratelimit.classes.writes.daily_limit",
        "unknown field",
    );
    one_issue(
        &with_ratelimit("[ratelimit.classes.\"bad name\"]\ndaily_quota = 5", None),
        15,
        "ratelimit.classes.bad name",
        "class names",
    );
}

#[test]
fn a_class_that_limits_nothing_is_refused() {
    let dir = config_dir();
    let text = with_ratelimit("[ratelimit.classes.writes]\n", Some("writes"));
    let error = parse(&text, dir.path()).expect_err("refused");
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "{error}");
    assert_eq!(issues[0].key, "ratelimit.classes.writes");
    assert!(issues[0].message.contains("limits nothing"), "{error}");
}
