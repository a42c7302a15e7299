//! Webhook subscriptions end to end, through the real TLS listener: create, list, get, delete
//! and rotate; the secret shown once; Idempotency-Key replay, mismatch and absence; scope and
//! tenant isolation; every receiver URL rule and event type check; the per-organization cap;
//! pagination; subscriptions surviving a restart with their sealed secrets; and every
//! `[webhooks]` validation error.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use portcullis::body::{empty_body, full_body};
use portcullis::config::{Config, ConfigError, SourceText};
use portcullis::keys::Env;
use portcullis::state::unix_now;
use portcullis::webhooks::subscriptions::SubscriptionId;
use serde_json::{json, Value};

const PATH: &str = "/v1/webhooks";
const SCOPE: &str = "manage_webhooks";
const OTHER_ORG: &str = "other-org";
const GOOD_URL: &str = "https://hooks.partner.example/portcullis";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A private ingest token file, kept alive by the returned directory.
fn token_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.token");
    std::fs::write(&path, "ingest-token-for-tests-0123456789").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

/// A sidecar with webhooks enabled and `extra` lines in `[webhooks]`.
async fn start(tokens: &tempfile::TempDir, extra: &str) -> Sidecar {
    let webhooks = format!(
        "[webhooks]\nenabled = true\ningest_token_file = \"{}\"\n\
         event_types = [\"appointment.scheduled\", \"patient.created\"]\n{extra}\n",
        tokens.path().join("ingest.token").display()
    );
    let settings = Settings {
        routes: format!("{webhooks}\n{DEFAULT_ROUTES}"),
        ..Settings::default()
    };
    let sidecar = Sidecar::start("http://127.0.0.1:9", settings).await;
    sidecar
        .state
        .orgs
        .create(OTHER_ORG, "Other Org", unix_now())
        .expect("second org");
    sidecar
}

fn manager(sidecar: &Sidecar, org: &str) -> String {
    mint(&sidecar.state, org, Env::Test, &[SCOPE])
}

async fn call(
    sidecar: &Sidecar,
    client: &TestClient,
    key: &str,
    method: Method,
    path: &str,
    idempotency_key: Option<&str>,
    body: Option<&str>,
) -> (http::response::Parts, Bytes) {
    let mut request = Request::builder()
        .method(method)
        .uri(sidecar.url(path))
        .header("authorization", format!("Bearer {key}"));
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(full_body(Bytes::from(body.to_owned()))),
        None => request.body(empty_body()),
    };
    send(client, request.unwrap()).await
}

async fn create(
    sidecar: &Sidecar,
    client: &TestClient,
    key: &str,
    idempotency_key: &str,
    body: &Value,
) -> (http::response::Parts, Bytes) {
    call(
        sidecar,
        client,
        key,
        Method::POST,
        PATH,
        Some(idempotency_key),
        Some(&body.to_string()),
    )
    .await
}

fn good_body() -> Value {
    json!({"url": GOOD_URL, "events": ["appointment.scheduled", "audit.event"]})
}

fn json_of(parts: &http::response::Parts, body: &[u8]) -> Value {
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["cache-control"], "no-store");
    serde_json::from_slice(body).expect("json answer")
}

/// Asserts a problem answer: status, code, media type, request id, no caching.
fn assert_problem(
    parts: &http::response::Parts,
    body: &[u8],
    status: StatusCode,
    code: &str,
) -> Value {
    assert_eq!(parts.status, status, "{}", String::from_utf8_lossy(body));
    let problem = problem(parts, body);
    assert_eq!(problem["code"], code);
    assert_eq!(parts.headers["cache-control"], "no-store");
    problem
}

// ---------------------------------------------------------------------------------------------
// The endpoints

#[tokio::test]
async fn create_list_get_rotate_delete_and_the_secret_is_shown_once() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);

    let (parts, body) = create(&sidecar, &client, &key, "create-1", &good_body()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(parts.headers.contains_key("x-request-id"));
    let created = json_of(&parts, &body);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.parse::<SubscriptionId>().is_ok(), "{id}");
    assert_eq!(created["url"], GOOD_URL);
    assert_eq!(
        created["events"],
        json!(["appointment.scheduled", "audit.event"])
    );
    assert_eq!(created["status"], "active");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");

    // Never again: not in one, not in the list.
    let one_path = format!("{PATH}/{id}");
    let (parts, body) = call(&sidecar, &client, &key, Method::GET, &one_path, None, None).await;
    assert_eq!(parts.status, StatusCode::OK);
    let one = json_of(&parts, &body);
    assert_eq!(one["id"], id.as_str());
    assert!(one.get("secret").is_none());
    assert!(!String::from_utf8_lossy(&body).contains(&secret));
    let (parts, body) = call(&sidecar, &client, &key, Method::GET, PATH, None, None).await;
    assert_eq!(parts.status, StatusCode::OK);
    let list = json_of(&parts, &body);
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(list["subscriptions"][0]["id"], id.as_str());
    assert_eq!(list["page"]["next_cursor"], Value::Null);
    assert!(!String::from_utf8_lossy(&body).contains(&secret));

    // The store hands the worker the same secret.
    let parsed: SubscriptionId = id.parse().unwrap();
    let stored = sidecar
        .state
        .subscriptions
        .get_any(&parsed)
        .unwrap()
        .unwrap();
    let now = unix_now() as i64;
    let signing: Vec<String> = stored
        .signing_secrets(now)
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(signing, [secret.as_str()]);
    assert!(stored.wants("audit.event") && !stored.wants("patient.created"));

    // Rotation: a new secret, once; the old one still signs beside it.
    let rotate_path = format!("{PATH}/{id}/rotate-secret");
    let (parts, body) = call(
        &sidecar,
        &client,
        &key,
        Method::POST,
        &rotate_path,
        None,
        None,
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    let rotated = json_of(&parts, &body);
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let stored = sidecar
        .state
        .subscriptions
        .get_any(&parsed)
        .unwrap()
        .unwrap();
    let signing: Vec<String> = stored
        .signing_secrets(now)
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(signing, [new_secret.clone(), secret.clone()]);
    // Past the default 24 h grace only the new one signs.
    let later: Vec<String> = stored
        .signing_secrets(now + 24 * 3600 + 5)
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(later, [new_secret.as_str()]);
    let (_, body) = call(&sidecar, &client, &key, Method::GET, &one_path, None, None).await;
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(&new_secret) && !text.contains(&secret));
    assert!(json_of(&parts, &body)["previous_secret_expires_at"].is_string());

    // Rotating again drops the oldest: two secrets at most.
    let (_, body) = call(
        &sidecar,
        &client,
        &key,
        Method::POST,
        &rotate_path,
        None,
        None,
    )
    .await;
    let third = json_of(&parts, &body)["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = sidecar
        .state
        .subscriptions
        .get_any(&parsed)
        .unwrap()
        .unwrap();
    let signing: Vec<String> = stored
        .signing_secrets(now)
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(signing, [third, new_secret]);

    // Delete, then it is gone everywhere.
    let (parts, body) = call(
        &sidecar,
        &client,
        &key,
        Method::DELETE,
        &one_path,
        None,
        None,
    )
    .await;
    assert_eq!(parts.status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    for (method, path) in [
        (Method::GET, one_path.as_str()),
        (Method::DELETE, one_path.as_str()),
        (Method::POST, rotate_path.as_str()),
    ] {
        let (parts, body) = call(&sidecar, &client, &key, method, path, None, None).await;
        assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
    }
    assert!(sidecar
        .state
        .subscriptions
        .get_any(&parsed)
        .unwrap()
        .is_none());
    let (_, body) = call(&sidecar, &client, &key, Method::GET, PATH, None, None).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["subscriptions"],
        json!([])
    );
}

#[tokio::test]
async fn creates_follow_idempotency_key_semantics() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);

    // Missing key.
    let (parts, body) = call(
        &sidecar,
        &client,
        &key,
        Method::POST,
        PATH,
        None,
        Some(&good_body().to_string()),
    )
    .await;
    assert_problem(
        &parts,
        &body,
        StatusCode::BAD_REQUEST,
        "idempotency.missing",
    );

    // First, then the same again: replayed, same subscription and secret.
    let (first_parts, first) = create(&sidecar, &client, &key, "idem-1", &good_body()).await;
    assert_eq!(first_parts.status, StatusCode::CREATED);
    assert!(!first_parts.headers.contains_key("idempotent-replayed"));
    let (parts, again) = create(&sidecar, &client, &key, "idem-1", &good_body()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(again, first);
    assert_eq!(sidecar.state.subscriptions.count(TEST_ORG).unwrap(), 1);

    // Same key, another body.
    let other = json!({"url": GOOD_URL, "events": ["patient.created"]});
    let (parts, body) = create(&sidecar, &client, &key, "idem-1", &other).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency.mismatch",
    );

    // A refused create is replayed as refused too (the answer is kept like a backend's 4xx).
    let bad = json!({"url": "http://hooks.partner.example/", "events": ["patient.created"]});
    let (parts, body) = create(&sidecar, &client, &key, "idem-2", &bad).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook.invalid_url",
    );
    let (parts, body) = create(&sidecar, &client, &key, "idem-2", &bad).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook.invalid_url",
    );
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(sidecar.state.subscriptions.count(TEST_ORG).unwrap(), 1);
}

#[tokio::test]
async fn a_key_without_the_scope_is_denied() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    // The harness key holds only notes:read.
    let key = sidecar.key.clone();
    let id = "sub_0123456789abcdef0123";
    for (method, path, body) in [
        (Method::POST, PATH.to_owned(), Some(good_body().to_string())),
        (Method::GET, PATH.to_owned(), None),
        (Method::GET, format!("{PATH}/{id}"), None),
        (Method::DELETE, format!("{PATH}/{id}"), None),
        (Method::POST, format!("{PATH}/{id}/rotate-secret"), None),
    ] {
        let (parts, answer) = call(
            &sidecar,
            &client,
            &key,
            method,
            &path,
            Some("k"),
            body.as_deref(),
        )
        .await;
        let problem = assert_problem(&parts, &answer, StatusCode::FORBIDDEN, "perm.denied");
        assert!(problem["detail"].as_str().unwrap().contains(SCOPE));
    }
    // Without any key at all: 401 before anything else.
    let request = Request::get(sidecar.url(PATH)).body(empty_body()).unwrap();
    let (parts, body) = send(&client, request).await;
    assert_problem(&parts, &body, StatusCode::UNAUTHORIZED, "auth.missing");
}

#[tokio::test]
async fn tenants_see_only_their_own_subscriptions() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let mine = manager(&sidecar, TEST_ORG);
    let theirs = manager(&sidecar, OTHER_ORG);

    let (_, body) = create(&sidecar, &client, &mine, "a", &good_body()).await;
    let my_id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = create(&sidecar, &client, &theirs, "a", &good_body()).await;
    let their_id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(my_id, their_id);

    for (method, path) in [
        (Method::GET, format!("{PATH}/{their_id}")),
        (Method::DELETE, format!("{PATH}/{their_id}")),
        (Method::POST, format!("{PATH}/{their_id}/rotate-secret")),
    ] {
        let (parts, body) = call(&sidecar, &client, &mine, method, &path, None, None).await;
        let problem = assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
        assert!(!problem.to_string().contains(&their_id));
    }
    // Untouched by those attempts.
    let their_parsed: SubscriptionId = their_id.parse().unwrap();
    let theirs_stored = sidecar
        .state
        .subscriptions
        .get_any(&their_parsed)
        .unwrap()
        .unwrap();
    assert_eq!(theirs_stored.signing_secrets(unix_now() as i64).len(), 1);

    let (_, body) = call(&sidecar, &client, &mine, Method::GET, PATH, None, None).await;
    let list = serde_json::from_slice::<Value>(&body).unwrap();
    let ids: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [my_id.as_str()]);
}

#[tokio::test]
async fn every_url_rule_is_enforced_without_echoing_the_url() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    let cases = [
        ("http://hooks.partner.example/x", "https"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.10/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("https://0.0.0.0/", "non-public"),
        ("https://172.16.5.4/", "private"),
        (
            "https://user:pass@hooks.partner.example/x",
            "user name or password",
        ),
        ("https://localhost/x", "this machine"),
        ("https://hooks.partner.example/x#frag", "fragment"),
        ("not a url", "absolute https URL"),
    ];
    for (n, (url, rule)) in cases.iter().enumerate() {
        let body = json!({"url": url, "events": ["patient.created"]});
        let (parts, answer) = create(&sidecar, &client, &key, &format!("url-{n}"), &body).await;
        let problem = assert_problem(
            &parts,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook.invalid_url",
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(rule), "{url}: {detail}");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.contains("partner.example") && !text.contains("169.254"),
            "{text}"
        );
        assert!(
            !text.contains("10.1.2.3") && !text.contains("user:pass"),
            "{text}"
        );
    }
    assert_eq!(sidecar.state.subscriptions.count(TEST_ORG).unwrap(), 0);
}

#[tokio::test]
async fn private_destinations_can_be_allowed_for_labs() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "allow_private_destinations = true").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    let body = json!({"url": "https://127.0.0.1:9443/hook", "events": ["patient.created"]});
    let (parts, _) = create(&sidecar, &client, &key, "lab", &body).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    // https is still required.
    let body = json!({"url": "http://127.0.0.1:9443/hook", "events": ["patient.created"]});
    let (parts, answer) = create(&sidecar, &client, &key, "lab-http", &body).await;
    assert_problem(
        &parts,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook.invalid_url",
    );
}

#[tokio::test]
async fn bodies_and_event_types_are_checked() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);

    let body = json!({"url": GOOD_URL, "events": ["patient.created", "patient.deleted"]});
    let (parts, answer) = create(&sidecar, &client, &key, "ev", &body).await;
    let problem = assert_problem(
        &parts,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook.unknown_event",
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("appointment.scheduled") && detail.contains("audit.event"));
    assert!(!detail.contains("patient.deleted"), "{detail}");

    let cases: [(&str, &str); 7] = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (r#"{"events": ["patient.created"]}"#, "url is required"),
        (
            r#"{"url": "https://hooks.partner.example/"}"#,
            "events is required",
        ),
        (
            r#"{"url": "https://hooks.partner.example/", "events": []}"#,
            "at least one",
        ),
        (
            r#"{"url": 7, "events": ["patient.created"]}"#,
            "url must be a string",
        ),
        (
            r#"{"url": "https://hooks.partner.example/", "events": ["patient.created"],
                "description": "Jane Doe's clinic"}"#,
            "description",
        ),
    ];
    for (n, (body, needle)) in cases.iter().enumerate() {
        let (parts, answer) = call(
            &sidecar,
            &client,
            &key,
            Method::POST,
            PATH,
            Some(&format!("body-{n}")),
            Some(body),
        )
        .await;
        let problem = assert_problem(
            &parts,
            &answer,
            StatusCode::BAD_REQUEST,
            "request.invalid_body",
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{body}: {detail}");
        assert!(!String::from_utf8_lossy(&answer).contains("Jane"));
    }
    assert_eq!(sidecar.state.subscriptions.count(TEST_ORG).unwrap(), 0);
}

#[tokio::test]
async fn malformed_ids_other_methods_and_queries_are_refused() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    for (method, path) in [
        (Method::GET, format!("{PATH}/sub_NOTHEX")),
        (Method::GET, format!("{PATH}/123-45-6789")),
        (
            Method::GET,
            format!("{PATH}/sub_0123456789abcdef0123/extra"),
        ),
        (Method::PUT, PATH.to_owned()),
        (Method::PATCH, format!("{PATH}/sub_0123456789abcdef0123")),
        (
            Method::GET,
            format!("{PATH}/sub_0123456789abcdef0123/rotate-secret"),
        ),
    ] {
        let (parts, body) = call(&sidecar, &client, &key, method, &path, None, None).await;
        let problem = assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
        assert!(!problem.to_string().contains("123-45-6789"));
    }
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=bogus",
        "q=x",
        "limit=1&limit=2",
    ] {
        let path = format!("{PATH}?{query}");
        let (parts, body) = call(&sidecar, &client, &key, Method::GET, &path, None, None).await;
        assert_problem(
            &parts,
            &body,
            StatusCode::BAD_REQUEST,
            "request.invalid_query",
        );
    }
    let path = format!("{PATH}/sub_0123456789abcdef0123?x=1");
    let (parts, body) = call(&sidecar, &client, &key, Method::GET, &path, None, None).await;
    assert_problem(
        &parts,
        &body,
        StatusCode::BAD_REQUEST,
        "request.invalid_query",
    );
}

#[tokio::test]
async fn lists_are_keyset_paginated_and_cursors_are_tenant_bound() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    let mut created = Vec::new();
    for n in 0..5 {
        let (_, body) = create(&sidecar, &client, &key, &format!("p{n}"), &good_body()).await;
        created.push(
            serde_json::from_slice::<Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    created.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("{PATH}?limit=2&cursor={cursor}"),
            None => format!("{PATH}?limit=2"),
        };
        let (parts, body) = call(&sidecar, &client, &key, Method::GET, &path, None, None).await;
        assert_eq!(parts.status, StatusCode::OK);
        let page = json_of(&parts, &body);
        assert_eq!(page["page"]["limit"], 2);
        for item in page["subscriptions"].as_array().unwrap() {
            assert!(item.get("secret").is_none());
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match page["page"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3);

    // A cursor of this organization presented by another: not found.
    let (_, body) = call(
        &sidecar,
        &client,
        &key,
        Method::GET,
        &format!("{PATH}?limit=2"),
        None,
        None,
    )
    .await;
    let cursor = serde_json::from_slice::<Value>(&body).unwrap()["page"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = manager(&sidecar, OTHER_ORG);
    let path = format!("{PATH}?cursor={cursor}");
    let (parts, body) = call(&sidecar, &client, &theirs, Method::GET, &path, None, None).await;
    assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
}

#[tokio::test]
async fn subscriptions_per_organization_are_capped() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "max_subscriptions_per_org = 2").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    for n in 0..2 {
        let (parts, _) = create(&sidecar, &client, &key, &format!("cap{n}"), &good_body()).await;
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    let (parts, body) = create(&sidecar, &client, &key, "cap2", &good_body()).await;
    let problem = assert_problem(&parts, &body, StatusCode::CONFLICT, "webhook.limit_reached");
    assert!(problem["detail"].as_str().unwrap().contains('2'));
    // Another organization has its own allowance.
    let theirs = manager(&sidecar, OTHER_ORG);
    let (parts, _) = create(&sidecar, &client, &theirs, "cap0", &good_body()).await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

#[tokio::test]
async fn subscriptions_and_their_secrets_survive_a_restart() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    let (_, body) = create(&sidecar, &client, &key, "keep", &good_body()).await;
    let created = serde_json::from_slice::<Value>(&body).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();

    // The secret is not stored in clear.
    let state_dir = sidecar.pki.dir.path().to_owned();
    let restarted = sidecar.restart().await;
    assert!(!tree_contains(&state_dir, secret.as_bytes()));

    let client = h1_client(restarted.ca());
    let (parts, body) = call(
        &restarted,
        &client,
        &key,
        Method::GET,
        &format!("{PATH}/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json_of(&parts, &body)["id"], id.as_str());
    let stored = restarted
        .state
        .subscriptions
        .get_any(&id.parse().unwrap())
        .unwrap()
        .unwrap();
    let signing: Vec<String> = stored
        .signing_secrets(unix_now() as i64)
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert_eq!(signing, [secret]);
    let matching = restarted
        .state
        .subscriptions
        .matching(TEST_ORG, "audit.event")
        .unwrap();
    assert_eq!(matching.len(), 1);
    assert!(restarted
        .state
        .subscriptions
        .matching(OTHER_ORG, "audit.event")
        .unwrap()
        .is_empty());
    // The replay of the create still works after the restart.
    let (parts, again) = create(&restarted, &client, &key, "keep", &good_body()).await;
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(
        serde_json::from_slice::<Value>(&again).unwrap()["id"],
        id.as_str()
    );
}

/// Whether any file under `dir` holds `needle`.
fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            tree_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[tokio::test]
async fn disabled_webhooks_have_no_endpoints() {
    let sidecar = Sidecar::start("http://127.0.0.1:9", Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let key = manager(&sidecar, TEST_ORG);
    let (parts, body) = call(&sidecar, &client, &key, Method::GET, PATH, None, None).await;
    assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
}

#[tokio::test]
async fn paths_and_scope_come_from_the_config() {
    let tokens = token_dir();
    let sidecar = start(
        &tokens,
        "subscriptions_path = \"/hooks/subs\"\nscope = \"hooks:admin\"",
    )
    .await;
    let client = h1_client(sidecar.ca());
    let default_scope = manager(&sidecar, TEST_ORG);
    let (parts, body) = call(
        &sidecar,
        &client,
        &default_scope,
        Method::GET,
        "/hooks/subs",
        None,
        None,
    )
    .await;
    assert_problem(&parts, &body, StatusCode::FORBIDDEN, "perm.denied");
    let key = mint(&sidecar.state, TEST_ORG, Env::Test, &["hooks:admin"]);
    let (parts, _) = call(
        &sidecar,
        &client,
        &key,
        Method::GET,
        "/hooks/subs",
        None,
        None,
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    let (parts, body) = call(&sidecar, &client, &key, Method::GET, PATH, None, None).await;
    assert_problem(&parts, &body, StatusCode::NOT_FOUND, "route.unknown");
}

// ---------------------------------------------------------------------------------------------
// `[webhooks]` validation

const VALID: &str = r#"[server]
listen = "127.0.0.1:8443"
cert = "cert.pem"
key = "key.pem"

[upstream]
url = "http://127.0.0.1:8080"

[[route]]
name = "notes.read"
method = "GET"
path = "/v1/notes/{id}"
scope = "notes:read"
"#;

/// A directory with readable cert and key files and a private token file.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token-0123456789").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open = dir.path().join("open-token");
    std::fs::write(&open, "secret-token-0123456789").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

fn parse_webhooks(lines: &str) -> (Result<Config, ConfigError>, tempfile::TempDir) {
    let dir = config_dir();
    let text = format!("{VALID}\n[webhooks]\n{lines}\n");
    let source = SourceText::new("policy.toml", text);
    (Config::parse(&source, dir.path()), dir)
}

/// Asserts that `lines` give exactly one issue, on `key`, whose message holds `needle`, on
/// the line of `[webhooks]` plus `offset`.
fn one_webhooks_issue(lines: &str, offset: usize, key: &str, needle: &str) {
    let (result, _dir) = parse_webhooks(lines);
    let error = result.expect_err(lines);
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "{lines}: {error}");
    let issue = &issues[0];
    assert_eq!(issue.key, key, "{error}");
    assert!(issue.message.contains(needle), "{lines}: {}", issue.message);
    let header_line = VALID.lines().count() + 2;
    assert_eq!(issue.location.line, header_line + offset, "{error}");
    let rendered = error.to_string();
    assert!(
        rendered.starts_with(&format!("policy.toml:{}:", header_line + offset)),
        "{rendered}"
    );
}

#[test]
fn webhooks_defaults() {
    let (result, _dir) = parse_webhooks("");
    let config = result.unwrap();
    let w = &config.webhooks;
    assert!(!w.enabled);
    assert_eq!(w.subscriptions_path, None, "no endpoints while disabled");
    assert_eq!(w.scope, "manage_webhooks");
    assert_eq!(w.retry_schedule.len(), 5);
    assert_eq!(w.retry_schedule[4], std::time::Duration::from_secs(16 * 60));
    assert_eq!(w.max_subscriptions_per_org, 100);
    assert_eq!(w.max_event_bytes, 256 * 1024);
    assert_eq!(w.delivery_timeout, std::time::Duration::from_secs(15));
    assert_eq!(w.retention, std::time::Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        w.dead_retention,
        std::time::Duration::from_secs(30 * 24 * 3600)
    );

    let (result, dir) = parse_webhooks(
        "enabled = true\ningest_token_file = \"token\"\nscheme = \"split\"\n\
         split_id_header = \"x-voti-event-id\"\nsplit_timestamp_header = \"x-voti-timestamp\"\n\
         split_signature_header = \"x-voti-signature\"\nevent_types = [\"a.b\", \"c_d-e.1\"]\n\
         retry_schedule = [\"1s\", \"24h\"]\nretry_jitter = 0\n",
    );
    let config = result.unwrap();
    let w = &config.webhooks;
    assert!(w.enabled);
    assert_eq!(
        w.ingest_token_file.as_deref(),
        Some(dir.path().join("token").as_path())
    );
    assert_eq!(w.subscriptions_path.as_deref(), Some("/v1/webhooks"));
    assert_eq!(w.deliveries_path.as_deref(), Some("/v1/webhook-deliveries"));
    assert_eq!(w.event_types.len(), 2);
    assert_eq!(w.retry_jitter, 0.0);
    match &w.scheme {
        portcullis::webhooks::sign::Scheme::Split {
            id_header,
            signature_header,
            ..
        } => {
            assert_eq!(id_header, "x-voti-event-id");
            assert_eq!(signature_header, "x-voti-signature");
        }
        other => panic!("{other:?}"),
    }
    let (result, _dir) =
        parse_webhooks("scheme = \"stripe\"\nstripe_header = \"X-Klinivo-Signature\"");
    match result.unwrap().webhooks.scheme {
        portcullis::webhooks::sign::Scheme::Stripe { header } => {
            assert_eq!(header, "x-klinivo-signature")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn webhooks_validation_errors() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "enabled = true",
            1,
            "webhooks.ingest_token_file",
            "is required",
        ),
        (
            "ingest_token_file = \"missing\"",
            1,
            "webhooks.ingest_token_file",
            "cannot read",
        ),
        (
            "ingest_token_file = \"open-token\"",
            1,
            "webhooks.ingest_token_file",
            "chmod 600",
        ),
        (
            "scheme = \"hmac\"",
            1,
            "webhooks.scheme",
            "must be \"standard\"",
        ),
        (
            "scheme = \"stripe\"\nstripe_header = \"bad header\"",
            2,
            "webhooks.stripe_header",
            "not a valid HTTP header name",
        ),
        (
            "scheme = \"stripe\"\nstripe_header = \"Content-Type\"",
            2,
            "webhooks.stripe_header",
            "set by the transport",
        ),
        (
            "stripe_header = \"X-Sig\"",
            1,
            "webhooks.stripe_header",
            "no effect with scheme \"standard\"",
        ),
        (
            "scheme = \"split\"\nsplit_id_header = \"x-a\"\nsplit_timestamp_header = \"x-a\"",
            3,
            "webhooks.split_signature_header",
            "different names",
        ),
        (
            "scheme = \"split\"\nsplit_signature_header = \"x y\"",
            2,
            "webhooks.split_signature_header",
            "not a valid HTTP header name",
        ),
        (
            "event_types = [\"audit.event\"]",
            1,
            "webhooks.event_types",
            "reserved",
        ),
        (
            "event_types = [\"Appointment.Created\"]",
            1,
            "webhooks.event_types",
            "a-z 0-9",
        ),
        (
            "event_types = [\"\"]",
            1,
            "webhooks.event_types",
            "not an event type",
        ),
        (
            "event_types = [\"a.b\", \"a.b\"]",
            1,
            "webhooks.event_types",
            "listed twice",
        ),
        (
            "retry_schedule = []",
            1,
            "webhooks.retry_schedule",
            "at least one",
        ),
        (
            "retry_schedule = [\"1m\", \"500ms\"]",
            1,
            "webhooks.retry_schedule",
            "between 1s and 24h",
        ),
        (
            "retry_schedule = [\"25h\"]",
            1,
            "webhooks.retry_schedule",
            "between 1s and 24h",
        ),
        (
            "retry_schedule = [\"soon\"]",
            1,
            "webhooks.retry_schedule",
            "not a duration",
        ),
        (
            "retry_jitter = 1.5",
            1,
            "webhooks.retry_jitter",
            "between 0.0 and 1.0",
        ),
        (
            "retry_jitter = -0.1",
            1,
            "webhooks.retry_jitter",
            "between 0.0 and 1.0",
        ),
        (
            "delivery_timeout = \"10m\"",
            1,
            "webhooks.delivery_timeout",
            "at most",
        ),
        (
            "delivery_timeout = \"0s\"",
            1,
            "webhooks.delivery_timeout",
            "longer than zero",
        ),
        (
            "rotation_grace = \"90d\"",
            1,
            "webhooks.rotation_grace",
            "at most",
        ),
        (
            "endpoint_concurrency = 0",
            1,
            "webhooks.endpoint_concurrency",
            "between 1 and",
        ),
        (
            "max_in_flight = 0",
            1,
            "webhooks.max_in_flight",
            "between 1 and",
        ),
        (
            "max_event_bytes = 10",
            1,
            "webhooks.max_event_bytes",
            "between 1024 and",
        ),
        (
            "max_subscriptions_per_org = 0",
            1,
            "webhooks.max_subscriptions_per_org",
            "between 1 and",
        ),
        (
            "dead_retention = \"10m\"",
            1,
            "webhooks.dead_retention",
            "between 1h and",
        ),
        (
            "retention = \"11years\"",
            1,
            "webhooks.retention",
            "between 1h and",
        ),
        (
            "ca_file = \"nope.pem\"",
            1,
            "webhooks.ca_file",
            "cannot read",
        ),
        (
            "scope = \"bad scope\"",
            1,
            "webhooks.scope",
            "1-64 characters",
        ),
        (
            "subscriptions_path = \"v1/hooks\"",
            1,
            "webhooks.subscriptions_path",
            "literal path",
        ),
        (
            "subscriptions_path = \"/v1/auth/whoami\"",
            1,
            "webhooks.subscriptions_path",
            "auth.whoami_path",
        ),
        (
            "deliveries_path = \"/healthz\"",
            1,
            "webhooks.deliveries_path",
            "auth.health_path",
        ),
        (
            "subscriptions_path = \"/v1/audit\"",
            1,
            "webhooks.subscriptions_path",
            "audit.query_path",
        ),
        (
            "deliveries_path = \"/v1/webhooks/deliveries\"",
            1,
            "webhooks.deliveries_path",
            "webhooks.subscriptions_path",
        ),
        ("unknown = 1", 1, "webhooks.unknown", "unknown field"),
    ];
    for (lines, offset, key, needle) in cases {
        one_webhooks_issue(lines, *offset, key, needle);
    }
}

#[test]
fn every_webhooks_mistake_is_reported_at_once() {
    let (result, _dir) = parse_webhooks(
        "enabled = true\nscheme = \"nope\"\nretry_jitter = 2.0\nevent_types = [\"audit.event\"]",
    );
    let error = result.unwrap_err();
    let keys: Vec<&str> = error.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "webhooks.ingest_token_file",
            "webhooks.scheme",
            "webhooks.retry_jitter",
            "webhooks.event_types"
        ]
    );
}

#[tokio::test]
async fn audit_records_name_the_endpoints_never_the_path() {
    let tokens = token_dir();
    let sidecar = start(&tokens, "").await;
    let client = h1_client(sidecar.ca());
    let key = mint(&sidecar.state, TEST_ORG, Env::Test, &[SCOPE, "audit:read"]);
    let (_, body) = create(&sidecar, &client, &key, "audited", &good_body()).await;
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &sidecar,
        &client,
        &key,
        Method::GET,
        &format!("{PATH}/{id}"),
        None,
        None,
    )
    .await;
    call(
        &sidecar,
        &client,
        &key,
        Method::GET,
        &format!("{PATH}/123-45-6789"),
        None,
        None,
    )
    .await;
    let expected = [
        ("@webhooks.create", 201),
        ("@webhooks.get", 200),
        ("@webhooks", 404),
    ];
    for (route, status) in expected {
        let path = format!("/v1/audit/events?route={route}");
        let mut found = None;
        for _ in 0..100 {
            let (parts, body) = call(&sidecar, &client, &key, Method::GET, &path, None, None).await;
            assert_eq!(
                parts.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&body)
            );
            let page: Value = serde_json::from_slice(&body).unwrap();
            if let Some(event) = page["events"].as_array().and_then(|events| events.first()) {
                found = Some(event.clone());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let event = found.unwrap_or_else(|| panic!("no audit record for {route}"));
        assert_eq!(event["route"], route);
        assert_eq!(event["status"], status);
        let text = event.to_string();
        assert!(
            !text.contains(&id) && !text.contains("123-45-6789"),
            "{text}"
        );
    }
}
