//! The cost of signing (and verifying) one webhook delivery with a 1 KiB body, per scheme.
//!
//! `cargo bench --bench webhook_sign`. The target is under 2 µs to sign. Two bare
//! HMAC-SHA256 computations over the same bytes are measured in the same run: aws-lc's (what
//! signing uses, so the floor; the rest is header building) and the portable `hmac`+`sha2`
//! one, for the ratio that made signing use aws-lc.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use portcullis::webhooks::sign::{sign, verify, Scheme, Secret, DEFAULT_TOLERANCE};
use sha2::Sha256;

const TS: i64 = 1_700_000_000;
const ID: &str = "msg_2b7c1f0e9d8a7b6c5d4e3f20";

fn schemes() -> [Scheme; 3] {
    [
        Scheme::Standard,
        Scheme::Stripe {
            header: HeaderName::from_static("x-klinivo-signature"),
        },
        Scheme::Split {
            id_header: HeaderName::from_static("x-voti-event-id"),
            timestamp_header: HeaderName::from_static("x-voti-timestamp"),
            signature_header: HeaderName::from_static("x-voti-signature"),
        },
    ]
}

fn body() -> Vec<u8> {
    let mut body = br#"{"type":"lab.result","data":{"notes":""#.to_vec();
    body.resize(1024 - 3, b'x');
    body.extend_from_slice(br#""}}"#);
    body
}

fn bench(c: &mut Criterion) {
    let body = body();
    assert_eq!(body.len(), 1024);
    let secret = Secret::generate().expect("secret");
    let second = Secret::generate().expect("secret");

    c.bench_function("aws_lc_hmac_sha256_1KiB_floor", |b| {
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            b"0123456789abcdef0123456789abcdef",
        );
        b.iter(|| black_box(aws_lc_rs::hmac::sign(&key, black_box(&body))))
    });
    c.bench_function("portable_hmac_sha256_1KiB", |b| {
        b.iter(|| {
            let mut mac =
                <Hmac<Sha256> as KeyInit>::new_from_slice(b"0123456789abcdef0123456789abcdef")
                    .expect("any key length");
            mac.update(black_box(&body));
            black_box(mac.finalize())
        })
    });
    for scheme in schemes() {
        let one = [secret.clone()];
        c.bench_function(&format!("sign_{}_1KiB", scheme.name()), |b| {
            b.iter(|| black_box(sign(&scheme, &one, ID, TS, black_box(&body))))
        });
        let two = [secret.clone(), second.clone()];
        c.bench_function(&format!("sign_{}_1KiB_rotating", scheme.name()), |b| {
            b.iter(|| black_box(sign(&scheme, &two, ID, TS, black_box(&body))))
        });
        let headers: HeaderMap = sign(&scheme, &one, ID, TS, &body).into_iter().collect();
        c.bench_function(&format!("verify_{}_1KiB", scheme.name()), |b| {
            b.iter(|| {
                verify(
                    &scheme,
                    &one,
                    &headers,
                    black_box(&body),
                    TS,
                    DEFAULT_TOLERANCE,
                )
                .expect("verifies")
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
