//! Webhook delivery figures: how many deliveries per second the worker completes to a local
//! HTTPS receiver, and how long `POST /events` takes with the outbox flush.
//!
//! Phase 0 measures the peer: the same number of bare POSTs through the same receiver client,
//! as many connections as the worker may use, nothing else. Phase 1 fills the outbox with `DELIVERIES` pending deliveries (events fanned out to
//! `SUBSCRIPTIONS` subscriptions of one organization, all pointing at one in-process HTTPS
//! receiver that answers `204` at once), then starts the real worker and measures until every
//! delivery is both received and recorded as delivered. Phase 2 posts `EVENTS` events through
//! the real internal listener (HTTP/1.1 keep-alive, one subscription matching, so every event
//! is written and flushed before its `202`), one client at a time and eight at once, first
//! with the worker stopped and then with it delivering, and reports latency percentiles. Run it in release
//! mode on the machine in question:
//!
//! ```text
//! cargo run --release --example webhook_throughput -- [DELIVERIES] [SUBSCRIPTIONS] [EVENTS] \
//!     [ENDPOINT_CONCURRENCY] [MAX_IN_FLIGHT]
//! ```
//!
//! Defaults: 20,000 deliveries, 8 subscriptions, 2,000 events, 2 per endpoint, 256 in all.
//! The receiver client keeps at most 16 idle connections per host, so more than 16 attempts
//! in flight to the one local receiver pay for new TLS handshakes.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config::{Config, SourceText};
use portcullis::internal::InternalServer;
use portcullis::policy::Policy;
use portcullis::state::{unix_now, State};
use portcullis::webhooks::delivery::DeliveryStatus;
use portcullis::webhooks::destination::ReceiverClient;
use portcullis::webhooks::outbox::NewEvent;
use tokio::net::TcpListener;

const TOKEN: &str = "bench-ingest-token-0123456789";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let deliveries: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let subscriptions: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    let events: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let endpoint_concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let max_in_flight: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);

    let dir = tempfile::tempdir()?;
    let pki =
        portcullis::pki::generate_dev_pki(&dir.path().join("certs"), &["localhost", "127.0.0.1"])?;
    let received = Arc::new(AtomicU64::new(0));
    let receiver_port = receiver(&pki, received.clone()).await?;
    let token = dir.path().join("ingest.token");
    std::fs::write(&token, TOKEN)?;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
         [upstream]\nurl = \"http://127.0.0.1:9\"\n\n[storage]\ndata_dir = \"{data}\"\n\n\
         [audit]\nenabled = false\n\n\
         [webhooks]\nenabled = true\nevent_types = [\"bench.event\", \"bench.ingest\"]\n\
         ingest_token_file = \"{token}\"\nallow_private_destinations = true\nca_file = \"{ca}\"\n\
         endpoint_concurrency = {endpoint_concurrency}\nmax_in_flight = {max_in_flight}\n\n\
         [[route]]\nname = \"echo\"\nmethod = \"GET\"\npath = \"/v1/echo\"\nany_key = true\n",
        cert = pki.cert.display(),
        key = pki.key.display(),
        data = dir.path().display(),
        token = token.display(),
        ca = pki.ca.display(),
    );
    let config = Config::parse(&SourceText::new("bench.toml", text), dir.path())?;
    let state = State::open(Policy::new(config)?)?;
    state.orgs.create("bench", "Bench", unix_now())?;
    let url: http::Uri = format!("https://localhost:{receiver_port}/hook").parse()?;
    let mut ids = Vec::new();
    for _ in 0..subscriptions {
        let created = state.subscriptions.create(
            "bench",
            &url,
            BTreeSet::from(["bench.event".to_owned()]),
            unix_now() as i64,
            1_000,
        )?;
        ids.push(created.subscription.id.to_string());
    }
    let ingest_sub = state.subscriptions.create(
        "bench",
        &url,
        BTreeSet::from(["bench.ingest".to_owned()]),
        unix_now() as i64,
        1_000,
    )?;
    drop(ingest_sub);

    // Phase 0, the peer: the same number of POSTs of the same body to the same receiver,
    // through the same receiver client and as many connections as the worker may use, with
    // nothing else (no outbox, no signing, no records): the transport's ceiling here.
    let data = br#"{"note":{"id":"n-1","status":"signed","author":"dr-42","pages":3}}"#;
    let per_event = ids.len() as u64;
    let total = deliveries.div_ceil(per_event) * per_event;
    let connections = (subscriptions as usize * endpoint_concurrency).min(max_in_flight);
    let bare = ReceiverClient::new(true, Some(&pki.ca), Duration::from_secs(15))?;
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut posters = Vec::new();
    for _ in 0..connections {
        let (bare, claimed, url) = (bare.clone(), claimed.clone(), url.clone());
        posters.push(tokio::spawn(async move {
            while claimed.fetch_add(1, Ordering::SeqCst) < total {
                let answer = bare
                    .post(&url, Vec::new(), Bytes::from_static(data))
                    .await
                    .expect("the receiver answers");
                assert_eq!(answer.status, StatusCode::NO_CONTENT);
            }
        }));
    }
    for poster in posters {
        poster.await?;
    }
    let peer = started.elapsed();
    println!(
        "peer: {total} bare POSTs over {connections} connections (same client, receiver and \
         body): {:.2} s = {:.0}/s",
        peer.as_secs_f64(),
        total as f64 / peer.as_secs_f64(),
    );
    let baseline = received.load(Ordering::SeqCst);

    // Phase 1: a full outbox, then the worker.
    let fill = Instant::now();
    for _ in 0..deliveries.div_ceil(per_event) {
        let event = NewEvent {
            org: "bench",
            event_type: "bench.event",
            data,
        };
        state
            .deliveries
            .outbox()
            .accept(&event, &ids, state.deliveries.now_ms())?;
    }
    println!(
        "outbox filled with {total} deliveries in {:.2} s",
        fill.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let worker = portcullis::webhooks::worker::start(&state);
    while received.load(Ordering::SeqCst) < baseline + total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = started.elapsed();
    loop {
        let outbox = state.deliveries.outbox().clone();
        let pending =
            tokio::task::spawn_blocking(move || outbox.count(DeliveryStatus::Pending)).await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recorded = started.elapsed();
    println!(
        "worker: {total} deliveries to {subscriptions} subscriptions x {endpoint_concurrency} in flight \
         (one local HTTPS receiver): \
         all received in {:.2} s = {:.0}/s; all recorded delivered in {:.2} s = {:.0}/s \
         ({:.2}x the peer's time)",
        sent.as_secs_f64(),
        total as f64 / sent.as_secs_f64(),
        recorded.as_secs_f64(),
        total as f64 / recorded.as_secs_f64(),
        recorded.as_secs_f64() / peer.as_secs_f64(),
    );

    // Phase 2: ingest latency with the flush, while the worker delivers what comes in.
    let internal = InternalServer::bind(state.clone(), "127.0.0.1:0".parse()?)
        .await?
        .spawn();
    let port = internal.local_addr().port();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // First with the worker stopped (the ingest path alone), then with it delivering what
    // comes in (ingest and delivery share the cores).
    drop(worker);
    let mut worker = None;
    for (concurrency, delivering) in [(1usize, false), (8, false), (1, true), (8, true)] {
        if delivering && worker.is_none() {
            worker = Some(portcullis::webhooks::worker::start(&state));
        }
        let mut tasks = Vec::new();
        let started = Instant::now();
        for _ in 0..concurrency {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(events / concurrency);
                for _ in 0..events / concurrency {
                    let body =
                        r#"{"org":"bench","type":"bench.ingest","data":{"note":{"id":"n-1"}}}"#;
                    let request = Request::post(format!("http://127.0.0.1:{port}/events"))
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("request");
                    let sent = Instant::now();
                    let response = client.request(request).await.expect("answer");
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    latencies.push(sent.elapsed());
                    assert_eq!(status, StatusCode::ACCEPTED);
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await?);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "ingest, {concurrency} client(s), worker {}: {} events in {:.2} s ({:.0}/s); \
             latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if delivering { "delivering" } else { "stopped" },
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    drop(worker);
    internal.stop().await;
    Ok(())
}

/// An HTTPS receiver answering `204` at once; counts requests.
async fn receiver(
    pki: &portcullis::pki::DevPki,
    received: Arc<AtomicU64>,
) -> Result<u16, Box<dyn std::error::Error>> {
    let certified = portcullis::server::tls::load_certified_key(&pki.cert, &pki.key)?;
    let resolver = Arc::new(portcullis::server::tls::CertResolver::new(certified));
    let mut config = (*portcullis::server::tls::server_config(resolver)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let received = received.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let received = received.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        received.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(StatusCode::NO_CONTENT)
                                .body(Empty::<Bytes>::new())
                                .expect("response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}
