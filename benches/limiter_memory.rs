//! Memory of the whole process while 1,000,000 distinct keys come and go through the rate
//! limiter, with idle buckets shed on the same schedule `serve` uses.
//!
//! `cargo bench --bench limiter_memory`. Prints the resident set size (VmRSS) as it goes; the
//! target is that it stays flat, under 64 MiB, however many keys have passed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::{Config, SourceText};
use portcullis::gate::ratelimit::{ManualClock, Rate};
use portcullis::keys::{Env, KeyRecord, KeyStatus};
use portcullis::policy::Policy;
use portcullis::state::State;

const DISTINCT_KEYS: u32 = 1_000_000;
const WAVE: u32 = 50_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn open_state(dir: &Path, clock: &Arc<ManualClock>) -> Arc<State> {
    std::fs::write(dir.join("cert.pem"), "unused").unwrap();
    std::fs::write(dir.join("key.pem"), "unused").unwrap();
    let policy = "[server]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    let text = format!(
        "{policy}[storage]\ndata_dir = \"{}\"\n",
        dir.join("state").display()
    );
    let config = Config::parse(&SourceText::new("bench.toml", text), dir).unwrap();
    State::open_with_clock(Policy::new(config).unwrap(), clock.limit_clock()).unwrap()
}

fn record(id: u32) -> KeyRecord {
    let json = serde_json::json!({
        "id": format!("{id:08x}"),
        "org": "bench",
        "env": Env::Live,
        "scopes": BTreeSet::<String>::new(),
        "created_at": 0,
        "status": KeyStatus::Active,
        "hash": "00".repeat(32),
        "namespace": "pcl",
    });
    serde_json::from_value(json).unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(1_800_000_000);
    let state = open_state(dir.path(), &clock);
    let mut config = state.policies.current().config.ratelimit.clone();
    config.default = Rate::new(600, 50).unwrap();
    println!("start: RSS {:.1} MiB", rss_mib());
    let mut peak = 0.0f64;
    for wave in 0..DISTINCT_KEYS / WAVE {
        for i in 0..WAVE {
            let key = record(wave * WAVE + i);
            let _ = state.limits.admit_key(&key, &config).record(&mut None);
        }
        let active = state.limits.buckets_in_memory();
        let rss_active = rss_mib();
        peak = peak.max(rss_active);
        // A minute later every bucket of this wave is full again and may be shed.
        clock.advance(Duration::from_secs(60));
        state.limits.shed_idle();
        if (wave + 1) % 4 == 0 {
            println!(
                "after {:>9} distinct keys: RSS {rss_active:.1} MiB with {active} buckets active, \
                 {:.1} MiB after shedding ({} held)",
                (wave + 1) * WAVE,
                rss_mib(),
                state.limits.buckets_in_memory()
            );
        }
    }
    println!("peak RSS {peak:.1} MiB for {DISTINCT_KEYS} distinct keys (target < 64 MiB)");
}
