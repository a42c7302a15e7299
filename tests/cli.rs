//! The real `portcullis` binary: check-config, serve with signals, start-up errors, the demo.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::{Response, StatusCode};
use portcullis::body::full_body;

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn write_policy(pki: &TestPki, upstream: &str, server_extra: &str) -> std::path::PathBuf {
    let settings = Settings {
        server: server_extra.to_owned(),
        ..Settings::default()
    };
    let path = pki.dir.path().join("policy.toml");
    std::fs::write(&path, policy_text(pki, upstream, &settings)).unwrap();
    path
}

#[test]
fn check_config_prints_ok_for_a_valid_policy() {
    let pki = test_pki();
    let policy = write_policy(&pki, "http://127.0.0.1:9", "");
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn check_config_lists_every_mistake_and_exits_2() {
    let pki = test_pki();
    let policy = write_policy(&pki, "gopher://x", "max_headers = 0\nbogus = 1");
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A parse error stops at the first problem; fix it and the semantic errors all show.
    assert!(
        stderr.contains("policy.toml:6:1: server.bogus: unknown field"),
        "{stderr}"
    );

    let policy = write_policy(&pki, "gopher://x", "max_headers = 0");
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":5:15: server.max_headers: must be between 1 and 1000"),
        "{stderr}"
    );
    assert!(
        stderr.contains(": upstream.url: must be an absolute http:// or https:// URL"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_loads_the_tls_material() {
    let pki = test_pki();
    std::fs::write(
        &pki.paths.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let policy = write_policy(&pki, "http://127.0.0.1:9", "");
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot load private key"));
}

#[test]
fn start_up_errors_are_one_line_with_exit_2() {
    let pki = test_pki();
    // Unreadable file.
    let out = portcullis()
        .args(["serve", "--config", "/nonexistent/policy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read config file /nonexistent/policy.toml"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let policy = write_policy(&pki, "http://127.0.0.1:9", "");
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&policy, text).unwrap();
    let out = portcullis()
        .args(["serve", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Missing certificate.
    std::fs::remove_file(&pki.paths.cert).unwrap();
    let out = portcullis()
        .args(["serve", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.cert: cannot read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let backend = Backend::start(handler(|_request| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Response::new(full_body("slow but complete"))
    }))
    .await;
    let pki = test_pki();
    let policy = write_policy(&pki, &backend.url(), "");
    // Provision an organization and a key in the data directory, as an operator would.
    let key = {
        let config = portcullis::config::Config::load(&policy).unwrap();
        let state =
            portcullis::state::State::open(portcullis::policy::Policy::new(config).unwrap())
                .unwrap();
        state
            .orgs
            .create("cli-org", "CLI Org", portcullis::state::unix_now())
            .unwrap();
        mint(&state, "cli-org", portcullis::keys::Env::Test, &[])
    };
    let mut child = portcullis()
        .args(["serve", "--config"])
        .arg(&policy)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child_lines(child.stderr.take().unwrap());
    let port = listen_port(&wait_for_line(&log, "portcullis listening"));

    let client = h1_client(&pki.paths.ca);
    let request = http::Request::get(format!("https://localhost:{port}/v1/echo/slow"))
        .header("authorization", format!("Bearer {key}"))
        .body(portcullis::body::empty_body())
        .unwrap();
    let request = tokio::spawn(async move { send(&client, request).await });
    // SIGTERM only once the request is in flight at the backend: a connection that has not
    // sent its request yet is idle, and a drain rightly closes idle connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send_signal(&child, "TERM");
    let (parts, body) = request.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(&body[..], b"slow but complete");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
    wait_for_line(&log, "portcullis stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_a_fake_clinical_note_through_the_proxy() {
    let data = tempfile::tempdir().unwrap();
    let mut child = portcullis()
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child_lines(child.stdout.take().unwrap());
    let line = wait_for_line(&out, "sidecar");
    let port: u16 = line
        .split("https://localhost:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let key = wait_for_line(&out, "sandbox key")
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("pcl_test_"), "{key}");
    let curl = wait_for_line(&out, "note_local_id=local_note_demo_123");
    assert!(curl.contains("curl --cacert"), "{curl}");
    assert!(curl.contains(&key), "{curl}");

    let ca = data.path().join("certs/ca.pem");
    assert!(Path::new(&ca).is_file());
    let client = h2_client(&ca);
    let authed = |path: &str| {
        http::Request::get(format!("https://localhost:{port}{path}"))
            .header("authorization", format!("Bearer {key}"))
            .body(portcullis::body::empty_body())
            .unwrap()
    };
    let (parts, body) = send(
        &client,
        authed("/v1/clinical-notes?note_local_id=local_note_demo_123"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    let note: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        note["clinical_note"]["sections"]["subjective"],
        "Demo patient reports improved sleep."
    );

    let (parts, body) = send(&client, authed("/v1/auth/whoami")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let whoami: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(whoami["organization"]["id"], "demo-clinic");
    assert_eq!(whoami["scopes"]["patients:write"], false);

    let (parts, body) = get(
        &client,
        &format!("https://localhost:{port}/v1/clinical-notes"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&parts, &body)["code"], "auth.missing");

    let (parts, body) = send(&client, authed("/v1/not-a-route")).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(problem(&parts, &body)["code"], "route.unknown");

    send_signal(&child, "INT");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
}
