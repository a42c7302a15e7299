//! Every policy validation error: reported with file, line, column and key, all at once.

use std::path::Path;

use portcullis::config::{Config, ConfigError, ScopeRequirement, SourceText};

/// A directory holding readable cert and key files, so only the mistake under test is reported.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    dir
}

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

fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
    Config::parse(&SourceText::new("policy.toml", text), base)
}

/// Asserts exactly one issue, at `line`, under `key`, whose message contains `needle`.
fn one_issue(text: &str, line: usize, key: &str, needle: &str) {
    let dir = dir();
    let error = parse(text, dir.path()).expect_err("the policy should be refused");
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "expected one issue, got:\n{error}");
    let issue = &issues[0];
    assert_eq!(issue.file, Path::new("policy.toml"));
    assert_eq!(issue.location.line, line, "line of: {issue}");
    assert_eq!(issue.key, key, "key of: {issue}");
    assert!(issue.message.contains(needle), "message of: {issue}");
    let rendered = error.to_string();
    assert!(
        rendered.starts_with(&format!("policy.toml:{line}:")),
        "{rendered}"
    );
}

fn replace(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from}");
    VALID.replacen(from, to, 1)
}

#[test]
fn the_valid_policy_parses_with_defaults() {
    let dir = dir();
    let config = parse(VALID, dir.path()).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(config.server.cert, dir.path().join("cert.pem"));
    assert_eq!(config.server.max_headers, 100);
    assert_eq!(config.server.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(config.server.http2.max_concurrent_streams, 128);
    assert_eq!(config.upstream.response_timeout.as_secs(), 30);
    assert_eq!(config.storage.data_dir, Path::new("/var/lib/portcullis"));
    assert_eq!(
        config.routes[0].scope,
        ScopeRequirement::Scope("notes:read".into())
    );
}

#[test]
fn syntax_error() {
    one_issue(
        &replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1:8443"),
        2,
        "server.listen",
        "",
    );
}

#[test]
fn unknown_key() {
    one_issue(
        &replace("key = \"key.pem\"", "key = \"key.pem\"\nlisten_port = 1"),
        5,
        "server.listen_port",
        "unknown field",
    );
}

#[test]
fn unknown_section() {
    one_issue(
        &format!("{VALID}\n[bogus]\nx = 1\n"),
        15,
        "bogus",
        "unknown field",
    );
}

#[test]
fn wrong_type() {
    one_issue(
        &replace("[upstream]", "max_headers = \"many\"\n[upstream]"),
        6,
        "server.max_headers",
        "invalid type",
    );
}

#[test]
fn missing_sections_and_keys() {
    let dir = dir();
    let error = parse("[upstream]\nurl = \"http://x\"\n", dir.path()).unwrap_err();
    assert_eq!(error.issues()[0].key, "server");
    one_issue(
        &replace("cert = \"cert.pem\"\n", ""),
        1,
        "server.cert",
        "is required",
    );
    one_issue(
        &replace("url = \"http://127.0.0.1:8080\"\n", ""),
        6,
        "upstream.url",
        "is required",
    );
}

#[test]
fn bad_listen_address() {
    one_issue(
        &replace("127.0.0.1:8443", "localhost"),
        2,
        "server.listen",
        "IP address with a port",
    );
}

#[test]
fn missing_certificate_file() {
    one_issue(
        &replace("cert.pem", "nope.pem"),
        3,
        "server.cert",
        "cannot read",
    );
}

#[test]
fn bad_durations() {
    one_issue(
        &replace("[upstream]", "drain_timeout = \"soon\"\n[upstream]"),
        6,
        "server.drain_timeout",
        "not a duration",
    );
    one_issue(
        &replace("[upstream]", "drain_timeout = \"0s\"\n[upstream]"),
        6,
        "server.drain_timeout",
        "longer than zero",
    );
}

#[test]
fn numbers_out_of_range() {
    one_issue(
        &replace("[upstream]", "max_headers = 0\n[upstream]"),
        6,
        "server.max_headers",
        "between 1 and",
    );
    one_issue(
        &replace("[upstream]", "max_body_bytes = -5\n[upstream]"),
        6,
        "server.max_body_bytes",
        "between",
    );
    one_issue(
        &replace(
            "[upstream]",
            "[server.http2]\nmax_concurrent_streams = 0\n[upstream]",
        ),
        7,
        "server.http2.max_concurrent_streams",
        "between",
    );
}

#[test]
fn bad_upstream_urls() {
    one_issue(
        &replace("http://127.0.0.1:8080", "ftp://x"),
        7,
        "upstream.url",
        "http:// or https://",
    );
    one_issue(
        &replace("http://127.0.0.1:8080", "/relative"),
        7,
        "upstream.url",
        "http:// or https://",
    );
    one_issue(
        &replace("http://127.0.0.1:8080", "http://user:pw@x"),
        7,
        "upstream.url",
        "credentials",
    );
    one_issue(
        &replace("http://127.0.0.1:8080", "http://x/?a=1"),
        7,
        "upstream.url",
        "query",
    );
    one_issue(
        &replace(
            "url = \"http://127.0.0.1:8080\"",
            "url = \"http://x\"\nsandbox_url = \"nope nope\"",
        ),
        8,
        "upstream.sandbox_url",
        "not a URL",
    );
    one_issue(
        &replace("[[route]]", "ca_file = \"missing.pem\"\n\n[[route]]"),
        9,
        "upstream.ca_file",
        "cannot read",
    );
}

#[test]
fn bad_route_fields() {
    one_issue(
        &replace("name = \"notes.read\"", "name = \"notes read\""),
        10,
        "route[0].name",
        "characters",
    );
    one_issue(
        &replace("method = \"GET\"", "method = \"get\""),
        11,
        "route[0].method",
        "upper-case",
    );
    one_issue(
        &replace("method = \"GET\"", "method = \"CONNECT\""),
        11,
        "route[0].method",
        "never proxied",
    );
    one_issue(
        &replace("/v1/notes/{id}", "v1/notes"),
        12,
        "route[0].path",
        "/",
    );
    one_issue(
        &replace("/v1/notes/{id}", "/v1/{*rest}/x"),
        12,
        "route[0].path",
        "last",
    );
    one_issue(
        &replace("scope = \"notes:read\"", "scope = \"a, b\""),
        13,
        "route[0].scope",
        "characters of",
    );
    one_issue(
        &replace("scope = \"notes:read\"", "scope = \"x\"\nany_key = true"),
        13,
        "route[0].scope",
        "not both",
    );
    one_issue(
        &replace("scope = \"notes:read\"\n", ""),
        9,
        "route[0].scope",
        "any_key = true",
    );
    one_issue(
        &replace("path = \"/v1/notes/{id}\"\n", ""),
        9,
        "route[0].path",
        "is required",
    );
}

#[test]
fn duplicate_route_names_and_indistinguishable_routes() {
    let second = "\n[[route]]\nname = \"notes.read\"\nmethod = \"GET\"\npath = \"/v1/other\"\nany_key = true\n";
    one_issue(
        &format!("{VALID}{second}"),
        16,
        "route[1].name",
        "used twice",
    );
    let clash = "\n[[route]]\nname = \"notes.other\"\nmethod = \"GET\"\npath = \"/v1/notes/{note}\"\nany_key = true\n";
    one_issue(
        &format!("{VALID}{clash}"),
        18,
        "route[1].path",
        "cannot be told apart from route \"notes.read\"",
    );
}

#[test]
fn every_mistake_is_reported_at_once_in_file_order() {
    let text = VALID
        .replace("127.0.0.1:8443", "nowhere")
        .replace("http://127.0.0.1:8080", "gopher://x")
        .replace("method = \"GET\"", "method = \"get\"");
    let dir = dir();
    let error = parse(&text, dir.path()).unwrap_err();
    let keys: Vec<_> = error.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["server.listen", "upstream.url", "route[0].method"]);
    assert_eq!(error.to_string().lines().count(), 3);
}

#[test]
fn overrides_replace_keys_before_validation() {
    let dir = dir();
    let source = SourceText::new("policy.toml", VALID);
    let overrides = [
        ("server.listen", toml::Value::from("127.0.0.1:0")),
        ("storage.data_dir", toml::Value::from("/tmp/x")),
    ];
    let config = Config::parse_with_overrides(&source, dir.path(), &overrides).unwrap();
    assert_eq!(config.server.listen.port(), 0);
    assert_eq!(config.storage.data_dir, Path::new("/tmp/x"));
}

#[test]
fn shipped_example_policies_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "config/portcullis.toml",
        "config/demo.toml",
        "config/examples/voti.toml",
        "config/examples/klinivo.toml",
        "config/examples/velora.toml",
        "config/examples/voka.toml",
    ] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let dir = dir();
        // The shipped files point at deployment paths; validate them with readable stand-ins.
        let overrides = [
            (
                "server.cert",
                toml::Value::from(dir.path().join("cert.pem").display().to_string()),
            ),
            (
                "server.key",
                toml::Value::from(dir.path().join("key.pem").display().to_string()),
            ),
        ];
        let mut overrides = overrides.to_vec();
        if text.contains("\ningest_token_file") {
            use std::os::unix::fs::PermissionsExt;
            let token = dir.path().join("events.token");
            std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
            let stand_in = toml::Value::from(token.display().to_string());
            overrides.push(("webhooks.ingest_token_file", stand_in));
        }
        if text.contains("\nca_file") {
            let stand_in = dir.path().join("cert.pem").display().to_string();
            overrides.push(("upstream.ca_file", toml::Value::from(stand_in)));
        }
        let source = SourceText::new(name, text);
        if let Err(error) = Config::parse_with_overrides(&source, dir.path(), &overrides) {
            panic!("{name} is invalid:\n{error}");
        }
    }
}

#[test]
fn auth_and_admin_defaults_follow_the_data_directory() {
    let dir = dir();
    let text = format!("{VALID}\n[storage]\ndata_dir = \"state\"\n");
    let config = parse(&text, dir.path()).unwrap();
    assert_eq!(config.auth.namespace, "pcl");
    assert_eq!(config.auth.pepper_file, dir.path().join("state/pepper"));
    assert_eq!(config.admin.socket, dir.path().join("state/admin.sock"));
    assert_eq!(config.auth.credential_headers.len(), 2);
    assert!(config.auth.revoke_keys_found_in_urls);
    assert_eq!(config.auth.whoami_path.as_deref(), Some("/v1/auth/whoami"));
    assert!(config.server.trusted_proxies.is_empty());
}

#[test]
fn bad_auth_settings() {
    let with_auth = |lines: &str| format!("{VALID}\n[auth]\n{lines}\n");
    one_issue(
        &with_auth("namespace = \"Bad_NS\""),
        16,
        "auth.namespace",
        "lower-case",
    );
    one_issue(
        &with_auth("credential_headers = [\"cookie\"]"),
        16,
        "auth.credential_headers",
        "not supported",
    );
    one_issue(
        &with_auth("credential_headers = []"),
        16,
        "auth.credential_headers",
        "at least one",
    );
    one_issue(
        &with_auth("whoami_path = \"/v1/{who}\""),
        16,
        "auth.whoami_path",
        "literal path",
    );
    one_issue(
        &with_auth("max_failures_per_ip = 0"),
        16,
        "auth.max_failures_per_ip",
        "between",
    );
    one_issue(
        &with_auth("failure_window = \"often\""),
        16,
        "auth.failure_window",
        "not a duration",
    );
    one_issue(
        &with_auth("cookies = true"),
        16,
        "auth.cookies",
        "unknown field",
    );
    one_issue(
        &replace(
            "[upstream]",
            "trusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n[upstream]",
        ),
        6,
        "server.trusted_proxies",
        "not an IP address or CIDR",
    );
}

#[test]
fn builtin_endpoints_can_be_disabled_and_proxies_parsed() {
    let dir = dir();
    let text = replace(
        "[upstream]",
        "trusted_proxies = [\"10.1.2.3\", \"192.168.0.0/16\"]\n[upstream]",
    );
    let text = format!("{text}\n[auth]\nwhoami_path = \"\"\n");
    let config = parse(&text, dir.path()).unwrap();
    assert_eq!(config.auth.whoami_path, None);
    assert_eq!(config.server.trusted_proxies.len(), 2);
    assert_eq!(config.server.trusted_proxies[0].to_string(), "10.1.2.3/32");
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    one_issue(
        &replace("[upstream]", "proxy_protocol = true\n[upstream]"),
        6,
        "server.proxy_protocol",
        "needs server.trusted_proxies",
    );
    let dir = dir();
    let text = replace(
        "[upstream]",
        "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true\n[upstream]",
    );
    assert!(parse(&text, dir.path()).unwrap().server.proxy_protocol);
}
