//! Listener limits and malformed input: every refusal is a problem document or a bounded close.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use portcullis::body::{empty_body, full_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(server: &str) -> Settings {
    Settings {
        server: server.to_owned(),
        ..Settings::default()
    }
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_before_forwarding() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), limits("max_body_bytes = 1024")).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let request = sidecar
            .req(Method::POST, "/v1/echo/x")
            .body(full_body(vec![b'a'; 4096]))
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(problem(&parts, &body)["code"], "request.too_large");
    }
    assert_eq!(backend.hits(), 0);

    let request = sidecar
        .req(Method::POST, "/v1/echo/x")
        .header("idempotency-key", "at-the-limit")
        .body(full_body(vec![b'a'; 1024]))
        .unwrap();
    let (parts, _) = send(&h1_client(sidecar.ca()), request).await;
    assert_eq!(
        parts.status,
        StatusCode::CREATED,
        "a body exactly at the limit passes"
    );
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_cut_off_with_413() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), limits("max_body_bytes = 100000")).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let (tx, upload) = ChannelBody::channel();
        tokio::spawn(async move {
            for _ in 0..64 {
                if tx.send(Bytes::from(vec![b'z'; 16 * 1024])).await.is_err() {
                    return;
                }
            }
        });
        let request = sidecar
            .req(Method::POST, "/v1/echo/x")
            .header("idempotency-key", "streamed-over-the-limit")
            .body(upload)
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(problem(&parts, &body)["code"], "request.too_large");
    }
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(
        &backend.url(),
        limits("max_headers = 20\nmax_header_bytes = 2048"),
    )
    .await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let mut request = sidecar.req(Method::GET, "/v1/echo/x");
        for i in 0..30 {
            request = request.header(format!("x-filler-{i}"), "1");
        }
        let (parts, body) = send(&client, request.body(empty_body()).unwrap()).await;
        assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(problem(&parts, &body)["code"], "request.headers_too_large");

        let request = sidecar
            .req(Method::GET, "/v1/echo/x")
            .header("x-big", "b".repeat(3000))
            .body(empty_body())
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(problem(&parts, &body)["code"], "request.headers_too_large");
    }
    assert_eq!(backend.hits(), 0);
}

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
async fn read_until_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (seen, closed)
}

#[tokio::test]
async fn slow_header_senders_are_disconnected() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), limits("header_read_timeout = \"300ms\"")).await;
    let mut tls = tls_connect(sidecar.addr, sidecar.ca(), &[b"http/1.1"]).await;
    tls.write_all(b"GET /v1/echo/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the connection stayed open past the header read timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn silent_tcp_clients_are_dropped_after_the_handshake_timeout() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), limits("tls_handshake_timeout = \"300ms\"")).await;
    let mut tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    let (_, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a client that never sent a byte kept its connection"
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_problem() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let mut tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.write_all(b"GET /v1/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed);
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/problem+json"));
    assert!(head.contains("x-request-id: "));
    assert!(head.contains("connection: close"));
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["code"], "request.plain_http");
    assert_eq!(json["status"], 400);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_slots_are_reused() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), limits("max_connections = 1")).await;
    let holder = tls_connect(sidecar.addr, sidecar.ca(), &[b"http/1.1"]).await;

    let mut extra = TcpStream::connect(sidecar.addr).await.unwrap();
    let (_, closed) = read_until_close(&mut extra, Duration::from_secs(5)).await;
    assert!(closed, "a connection over the limit was kept");

    drop(holder);
    // The slot frees once the first connection's task ends.
    let client = h1_client(sidecar.ca());
    let mut status = None;
    for _ in 0..50 {
        let request = sidecar
            .req(Method::GET, "/v1/echo/x")
            .body(empty_body())
            .unwrap();
        if let Ok(response) = client.request(request).await {
            status = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(StatusCode::CREATED));
}
