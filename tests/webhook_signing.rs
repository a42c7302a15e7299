//! Webhook signing: the three schemes against published and independently computed vectors,
//! every verification failure, secret rotation, and the `portcullis webhooks sign|verify`
//! command through the real binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis::webhooks::sign::{
    sign, verify, Scheme, Secret, SecretError, VerifyError, DEFAULT_TOLERANCE,
};
use sha2::Sha256;

// The Standard Webhooks example (the same one the reference libraries test against).
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TS: i64 = 1_614_265_330;
const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// Vectors computed outside this code base (Python's hmac module) for the hex schemes.
const STRIPE_SECRET: &str = "sk_klinivo_test_secret_0123456789";
const STRIPE_TS: i64 = 1_700_000_000;
const STRIPE_BODY: &[u8] = br#"{"event":"patient.updated","id":"evt_1"}"#;
const STRIPE_HEX: &str = "2018e55ae2aa8987f299ec28f45468f451de4c313f52b06d411399113c251ce9";
const SPLIT_SECRET: &str = "voti-shared-secret-abcdef";
const SPLIT_BODY: &[u8] = br#"{"a":1}"#;
const SPLIT_HEX: &str = "de35d06312c68a849ff9cf1431b32a9c32ea667e00f55cc19b57ccc3ecf4fa16";

const NOW: i64 = 1_700_000_000;

fn stripe() -> Scheme {
    Scheme::Stripe {
        header: HeaderName::from_static("x-klinivo-signature"),
    }
}

fn split() -> Scheme {
    Scheme::Split {
        id_header: HeaderName::from_static("x-voti-event-id"),
        timestamp_header: HeaderName::from_static("x-voti-timestamp"),
        signature_header: HeaderName::from_static("x-voti-signature"),
    }
}

fn all_schemes() -> [Scheme; 3] {
    [Scheme::Standard, stripe(), split()]
}

fn secret(scheme: &Scheme, text: &str) -> Secret {
    Secret::parse_for(scheme, text).expect("valid secret")
}

fn map(headers: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    headers.iter().cloned().collect()
}

fn value<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

fn reference_hmac(key: &[u8], content: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(content);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(
    scheme: &Scheme,
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    verify(scheme, secrets, headers, body, now, DEFAULT_TOLERANCE)
}

// ---------------------------------------------------------------------------------------------
// Vectors

#[test]
fn standard_reproduces_the_published_example() {
    let headers = sign(
        &Scheme::Standard,
        &[secret(&Scheme::Standard, SPEC_SECRET)],
        SPEC_ID,
        SPEC_TS,
        SPEC_BODY,
    );
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    assert_eq!(value(&headers, "webhook-id"), SPEC_ID);
    assert_eq!(value(&headers, "webhook-timestamp"), "1614265330");
    assert_eq!(value(&headers, "webhook-signature"), SPEC_SIGNATURE);
}

#[test]
fn standard_verifies_the_published_example_among_other_entries() {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static(SPEC_ID));
    headers.insert("webhook-timestamp", HeaderValue::from_static("1614265330"));
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(&format!("v1,bm9wZQ== v1a,c29tZXRoaW5n {SPEC_SIGNATURE}")).unwrap(),
    );
    let secrets = [secret(&Scheme::Standard, SPEC_SECRET)];
    check(&Scheme::Standard, &secrets, &headers, SPEC_BODY, SPEC_TS).unwrap();
    check(
        &Scheme::Standard,
        &secrets,
        &headers,
        SPEC_BODY,
        SPEC_TS + 300,
    )
    .unwrap();
    assert_eq!(
        check(
            &Scheme::Standard,
            &secrets,
            &headers,
            br#"{"test": 2432232315}"#,
            SPEC_TS
        ),
        Err(VerifyError::NoMatch)
    );
}

#[test]
fn standard_matches_the_reference_algorithm_with_a_generated_secret() {
    let generated = Secret::generate().unwrap();
    let body = br#"{"type":"appointment.created","data":{"id":"a1"}}"#;
    let headers = sign(
        &Scheme::Standard,
        std::slice::from_ref(&generated),
        "msg_42",
        NOW,
        body,
    );
    // The spec: key = base64-decode(text after whsec_); content = id.ts.body; v1,<base64>.
    let key = BASE64
        .decode(generated.expose().strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_eq!(key.len(), 32);
    let mut content = b"msg_42.1700000000.".to_vec();
    content.extend_from_slice(body);
    let expected = format!("v1,{}", BASE64.encode(reference_hmac(&key, &content)));
    assert_eq!(value(&headers, "webhook-signature"), expected);
}

#[test]
fn stripe_matches_the_external_vector_and_the_reference_algorithm() {
    let scheme = stripe();
    let headers = sign(
        &scheme,
        &[secret(&scheme, STRIPE_SECRET)],
        "evt_1",
        STRIPE_TS,
        STRIPE_BODY,
    );
    assert_eq!(headers.len(), 1, "stripe sends one header: {headers:?}");
    assert_eq!(
        value(&headers, "x-klinivo-signature"),
        format!("t=1700000000,v1={STRIPE_HEX}")
    );
    // Key = the secret text itself (even a whsec_ one); content = ts.body; hex.
    let generated = Secret::generate().unwrap();
    let headers = sign(
        &scheme,
        std::slice::from_ref(&generated),
        "evt_2",
        NOW,
        STRIPE_BODY,
    );
    let mut content = b"1700000000.".to_vec();
    content.extend_from_slice(STRIPE_BODY);
    let expected = hex(&reference_hmac(generated.expose().as_bytes(), &content));
    assert_eq!(
        value(&headers, "x-klinivo-signature"),
        format!("t=1700000000,v1={expected}")
    );
    check(&scheme, &[generated], &map(&headers), STRIPE_BODY, NOW).unwrap();
}

#[test]
fn stripe_verifies_a_header_written_by_hand_as_stripe_does() {
    let scheme = stripe();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-klinivo-signature",
        HeaderValue::from_str(&format!("t=1700000000, v1={STRIPE_HEX}, v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39")).unwrap(),
    );
    check(
        &scheme,
        &[secret(&scheme, STRIPE_SECRET)],
        &headers,
        STRIPE_BODY,
        NOW,
    )
    .unwrap();
}

#[test]
fn split_matches_the_external_vector() {
    let scheme = split();
    let headers = sign(
        &scheme,
        &[secret(&scheme, SPLIT_SECRET)],
        "evt_9",
        NOW,
        SPLIT_BODY,
    );
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["x-voti-event-id", "x-voti-timestamp", "x-voti-signature"]
    );
    assert_eq!(value(&headers, "x-voti-event-id"), "evt_9");
    assert_eq!(value(&headers, "x-voti-timestamp"), "1700000000");
    assert_eq!(value(&headers, "x-voti-signature"), SPLIT_HEX);
}

// ---------------------------------------------------------------------------------------------
// Every scheme: round trip and refusals

#[test]
fn every_scheme_round_trips() {
    for scheme in all_schemes() {
        let secrets = [Secret::generate().unwrap()];
        let body = b"{\"hello\":\"world\"}";
        let headers = map(&sign(&scheme, &secrets, "evt_rt", NOW, body));
        check(&scheme, &secrets, &headers, body, NOW).unwrap_or_else(|e| panic!("{scheme:?}: {e}"));
        // An empty body signs and verifies too.
        let headers = map(&sign(&scheme, &secrets, "evt_rt", NOW, b""));
        check(&scheme, &secrets, &headers, b"", NOW).unwrap();
    }
}

#[test]
fn every_scheme_refuses_a_wrong_secret_and_an_altered_body() {
    for scheme in all_schemes() {
        let secrets = [Secret::generate().unwrap()];
        let other = [Secret::generate().unwrap()];
        let headers = map(&sign(&scheme, &secrets, "evt_1", NOW, b"{\"n\":1}"));
        assert_eq!(
            check(&scheme, &other, &headers, b"{\"n\":1}", NOW),
            Err(VerifyError::NoMatch),
            "{scheme:?}"
        );
        assert_eq!(
            check(&scheme, &secrets, &headers, b"{\"n\":2}", NOW),
            Err(VerifyError::NoMatch),
            "{scheme:?}"
        );
        assert_eq!(
            check(&scheme, &secrets, &headers, b"{\"n\":1} ", NOW),
            Err(VerifyError::NoMatch),
            "{scheme:?}"
        );
        assert_eq!(
            check(&scheme, &[], &headers, b"{\"n\":1}", NOW),
            Err(VerifyError::NoMatch),
            "{scheme:?}"
        );
    }
}

#[test]
fn every_scheme_refuses_stale_and_future_timestamps_beyond_the_tolerance() {
    for scheme in all_schemes() {
        let secrets = [Secret::generate().unwrap()];
        let headers = map(&sign(&scheme, &secrets, "evt_t", NOW, b"x"));
        // Exactly at the edge, both ways: accepted.
        check(&scheme, &secrets, &headers, b"x", NOW + 300).unwrap();
        check(&scheme, &secrets, &headers, b"x", NOW - 300).unwrap();
        assert_eq!(
            check(&scheme, &secrets, &headers, b"x", NOW + 301),
            Err(VerifyError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            }),
            "{scheme:?}"
        );
        assert_eq!(
            check(&scheme, &secrets, &headers, b"x", NOW - 3600),
            Err(VerifyError::Future {
                ahead_secs: 3600,
                tolerance_secs: 300
            }),
            "{scheme:?}"
        );
        // A tighter tolerance is honoured.
        assert!(matches!(
            verify(
                &scheme,
                &secrets,
                &headers,
                b"x",
                NOW + 11,
                Duration::from_secs(10)
            ),
            Err(VerifyError::Stale {
                age_secs: 11,
                tolerance_secs: 10
            })
        ));
    }
}

#[test]
fn a_stale_timestamp_is_refused_even_with_a_valid_signature_for_it() {
    // A replayed capture: signed correctly, but long ago.
    let secrets = [Secret::generate().unwrap()];
    let headers = map(&sign(
        &Scheme::Standard,
        &secrets,
        "evt_old",
        NOW - 86_400,
        b"x",
    ));
    assert!(matches!(
        check(&Scheme::Standard, &secrets, &headers, b"x", NOW),
        Err(VerifyError::Stale {
            age_secs: 86_400,
            ..
        })
    ));
}

#[test]
fn every_missing_header_is_named() {
    for scheme in all_schemes() {
        let secrets = [Secret::generate().unwrap()];
        let signed = sign(&scheme, &secrets, "evt_m", NOW, b"x");
        for (name, _) in &signed {
            let mut headers = map(&signed);
            headers.remove(name);
            assert_eq!(
                check(&scheme, &secrets, &headers, b"x", NOW),
                Err(VerifyError::MissingHeader(name.clone())),
                "{scheme:?} without {name}"
            );
        }
    }
}

fn malformed(scheme: &Scheme, header: &str, value: &str) -> VerifyError {
    let secrets = [Secret::generate().unwrap()];
    let mut headers = map(&sign(scheme, &secrets, "evt_x", NOW, b"x"));
    headers.insert(
        HeaderName::from_bytes(header.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    );
    check(scheme, &secrets, &headers, b"x", NOW).unwrap_err()
}

fn assert_malformed(error: VerifyError, header: &str, reason_part: &str) {
    match &error {
        VerifyError::Malformed { header: h, reason } => {
            assert_eq!(h.as_str(), header);
            assert!(reason.contains(reason_part), "{error}");
        }
        other => panic!("expected Malformed({header}), got {other:?}"),
    }
}

#[test]
fn standard_malformed_headers_are_refused() {
    let s = Scheme::Standard;
    assert_malformed(
        malformed(&s, "webhook-timestamp", "yesterday"),
        "webhook-timestamp",
        "decimal",
    );
    assert_malformed(
        malformed(&s, "webhook-timestamp", "-1700000000"),
        "webhook-timestamp",
        "decimal",
    );
    assert_malformed(
        malformed(&s, "webhook-timestamp", "1700000000.5"),
        "webhook-timestamp",
        "decimal",
    );
    assert_malformed(
        malformed(&s, "webhook-signature", "garbage"),
        "webhook-signature",
        "v1",
    );
    assert_malformed(
        malformed(&s, "webhook-signature", "v1,***"),
        "webhook-signature",
        "v1",
    );
    assert_malformed(
        malformed(&s, "webhook-signature", "v2,AAAA"),
        "webhook-signature",
        "v1",
    );
    // A well-formed but wrong signature is a mismatch, not a format error.
    assert_eq!(
        malformed(
            &s,
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        ),
        VerifyError::NoMatch
    );
}

#[test]
fn stripe_malformed_headers_are_refused() {
    let s = stripe();
    let h = "x-klinivo-signature";
    assert_malformed(malformed(&s, h, "v1=abc"), h, "t=");
    assert_malformed(malformed(&s, h, &format!("v1={STRIPE_HEX}")), h, "t=");
    assert_malformed(malformed(&s, h, "t=1700000000"), h, "v1=");
    assert_malformed(malformed(&s, h, "t=1700000000,v1=zz"), h, "v1=");
    assert_malformed(
        malformed(&s, h, &format!("t=soon,v1={STRIPE_HEX}")),
        h,
        "decimal",
    );
    assert_malformed(malformed(&s, h, "t=1700000000,junk"), h, "key=value");
    assert_malformed(
        malformed(&s, h, &format!("t=1700000000,t=1700000001,v1={STRIPE_HEX}")),
        h,
        "more than one",
    );
}

#[test]
fn split_malformed_headers_are_refused() {
    let s = split();
    assert_malformed(
        malformed(&s, "x-voti-timestamp", "1.7e9"),
        "x-voti-timestamp",
        "decimal",
    );
    assert_malformed(
        malformed(&s, "x-voti-signature", "sha256=abc"),
        "x-voti-signature",
        "hex",
    );
    assert_malformed(
        malformed(&s, "x-voti-signature", &SPLIT_HEX.to_uppercase()),
        "x-voti-signature",
        "hex",
    );
    assert_malformed(
        malformed(&s, "x-voti-event-id", ""),
        "x-voti-event-id",
        "empty",
    );
}

#[test]
fn non_ascii_header_values_are_malformed_not_panics() {
    let secrets = [Secret::generate().unwrap()];
    let mut headers = map(&sign(&Scheme::Standard, &secrets, "evt", NOW, b"x"));
    headers.insert(
        "webhook-signature",
        HeaderValue::from_bytes(b"v1,\xff\xfe").unwrap(),
    );
    assert_malformed(
        check(&Scheme::Standard, &secrets, &headers, b"x", NOW).unwrap_err(),
        "webhook-signature",
        "ASCII",
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation

#[test]
fn rotation_carries_two_signatures_and_each_secret_alone_verifies() {
    for scheme in all_schemes() {
        let new = Secret::generate().unwrap();
        let old = Secret::generate().unwrap();
        let signed = sign(
            &scheme,
            &[new.clone(), old.clone()],
            "evt_rot",
            NOW,
            b"body",
        );
        let sig_header = match &scheme {
            Scheme::Standard => "webhook-signature".to_owned(),
            Scheme::Stripe { header } => header.to_string(),
            Scheme::Split {
                signature_header, ..
            } => signature_header.to_string(),
        };
        let text = value(&signed, &sig_header);
        let count = match &scheme {
            Scheme::Standard => text.split(' ').filter(|e| e.starts_with("v1,")).count(),
            Scheme::Stripe { .. } => text.split(',').filter(|e| e.starts_with("v1=")).count(),
            Scheme::Split { .. } => text.split(',').count(),
        };
        assert_eq!(count, 2, "{scheme:?}: {text}");
        let headers = map(&signed);
        check(&scheme, std::slice::from_ref(&new), &headers, b"body", NOW).unwrap();
        check(&scheme, std::slice::from_ref(&old), &headers, b"body", NOW).unwrap();
        check(
            &scheme,
            &[Secret::generate().unwrap(), old],
            &headers,
            b"body",
            NOW,
        )
        .unwrap();
        assert_eq!(
            check(
                &scheme,
                &[Secret::generate().unwrap()],
                &headers,
                b"body",
                NOW
            ),
            Err(VerifyError::NoMatch)
        );
    }
}

#[test]
fn rotation_signatures_are_each_the_reference_value() {
    // Each entry is exactly what the single-secret signature would be, in secret order.
    let a = secret(&Scheme::Standard, SPEC_SECRET);
    let b = Secret::generate().unwrap();
    let both = sign(
        &Scheme::Standard,
        &[a.clone(), b.clone()],
        SPEC_ID,
        SPEC_TS,
        SPEC_BODY,
    );
    let only_b = sign(&Scheme::Standard, &[b], SPEC_ID, SPEC_TS, SPEC_BODY);
    assert_eq!(
        value(&both, "webhook-signature"),
        format!("{SPEC_SIGNATURE} {}", value(&only_b, "webhook-signature"))
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[test]
fn secret_rules_per_scheme() {
    assert_eq!(
        Secret::parse_for(&Scheme::Standard, STRIPE_SECRET).unwrap_err(),
        SecretError::MissingPrefix
    );
    assert!(Secret::parse_for(&stripe(), STRIPE_SECRET).is_ok());
    assert!(Secret::parse_for(&split(), SPEC_SECRET).is_ok());
    assert!(Secret::parse(SPEC_SECRET).unwrap().is_standard());
    assert!(!Secret::parse(STRIPE_SECRET).unwrap().is_standard());
    assert!(matches!(
        Secret::parse("short"),
        Err(SecretError::Length { .. })
    ));
    let err = Secret::parse_for(&Scheme::Standard, "whsec_%%%%").unwrap_err();
    assert_eq!(err, SecretError::Base64);
    assert!(
        !err.to_string().contains("%%%%"),
        "errors never repeat the secret"
    );
    assert_eq!(
        format!("{:?}", Secret::parse(SPEC_SECRET).unwrap()),
        "Secret(<redacted>)"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line

fn portcullis(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn cli_sign_prints_the_published_example() {
    let out = portcullis(
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--id",
            SPEC_ID,
            "--timestamp",
            "1614265330",
        ],
        SPEC_BODY,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("webhook-id: {SPEC_ID}\nwebhook-timestamp: 1614265330\nwebhook-signature: {SPEC_SIGNATURE}\n")
    );
}

/// Signs with `sign_args`, then verifies the printed headers with `verify_args`.
fn cli_round_trip(
    sign_args: &[&str],
    verify_args: &[&str],
    body: &[u8],
    verify_body: &[u8],
) -> Output {
    let mut args = vec!["webhooks", "sign"];
    args.extend_from_slice(sign_args);
    let signed = portcullis(&args, body);
    assert_eq!(signed.status.code(), Some(0), "{}", stderr(&signed));
    let printed = stdout(&signed);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(!lines.is_empty());
    let mut args = vec!["webhooks", "verify"];
    args.extend_from_slice(verify_args);
    for line in &lines {
        args.push("--header");
        args.push(line);
    }
    portcullis(&args, verify_body)
}

#[test]
fn cli_round_trips_every_scheme_and_refuses_a_tampered_body() {
    let standard = Secret::generate().unwrap();
    let cases: [(&str, &str, Vec<&str>, Vec<&str>); 4] = [
        ("standard", standard.expose(), vec![], vec![]),
        ("stripe", STRIPE_SECRET, vec![], vec![]),
        (
            "stripe",
            STRIPE_SECRET,
            vec!["--header", "X-Klinivo-Signature"],
            vec!["--scheme-header", "X-Klinivo-Signature"],
        ),
        (
            "split",
            SPLIT_SECRET,
            vec![
                "--header",
                "x-voti-event-id",
                "--header",
                "x-voti-timestamp",
                "--header",
                "x-voti-signature",
            ],
            vec![
                "--scheme-header",
                "x-voti-event-id",
                "--scheme-header",
                "x-voti-timestamp",
                "--scheme-header",
                "x-voti-signature",
            ],
        ),
    ];
    let body = b"{\"type\":\"lab.result\"}\n";
    for (scheme, secret, sign_extra, verify_extra) in &cases {
        let mut sign_args = vec!["--scheme", scheme, "--secret", secret];
        sign_args.extend(sign_extra.iter().copied());
        let mut verify_args = vec!["--scheme", scheme, "--secret", secret];
        verify_args.extend(verify_extra.iter().copied());

        let ok = cli_round_trip(&sign_args, &verify_args, body, body);
        assert_eq!(ok.status.code(), Some(0), "{scheme}: {}", stderr(&ok));
        assert_eq!(stdout(&ok), "ok\n");

        let tampered = cli_round_trip(
            &sign_args,
            &verify_args,
            body,
            b"{\"type\":\"lab.resulT\"}\n",
        );
        assert_eq!(tampered.status.code(), Some(1), "{scheme}");
        assert!(
            stderr(&tampered).contains("no signature matches"),
            "{}",
            stderr(&tampered)
        );
        assert!(stdout(&tampered).is_empty());
    }
}

#[test]
fn cli_sign_uses_the_named_headers() {
    let out = portcullis(
        &[
            "webhooks",
            "sign",
            "--scheme",
            "stripe",
            "--secret",
            STRIPE_SECRET,
            "--timestamp",
            "1700000000",
            "--header",
            "X-Klinivo-Signature",
        ],
        STRIPE_BODY,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("x-klinivo-signature: t=1700000000,v1={STRIPE_HEX}\n")
    );
    // Without --id a fresh msg_ id is made.
    let out = portcullis(
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
        ],
        b"{}",
    );
    let printed = stdout(&out);
    let id = printed.lines().next().unwrap();
    assert!(
        id.starts_with("webhook-id: msg_") && id.len() == "webhook-id: msg_".len() + 24,
        "{id}"
    );
}

#[test]
fn cli_rotation_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.secret");
    std::fs::write(&file, format!("{STRIPE_SECRET}\n")).unwrap();
    let new = "sk_klinivo_new_secret_abcdefghij";
    let file_arg = file.to_str().unwrap();
    // Signed with both; each alone verifies.
    for verify_secret in [["--secret", new], ["--secret-file", file_arg]] {
        let mut verify_args = vec!["--scheme", "stripe"];
        verify_args.extend(verify_secret);
        let out = cli_round_trip(
            &[
                "--scheme",
                "stripe",
                "--secret",
                new,
                "--secret-file",
                file_arg,
            ],
            &verify_args,
            b"{}",
            b"{}",
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

#[test]
fn cli_verify_reports_a_stale_timestamp_with_exit_1() {
    let out = cli_round_trip(
        &[
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--timestamp",
            "1614265330",
        ],
        &["--scheme", "standard", "--secret", SPEC_SECRET],
        SPEC_BODY,
        SPEC_BODY,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("old, more than the 300 s tolerance"),
        "{}",
        stderr(&out)
    );
    // A wide enough tolerance accepts it: the signature itself is right.
    let out = cli_round_trip(
        &[
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--timestamp",
            "1614265330",
        ],
        &[
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--tolerance",
            "100000000000",
        ],
        SPEC_BODY,
        SPEC_BODY,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn cli_verify_names_a_missing_header() {
    let out = portcullis(
        &[
            "webhooks",
            "verify",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--header",
            "webhook-id: msg_1",
        ],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("webhook-timestamp header is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cli_usage_mistakes_exit_2() {
    let cases: &[&[&str]] = &[
        // not a standard secret
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            STRIPE_SECRET,
        ],
        // too short for any scheme
        &[
            "webhooks", "sign", "--scheme", "stripe", "--secret", "short",
        ],
        // unknown scheme
        &[
            "webhooks",
            "sign",
            "--scheme",
            "hmac",
            "--secret",
            SPEC_SECRET,
        ],
        // no secret
        &["webhooks", "sign", "--scheme", "standard"],
        // header names do not apply to standard
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--header",
            "x-a",
        ],
        // split needs three names
        &[
            "webhooks",
            "sign",
            "--scheme",
            "split",
            "--secret",
            SPLIT_SECRET,
            "--header",
            "x-a",
        ],
        // the same name three times
        &[
            "webhooks",
            "sign",
            "--scheme",
            "split",
            "--secret",
            SPLIT_SECRET,
            "--header",
            "x-a",
            "--header",
            "x-a",
            "--header",
            "x-a",
        ],
        // not a header name
        &[
            "webhooks",
            "sign",
            "--scheme",
            "stripe",
            "--secret",
            STRIPE_SECRET,
            "--header",
            "bad name",
        ],
        // an id no header can carry
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--id",
            "a b",
        ],
        // a negative timestamp
        &[
            "webhooks",
            "sign",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--timestamp",
            "-5",
        ],
        // verify: a header without a colon
        &[
            "webhooks",
            "verify",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
            "--header",
            "webhook-id msg_1",
        ],
        // verify: no header at all
        &[
            "webhooks",
            "verify",
            "--scheme",
            "standard",
            "--secret",
            SPEC_SECRET,
        ],
        // verify: a missing secret file
        &[
            "webhooks",
            "verify",
            "--scheme",
            "standard",
            "--secret-file",
            "/nonexistent/secret",
            "--header",
            "a: b",
        ],
    ];
    for args in cases {
        let out = portcullis(args, b"{}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
}

#[test]
fn cli_errors_never_print_the_secret() {
    let secret = "whsec_this-is-not-base64-but-secret!!";
    let out = portcullis(
        &[
            "webhooks", "sign", "--scheme", "standard", "--secret", secret,
        ],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !stderr(&out).contains("this-is-not-base64"),
        "{}",
        stderr(&out)
    );
}
