//! The settings a running process cannot take from a reloaded file.
//!
//! They are read once, when the listener, the stores and the admin socket are opened: a new
//! value would be silently ignored until the next restart, which is worse than refusing the
//! reload and saying so. Everything else (routes, scopes, limits, quotas, upstream, TLS
//! material, timeouts, idempotency and audit query settings) is read from the policy a request
//! started with, so a swapped policy covers it.

use std::fmt::Debug;

use crate::config::Config;

/// One setting that differs between the running policy and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedChange {
    /// The dotted key, as in the policy file.
    pub key: &'static str,
    /// The value in force.
    pub running: String,
    /// The value the file asks for.
    pub wanted: String,
}

impl std::fmt::Display for FixedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cannot change while portcullis runs (running {}, file says {}); restart to apply it",
            self.key, self.running, self.wanted
        )
    }
}

/// Every start-only setting whose value differs, in file order.
pub fn changes(running: &Config, wanted: &Config) -> Vec<FixedChange> {
    let mut out = Vec::new();
    let mut compare = |key: &'static str, a: &dyn Debug, b: &dyn Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            out.push(FixedChange {
                key,
                running: a,
                wanted: b,
            });
        }
    };
    let (r, w) = (&running.server, &wanted.server);
    // The socket is bound once; the connection slots are one semaphore sized at start.
    compare("server.listen", &r.listen, &w.listen);
    compare(
        "server.max_connections",
        &r.max_connections,
        &w.max_connections,
    );

    compare(
        "storage.data_dir",
        &running.storage.data_dir,
        &wanted.storage.data_dir,
    );

    // Keys are loaded into memory under the namespace and pepper; the failure budgets are
    // sized when the throttle is built.
    let (r, w) = (&running.auth, &wanted.auth);
    compare("auth.namespace", &r.namespace, &w.namespace);
    compare("auth.pepper_file", &r.pepper_file, &w.pepper_file);
    compare(
        "auth.max_failures_per_ip",
        &r.max_failures_per_ip,
        &w.max_failures_per_ip,
    );
    compare(
        "auth.max_failures_per_key",
        &r.max_failures_per_key,
        &w.max_failures_per_key,
    );
    compare("auth.failure_window", &r.failure_window, &w.failure_window);

    compare("admin.socket", &running.admin.socket, &wanted.admin.socket);

    compare(
        "idempotency.key_file",
        &running.idempotency.key_file,
        &wanted.idempotency.key_file,
    );

    // The audit writer owns its directory, key, batching and rotation from start to end.
    let (r, w) = (&running.audit, &wanted.audit);
    compare("audit.enabled", &r.enabled, &w.enabled);
    compare("audit.dir", &r.dir, &w.dir);
    compare("audit.hmac_key_file", &r.hmac_key_file, &w.hmac_key_file);
    compare(
        "audit.commit_interval",
        &r.commit_interval,
        &w.commit_interval,
    );
    compare("audit.queue_capacity", &r.queue_capacity, &w.queue_capacity);
    compare("audit.rotate_bytes", &r.rotate_bytes, &w.rotate_bytes);
    compare("audit.rotate_daily", &r.rotate_daily, &w.rotate_daily);

    // The internal listener is bound once; the log subscriber is installed once.
    compare(
        "internal.listen",
        &running.internal.as_ref().map(|internal| internal.listen),
        &wanted.internal.as_ref().map(|internal| internal.listen),
    );
    compare(
        "logging.format",
        &running.logging.format,
        &wanted.logging.format,
    );
    compare(
        "logging.level",
        &running.logging.level,
        &wanted.logging.level,
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::SourceText;

    fn config(dir: &Path, listen: &str, extra_server: &str, rest: &str) -> Config {
        let cert = dir.join("c.pem");
        let key = dir.join("k.pem");
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let text = format!(
            "[server]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra_server}\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n[storage]\ndata_dir = \"{}\"\n{rest}\n\
             [[route]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/x\"\nany_key = true\n",
            cert.display(),
            key.display(),
            dir.display()
        );
        Config::parse(&SourceText::new("t.toml", text), dir).unwrap()
    }

    #[test]
    fn live_settings_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let running = config(dir.path(), "127.0.0.1:8443", "", "");
        let wanted = config(
            dir.path(),
            "127.0.0.1:8443",
            "drain_timeout = \"5s\"\nmax_body_bytes = 10\ncert_check_interval = \"1s\"",
            "[ratelimit]\nrequests_per_minute = 5\nburst = 1\n[audit]\nquery_path = \"\"\n\
             client_ip = \"full\"\n[auth]\ncredential_headers = [\"x-api-key\"]",
        );
        assert_eq!(changes(&running, &wanted), Vec::new());
    }

    #[test]
    fn start_only_settings_are_each_named() {
        let dir = tempfile::tempdir().unwrap();
        let running = config(dir.path(), "127.0.0.1:8443", "", "");
        let wanted = config(
            dir.path(),
            "127.0.0.1:9443",
            "max_connections = 5",
            "[auth]\nnamespace = \"voti\"\nmax_failures_per_ip = 3\n[admin]\nsocket = \"/tmp/x.sock\"\n\
             [audit]\nrotate_daily = false\n[idempotency]\nkey_file = \"/tmp/k\"\n\
             [internal]\nlisten = \"127.0.0.1:9999\"\n[logging]\nformat = \"json\"",
        );
        let keys: Vec<_> = changes(&running, &wanted).iter().map(|c| c.key).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.max_connections",
                "auth.namespace",
                "auth.max_failures_per_ip",
                "admin.socket",
                "idempotency.key_file",
                "audit.rotate_daily",
                "internal.listen",
                "logging.format",
            ]
        );
        let text = changes(&running, &wanted)[0].to_string();
        assert!(
            text.contains("127.0.0.1:8443") && text.contains("127.0.0.1:9443"),
            "{text}"
        );
        assert!(text.contains("restart"), "{text}");
    }
}
