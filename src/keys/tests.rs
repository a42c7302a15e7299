//! Registry and verification tests: minting, every refusal, rotation, revocation, updates,
//! listing, `touch`, and the start-up and per-call costs at 100,000 keys.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::store::Store;

const NOW: u64 = 1_700_000_000;
const PEPPER: [u8; 32] = [0x5a; 32];

fn registry_in(store: &Store, namespace: &str) -> KeyRegistry {
    KeyRegistry::load(store, Pepper::from_bytes(PEPPER), namespace).unwrap()
}

fn setup() -> (tempfile::TempDir, Store, KeyRegistry) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registry = registry_in(&store, "pcl");
    (dir, store, registry)
}

fn scopes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn request(org: &str) -> MintRequest {
    MintRequest::new(org, Env::Test, scopes(&["notes:read"]))
}

fn invalid(registry: &KeyRegistry, text: &str, now: u64) -> VerifyFailure {
    let failure = registry.verify(text, now).unwrap_err();
    assert_eq!(failure.error, VerifyError::Invalid, "{text:?}");
    failure
}

/// `text` with its last character changed to another hex digit.
fn wrong_secret(text: &str) -> String {
    let mut wrong = text.to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    wrong
}

#[test]
fn minted_key_verifies_and_has_the_documented_shape() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let text = minted.key.expose_secret();
    let parsed = parse_key(text).unwrap();
    assert_eq!(parsed.namespace(), "pcl");
    assert_eq!(parsed.env(), Env::Test);
    assert_eq!(parsed.id(), minted.record.id);
    assert_eq!(text.len(), 3 + 1 + 4 + 1 + 8 + 1 + 40);
    assert_eq!(
        minted.record.display_prefix(),
        format!("pcl_test_{}", parsed.id())
    );
    assert!(text.starts_with(&minted.record.display_prefix()));

    let record = registry.verify(text, NOW).unwrap();
    assert_eq!(*record, *minted.record);
    assert_eq!(record.org, "acme");
    assert_eq!(record.status, KeyStatus::Active);
    assert_eq!(record.created_at, NOW);
    assert_eq!(record.namespace, "pcl");
    assert_eq!(registry.get(record.id).unwrap().id, record.id);
    assert_eq!(registry.len(), 1);
}

#[test]
fn secrets_never_show_in_debug_or_records() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let secret = &minted.key.expose_secret()[minted.key.expose_secret().len() - 40..];
    for shown in [
        format!("{minted:?}"),
        format!("{:?}", minted.record),
        serde_json::to_string(&*minted.record).unwrap(),
        format!("{registry:?}"),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn every_wrong_presentation_is_invalid() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let text = minted.key.expose_secret();
    let id = minted.record.id;

    let failure = invalid(&registry, &wrong_secret(text), NOW);
    assert_eq!(failure.presented_id, Some(id));

    let unknown_id = if id.to_string() == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    let unknown = format!("pcl_test_{unknown_id}_{}", &text[text.len() - 40..]);
    let failure = invalid(&registry, &unknown, NOW);
    assert_eq!(failure.presented_id, Some(unknown_id.parse().unwrap()));

    let other_namespace = text.replacen("pcl_", "voti_", 1);
    assert_eq!(invalid(&registry, &other_namespace, NOW).presented_id, None);

    // The env part is bound to the key: the right secret under the other env is refused.
    let other_env = text.replacen("_test_", "_live_", 1);
    assert_eq!(invalid(&registry, &other_env, NOW).presented_id, Some(id));

    for garbage in [
        "",
        "Bearer",
        "pcl",
        "pcl_test_",
        &text[..text.len() - 1],
        &format!("{text}0"),
        &text.to_uppercase(),
        &format!(" {text}"),
        &"x".repeat(10_000),
        "pcl_test_zzzzzzzz_0123456789abcdef0123456789abcdef01234567",
    ] {
        assert_eq!(
            invalid(&registry, garbage, NOW).presented_id,
            None,
            "{garbage:?}"
        );
    }
}

#[test]
fn revoked_is_reported_only_to_the_right_secret() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let text = minted.key.expose_secret();
    let revoked = registry
        .revoke(minted.record.id, RevokeReason::Admin, NOW + 5)
        .unwrap();
    assert_eq!(
        revoked.status,
        KeyStatus::Revoked {
            at: NOW + 5,
            reason: RevokeReason::Admin
        }
    );
    let failure = registry.verify(text, NOW + 6).unwrap_err();
    assert_eq!(failure.error, VerifyError::Revoked);
    assert_eq!(failure.presented_id, Some(minted.record.id));
    invalid(&registry, &wrong_secret(text), NOW + 6);
}

#[test]
fn expired_is_reported_only_to_the_right_secret() {
    let (_dir, _store, registry) = setup();
    let mut req = request("acme");
    req.expires_at = Some(NOW + 10);
    let minted = registry.mint(req, NOW).unwrap();
    let text = minted.key.expose_secret();
    assert!(registry.verify(text, NOW + 9).is_ok());
    assert_eq!(
        registry.verify(text, NOW + 10).unwrap_err().error,
        VerifyError::Expired
    );
    invalid(&registry, &wrong_secret(text), NOW + 10);

    // Revocation is reported before expiry.
    registry
        .revoke(minted.record.id, RevokeReason::KeyInUrl, NOW + 11)
        .unwrap();
    assert_eq!(
        registry.verify(text, NOW + 12).unwrap_err().error,
        VerifyError::Revoked
    );
}

#[test]
fn rotation_honours_the_old_secret_only_during_grace() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let old = minted.key.expose_secret();
    let id = minted.record.id;

    let rotated = registry.rotate(id, Duration::from_secs(300), NOW).unwrap();
    let new = rotated.key.expose_secret();
    assert_ne!(old, new);
    assert_eq!(rotated.record.id, id);
    assert_eq!(rotated.record.previous.unwrap().valid_until, NOW + 300);
    assert!(new.starts_with(&format!("pcl_test_{id}_")));

    assert!(registry.verify(old, NOW + 299).is_ok());
    assert!(registry.verify(new, NOW + 299).is_ok());
    invalid(&registry, old, NOW + 300);
    assert!(registry.verify(new, NOW + 300).is_ok());

    // A second rotation inside the grace period ends the first old secret at once.
    let again = registry
        .rotate(id, Duration::from_secs(300), NOW + 10)
        .unwrap();
    invalid(&registry, old, NOW + 11);
    assert!(registry.verify(new, NOW + 11).is_ok());
    assert!(registry.verify(again.key.expose_secret(), NOW + 11).is_ok());

    // Zero grace: the old secret stops immediately. Sub-second grace rounds up.
    let newest = registry.rotate(id, Duration::ZERO, NOW + 20).unwrap();
    invalid(&registry, again.key.expose_secret(), NOW + 20);
    assert!(newest.record.previous.is_none());
    let last = registry
        .rotate(id, Duration::from_millis(1), NOW + 30)
        .unwrap();
    assert_eq!(last.record.previous.unwrap().valid_until, NOW + 31);

    // Revoked keys cannot be rotated.
    registry.revoke(id, RevokeReason::Admin, NOW + 40).unwrap();
    assert!(matches!(
        registry.rotate(id, Duration::from_secs(60), NOW + 41),
        Err(KeyError::Revoked(revoked)) if revoked == id
    ));
}

#[test]
fn revoke_is_once_and_unknown_ids_are_not_found() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let id = minted.record.id;
    registry.revoke(id, RevokeReason::KeyInUrl, NOW).unwrap();
    assert!(matches!(
        registry.revoke(id, RevokeReason::Admin, NOW + 1),
        Err(KeyError::AlreadyRevoked(again)) if again == id
    ));
    // The first revocation's reason and time stay.
    assert_eq!(
        registry.get(id).unwrap().status,
        KeyStatus::Revoked {
            at: NOW,
            reason: RevokeReason::KeyInUrl
        }
    );
    let ghost: KeyId = if id.to_string() == "00000000" {
        "00000001".parse().unwrap()
    } else {
        "00000000".parse().unwrap()
    };
    assert!(matches!(
        registry.revoke(ghost, RevokeReason::Admin, NOW),
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        registry.rotate(ghost, Duration::ZERO, NOW),
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        registry.update(ghost, &KeyChanges::default(), NOW),
        Err(KeyError::NotFound(_))
    ));
    assert!(registry.get(ghost).is_none());
}

#[test]
fn updates_take_effect_on_the_next_verification() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let text = minted.key.expose_secret();
    let id = minted.record.id;
    let changes = KeyChanges {
        scopes: Some(scopes(&["notes:read", "patients:write"])),
        label: Some(Some("Keragon".to_owned())),
        expires_at: Some(Some(NOW + 100)),
        allow_cidrs: Some(vec!["192.0.2.7/24".parse().unwrap()]),
        rate: Some(Some(RateOverride {
            per_minute: 120,
            burst: 20,
        })),
    };
    let updated = registry.update(id, &changes, NOW + 1).unwrap();
    let verified = registry.verify(text, NOW + 2).unwrap();
    assert_eq!(*verified, *updated);
    assert!(verified.scopes.contains("patients:write"));
    assert_eq!(verified.allow_cidrs[0].to_string(), "192.0.2.0/24");
    assert_eq!(verified.label.as_deref(), Some("Keragon"));
    assert_eq!(
        registry.verify(text, NOW + 100).unwrap_err().error,
        VerifyError::Expired
    );

    let bad = KeyChanges {
        scopes: Some(scopes(&["has space"])),
        ..KeyChanges::default()
    };
    assert!(matches!(
        registry.update(id, &bad, NOW),
        Err(KeyError::InvalidScope)
    ));
    assert!(matches!(
        registry.update(id, &KeyChanges::default(), NOW),
        Err(KeyError::NoChanges)
    ));
    registry.revoke(id, RevokeReason::Admin, NOW + 3).unwrap();
    let relabel = KeyChanges {
        label: Some(None),
        ..KeyChanges::default()
    };
    assert!(matches!(
        registry.update(id, &relabel, NOW + 4),
        Err(KeyError::Revoked(_))
    ));
}

#[test]
fn mint_refuses_bad_requests_without_storing_anything() {
    let (_dir, store, registry) = setup();
    let mut req = request("Not An Org");
    assert!(matches!(
        registry.mint(req.clone(), NOW),
        Err(KeyError::InvalidOrg)
    ));
    req.org = "acme".into();
    req.expires_at = Some(NOW);
    assert!(matches!(
        registry.mint(req, NOW),
        Err(KeyError::ExpiryNotInFuture)
    ));
    assert!(registry.is_empty());
    assert!(store.tree(registry::KEYS_TREE).unwrap().is_empty());
}

#[test]
fn batch_mints_every_key_or_none() {
    let (_dir, store, registry) = setup();
    let minted = registry
        .mint_batch(vec![request("acme"), request("beta")], NOW)
        .unwrap();
    assert_eq!(minted.len(), 2);
    assert_ne!(minted[0].record.id, minted[1].record.id);
    for key in &minted {
        let verified = registry.verify(key.key.expose_secret(), NOW).unwrap();
        assert_eq!(verified.id, key.record.id);
    }
    let refused = registry.mint_batch(vec![request("acme"), request("Not An Org")], NOW);
    assert!(matches!(refused, Err(KeyError::InvalidOrg)));
    assert_eq!(registry.len(), 2);
    assert_eq!(store.tree(registry::KEYS_TREE).unwrap().len(), 2);
    assert!(registry.mint_batch(Vec::new(), NOW).unwrap().is_empty());
}

#[test]
fn list_filters_by_org_and_sorts() {
    let (_dir, _store, registry) = setup();
    let b2 = registry.mint(request("beta"), NOW + 2).unwrap().record;
    let a3 = registry.mint(request("acme"), NOW + 3).unwrap().record;
    let a1 = registry.mint(request("acme"), NOW + 1).unwrap().record;
    let b1 = registry.mint(request("beta"), NOW + 1).unwrap().record;
    let ids = |records: Vec<Arc<KeyRecord>>| records.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(registry.list(None)), [a1.id, a3.id, b1.id, b2.id]);
    assert_eq!(ids(registry.list(Some("acme"))), [a1.id, a3.id]);
    assert_eq!(ids(registry.list(Some("beta"))), [b1.id, b2.id]);
    assert!(registry.list(Some("gamma")).is_empty());
}

#[test]
fn ids_are_unique() {
    let (_dir, _store, registry) = setup();
    let mut seen = BTreeSet::new();
    for n in 0..200 {
        let minted = registry.mint(request("acme"), NOW + n).unwrap();
        assert!(seen.insert(minted.record.id));
    }
    assert_eq!(registry.len(), 200);
}

#[test]
fn touch_writes_at_most_once_a_minute() {
    let (_dir, store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let id = minted.record.id;
    let tree = store.tree(registry::KEYS_TREE).unwrap();
    let stored = || {
        tree.get_json::<KeyRecord>(&id.storage_key())
            .unwrap()
            .unwrap()
            .last_used_at
    };
    assert_eq!(stored(), None);

    registry.touch(id, NOW + 100).unwrap();
    assert_eq!(registry.get(id).unwrap().last_used_at, Some(NOW + 100));
    assert_eq!(stored(), Some(NOW + 100));

    for t in [101, 130, 159] {
        registry.touch(id, NOW + t).unwrap();
        assert_eq!(registry.get(id).unwrap().last_used_at, Some(NOW + 100));
        assert_eq!(stored(), Some(NOW + 100));
    }
    // A clock that stepped back writes nothing.
    registry.touch(id, NOW).unwrap();
    assert_eq!(stored(), Some(NOW + 100));

    registry.touch(id, NOW + 160).unwrap();
    assert_eq!(registry.get(id).unwrap().last_used_at, Some(NOW + 160));
    assert_eq!(stored(), Some(NOW + 160));

    // Unknown ids are ignored.
    let ghost: KeyId = if id.to_string() == "00000000" {
        "00000001".parse().unwrap()
    } else {
        "00000000".parse().unwrap()
    };
    registry.touch(ghost, NOW).unwrap();
}

#[test]
fn concurrent_touches_write_once() {
    let (_dir, _store, registry) = setup();
    let registry = Arc::new(registry);
    let id = registry.mint(request("acme"), NOW).unwrap().record.id;
    let threads: Vec<_> = (0..4u64)
        .map(|n| {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                for t in 0..1_000 {
                    registry.touch(id, NOW + 1_000 + n + t % 50).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let last = registry.get(id).unwrap().last_used_at.unwrap();
    assert!((NOW + 1_000..NOW + 1_060).contains(&last));
}

#[test]
fn touch_never_undoes_an_admin_change() {
    let (_dir, _store, registry) = setup();
    let registry = Arc::new(registry);
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let id = minted.record.id;
    let toucher = {
        let registry = Arc::clone(&registry);
        std::thread::spawn(move || {
            for t in 0..2_000u64 {
                registry.touch(id, NOW + 60 * t).unwrap();
            }
        })
    };
    registry.revoke(id, RevokeReason::Admin, NOW + 1).unwrap();
    toucher.join().unwrap();
    assert!(registry.get(id).unwrap().is_revoked());
}

#[test]
fn key_shape_detection() {
    let (_dir, _store, registry) = setup();
    let minted = registry.mint(request("acme"), NOW).unwrap();
    let text = minted.key.expose_secret();
    assert!(registry.looks_like_key(text));
    let unminted = "pcl_live_0a1b2c3d_0123456789abcdef0123456789abcdef01234567";
    assert!(registry.looks_like_key(unminted));
    assert!(!registry.looks_like_key(&unminted.replacen("pcl", "voti", 1)));
    assert!(!registry.looks_like_key("pcl_live_0a1b2c3d"));
    assert!(!registry.looks_like_key("hello"));

    assert!(registry.contains_key(&format!("token={text}")));
    assert!(registry.contains_key(&format!("a pcl_x and {unminted}&b=c")));
    assert!(registry.contains_key(unminted));
    assert!(!registry.contains_key("pcl_live_0a1b2c3d_0123"));
    assert!(!registry.contains_key("pclpclpcl"));
    assert!(!registry.contains_key(&format!("é{}", &unminted[..unminted.len() - 1])));
}

#[test]
fn namespace_is_validated_and_foreign_keys_do_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        KeyRegistry::load(&store, Pepper::from_bytes(PEPPER), "bad_ns"),
        Err(KeyError::Namespace(FormatError::Namespace))
    ));
    let minted = registry_in(&store, "voti")
        .mint(request("acme"), NOW)
        .unwrap();
    assert!(minted.key.expose_secret().starts_with("voti_test_"));
    let renamed = registry_in(&store, "kv");
    assert_eq!(renamed.len(), 1);
    invalid(&renamed, minted.key.expose_secret(), NOW);
    let moved = minted.key.expose_secret().replacen("voti_", "kv_", 1);
    invalid(&renamed, &moved, NOW);
}

#[test]
fn a_different_pepper_verifies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let minted = registry_in(&store, "pcl")
        .mint(request("acme"), NOW)
        .unwrap();
    let other = KeyRegistry::load(&store, Pepper::from_bytes([1; 32]), "pcl").unwrap();
    invalid(&other, minted.key.expose_secret(), NOW);
}

#[test]
fn corrupt_record_is_reported_by_id_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .tree(registry::KEYS_TREE)
        .unwrap()
        .insert(b"0a1b2c3d", b"{\"hash\":\"secretish\"")
        .unwrap();
    let err = KeyRegistry::load(&store, Pepper::from_bytes(PEPPER), "pcl").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("0a1b2c3d"), "{message}");
    assert!(!message.contains("secretish"), "{message}");
}

/// Writes `count` records straight into the tree (minting each would flush each).
fn fill(store: &Store, count: u32) {
    let tree = store.tree(registry::KEYS_TREE).unwrap();
    let hasher = Pepper::from_bytes(PEPPER).hasher();
    for n in 0..count {
        let id: KeyId = format!("{n:08x}").parse().unwrap();
        let record = KeyRecord {
            id,
            org: format!("org-{}", n % 500),
            env: if n % 2 == 0 { Env::Test } else { Env::Live },
            scopes: scopes(&["notes:read", "patients:read", "webhooks:manage"]),
            label: Some(format!("connector {n}")),
            created_at: NOW,
            expires_at: Some(NOW + 86_400 * 365),
            status: KeyStatus::Active,
            last_used_at: Some(NOW),
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            hash: hasher.hash(format!("{n:040x}").as_bytes()),
            previous: None,
            rate: None,
            namespace: "pcl".to_owned(),
        };
        tree.insert_json(&id.storage_key(), &record).unwrap();
    }
    store.flush().unwrap();
}

/// Start-up and verification cost at 100,000 keys. Informational (prints, asserts nothing
/// about time): run with `cargo test --release --lib -- --ignored --nocapture keys::tests`.
#[test]
#[ignore = "timing report; run in release"]
fn load_and_verify_at_100k_keys() {
    const KEYS: u32 = 100_000;
    const CALLS: u32 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        fill(&store, KEYS);
    }
    let store = Store::open(dir.path()).unwrap();
    let started = Instant::now();
    let registry = registry_in(&store, "pcl");
    let load = started.elapsed();
    assert_eq!(registry.len(), KEYS as usize);
    println!("load of {KEYS} keys: {load:?}");

    let minted = registry.mint(request("acme"), NOW).unwrap();
    let valid = minted.key.expose_secret().to_owned();
    let wrong = wrong_secret(&valid);
    let unknown = format!("pcl_test_ffffffff_{}", &valid[valid.len() - 40..]);
    let stored = format!("pcl_test_{:08x}_{:040x}", 8, 8);
    for round in 0..3 {
        for (name, text) in [
            ("valid", valid.as_str()),
            ("stored", stored.as_str()),
            ("wrong secret", wrong.as_str()),
            ("unknown id", unknown.as_str()),
            ("garbage", "not a key at all"),
        ] {
            let started = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(registry.verify(std::hint::black_box(text), NOW).is_ok());
            }
            println!(
                "round {round} verify ({name}): {:?}/call",
                started.elapsed() / CALLS
            );
        }
    }
    assert!(registry.verify(&valid, NOW).is_ok());
    assert!(registry.verify(&stored, NOW).is_ok());
}

#[test]
fn loads_many_keys() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        fill(&store, 2_000);
    }
    let store = Store::open(dir.path()).unwrap();
    let started = Instant::now();
    let registry = registry_in(&store, "pcl");
    println!("load of 2000 keys: {:?}", started.elapsed());
    assert_eq!(registry.len(), 2_000);
    let stored = format!("pcl_live_{:08x}_{:040x}", 1_999, 1_999);
    assert_eq!(registry.verify(&stored, NOW).unwrap().org, "org-499");
    assert_eq!(registry.list(Some("org-3")).len(), 4);
}
