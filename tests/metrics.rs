//! The internal listener and its Prometheus metrics, through the real listeners: requests go
//! through the TLS port with real clients, `/metrics` is scraped over plain HTTP/1.1 from the
//! internal listener and parsed with a Prometheus text-format parser (`prometheus-parse`).
//! Also: the `[internal]` and `[logging]` options, and the binary's JSON log lines.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, Request, StatusCode};
use portcullis::body::{empty_body, full_body};
use portcullis::config::{Config, LogFormat, SourceText};
use portcullis::keys::{Env, MintRequest, RateOverride};
use portcullis::state::unix_now;
use prometheus_parse::{LineInfo, Scrape, Value};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Strings sent in paths, queries, headers and bodies; none may reach a label or the scrape.
const CANARIES: [&str; 3] = ["CanaryPath7731", "CanaryQuery4410", "CanaryHeader9902"];

fn with_internal(extra: &str) -> Settings {
    Settings {
        internal: true,
        routes: format!("{extra}\n{DEFAULT_ROUTES}"),
        ..Settings::default()
    }
}

/// One scrape of `/metrics`, parsed, plus its raw text.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    async fn scrape(sidecar: &Sidecar) -> Metrics {
        let (parts, body) = sidecar.internal_request(Method::GET, "/metrics").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            parts.headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = String::from_utf8(body.to_vec()).expect("utf-8 metrics");
        // The parser skips what it cannot read; make sure there was nothing of the kind.
        for line in text.lines() {
            assert_ne!(
                LineInfo::parse(line),
                LineInfo::Ignored,
                "unparsable line {line:?}"
            );
        }
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parse");
        Metrics { text, scrape }
    }

    /// The value of a counter or gauge series with exactly these labels (0 when absent).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && same_labels(&s.labels, labels))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{metric} is not a single value"),
            })
            .collect();
        assert!(found.len() <= 1, "{metric} {labels:?} appears twice");
        found.first().copied().unwrap_or(0.0)
    }

    /// The sum of every series of a metric.
    fn total(&self, metric: &str) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{metric} is not a single value"),
            })
            .sum()
    }

    /// A histogram's buckets (upper bound, cumulative count).
    fn buckets(&self, metric: &str) -> Vec<(f64, f64)> {
        let sample = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("{metric} missing"));
        match &sample.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{metric} is not a histogram: {other:?}"),
        }
    }

    /// A histogram's `_count`, checked against its `+Inf` bucket and the buckets' order.
    fn histogram_count(&self, metric: &str) -> f64 {
        let buckets = self.buckets(metric);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{metric} buckets are cumulative: {buckets:?}"
        );
        let (bound, inf) = *buckets.last().expect("buckets");
        assert!(bound.is_infinite(), "{metric} ends with +Inf");
        let count = self.value(&format!("{metric}_count"), &[]);
        assert_eq!(inf, count, "{metric}: +Inf bucket equals _count");
        count
    }

    /// Every label value of every sample.
    fn label_values(&self) -> Vec<String> {
        self.scrape
            .samples
            .iter()
            .flat_map(|s| s.labels.values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

fn same_labels(have: &prometheus_parse::Labels, want: &[(&str, &str)]) -> bool {
    let want: HashMap<&str, &str> = want.iter().copied().collect();
    have.len() == want.len()
        && have
            .iter()
            .all(|(k, v)| want.get(k.as_str()) == Some(&v.as_str()))
}

fn requests(m: &Metrics, route: &str, status: &str, code: &str) -> f64 {
    m.value(
        "portcullis_requests_total",
        &[("route", route), ("status", status), ("code", code)],
    )
}

/// Scrapes until `check` holds (the audit writer and connection tasks run on their own).
async fn scrape_until(sidecar: &Sidecar, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = Metrics::scrape(sidecar).await;
        if check(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", metrics.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

// ---------------------------------------------------------------------------------------------
// The internal listener

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405_problems() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;

    let (parts, body) = sidecar.internal_request(Method::GET, "/nope").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    let doc = problem(&parts, &body);
    assert_eq!(doc["code"], "internal.not_found");
    assert_eq!(parts.headers["cache-control"], "no-store");

    // The path is never echoed back.
    let (parts, body) = sidecar
        .internal_request(Method::GET, &format!("/{}", CANARIES[0]))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains(CANARIES[0]));

    for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
        let (parts, body) = sidecar.internal_request(method.clone(), "/metrics").await;
        assert_eq!(parts.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(parts.headers["allow"], "GET");
        if method != Method::HEAD {
            let doc = problem(&parts, &body);
            assert_eq!(doc["code"], "internal.method_not_allowed");
        }
    }

    // The partner listener knows nothing of /metrics: it is a 401 there like any path.
    let client = h1_client(sidecar.ca());
    let (parts, body) = get(&client, &sidecar.url("/metrics")).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&parts, &body)["code"], "auth.missing");
}

#[tokio::test]
async fn no_internal_section_means_no_internal_listener() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    assert!(sidecar.internal_addr.is_none());
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_header_read_timeout() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;
    let addr = sidecar.internal_addr.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    assert!(read.is_ok(), "the connection was closed by the server");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_on_arrival() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;
    let addr = sidecar.internal_addr.unwrap();
    // Slots are taken in accept order, so these hold every one until their head times out.
    let mut idle = Vec::new();
    for _ in 0..portcullis::internal::MAX_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_closed_on_arrival(&mut extra).await;
    drop(idle);
    // With the slots free again, scrapes are served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = Request::get("/metrics")
            .header("host", addr.to_string())
            .body(empty_body())
            .unwrap();
        if let Ok((parts, _)) = send_over(tcp, request).await {
            assert_eq!(parts.status, StatusCode::OK);
            break;
        }
        assert!(Instant::now() < deadline, "slots were released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Counters, histograms and gauges move as requests flow

#[tokio::test]
async fn a_failed_forward_is_timed_in_the_upstream_histogram() {
    // A port nobody listens on: the forward is refused, 502 upstream.unavailable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sidecar = Sidecar::start(&url, with_internal("")).await;
    let client = h1_client(sidecar.ca());
    let (parts, body) = sidecar.get(&client, "/v1/echo/1").await;
    assert_eq!(problem(&parts, &body)["code"], "upstream.unavailable");
    let m = Metrics::scrape(&sidecar).await;
    assert_eq!(requests(&m, "echo.get", "502", "upstream.unavailable"), 1.0);
    assert_eq!(
        m.histogram_count("portcullis_upstream_duration_seconds"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_requests_through_the_tls_listener() {
    let (backend, _seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;
    let unscoped = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let mut limited = MintRequest::new(TEST_ORG, Env::Test, Default::default());
    limited.rate = Some(RateOverride {
        per_minute: 1,
        burst: 2,
    });
    let limited = sidecar
        .state
        .keys
        .mint(limited, unix_now())
        .unwrap()
        .key
        .expose_secret()
        .to_owned();

    let before = Metrics::scrape(&sidecar).await;
    assert_eq!(before.total("portcullis_requests_total"), 0.0);
    assert_eq!(
        before.value(
            "portcullis_idempotency_requests_total",
            &[("outcome", "hit")]
        ),
        0.0,
        "enum series exist at zero"
    );
    assert!(before
        .text
        .contains("portcullis_idempotency_requests_total{outcome=\"hit\"} 0"));

    let client = h1_client(sidecar.ca());
    let canary_path = format!("/v1/echo/{}?q={}", CANARIES[0], CANARIES[1]);
    let send_with = |key: &str, method: Method, path: &str, body: &'static str| {
        let mut builder = Request::builder()
            .method(method)
            .uri(sidecar.url(path))
            .header("authorization", bearer(key))
            .header("x-note", CANARIES[2]);
        if !body.is_empty() {
            builder = builder.header("idempotency-key", "order-1");
        }
        builder.body(if body.is_empty() {
            empty_body()
        } else {
            full_body(body)
        })
    };
    let mut statuses = Vec::new();
    let plan: Vec<(String, Method, String, &'static str)> = vec![
        // Allowed and forwarded (the recording backend answers 201).
        (sidecar.key.clone(), Method::GET, canary_path.clone(), ""),
        (sidecar.key.clone(), Method::GET, "/v1/notes/1".into(), ""),
        // Refused by scope.
        (unscoped.clone(), Method::GET, "/v1/notes/1".into(), ""),
        // No route matches.
        (
            sidecar.key.clone(),
            Method::GET,
            format!("/v2/{}", CANARIES[0]),
            "",
        ),
        // A bad key.
        (
            "pcl_test_00000000_nope".into(),
            Method::GET,
            canary_path.clone(),
            "",
        ),
        // A write, its replay, and the key reused for another body.
        (
            sidecar.key.clone(),
            Method::POST,
            canary_path.clone(),
            "first",
        ),
        (
            sidecar.key.clone(),
            Method::POST,
            canary_path.clone(),
            "first",
        ),
        (
            sidecar.key.clone(),
            Method::POST,
            canary_path.clone(),
            "second",
        ),
        // A key with a burst of two: the third is rate limited.
        (limited.clone(), Method::GET, "/v1/echo/a".into(), ""),
        (limited.clone(), Method::GET, "/v1/echo/b".into(), ""),
        (limited.clone(), Method::GET, "/v1/echo/c".into(), ""),
        // A built-in.
        (
            sidecar.key.clone(),
            Method::GET,
            "/v1/auth/whoami".into(),
            "",
        ),
    ];
    for (key, method, path, body) in plan {
        let (parts, _) = send(&client, send_with(&key, method, &path, body).unwrap()).await;
        statuses.push(parts.status.as_u16());
    }
    assert_eq!(
        statuses,
        [201, 201, 403, 404, 401, 201, 201, 422, 201, 201, 429, 200],
        "the requests took the paths intended"
    );

    let m = Metrics::scrape(&sidecar).await;
    assert_eq!(requests(&m, "echo.get", "201", ""), 3.0);
    assert_eq!(requests(&m, "notes.read", "201", ""), 1.0);
    assert_eq!(requests(&m, "notes.read", "403", "perm.denied"), 1.0);
    assert_eq!(requests(&m, "@none", "404", "route.unknown"), 1.0);
    assert_eq!(requests(&m, "@none", "401", "auth.invalid"), 1.0);
    assert_eq!(requests(&m, "echo.post", "201", ""), 2.0);
    assert_eq!(
        requests(&m, "echo.post", "422", "idempotency.mismatch"),
        1.0
    );
    assert_eq!(requests(&m, "@none", "429", "rate.limited"), 1.0);
    assert_eq!(requests(&m, "@whoami", "200", ""), 1.0);
    assert_eq!(m.total("portcullis_requests_total"), 12.0);

    assert_eq!(
        m.value(
            "portcullis_limit_refusals_total",
            &[("kind", "rate_limited"), ("org", TEST_ORG)]
        ),
        1.0
    );
    assert_eq!(m.total("portcullis_limit_refusals_total"), 1.0);
    for (outcome, count) in [("hit", 1.0), ("miss", 1.0), ("conflict", 1.0)] {
        assert_eq!(
            m.value(
                "portcullis_idempotency_requests_total",
                &[("outcome", outcome)]
            ),
            count,
            "idempotency {outcome}"
        );
    }

    // Every answered request is in the latency histogram; every forward in the upstream one.
    assert_eq!(
        m.histogram_count("portcullis_request_duration_seconds"),
        12.0
    );
    assert_eq!(
        m.histogram_count("portcullis_upstream_duration_seconds"),
        backend.hits() as f64
    );
    assert_eq!(backend.hits(), 5);
    assert!(m.value("portcullis_tls_handshakes_total", &[]) >= 1.0);

    // The audit writer synced the records.
    let m = scrape_until(&sidecar, "audit syncs are timed", |m| {
        m.histogram_count("portcullis_audit_fsync_duration_seconds") >= 1.0
    })
    .await;
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "success")]),
        0.0
    );

    // Nothing the requests carried is a label value, or anywhere in the scrape.
    for value in m.label_values() {
        assert!(!value.contains('/'), "a path-like label value {value:?}");
        assert!(!value.contains('?'), "a query-like label value {value:?}");
    }
    for canary in CANARIES {
        assert!(
            !m.text.to_lowercase().contains(&canary.to_lowercase()),
            "{canary} reached the metrics:\n{}",
            m.text
        );
    }
}

#[tokio::test]
async fn quota_and_auth_throttle_refusals_are_counted_by_kind() {
    let backend = Backend::recording().await.0;
    let settings = Settings {
        auth: "max_failures_per_ip = 2\n".to_owned(),
        ..with_internal("[ratelimit]\ndaily_quota = 1\n")
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let (parts, _) = sidecar.get(&client, "/v1/echo/1").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let (parts, body) = sidecar.get(&client, "/v1/echo/2").await;
    assert_eq!(problem(&parts, &body)["code"], "quota.exceeded");
    for _ in 0..3 {
        let request = Request::get(sidecar.url("/v1/echo/x"))
            .header("authorization", "Bearer pcl_test_0000abcd_wrong")
            .body(empty_body())
            .unwrap();
        send(&client, request).await;
    }

    let m = Metrics::scrape(&sidecar).await;
    assert_eq!(
        m.value(
            "portcullis_limit_refusals_total",
            &[("kind", "quota_exceeded"), ("org", TEST_ORG)]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "portcullis_limit_refusals_total",
            &[("kind", "auth_throttled"), ("org", "")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(requests(&m, "@none", "429", "auth.throttled"), 1.0);
    assert_eq!(requests(&m, "echo.get", "429", "quota.exceeded"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_gauge_goes_up_and_down() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;
    let m = Metrics::scrape(&sidecar).await;
    assert_eq!(m.value("portcullis_open_connections", &[]), 0.0);

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(tls_connect(sidecar.addr, sidecar.ca(), &[b"http/1.1"]).await);
    }
    let m = scrape_until(&sidecar, "three connections open", |m| {
        m.value("portcullis_open_connections", &[]) == 3.0
    })
    .await;
    assert_eq!(m.value("portcullis_tls_handshakes_total", &[]), 3.0);

    drop(open);
    scrape_until(&sidecar, "connections closed", |m| {
        m.value("portcullis_open_connections", &[]) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;

    // Plain HTTP on the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer).await;
    assert!(answer.starts_with(b"HTTP/1.1 400"));
    // Neither TLS nor HTTP.
    let mut tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.write_all(&[0x00, 0x01, 0x02]).await.unwrap();
    drop(tcp);
    // Connected and closed without a byte.
    drop(tokio::net::TcpStream::connect(sidecar.addr).await.unwrap());
    // A client that does not trust the certificate aborts the handshake with an alert.
    let stranger = test_pki();
    let tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    assert!(tls_over(tcp, &stranger.paths.ca, &[]).await.is_err());

    let m = scrape_until(&sidecar, "four failures", |m| {
        m.total("portcullis_tls_handshake_failures_total") >= 4.0
    })
    .await;
    for reason in ["plain_http", "not_tls", "closed", "alert_received"] {
        assert_eq!(
            m.value(
                "portcullis_tls_handshake_failures_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}:\n{}",
            m.text
        );
    }
    assert_eq!(m.value("portcullis_tls_handshakes_total", &[]), 0.0);
    assert_eq!(requests(&m, "@none", "400", "request.plain_http"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_queue_depth_rises_until_the_writer_syncs() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(
        &backend.url(),
        with_internal("[audit]\ncommit_interval = \"3s\"\n"),
    )
    .await;
    let client = h1_client(sidecar.ca());
    for i in 0..3 {
        let (parts, _) = sidecar.get(&client, &format!("/v1/echo/{i}")).await;
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    let m = Metrics::scrape(&sidecar).await;
    let depth = m.value("portcullis_audit_queue_depth", &[]);
    assert!(depth >= 1.0, "records wait for the next commit: {depth}");
    scrape_until(&sidecar, "the queue drains", |m| {
        m.value("portcullis_audit_queue_depth", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn webhook_and_reload_families_move_through_their_api() {
    let backend = Backend::recording().await.0;
    let sidecar = Sidecar::start(&backend.url(), with_internal("")).await;
    let metrics = &sidecar.state.metrics;
    use portcullis::metrics::{DeliveryOutcome, ReloadResult};
    metrics.webhook_delivery(DeliveryOutcome::Delivered);
    metrics.webhook_delivery(DeliveryOutcome::Delivered);
    metrics.webhook_delivery(DeliveryOutcome::DeadLettered);
    metrics.set_dlq_size(1);
    metrics.reload(ReloadResult::Success);
    metrics.reload(ReloadResult::Failure);
    let m = Metrics::scrape(&sidecar).await;
    let deliveries = |outcome| {
        m.value(
            "portcullis_webhook_deliveries_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(deliveries("delivered"), 2.0);
    assert_eq!(deliveries("retrying"), 0.0);
    assert_eq!(deliveries("dead_lettered"), 1.0);
    assert_eq!(m.value("portcullis_webhook_dlq_size", &[]), 1.0);
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "failure")]),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// `[internal]` and `[logging]` options

fn parse(extra: &str) -> Result<Config, String> {
    let pki = test_pki();
    let text = policy_text(&pki, "http://127.0.0.1:9", &Settings::default()) + extra;
    Config::parse(&SourceText::new("test.toml", text), pki.dir.path()).map_err(|e| e.to_string())
}

#[test]
fn the_internal_listener_is_loopback_unless_allowed() {
    let config = parse("\n[internal]\n").unwrap();
    assert_eq!(
        config.internal.unwrap().listen.to_string(),
        "127.0.0.1:9464"
    );
    assert!(parse("").unwrap().internal.is_none());
    let config = parse("\n[internal]\nlisten = \"[::1]:9000\"\n").unwrap();
    assert_eq!(config.internal.unwrap().listen.to_string(), "[::1]:9000");

    let error = parse("\n[internal]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
    assert!(
        error.contains("internal.listen: is not a loopback address"),
        "{error}"
    );
    assert!(error.contains("allow_non_loopback = true"), "{error}");
    assert!(error.contains("test.toml:"), "file:line:col: {error}");

    let config =
        parse("\n[internal]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n").unwrap();
    assert_eq!(config.internal.unwrap().listen.to_string(), "0.0.0.0:9464");

    let error = parse("\n[internal]\nlisten = \"localhost:9464\"\n").unwrap_err();
    assert!(
        error.contains("internal.listen: is not an IP address"),
        "{error}"
    );
    let error = parse("\n[internal]\nport = 9464\n").unwrap_err();
    assert!(error.contains("port"), "{error}");
}

#[test]
fn logging_options_are_validated_together() {
    let config = parse("").unwrap();
    assert_eq!(config.logging.format, LogFormat::Pretty);
    assert_eq!(config.logging.level, "info");
    let config =
        parse("\n[logging]\nformat = \"json\"\nlevel = \"portcullis=debug,warn\"\n").unwrap();
    assert_eq!(config.logging.format, LogFormat::Json);
    assert_eq!(config.logging.level, "portcullis=debug,warn");

    let error = parse(
        "\n[logging]\nformat = \"xml\"\nlevel = \"portcullis=loudest\"\n\n[internal]\nlisten = \"8.8.8.8:1\"\n",
    )
    .unwrap_err();
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines.len(), 3, "every mistake at once: {error}");
    assert!(
        error.contains("logging.format: must be \"pretty\""),
        "{error}"
    );
    assert!(
        error.contains("logging.level: is not a log filter"),
        "{error}"
    );
    assert!(error.contains("internal.listen"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// The binary: JSON logs, the internal listener in `serve`

struct Served {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
    /// Lines already returned by [`Served::next_json`].
    taken: Vec<usize>,
}

impl Served {
    /// The first line not taken yet with this message, in the order written; every line
    /// must be JSON.
    fn next_json(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut checked = 0;
        loop {
            while checked < self.seen.len() {
                let index = checked;
                checked += 1;
                let line = &self.seen[index];
                let json: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if json["message"] == message && !self.taken.contains(&index) {
                    self.taken.push(index);
                    return json;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {message:?} line"));
            self.seen.push(line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_json_lines_without_request_data_and_serves_metrics() {
    let (backend, _seen) = Backend::recording().await;
    let pki = test_pki();
    let settings = with_internal("[logging]\nformat = \"json\"\nlevel = \"debug\"\n");
    let path = pki.dir.path().join("policy.toml");
    std::fs::write(&path, policy_text(&pki, &backend.url(), &settings)).unwrap();
    let key = {
        let config = Config::load(&path).unwrap();
        let state =
            portcullis::state::State::open(portcullis::policy::Policy::new(config).unwrap())
                .unwrap();
        state.orgs.create(TEST_ORG, "Test Org", unix_now()).unwrap();
        mint(&state, TEST_ORG, Env::Test, &[])
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("PORTCULLIS_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut served = Served {
        child: KillOnDrop(child),
        lines,
        seen: Vec::new(),
        taken: Vec::new(),
    };
    let internal = served.next_json("internal listener listening");
    let internal: std::net::SocketAddr = internal["listen"].as_str().unwrap().parse().unwrap();
    let listening = served.next_json("portcullis listening");
    let addr: std::net::SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    assert!(listening.get("span").is_none() && listening.get("spans").is_none());

    let client = h1_client(&pki.paths.ca);
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    let canary_path = format!("/v1/echo/{}?q={}", CANARIES[0], CANARIES[1]);
    for auth in [Some(bearer(&key)), None] {
        let mut request = Request::get(url(&canary_path)).header("x-note", CANARIES[2]);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        send(&client, request.body(empty_body()).unwrap()).await;
    }
    let answered = served.next_json("request answered");
    assert_eq!(answered["level"], "DEBUG");
    assert_eq!(answered["route"], "echo.get");
    assert_eq!(answered["status"], 201);
    let refused = served.next_json("request refused");
    assert_eq!(refused["level"], "INFO");
    assert_eq!(refused["code"], "auth.missing");

    let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    let request = Request::get("/metrics")
        .header("host", internal.to_string())
        .body(empty_body())
        .unwrap();
    let (parts, body) = send_over(tcp, request).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains(r#"portcullis_requests_total{route="echo.get",status="201",code=""} 1"#),
        "{text}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "portcullis did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The reader thread ends (and the channel closes) at the end of stderr.
    while let Ok(line) = served.lines.recv_timeout(Duration::from_secs(5)) {
        served.seen.push(line);
    }
    for line in &served.seen {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            json.get("span").is_none() && json.get("spans").is_none(),
            "{line}"
        );
        for canary in CANARIES {
            assert!(!line.contains(canary), "{canary} in the log: {line}");
        }
    }
    assert!(served
        .seen
        .iter()
        .any(|line| line.contains("portcullis stopped")));
}

#[test]
fn serve_reports_config_mistakes_on_stderr_before_logging_starts() {
    let pki = test_pki();
    let settings = with_internal("[logging]\nformat = \"yaml\"\n");
    let path = pki.dir.path().join("policy.toml");
    std::fs::write(&path, policy_text(&pki, "http://127.0.0.1:9", &settings)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.toml:") && stderr.contains("logging.format: must be"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_and_serves_its_metrics_url() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut served = Served {
        child: KillOnDrop(child),
        lines,
        seen: Vec::new(),
        taken: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = served
            .lines
            .recv_timeout(left)
            .expect("the banner's metrics line");
        if line.trim_start().starts_with("metrics") {
            break line;
        }
        served.seen.push(line);
    };
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback(), "{line}");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = Request::get("/metrics")
        .header("host", addr.to_string())
        .body(empty_body())
        .unwrap();
    let (parts, body) = send_over(tcp, request).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("portcullis_open_connections 0"), "{text}");
    let _ = served.child.kill();
}
