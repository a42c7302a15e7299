//! The admin socket end to end: a real TLS sidecar and backend, the real admin server on a
//! unix socket, and the real `portcullis` binary driving it. Every key made through the CLI is
//! then used through the TLS listener, so these tests prove the admin API changes what the
//! sidecar does, not just what it stores.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use common::*;
use http::{Method, Response, StatusCode};
use portcullis::admin::{AdminClient, AdminError, AdminHandle, AdminServer, ClientError};
use portcullis::admin_log::AdminActionKind;
use portcullis::body::{empty_body, full_body};
use serde_json::Value;

/// A sidecar with its admin socket served, and the ids the tests need.
struct Admin {
    sidecar: Sidecar,
    _backend: Backend,
    socket: PathBuf,
    handle: Option<AdminHandle>,
    uid: u32,
}

impl Admin {
    /// Starts everything; the admin socket lives in a directory that does not exist yet.
    async fn start() -> Admin {
        let backend = Backend::start(handler(|_request| async {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(full_body(Bytes::from_static(b"{\"note\":\"fake\"}")))
                .unwrap()
        }))
        .await;
        let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
        let socket = sidecar.pki.dir.path().join("run/admin.sock");
        let server = AdminServer::bind(sidecar.state.clone(), &socket).expect("admin bind");
        assert_eq!(server.path(), socket);
        let uid = std::fs::metadata(sidecar.pki.dir.path()).unwrap().uid();
        Admin {
            sidecar,
            _backend: backend,
            socket,
            handle: Some(server.spawn()),
            uid,
        }
    }

    fn actor(&self) -> String {
        format!("uid:{}", self.uid)
    }

    /// Runs `portcullis <args> --admin-socket <socket>`.
    async fn cli(&self, args: &[&str]) -> Output {
        let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        full.push("--admin-socket".to_owned());
        full.push(self.socket.display().to_string());
        run(full).await
    }

    /// Runs a `--json` command that must succeed and returns its JSON.
    async fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let out = self.cli(&with_json).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// `GET path` through the TLS listener with `key`.
    async fn call(&self, path: &str, key: &str) -> (http::response::Parts, Value) {
        let request = http::Request::get(self.sidecar.url(path))
            .header("authorization", format!("Bearer {key}"))
            .body(empty_body())
            .unwrap();
        let (parts, body) = send(&h1_client(self.sidecar.ca()), request).await;
        (parts, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

async fn run(args: Vec<String>) -> Output {
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn assert_unauthorized(parts: &http::response::Parts, json: &Value, code: &str) {
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(parts.headers["www-authenticate"], "Bearer");
    assert_eq!(parts.headers["content-type"], "application/problem+json");
}

/// Mints a test key for `test-org` through the CLI and returns (key, id).
async fn create_key(admin: &Admin, scopes: &str) -> (String, String) {
    let created = admin
        .json(&[
            "keys", "create", "--org", TEST_ORG, "--env", "test", "--scopes", scopes,
        ])
        .await;
    (
        created["key"].as_str().expect("key field").to_owned(),
        created["id"].as_str().expect("id field").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_on_arrival_and_served_once_slots_free() {
    let mut admin = Admin::start().await;
    // Slots are taken in accept order, so these hold every one until their head times out.
    let mut idle = Vec::new();
    for _ in 0..portcullis::admin::server::MAX_CONNECTIONS {
        idle.push(
            tokio::net::UnixStream::connect(&admin.socket)
                .await
                .unwrap(),
        );
    }
    let mut extra = tokio::net::UnixStream::connect(&admin.socket)
        .await
        .unwrap();
    assert_closed_on_arrival(&mut extra).await;
    drop(idle);
    // With the slots free again, commands are served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = admin.cli(&["orgs", "list"]).await;
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slots were released: {}",
            stderr(&out)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin.stop().await;
}

#[tokio::test]
async fn socket_is_owner_only_in_a_private_directory_and_removed_on_stop() {
    let mut admin = Admin::start().await;
    assert!(std::fs::symlink_metadata(&admin.socket)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(mode(&admin.socket), 0o600);
    assert_eq!(mode(admin.socket.parent().unwrap()), 0o700);
    assert_eq!(std::fs::metadata(&admin.socket).unwrap().uid(), admin.uid);
    admin.stop().await;
    assert!(!admin.socket.exists(), "socket file left behind");
}

#[tokio::test]
async fn orgs_create_list_show_set_and_baa_round_trip() {
    let admin = Admin::start().await;

    let created = admin
        .json(&["orgs", "create", "acme", "--name", "Acme Health"])
        .await;
    assert_eq!(created["id"], "acme");
    assert_eq!(created["name"], "Acme Health");
    assert_eq!(created["hipaa_mode"], false);
    assert_eq!(created["baa"]["status"], "none");
    assert_eq!(created["production_ready"], false);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let listed = admin.json(&["orgs", "list"]).await;
    let ids: Vec<&str> = listed["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|org| org["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", TEST_ORG]);

    let set = admin
        .json(&[
            "orgs",
            "set",
            "acme",
            "--hipaa-mode",
            "on",
            "--name",
            "Acme Health Inc",
        ])
        .await;
    assert_eq!(set["hipaa_mode"], true);
    assert_eq!(set["name"], "Acme Health Inc");

    let baa = admin
        .json(&[
            "orgs",
            "baa",
            "acme",
            "--status",
            "signed",
            "--evidence",
            "DocuSign envelope 42-A",
        ])
        .await;
    assert_eq!(baa["baa"]["status"], "signed");
    assert_eq!(baa["baa"]["reference"], "DocuSign envelope 42-A");
    assert_eq!(baa["baa"]["recorded_by"], admin.actor());
    assert!(baa["baa"]["recorded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(baa["production_ready"], true);

    let shown = admin.json(&["orgs", "show", "acme"]).await;
    assert_eq!(shown, baa);
    let stored = admin.sidecar.state.orgs.get("acme").unwrap();
    assert_eq!(
        stored.baa.recorded_by.as_deref(),
        Some(admin.actor().as_str())
    );

    // The human form says the same.
    let human = admin.cli(&["orgs", "show", "acme"]).await;
    assert!(human.status.success());
    let text = stdout(&human);
    assert!(text.contains("hipaa mode   on"), "{text}");
    assert!(
        text.contains(&format!("recorded by  {}", admin.actor())),
        "{text}"
    );
    assert!(text.contains("live keys    allowed"), "{text}");

    // A duplicate is a conflict; a missing org is not found.
    let duplicate = admin
        .cli(&["orgs", "create", "acme", "--name", "Again"])
        .await;
    assert_eq!(duplicate.status.code(), Some(1));
    assert_eq!(
        stderr(&duplicate).trim(),
        "portcullis: Conflict: organization `acme` already exists"
    );
    let missing = admin.cli(&["orgs", "show", "ghost"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "portcullis: Not found: no organization `ghost`"
    );
    // Signed evidence without a reference is refused by the server's rules.
    let blank = admin
        .cli(&[
            "orgs",
            "baa",
            "acme",
            "--status",
            "signed",
            "--evidence",
            " ",
        ])
        .await;
    assert_eq!(blank.status.code(), Some(1));
    assert!(
        stderr(&blank).contains("Invalid request"),
        "{}",
        stderr(&blank)
    );
}

#[tokio::test]
async fn created_key_is_shown_once_works_and_never_appears_in_listings() {
    let admin = Admin::start().await;
    let created = admin
        .json(&[
            "keys",
            "create",
            "--org",
            TEST_ORG,
            "--env",
            "test",
            "--scopes",
            "notes:read,patients:read",
            "--label",
            "partner connector",
            "--expires-in",
            "90d",
            "--allow-cidr",
            "127.0.0.0/8",
            "--rate",
            "600/min",
            "--burst",
            "50",
        ])
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = key.rsplit('_').next().unwrap().to_owned();
    assert_eq!(secret.len(), 40);
    assert_eq!(created["prefix"], format!("pcl_test_{id}"));
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["org"], TEST_ORG);
    assert_eq!(created["env"], "test");
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["scopes"],
        serde_json::json!(["notes:read", "patients:read"])
    );
    assert_eq!(created["label"], "partner connector");
    assert_eq!(created["allow_cidrs"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(
        created["rate"],
        serde_json::json!({"per_minute": 600, "burst": 50})
    );
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(created.get("hash").is_none());

    // The key works through the TLS listener on a route its scope allows.
    let (parts, body) = admin.call("/v1/notes/n1", &key).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(body["note"], "fake");

    // Neither the listing nor the detail view, in either form, holds the secret.
    for args in [
        vec!["keys", "list"],
        vec!["keys", "list", "--json"],
        vec!["keys", "list", "--org", TEST_ORG, "--json"],
        vec!["keys", "show", &id],
        vec!["keys", "show", &id, "--json"],
        vec!["admin-log", "--json"],
    ] {
        let out = admin.cli(&args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains(&secret), "{args:?} printed the secret");
        assert!(!text.contains("hash"), "{args:?} printed a hash field");
    }
    let shown = admin.json(&["keys", "show", &id]).await;
    assert!(shown.get("key").is_none());
    assert_eq!(shown["id"], id.as_str());
    let listed = admin.json(&["keys", "list", "--org", TEST_ORG]).await;
    // The harness's own key plus this one.
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn human_create_prints_the_key_once_on_its_own_line_with_a_warning() {
    let admin = Admin::start().await;
    let out = admin
        .cli(&[
            "keys",
            "create",
            "--org",
            TEST_ORG,
            "--env",
            "test",
            "--scopes",
            "notes:read",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let key_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("pcl_test_"))
        .collect();
    assert_eq!(key_lines.len(), 1, "{text}");
    let key = key_lines[0];
    assert_eq!(text.matches(key).count(), 1, "the key is printed once");
    assert!(text.starts_with("Created API key "), "{text}");
    assert!(stderr(&out).contains("shown once"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(key));
    let (parts, _) = admin.call("/v1/notes/n1", key).await;
    assert_eq!(parts.status, StatusCode::OK);
}

#[tokio::test]
async fn revoke_takes_effect_on_the_very_next_request_and_happens_once() {
    let admin = Admin::start().await;
    let (key, id) = create_key(&admin, "notes:read").await;
    let (parts, _) = admin.call("/v1/notes/n1", &key).await;
    assert_eq!(parts.status, StatusCode::OK);

    let revoked = admin.json(&["keys", "revoke", &id]).await;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoke_reason"], "admin");
    assert!(revoked.get("key").is_none());

    let (parts, json) = admin.call("/v1/notes/n1", &key).await;
    assert_unauthorized(&parts, &json, "auth.revoked");

    let again = admin.cli(&["keys", "revoke", &id]).await;
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again).trim(),
        format!("portcullis: Conflict: API key {id} is already revoked")
    );
    // --json puts the problem document on stdout for scripts.
    let again = admin.cli(&["keys", "revoke", &id, "--json"]).await;
    assert_eq!(again.status.code(), Some(1));
    let problem: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(problem["code"], "admin.conflict");
    assert_eq!(problem["status"], 409);

    // A revoked key can no longer be rotated or changed.
    let rotate = admin.cli(&["keys", "rotate", &id]).await;
    assert_eq!(rotate.status.code(), Some(1));
    assert!(stderr(&rotate).contains("Conflict"), "{}", stderr(&rotate));
}

#[tokio::test]
async fn rotation_with_grace_keeps_both_secrets_working() {
    let admin = Admin::start().await;
    let (old, id) = create_key(&admin, "notes:read").await;
    let rotated = admin.json(&["keys", "rotate", &id, "--grace", "1h"]).await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id.as_str());
    assert!(rotated["previous_secret_valid_until"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    for key in [&old, &new] {
        let (parts, json) = admin.call("/v1/notes/n1", key).await;
        assert_eq!(parts.status, StatusCode::OK, "{json}");
    }
}

#[tokio::test]
async fn rotation_without_grace_ends_the_old_secret_at_once() {
    let admin = Admin::start().await;
    let (old, id) = create_key(&admin, "notes:read").await;
    let out = admin.cli(&["keys", "rotate", &id, "--grace", "0s"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("the old secret no longer works"), "{text}");
    let new = text
        .lines()
        .find(|line| line.starts_with("pcl_test_"))
        .expect("new key on its own line")
        .to_owned();
    let (parts, json) = admin.call("/v1/notes/n1", &old).await;
    assert_unauthorized(&parts, &json, "auth.invalid");
    let (parts, _) = admin.call("/v1/notes/n1", &new).await;
    assert_eq!(parts.status, StatusCode::OK);
}

#[tokio::test]
async fn updates_change_what_the_key_may_do_on_the_next_request() {
    let admin = Admin::start().await;
    let (key, id) = create_key(&admin, "notes:read").await;
    let updated = admin
        .json(&[
            "keys",
            "update",
            &id,
            "--scopes",
            "patients:read",
            "--label",
            "narrowed",
            "--rate",
            "120/min",
            "--burst",
            "10",
            "--expires-in",
            "30d",
        ])
        .await;
    assert_eq!(updated["scopes"], serde_json::json!(["patients:read"]));
    assert_eq!(updated["label"], "narrowed");
    assert_eq!(
        updated["rate"],
        serde_json::json!({"per_minute": 120, "burst": 10})
    );
    assert!(updated["expires_at"].is_string());
    let (parts, json) = admin.call("/v1/notes/n1", &key).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN, "{json}");
    assert_eq!(json["code"], "perm.denied");

    // Clearing, and a burst-only change that keeps the rate.
    let cleared = admin
        .json(&[
            "keys",
            "update",
            &id,
            "--clear-label",
            "--no-expiry",
            "--burst",
            "20",
        ])
        .await;
    assert_eq!(cleared["label"], Value::Null);
    assert_eq!(cleared["expires_at"], Value::Null);
    assert_eq!(
        cleared["rate"],
        serde_json::json!({"per_minute": 120, "burst": 20})
    );

    // An allowlist that excludes the loopback client locks the key out.
    admin
        .json(&[
            "keys",
            "update",
            &id,
            "--scopes",
            "notes:read",
            "--allow-cidr",
            "10.0.0.0/8",
        ])
        .await;
    let (parts, json) = admin.call("/v1/notes/n1", &key).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN, "{json}");
    assert_eq!(json["code"], "ip.denied");
    admin
        .json(&["keys", "update", &id, "--allow-any-address"])
        .await;
    let (parts, _) = admin.call("/v1/notes/n1", &key).await;
    assert_eq!(parts.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_and_malformed_ids_and_orgs_are_refused_clearly() {
    let admin = Admin::start().await;
    let mut unknown = String::from("00000000");
    while admin
        .sidecar
        .state
        .keys
        .get(unknown.parse().unwrap())
        .is_some()
    {
        unknown = String::from("00000001");
    }
    let out = admin.cli(&["keys", "show", &unknown]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("portcullis: Not found: no API key with id {unknown}")
    );
    for command in ["revoke", "rotate"] {
        let out = admin.cli(&["keys", command, &unknown]).await;
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(
            stderr(&out).contains("Not found"),
            "{command}: {}",
            stderr(&out)
        );
    }

    let out = admin.cli(&["keys", "show", "pcl_test_nothex"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("portcullis: Malformed request: a key id is 8 lowercase hex"));

    let out = admin
        .cli(&[
            "keys",
            "create",
            "--org",
            "nobody",
            "--env",
            "test",
            "--scopes",
            "notes:read",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no organization `nobody`"),
        "{}",
        stderr(&out)
    );

    let out = admin
        .cli(&[
            "keys",
            "create",
            "--org",
            TEST_ORG,
            "--env",
            "test",
            "--scopes",
            "bad scope",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("portcullis: Invalid request: a scope is"));

    // Usage mistakes are caught before any call, with clap's exit status.
    let out = admin
        .cli(&[
            "keys", "create", "--org", TEST_ORG, "--env", "prod", "--scopes", "a",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn live_keys_for_an_org_not_ready_for_production_come_with_a_warning() {
    let admin = Admin::start().await;
    let created = admin
        .json(&[
            "keys",
            "create",
            "--org",
            TEST_ORG,
            "--env",
            "live",
            "--scopes",
            "notes:read",
        ])
        .await;
    let warning = created["warnings"][0].as_str().unwrap();
    assert!(warning.contains("env.gated"), "{warning}");
    let (parts, json) = admin
        .call("/v1/notes/n1", created["key"].as_str().unwrap())
        .await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN, "{json}");
    assert_eq!(json["code"], "env.gated");

    // Switching the org on through the CLI opens production for the same key.
    admin
        .json(&["orgs", "set", TEST_ORG, "--hipaa-mode", "on"])
        .await;
    admin
        .json(&[
            "orgs",
            "baa",
            TEST_ORG,
            "--status",
            "signed",
            "--evidence",
            "contract 7",
        ])
        .await;
    let (parts, json) = admin
        .call("/v1/notes/n1", created["key"].as_str().unwrap())
        .await;
    assert_eq!(parts.status, StatusCode::OK, "{json}");
}

#[tokio::test]
async fn every_change_is_recorded_with_the_peer_uid() {
    let admin = Admin::start().await;
    admin
        .json(&["orgs", "create", "acme", "--name", "Acme"])
        .await;
    admin
        .json(&[
            "orgs",
            "set",
            "acme",
            "--hipaa-mode",
            "on",
            "--name",
            "Acme Health",
        ])
        .await;
    admin
        .json(&[
            "orgs",
            "baa",
            "acme",
            "--status",
            "pending",
            "--evidence",
            "ticket 9",
        ])
        .await;
    let (_, id) = create_key(&admin, "notes:read").await;
    admin.json(&["keys", "update", &id, "--label", "x"]).await;
    admin.json(&["keys", "rotate", &id, "--grace", "1h"]).await;
    admin.json(&["keys", "revoke", &id]).await;

    let expected = [
        (AdminActionKind::KeyRevoked, id.as_str(), TEST_ORG),
        (AdminActionKind::KeyRotated, id.as_str(), TEST_ORG),
        (AdminActionKind::KeyUpdated, id.as_str(), TEST_ORG),
        (AdminActionKind::KeyMinted, id.as_str(), TEST_ORG),
        (AdminActionKind::BaaRecorded, "acme", "acme"),
        (AdminActionKind::HipaaModeSet, "acme", "acme"),
        (AdminActionKind::OrgUpdated, "acme", "acme"),
        (AdminActionKind::OrgCreated, "acme", "acme"),
    ];
    let stored = admin.sidecar.state.admin_log.list(100).unwrap();
    assert_eq!(stored.len(), expected.len());
    for (entry, (action, target, org)) in stored.iter().zip(expected) {
        assert_eq!(entry.action, action);
        assert_eq!(entry.actor, admin.actor());
        assert_eq!(entry.target, target);
        assert_eq!(entry.org.as_deref(), Some(org));
    }

    let log = admin.json(&["admin-log", "--limit", "3"]).await;
    let actions = log["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0]["action"], "key_revoked");
    assert_eq!(actions[0]["actor"], admin.actor());
    assert_eq!(actions[0]["target"], id.as_str());
    assert!(actions[0]["seq"].as_u64().unwrap() > actions[1]["seq"].as_u64().unwrap());
    let human = admin.cli(&["admin-log"]).await;
    assert!(human.status.success());
    assert!(stdout(&human).starts_with("SEQ "), "{}", stdout(&human));
    assert!(stdout(&human).contains("key_minted"));
}

#[tokio::test]
async fn cli_without_a_running_server_says_so_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("admin.sock");
    let out = run(vec![
        "keys".into(),
        "list".into(),
        "--admin-socket".into(),
        missing.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "portcullis: cannot reach the admin socket {} (is portcullis running?): No such file or directory",
            missing.display()
        )
    );

    // A socket file with nobody behind it, as a crash leaves.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let out = run(vec![
        "orgs".into(),
        "list".into(),
        "--json".into(),
        "--admin-socket".into(),
        missing.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .trim()
            .ends_with("(is portcullis running?): Connection refused"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn socket_path_comes_from_the_config_when_not_given() {
    let backend = Backend::start(handler(|_request| async {
        Response::new(full_body(Bytes::from_static(b"{}")))
    }))
    .await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let socket = sidecar.state.policies.current().config.admin.socket.clone();
    assert_eq!(socket, sidecar.pki.dir.path().join("admin.sock"));
    let handle = AdminServer::bind(sidecar.state.clone(), &socket)
        .unwrap()
        .spawn();
    let policy = sidecar.pki.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(&sidecar.pki, &backend.url(), &Settings::default()),
    )
    .unwrap();

    let out = run(vec![
        "orgs".into(),
        "list".into(),
        "--config".into(),
        policy.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(TEST_ORG));

    // Neither a usable config nor --admin-socket: a usage error, exit 2.
    let out = run(vec![
        "orgs".into(),
        "list".into(),
        "--config".into(),
        sidecar
            .pki
            .dir
            .path()
            .join("missing.toml")
            .display()
            .to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pass --admin-socket PATH"),
        "{}",
        stderr(&out)
    );
    handle.stop().await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let backend = Backend::start(handler(|_request| async {
        Response::new(full_body(Bytes::from_static(b"{}")))
    }))
    .await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let socket = sidecar.pki.dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();

    let server = AdminServer::bind(sidecar.state.clone(), &socket).expect("stale socket replaced");
    assert_eq!(mode(&socket), 0o600);
    let handle = server.spawn();
    let reply = AdminClient::new(&socket).get("/v1/orgs").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    let second = AdminServer::bind(sidecar.state.clone(), &socket).unwrap_err();
    assert!(
        matches!(second, AdminError::AlreadyRunning { .. }),
        "{second}"
    );
    assert!(second.to_string().contains("already"), "{second}");
    // The refused second server left the first one serving.
    let reply = AdminClient::new(&socket).get("/v1/orgs").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    handle.stop().await;
    assert!(!socket.exists());
}

#[tokio::test]
async fn the_api_refuses_oversized_malformed_and_misdirected_requests() {
    let admin = Admin::start().await;
    let client = AdminClient::new(&admin.socket);
    let problem = |error: ClientError| match error {
        ClientError::Problem(problem) => problem,
        other => panic!("expected a problem, got {other}"),
    };

    let big = Bytes::from(vec![b' '; 64 * 1024 + 1]);
    let too_large = problem(
        client
            .send(Method::POST, "/v1/keys", big)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (too_large.status, too_large.code.as_str()),
        (413, "admin.too_large")
    );

    let bad_json = problem(
        client
            .send(Method::POST, "/v1/orgs", Bytes::from_static(b"{\"id\":"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (bad_json.status, bad_json.code.as_str()),
        (400, "admin.invalid")
    );

    let unknown_field = problem(
        client
            .post(
                "/v1/orgs",
                &serde_json::json!({"id": "x", "name": "X", "hipaa": true}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(unknown_field.status, 400);
    assert!(
        unknown_field.detail.contains("hipaa"),
        "{}",
        unknown_field.detail
    );

    let wrong_method = problem(
        client
            .send(Method::DELETE, "/v1/keys", Bytes::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (wrong_method.status, wrong_method.code.as_str()),
        (405, "admin.method_not_allowed")
    );

    let nowhere = problem(client.get("/v1/secrets").await.unwrap_err());
    assert_eq!(
        (nowhere.status, nowhere.code.as_str()),
        (404, "admin.not_found")
    );

    let bad_limit = problem(client.get("/v1/admin-actions?limit=0").await.unwrap_err());
    assert_eq!(bad_limit.status, 400);

    let long_grace = problem(
        client
            .post(
                "/v1/keys/00000000/rotate",
                &serde_json::json!({"grace_seconds": 31 * 86_400}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (long_grace.status, long_grace.code.as_str()),
        (422, "admin.invalid")
    );

    // Nothing above changed anything.
    assert!(admin.sidecar.state.admin_log.list(10).unwrap().is_empty());
}
