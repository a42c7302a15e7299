//! The cost of the gates at 100,000 keys, and of starting with that many keys.
//!
//! `cargo bench --bench gates`. Peers measured in the same run, for ratios: one HMAC-SHA256
//! of a key secret (the irreducible cryptographic work of a verification) and one hash-map
//! lookup among 100,000 entries (the irreducible index work).

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::config::{Config, SourceText};
use portcullis::gate::ratelimit::Rate;
use portcullis::gate::{authn, gating, scope};
use portcullis::keys::{Env, MintRequest};
use portcullis::orgs::BaaStatus;
use portcullis::policy::Policy;
use portcullis::state::{unix_now, State};
use sha2::Sha256;

const KEYS: usize = 100_000;
const ORGS: usize = 1_000;

const POLICY: &str = r#"
[server]
cert = "cert.pem"
key = "key.pem"
[upstream]
url = "http://127.0.0.1:9"
[[route]]
name = "notes.read"
method = "GET"
path = "/v1/clinical-notes/{id}"
scope = "notes:read"
[[route]]
name = "patients.link"
method = "POST"
path = "/v1/patients/link"
scope = "patients:write"
[[route]]
name = "files"
method = "GET"
path = "/v1/files/{*rest}"
scope = "files:read"
"#;

fn open_state(dir: &Path) -> Arc<State> {
    std::fs::write(dir.join("cert.pem"), "unused").unwrap();
    std::fs::write(dir.join("key.pem"), "unused").unwrap();
    let text = format!(
        "{POLICY}\n[storage]\ndata_dir = \"{}\"\n",
        dir.join("state").display()
    );
    let config = Config::parse(&SourceText::new("bench.toml", text), dir).unwrap();
    State::open(Policy::new(config).unwrap()).unwrap()
}

/// Fills a data directory with `KEYS` live keys over `ORGS` production-ready organizations and
/// returns one of the keys.
fn populate(dir: &Path) -> String {
    let state = open_state(dir);
    let now = unix_now();
    for org in 0..ORGS {
        let id = format!("org-{org}");
        state.orgs.create(&id, "Bench Org", now).unwrap();
        state.orgs.set_hipaa_mode(&id, true).unwrap();
        state
            .orgs
            .record_baa(&id, BaaStatus::Signed, Some("BAA"), "bench", now)
            .unwrap();
    }
    let scopes: BTreeSet<String> = ["notes:read", "patients:read"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let requests = (0..KEYS)
        .map(|i| MintRequest::new(format!("org-{}", i % ORGS), Env::Live, scopes.clone()))
        .collect();
    let minted = state.keys.mint_batch(requests, now).unwrap();
    minted[KEYS / 2].key.expose_secret().to_owned()
}

fn gates(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = populate(dir.path());

    // Start-up: open the store and load every key and organization, as `serve` does.
    let started = Instant::now();
    let state = open_state(dir.path());
    println!(
        "startup: State::open with {} keys took {:?}",
        state.keys.len(),
        started.elapsed()
    );
    assert_eq!(state.keys.len(), KEYS);
    drop(state);
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("open_100k_keys", |b| {
        b.iter(|| drop(black_box(open_state(dir.path()))))
    });
    group.finish();

    let state = open_state(dir.path());
    let policy = state.policies.current();
    let auth = policy.config.auth.clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    headers.insert("accept", HeaderValue::from_static("application/json"));
    let client: IpAddr = "198.51.100.7".parse().unwrap();

    let mut group = c.benchmark_group("gates_100k_keys");
    group.bench_function("authn_gating_route_scope", |b| {
        b.iter(|| {
            let caller = authn::authenticate(black_box(&headers), &state, &auth, client).unwrap();
            gating::check(&caller).unwrap();
            let route = policy
                .route(&Method::GET, black_box("/v1/clinical-notes/n-123"))
                .unwrap()
                .unwrap();
            scope::check(route, &caller.key).unwrap();
        })
    });
    group.bench_function("route_match", |b| {
        b.iter(|| {
            policy
                .route(&Method::GET, black_box("/v1/files/a/b/c.pdf"))
                .unwrap()
        })
    });

    // Peers: the irreducible pieces of the same work.
    let secret = key.rsplit('_').next().unwrap().to_owned();
    group.bench_function("peer_hmac_sha256_of_secret", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
            mac.update(black_box(secret.as_bytes()));
            black_box(mac.finalize())
        })
    });
    let index: HashMap<u32, u64> = (0..KEYS as u32)
        .map(|i| (i.wrapping_mul(2654435761), u64::from(i)))
        .collect();
    group.bench_function("peer_hashmap_lookup_100k", |b| {
        b.iter(|| black_box(index.get(&black_box(50_000u32.wrapping_mul(2654435761)))))
    });
    group.finish();

    // The limiter with 100,000 keys active at once: every key is touched round-robin, with a
    // limit high enough that none is ever refused (a refusal would be cheaper).
    let records = state.keys.list(None);
    let mut limits = policy.config.ratelimit.clone();
    limits.default = Rate::new(1_000_000, 1_000_000).unwrap();
    for record in &records {
        state
            .limits
            .admit_key(record, &limits)
            .record(&mut None)
            .unwrap();
    }
    let peer: governor::DefaultKeyedRateLimiter<u32> = governor::RateLimiter::keyed(
        governor::Quota::per_minute(NonZeroU32::new(1_000_000).unwrap()),
    );
    let mut group = c.benchmark_group("ratelimit_100k_active_keys");
    let mut next = 0usize;
    group.bench_function("admit_key_and_header_status", |b| {
        b.iter(|| {
            next = (next + 1) % records.len();
            let mut shown = None;
            state
                .limits
                .admit_key(&records[next], &limits)
                .record(&mut shown)
                .unwrap();
            black_box(shown)
        })
    });
    let mut next = 0u32;
    group.bench_function("peer_bare_governor_keyed_check", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS as u32;
            black_box(peer.check_key(&next).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, gates);
criterion_main!(benches);
