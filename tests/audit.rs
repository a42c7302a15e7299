//! The audit trail end to end, through the real TLS listener and the real binary: one record
//! per request (allowed, refused with every code the pipeline produces, replayed, cancelled)
//! and per admin action; the hash chain and `portcullis audit verify` against edits,
//! deletions and reordering; a torn line after SIGKILL under load; rotation; the tenant
//! query API and its cursors; and the PHI canary: no patient data in the audit files, the
//! state store or the logs.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use portcullis::body::{empty_body, full_body, ProxyBody};
use portcullis::keys::{Env, KeyChanges, KeyId, RevokeReason};
use portcullis::state::unix_now;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Settings with an `[audit]` block and extra policy text, plus the default routes.
fn with_audit(audit: &str, extra: &str) -> Settings {
    Settings {
        routes: format!("[audit]\n{audit}\n\n{extra}\n{DEFAULT_ROUTES}"),
        ..Settings::default()
    }
}

fn audit_dir(sidecar: &Sidecar) -> PathBuf {
    sidecar.pki.dir.path().join("audit")
}

/// Every record in the audit files of `dir`, in chain order.
fn read_records(dir: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for file in portcullis::audit::files::list(dir).unwrap() {
        let text = std::fs::read_to_string(&file.path).unwrap();
        for line in text.lines() {
            records.push(serde_json::from_str(line).expect("every line is JSON"));
        }
    }
    records
}

/// Flushes the writer and reads every record.
async fn records(sidecar: &Sidecar) -> Vec<Value> {
    sidecar.state.audit.flush().await.expect("audit flush");
    read_records(&audit_dir(sidecar))
}

/// Waits until a record with `request_id` is on disk (records of refusals outside the
/// pipeline are queued after their answer).
async fn wait_for_record(sidecar: &Sidecar, request_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = records(sidecar).await;
        if all.iter().any(|r| r["request_id"] == request_id) || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key_id(key: &str) -> KeyId {
    portcullis::keys::parse_key(key).unwrap().id()
}

fn uuid() -> String {
    portcullis::request_id::RequestId::generate()
        .as_str()
        .to_owned()
}

/// Sends a request with a fresh `X-Request-Id` and returns the answer and that id.
async fn call(
    client: &TestClient,
    builder: http::request::Builder,
    body: ProxyBody,
) -> (http::response::Parts, Bytes, String) {
    let id = uuid();
    let request = builder.header("x-request-id", &id).body(body).unwrap();
    let (parts, body) = send(client, request).await;
    assert_eq!(parts.headers["x-request-id"], id.as_str());
    (parts, body, id)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// What one request's record must say.
#[derive(Debug, Clone)]
struct Expect {
    label: &'static str,
    request_id: String,
    status: Option<u16>,
    code: Option<&'static str>,
    route: Option<&'static str>,
    org: Option<&'static str>,
    replayed: bool,
}

impl Expect {
    fn new(label: &'static str, request_id: &str, status: u16, code: Option<&'static str>) -> Self {
        Self {
            label,
            request_id: request_id.to_owned(),
            status: Some(status),
            code,
            route: None,
            org: None,
            replayed: false,
        }
    }

    fn route(mut self, route: &'static str) -> Self {
        self.route = Some(route);
        self
    }

    fn org(mut self, org: &'static str) -> Self {
        self.org = Some(org);
        self
    }
}

/// Checks that each expected request has exactly one record, with the expected fields.
fn check(records: &[Value], expects: &[Expect]) {
    for expect in expects {
        let found: Vec<&Value> = records
            .iter()
            .filter(|r| r["request_id"] == expect.request_id.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: one record, got {found:?}",
            expect.label
        );
        let record = found[0];
        assert_eq!(record["kind"], "request", "{}", expect.label);
        let status = record["status"].as_u64().map(|s| s as u16);
        assert_eq!(
            status, expect.status,
            "{}: status in {record}",
            expect.label
        );
        assert_eq!(
            record["code"].as_str(),
            expect.code,
            "{}: code in {record}",
            expect.label
        );
        assert_eq!(
            record["route"].as_str(),
            expect.route,
            "{}: route in {record}",
            expect.label
        );
        assert_eq!(
            record["org"].as_str(),
            expect.org,
            "{}: org in {record}",
            expect.label
        );
        assert_eq!(
            record["replayed"].as_bool(),
            Some(expect.replayed),
            "{}: replayed in {record}",
            expect.label
        );
        if expect.org.is_some() {
            assert!(record["key_id"].is_string(), "{}: key_id", expect.label);
            assert!(record["env"].is_string(), "{}: env", expect.label);
        } else {
            assert!(record["key_id"].is_null(), "{}: key_id", expect.label);
        }
        assert!(record["latency_us"].is_u64());
    }
}

/// Reads a raw answer until the peer closes or `patience` passes.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    patience: Duration,
) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(patience, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn header_of(answer: &str, name: &str) -> Option<String> {
    answer.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// A backend that echoes with 201, after sleeping for paths containing `slow` (400 ms) or
/// `stall` (3 s).
async fn slow_backend() -> Backend {
    Backend::start(handler(
        |request: Request<hyper::body::Incoming>| async move {
            let path = request.uri().path().to_owned();
            if path.contains("stall") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            } else if path.contains("slow") {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .body(full_body(Bytes::from_static(b"{\"stored\":true}")))
                .unwrap()
        },
    ))
    .await
}

// ---------------------------------------------------------------------------------------------
// One record per request, for every outcome

const GATES_EXTRA: &str = r#"
[ratelimit.classes.tight]
requests_per_minute = 1
burst = 1

[ratelimit.classes.daily]
daily_quota = 1

[[route]]
name = "tight.read"
method = "GET"
path = "/v1/tight"
any_key = true
limit = "tight"

[[route]]
name = "daily.read"
method = "GET"
path = "/v1/daily"
any_key = true
limit = "daily"
"#;

#[tokio::test]
async fn every_gate_answer_and_refusal_leaves_exactly_one_record() {
    let (backend, _) = Backend::recording().await;
    let mut settings = with_audit("client_ip = \"full\"", GATES_EXTRA);
    settings.server = "max_headers = 20\nmax_body_bytes = 2048".to_owned();
    settings.auth = "max_failures_per_ip = 6".to_owned();
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let state = &sidecar.state;
    let h1 = h1_client(sidecar.ca());
    let h2 = h2_client(sidecar.ca());
    let key = sidecar.key.clone();
    let get = |path: &str, auth: Option<&str>| {
        let mut builder = Request::get(sidecar.url(path));
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder
    };
    let mut expects = Vec::new();
    const ORG: &str = TEST_ORG;

    let (parts, _, id) = call(&h1, get("/v1/echo/a", Some(&bearer(&key))), empty_body()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    expects.push(
        Expect::new("allowed", &id, 201, None)
            .route("echo.get")
            .org(ORG),
    );

    let (_, _, id) = call(&h2, get("/v1/echo/a", Some(&bearer(&key))), empty_body()).await;
    expects.push(
        Expect::new("allowed over h2", &id, 201, None)
            .route("echo.get")
            .org(ORG),
    );

    let (_, _, id) = call(&h1, get("/v1/echo/a", None), empty_body()).await;
    expects.push(Expect::new("auth.missing", &id, 401, Some("auth.missing")));

    let bogus = "Bearer pcl_test_0badc0de_0000000000000000000000000000000000000000";
    let (_, _, id) = call(&h1, get("/v1/echo/a", Some(bogus)), empty_body()).await;
    expects.push(Expect::new("auth.invalid", &id, 401, Some("auth.invalid")));

    let revoked = mint(state, ORG, Env::Test, &[]);
    state
        .keys
        .revoke(key_id(&revoked), RevokeReason::Admin, unix_now())
        .unwrap();
    let (_, _, id) = call(
        &h1,
        get("/v1/echo/a", Some(&bearer(&revoked))),
        empty_body(),
    )
    .await;
    expects.push(Expect::new("auth.revoked", &id, 401, Some("auth.revoked")).org(ORG));

    let expiring = mint(state, ORG, Env::Test, &[]);
    let then = unix_now() - 100;
    let changes = KeyChanges {
        expires_at: Some(Some(then + 50)),
        ..KeyChanges::default()
    };
    state
        .keys
        .update(key_id(&expiring), &changes, then)
        .unwrap();
    let (_, _, id) = call(
        &h1,
        get("/v1/echo/a", Some(&bearer(&expiring))),
        empty_body(),
    )
    .await;
    expects.push(Expect::new("auth.expired", &id, 401, Some("auth.expired")).org(ORG));

    let no_scopes = mint(state, ORG, Env::Test, &[]);
    let (_, _, id) = call(
        &h1,
        get("/v1/notes/n1", Some(&bearer(&no_scopes))),
        empty_body(),
    )
    .await;
    expects.push(
        Expect::new("perm.denied", &id, 403, Some("perm.denied"))
            .route("notes.read")
            .org(ORG),
    );

    let live = mint(state, ORG, Env::Live, &[]);
    let (_, _, id) = call(&h1, get("/v1/echo/a", Some(&bearer(&live))), empty_body()).await;
    expects.push(Expect::new("env.gated", &id, 403, Some("env.gated")).org(ORG));

    let fenced = mint(state, ORG, Env::Test, &[]);
    let changes = KeyChanges {
        allow_cidrs: Some(vec!["10.0.0.0/8".parse().unwrap()]),
        ..KeyChanges::default()
    };
    state
        .keys
        .update(key_id(&fenced), &changes, unix_now())
        .unwrap();
    let (_, _, id) = call(&h1, get("/v1/echo/a", Some(&bearer(&fenced))), empty_body()).await;
    expects.push(Expect::new("ip.denied", &id, 403, Some("ip.denied")).org(ORG));

    let (_, _, id) = call(&h1, get("/v1/nowhere", Some(&bearer(&key))), empty_body()).await;
    expects.push(Expect::new("route.unknown", &id, 404, Some("route.unknown")).org(ORG));

    let (_, _, id) = call(
        &h1,
        get("/v1/echo/a%2Fb", Some(&bearer(&key))),
        empty_body(),
    )
    .await;
    expects.push(
        Expect::new(
            "request.invalid_path",
            &id,
            400,
            Some("request.invalid_path"),
        )
        .org(ORG),
    );

    let (_, _, id) = call(
        &h1,
        get("/v1/echo/a?api_key=x", Some(&bearer(&key))),
        empty_body(),
    )
    .await;
    expects.push(Expect::new(
        "request.key_in_url",
        &id,
        400,
        Some("request.key_in_url"),
    ));

    let mut crowded = get("/v1/echo/a", Some(&bearer(&key)));
    for i in 0..30 {
        crowded = crowded.header(format!("x-filler-{i}"), "1");
    }
    let (_, _, id) = call(&h1, crowded, empty_body()).await;
    expects.push(Expect::new(
        "request.headers_too_large",
        &id,
        431,
        Some("request.headers_too_large"),
    ));

    let post = |path: &str, idempotency_key: Option<&str>| {
        let mut builder = Request::post(sidecar.url(path)).header("authorization", bearer(&key));
        if let Some(value) = idempotency_key {
            builder = builder.header("idempotency-key", value);
        }
        builder
    };
    let (_, _, id) = call(
        &h1,
        post("/v1/echo/big", Some("big-1")),
        full_body(vec![b'x'; 4096]),
    )
    .await;
    expects.push(
        Expect::new("request.too_large", &id, 413, Some("request.too_large"))
            .route("echo.post")
            .org(ORG),
    );

    let (_, _, id) = call(&h1, post("/v1/echo/w", None), full_body("a")).await;
    expects.push(
        Expect::new("idempotency.missing", &id, 400, Some("idempotency.missing"))
            .route("echo.post")
            .org(ORG),
    );

    let (parts, _, id) = call(&h1, post("/v1/echo/w", Some("write-1")), full_body("a")).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    expects.push(
        Expect::new("first write", &id, 201, None)
            .route("echo.post")
            .org(ORG),
    );

    let (parts, _, id) = call(&h1, post("/v1/echo/w", Some("write-1")), full_body("a")).await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    let mut replay = Expect::new("replayed write", &id, 201, None)
        .route("echo.post")
        .org(ORG);
    replay.replayed = true;
    expects.push(replay);

    let (_, _, id) = call(&h1, post("/v1/echo/w", Some("write-1")), full_body("b")).await;
    expects.push(
        Expect::new(
            "idempotency.mismatch",
            &id,
            422,
            Some("idempotency.mismatch"),
        )
        .route("echo.post")
        .org(ORG),
    );

    let (_, _, id) = call(&h1, get("/v1/tight", Some(&bearer(&key))), empty_body()).await;
    expects.push(
        Expect::new("tight ok", &id, 201, None)
            .route("tight.read")
            .org(ORG),
    );
    let (_, _, id) = call(&h1, get("/v1/tight", Some(&bearer(&key))), empty_body()).await;
    expects.push(
        Expect::new("rate.limited", &id, 429, Some("rate.limited"))
            .route("tight.read")
            .org(ORG),
    );

    let (_, _, id) = call(&h1, get("/v1/daily", Some(&bearer(&key))), empty_body()).await;
    expects.push(
        Expect::new("daily ok", &id, 201, None)
            .route("daily.read")
            .org(ORG),
    );
    let (_, _, id) = call(&h1, get("/v1/daily", Some(&bearer(&key))), empty_body()).await;
    expects.push(
        Expect::new("quota.exceeded", &id, 429, Some("quota.exceeded"))
            .route("daily.read")
            .org(ORG),
    );

    let (_, _, id) = call(
        &h1,
        get("/v1/auth/whoami", Some(&bearer(&key))),
        empty_body(),
    )
    .await;
    expects.push(
        Expect::new("whoami", &id, 200, None)
            .route("@whoami")
            .org(ORG),
    );

    let (_, _, id) = call(&h1, get("/healthz", None), empty_body()).await;
    expects.push(Expect::new("health", &id, 200, None).route("@health"));

    let reader = mint(state, ORG, Env::Test, &["audit:read"]);
    let (_, _, id) = call(
        &h1,
        get("/v1/audit/events?limit=0", Some(&bearer(&reader))),
        empty_body(),
    )
    .await;
    expects.push(
        Expect::new(
            "request.invalid_query",
            &id,
            400,
            Some("request.invalid_query"),
        )
        .route("@audit.events")
        .org(ORG),
    );
    let (_, _, id) = call(
        &h1,
        get("/v1/audit/events", Some(&bearer(&key))),
        empty_body(),
    )
    .await;
    expects.push(
        Expect::new("audit perm.denied", &id, 403, Some("perm.denied"))
            .route("@audit.events")
            .org(ORG),
    );

    let odd = Request::builder()
        .method(Method::from_bytes(b"JOHNSMITH").unwrap())
        .uri(sidecar.url("/v1/echo/a"))
        .header("authorization", bearer(&key));
    let (_, _, id) = call(&h1, odd, empty_body()).await;
    expects.push(Expect::new("extension method", &id, 404, Some("route.unknown")).org(ORG));

    // Plain HTTP on the TLS port: refused before the pipeline, recorded after the answer.
    let mut tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.write_all(b"DELETE /v1/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let plain_id = header_of(&answer, "x-request-id").expect("x-request-id");
    expects.push(Expect::new(
        "request.plain_http",
        &plain_id,
        400,
        Some("request.plain_http"),
    ));

    // Failed authentications from this address exhaust its budget last.
    let mut throttled = None;
    for _ in 0..10 {
        let (parts, _, id) = call(&h1, get("/v1/echo/a", Some(bogus)), empty_body()).await;
        if parts.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(id);
            break;
        }
        expects.push(Expect::new(
            "auth.invalid again",
            &id,
            401,
            Some("auth.invalid"),
        ));
    }
    let id = throttled.expect("auth.throttled within 10 failures");
    expects.push(Expect::new(
        "auth.throttled",
        &id,
        429,
        Some("auth.throttled"),
    ));

    let all = wait_for_record(&sidecar, &plain_id).await;
    check(&all, &expects);

    let allowed = all
        .iter()
        .find(|r| r["request_id"] == expects[0].request_id.as_str())
        .unwrap();
    assert_eq!(allowed["key_id"], key_id(&key).to_string());
    assert_eq!(allowed["env"], "test");
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["client_ip"], "127.0.0.1");
    let plain = all
        .iter()
        .find(|r| r["request_id"] == plain_id.as_str())
        .unwrap();
    assert_eq!(plain["method"], "DELETE");
    let odd = all
        .iter()
        .find(|r| r["request_id"] == expects[expects.len() - 4].request_id.as_str());
    assert!(odd.is_some());
    let text = all.iter().map(Value::to_string).collect::<String>();
    assert!(
        !text.contains("JOHNSMITH"),
        "an extension method is recorded as OTHER"
    );
    assert!(all.iter().any(|r| r["method"] == "OTHER"));
    assert!(!text.contains("nowhere") && !text.contains("a%2Fb") && !text.contains("api_key"));

    // Every request the test made has its record, and nothing else is in the trail.
    assert_eq!(all.len(), expects.len(), "one record per request, no more");
    assert!(all.iter().all(|r| r["kind"] == "request"));
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    drop(backend);
}

#[tokio::test]
async fn slow_backend_outcomes_are_recorded_in_progress_not_replayable_timeout_and_cancelled() {
    let backend = slow_backend().await;
    let settings = with_audit("", "[idempotency]\nmax_response_bytes = 1\n");
    let mut settings = settings;
    settings.upstream = "response_timeout = \"1s\"".to_owned();
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let key = sidecar.key.clone();
    let post = |idempotency_key: &str| {
        Request::post(sidecar.url("/v1/echo/slow"))
            .header("authorization", bearer(&key))
            .header("idempotency-key", idempotency_key)
    };
    let mut expects = Vec::new();

    let first = {
        let client = client.clone();
        let builder = post("slow-1");
        tokio::spawn(async move { call(&client, builder, full_body("a")).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (parts, _, id) = call(&client, post("slow-1"), full_body("a")).await;
    assert_eq!(parts.status, StatusCode::CONFLICT);
    expects.push(
        Expect::new(
            "idempotency.in_progress",
            &id,
            409,
            Some("idempotency.in_progress"),
        )
        .route("echo.post")
        .org(TEST_ORG),
    );
    let (parts, _, id) = first.await.unwrap();
    assert_eq!(parts.status, StatusCode::CREATED);
    expects.push(
        Expect::new("slow write", &id, 201, None)
            .route("echo.post")
            .org(TEST_ORG),
    );
    let (_, _, id) = call(&client, post("slow-1"), full_body("a")).await;
    expects.push(
        Expect::new(
            "idempotency.not_replayable",
            &id,
            409,
            Some("idempotency.not_replayable"),
        )
        .route("echo.post")
        .org(TEST_ORG),
    );

    let stall =
        || Request::get(sidecar.url("/v1/echo/stall")).header("authorization", bearer(&key));
    let (parts, _, id) = call(&client, stall(), empty_body()).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    expects.push(
        Expect::new("upstream.timeout", &id, 504, Some("upstream.timeout"))
            .route("echo.get")
            .org(TEST_ORG),
    );

    // A client that gives up mid-request still leaves a record: no status, `request.cancelled`.
    let cancelled_id = uuid();
    let abandoned = {
        let client = h1_client(sidecar.ca());
        let request = stall()
            .header("x-request-id", &cancelled_id)
            .body(empty_body())
            .unwrap();
        tokio::spawn(async move { client.request(request).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort();
    let mut cancelled = Expect::new(
        "request.cancelled",
        &cancelled_id,
        0,
        Some("request.cancelled"),
    )
    .route("echo.get")
    .org(TEST_ORG);
    cancelled.status = None;
    expects.push(cancelled);

    let deadline = Instant::now() + Duration::from_secs(5);
    let all = loop {
        let all = records(&sidecar).await;
        if all.iter().any(|r| r["request_id"] == cancelled_id.as_str()) || Instant::now() > deadline
        {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    check(&all, &expects);
}

#[tokio::test]
async fn an_unreachable_backend_is_recorded_as_upstream_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sidecar = Sidecar::start(&url, with_audit("", "")).await;
    let client = h1_client(sidecar.ca());
    let request =
        Request::get(sidecar.url("/v1/echo/a")).header("authorization", bearer(&sidecar.key));
    let (parts, _, id) = call(&client, request, empty_body()).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    let all = records(&sidecar).await;
    check(
        &all,
        &[Expect::new(
            "upstream.unavailable",
            &id,
            502,
            Some("upstream.unavailable"),
        )
        .route("echo.get")
        .org(TEST_ORG)],
    );
}

// ---------------------------------------------------------------------------------------------
// A full queue: block (503 audit.unavailable) or shed

#[tokio::test]
async fn a_full_disk_fills_the_queue_and_then_requests_get_503_not_a_hang() {
    let (backend, _) = Backend::recording().await;
    let pki = test_pki();
    let dir = pki.dir.path().join("full-audit");
    std::fs::create_dir_all(&dir).unwrap();
    let name = portcullis::audit::files::file_name(1, portcullis::audit::time::now_micros());
    std::os::unix::fs::symlink("/dev/full", dir.join(name)).unwrap();
    let settings = with_audit(
        &format!(
            "dir = \"{}\"\nqueue_capacity = 2\nblock_timeout = \"300ms\"",
            dir.display()
        ),
        "",
    );
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let get =
        || Request::get(sidecar.url("/v1/echo/a")).header("authorization", bearer(&sidecar.key));
    for _ in 0..2 {
        let (parts, _, _) = call(&client, get(), empty_body()).await;
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    let started = Instant::now();
    let (parts, body, _) = call(&client, get(), empty_body()).await;
    let waited = started.elapsed();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem(&parts, &body)["code"], "audit.unavailable");
    assert_eq!(parts.headers["retry-after"], "1");
    assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(
        backend.hits(),
        2,
        "the refused request never reached the backend"
    );
    assert!(
        sidecar.state.audit.flush().await.is_err(),
        "nothing is durable"
    );
    drop(pki);
}

#[tokio::test]
async fn with_shed_a_full_queue_serves_requests_without_records_and_counts_them() {
    let (backend, _) = Backend::recording().await;
    let pki = test_pki();
    let dir = pki.dir.path().join("full-audit");
    std::fs::create_dir_all(&dir).unwrap();
    let name = portcullis::audit::files::file_name(1, portcullis::audit::time::now_micros());
    std::os::unix::fs::symlink("/dev/full", dir.join(name)).unwrap();
    let settings = with_audit(
        &format!(
            "dir = \"{}\"\nqueue_capacity = 1\nwhen_full = \"shed\"",
            dir.display()
        ),
        "",
    );
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    for _ in 0..4 {
        let request =
            Request::get(sidecar.url("/v1/echo/a")).header("authorization", bearer(&sidecar.key));
        let (parts, _, _) = call(&client, request, empty_body()).await;
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    assert_eq!(backend.hits(), 4);
    assert_eq!(sidecar.state.audit.shed_count(), 3);
    drop(pki);
}

// ---------------------------------------------------------------------------------------------
// Admin actions

async fn run_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .env("PORTCULLIS_LOG", "off")
            .output()
            .expect("run portcullis")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_admin_action_is_an_audit_record_with_action_actor_and_target() {
    use std::os::unix::fs::MetadataExt;
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("", "")).await;
    let socket = sidecar.pki.dir.path().join("run/admin.sock");
    let server = portcullis::admin::AdminServer::bind(sidecar.state.clone(), &socket).unwrap();
    let handle = server.spawn();
    let uid = std::fs::metadata(sidecar.pki.dir.path()).unwrap().uid();
    let actor = format!("uid:{uid}");
    let admin = |args: &[&str]| {
        let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        full.extend([
            "--admin-socket".to_owned(),
            socket.display().to_string(),
            "--json".to_owned(),
        ]);
        run_cli(full)
    };
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    ok(&admin(&["orgs", "create", "acme", "--name", "Acme Health"]).await);
    ok(&admin(&["orgs", "set", "acme", "--name", "Acme Health Partners"]).await);
    ok(&admin(&["orgs", "set", "acme", "--hipaa-mode", "on"]).await);
    ok(&admin(&[
        "orgs",
        "baa",
        "acme",
        "--status",
        "signed",
        "--evidence",
        "contract 2026-17",
    ])
    .await);
    let created = ok(&admin(&[
        "keys",
        "create",
        "--org",
        "acme",
        "--env",
        "live",
        "--scopes",
        "audit:read",
    ])
    .await);
    let id = created["id"].as_str().unwrap().to_owned();
    ok(&admin(&["keys", "update", &id, "--label", "nightly export"]).await);
    let rotated = ok(&admin(&["keys", "rotate", &id]).await);
    let leaked = rotated["key"].as_str().unwrap().to_owned();
    // A valid key found in a URL is revoked by Portcullis itself.
    let client = h1_client(sidecar.ca());
    let (parts, _) = get(
        &client,
        &sidecar.url(&format!("/v1/echo/a?api_key={leaked}")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    let second = ok(&admin(&[
        "keys", "create", "--org", "acme", "--env", "test", "--scopes", "x",
    ])
    .await);
    let second_id = second["id"].as_str().unwrap().to_owned();
    ok(&admin(&["keys", "revoke", &second_id]).await);

    let all = records(&sidecar).await;
    let admin_records: Vec<&Value> = all.iter().filter(|r| r["kind"] == "admin").collect();
    let summary: Vec<(String, String, String, String)> = admin_records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
                r["target"].as_str().unwrap().to_owned(),
                r["org"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |action: &str, actor: &str, target: &str| {
        (
            action.to_owned(),
            actor.to_owned(),
            target.to_owned(),
            "acme".to_owned(),
        )
    };
    assert_eq!(
        summary,
        vec![
            row("org_created", &actor, "acme"),
            row("org_updated", &actor, "acme"),
            row("hipaa_mode_set", &actor, "acme"),
            row("baa_recorded", &actor, "acme"),
            row("key_minted", &actor, &id),
            row("key_updated", &actor, &id),
            row("key_rotated", &actor, &id),
            row("key_revoked", "portcullis", &id),
            row("key_minted", &actor, &second_id),
            row("key_revoked", &actor, &second_id),
        ]
    );
    for record in &admin_records {
        let keys: BTreeSet<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = [
            "seq", "ts", "kind", "org", "action", "actor", "target", "prev", "hash",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected, "admin records carry no free text: {record}");
    }
    let text = all.iter().map(Value::to_string).collect::<String>();
    assert!(!text.contains("contract 2026-17") && !text.contains("nightly export"));
    assert!(!text.contains("Acme Health"));
    // The admin log itself is unchanged: it lists the same actions.
    assert_eq!(sidecar.state.admin_log.list(100).unwrap().len(), 10);
    handle.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The chain and `portcullis audit verify`

fn verify_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("audit")
        .arg("verify")
        .args(args)
        .env("PORTCULLIS_LOG", "off")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sidecar that has served `n` requests, with its trail flushed.
async fn trail_of(n: usize, audit: &str) -> (Backend, Sidecar) {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit(audit, "")).await;
    let client = h1_client(sidecar.ca());
    for i in 0..n {
        let path = format!("/v1/echo/{i}");
        let auth = if i % 4 == 3 {
            None
        } else {
            Some(bearer(&sidecar.key))
        };
        let mut builder = Request::get(sidecar.url(&path));
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        call(&client, builder, empty_body()).await;
    }
    sidecar.state.audit.flush().await.unwrap();
    (backend, sidecar)
}

/// A change made to the lines of an audit file.
type Edit = dyn FnOnce(&mut Vec<String>);

/// Copies the single audit file of `sidecar` to a fresh directory, changed by `edit`.
fn tampered(
    sidecar: &Sidecar,
    edit: impl FnOnce(&mut Vec<String>),
) -> (tempfile::TempDir, PathBuf) {
    let files = portcullis::audit::files::list(&audit_dir(sidecar)).unwrap();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0].path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    edit(&mut lines);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(files[0].name());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (dir, path)
}

#[tokio::test]
async fn verify_passes_a_clean_trail_and_names_the_first_broken_seq_of_edits_deletions_and_swaps() {
    let (_backend, sidecar) = trail_of(12, "").await;
    let dir = audit_dir(&sidecar);
    let out = verify_cli(&[dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("ok: 12 records (seq 1-12)"),
        "{}",
        stdout(&out)
    );

    // The policy's own directory is the default.
    let policy = sidecar.pki.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(&sidecar.pki, "http://127.0.0.1:9", &with_audit("", "")),
    )
    .unwrap();
    let out = verify_cli(&["--config", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));

    let cases: Vec<(&str, Box<Edit>)> = vec![
        (
            "edited",
            Box::new(|lines: &mut Vec<String>| {
                lines[4] = lines[4].replace("\"status\":201", "\"status\":200");
                assert!(lines[4].contains("\"status\":200"));
            }),
        ),
        (
            "deleted",
            Box::new(|lines: &mut Vec<String>| {
                lines.remove(4);
            }),
        ),
        (
            "reordered",
            Box::new(|lines: &mut Vec<String>| lines.swap(4, 5)),
        ),
    ];
    for (label, edit) in cases {
        let (_dir, path) = tampered(&sidecar, edit);
        let out = verify_cli(&[path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{label}: {}", stdout(&out));
        assert!(
            stdout(&out).contains("first broken seq: 5"),
            "{label}: {}",
            stdout(&out)
        );
    }
}

/// Rewrites every line from index `from` with fresh plain SHA-256 links: what an attacker
/// who can write the file can do to an unkeyed chain.
fn rechain(lines: &mut [String], from: usize) {
    use portcullis::audit::chain::{self, ChainKey};
    let key = ChainKey::plain();
    let mut prev = chain::split(lines[from - 1].as_bytes()).unwrap().hash;
    for line in lines.iter_mut().skip(from) {
        let body = chain::split(line.as_bytes()).unwrap().body.to_vec();
        let mut rebuilt = body;
        prev = chain::seal(&key, &prev, &mut rebuilt);
        *line = String::from_utf8(rebuilt).unwrap().trim_end().to_owned();
    }
}

#[tokio::test]
async fn an_hmac_key_stops_an_attacker_who_rebuilds_the_chain() {
    let (_backend, sidecar) = trail_of(8, "hmac_key_file = \"audit-hmac.key\"").await;
    let key_file = sidecar.pki.dir.path().join("audit-hmac.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let dir = audit_dir(&sidecar);
    let key_arg = key_file.to_str().unwrap();
    let out = verify_cli(&["--hmac-key-file", key_arg, dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("HMAC-SHA256"));
    // Without the key the links do not verify at all.
    let out = verify_cli(&[dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("first broken seq: 1"),
        "{}",
        stdout(&out)
    );

    // Edit a record and recompute every later link: plain SHA-256 cannot tell, HMAC can.
    let (_copy, path) = tampered(&sidecar, |lines| {
        lines[3] = lines[3].replace("\"status\":201", "\"status\":204");
        rechain(lines, 3);
    });
    let out = verify_cli(&["--hmac-key-file", key_arg, path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("first broken seq: 4"),
        "{}",
        stdout(&out)
    );
    let missing = verify_cli(&[
        "--hmac-key-file",
        "/nonexistent/key",
        path.to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test]
async fn rotation_by_size_keeps_one_chain_across_files_and_restarts() {
    let (_backend, sidecar) = trail_of(40, "rotate_bytes = 4096").await;
    let dir = audit_dir(&sidecar);
    let files = portcullis::audit::files::list(&dir).unwrap();
    assert!(files.len() >= 3, "{} files", files.len());
    let mut last_hash: Option<String> = None;
    for file in &files {
        let text = std::fs::read_to_string(&file.path).unwrap();
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            file.name(),
            text.len()
        );
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["seq"].as_u64(), Some(file.first_seq));
        if let Some(previous) = &last_hash {
            assert_eq!(
                lines[0]["prev"].as_str(),
                Some(previous.as_str()),
                "{}",
                file.name()
            );
        }
        last_hash = lines.last().map(|l| l["hash"].as_str().unwrap().to_owned());
    }
    let out = verify_cli(&[dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok: 40 records"), "{}", stdout(&out));

    // A restart continues the same chain.
    let sidecar = sidecar.restart().await;
    let client = h1_client(sidecar.ca());
    for _ in 0..5 {
        let request = Request::get(sidecar.url("/v1/echo/again"))
            .header("authorization", bearer(&sidecar.key));
        call(&client, request, empty_body()).await;
    }
    let all = records(&sidecar).await;
    assert_eq!(all.len(), 45);
    assert_eq!(all[40]["prev"], all[39]["hash"]);
    let out = verify_cli(&[dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok: 45 records"), "{}", stdout(&out));
}

// ---------------------------------------------------------------------------------------------
// The tenant query API

const OTHER_ORG: &str = "other-org";

async fn query(
    client: &TestClient,
    sidecar: &Sidecar,
    key: &str,
    path_and_query: &str,
) -> (http::response::Parts, Value) {
    let request = Request::get(sidecar.url(path_and_query))
        .header("authorization", bearer(key))
        .body(empty_body())
        .unwrap();
    let (parts, body) = send(client, request).await;
    (parts, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn tenants_see_only_their_own_records_newest_first_and_cursors_do_not_cross() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("", "")).await;
    let state = &sidecar.state;
    state.orgs.create(OTHER_ORG, "Other", unix_now()).unwrap();
    let a_reader = mint(state, TEST_ORG, Env::Test, &["audit:read"]);
    let b_reader = mint(state, OTHER_ORG, Env::Test, &["audit:read"]);
    let b_key = mint(state, OTHER_ORG, Env::Test, &[]);
    let client = h1_client(sidecar.ca());
    for i in 0..7 {
        let request = Request::get(sidecar.url(&format!("/v1/echo/a{i}")))
            .header("authorization", bearer(&sidecar.key));
        call(&client, request, empty_body()).await;
    }
    let no_scope = mint(state, TEST_ORG, Env::Test, &[]);
    let request =
        Request::get(sidecar.url("/v1/notes/1")).header("authorization", bearer(&no_scope));
    call(&client, request, empty_body()).await;
    for i in 0..5 {
        let request = Request::get(sidecar.url(&format!("/v1/echo/b{i}")))
            .header("authorization", bearer(&b_key));
        call(&client, request, empty_body()).await;
    }
    let all = records(&sidecar).await;
    let mine: Vec<u64> = all
        .iter()
        .filter(|r| r["org"] == TEST_ORG)
        .map(|r| r["seq"].as_u64().unwrap())
        .rev()
        .collect();
    let theirs: Vec<u64> = all
        .iter()
        .filter(|r| r["org"] == OTHER_ORG)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(mine.len(), 8);
    assert_eq!(theirs.len(), 5);

    // Page through A's trail, three at a time.
    let mut seen = Vec::new();
    let mut path = "/v1/audit/events?limit=3".to_owned();
    let mut first_cursor = None;
    loop {
        let (parts, page) = query(&client, &sidecar, &a_reader, &path).await;
        assert_eq!(parts.status, StatusCode::OK, "{page}");
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(page["page"]["limit"], 3);
        for event in page["events"].as_array().unwrap() {
            assert_eq!(event["org"], TEST_ORG);
            assert!(event["hash"].is_string() && event["prev"].is_string());
            seen.push(event["seq"].as_u64().unwrap());
        }
        match page["page"]["next_cursor"].as_str() {
            Some(cursor) => {
                first_cursor.get_or_insert(cursor.to_owned());
                path = format!("/v1/audit/events?limit=3&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(seen, mine, "every record of A once, newest first");

    // B never sees A's records, and A's cursor is not found for B.
    let (parts, page) = query(&client, &sidecar, &b_reader, "/v1/audit/events?limit=500").await;
    assert_eq!(parts.status, StatusCode::OK);
    let b_seen: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(b_seen
        .iter()
        .all(|seq| theirs.contains(seq) || *seq > *mine.first().unwrap()));
    assert!(b_seen.iter().all(|seq| !mine.contains(seq)));
    let cursor = first_cursor.unwrap();
    let (parts, body) = query(
        &client,
        &sidecar,
        &b_reader,
        &format!("/v1/audit/events?cursor={cursor}"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "route.unknown");

    // One record by seq: A's own is found, B's is not.
    let (parts, event) = query(
        &client,
        &sidecar,
        &a_reader,
        &format!("/v1/audit/events/{}", mine[0]),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(event["seq"].as_u64(), Some(mine[0]));
    let (parts, body) = query(
        &client,
        &sidecar,
        &a_reader,
        &format!("/v1/audit/events/{}", theirs[0]),
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "route.unknown");
    let (parts, _) = query(&client, &sidecar, &a_reader, "/v1/audit/events/999999").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);

    // Filters.
    let (_, page) = query(
        &client,
        &sidecar,
        &a_reader,
        "/v1/audit/events?code=perm.denied",
    )
    .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["route"], "notes.read");
    let (_, page) = query(
        &client,
        &sidecar,
        &a_reader,
        "/v1/audit/events?route=echo.get&status=201",
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 7);
    let (_, page) = query(&client, &sidecar, &a_reader, "/v1/audit/events?status=500").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    assert!(page["page"]["next_cursor"].is_null());
    let middle = all
        .iter()
        .find(|r| r["seq"].as_u64() == Some(mine[3]))
        .unwrap();
    let ts = middle["ts"].as_str().unwrap();
    let (_, page) = query(
        &client,
        &sidecar,
        &a_reader,
        &format!("/v1/audit/events?since={ts}&limit=500"),
    )
    .await;
    let since: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(since.iter().all(|seq| *seq >= mine[3]));
    assert!(since.contains(&mine[3]) && !since.contains(&mine[4]));
    let (_, page) = query(
        &client,
        &sidecar,
        &a_reader,
        &format!("/v1/audit/events?until={ts}&limit=500"),
    )
    .await;
    let until: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(until.iter().all(|seq| *seq < mine[3]));
    assert_eq!(until.len(), 4);

    // Mistakes: 400 without echoing the request; no scope: 403.
    for bad in [
        "limit=0",
        "limit=501",
        "since=last%20tuesday",
        "status=abc",
        "cursor=not-a-cursor",
        "patient=Jane%20Doe",
        "limit=1&limit=2",
    ] {
        let (parts, body) = query(
            &client,
            &sidecar,
            &a_reader,
            &format!("/v1/audit/events?{bad}"),
        )
        .await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "request.invalid_query", "{bad}");
        assert!(!body.to_string().contains("Jane") && !body.to_string().contains("tuesday"));
    }
    let (parts, body) = query(&client, &sidecar, &sidecar.key, "/v1/audit/events").await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "perm.denied");
    assert!(body["detail"].as_str().unwrap().contains("audit:read"));
}

#[tokio::test]
async fn the_query_path_and_scope_are_configurable_and_the_endpoint_can_be_disabled() {
    let (backend, _) = Backend::recording().await;
    let settings = with_audit(
        "query_path = \"/api/v2/public/audit/events\"\nquery_scope = \"siem:pull\"",
        "",
    );
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let reader = mint(&sidecar.state, TEST_ORG, Env::Test, &["siem:pull"]);
    let client = h1_client(sidecar.ca());
    let request = Request::get(sidecar.url("/v1/echo/x")).header("authorization", bearer(&reader));
    call(&client, request, empty_body()).await;
    sidecar.state.audit.flush().await.unwrap();
    let (parts, page) = query(&client, &sidecar, &reader, "/api/v2/public/audit/events").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(page["events"][0]["route"], "echo.get");
    let (parts, _) = query(&client, &sidecar, &reader, "/v1/audit/events").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(
        backend.hits(),
        1,
        "the built-in endpoint never reaches the backend"
    );

    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("query_path = \"\"", "")).await;
    let reader = mint(&sidecar.state, TEST_ORG, Env::Test, &["audit:read"]);
    let client = h1_client(sidecar.ca());
    let (parts, body) = query(&client, &sidecar, &reader, "/v1/audit/events").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "route.unknown");
}

#[tokio::test]
async fn durable_records_are_published_for_the_webhook_stream() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("", "")).await;
    let mut stream = sidecar.state.audit.subscribe().expect("enabled");
    let client = h1_client(sidecar.ca());
    let request =
        Request::get(sidecar.url("/v1/echo/x")).header("authorization", bearer(&sidecar.key));
    let (_, _, id) = call(&client, request, empty_body()).await;
    let committed = tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed.seq, 1);
    assert_eq!(committed.org.as_deref(), Some(TEST_ORG));
    let line: Value = serde_json::from_slice(&committed.line).unwrap();
    assert_eq!(line["request_id"], id.as_str());
    // What is published is exactly what is on disk.
    let on_disk = std::fs::read_to_string(
        &portcullis::audit::files::list(&audit_dir(&sidecar)).unwrap()[0].path,
    )
    .unwrap();
    assert_eq!(on_disk.trim_end().as_bytes(), &committed.line[..]);
}

#[tokio::test]
async fn the_audit_trail_can_be_turned_off_for_measurements() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("enabled = false", "")).await;
    let client = h1_client(sidecar.ca());
    let request =
        Request::get(sidecar.url("/v1/echo/x")).header("authorization", bearer(&sidecar.key));
    let (parts, _, _) = call(&client, request, empty_body()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(!sidecar.state.audit.is_enabled());
    assert!(!audit_dir(&sidecar).exists());
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn audit_settings_are_validated_with_line_and_key() {
    use portcullis::config::{Config, SourceText};
    let pki = test_pki();
    let base = policy_text(&pki, "http://127.0.0.1:9", &Settings::default());
    let parse = |audit: &str| {
        let text = format!("{base}\n[audit]\n{audit}\n");
        Config::parse(&SourceText::new("p.toml", text), pki.dir.path())
    };
    let config = parse("").unwrap().audit;
    assert!(config.enabled);
    assert_eq!(config.dir, pki.dir.path().join("audit"));
    assert_eq!(config.commit_interval, Duration::from_millis(50));
    assert_eq!(config.block_timeout, Duration::from_secs(2));
    assert_eq!(config.query_path.as_deref(), Some("/v1/audit/events"));
    assert_eq!(config.query_scope, "audit:read");
    assert_eq!(config.client_ip, portcullis::audit::ClientIpMode::Truncated);
    assert_eq!(config.hmac_key_file, None);

    let config =
        parse("hmac_key_file = \"keys/audit.key\"\nclient_ip = \"off\"\nwhen_full = \"shed\"")
            .unwrap()
            .audit;
    assert_eq!(
        config.hmac_key_file,
        Some(pki.dir.path().join("keys/audit.key"))
    );
    assert_eq!(config.client_ip, portcullis::audit::ClientIpMode::Off);
    assert_eq!(config.when_full, portcullis::audit::WhenFull::Shed);

    for (line, key, fragment) in [
        ("client_ip = \"hashed\"", "audit.client_ip", "truncated"),
        ("when_full = \"drop\"", "audit.when_full", "shed"),
        (
            "commit_interval = \"1m\"",
            "audit.commit_interval",
            "at most",
        ),
        (
            "block_timeout = \"0s\"",
            "audit.block_timeout",
            "longer than zero",
        ),
        ("queue_capacity = 0", "audit.queue_capacity", "between"),
        ("rotate_bytes = 10", "audit.rotate_bytes", "between"),
        (
            "query_path = \"/v1/{x}\"",
            "audit.query_path",
            "literal path",
        ),
        (
            "query_path = \"/healthz\"",
            "audit.query_path",
            "another built-in",
        ),
        (
            "query_scope = \"audit read\"",
            "audit.query_scope",
            "characters",
        ),
        ("dir = \"\"", "audit.dir", "empty"),
        ("retention = \"7d\"", "audit.retention", "unknown field"),
    ] {
        let error = parse(line).unwrap_err();
        let issues = error.issues();
        assert_eq!(issues.len(), 1, "{line}: {error}");
        assert_eq!(issues[0].key, key, "{line}: {error}");
        assert!(issues[0].message.contains(fragment), "{line}: {error}");
        let audit_line = base.lines().count() + 3;
        assert_eq!(issues[0].location.line, audit_line, "{line}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary: SIGKILL under load, export, and the PHI canary

fn write_policy(pki: &TestPki, upstream: &str, settings: &Settings) -> PathBuf {
    let path = pki.dir.path().join("policy.toml");
    std::fs::write(&path, policy_text(pki, upstream, settings)).unwrap();
    path
}

/// Creates the test organization and returns (a key, a key with `audit:read`), as an
/// operator would before starting the service.
fn provision(policy: &Path) -> (String, String) {
    let config = portcullis::config::Config::load(policy).unwrap();
    let state =
        portcullis::state::State::open(portcullis::policy::Policy::new(config).unwrap()).unwrap();
    state.orgs.create(TEST_ORG, "Test Org", unix_now()).unwrap();
    let key = mint(&state, TEST_ORG, Env::Test, &[]);
    let reader = mint(&state, TEST_ORG, Env::Test, &["audit:read"]);
    (key, reader)
}

/// A running `portcullis serve` whose stderr lines arrive on a channel.
struct Served {
    child: KillOnDrop,
    log: mpsc::Receiver<String>,
    port: u16,
}

impl Served {
    fn start(policy: &Path, log_level: &str) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(policy)
            .env("PORTCULLIS_LOG", log_level)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = log.recv_timeout(left).expect("portcullis listening");
            if line.contains("portcullis listening") {
                // Pretty lines say `listen=<addr>`, JSON lines `"listen":"<addr>"`.
                let addr = match line.split("listen=").nth(1) {
                    Some(rest) => rest.split_whitespace().next().unwrap().to_owned(),
                    None => serde_json::from_str::<Value>(&line).unwrap()["listen"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                };
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        Served {
            child: KillOnDrop(child),
            log,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn signal(&self, name: &str) {
        send_signal(&self.child, name);
    }

    /// Waits for the process to exit and returns its status and every remaining log line.
    fn wait(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "portcullis did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        (status, lines)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_line_after_sigkill_under_load_is_cut_recorded_and_the_chain_verifies() {
    let (backend, _) = Backend::recording().await;
    let pki = test_pki();
    let policy = write_policy(
        &pki,
        &backend.url(),
        &with_audit("commit_interval = \"2ms\"", ""),
    );
    let (key, reader) = provision(&policy);
    let served = Served::start(&policy, "info");

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..8 {
        let client = h1_client(pki.paths.ca.as_path());
        let url = served.url(&format!("/v1/echo/load/{worker}"));
        let key = key.clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url)
                    .header("authorization", bearer(&key))
                    .body(empty_body())
                    .unwrap();
                match client.request(request).await {
                    Ok(_) => answered += 1,
                    Err(_) => break,
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    served.signal("KILL");
    let (status, _) = tokio::task::spawn_blocking(move || {
        let mut served = served;
        served.wait()
    })
    .await
    .unwrap();
    assert!(!status.success());
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for task in load {
        answered += task.await.unwrap();
    }
    assert!(
        answered > 50,
        "the sidecar was under load ({answered} answers)"
    );

    let dir = pki.dir.path().join("audit");
    let files = portcullis::audit::files::list(&dir).unwrap();
    let last = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&last.path).unwrap();
    // Whatever instant the kill hit, finish as an interrupted write does: with the first part
    // of a record and no newline.
    if bytes.ends_with(b"\n") {
        let start = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        let fragment = bytes[start..start + 57].to_vec();
        bytes.extend_from_slice(&fragment);
        std::fs::write(&last.path, &bytes).unwrap();
    }
    let complete = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let torn = (bytes.len() - complete) as u64;
    assert!(torn > 0);
    let before: Vec<Value> = read_records_until_torn(&dir);
    let last_before = before.last().unwrap()["seq"].as_u64().unwrap();
    let org_records = before.iter().filter(|r| r["org"] == TEST_ORG).count();

    // Start again: the torn tail is cut, the cut is recorded, the index is complete.
    let served = Served::start(&policy, "info");
    let client = h1_client(pki.paths.ca.as_path());
    let mut listed = 0;
    let mut path = "/v1/audit/events?limit=500".to_owned();
    loop {
        let request = Request::get(served.url(&path))
            .header("authorization", bearer(&reader))
            .body(empty_body())
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        listed += page["events"].as_array().unwrap().len();
        match page["page"]["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/audit/events?limit=500&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        listed, org_records,
        "the index holds every record that reached the files"
    );
    served.signal("TERM");
    let (status, _) = tokio::task::spawn_blocking(move || {
        let mut served = served;
        served.wait()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));

    let after = read_records(&dir);
    let repair = &after[before.len()];
    assert_eq!(repair["kind"], "system");
    assert_eq!(repair["action"], "audit_repaired");
    assert_eq!(repair["actor"], "portcullis");
    assert_eq!(repair["target"], last.name());
    assert_eq!(repair["truncated_bytes"].as_u64(), Some(torn));
    assert_eq!(repair["seq"].as_u64(), Some(last_before + 1));
    assert_eq!(repair["prev"], before.last().unwrap()["hash"]);
    let out = verify_cli(&["--config", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );

    // Export: one organization's lines, byte for byte as in the files.
    let export = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "export", "--org", TEST_ORG, "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let exported = String::from_utf8(export.stdout).unwrap();
    let all_text: String = portcullis::audit::files::list(&dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(&f.path).unwrap())
        .collect();
    let expected: String = all_text
        .lines()
        .filter(|line| line.contains(&format!("\"org\":\"{TEST_ORG}\"")))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(exported, expected);
    let since = before[before.len() / 2]["ts"].as_str().unwrap().to_owned();
    let export = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit", "export", "--org", TEST_ORG, "--since", &since, "--config",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    let later = String::from_utf8(export.stdout).unwrap();
    assert!(!later.is_empty() && later.lines().count() < exported.lines().count());
    let bad = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit", "export", "--org", TEST_ORG, "--since", "soon", "--config",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// The records of `dir` before a torn tail (complete lines only).
fn read_records_until_torn(dir: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for file in portcullis::audit::files::list(dir).unwrap() {
        let text = std::fs::read_to_string(&file.path).unwrap();
        let complete = text.rfind('\n').map_or("", |at| &text[..at]);
        for line in complete.lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

/// Canary values shaped like patient data. None may appear anywhere Portcullis writes.
const CANARIES: [&str; 7] = [
    "Zebulon Quixotefield",
    "MRN-40917733",
    "987-65-4329",
    "zq.field@example-clinic.test",
    "+1-555-014-2297",
    "IdemCanary-Q7Z9-Phi",
    "QUIXOTEFIELD",
];

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Every form a canary could take: raw, lower-case, URL-encoded (both space styles), and
/// base64 at each alignment (the edge characters, which depend on neighbours, trimmed).
fn canary_forms(canary: &str) -> Vec<String> {
    let encoded: String = canary
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut forms = vec![
        canary.to_owned(),
        canary.to_lowercase(),
        encoded.clone(),
        encoded.to_lowercase(),
        encoded.replace("%20", "+"),
    ];
    for pad in 0..3 {
        let mut shifted = vec![b'x'; pad];
        shifted.extend_from_slice(canary.as_bytes());
        let text = base64(&shifted);
        let inner = &text[(pad * 4).div_ceil(3) + 1..text.len() - 3];
        forms.push(inner.to_owned());
    }
    forms
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Asserts that no form of any canary occurs in `haystack`.
fn assert_no_canary(what: &str, haystack: &[u8]) {
    for canary in CANARIES {
        for form in canary_forms(canary) {
            let found = haystack
                .windows(form.len())
                .any(|window| window.eq_ignore_ascii_case(form.as_bytes()) && !form.is_empty());
            assert!(!found, "{what} contains the canary {canary:?} as {form:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_the_audit_files_the_state_store_or_the_debug_log() {
    canary_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_the_json_debug_log_either() {
    canary_run(true).await;
}

/// Sends patient data every way a request can carry it, then searches every file and log
/// line for it; `json_logs` runs the binary with `[logging] format = "json"`.
async fn canary_run(json_logs: bool) {
    let (backend, seen) = Backend::recording().await;
    let pki = test_pki();
    let logging = if json_logs {
        "[logging]\nformat = \"json\"\n"
    } else {
        ""
    };
    let policy = write_policy(
        &pki,
        &backend.url(),
        &with_audit("client_ip = \"full\"", logging),
    );
    let (key, reader) = provision(&policy);
    let served = Served::start(&policy, "debug");
    let [name, mrn, ssn, email, phone, idem, shout] = CANARIES;
    let enc = |text: &str| {
        text.replace(' ', "%20")
            .replace('@', "%40")
            .replace('+', "%2B")
    };
    let path = format!(
        "/v1/echo/patients/{}/{mrn}?ssn={ssn}&email={}&phone={}",
        enc(name),
        enc(email),
        enc(phone)
    );
    let body = format!(
        "{{\"patient\":\"{name}\",\"mrn\":\"{mrn}\",\"ssn\":\"{ssn}\",\"email\":\"{email}\",\"phone\":\"{phone}\"}}"
    );
    let phi_headers = |builder: http::request::Builder| {
        builder
            .header("x-patient-name", name)
            .header("x-patient-mrn", mrn)
            .header("user-agent", format!("client for {email}"))
            .header("referer", format!("https://portal.example/patients/{ssn}"))
            .header("cookie", format!("phone={phone}"))
            .header("x-request-id", format!("{name} {mrn}"))
    };
    let mut answers = Vec::new();
    for client in [
        h1_client(pki.paths.ca.as_path()),
        h2_client(pki.paths.ca.as_path()),
    ] {
        let requests = vec![
            // Allowed, and forwarded.
            phi_headers(Request::get(served.url(&path)).header("authorization", bearer(&key)))
                .body(empty_body()),
            // No key; a bad key made of patient data.
            phi_headers(Request::get(served.url(&path))).body(empty_body()),
            phi_headers(
                Request::get(served.url(&path)).header("authorization", format!("Bearer {email}")),
            )
            .body(empty_body()),
            // No such route, an ambiguous path, a key in the URL.
            Request::get(served.url(&format!("/v1/records/{mrn}/{}", enc(name))))
                .header("authorization", bearer(&key))
                .body(empty_body()),
            Request::get(served.url(&format!("/v1/echo/{ssn}%2F{mrn}")))
                .header("authorization", bearer(&key))
                .body(empty_body()),
            Request::get(served.url(&format!("/v1/echo/x?api_key={ssn}")))
                .header("authorization", bearer(&key))
                .body(empty_body()),
            // A write with its Idempotency-Key, its replay and a mismatch.
            phi_headers(Request::post(served.url(&path)).header("authorization", bearer(&key)))
                .header("idempotency-key", idem)
                .body(full_body(body.clone())),
            phi_headers(Request::post(served.url(&path)).header("authorization", bearer(&key)))
                .header("idempotency-key", idem)
                .body(full_body(body.clone())),
            Request::post(served.url(&path))
                .header("authorization", bearer(&key))
                .header("idempotency-key", idem)
                .body(full_body(format!("{body} "))),
            // A method token made of patient data.
            Request::builder()
                .method(Method::from_bytes(shout.as_bytes()).unwrap())
                .uri(served.url(&path))
                .header("authorization", bearer(&key))
                .body(empty_body()),
            // The audit API with patient data in its parameters.
            Request::get(served.url(&format!(
                "/v1/audit/events?route={}&code={}",
                enc(name),
                enc(email)
            )))
            .header("authorization", bearer(&reader))
            .body(empty_body()),
            Request::get(served.url(&format!("/v1/audit/events/{mrn}")))
                .header("authorization", bearer(&reader))
                .body(empty_body()),
        ];
        for (index, request) in requests.into_iter().enumerate() {
            let response = client.request(request.unwrap()).await.unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            answers.push((index, status, body));
        }
        // The idempotency key must differ on the second client, or its write is a replay.
        let _ = &client;
    }
    // Plain HTTP with patient data in the request line and headers.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", served.port))
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "GET /patients/{} HTTP/1.1\r\nHost: x\r\nX-Patient: {name}\r\n\r\n",
            enc(name)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let plain = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    let statuses: Vec<u16> = answers
        .iter()
        .map(|(_, status, _)| status.as_u16())
        .collect();
    assert_eq!(
        &statuses[..12],
        &[201, 401, 401, 404, 400, 400, 201, 201, 422, 404, 400, 404],
        "the canary requests took the paths intended"
    );
    // Problem documents never echo what the request carried either.
    for (index, status, body) in &answers {
        if !status.is_success() {
            assert_no_canary(&format!("answer {index}"), body);
        }
    }
    assert!(
        seen.lock().unwrap().iter().any(|s| s.uri.contains(mrn)),
        "the backend got the data"
    );

    served.signal("TERM");
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut served = served;
        served.wait()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    if json_logs {
        for line in &log {
            let json: Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
            assert!(
                json.get("span").is_none() && json.get("spans").is_none(),
                "no span fields: {line}"
            );
        }
    }
    let log = log.join("\n");
    assert!(
        log.contains("request answered"),
        "debug logging was on:\n{log}"
    );

    let data_dir = pki.dir.path();
    let audit_files = files_under(&data_dir.join("audit"));
    let records: Vec<Value> = read_records(&data_dir.join("audit"));
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "request").count(),
        answers.len() + 1,
        "every canary request was recorded"
    );
    for file in audit_files
        .iter()
        .chain(files_under(&data_dir.join("state")).iter())
    {
        let bytes = std::fs::read(file).unwrap();
        assert_no_canary(&file.display().to_string(), &bytes);
    }
    assert_no_canary("the debug log", log.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Figures

/// CPU time this process (client, sidecar and backend together) has used, from
/// `/proc/self/stat` (user + system, in clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Requests answered in `window` by `concurrency` tasks sharing one HTTP/2 connection, and
/// the process's CPU time per request over the same window.
async fn proxied_throughput(
    sidecar: &Sidecar,
    concurrency: usize,
    window: Duration,
) -> (f64, Duration) {
    let client = h2_client(sidecar.ca());
    let cpu_before = cpu_time();
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = sidecar.url("/v1/echo/figures");
        let key = sidecar.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0u64;
            while Instant::now() < deadline {
                let request = Request::get(&url)
                    .header("authorization", bearer(&key))
                    .body(empty_body())
                    .unwrap();
                let (parts, _) = send(&client, request).await;
                assert_eq!(parts.status, StatusCode::OK);
                answered += 1;
            }
            answered
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let per_request = cpu / u32::try_from(total.max(1)).unwrap_or(u32::MAX);
    (total as f64 / window.as_secs_f64(), per_request)
}

/// Proxied throughput and CPU per request with the audit trail on and off, alternating
/// rounds so that machine load shifts both alike. CPU per request is the steadier figure on
/// a shared machine: throughput on a saturated machine is its inverse.
/// `cargo test --release --test audit audit_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md, not a check"]
async fn audit_cost_figures() {
    const ROUNDS: usize = 7;
    const CONCURRENCY: usize = 32;
    const WINDOW: Duration = Duration::from_secs(3);
    let backend = Backend::start(handler(|_| async {
        Response::builder()
            .status(StatusCode::OK)
            .body(full_body("{\"ok\":true}"))
            .unwrap()
    }))
    .await;
    let limits = "[ratelimit]\nrequests_per_minute = 1000000\nburst = 100000\n";
    let on = Sidecar::start(&backend.url(), with_audit("enabled = true", limits)).await;
    let off = Sidecar::start(&backend.url(), with_audit("enabled = false", limits)).await;
    proxied_throughput(&on, CONCURRENCY, Duration::from_secs(1)).await;
    proxied_throughput(&off, CONCURRENCY, Duration::from_secs(1)).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(proxied_throughput(&off, CONCURRENCY, WINDOW).await);
        with.push(proxied_throughput(&on, CONCURRENCY, WINDOW).await);
    }
    let medians = |rounds: &[(f64, Duration)]| {
        let mut rates: Vec<f64> = rounds.iter().map(|r| r.0).collect();
        let mut cpu: Vec<Duration> = rounds.iter().map(|r| r.1).collect();
        rates.sort_by(f64::total_cmp);
        cpu.sort();
        (rates[rates.len() / 2], cpu[cpu.len() / 2])
    };
    let ((rate_on, cpu_on), (rate_off, cpu_off)) = (medians(&with), medians(&without));
    println!(
        "\n| audit | requests/s | CPU per request | CPU ratio |\n|---|---|---|---|\n\
         | off | {rate_off:.0} | {cpu_off:.1?} | 1× |\n\
         | on | {rate_on:.0} | {cpu_on:.1?} | {:.3}× |\n(medians of {ROUNDS} rounds of {WINDOW:?})",
        cpu_on.as_secs_f64() / cpu_off.as_secs_f64()
    );
    assert!(on.state.audit.is_enabled() && !off.state.audit.is_enabled());
}

// ---------------------------------------------------------------------------------------------
// An upload that breaks off

#[tokio::test]
async fn an_upload_that_breaks_off_is_400_body_incomplete_unforwarded_and_recorded() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_audit("", "")).await;
    let id = uuid();
    let mut tls = tls_connect(sidecar.addr, sidecar.ca(), &[b"http/1.1"]).await;
    let head = format!(
        "POST /v1/echo/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: upload-1\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"note\":",
        sidecar.key
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // Half-close: the body can never be completed, but the answer can still be read.
    tls.shutdown().await.unwrap();
    let answer = read_to_close(&mut tls, Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(
        header_of(&answer, "content-type").as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(
        header_of(&answer, "x-request-id").as_deref(),
        Some(id.as_str())
    );
    let document: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|_| panic!("a problem document: {answer}"));
    assert_eq!(document["code"], "request.body_incomplete");
    assert_eq!(document["status"], 400);
    assert_eq!(
        backend.hits(),
        0,
        "a broken upload never reaches the backend"
    );

    let all = wait_for_record(&sidecar, &id).await;
    let record = all
        .iter()
        .find(|r| r["request_id"] == id.as_str())
        .expect("the broken upload has its record");
    assert_eq!(record["code"], "request.body_incomplete");
    assert_eq!(record["status"], 400);
    assert_eq!(record["route"], "echo.post");
    assert_eq!(record["org"], TEST_ORG);
}
