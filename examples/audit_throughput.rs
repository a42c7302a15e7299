//! How many audit records per second the writer makes durable.
//!
//! Producers feed request records through the same path requests use (admit, fill in, finish)
//! as fast as they can; the writer collects them per commit interval, writes and
//! `fdatasync`s each batch, indexes it in the state store and releases the queue slots. The
//! figure is records made durable and indexed per second, measured until the final flush
//! returns. Run it in release mode on the machine in question:
//!
//! ```text
//! cargo run --release --example audit_throughput -- [RECORDS] [PRODUCERS] [DIR]
//! ```
//!
//! `DIR` (default: a temporary directory) should be on the disk the audit trail will use.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis::audit::chain::ChainKey;
use portcullis::audit::{files, verify, Audit};
use portcullis::config::AuditConfig;
use portcullis::keys::{Env, KeyRegistry, MintRequest, Pepper};
use portcullis::request_id::RequestId;
use portcullis::state::unix_now;
use portcullis::store::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let producers: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let scratch = tempfile::tempdir()?;
    let root = args
        .next()
        .map_or_else(|| scratch.path().to_owned(), PathBuf::from);

    let store = Store::open(&root.join("data"))?;
    let pepper = Pepper::load_or_create(&root.join("pepper"))?;
    let keys = KeyRegistry::load(&store, pepper, "pcl")?;
    let scopes = ["notes:read".to_owned()].into_iter().collect();
    let key = keys
        .mint(MintRequest::new("acme", Env::Test, scopes), unix_now())?
        .record;
    let config = AuditConfig {
        dir: root.join("audit"),
        ..AuditConfig::default()
    };
    let audit = Arc::new(Audit::open(&store, &config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(producers)?.max(1))
        .enable_all()
        .build()?;

    let started = Instant::now();
    let refused = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let audit = audit.clone();
            let config = config.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
                let mut refused = 0u64;
                for _ in 0..records / producers {
                    let id = RequestId::generate();
                    match audit
                        .admit(&id, &Method::GET, peer, &config, Instant::now())
                        .await
                    {
                        Ok(mut record) => {
                            record.caller(&key);
                            record.policy_route("notes.read");
                            record.finish(StatusCode::OK, None);
                        }
                        Err(_) => refused += 1,
                    }
                }
                refused
            }));
        }
        let mut refused = 0;
        for task in tasks {
            refused += task.await.unwrap_or(0);
        }
        if let Err(error) = audit.flush().await {
            eprintln!("flush failed: {error}");
        }
        refused
    });
    let elapsed = started.elapsed();
    let written = (records / producers) * producers - refused;
    let bytes: u64 = files::list(&config.dir)?
        .iter()
        .map(|f| std::fs::metadata(&f.path).map_or(0, |m| m.len()))
        .sum();
    let verified = verify::verify(std::slice::from_ref(&config.dir), &ChainKey::plain())?;
    let indexed = audit
        .index()
        .map_or(0, |index| index.newest_first("acme", None).count());
    println!(
        "{written} records ({refused} refused) in {:.2} s: {:.0} records/s durable and indexed, \
         {:.1} MiB/s of audit lines ({} bytes/record); {} records verify, {indexed} indexed",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64().max(f64::EPSILON),
        bytes / written.max(1),
        verified.records,
    );
    drop(runtime);
    drop(audit);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
