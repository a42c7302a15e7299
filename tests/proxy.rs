//! Forwarding through the real TLS listener, over HTTP/1.1 and HTTP/2.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use portcullis::body::{empty_body, full_body};
use sha2::{Digest, Sha256};

async fn forwards_everything_both_ways(h2: bool) {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = if h2 {
        h2_client(sidecar.ca())
    } else {
        h1_client(sidecar.ca())
    };
    let request = sidecar
        .req(Method::PUT, "/v1/echo/a/b?x=1&y=%20z")
        .header("idempotency-key", "forwards-everything")
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .body(full_body(Bytes::from_static(b"{\"hello\":1}")))
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(
        parts.version,
        if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    );
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(&body[..], b"{\"hello\":1}");
    assert_eq!(parts.headers["x-backend-answer"], "yes");
    let request_id = parts.headers["x-request-id"].to_str().unwrap().to_owned();

    let seen = seen.lock().unwrap().pop().expect("backend saw the request");
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/v1/echo/a/b?x=1&y=%20z");
    assert_eq!(&seen.body[..], b"{\"hello\":1}");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["idempotency-key"], "forwards-everything");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    let authority = format!("localhost:{}", sidecar.addr.port());
    assert_eq!(seen.headers["x-forwarded-host"], authority.as_str());
    assert_eq!(seen.headers["x-request-id"], request_id.as_str());
    assert_eq!(seen.headers["host"], backend.addr.to_string().as_str());
}

#[tokio::test]
async fn forwards_method_path_query_body_status_and_headers_over_http1() {
    forwards_everything_both_ways(false).await;
}

#[tokio::test]
async fn forwards_method_path_query_body_status_and_headers_over_http2() {
    forwards_everything_both_ways(true).await;
}

#[tokio::test]
async fn upstream_path_prefix_is_prepended() {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(
        &format!("{}/legacy/api/", backend.url()),
        Settings::default(),
    )
    .await;
    let client = h1_client(sidecar.ca());
    let (parts, _) = sidecar.get(&client, "/v1/echo/x?q=1").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(seen.lock().unwrap()[0].uri, "/legacy/api/v1/echo/x?q=1");
}

#[tokio::test]
async fn request_id_is_kept_when_uuid_shaped_and_replaced_otherwise() {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());

    let uuid = "7d444840-9dc0-11d1-b245-5ffdce74fad2";
    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .header("x-request-id", uuid)
        .body(empty_body())
        .unwrap();
    let (parts, _) = send(&client, request).await;
    assert_eq!(parts.headers["x-request-id"], uuid);
    assert_eq!(seen.lock().unwrap()[0].headers["x-request-id"], uuid);

    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .header("x-request-id", "Jane Doe MRN 0042")
        .body(empty_body())
        .unwrap();
    let (parts, _) = send(&client, request).await;
    let issued = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(issued, "Jane Doe MRN 0042");
    assert_eq!(issued.len(), 36);
    assert_eq!(
        seen.lock().unwrap()[1].headers["x-request-id"],
        issued.as_str()
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let backend = Backend::start(handler(|request| async move {
        let hop_seen = [
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "te",
            "upgrade",
        ]
        .iter()
        .filter(|name| request.headers().contains_key(**name))
        .count();
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "secret")
            .header("x-hop-seen", hop_seen.to_string())
            .header("x-end-to-end", "kept")
            .body(empty_body())
            .unwrap()
    }))
    .await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .body(empty_body())
        .unwrap();
    let (parts, _) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(
        parts.headers["x-hop-seen"], "0",
        "hop-by-hop request headers reached the backend"
    );
    assert!(
        !parts.headers.contains_key("x-resp-hop"),
        "a Connection-named response header leaked"
    );
    assert_eq!(parts.headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn spoofed_identity_is_replaced_and_the_credential_is_not_forwarded() {
    let (backend, seen) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h2_client(sidecar.ca());
    let request = sidecar
        .req(Method::GET, "/v1/echo/x")
        .header("x-portcullis-org", "another-hospital")
        .header("x-portcullis-scopes", "admin")
        .header("x-portcullis-anything", "spoofed")
        .header("x-forwarded-for", "10.9.9.9")
        .header("forwarded", "for=10.9.9.9")
        .body(empty_body())
        .unwrap();
    let (parts, _) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    let seen = seen.lock().unwrap().pop().unwrap();
    let key_id = sidecar.key.split('_').nth(2).unwrap();
    assert_eq!(seen.headers["x-portcullis-org"], TEST_ORG);
    assert_eq!(seen.headers["x-portcullis-key-id"], key_id);
    assert_eq!(seen.headers["x-portcullis-env"], "test");
    assert_eq!(seen.headers["x-portcullis-scopes"], "notes:read");
    assert!(!seen.headers.contains_key("x-portcullis-anything"));
    assert_eq!(seen.headers.get_all("x-portcullis-org").iter().count(), 1);
    assert!(
        !seen.headers.contains_key("authorization"),
        "the partner's credential reached the backend"
    );
    assert!(!seen.headers.contains_key("forwarded"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    // The backend hashes what it receives and answers with a large generated body.
    let backend = Backend::start(handler(|request| async move {
        let mut hasher = Sha256::new();
        let mut body = request.into_body();
        let mut length = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                length += data.len();
                hasher.update(&data);
            }
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (tx, answer) = ChannelBody::channel();
        tokio::spawn(async move {
            for i in 0..32u8 {
                if tx.send(Bytes::from(vec![i; 1024 * 1024])).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("x-received-length", length.to_string())
            .header("x-received-sha256", digest)
            .body(answer)
            .unwrap()
    }))
    .await;
    // Uploads on a route that opts out of idempotency keys stream instead of being held.
    let routes = DEFAULT_ROUTES.replace(
        "name = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{*rest}\"\nany_key = true\n",
        "name = \"echo.post\"\nmethod = \"POST\"\npath = \"/v1/echo/{*rest}\"\nany_key = true\nidempotency = false\n",
    );
    assert_ne!(routes, DEFAULT_ROUTES, "the POST route was found");
    let settings = Settings {
        server: "max_body_bytes = 33554432".to_owned(),
        routes,
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    for client in [h1_client(sidecar.ca()), h2_client(sidecar.ca())] {
        let (tx, upload) = ChannelBody::channel();
        let mut expected = Sha256::new();
        let chunks: Vec<Bytes> = (0..16u8)
            .map(|i| Bytes::from(vec![i ^ 0x5a; 512 * 1024]))
            .collect();
        for chunk in &chunks {
            expected.update(chunk);
        }
        tokio::spawn(async move {
            for chunk in chunks {
                tx.send(chunk).await.unwrap();
            }
        });
        let request = sidecar
            .req(Method::POST, "/v1/echo/upload")
            .body(upload)
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-received-length"],
            (8 * 1024 * 1024).to_string().as_str()
        );
        let digest: String = expected
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(response.headers()["x-received-sha256"], digest.as_str());
        let mut body = response.into_body();
        let mut downloaded = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                downloaded += data.len();
            }
        }
        assert_eq!(downloaded, 32 * 1024 * 1024);
    }
}

#[tokio::test]
async fn response_bytes_reach_the_client_before_the_backend_finishes() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let backend = Backend::start(handler(move |_request| {
        let mut release = release_rx.clone();
        async move {
            let (tx, body) = ChannelBody::channel();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first chunk;")).await.unwrap();
                let _ = release.wait_for(|go| *go).await;
                tx.send(Bytes::from_static(b"second chunk")).await.unwrap();
            });
            Response::new(body)
        }
    }))
    .await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    let response = client
        .request(
            sidecar
                .req(Method::GET, "/v1/echo/stream")
                .body(empty_body())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        &first[..],
        b"first chunk;",
        "the first chunk arrived while the backend still held the rest"
    );
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second chunk");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_404_route_unknown() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    for (method, path) in [
        ("GET", "/v1/nothing-here"),
        ("PATCH", "/v1/echo/x"),
        ("GET", "/v1/echo"),
    ] {
        let request = sidecar
            .req(method.parse().unwrap(), path)
            .body(empty_body())
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(problem(&parts, &body)["code"], "route.unknown");
    }
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn ambiguous_paths_are_refused_without_echoing_them() {
    let (backend, _) = Backend::recording().await;
    let sidecar = Sidecar::start(&backend.url(), Settings::default()).await;
    let client = h1_client(sidecar.ca());
    for path in [
        "/v1/echo/%2e%2e/admin",
        "/v1/echo/a%2Fb",
        "/v1/echo//x",
        "/v1/echo/%zz",
    ] {
        let (parts, body) = sidecar.get(&client, path).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{path}");
        let json = problem(&parts, &body);
        assert_eq!(json["code"], "request.invalid_path");
        assert!(!String::from_utf8_lossy(&body).contains("admin"));
    }
    assert_eq!(backend.hits(), 0);
}
