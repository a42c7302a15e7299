//! The cost of counting one answered request, against a peer doing the irreducible work.
//!
//! `cargo bench --bench metrics`. `Metrics::request` interns the route name, finds the series
//! of (route, status, code) and observes the latency histogram; the peer is one bare atomic
//! increment plus one `HashMap` lookup of the same key, which any per-series counter needs.
//! The scrape is measured too, with 200 routes' worth of series.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::metrics::Metrics;
use portcullis::problem::ProblemCode;

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let routes: Vec<String> = (0..200).map(|i| format!("route.{i}")).collect();
    for route in &routes {
        for status in [200, 201, 404] {
            metrics.request(route, status, None, Duration::from_millis(2));
        }
        metrics.request(
            route,
            403,
            Some(ProblemCode::PermDenied),
            Duration::from_millis(1),
        );
    }
    let mut group = c.benchmark_group("metrics");
    group.bench_function("count one request (existing series)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % routes.len();
            metrics.request(
                black_box(&routes[i]),
                black_box(200),
                None,
                black_box(Duration::from_micros(1500)),
            );
        })
    });

    let peer: HashMap<(String, u16), AtomicU64> = routes
        .iter()
        .map(|route| ((route.clone(), 200), AtomicU64::new(0)))
        .collect();
    let keys: Vec<(String, u16)> = routes.iter().map(|route| (route.clone(), 200)).collect();
    group.bench_function("peer: hash lookup + atomic increment", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % keys.len();
            if let Some(counter) = peer.get(black_box(&keys[i])) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    });

    group.bench_function("render 800 request series", |b| {
        b.iter(|| black_box(metrics.render().map(|text| text.len())))
    });
    group.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
