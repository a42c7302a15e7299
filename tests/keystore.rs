//! The key store as a whole, through the public API only: state survives a restart, and no
//! file the sidecar writes ever holds a key's secret.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use portcullis::admin_log::{AdminActionKind, AdminLog};
use portcullis::keys::{
    Env, KeyRegistry, KeyStatus, MintRequest, Pepper, RevokeReason, VerifyError,
};
use portcullis::orgs::{BaaStatus, OrgRegistry};
use portcullis::store::Store;

const NOW: u64 = 1_700_000_000;

struct Sidecar {
    keys: KeyRegistry,
    orgs: OrgRegistry,
    log: AdminLog,
}

/// Opens everything the way `serve` does: store, pepper file, registries, log.
fn start(data_dir: &Path) -> Sidecar {
    let store = Store::open(data_dir).unwrap();
    let pepper = Pepper::load_or_create(&data_dir.join("pepper")).unwrap();
    Sidecar {
        keys: KeyRegistry::load(&store, pepper, "voti").unwrap(),
        orgs: OrgRegistry::load(&store).unwrap(),
        log: AdminLog::open(&store).unwrap(),
    }
}

fn scopes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The 20 random bytes behind a 40-character hex secret.
fn raw(secret: &str) -> Vec<u8> {
    (0..secret.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (live_key, rotated_key, revoked_key, live_id, revoked_id) = {
        let sidecar = start(dir.path());
        sidecar.orgs.create("acme", "Acme Health", NOW).unwrap();
        sidecar.orgs.set_hipaa_mode("acme", true).unwrap();
        sidecar
            .orgs
            .record_baa(
                "acme",
                BaaStatus::Signed,
                Some("MSA-2024-117"),
                "alice",
                NOW + 1,
            )
            .unwrap();
        sidecar
            .log
            .append(
                AdminActionKind::OrgCreated,
                "alice",
                "acme",
                Some("acme"),
                NOW,
            )
            .unwrap();

        let live = sidecar
            .keys
            .mint(
                MintRequest::new("acme", Env::Live, scopes(&["notes:read"])),
                NOW,
            )
            .unwrap();
        let rotated = sidecar
            .keys
            .mint(MintRequest::new("acme", Env::Test, BTreeSet::new()), NOW)
            .unwrap();
        let rotated = sidecar
            .keys
            .rotate(rotated.record.id, Duration::from_secs(600), NOW + 2)
            .unwrap();
        let revoked = sidecar
            .keys
            .mint(MintRequest::new("acme", Env::Test, BTreeSet::new()), NOW)
            .unwrap();
        sidecar
            .keys
            .revoke(revoked.record.id, RevokeReason::Admin, NOW + 3)
            .unwrap();
        let entry = sidecar
            .log
            .append(
                AdminActionKind::KeyRevoked,
                "alice",
                &revoked.record.id.to_string(),
                Some("acme"),
                NOW + 3,
            )
            .unwrap();
        assert_eq!(entry.seq, 2);
        (
            live.key.expose_secret().to_owned(),
            rotated.key.expose_secret().to_owned(),
            revoked.key.expose_secret().to_owned(),
            live.record.id,
            revoked.record.id,
        )
    };

    let sidecar = start(dir.path());
    assert_eq!(sidecar.keys.len(), 3);
    let record = sidecar.keys.verify(&live_key, NOW + 10).unwrap();
    assert_eq!(record.id, live_id);
    assert_eq!(record.scopes, scopes(&["notes:read"]));
    assert!(sidecar.keys.verify(&rotated_key, NOW + 10).is_ok());
    assert_eq!(
        sidecar
            .keys
            .verify(&revoked_key, NOW + 10)
            .unwrap_err()
            .error,
        VerifyError::Revoked
    );
    assert!(matches!(
        sidecar.keys.get(revoked_id).unwrap().status,
        KeyStatus::Revoked { at, reason: RevokeReason::Admin } if at == NOW + 3
    ));

    let acme = sidecar.orgs.get("acme").unwrap();
    assert_eq!(acme.name, "Acme Health");
    assert_eq!(acme.production_ready(), Ok(()));
    assert_eq!(acme.baa.reference.as_deref(), Some("MSA-2024-117"));
    assert_eq!(acme.baa.recorded_by.as_deref(), Some("alice"));
    assert_eq!(acme.baa.recorded_at, Some(NOW + 1));

    let next = sidecar
        .log
        .append(
            AdminActionKind::KeyMinted,
            "bob",
            "0a1b2c3d",
            Some("acme"),
            NOW + 20,
        )
        .unwrap();
    assert_eq!(next.seq, 3);
    let history = sidecar.log.list(10).unwrap();
    let seqs: Vec<u64> = history.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, [3, 2, 1]);
    assert_eq!(history[1].target, revoked_id.to_string());
}

#[test]
fn no_file_holds_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    {
        let sidecar = start(dir.path());
        sidecar.orgs.create("acme", "Acme", NOW).unwrap();
        for n in 0..20 {
            let minted = sidecar
                .keys
                .mint(MintRequest::new("acme", Env::Test, scopes(&["a"])), NOW + n)
                .unwrap();
            let rotated = sidecar
                .keys
                .rotate(minted.record.id, Duration::from_secs(60), NOW + n)
                .unwrap();
            sidecar.keys.touch(minted.record.id, NOW + 100 + n).unwrap();
            ids.push(minted.record.display_prefix());
            for key in [minted.key, rotated.key] {
                let text = key.expose_secret();
                secrets.push(text[text.len() - 40..].to_owned());
            }
        }
    }
    // Reopening replays and compacts the engine's log; check after that too.
    drop(start(dir.path()));

    let files = files(dir.path());
    assert!(files.iter().any(|f| f.ends_with("pepper")));
    let contents: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    // The search can see stored text: records (with their ids) are in the files in the clear.
    let stored_id = ids[0].rsplit('_').next().unwrap();
    assert!(contents
        .iter()
        .any(|bytes| contains(bytes, stored_id.as_bytes())));
    for (file, bytes) in files.iter().zip(&contents) {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{} holds a secret",
                file.display()
            );
            assert!(
                !contains(bytes, &raw(secret)),
                "{} holds a secret's bytes",
                file.display()
            );
        }
    }
}
