//! Backend faults, https backends and the graceful drain.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, Response, StatusCode};
use portcullis::body::{empty_body, full_body};
use tokio::sync::Notify;

#[tokio::test]
async fn backend_down_gives_502_upstream_unavailable() {
    // Bind and release a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sidecar = Sidecar::start(&format!("http://127.0.0.1:{port}"), Settings::default()).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let (parts, body) = sidecar.get(&client, "/v1/echo/x").await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert_eq!(problem(&parts, &body)["code"], "upstream.unavailable");
    }
}

#[tokio::test]
async fn backend_reset_mid_exchange_gives_502() {
    // A backend that accepts, reads a little and hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
            drop(tcp);
        }
    });
    let sidecar = Sidecar::start(&format!("http://{addr}"), Settings::default()).await;
    let (parts, body) = sidecar.get(&h1_client(sidecar.ca()), "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem(&parts, &body)["code"], "upstream.unavailable");
}

#[tokio::test]
async fn slow_backend_gives_504_upstream_timeout() {
    let backend = Backend::start(handler(|_request| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(empty_body())
    }))
    .await;
    let settings = Settings {
        upstream: "response_timeout = \"300ms\"".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let started = Instant::now();
    let (parts, body) = sidecar.get(&h1_client(sidecar.ca()), "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(problem(&parts, &body)["code"], "upstream.timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn https_backends_are_verified_against_the_configured_ca() {
    let backend_pki = test_pki();
    let backend = Backend::start_tls(
        handler(|_request| async { Response::new(full_body("over tls")) }),
        &backend_pki,
    )
    .await;
    let url = format!("https://localhost:{}", backend.addr.port());

    let trusted = Settings {
        upstream: format!("ca_file = \"{}\"", backend_pki.paths.ca.display()),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&url, trusted).await;
    let (parts, body) = sidecar.get(&h1_client(sidecar.ca()), "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(&body[..], b"over tls");

    // Without the backend's CA the certificate is not trusted and nothing is sent.
    let untrusted = Sidecar::start(&url, Settings::default()).await;
    let (parts, body) = untrusted
        .get(&h1_client(untrusted.ca()), "/v1/echo/x")
        .await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem(&parts, &body)["code"], "upstream.unavailable");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let arrived = Arc::new(Notify::new());
    let signal = arrived.clone();
    let backend = Backend::start(handler(move |_request| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            Response::new(full_body("finished"))
        }
    }))
    .await;
    let mut sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h2_client(sidecar.ca());
    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .body(empty_body())
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client
            .request(request)
            .await
            .expect("in-flight request answered");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, body)
    });
    arrived.notified().await;
    sidecar.begin_shutdown();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"finished");
    tokio::time::timeout(Duration::from_secs(5), sidecar.stopped())
        .await
        .expect("serve returned after the drain");
    assert!(
        tokio::net::TcpStream::connect(sidecar.addr).await.is_err(),
        "the listener still accepts after shutdown"
    );
}

#[tokio::test]
async fn drain_is_bounded_by_drain_timeout() {
    let arrived = Arc::new(Notify::new());
    let signal = arrived.clone();
    let backend = Backend::start(handler(move |_request| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(empty_body())
        }
    }))
    .await;
    let settings = Settings {
        server: "drain_timeout = \"300ms\"".to_owned(),
        ..Settings::default()
    };
    let mut sidecar = Sidecar::start(&backend.url(), settings).await;
    let client = h1_client(sidecar.ca());
    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .body(empty_body())
        .unwrap();
    let _in_flight = tokio::spawn(async move { client.request(request).await });
    arrived.notified().await;
    let started = Instant::now();
    sidecar.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), sidecar.stopped())
        .await
        .expect("the drain gave up after drain_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}
