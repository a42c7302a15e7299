//! The service-manager protocol, observed the way systemd would: the real binary started with
//! `NOTIFY_SOCKET` pointing at a datagram socket the test bound.

mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Every datagram the socket receives, as text, in order.
fn messages(socket: UnixDatagram) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(len) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a datagram carrying the line `line`, returning it and everything before it.
fn wait_for(rx: &mpsc::Receiver<String>, line: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(message) if message.lines().any(|l| l == line) => return (message, before),
            Ok(message) => before.push(message),
            Err(_) => break,
        }
    }
    panic!("no notification with {line:?}; got {before:?}");
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

/// A `portcullis serve` child, killed when dropped.
struct Proc(KillOnDrop);

impl Proc {
    fn signal(&self, name: &str) {
        send_signal(&self.0, name);
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the process did not exit");
    }
}

fn write_policy(pki: &TestPki) -> PathBuf {
    let policy = pki.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(pki, "http://127.0.0.1:9", &Settings::default()),
    )
    .unwrap();
    policy
}

fn serve(policy: &Path, env: &[(&str, String)]) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--config"])
        .arg(policy)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    Proc(KillOnDrop(command.spawn().unwrap()))
}

/// The port named in a `STATUS=Serving on 127.0.0.1:PORT…` line.
fn port_of(message: &str) -> u16 {
    let status = field(message, "STATUS").expect("STATUS with READY");
    let addr = status
        .strip_prefix("Serving on ")
        .and_then(|rest| rest.split([';', ' ']).next())
        .expect("the address in STATUS");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn ready_watchdog_reloading_and_stopping_reach_the_notify_socket() {
    let pki = test_pki();
    let policy = write_policy(&pki);
    let socket_path = pki.dir.path().join("notify.sock");
    let rx = messages(UnixDatagram::bind(&socket_path).unwrap());
    let mut child = serve(
        &policy,
        &[
            ("NOTIFY_SOCKET", socket_path.display().to_string()),
            ("WATCHDOG_USEC", "300000".to_owned()),
        ],
    );

    // READY=1 comes only once the TLS port accepts: connecting right away succeeds.
    let (ready, before) = wait_for(&rx, "READY=1");
    assert!(
        before.iter().all(|m| !m.contains("READY=1")),
        "READY=1 once: {before:?}"
    );
    assert!(
        before.iter().any(|m| m.starts_with("STATUS=Starting")),
        "a start-up STATUS first: {before:?}"
    );
    let port = port_of(&ready);
    TcpStream::connect(("127.0.0.1", port)).expect("the port accepts once READY=1 is sent");
    assert!(
        pki.dir.path().join("admin.sock").exists(),
        "the admin socket is bound too"
    );

    // Watchdog pings at half of WATCHDOG_USEC (150 ms): several within a second.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        if let Ok(message) = rx.recv_timeout(Duration::from_millis(50)) {
            if message == "WATCHDOG=1\n" {
                pings += 1;
            }
        }
    }
    assert!((3..=12).contains(&pings), "{pings} pings in a second");

    // SIGHUP: RELOADING=1 with a monotonic timestamp, then READY=1 again.
    child.signal("HUP");
    let (reloading, _) = wait_for(&rx, "RELOADING=1");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let (ready, _) = wait_for(&rx, "READY=1");
    assert!(
        field(&ready, "STATUS")
            .unwrap()
            .contains("reload 1 applied"),
        "{ready}"
    );

    // A refused reload still ends with READY=1, and the status says it was refused.
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replacen("127.0.0.1:0", "127.0.0.1:1", 1),
    )
    .unwrap();
    child.signal("HUP");
    wait_for(&rx, "RELOADING=1");
    let (ready, _) = wait_for(&rx, "READY=1");
    let status = field(&ready, "STATUS").unwrap();
    assert!(
        status.contains("last reload refused: server.listen"),
        "{status}"
    );

    // SIGTERM: STOPPING=1 as the drain starts, then a clean exit.
    child.signal("TERM");
    let (stopping, _) = wait_for(&rx, "STOPPING=1");
    assert!(field(&stopping, "STATUS").is_some());
    assert!(child.wait_exit().success());
}

#[cfg(target_os = "linux")]
#[test]
fn an_abstract_notify_socket_works_and_a_foreign_watchdog_pid_is_ignored() {
    use std::os::linux::net::SocketAddrExt;
    let pki = test_pki();
    let policy = write_policy(&pki);
    let name = format!("portcullis-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = messages(UnixDatagram::bind_addr(&addr).unwrap());
    let mut child = serve(
        &policy,
        &[
            ("NOTIFY_SOCKET", format!("@{name}")),
            ("WATCHDOG_USEC", "100000".to_owned()),
            // The watchdog belongs to some other process (e.g. a wrapper): not ours to ping.
            ("WATCHDOG_PID", "1".to_owned()),
        ],
    );
    let (ready, _) = wait_for(&rx, "READY=1");
    TcpStream::connect(("127.0.0.1", port_of(&ready))).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        if let Ok(message) = rx.recv_timeout(Duration::from_millis(50)) {
            assert_ne!(
                message, "WATCHDOG=1\n",
                "pinged a watchdog that is not ours"
            );
        }
    }
    child.signal("TERM");
    wait_for(&rx, "STOPPING=1");
    assert!(child.wait_exit().success());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_serving_works() {
    let pki = test_pki();
    let policy = write_policy(&pki);
    let mut child = serve(&policy, &[("WATCHDOG_USEC", "100000".to_owned())]);
    let socket = pki.dir.path().join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP did not end the process"
    );
    child.signal("TERM");
    assert!(child.wait_exit().success());
}
