//! Idempotency-Key through the real TLS listener: replays, races, mismatches, refusals,
//! tenants, failures, expiry, restarts, a crash (the real binary, SIGKILL) and encryption at
//! rest. Every refusal is asserted by status, `code` and headers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use portcullis::body::{empty_body, full_body, ProxyBody};
use portcullis::config::{Config, SourceText};
use portcullis::gate::idempotency::TREE;
use portcullis::gate::ratelimit::ManualClock;
use portcullis::keys::Env;
use portcullis::policy::Policy;
use portcullis::server::Server;
use portcullis::state::{unix_now, State};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2030-01-01T12:00:00Z.
const NOON: u64 = 1_893_456_000 + 12 * 3600;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A write with an `Idempotency-Key` (raw field value) and a body.
fn write(
    sidecar: &Sidecar,
    method: Method,
    path: &str,
    key: &str,
    body: impl Into<Bytes>,
) -> http::Request<ProxyBody> {
    sidecar
        .req(method, path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(full_body(body.into()))
        .unwrap()
}

/// Asserts a problem document with `status` and `code`; returns the document.
fn assert_problem(
    parts: &http::response::Parts,
    body: &[u8],
    status: StatusCode,
    code: &str,
) -> serde_json::Value {
    assert_eq!(parts.status, status, "{}", String::from_utf8_lossy(body));
    let json = problem(parts, body);
    assert_eq!(json["code"], code);
    assert_eq!(parts.headers["cache-control"], "no-store");
    json
}

/// The header fields of an answer that a replay must repeat exactly.
fn lasting_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let volatile = |name: &str| {
        matches!(name, "date" | "x-request-id" | "idempotent-replayed")
            || name.starts_with("x-ratelimit-")
            || name.starts_with("ratelimit")
    };
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !volatile(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("<binary>").to_owned(),
            )
        })
        .collect();
    kept.sort();
    kept
}

fn routes_with(extra: &str) -> Settings {
    Settings {
        routes: format!("{extra}\n{DEFAULT_ROUTES}"),
        ..Settings::default()
    }
}

/// The default routes with `line` added to the POST echo route.
fn post_route_with(line: &str) -> String {
    let post =
        "name = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{*rest}\"\nany_key = true\n";
    let routes = DEFAULT_ROUTES.replace(post, &format!("{post}{line}\n"));
    assert_ne!(routes, DEFAULT_ROUTES, "the POST route was found");
    routes
}

fn record_count(state: &State) -> usize {
    state.store.tree(TREE).unwrap().len()
}

/// A backend that answers the first `fail` requests with 503, then echoes with 201.
async fn failing_then_echoing(fail: usize) -> Backend {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Backend::start(handler(move |request| {
        let count = count.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let status = if count.fetch_add(1, Ordering::SeqCst) < fail {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::CREATED
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full_body(body))
                .unwrap()
        }
    }))
    .await
}

/// A backend that takes `delay` before echoing with 201.
async fn slow_echo(delay: Duration) -> Backend {
    Backend::start(handler(move |request| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        tokio::time::sleep(delay).await;
        Response::builder()
            .status(StatusCode::CREATED)
            .header("location", "/v1/echo/created/1")
            .body(full_body(body))
            .unwrap()
    }))
    .await
}

// ---------------------------------------------------------------------------------------------
// Replays

#[tokio::test]
async fn the_first_call_is_forwarded_and_its_replay_is_identical_and_marked() {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let body = br#"{"external_patient_id":"ehr_demo_456"}"#;

    let first_client = h1_client(sidecar.ca());
    let (first, first_body) = send(
        &first_client,
        write(
            &sidecar,
            Method::POST,
            "/v1/echo/link?x=1",
            "demo-link-001",
            &body[..],
        ),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(&first_body[..], body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(
        seen.lock().unwrap()[0].headers["idempotency-key"],
        "demo-link-001",
        "the key is passed on to the backend"
    );

    // The same key, bare or quoted, over either protocol, is a replay.
    for (client, key) in [
        (h2_client(sidecar.ca()), "demo-link-001"),
        (h1_client(sidecar.ca()), "\"demo-link-001\""),
    ] {
        let (replay, replay_body) = send(
            &client,
            write(&sidecar, Method::POST, "/v1/echo/link?x=1", key, &body[..]),
        )
        .await;
        assert_eq!(replay.status, first.status);
        assert_eq!(replay_body, first_body);
        assert_eq!(replay.headers["idempotent-replayed"], "true");
        assert_eq!(
            lasting_headers(&replay.headers),
            lasting_headers(&first.headers)
        );
        assert_ne!(
            replay.headers["x-request-id"],
            first.headers["x-request-id"]
        );
        assert!(replay.headers.contains_key("x-ratelimit-remaining"));
    }
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_32_simultaneous_duplicates_exactly_one_is_forwarded() {
    let backend = slow_echo(Duration::from_millis(300)).await;
    let sidecar = Arc::new(Sidecar::start(&backend.url(), Settings::default()).await);
    let h2 = h2_client(sidecar.ca());
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let sidecar = sidecar.clone();
            let start = start.clone();
            // Half share one HTTP/2 connection, half use their own HTTP/1.1 connections.
            let client = if n % 2 == 0 {
                h2.clone()
            } else {
                h1_client(sidecar.ca())
            };
            tokio::spawn(async move {
                let request = write(&sidecar, Method::POST, "/v1/echo/race", "race-1", "{}");
                start.wait().await;
                send(&client, request).await
            })
        })
        .collect();
    let (mut forwarded, mut in_progress, mut replayed) = (0, 0, 0);
    for task in tasks {
        let (parts, body) = task.await.unwrap();
        match parts.status {
            StatusCode::CREATED if parts.headers.contains_key("idempotent-replayed") => {
                replayed += 1;
            }
            StatusCode::CREATED => forwarded += 1,
            _ => {
                assert_problem(
                    &parts,
                    &body,
                    StatusCode::CONFLICT,
                    "idempotency.in_progress",
                );
                assert_eq!(parts.headers["retry-after"], "1");
                in_progress += 1;
            }
        }
    }
    assert_eq!(
        forwarded, 1,
        "{in_progress} in progress, {replayed} replayed"
    );
    assert_eq!(forwarded + in_progress + replayed, 32);
    assert!(in_progress > 0);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_key_reused_for_a_different_request_is_422() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let (first, _) = send(
        &client,
        write(&sidecar, Method::POST, "/v1/echo/a", "k-422", "{\"n\":1}"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for request in [
        write(&sidecar, Method::POST, "/v1/echo/a", "k-422", "{\"n\":2}"),
        write(&sidecar, Method::POST, "/v1/echo/b", "k-422", "{\"n\":1}"),
        write(&sidecar, Method::POST, "/v1/echo/a?q", "k-422", "{\"n\":1}"),
        write(&sidecar, Method::PUT, "/v1/echo/a", "k-422", "{\"n\":1}"),
    ] {
        let (parts, body) = send(&client, request).await;
        let json = assert_problem(
            &parts,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency.mismatch",
        );
        assert!(json["detail"]
            .as_str()
            .unwrap()
            .contains("different request"));
        assert!(!parts.headers.contains_key("retry-after"));
        assert!(!parts.headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(backend.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[tokio::test]
async fn writes_without_a_key_are_refused_with_400() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let request = sidecar
            .req(method.clone(), "/v1/echo/x")
            .body(full_body("{}"))
            .unwrap();
        let (parts, body) = send(&client, request).await;
        let json = assert_problem(
            &parts,
            &body,
            StatusCode::BAD_REQUEST,
            "idempotency.missing",
        );
        assert!(
            json["detail"].as_str().unwrap().contains("Idempotency-Key"),
            "{method}"
        );
    }
    // Reads need no key.
    let (parts, _) = sidecar.get(&client, "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(backend.hits(), 1);
    assert_eq!(record_count(&sidecar.state), 0);
}

#[tokio::test]
async fn malformed_keys_are_refused_with_400() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h2_client(sidecar.ca());
    let too_long = "k".repeat(256);
    for key in [
        "",
        "has space",
        "\"unterminated",
        "\"a\"b",
        "\"bad\\escape\"",
        too_long.as_str(),
    ] {
        let (parts, body) = send(
            &client,
            write(&sidecar, Method::POST, "/v1/echo/x", key, "{}"),
        )
        .await;
        let json = assert_problem(
            &parts,
            &body,
            StatusCode::BAD_REQUEST,
            "idempotency.missing",
        );
        assert!(
            json["detail"]
                .as_str()
                .unwrap()
                .contains("1-255 visible ASCII"),
            "{key:?}"
        );
    }
    let repeated = sidecar
        .req(Method::POST, "/v1/echo/x")
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .body(full_body("{}"))
        .unwrap();
    let (parts, body) = send(&client, repeated).await;
    let json = assert_problem(
        &parts,
        &body,
        StatusCode::BAD_REQUEST,
        "idempotency.missing",
    );
    assert!(json["detail"].as_str().unwrap().contains("exactly one"));

    // The longest key is fine.
    let longest = "k".repeat(255);
    let (parts, _) = send(
        &client,
        write(&sidecar, Method::POST, "/v1/echo/x", &longest, "{}"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_anything_is_stored() {
    let (backend, _) = Backend::recording().await;
    let settings = routes_with("[idempotency]\nmax_body_bytes = 1024");
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        // Declared length.
        let (parts, body) = send(
            &client,
            write(
                &sidecar,
                Method::POST,
                "/v1/echo/x",
                "big",
                vec![b'a'; 2048],
            ),
        )
        .await;
        let json = assert_problem(
            &parts,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
        );
        assert!(json["detail"].as_str().unwrap().contains("1024"));
        // Streamed without a length.
        let (tx, upload) = ChannelBody::channel();
        tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send(Bytes::from(vec![b'z'; 512])).await.is_err() {
                    return;
                }
            }
        });
        let request = sidecar
            .req(Method::POST, "/v1/echo/x")
            .header("idempotency-key", "big")
            .body(upload)
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_problem(
            &parts,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
        );
    }
    assert_eq!(backend.hits(), 0);
    assert_eq!(record_count(&sidecar.state), 0);
    // The key was never taken: a request within the limit goes through.
    let (parts, _) = send(
        &h1_client(sidecar.ca()),
        write(
            &sidecar,
            Method::POST,
            "/v1/echo/x",
            "big",
            vec![b'a'; 1024],
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

/// A request body that sends one chunk and then fails, as a client that gives up mid-upload.
struct AbortedUpload(bool);

impl http_body::Body for AbortedUpload {
    type Data = Bytes;
    type Error = portcullis::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let first = std::mem::replace(&mut self.0, false);
        std::task::Poll::Ready(Some(if first {
            Ok(http_body::Frame::data(Bytes::from_static(b"{\"half\":")))
        } else {
            Err("the client gave up".into())
        }))
    }
}

#[tokio::test]
async fn an_upload_that_breaks_off_is_neither_forwarded_nor_recorded() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let request = sidecar
            .req(Method::POST, "/v1/echo/x")
            .header("idempotency-key", "broken-upload")
            .body(AbortedUpload(true).boxed())
            .unwrap();
        // The client sees its own failure, or the 400 if it arrives first.
        if let Ok(response) = client.request(request).await {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.hits(), 0);
    assert_eq!(record_count(&sidecar.state), 0);
    // The key is untouched: the complete request goes through.
    let (parts, _) = send(
        &h1_client(sidecar.ca()),
        write(&sidecar, Method::POST, "/v1/echo/x", "broken-upload", "{}"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

// ---------------------------------------------------------------------------------------------
// Routes and tenants

#[tokio::test]
async fn a_route_may_opt_out_and_another_may_opt_in() {
    let (backend, _) = Backend::recording().await;
    let mut routes = post_route_with("idempotency = false");
    routes.push_str(
        "\n[[route]]\nname = \"lookup\"\nmethod = \"GET\"\npath = \"/v1/lookup\"\nany_key = true\nidempotency = true\n",
    );
    let sidecar = Sidecar::start(
        &backend.url(),
        Settings {
            routes,
            ..Settings::default()
        },
    )
    .await;
    let client = h1_client(sidecar.ca());
    // Opted out: no key needed, and a key is not used for caching.
    for _ in 0..2 {
        let request = sidecar
            .req(Method::POST, "/v1/echo/x")
            .body(full_body("{}"))
            .unwrap();
        assert_eq!(send(&client, request).await.0.status, StatusCode::CREATED);
        let (parts, _) = send(
            &client,
            write(&sidecar, Method::POST, "/v1/echo/x", "k", "{}"),
        )
        .await;
        assert_eq!(parts.status, StatusCode::CREATED);
        assert!(!parts.headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(backend.hits(), 4);
    // PUT still follows the method list.
    let request = sidecar
        .req(Method::PUT, "/v1/echo/x")
        .body(full_body("{}"))
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::BAD_REQUEST,
        "idempotency.missing",
    );
    // Opted in: a GET route that requires a key.
    let (parts, body) = sidecar.get(&client, "/v1/lookup").await;
    assert_problem(
        &parts,
        &body,
        StatusCode::BAD_REQUEST,
        "idempotency.missing",
    );
    for replayed in [false, true] {
        let request = sidecar
            .req(Method::GET, "/v1/lookup")
            .header("idempotency-key", "lookup-1")
            .body(empty_body())
            .unwrap();
        let (parts, _) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(parts.headers.contains_key("idempotent-replayed"), replayed);
    }
    assert_eq!(backend.hits(), 5);
}

#[tokio::test]
async fn the_same_key_value_from_two_tenants_or_two_keys_never_collides() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    sidecar
        .state
        .orgs
        .create("other-org", "Other Org", unix_now())
        .unwrap();
    let other_tenant = mint(&sidecar.state, "other-org", Env::Test, &[]);
    let second_key = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let client = h1_client(sidecar.ca());
    let call = |key: &str, body: &'static str| {
        http::Request::post(sidecar.url("/v1/echo/shared"))
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", "shared-value")
            .body(full_body(body))
            .unwrap()
    };
    let callers = [
        (sidecar.key.clone(), "{\"tenant\":\"test\"}"),
        (other_tenant, "{\"tenant\":\"other\"}"),
        (second_key, "{\"tenant\":\"test, second key\"}"),
    ];
    for (key, body) in &callers {
        let (parts, answer) = send(&client, call(key, body)).await;
        assert_eq!(parts.status, StatusCode::CREATED, "no 422 across scopes");
        assert_eq!(&answer[..], body.as_bytes());
    }
    for (key, body) in &callers {
        let (parts, answer) = send(&client, call(key, body)).await;
        assert_eq!(parts.headers["idempotent-replayed"], "true");
        assert_eq!(
            &answer[..],
            body.as_bytes(),
            "each scope replays its own answer"
        );
    }
    assert_eq!(backend.hits(), 3);
    assert_eq!(record_count(&sidecar.state), 3);
}

// ---------------------------------------------------------------------------------------------
// Failures

#[tokio::test]
async fn server_errors_and_failed_exchanges_are_not_cached() {
    let backend = failing_then_echoing(1).await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let request = || write(&sidecar, Method::POST, "/v1/echo/x", "retry-me", "{}");
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(record_count(&sidecar.state), 0, "the record was removed");
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.status, StatusCode::CREATED, "the retry went through");
    assert!(!parts.headers.contains_key("idempotent-replayed"));
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(backend.hits(), 2);

    // No backend at all: 502, nothing kept, and the retry is tried again (not 409).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sidecar = Sidecar::start(&dead, Settings::default()).await;
    let client = h1_client(sidecar.ca());
    for _ in 0..2 {
        let (parts, body) = send(
            &client,
            write(&sidecar, Method::POST, "/v1/echo/x", "k", "{}"),
        )
        .await;
        assert_problem(
            &parts,
            &body,
            StatusCode::BAD_GATEWAY,
            "upstream.unavailable",
        );
    }
    assert_eq!(record_count(&sidecar.state), 0);
}

#[tokio::test]
async fn failures_are_kept_when_configured() {
    let backend = failing_then_echoing(1).await;
    let settings = routes_with("[idempotency]\nstore_failures = true");
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let request = || write(&sidecar, Method::POST, "/v1/echo/x", "keep-failure", "{}");
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn an_answer_too_large_to_keep_is_forwarded_once_and_then_refused_with_409() {
    let (backend, _) = Backend::recording().await;
    let settings = routes_with("[idempotency]\nmax_response_bytes = 1024");
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let large = vec![b'x'; 64 * 1024];
    let (parts, body) = send(
        &client,
        write(&sidecar, Method::POST, "/v1/echo/x", "large", large.clone()),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(
        body.len(),
        large.len(),
        "the whole answer reached the client"
    );
    assert_eq!(&body[..], &large[..]);

    let (parts, body) = send(
        &client,
        write(&sidecar, Method::POST, "/v1/echo/x", "large", large),
    )
    .await;
    let json = assert_problem(
        &parts,
        &body,
        StatusCode::CONFLICT,
        "idempotency.not_replayable",
    );
    assert!(json["detail"].as_str().unwrap().contains("too large"));
    assert!(
        !parts.headers.contains_key("retry-after"),
        "retrying cannot help"
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn an_answer_that_outlasts_the_lease_is_cut_off_and_not_kept() {
    // The head arrives at once, the body never ends.
    let backend = Backend::start(handler(|_request| async {
        let (tx, body) = ChannelBody::channel();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"partial")).await;
            std::future::pending::<()>().await;
            drop(tx);
        });
        Response::builder()
            .status(StatusCode::CREATED)
            .body(body)
            .unwrap()
    }))
    .await;
    let settings = Settings {
        upstream: "response_timeout = \"1s\"".to_owned(),
        ..routes_with("[idempotency]\nlease = \"2s\"")
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let started = Instant::now();
    let (parts, body) = send(
        &client,
        write(&sidecar, Method::POST, "/v1/echo/x", "slow", "{}"),
    )
    .await;
    assert_problem(
        &parts,
        &body,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream.timeout",
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(
        record_count(&sidecar.state),
        0,
        "the key is free for the retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_is_kept_even_when_the_client_hangs_up() {
    let backend = slow_echo(Duration::from_millis(400)).await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let request = write(
        &sidecar,
        Method::POST,
        "/v1/echo/x",
        "impatient",
        "{\"a\":1}",
    );
    let impatient = client.clone();
    let gone = tokio::spawn(async move { impatient.request(request).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (parts, body) = send(
        &h1_client(sidecar.ca()),
        write(
            &sidecar,
            Method::POST,
            "/v1/echo/x",
            "impatient",
            "{\"a\":1}",
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(parts.headers["location"], "/v1/echo/created/1");
    assert_eq!(&body[..], b"{\"a\":1}");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_record_that_fails_to_open_is_absent_and_counted() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let request = || write(&sidecar, Method::POST, "/v1/echo/x", "tampered", "{}");
    assert_eq!(send(&client, request()).await.0.status, StatusCode::CREATED);
    let tree = sidecar.state.store.tree(TREE).unwrap();
    let (key, mut value) = tree.iter().next().unwrap().unwrap();
    let last = value.len() - 1;
    value[last] ^= 0x01;
    tree.insert(&key, &value).unwrap();
    assert_eq!(sidecar.state.idempotency.open_failures(), 0);

    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(!parts.headers.contains_key("idempotent-replayed"));
    assert_eq!(sidecar.state.idempotency.open_failures(), 1);
    assert_eq!(backend.hits(), 2);
    let (parts, _) = send(&client, request()).await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");
}

// ---------------------------------------------------------------------------------------------
// At rest

/// Every file under `dir`, recursively.
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

/// Forms a canary could take in a file: raw, lower-case, hex, and base64 at each alignment
/// (edge characters, which depend on neighbours, trimmed).
fn canary_forms(canary: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![
        canary.as_bytes().to_vec(),
        canary.to_lowercase().into_bytes(),
        canary
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    ];
    for pad in 0..3 {
        let mut shifted = vec![0u8; pad];
        shifted.extend_from_slice(canary.as_bytes());
        let encoded = base64(&shifted);
        let inner = &encoded[(pad * 4).div_ceil(3) + 1..encoded.len() - 3];
        forms.push(inner.as_bytes().to_vec());
    }
    forms
}

#[tokio::test]
async fn cached_answers_are_sealed_at_rest() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let canary = "CanaryPhiNote7f3a9c2e";
    let key_canary = "CanaryIdemKey51b0d4";
    let body = format!("{{\"note\":\"{canary}\"}}");
    for _ in 0..2 {
        let (parts, answer) = send(
            &client,
            write(
                &sidecar,
                Method::POST,
                "/v1/echo/notes",
                key_canary,
                body.clone(),
            ),
        )
        .await;
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(answer, body.as_bytes());
    }
    assert_eq!(backend.hits(), 1);
    sidecar.state.store.flush().unwrap();

    let data_dir = sidecar.pki.dir.path();
    let key_file = data_dir.join("idempotency.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let files = files_under(data_dir);
    assert!(files.iter().any(|f| f.starts_with(data_dir.join("state"))));
    for secret in [canary, key_canary] {
        for form in canary_forms(secret) {
            for file in &files {
                let content = std::fs::read(file).unwrap();
                let lowered = content.to_ascii_lowercase();
                for haystack in [&content, &lowered] {
                    assert!(
                        !haystack.windows(form.len()).any(|w| w == form.as_slice()),
                        "{} holds a form of {secret}: {}",
                        file.display(),
                        String::from_utf8_lossy(&form)
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn completed_records_survive_a_restart() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let (first, first_body) = send(
        &client,
        write(
            &sidecar,
            Method::POST,
            "/v1/echo/x",
            "before-restart",
            "{\"v\":1}",
        ),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);

    let sidecar = sidecar.restart().await;
    let client = h1_client(sidecar.ca());
    let (replay, replay_body) = send(
        &client,
        write(
            &sidecar,
            Method::POST,
            "/v1/echo/x",
            "before-restart",
            "{\"v\":1}",
        ),
    )
    .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay_body, first_body);
    assert_eq!(
        lasting_headers(&replay.headers),
        lasting_headers(&first.headers)
    );
    assert_eq!(backend.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Time: a sidecar on a manual clock

/// A sidecar whose leases, expiry and sweep read a [`ManualClock`].
struct Clocked {
    addr: std::net::SocketAddr,
    pki: TestPki,
    state: Arc<State>,
    clock: Arc<ManualClock>,
    key: String,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

impl Clocked {
    async fn start(upstream: &str, settings: &Settings) -> Clocked {
        let pki = test_pki();
        let text = policy_text(&pki, upstream, settings);
        let clock = ManualClock::starting_at(NOON);
        let config = Config::parse(&SourceText::new("test.toml", text), pki.dir.path()).unwrap();
        let state =
            State::open_with_clock(Policy::new(config).unwrap(), clock.limit_clock()).unwrap();
        state.orgs.create(TEST_ORG, "Test Org", unix_now()).unwrap();
        let key = mint(&state, TEST_ORG, Env::Test, &[]);
        let server = Server::bind(state.clone()).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Clocked {
            addr,
            pki,
            state,
            clock,
            key,
            _stop: stop,
            _task: task,
        }
    }

    async fn post(&self, key: &str, body: &'static str) -> (http::response::Parts, Bytes) {
        let request =
            http::Request::post(format!("https://localhost:{}/v1/echo/x", self.addr.port()))
                .header("authorization", format!("Bearer {}", self.key))
                .header("idempotency-key", key)
                .body(full_body(body))
                .unwrap();
        send(&h1_client(&self.pki.paths.ca), request).await
    }
}

#[tokio::test]
async fn expired_records_behave_as_new_and_are_swept() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Clocked::start(&backend.url(), &Settings::default()).await;
    let (parts, _) = sidecar.post("daily", "{\"day\":1}").await;
    assert_eq!(parts.status, StatusCode::CREATED);

    sidecar.clock.advance(Duration::from_secs(24 * 3600 - 1));
    let (parts, body) = sidecar.post("daily", "{\"day\":2}").await;
    assert_problem(
        &parts,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency.mismatch",
    );
    let (parts, _) = sidecar.post("daily", "{\"day\":1}").await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");

    // 24 h after the first request the key is new: a different request with it goes through.
    sidecar.clock.advance(Duration::from_secs(1));
    let (parts, body) = sidecar.post("daily", "{\"day\":2}").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(!parts.headers.contains_key("idempotent-replayed"));
    assert_eq!(&body[..], b"{\"day\":2}");
    assert_eq!(backend.hits(), 2);

    // Sweeps remove expired records, a bounded batch at a time.
    for n in 0..5 {
        let key = format!("other-{n}");
        let request = http::Request::post(format!(
            "https://localhost:{}/v1/echo/x",
            sidecar.addr.port()
        ))
        .header("authorization", format!("Bearer {}", sidecar.key))
        .header("idempotency-key", key)
        .body(full_body("{}"))
        .unwrap();
        send(&h1_client(&sidecar.pki.paths.ca), request).await;
    }
    assert_eq!(record_count(&sidecar.state), 6);
    assert_eq!(sidecar.state.idempotency.sweep(100).unwrap().removed, 0);
    sidecar.clock.advance(Duration::from_secs(24 * 3600));
    let first = sidecar.state.idempotency.sweep(4).unwrap();
    assert_eq!((first.examined, first.removed), (4, 4));
    let second = sidecar.state.idempotency.sweep(4).unwrap();
    assert_eq!((second.examined, second.removed), (2, 2));
    assert_eq!(record_count(&sidecar.state), 0);
    assert_eq!(sidecar.state.idempotency.open_failures(), 0);
}

#[tokio::test]
async fn a_pending_record_blocks_retries_until_its_lease_ends() {
    // The backend never answers the first request; later ones get 201.
    let first = Arc::new(AtomicBool::new(true));
    let backend = Backend::start(handler(move |_request| {
        let first = first.clone();
        async move {
            if first.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .body(full_body("done"))
                .unwrap()
        }
    }))
    .await;
    let settings = Settings {
        upstream: "response_timeout = \"10s\"".to_owned(),
        ..routes_with("[idempotency]\nlease = \"30s\"")
    };
    let sidecar = Arc::new(Clocked::start(&backend.url(), &settings).await);
    let stuck = sidecar.clone();
    tokio::spawn(async move { stuck.post("stuck", "{}").await });
    while backend.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sidecar.clock.advance(Duration::from_secs(29));
    let (parts, body) = sidecar.post("stuck", "{}").await;
    assert_problem(
        &parts,
        &body,
        StatusCode::CONFLICT,
        "idempotency.in_progress",
    );
    assert_eq!(parts.headers["retry-after"], "1");
    sidecar.clock.advance(Duration::from_secs(1));
    let (parts, body) = sidecar.post("stuck", "{}").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(&body[..], b"done");
    assert_eq!(backend.hits(), 2);
    let (parts, _) = sidecar.post("stuck", "{}").await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(backend.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// A crash: the real binary, killed with SIGKILL mid-request

/// A `portcullis serve` child process, killed when dropped so a failing test leaves no
/// sidecar behind.
struct Running {
    child: KillOnDrop,
    port: u16,
}

/// Starts `portcullis serve` and waits until it listens.
fn serve(policy: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(policy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child_lines(child.stderr.take().unwrap());
    let child = KillOnDrop(child);
    let line = wait_for_line(&log, "portcullis listening");
    let port = listen_port(&line);
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || while log.recv().is_ok() {});
    Running { child, port }
}

fn kill(running: &mut Running, signal: &str) {
    send_signal(&running.child, signal);
    wait_exit(&mut running.child, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_request_is_forwarded_once_more_after_the_lease_and_then_replayed() {
    const LEASE: Duration = Duration::from_secs(6);
    // The first request hangs in the backend, as a slow EHR write would; later ones succeed.
    let first = Arc::new(AtomicBool::new(true));
    let backend = Backend::start(handler(move |_request| {
        let first = first.clone();
        async move {
            if first.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/json")
                .body(full_body("{\"link\":\"created\"}"))
                .unwrap()
        }
    }))
    .await;
    let pki = test_pki();
    let settings = Settings {
        upstream: "response_timeout = \"2s\"".to_owned(),
        ..routes_with(&format!("[idempotency]\nlease = \"{}s\"", LEASE.as_secs()))
    };
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&pki, &backend.url(), &settings)).unwrap();
    // Provision an organization and a key into the data directory, as an operator would.
    let key = {
        let config = Config::load(&policy).unwrap();
        let state = State::open(Policy::new(config).unwrap()).unwrap();
        state.orgs.create("cli-org", "CLI Org", unix_now()).unwrap();
        mint(&state, "cli-org", Env::Test, &[])
    };
    let request = move |port: u16| {
        http::Request::post(format!("https://localhost:{port}/v1/echo/link"))
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", "crash-1")
            .body(full_body("{\"patient\":\"local_pat_demo_123\"}"))
            .unwrap()
    };

    let mut sidecar = serve(&policy);
    let client = h1_client(&pki.paths.ca);
    let in_flight = {
        let client = client.clone();
        let request = request(sidecar.port);
        tokio::spawn(async move { client.request(request).await.map(drop) })
    };
    let sent = Instant::now();
    while backend.hits() == 0 {
        assert!(sent.elapsed() < Duration::from_secs(10), "never forwarded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The claim was written before the backend saw the request, so its lease ends by then.
    let claimed_by = Instant::now();
    kill(&mut sidecar, "KILL");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client saw the crash"
    );

    // The pending record was on disk before the request was forwarded: it survived.
    let mut sidecar = serve(&policy);
    let client = h1_client(&pki.paths.ca);
    assert!(sent.elapsed() < LEASE, "restart took longer than the lease");
    let (parts, body) = send(&client, request(sidecar.port)).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::CONFLICT,
        "idempotency.in_progress",
    );
    assert_eq!(parts.headers["retry-after"], "1");
    assert_eq!(backend.hits(), 1);

    // After the lease, the retry is forwarded once more...
    tokio::time::sleep(LEASE.saturating_sub(claimed_by.elapsed()) + Duration::from_millis(200))
        .await;
    let (parts, body) = send(&client, request(sidecar.port)).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(!parts.headers.contains_key("idempotent-replayed"));
    assert_eq!(&body[..], b"{\"link\":\"created\"}");
    assert_eq!(backend.hits(), 2);

    // ...and from then on replayed, also after another crash.
    kill(&mut sidecar, "KILL");
    let mut sidecar = serve(&policy);
    let client = h1_client(&pki.paths.ca);
    let (parts, body) = send(&client, request(sidecar.port)).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(&body[..], b"{\"link\":\"created\"}");
    assert_eq!(backend.hits(), 2);
    kill(&mut sidecar, "TERM");
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn parse_policy(
    pki: &TestPki,
    settings: &Settings,
) -> Result<Config, portcullis::config::ConfigError> {
    let text = policy_text(pki, "http://127.0.0.1:9", settings);
    Config::parse(&SourceText::new("policy.toml", text), pki.dir.path())
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn the_defaults_protect_every_write() {
    use portcullis::gate::idempotency::Durability;
    let pki = test_pki();
    let config = parse_policy(&pki, &Settings::default()).unwrap();
    let idempotency = &config.idempotency;
    assert_eq!(
        idempotency.methods,
        [Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
    );
    assert_eq!(idempotency.retention, Duration::from_secs(24 * 3600));
    assert_eq!(
        idempotency.lease,
        config.upstream.response_timeout * 2,
        "the lease outlasts the wait for the backend"
    );
    assert_eq!(idempotency.max_body_bytes, 1024 * 1024);
    assert_eq!(idempotency.max_response_bytes, 1024 * 1024);
    assert_eq!(idempotency.key_file, pki.dir.path().join("idempotency.key"));
    assert_eq!(idempotency.durability, Durability::Fsync);
    assert!(!idempotency.store_failures);
    assert_eq!(idempotency.sweep_interval, Duration::from_secs(60));
    assert_eq!(idempotency.sweep_batch, 1000);
    assert!(config
        .routes
        .iter()
        .all(|route| route.idempotency.is_none()));

    let custom = routes_with(
        "[idempotency]\nmethods = [\"POST\", \"POST\"]\ndurability = \"batched\"\nkey_file = \"keys/idem.key\"\nstore_failures = true",
    );
    let config = parse_policy(&pki, &custom).unwrap();
    assert_eq!(config.idempotency.methods, [Method::POST]);
    assert_eq!(config.idempotency.durability, Durability::Batched);
    assert_eq!(
        config.idempotency.key_file,
        pki.dir.path().join("keys/idem.key")
    );
    assert!(config.idempotency.store_failures);
    let config = parse_policy(
        &pki,
        &Settings {
            routes: post_route_with("idempotency = false"),
            ..Settings::default()
        },
    )
    .unwrap();
    let post = config
        .routes
        .iter()
        .find(|r| r.name == "echo.post")
        .unwrap();
    assert_eq!(post.idempotency, Some(false));
}

#[test]
fn every_mistake_in_the_section_is_reported_with_its_line() {
    let pki = test_pki();
    let section = "[idempotency]\n\
                   methods = [\"POST\", \"get\"]\n\
                   retention = \"10s\"\n\
                   lease = \"20s\"\n\
                   durability = \"sometimes\"\n\
                   max_body_bytes = 0\n\
                   max_response_bytes = 999999999999\n\
                   sweep_batch = 0\n\
                   sweep_interval = \"soon\"";
    let settings = routes_with(section);
    let text = policy_text(&pki, "http://127.0.0.1:9", &settings);
    let error = parse_policy(&pki, &settings).unwrap_err();
    let found: Vec<(usize, &str)> = error
        .issues()
        .iter()
        .map(|issue| (issue.location.line, issue.key.as_str()))
        .collect();
    let expected = [
        ("methods", "idempotency.methods"),
        ("lease", "idempotency.lease"),
        ("lease", "idempotency.lease"),
        ("durability", "idempotency.durability"),
        ("max_body_bytes", "idempotency.max_body_bytes"),
        ("max_response_bytes", "idempotency.max_response_bytes"),
        ("sweep_batch", "idempotency.sweep_batch"),
        ("sweep_interval", "idempotency.sweep_interval"),
    ]
    .map(|(field, key)| (line_of(&text, &format!("{field} = ")), key));
    assert_eq!(found, expected, "{error}");
    let message = error.to_string();
    for needle in [
        "\"get\" is not an upper-case HTTP method",
        "longer than upstream.response_timeout (30s)",
        "shorter than idempotency.retention",
        "\"fsync\"",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(message.contains(&format!("policy.toml:{}:", line_of(&text, "durability = "))));

    let unknown = parse_policy(&pki, &routes_with("[idempotency]\nttl = \"1h\"")).unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("idempotency.ttl: unknown field"),
        "{unknown}"
    );
    let wrong_type = Settings {
        routes: post_route_with("idempotency = \"no\""),
        ..Settings::default()
    };
    let error = parse_policy(&pki, &wrong_type).unwrap_err();
    assert!(error.to_string().contains("idempotency"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Figures (not a pass/fail test of behaviour; run on demand for BENCHMARKS.md):
//   cargo test --release --test idempotency figures -- --ignored --nocapture

/// Median and 99th percentile of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Times `rounds` sequential writes, each with a new key unless `replay_of` names one.
async fn time_writes(sidecar: &Sidecar, rounds: usize, replay_of: Option<&str>) -> Vec<Duration> {
    let client = h1_client(sidecar.ca());
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let key = replay_of.map_or_else(|| format!("figure-{n}"), str::to_owned);
        let request = write(sidecar, Method::POST, "/v1/echo/figure", &key, "{\"n\":1}");
        let started = Instant::now();
        let (parts, _) = send(&client, request).await;
        samples.push(started.elapsed());
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "figures for the benchmark report; run on demand"]
async fn figures() {
    const ROUNDS: usize = 300;
    let backend = slow_echo(Duration::from_millis(2)).await;
    let mut report = Vec::new();
    for durability in ["fsync", "batched"] {
        // Limits out of the way: the figures are about the cache, not the rate limiter.
        let settings = routes_with(&format!(
            "[ratelimit]\nrequests_per_minute = 1000000\nburst = 100000\n\n\
             [idempotency]\ndurability = \"{durability}\""
        ));
        let sidecar = Sidecar::start(&backend.url(), settings).await;
        time_writes(&sidecar, 20, None).await;
        let (p50, p99) = percentiles(time_writes(&sidecar, ROUNDS, None).await);
        report.push((format!("forwarded write, {durability}"), p50, p99));
        let (replay_p50, replay_p99) =
            percentiles(time_writes(&sidecar, ROUNDS, Some("figure-0")).await);
        report.push((format!("replay, {durability}"), replay_p50, replay_p99));
        assert!(
            replay_p50 * 3 <= p50,
            "a replay ({replay_p50:?}) is not 3x faster than the backend path ({p50:?})"
        );
    }
    println!("\n| path (backend answers in 2 ms) | p50 | p99 |\n|---|---|---|");
    for (name, p50, p99) in report {
        println!("| {name} | {p50:.2?} | {p99:.2?} |");
    }
}
