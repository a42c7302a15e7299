//! Authentication, scopes, allowlists, production gating and identity, through the real TLS
//! listener: every refusal asserted by status, `code` and headers.

mod common;

use common::*;
use http::{Method, StatusCode};
use portcullis::body::empty_body;
use portcullis::keys::{Env, KeyChanges, KeyId, RevokeReason};
use portcullis::orgs::BaaStatus;
use portcullis::state::unix_now;

async fn with_sidecar() -> (
    Backend,
    std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    Sidecar,
) {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    (backend, seen, sidecar)
}

/// `GET path` with an arbitrary `Authorization` value (or none).
async fn call(
    sidecar: &Sidecar,
    path: &str,
    authorization: Option<&str>,
) -> (http::response::Parts, serde_json::Value) {
    let mut request = http::Request::get(sidecar.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let (parts, body) = send(
        &h1_client(sidecar.ca()),
        request.body(empty_body()).unwrap(),
    )
    .await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (parts, json)
}

fn assert_problem(
    parts: &http::response::Parts,
    json: &serde_json::Value,
    status: StatusCode,
    code: &str,
) {
    assert_eq!(parts.status, status, "{json}");
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    assert_eq!(json["code"], code);
    assert_eq!(json["status"], status.as_u16());
    assert!(parts.headers.contains_key("x-request-id"));
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(parts.headers["www-authenticate"], "Bearer");
    }
}

fn key_id(key: &str) -> KeyId {
    portcullis::keys::parse_key(key).unwrap().id()
}

#[tokio::test]
async fn a_valid_key_passes_by_bearer_or_x_api_key() {
    let (backend, _, sidecar) = with_sidecar().await;
    let (parts, _) = call(
        &sidecar,
        "/v1/echo/x",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let request = http::Request::get(sidecar.url("/v1/echo/x"))
        .header("x-api-key", &sidecar.key)
        .body(empty_body())
        .unwrap();
    let (parts, _) = send(&h2_client(sidecar.ca()), request).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn missing_credentials_are_auth_missing() {
    let (backend, _, sidecar) = with_sidecar().await;
    let (parts, json) = call(&sidecar, "/v1/echo/x", None).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.missing");
    // Unknown routes are not revealed to unauthenticated callers either.
    let (parts, json) = call(&sidecar, "/v1/nothing", None).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.missing");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn malformed_unknown_wrong_secret_and_wrong_namespace_are_one_answer() {
    let (backend, _, sidecar) = with_sidecar().await;
    let key = &sidecar.key;
    let (prefix, secret) = key.rsplit_once('_').unwrap();
    let flipped = format!(
        "{prefix}_{}{}",
        &secret[..secret.len() - 1],
        if secret.ends_with('0') { '1' } else { '0' }
    );
    let unknown_id = key.replace(&key_id(key).to_string(), "00000000");
    let other_namespace = key.replacen("pcl_", "voti_", 1);
    let mut details = Vec::new();
    for presented in [
        "Bearer not-a-key".to_owned(),
        format!("Bearer {flipped}"),
        format!("Bearer {unknown_id}"),
        format!("Bearer {other_namespace}"),
        format!("Basic {key}"),
        "Bearer".to_owned(),
    ] {
        let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&presented)).await;
        assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.invalid");
        details.push((json["title"].clone(), json["detail"].clone()));
    }
    details.dedup();
    assert_eq!(details.len(), 1, "refusals differ: {details:?}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn revoked_and_expired_keys_are_told_apart_only_with_the_right_secret() {
    let (_backend, _, sidecar) = with_sidecar().await;
    let state = &sidecar.state;
    let revoked = mint(state, TEST_ORG, Env::Test, &[]);
    state
        .keys
        .revoke(key_id(&revoked), RevokeReason::Admin, unix_now())
        .unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {revoked}"))).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.revoked");
    let wrong = format!("{}0000000000", &revoked[..revoked.len() - 10]);
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {wrong}"))).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.invalid");

    let expiring = mint(state, TEST_ORG, Env::Test, &[]);
    let then = unix_now() - 100;
    let changes = KeyChanges {
        expires_at: Some(Some(then + 50)),
        ..KeyChanges::default()
    };
    state
        .keys
        .update(key_id(&expiring), &changes, then)
        .unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {expiring}"))).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.expired");
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let (_backend, _, sidecar) = with_sidecar().await;
    let bearer = format!("Bearer {}", sidecar.key);
    let (parts, _) = call(&sidecar, "/v1/echo/x", Some(&bearer)).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    sidecar
        .state
        .keys
        .revoke(key_id(&sidecar.key), RevokeReason::Admin, unix_now())
        .unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&bearer)).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.revoked");
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let (_backend, _, sidecar) = with_sidecar().await;
    let state = &sidecar.state;
    let old = mint(state, TEST_ORG, Env::Test, &[]);
    let rotated = state
        .keys
        .rotate(
            key_id(&old),
            std::time::Duration::from_secs(3600),
            unix_now(),
        )
        .unwrap();
    let new = rotated.key.expose_secret().to_owned();
    for key in [&old, &new] {
        let (parts, _) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {key}"))).await;
        assert_eq!(parts.status, StatusCode::CREATED);
    }
    // A second rotation without grace ends both earlier secrets at once.
    let newest = state
        .keys
        .rotate(key_id(&old), std::time::Duration::ZERO, unix_now())
        .unwrap();
    for key in [&old, &new] {
        let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {key}"))).await;
        assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.invalid");
    }
    let (parts, _) = call(
        &sidecar,
        "/v1/echo/x",
        Some(&format!("Bearer {}", newest.key.expose_secret())),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_missing_scope_is_perm_denied_naming_the_scope() {
    let (backend, _, sidecar) = with_sidecar().await;
    let reader = format!("Bearer {}", sidecar.key);
    let (parts, _) = call(&sidecar, "/v1/notes/n1", Some(&reader)).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let no_scopes = mint(&sidecar.state, TEST_ORG, Env::Test, &["patients:read"]);
    let (parts, json) = call(
        &sidecar,
        "/v1/notes/n1",
        Some(&format!("Bearer {no_scopes}")),
    )
    .await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "perm.denied");
    assert!(json["detail"].as_str().unwrap().contains("notes:read"));
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn live_keys_need_hipaa_mode_and_a_signed_baa() {
    let (backend, seen, sidecar) = with_sidecar().await;
    let state = &sidecar.state;
    let live = format!("Bearer {}", mint(state, TEST_ORG, Env::Live, &[]));

    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&live)).await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "env.gated");
    let detail = json["detail"].as_str().unwrap();
    assert!(
        detail.contains("HIPAA") && detail.contains("BAA"),
        "{detail}"
    );

    state.orgs.set_hipaa_mode(TEST_ORG, true).unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&live)).await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "env.gated");
    assert!(!json["detail"].as_str().unwrap().contains("HIPAA"));

    state
        .orgs
        .record_baa(
            TEST_ORG,
            BaaStatus::Pending,
            Some("DocuSign envelope 42"),
            "uid:0",
            unix_now(),
        )
        .unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&live)).await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "env.gated");

    state
        .orgs
        .record_baa(
            TEST_ORG,
            BaaStatus::Signed,
            Some("DocuSign envelope 42"),
            "uid:0",
            unix_now(),
        )
        .unwrap();
    let (parts, _) = call(&sidecar, "/v1/echo/x", Some(&live)).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(backend.hits(), 1);
    assert_eq!(seen.lock().unwrap()[0].headers["x-portcullis-env"], "live");

    state.orgs.set_hipaa_mode(TEST_ORG, false).unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&live)).await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "env.gated");
}

#[tokio::test]
async fn test_keys_go_to_the_sandbox_and_live_keys_to_production() {
    let (production, production_seen) = Backend::recording().await;
    let (sandbox, sandbox_seen) = Backend::recording().await;
    let settings = Settings {
        upstream: format!("sandbox_url = \"{}\"", sandbox.url()),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&production.url(), settings).await;
    let state = &sidecar.state;
    state.orgs.set_hipaa_mode(TEST_ORG, true).unwrap();
    state
        .orgs
        .record_baa(
            TEST_ORG,
            BaaStatus::Signed,
            Some("BAA-2026-001"),
            "uid:0",
            unix_now(),
        )
        .unwrap();
    let live = mint(state, TEST_ORG, Env::Live, &[]);

    let (parts, _) = call(
        &sidecar,
        "/v1/echo/t",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let (parts, _) = call(&sidecar, "/v1/echo/l", Some(&format!("Bearer {live}"))).await;
    assert_eq!(parts.status, StatusCode::CREATED);

    let sandbox_seen = sandbox_seen.lock().unwrap();
    let production_seen = production_seen.lock().unwrap();
    assert_eq!(sandbox_seen.len(), 1);
    assert_eq!(sandbox_seen[0].uri, "/v1/echo/t");
    assert_eq!(sandbox_seen[0].headers["x-portcullis-env"], "test");
    assert_eq!(production_seen.len(), 1);
    assert_eq!(production_seen[0].uri, "/v1/echo/l");
    assert_eq!(production_seen[0].headers["x-portcullis-env"], "live");
}

#[tokio::test]
async fn keys_outside_their_allowlist_are_ip_denied() {
    let (_backend, _, sidecar) = with_sidecar().await;
    let state = &sidecar.state;
    let fenced = mint(state, TEST_ORG, Env::Test, &[]);
    let changes = KeyChanges {
        allow_cidrs: Some(vec!["10.0.0.0/8".parse().unwrap()]),
        ..KeyChanges::default()
    };
    state
        .keys
        .update(key_id(&fenced), &changes, unix_now())
        .unwrap();
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {fenced}"))).await;
    assert_problem(&parts, &json, StatusCode::FORBIDDEN, "ip.denied");

    let changes = KeyChanges {
        allow_cidrs: Some(vec!["127.0.0.0/8".parse().unwrap()]),
        ..KeyChanges::default()
    };
    state
        .keys
        .update(key_id(&fenced), &changes, unix_now())
        .unwrap();
    let (parts, _) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {fenced}"))).await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let (backend, seen) = Backend::recording().await;
    let settings = Settings {
        server: "trusted_proxies = [\"127.0.0.1/32\"]".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let fenced = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let changes = KeyChanges {
        allow_cidrs: Some(vec!["203.0.113.0/24".parse().unwrap()]),
        ..KeyChanges::default()
    };
    sidecar
        .state
        .keys
        .update(key_id(&fenced), &changes, unix_now())
        .unwrap();
    let request = |xff: &str| {
        http::Request::get(sidecar.url("/v1/echo/x"))
            .header("authorization", format!("Bearer {fenced}"))
            .header("x-forwarded-for", xff.to_owned())
            .body(empty_body())
            .unwrap()
    };
    let client = h1_client(sidecar.ca());
    // The load balancer (a trusted peer) appended the real client after a spoofed entry.
    let (parts, _) = send(&client, request("198.51.100.1, 203.0.113.7")).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(
        seen.lock().unwrap()[0].headers["x-forwarded-for"],
        "203.0.113.7"
    );
    let (parts, body) = send(&client, request("203.0.113.7, 198.51.100.1")).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(problem(&parts, &body)["code"], "ip.denied");
}

#[tokio::test]
async fn a_key_in_the_url_is_refused_and_revoked() {
    let (backend, _, sidecar) = with_sidecar().await;
    let leaked = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let (parts, json) = call(
        &sidecar,
        &format!("/v1/echo/x?note=1&token={leaked}"),
        Some(&format!("Bearer {leaked}")),
    )
    .await;
    assert_problem(&parts, &json, StatusCode::BAD_REQUEST, "request.key_in_url");
    assert!(!json.to_string().contains(&leaked));
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {leaked}"))).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.revoked");
    let actions = sidecar.state.admin_log.list(10).unwrap();
    let revocation = serde_json::to_value(&actions[0]).unwrap();
    assert_eq!(revocation["action"], "key_revoked");
    assert_eq!(revocation["actor"], "portcullis");
    assert_eq!(revocation["target"], key_id(&leaked).to_string());

    // Named key parameters are refused whatever they hold.
    let (parts, json) = call(
        &sidecar,
        "/v1/echo/x?api_key=whatever",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_problem(&parts, &json, StatusCode::BAD_REQUEST, "request.key_in_url");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn repeated_failures_are_throttled_even_for_a_correct_key() {
    let (backend, _) = Backend::recording().await;
    let settings = Settings {
        auth: "max_failures_per_ip = 5\nmax_failures_per_key = 100".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    for _ in 0..5 {
        let (parts, json) = call(
            &sidecar,
            "/v1/echo/x",
            Some("Bearer pcl_test_0badc0de_0000000000000000000000000000000000000000"),
        )
        .await;
        assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.invalid");
    }
    let (parts, json) = call(&sidecar, "/v1/echo/x", Some("Bearer nope")).await;
    assert_problem(
        &parts,
        &json,
        StatusCode::TOO_MANY_REQUESTS,
        "auth.throttled",
    );
    let retry_after: u64 = parts.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // While throttled, not even a correct key is looked at.
    let (parts, json) = call(
        &sidecar,
        "/v1/echo/x",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_problem(
        &parts,
        &json,
        StatusCode::TOO_MANY_REQUESTS,
        "auth.throttled",
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn failures_against_one_key_id_are_throttled_across_addresses() {
    let (backend, _) = Backend::recording().await;
    let settings = Settings {
        auth: "max_failures_per_ip = 1000\nmax_failures_per_key = 3".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let id = key_id(&sidecar.key);
    let guess = format!("pcl_test_{id}_{}", "0".repeat(40));
    for _ in 0..3 {
        let (parts, json) = call(&sidecar, "/v1/echo/x", Some(&format!("Bearer {guess}"))).await;
        assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.invalid");
    }
    let (parts, json) = call(
        &sidecar,
        "/v1/echo/x",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_problem(
        &parts,
        &json,
        StatusCode::TOO_MANY_REQUESTS,
        "auth.throttled",
    );
}

#[tokio::test]
async fn whoami_and_healthz() {
    let (backend, _, sidecar) = with_sidecar().await;
    let (parts, json) = call(
        &sidecar,
        "/v1/auth/whoami",
        Some(&format!("Bearer {}", sidecar.key)),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["organization"]["id"], TEST_ORG);
    assert_eq!(json["organization"]["name"], "Test Org");
    assert_eq!(json["key"]["id"], key_id(&sidecar.key).to_string());
    assert_eq!(
        json["key"]["prefix"],
        format!("pcl_test_{}", key_id(&sidecar.key))
    );
    assert_eq!(json["env"], "test");
    assert_eq!(json["scopes"], serde_json::json!({"notes:read": true}));
    assert!(!json.to_string().contains(&sidecar.key));

    let (parts, json) = call(&sidecar, "/v1/auth/whoami", None).await;
    assert_problem(&parts, &json, StatusCode::UNAUTHORIZED, "auth.missing");

    let (parts, json) = call(&sidecar, "/healthz", None).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["status"], "ok");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn keys_orgs_and_baa_evidence_survive_a_restart() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    sidecar.state.orgs.set_hipaa_mode(TEST_ORG, true).unwrap();
    sidecar
        .state
        .orgs
        .record_baa(
            TEST_ORG,
            BaaStatus::Signed,
            Some("BAA-7"),
            "uid:0",
            unix_now(),
        )
        .unwrap();
    let live = mint(&sidecar.state, TEST_ORG, Env::Live, &["notes:read"]);
    let restarted = sidecar.restart().await;
    let org = restarted.state.orgs.get(TEST_ORG).unwrap();
    assert!(org.hipaa_mode);
    assert_eq!(org.baa.reference.as_deref(), Some("BAA-7"));
    let (parts, _) = call(&restarted, "/v1/notes/7", Some(&format!("Bearer {live}"))).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let (parts, _) = call(
        &restarted,
        "/v1/notes/7",
        Some(&format!("Bearer {}", restarted.key)),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

#[test]
fn no_malformed_authorization_header_panics_or_is_accepted() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_backend, _, sidecar) = with_sidecar().await;
        let auth = sidecar.state.policies.current().config.auth.clone();
        let valid = sidecar.key.clone();
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<u8> = (0x20u8..0x7f).chain([b'\t']).collect();
        for round in 0..20_000u32 {
            let value = match round % 4 {
                // Random visible text.
                0 => (0..next() % 90)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                    .collect::<String>(),
                // The valid key with one character changed, dropped or appended.
                1 => {
                    let mut bytes = valid.clone().into_bytes();
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize];
                    format!("Bearer {}", String::from_utf8_lossy(&bytes))
                }
                2 => format!(
                    "Bearer {}",
                    &valid[..(next() % valid.len() as u64) as usize]
                ),
                _ => format!(
                    "Bearer {valid}{}",
                    alphabet[(next() % alphabet.len() as u64) as usize] as char
                ),
            };
            if value == format!("Bearer {valid}")
                || value.eq_ignore_ascii_case(&format!("bearer {valid}"))
            {
                continue;
            }
            let Ok(header) = http::HeaderValue::from_str(&value) else {
                continue;
            };
            let trimmed_is_valid = header
                .to_str()
                .map(|v| v.trim().eq_ignore_ascii_case(&format!("bearer {valid}")))
                .unwrap_or(false);
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", header);
            // A fresh address each time so the failure throttle never masks the outcome.
            let ip = std::net::IpAddr::from((round.wrapping_mul(2654435761)).to_be_bytes());
            let outcome =
                portcullis::gate::authn::authenticate(&headers, &sidecar.state, &auth, ip);
            if trimmed_is_valid {
                continue;
            }
            let code = outcome.expect_err(&format!("accepted {value:?}")).code();
            assert!(
                matches!(
                    code.as_str(),
                    "auth.invalid" | "auth.missing" | "auth.throttled"
                ),
                "{value:?} gave {}",
                code.as_str()
            );
        }
    });
}

#[tokio::test]
async fn other_methods_reach_only_routes_that_name_them() {
    let (_backend, _, sidecar) = with_sidecar().await;
    let request = sidecar
        .req(Method::PATCH, "/v1/echo/x")
        .body(empty_body())
        .unwrap();
    let (parts, body) = send(&h1_client(sidecar.ca()), request).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(problem(&parts, &body)["code"], "route.unknown");
}
