//! `portcullis init` and the shipped policy profiles, through the real binary: the starter
//! passes `check-config` and serves a first TLS handshake, nothing is ever overwritten, file
//! modes are as promised, and every profile passes `check-config` next to init's files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::{child_lines, get, h1_client, listen_port, wait_for_line, KillOnDrop};
use http::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn run(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = portcullis();
    command.args(args);
    for path in paths {
        command.arg(path);
    }
    command.output().unwrap()
}

fn init(dir: &Path, hostnames: &[&str]) -> Output {
    let mut command = portcullis();
    command.arg("init").arg("--dir").arg(dir);
    for name in hostnames {
        command.args(["--hostname", name]);
    }
    command.output().unwrap()
}

fn check_config(policy: &Path) -> Output {
    run(&["check-config", "--config"], &[policy])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

const WRITTEN: [&str; 9] = [
    "audit-hmac.key",
    "events.token",
    "idempotency.key",
    "pepper",
    "portcullis.toml",
    "tls",
    "tls/ca.pem",
    "tls/server.key",
    "tls/server.pem",
];

#[test]
fn init_writes_a_starter_that_check_config_accepts_with_private_modes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/portcullis");
    let out = init(&dir, &["sidecar.example.org"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Next steps:"), "{stdout}");
    assert!(
        stdout.contains("sidecar.example.org, localhost, 127.0.0.1, ::1"),
        "{stdout}"
    );
    for name in WRITTEN.iter().filter(|n| **n != "tls") {
        let line = format!("wrote {}", dir.join(name).display());
        assert!(stdout.contains(&line), "missing {line:?} in {stdout}");
    }

    assert_eq!(tree(&dir), WRITTEN);
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(mode(&dir.join("tls")), 0o750);
    assert_eq!(mode(&dir.join("portcullis.toml")), 0o640);
    assert_eq!(mode(&dir.join("tls/server.pem")), 0o644);
    assert_eq!(mode(&dir.join("tls/ca.pem")), 0o644);
    for secret in [
        "pepper",
        "idempotency.key",
        "audit-hmac.key",
        "events.token",
        "tls/server.key",
    ] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }
    for secret in ["pepper", "idempotency.key", "audit-hmac.key"] {
        assert_eq!(
            fs::metadata(dir.join(secret)).unwrap().len(),
            32,
            "{secret}"
        );
    }
    let token = fs::read_to_string(dir.join("events.token")).unwrap();
    assert_eq!(token.trim_end().len(), 64, "{token:?}");
    assert!(token.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(policy_names_token(&dir));
    // Two secrets drawn from the CSPRNG never agree.
    assert_ne!(
        fs::read(dir.join("pepper")).unwrap(),
        fs::read(dir.join("idempotency.key")).unwrap()
    );

    let policy = fs::read_to_string(dir.join("portcullis.toml")).unwrap();
    assert!(policy.contains("data_dir = \"/var/lib/portcullis\""));
    assert!(policy.contains("socket = \"/run/portcullis/admin.sock\""));

    let out = check_config(&dir.join("portcullis.toml"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
}

#[test]
fn init_keeps_the_mode_of_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let out = init(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(dir.path()), 0o700);
    assert!(!text(&out.stdout).contains("created "));
    assert_eq!(tree(dir.path()), WRITTEN);
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("tls")).unwrap();
    fs::write(dir.path().join("pepper"), b"an operator's pepper").unwrap();
    fs::write(dir.path().join("tls/server.pem"), b"a real certificate").unwrap();
    // A dangling symbolic link is in the way too: writing through it would create its target.
    std::os::unix::fs::symlink(
        dir.path().join("elsewhere.toml"),
        dir.path().join("portcullis.toml"),
    )
    .unwrap();

    let out = init(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    for name in ["pepper", "tls/server.pem", "portcullis.toml"] {
        let listed = format!("  {}", dir.path().join(name).display());
        assert!(stderr.contains(&listed), "{name} not listed: {stderr}");
    }
    assert!(!stderr.contains("idempotency.key"), "{stderr}");

    assert_eq!(
        tree(dir.path()),
        ["pepper", "portcullis.toml", "tls", "tls/server.pem"]
    );
    assert_eq!(
        fs::read(dir.path().join("pepper")).unwrap(),
        b"an operator's pepper"
    );
    assert!(!dir.path().join("elsewhere.toml").exists());

    // A second run over a complete init refuses every file.
    let fresh = tempfile::tempdir().unwrap();
    assert!(init(fresh.path(), &[]).status.success());
    let before = fs::read(fresh.path().join("pepper")).unwrap();
    let out = init(fresh.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr).matches("\n  ").count(), 8);
    assert_eq!(fs::read(fresh.path().join("pepper")).unwrap(), before);
}

#[test]
fn init_refuses_a_bad_hostname_or_a_file_as_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf");
    let out = init(&dir, &["not a host"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--hostname \"not a host\" is neither a DNS name nor an IP"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.exists(),
        "nothing may be created for a refused request"
    );

    let file = root.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let out = init(&file, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("exists and is not a directory"),
        "{}",
        text(&out.stderr)
    );
}

/// A handshake naming `host`, trusting only init's CA.
async fn handshake(port: u16, ca: &Path, host: &str) -> Result<(), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(portcullis::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    connector.connect(name, tcp).await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_starter_serves_a_first_tls_handshake_with_init_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    let out = init(&conf, &["sidecar.example.org"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The starter as written, with the unit's state and socket paths moved into the test
    // directory and an ephemeral port; the secrets and certificate are init's own.
    let state = dir.path().join("state");
    let starter = fs::read_to_string(conf.join("portcullis.toml")).unwrap();
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "{from}");
        text.replace(from, &to)
    };
    let policy = replace(
        starter,
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:0\"".to_owned(),
    );
    let policy = replace(
        policy,
        "listen = \"127.0.0.1:9464\"",
        "listen = \"127.0.0.1:0\"".to_owned(),
    );
    let policy = replace(
        policy,
        "data_dir = \"/var/lib/portcullis\"",
        format!("data_dir = \"{}\"", state.display()),
    );
    let policy = replace(
        policy,
        "socket = \"/run/portcullis/admin.sock\"",
        format!("socket = \"{}\"", state.join("admin.sock").display()),
    );
    let first_run = conf.join("first-run.toml");
    fs::write(&first_run, policy).unwrap();

    let pepper = fs::read(conf.join("pepper")).unwrap();
    let mut child = portcullis()
        .args(["serve", "--config"])
        .arg(&first_run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child_lines(child.stderr.take().unwrap());
    let child = KillOnDrop(child);
    let port = listen_port(&wait_for_line(&log, "portcullis listening"));

    let ca = conf.join("tls/ca.pem");
    for host in ["localhost", "127.0.0.1"] {
        let client = h1_client(&ca);
        let (parts, _) = get(&client, &format!("https://{host}:{port}/healthz")).await;
        assert_eq!(parts.status, StatusCode::OK, "{host}");
    }
    handshake(port, &ca, "sidecar.example.org").await.unwrap();
    let refused = handshake(port, &ca, "other.example.org").await;
    assert!(refused.is_err(), "a name outside the certificate must fail");

    // The server used init's secrets rather than creating its own next to the state.
    assert_eq!(fs::read(conf.join("pepper")).unwrap(), pepper);
    assert!(!state.join("pepper").exists());
    assert!(!state.join("idempotency.key").exists());
    drop(child);
}

const PROFILES: [&str; 4] = ["voti", "klinivo", "velora", "voka"];

fn profile_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/examples/{name}.toml"))
}

#[test]
fn every_profile_passes_check_config_next_to_init_files() {
    for name in PROFILES {
        let dir = tempfile::tempdir().unwrap();
        assert!(init(dir.path(), &[]).status.success());
        let text_of_profile = fs::read_to_string(profile_path(name)).unwrap();
        if text_of_profile.contains("ca_file = \"tls/backend-ca.pem\"") {
            // The hospital's internal CA, which the operator copies in; any CA bundle will do.
            fs::copy(
                dir.path().join("tls/ca.pem"),
                dir.path().join("tls/backend-ca.pem"),
            )
            .unwrap();
        }
        // Installed as the profile says: in place of the starter policy.
        let policy = dir.path().join("portcullis.toml");
        fs::remove_file(&policy).unwrap();
        fs::write(&policy, &text_of_profile).unwrap();
        let out = check_config(&policy);
        assert!(
            out.status.success(),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "ok", "{name}");
    }
}

#[test]
fn a_profile_without_its_files_fails_check_config_naming_them() {
    for name in PROFILES {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join(format!("{name}.toml"));
        fs::copy(profile_path(name), &policy).unwrap();
        let out = check_config(&policy);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = text(&out.stderr);
        for (key, file) in [
            ("server.cert", "tls/server.pem"),
            ("server.key", "tls/server.key"),
        ] {
            let missing = format!("{key}: cannot read {}", dir.path().join(file).display());
            assert!(stderr.contains(&missing), "{name}: {missing:?} in {stderr}");
        }
    }
}

/// The starter policy names the ingest token file `init` wrote, and keeps webhooks off.
fn policy_names_token(dir: &Path) -> bool {
    let policy = fs::read_to_string(dir.join("portcullis.toml")).unwrap();
    policy.contains("ingest_token_file = \"events.token\"") && policy.contains("enabled = false")
}
