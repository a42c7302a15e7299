//! The systemd unit and its companions: the sandbox exposure score, `systemd-analyze verify`,
//! the paths the unit and `portcullis init` must agree on, and the sysusers/tmpfiles snippets
//! applied to a scratch root so the service user can read exactly what it needs, and the
//! binary traced with strace through a first start, a proxied request, an admin command, a
//! reload and a drain, to show it never needs a system call or socket family the unit forbids.
//!
//! Tests that need systemd's tools print a skip note when they are absent; `.ci/run` installs
//! them and is the hard gate for the score.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{child_lines, get, h1_client, handler, listen_port, send, wait_for_line, Backend};
use http::{Response, StatusCode};
use portcullis::body::full_body;
use portcullis::init;

/// The highest exposure the unit may score.
const MAX_EXPOSURE: f64 = 1.5;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unit_path() -> PathBuf {
    repo("systemd/portcullis.service")
}

fn unit_text() -> String {
    fs::read_to_string(unit_path()).unwrap()
}

/// Values of `key=` in the `[Service]` section, in order (repeated keys accumulate).
fn service_values(key: &str) -> Vec<String> {
    let text = unit_text();
    let mut in_service = false;
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.trim() == key {
                values.push(value.trim().to_owned());
            }
        }
    }
    values
}

fn one(key: &str) -> String {
    let values = service_values(key);
    assert_eq!(values.len(), 1, "{key}: {values:?}");
    values[0].clone()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn skip(tool: &str) -> bool {
    if on_path(tool) {
        return false;
    }
    eprintln!("skipped: {tool} is not on PATH (.ci/run installs it and enforces the check)");
    true
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The figure from `Overall exposure level for portcullis.service: 1.4 OK`.
fn parse_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn exposure_parser_reads_the_overall_line() {
    let report = "✓ UMask= ...\n\n→ Overall exposure level for portcullis.service: 1.4 OK 🙂\n";
    assert_eq!(parse_exposure(report), Some(1.4));
    assert_eq!(parse_exposure("no summary"), None);
}

#[test]
fn sandbox_exposure_is_at_most_1_5() {
    if skip("systemd-analyze") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(unit_path())
        .output()
        .unwrap();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let exposure = parse_exposure(&report).unwrap_or_else(|| panic!("no figure in {report}"));
    eprintln!("systemd-analyze security --offline=yes: exposure {exposure}");
    assert!(exposure <= MAX_EXPOSURE, "exposure {exposure}:\n{report}");

    // The CI gate: --threshold counts in tenths, so 15 is an exposure of 1.5, and one tenth
    // below the figure must fail (proving the flag is really enforced).
    let gate = |threshold: u32| {
        Command::new("systemd-analyze")
            .args([
                "security",
                "--offline=yes",
                &format!("--threshold={threshold}"),
            ])
            .arg(unit_path())
            .output()
            .unwrap()
            .status
            .success()
    };
    let tenths = (exposure * 10.0).round() as u32;
    assert!(gate(15));
    assert!(gate(tenths));
    assert!(!gate(tenths - 1), "--threshold={} must fail", tenths - 1);
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if skip("systemd-analyze") {
        return;
    }
    // verify insists that ExecStart= names an executable: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("portcullis.service");
    let text_of_unit = unit_text().replace("/usr/bin/portcullis", env!("CARGO_BIN_EXE_portcullis"));
    fs::write(&unit, text_of_unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Unknown or misspelled settings are only warned about: any output is a failure here.
    assert_eq!(text(&out).trim(), "", "systemd-analyze verify complained");
}

#[test]
fn the_unit_declares_what_the_runtime_and_operators_rely_on() {
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("WatchdogSec"), "30s");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("NoNewPrivileges"), "yes");
    // Webhooks must reach partner hosts, the admin socket and journald are unix sockets.
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    for absent in [
        "PrivateNetwork",
        "IPAddressDeny",
        "DynamicUser",
        "PrivateUsers",
    ] {
        assert!(
            service_values(absent).is_empty(),
            "{absent} must not be set"
        );
    }
    // A filtered call fails with EPERM rather than killing the process.
    assert_eq!(one("SystemCallErrorNumber"), "EPERM");
}

#[test]
fn the_unit_and_init_agree_on_every_path() {
    let config = Path::new("/etc/portcullis").join(init::CONFIG_FILE);
    let serve = format!("/usr/bin/portcullis serve --config {}", config.display());
    assert_eq!(one("ExecStart"), serve);
    assert_eq!(
        one("ExecStartPre"),
        format!(
            "/usr/bin/portcullis check-config --config {}",
            config.display()
        )
    );
    assert_eq!(one("ConfigurationDirectory"), "portcullis");
    assert_eq!(
        Path::new("/var/lib").join(one("StateDirectory")),
        Path::new(init::UNIT_DATA_DIR)
    );
    assert_eq!(
        Path::new("/run").join(one("RuntimeDirectory")),
        Path::new(init::UNIT_ADMIN_SOCKET).parent().unwrap()
    );
    // `portcullis init` without --dir writes where the unit reads.
    let help = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["init", "--help"])
        .output()
        .unwrap();
    assert!(
        text(&help).contains("[default: /etc/portcullis]"),
        "{}",
        text(&help)
    );

    let user = one("User");
    assert_eq!(one("Group"), user);
    let sysusers = fs::read_to_string(repo("systemd/portcullis.sysusers")).unwrap();
    assert!(
        sysusers
            .lines()
            .any(|line| line.split_whitespace().take(2).eq(["u", user.as_str()])),
        "{sysusers}"
    );
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|meta| meta.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid sysusers gave `name` in `root`'s passwd file.
fn ids_in(root: &Path, name: &str) -> (u32, u32) {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|line| line.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} not in {passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn check_config_as(uid: u32, gid: u32, policy: &Path) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config"])
        .arg(policy)
        .output()
        .unwrap()
}

#[test]
fn sysusers_and_tmpfiles_give_the_service_user_its_files_and_no_one_else() {
    if skip("systemd-sysusers") || skip("systemd-tmpfiles") || skip("setpriv") {
        return;
    }
    if !is_root() {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(root.join("etc")).unwrap();

    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo("systemd/portcullis.sysusers"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (uid, gid) = ids_in(root, "portcullis");

    let conf = root.join("etc/portcullis");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("init")
        .arg("--dir")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(repo("systemd/portcullis.tmpfiles"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let owner = |name: &str| {
        let meta = fs::symlink_metadata(conf.join(name)).unwrap();
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777)
    };
    assert_eq!(owner(""), (0, gid, 0o750));
    assert_eq!(owner("tls"), (0, gid, 0o750));
    assert_eq!(owner(init::CONFIG_FILE), (0, gid, 0o640));
    assert_eq!(owner("tls/server.pem"), (0, gid, 0o644));
    for secret in [
        init::PEPPER_FILE,
        init::IDEMPOTENCY_KEY_FILE,
        init::AUDIT_HMAC_KEY_FILE,
        init::INGEST_TOKEN_FILE,
        "tls/server.key",
    ] {
        assert_eq!(owner(secret), (uid, gid, 0o600), "{secret}");
    }

    let policy = conf.join(init::CONFIG_FILE);
    let out = check_config_as(uid, gid, &policy);
    assert!(out.status.success(), "as the service user: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // Anyone else cannot even read the policy.
    let out = check_config_as(65534, 65534, &policy);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
}

/// The system calls of `@group` (or a single call), nested groups expanded.
fn expand(item: &str, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_owned());
        return;
    }
    let listing = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", text(&listing));
    for line in String::from_utf8_lossy(&listing.stdout).lines().skip(1) {
        let entry = line.trim();
        if !entry.is_empty() && !entry.starts_with('#') {
            expand(entry, out);
        }
    }
}

/// What the unit's `SystemCallFilter=` lines let through: the allow lists minus the `~` lists.
fn unit_syscall_allowlist() -> BTreeSet<String> {
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for value in service_values("SystemCallFilter") {
        let (target, list) = match value.strip_prefix('~') {
            Some(rest) => (&mut denied, rest.to_owned()),
            None => (&mut allowed, value),
        };
        for item in list.split_whitespace() {
            expand(item, target);
        }
    }
    assert!(!allowed.is_empty(), "the unit must use an allow list");
    allowed.difference(&denied).cloned().collect()
}

/// System call names in an `strace -f` log.
fn traced_syscalls(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|line| {
            let call = line.split_once(char::is_whitespace)?.1.trim_start();
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && call[name.len()..].starts_with('(')).then_some(name)
        })
        .collect()
}

#[test]
fn strace_lines_are_read_by_name() {
    let log = "12 openat(AT_FDCWD, \"/x\", O_RDONLY) = 3\n\
               13 futex(0x1, FUTEX_WAIT <unfinished ...>\n\
               13 <... futex resumed>) = 0\n\
               12 --- SIGHUP {si_signo=SIGHUP} ---\n\
               12 +++ exited with 0 +++\n";
    let names: Vec<_> = traced_syscalls(log).into_iter().collect();
    assert_eq!(names, ["futex", "openat"]);
}

/// strace and the server it runs; both are killed if the test ends early.
struct Traced {
    strace: std::process::Child,
    server: Option<String>,
}

impl Traced {
    /// Waits for strace to exit (it exits with the server's status) and disarms the guard.
    async fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.strace.try_wait().unwrap() {
                self.server = None;
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("serve did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = &self.server {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

fn strace_works() -> bool {
    if skip("strace") || skip("systemd-analyze") {
        return false;
    }
    let probe = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .output()
        .unwrap();
    if !probe.status.success() {
        eprintln!("skipped: strace cannot trace here: {}", text(&probe));
    }
    probe.status.success()
}

/// The seccomp allow list is only safe if the binary never needs a call outside it (a
/// filtered call fails with EPERM). Run a first start, a proxied request, an admin command, a
/// reload and a drain under strace and compare.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_stays_inside_the_unit_syscall_filter() {
    if !strace_works() {
        return;
    }
    let backend = Backend::start(handler(|_request| async {
        Response::new(full_body("from the backend"))
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("init")
        .arg("--dir")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let state = dir.path().join("state");
    let policy = fs::read_to_string(conf.join(init::CONFIG_FILE))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9464", "127.0.0.1:0")
        .replace("http://127.0.0.1:8080", &backend.url())
        .replace(init::UNIT_DATA_DIR, &state.display().to_string())
        .replace(
            init::UNIT_ADMIN_SOCKET,
            &state.join("admin.sock").display().to_string(),
        );
    let policy_path = conf.join("traced.toml");
    fs::write(&policy_path, policy).unwrap();

    let trace = dir.path().join("trace");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let check = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(dir.path().join("trace.check"))
        .args([bin, "check-config", "--config"])
        .arg(&policy_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));

    let child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args([bin, "serve", "--config"])
        .arg(&policy_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut traced = Traced {
        strace: child,
        server: None,
    };
    let log = child_lines(traced.strace.stderr.take().unwrap());
    let listening = wait_for_line(&log, "portcullis listening");
    let port = listen_port(&listening);
    let strace_pid = traced.strace.id();
    let server_pid = fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("strace's child")
        .to_owned();
    traced.server = Some(server_pid.clone());

    let admin = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .arg("--admin-socket")
            .arg(state.join("admin.sock"))
            .output()
            .unwrap()
    };
    let out = admin(&["orgs", "create", "traced", "--name", "Traced"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = admin(&[
        "keys",
        "create",
        "--org",
        "traced",
        "--env",
        "test",
        "--scopes",
        "example:read",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = minted["key"].as_str().unwrap().to_owned();

    let client = h1_client(&conf.join("tls/ca.pem"));
    let (parts, _) = get(&client, &format!("https://localhost:{port}/healthz")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let request = http::Request::get(format!("https://localhost:{port}/v1/example/1"))
        .header("authorization", format!("Bearer {key}"))
        .body(portcullis::body::empty_body())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(&body[..], b"from the backend");

    for signal in ["HUP", "TERM"] {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&server_pid)
            .status()
            .unwrap();
        assert!(sent.success());
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = traced.wait().await;
    assert!(status.success(), "serve under strace: {status}");

    let logs = [
        fs::read_to_string(&trace).unwrap(),
        fs::read_to_string(dir.path().join("trace.check")).unwrap(),
    ];
    let allowed = unit_syscall_allowlist();
    let used: BTreeSet<String> = logs.iter().flat_map(|log| traced_syscalls(log)).collect();
    // Every socket opened is of a family RestrictAddressFamilies= lets through.
    let restricted = one("RestrictAddressFamilies");
    let families: BTreeSet<&str> = restricted.split_whitespace().collect();
    let opened: BTreeSet<&str> = logs
        .iter()
        .flat_map(|log| log.split("socket(").skip(1))
        .map(|call| call.split([',', ')']).next().unwrap_or_default())
        .collect();
    assert!(
        opened.contains("AF_INET"),
        "no TCP socket traced: {opened:?}"
    );
    assert!(
        opened.contains("AF_UNIX"),
        "no unix socket traced: {opened:?}"
    );
    assert!(
        opened.is_subset(&families),
        "sockets {opened:?} outside RestrictAddressFamilies={restricted}"
    );
    // A sanity floor: a broken trace must not pass as "nothing outside the filter".
    assert!(used.len() > 20, "too few calls traced: {used:?}");
    let outside: Vec<_> = used.difference(&allowed).collect();
    eprintln!("{} distinct system calls traced", used.len());
    assert!(
        outside.is_empty(),
        "system calls outside SystemCallFilter=: {outside:?}"
    );
}
