//! Webhook destinations: the SSRF address rules, URL checks, and the receiver client against
//! real in-process HTTPS receivers on loopback.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis::body::full_body;
use portcullis::webhooks::destination::{
    check_url, is_forbidden, DeliveryError, DestinationError, ReceiverClient, ReceiverClientError,
};
use portcullis::webhooks::sign::{sign, verify, Scheme, Secret, DEFAULT_TOLERANCE};

const TIMEOUT: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Address rules

#[test]
fn every_forbidden_range_is_refused() {
    let forbidden = [
        // IPv4
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "192.168.255.255",
        "169.254.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "198.19.255.255",
        "192.88.99.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        // IPv6
        "::",
        "::1",
        "fc00::1",
        "fd12:3456:789a::1",
        "fd00:ec2::254",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff05::1:3",
        "2001:db8::1",
        "3fff::1",
        "2001:2::1",
        "2001::1",
        "100::1",
        "64:ff9b:1::1",
        // IPv4 forms inside IPv6
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::ffff:0:192.168.1.1",
        "::127.0.0.1",
        "::10.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::169.254.169.254",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::",
        "2002:c0a8:101::",
    ];
    for text in forbidden {
        assert!(is_forbidden(ip(text)), "{text} must be forbidden");
    }
}

#[test]
fn public_addresses_are_allowed() {
    let public = [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.169.0.1",
        "169.253.255.255",
        "198.17.255.255",
        "198.20.0.1",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:81d::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];
    for text in public {
        assert!(!is_forbidden(ip(text)), "{text} must be allowed");
    }
}

// ---------------------------------------------------------------------------------------------
// URL rules

#[test]
fn good_urls_pass_and_come_back_parsed() {
    for url in [
        "https://hooks.example.com/receive",
        "https://hooks.example.com:8443/a/b?x=1",
        "https://HOOKS.example.com",
        "https://93.184.216.34/hook",
        "https://[2606:4700:4700::1111]/hook",
    ] {
        let uri = check_url(url, false).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(uri.scheme_str(), Some("https"));
    }
}

#[test]
fn bad_urls_are_refused_with_the_reason() {
    let cases: &[(&str, DestinationError)] = &[
        ("http://hooks.example.com/", DestinationError::NotHttps),
        ("ftp://hooks.example.com/", DestinationError::NotHttps),
        ("ws://hooks.example.com/", DestinationError::NotHttps),
        (
            "https://user:pass@hooks.example.com/",
            DestinationError::Userinfo,
        ),
        (
            "https://token@hooks.example.com/",
            DestinationError::Userinfo,
        ),
        (
            "https://hooks.example.com/a#frag",
            DestinationError::Fragment,
        ),
        ("https://hooks.example.com:0/", DestinationError::NoHost),
        ("/relative/path", DestinationError::Invalid),
        ("hooks.example.com", DestinationError::Invalid),
        ("https://exa mple.com/", DestinationError::Invalid),
        ("", DestinationError::Invalid),
        (
            "https://127.0.0.1/",
            DestinationError::ForbiddenAddress(ip("127.0.0.1")),
        ),
        (
            "https://10.0.0.5:8443/",
            DestinationError::ForbiddenAddress(ip("10.0.0.5")),
        ),
        (
            "https://169.254.169.254/latest/meta-data/",
            DestinationError::ForbiddenAddress(ip("169.254.169.254")),
        ),
        (
            "https://[::1]/",
            DestinationError::ForbiddenAddress(ip("::1")),
        ),
        (
            "https://[::ffff:127.0.0.1]/",
            DestinationError::ForbiddenAddress(ip("::ffff:127.0.0.1")),
        ),
        (
            "https://[fd00:ec2::254]/",
            DestinationError::ForbiddenAddress(ip("fd00:ec2::254")),
        ),
        ("https://localhost/", DestinationError::LocalName),
        ("https://LOCALHOST./", DestinationError::LocalName),
        ("https://api.localhost:8443/", DestinationError::LocalName),
    ];
    for (url, expected) in cases {
        assert_eq!(
            check_url(url, false).as_ref().err(),
            Some(expected),
            "{url}"
        );
    }
    let long = format!("https://example.com/{}", "a".repeat(2100));
    assert_eq!(
        check_url(&long, false).unwrap_err(),
        DestinationError::TooLong
    );
}

#[test]
fn allow_private_lifts_the_address_rules_but_not_https() {
    assert!(check_url("https://127.0.0.1:8443/hook", true).is_ok());
    assert!(check_url("https://localhost/hook", true).is_ok());
    assert!(check_url("https://[::1]/hook", true).is_ok());
    assert_eq!(
        check_url("http://127.0.0.1/hook", true).unwrap_err(),
        DestinationError::NotHttps
    );
    assert_eq!(
        check_url("https://u:p@localhost/", true).unwrap_err(),
        DestinationError::Userinfo
    );
}

// ---------------------------------------------------------------------------------------------
// The receiver client

/// A receiver that records what it got and answers with `answer`.
async fn receiver(
    pki: &TestPki,
    answer: impl Fn() -> Response<portcullis::body::ProxyBody> + Send + Sync + 'static,
) -> (Backend, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    let backend = Backend::start_tls(
        handler(move |request: Request<Incoming>| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body,
                });
                answer()
            }
        }),
        pki,
    )
    .await;
    (backend, seen)
}

fn ok_answer() -> Response<portcullis::body::ProxyBody> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full_body(Bytes::new()))
        .unwrap()
}

fn url(host: &str, backend: &Backend, path: &str) -> Uri {
    format!("https://{host}:{}{path}", backend.addr.port())
        .parse()
        .unwrap()
}

fn lab_client(pki: &TestPki) -> ReceiverClient {
    ReceiverClient::new(true, Some(&pki.paths.ca), TIMEOUT).expect("client")
}

#[tokio::test]
async fn a_trusted_loopback_receiver_gets_the_signed_post() {
    let pki = test_pki();
    let (backend, seen) = receiver(&pki, ok_answer).await;
    let client = lab_client(&pki);
    let secret = Secret::generate().unwrap();
    let body = Bytes::from_static(br#"{"type":"lab.result","data":{"id":"r1"}}"#);
    let now = 1_700_000_000;
    let headers = sign(
        &Scheme::Standard,
        std::slice::from_ref(&secret),
        "evt_abc",
        now,
        &body,
    );

    let answer = client
        .post(
            &url("localhost", &backend, "/hooks/in?src=pcl"),
            headers,
            body.clone(),
        )
        .await
        .expect("delivered");
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.retry_after, None);
    assert!(answer.latency > Duration::ZERO && answer.latency < TIMEOUT);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri, "/hooks/in?src=pcl");
    assert_eq!(got.body, body);
    assert_eq!(got.headers["webhook-id"], "evt_abc");
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(got.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("portcullis-webhooks/"));
    // What arrived verifies at the receiver.
    verify(
        &Scheme::Standard,
        &[secret],
        &got.headers,
        &got.body,
        now,
        DEFAULT_TOLERANCE,
    )
    .expect("receiver verifies");
}

#[tokio::test]
async fn an_ip_literal_receiver_works_when_private_is_allowed() {
    let pki = test_pki();
    let (backend, seen) = receiver(&pki, ok_answer).await;
    let answer = lab_client(&pki)
        .post(
            &url("127.0.0.1", &backend, "/"),
            Vec::new(),
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("delivered");
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn caller_headers_win_over_the_defaults() {
    let pki = test_pki();
    let (backend, seen) = receiver(&pki, ok_answer).await;
    let headers = vec![(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/cloudevents+json"),
    )];
    lab_client(&pki)
        .post(
            &url("localhost", &backend, "/"),
            headers,
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let types: Vec<_> = seen[0].headers.get_all("content-type").iter().collect();
    assert_eq!(types, ["application/cloudevents+json"]);
}

#[tokio::test]
async fn localhost_is_refused_by_the_resolver_at_delivery_time() {
    let pki = test_pki();
    let (backend, seen) = receiver(&pki, ok_answer).await;
    // Not through check_url: this is a URL that got past the subscription check (a name that
    // later resolves to loopback), so only the resolver stands in the way.
    let client = ReceiverClient::new(false, Some(&pki.paths.ca), TIMEOUT).unwrap();
    let error = client
        .post(
            &url("localhost", &backend, "/"),
            Vec::new(),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap_err();
    match error {
        DeliveryError::Forbidden(DestinationError::ForbiddenAddress(addr)) => {
            assert!(addr.is_loopback(), "{addr}")
        }
        other => panic!("expected a forbidden destination, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 0);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn odd_spellings_of_loopback_do_not_slip_past_the_resolver() {
    let pki = test_pki();
    let (backend, _seen) = receiver(&pki, ok_answer).await;
    let client = ReceiverClient::new(false, Some(&pki.paths.ca), TIMEOUT).unwrap();
    // Not IP literals to the URL parser, but the system resolver may read them as 127.0.0.1.
    // Whatever stops each (the resolver, or TLS name rules), none is sent.
    for host in ["2130706433", "0x7f000001", "127.1", "0177.0.0.1"] {
        assert!(
            check_url(&format!("https://{host}/"), false).is_ok(),
            "{host}"
        );
        let error = client
            .post(&url(host, &backend, "/"), Vec::new(), Bytes::new())
            .await
            .unwrap_err();
        assert!(
            !matches!(error, DeliveryError::Timeout(_) | DeliveryError::Other(_)),
            "{host}: {error:?}"
        );
    }
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn the_resolver_refuses_names_for_loopback_and_passes_them_when_allowed() {
    use hyper_util::client::legacy::connect::dns::Name;
    use portcullis::webhooks::destination::{GuardedResolver, ResolveError};
    use tower_service::Service;

    let name = |text: &str| text.parse::<Name>().unwrap();
    let mut strict = GuardedResolver::new(false);
    match strict.call(name("localhost")).await {
        Err(ResolveError::Forbidden(addr)) => assert!(addr.is_loopback(), "{addr}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Numeric spellings the system resolver may expand to 127.0.0.1: refused, or not found.
    for text in ["127.1", "0x7f000001", "2130706433"] {
        match strict.call(name(text)).await {
            Err(ResolveError::Forbidden(addr)) => assert!(addr.is_loopback(), "{text}: {addr}"),
            Err(ResolveError::Lookup(_) | ResolveError::NoAddress) => {}
            Ok(addrs) => panic!("{text} resolved to {:?}", addrs.collect::<Vec<_>>()),
        }
    }
    let mut lab = GuardedResolver::new(true);
    let addrs: Vec<_> = lab
        .call(name("localhost"))
        .await
        .expect("allowed")
        .collect();
    assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    assert!(matches!(
        strict.call(name("no-such-host.invalid")).await,
        Err(ResolveError::Lookup(_) | ResolveError::NoAddress)
    ));
}

#[tokio::test]
async fn ip_literals_and_http_are_refused_before_connecting() {
    let pki = test_pki();
    let (backend, _seen) = receiver(&pki, ok_answer).await;
    let client = ReceiverClient::new(false, Some(&pki.paths.ca), TIMEOUT).unwrap();
    let error = client
        .post(&url("127.0.0.1", &backend, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            DeliveryError::Forbidden(DestinationError::ForbiddenAddress(addr)) if addr == ip("127.0.0.1")
        ),
        "{error:?}"
    );
    let lab = lab_client(&pki);
    let plain: Uri = format!("http://127.0.0.1:{}/", backend.addr.port())
        .parse()
        .unwrap();
    let error = lab
        .post(&plain, Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Forbidden(DestinationError::NotHttps)),
        "{error:?}"
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error() {
    let pki = test_pki();
    let (backend, seen) = receiver(&pki, ok_answer).await;
    // Private destinations allowed, but the test CA is not trusted.
    let client = ReceiverClient::new(true, None, TIMEOUT).unwrap();
    let error = client
        .post(
            &url("localhost", &backend, "/"),
            Vec::new(),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap_err();
    match &error {
        DeliveryError::Tls(reason) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 0);
    // Another CA does not help either.
    let other = test_pki();
    let client = ReceiverClient::new(true, Some(&other.paths.ca), TIMEOUT).unwrap();
    let error = client
        .post(&url("localhost", &backend, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Tls(_)), "{error:?}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths = portcullis::pki::generate_dev_pki(&dir.path().join("certs"), &["receiver.example"])
        .expect("pki");
    let pki = TestPki { dir, paths };
    let (backend, seen) = receiver(&pki, ok_answer).await;
    let error = lab_client(&pki)
        .post(&url("localhost", &backend, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    match &error {
        DeliveryError::Tls(reason) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn retry_after_is_reported_and_redirects_are_not_followed() {
    let pki = test_pki();
    let (busy, _) = receiver(&pki, || {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "7")
            .body(full_body(Bytes::from_static(b"busy, internal detail")))
            .unwrap()
    })
    .await;
    let client = lab_client(&pki);
    let answer = client
        .post(&url("localhost", &busy, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));

    let (redirecting, seen) = receiver(&pki, || {
        Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", "https://169.254.169.254/latest/meta-data/")
            .body(full_body(Bytes::new()))
            .unwrap()
    })
    .await;
    let answer = client
        .post(
            &url("localhost", &redirecting, "/"),
            Vec::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_large_answer_is_drained_up_to_the_cap_and_dropped() {
    let pki = test_pki();
    let (big, _) = receiver(&pki, || {
        Response::builder()
            .status(StatusCode::OK)
            .body(full_body(Bytes::from(vec![b'x'; 4 * 1024 * 1024])))
            .unwrap()
    })
    .await;
    let answer = lab_client(&pki)
        .post(&url("localhost", &big, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_receiver_times_out() {
    let pki = test_pki();
    let slow = Backend::start_tls(
        handler(|_request: Request<Incoming>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            ok_answer()
        }),
        &pki,
    )
    .await;
    let timeout = Duration::from_millis(300);
    let client = ReceiverClient::new(true, Some(&pki.paths.ca), timeout).unwrap();
    let started = std::time::Instant::now();
    let error = client
        .post(&url("localhost", &slow, "/"), Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Timeout(t) if t == timeout),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let pki = test_pki();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let uri: Uri = format!("https://localhost:{port}/").parse().unwrap();
    let error = lab_client(&pki)
        .post(&uri, Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn an_unresolvable_name_is_a_dns_error() {
    let pki = test_pki();
    let uri: Uri = "https://no-such-host.invalid/".parse().unwrap();
    let error = lab_client(&pki)
        .post(&uri, Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Dns(_)), "{error:?}");
}

#[test]
fn a_bad_ca_file_is_refused_when_building_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [empty, dir.path().join("missing.pem")] {
        let error = ReceiverClient::new(false, Some(&path), TIMEOUT).unwrap_err();
        assert!(
            matches!(error, ReceiverClientError::CaFile { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&*path.to_string_lossy()));
    }
}
