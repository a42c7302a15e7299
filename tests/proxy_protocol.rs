//! PROXY protocol v2 from a trusted load balancer names the client; nobody else can.

mod common;

use std::net::SocketAddr;

use common::*;
use http::{Request, StatusCode};
use portcullis::body::empty_body;
use portcullis::keys::{parse_key, Env, KeyChanges};
use portcullis::server::proxy_protocol;
use portcullis::state::unix_now;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CLIENT: &str = "203.0.113.9:51000";

async fn sidecar_behind_load_balancer() -> (
    Backend,
    std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    Sidecar,
    String,
) {
    let (backend, seen) = Backend::recording().await;
    let settings = Settings {
        server: "trusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    // A key that may only be used from the client's network, not the load balancer's.
    let fenced = mint(&sidecar.state, TEST_ORG, Env::Test, &[]);
    let changes = KeyChanges {
        allow_cidrs: Some(vec!["203.0.113.0/24".parse().unwrap()]),
        ..KeyChanges::default()
    };
    let id = parse_key(&fenced).unwrap().id();
    sidecar.state.keys.update(id, &changes, unix_now()).unwrap();
    (backend, seen, sidecar, fenced)
}

fn request(sidecar: &Sidecar, key: &str) -> Request<portcullis::body::ProxyBody> {
    Request::get("/v1/echo/x")
        .header("host", format!("localhost:{}", sidecar.addr.port()))
        .header("authorization", format!("Bearer {key}"))
        .header("x-forwarded-for", "198.51.100.66")
        .body(empty_body())
        .unwrap()
}

#[tokio::test]
async fn the_header_from_a_trusted_peer_names_the_client() {
    let (_backend, seen, sidecar, fenced) = sidecar_behind_load_balancer().await;
    let mut tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    let client: SocketAddr = CLIENT.parse().unwrap();
    tcp.write_all(&proxy_protocol::encode(client, sidecar.addr))
        .await
        .unwrap();
    let tls = tls_over(tcp, sidecar.ca(), &[b"http/1.1"]).await.unwrap();
    let (parts, _) = send_over(tls, request(&sidecar, &fenced)).await.unwrap();
    assert_eq!(parts.status, StatusCode::CREATED);
    // The client's own X-Forwarded-For is not believed: the client is not a trusted proxy.
    assert_eq!(
        seen.lock().unwrap()[0].headers["x-forwarded-for"],
        "203.0.113.9"
    );
}

#[tokio::test]
async fn a_local_header_keeps_the_peer_address() {
    let (_backend, _, sidecar, fenced) = sidecar_behind_load_balancer().await;
    let mut tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    let mut local = proxy_protocol::SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    tcp.write_all(&local).await.unwrap();
    let tls = tls_over(tcp, sidecar.ca(), &[b"http/1.1"]).await.unwrap();
    let (parts, body) = send_over(tls, request(&sidecar, &fenced)).await.unwrap();
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(problem(&parts, &body)["code"], "ip.denied");
}

#[tokio::test]
async fn a_trusted_peer_without_a_header_is_refused() {
    let (backend, _, sidecar, _) = sidecar_behind_load_balancer().await;
    let tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    assert!(tls_over(tcp, sidecar.ca(), &[b"http/1.1"]).await.is_err());
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn headers_from_untrusted_peers_are_never_read() {
    let (backend, _) = Backend::recording().await;
    let settings = Settings {
        server: "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true".to_owned(),
        ..Settings::default()
    };
    let sidecar = Sidecar::start(&backend.url(), settings).await;
    let mut tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.write_all(&proxy_protocol::encode(
        CLIENT.parse().unwrap(),
        sidecar.addr,
    ))
    .await
    .unwrap();
    assert!(tls_over(tcp, sidecar.ca(), &[b"http/1.1"]).await.is_err());
    // A direct client of an untrusted address is served as itself.
    let (parts, _) = sidecar.get(&h1_client(sidecar.ca()), "/v1/echo/x").await;
    assert_eq!(parts.status, StatusCode::CREATED);
}
