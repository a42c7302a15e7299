//! Tells the service manager what the process is doing: the `sd_notify` protocol.
//!
//! systemd starts a `Type=notify` service with `NOTIFY_SOCKET` naming a datagram socket and
//! waits for `READY=1` before it counts the service as started, so units ordered after
//! Portcullis only start once the TLS listener accepts. Around a reload the process says
//! `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) and then `READY=1`
//! again; `STOPPING=1` marks the start of the drain. `STATUS=` lines show in
//! `systemctl status`.
//!
//! With `WatchdogSec=` systemd sets `WATCHDOG_USEC` and kills a process that stops pinging.
//! The pings come from a task on the async runtime ([`Notifier::spawn_watchdog`]), so a
//! wedged runtime stops them and is restarted, which a dedicated thread would hide.
//!
//! The protocol is one datagram per message to an absolute path or a Linux abstract socket
//! (`@name`); std's `UnixDatagram` speaks it without any systemd library. Without
//! `NOTIFY_SOCKET` (a shell, a test, another supervisor) every call does nothing. Sending is
//! non-blocking and best effort: a full or missing socket never stalls a request.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest `STATUS=` text sent; systemd shows one line, and a datagram must stay small.
const MAX_STATUS_CHARS: usize = 200;

/// Why `NOTIFY_SOCKET` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The variable names neither an absolute path nor an abstract socket.
    #[error("NOTIFY_SOCKET must be an absolute path or start with '@'")]
    Unsupported,
    /// The address is too long or otherwise refused by the OS.
    #[error("NOTIFY_SOCKET is not a usable socket address: {0}")]
    Address(#[source] io::Error),
    /// No datagram socket could be created.
    #[error("cannot create a socket for NOTIFY_SOCKET: {0}")]
    Socket(#[source] io::Error),
}

/// Sends state changes to the service manager; a no-op when none asked for them.
///
/// Cheap to clone: every clone shares one socket.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Whether a failed send was already logged at warn (later ones go to debug).
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, or a silent one when it is unset. An unusable
    /// value is logged and ignored: the service manager then times the start out, which
    /// names the problem more clearly than refusing to start would.
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Self::disabled(),
            Some(value) => Self::for_socket(&value).unwrap_or_else(|error| {
                tracing::warn!(%error, "service manager notifications are off");
                Self::disabled()
            }),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for the socket written as `NOTIFY_SOCKET` would name it.
    pub fn for_socket(value: &OsStr) -> Result<Self, NotifyError> {
        let addr = parse_address(value)?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        socket.set_nonblocking(true).map_err(NotifyError::Socket)?;
        Ok(Self {
            target: Some(Arc::new(Target {
                socket,
                addr,
                warned: AtomicBool::new(false),
            })),
        })
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up or a reload is complete: the listeners accept and the stores are open.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", status_text(status)));
    }

    /// A reload starts; `READY=1` follows when it is over, whatever its result.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading the policy\n",
            monotonic_usec()
        ));
    }

    /// The drain starts: no new connections, in-flight requests finishing.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", status_text(status)));
    }

    /// What the process is doing, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", status_text(status)));
    }

    /// The watchdog keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    /// Pings the watchdog every `interval` from a task on the current runtime until the task
    /// is aborted. `None` when no watchdog is configured (see [`watchdog_interval`]) or
    /// notifications are off.
    pub fn spawn_watchdog(
        &self,
        interval: Option<Duration>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let interval = interval?;
        if !self.is_enabled() {
            return None;
        }
        let notifier = self.clone();
        tracing::info!(
            interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            "pinging the service manager's watchdog"
        );
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        }))
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        match target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            Ok(_) => {}
            Err(error) => {
                // A vanished or full socket must not be fatal, nor fill the log.
                if target.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%error, "cannot notify the service manager");
                } else {
                    tracing::warn!(%error, "cannot notify the service manager");
                }
            }
        }
    }
}

/// The address `NOTIFY_SOCKET` names: `/absolute/path` or `@abstract-name`.
fn parse_address(value: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(Path::new(value)).map_err(NotifyError::Address),
        Some(b'@') if bytes.len() > 1 => abstract_address(&bytes[1..]),
        _ => Err(NotifyError::Unsupported),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, NotifyError> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(NotifyError::Address)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> Result<SocketAddr, NotifyError> {
    Err(NotifyError::Unsupported)
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set and
/// `WATCHDOG_PID` is unset or this process (sd_watchdog_enabled's rule).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] on given values, for tests.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|usec| *usec > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock `MONOTONIC_USEC` is read against.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// One line of printable text: the protocol is newline-separated `KEY=value` pairs.
fn status_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_STATUS_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let len = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (_dir, path, socket) = bound();
        let notifier = Notifier::for_socket(path.as_os_str()).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready("serving\non 127.0.0.1:8443");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving on 127.0.0.1:8443\n");
        notifier.reloading();
        let reloading = recv(&socket);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        let usec: u64 = reloading.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
        notifier.stopping("draining");
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining\n");
        notifier.watchdog();
        assert_eq!(recv(&socket), "WATCHDOG=1\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("portcullis-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::for_socket(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.status("hello");
        assert_eq!(recv(&socket), "STATUS=hello\n");
    }

    #[test]
    fn unusable_addresses_are_refused() {
        for value in ["", "relative/path", "@", "vsock:2:1234"] {
            assert!(
                matches!(
                    Notifier::for_socket(OsStr::new(value)),
                    Err(NotifyError::Unsupported)
                ),
                "{value:?}"
            );
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(matches!(
            Notifier::for_socket(OsStr::new(&long)),
            Err(NotifyError::Address(_))
        ));
    }

    #[test]
    fn a_missing_socket_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::for_socket(dir.path().join("gone.sock").as_os_str()).unwrap();
        notifier.ready("x");
        notifier.ready("y");
        Notifier::disabled().ready("nothing happens");
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_this_process() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval_from(Some("1000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_text("a\nb\rc"), "a b c");
        assert_eq!(status_text(&"x".repeat(500)).len(), MAX_STATUS_CHARS);
    }
}
