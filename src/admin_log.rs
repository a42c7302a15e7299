//! The record of administrative actions: who minted, rotated or revoked which key, who
//! changed an organization or recorded BAA evidence, who reloaded the policy (and which file
//! went into service, or was refused), when a renewed certificate was picked up, and when.
//!
//! Entries are numbered by a sequence that only grows, also across restarts, and are stored
//! under the big-endian sequence number so the tree's order is the log's order. Each entry
//! names its target by id only (a key id or an org id, never key text: the target must have
//! the shape of an id, which no secret has). Every entry is also recorded in the audit trail
//! (as a record with `action`, `actor` and `target`) when the log is linked to it.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditLink};
use crate::orgs::{is_display_text, is_org_id, MAX_ACTOR_CHARS};
use crate::store::{Store, StoreError, Tree};

/// The tree holding one JSON [`AdminAction`] per entry, under its big-endian `seq`.
pub const ADMIN_ACTIONS_TREE: &str = "admin_actions";

/// What an administrator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminActionKind {
    /// A key was minted.
    KeyMinted,
    /// A key got a new secret.
    KeyRotated,
    /// A key was revoked.
    KeyRevoked,
    /// A key's scopes, label, expiry, allowlist or rate changed.
    KeyUpdated,
    /// An organization was created.
    OrgCreated,
    /// An organization was renamed.
    OrgUpdated,
    /// An organization's HIPAA mode was set.
    HipaaModeSet,
    /// BAA evidence was recorded.
    BaaRecorded,
    /// Dead webhook deliveries were put back in the queue (`target`: the delivery id's hex
    /// part for one delivery, the organization for a whole dead-letter queue).
    WebhookRedelivered,
    /// The policy file was reloaded and is in service (`target`: the first 32 hex digits of
    /// the SHA-256 of the file as read, so the change can be matched to a version).
    PolicyReloaded,
    /// A reload was refused and the running policy stayed (`target`: the same digest of the
    /// refused file, or `unreadable`).
    PolicyReloadRefused,
    /// Renewed certificate files were put into service without a reload (`target`: the first
    /// 32 hex digits of the new leaf certificate's SHA-256).
    CertificateRenewed,
}

/// One administrative action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAction {
    /// Position in the log, from 1, without gaps unless a write failed.
    pub seq: u64,
    /// When (unix seconds).
    pub ts: u64,
    /// What was done.
    pub action: AdminActionKind,
    /// Who did it (an operator name, or `portcullis` for automatic actions).
    pub actor: String,
    /// The key id or org id acted on.
    pub target: String,
    /// The organization concerned, if any.
    pub org: Option<String>,
}

/// Why an action could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum AdminLogError {
    /// The actor is empty, too long or not printable.
    #[error("actor must be 1-128 printable characters")]
    InvalidActor,
    /// The target or org is not shaped like a key id or org id.
    #[error("an admin action's target and org must be key ids or organization ids")]
    InvalidTarget,
    /// Persistent state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The entry is stored, but its audit record could not be queued (the writer stopped).
    #[error("the admin action is logged but not in the audit trail: {0}")]
    Audit(#[from] AuditError),
}

/// The append-only log of admin actions.
///
/// Appends are serialized by a mutex (admin actions are rare) and flushed before they return.
pub struct AdminLog {
    store: Store,
    tree: Tree,
    next_seq: Mutex<u64>,
    audit: Option<AuditLink>,
}

impl std::fmt::Debug for AdminLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminLog").finish_non_exhaustive()
    }
}

impl AdminLog {
    /// Opens the log, continuing the sequence after the last stored entry.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let tree = store.tree(ADMIN_ACTIONS_TREE)?;
        let next_seq = match tree.last()? {
            None => 1,
            Some((key, _)) => decode_seq(&key)?.saturating_add(1),
        };
        Ok(Self {
            store: store.clone(),
            tree,
            next_seq: Mutex::new(next_seq),
            audit: None,
        })
    }

    /// Records every later entry in the audit trail too (`None`: the trail is disabled).
    pub fn with_audit(mut self, audit: Option<AuditLink>) -> Self {
        self.audit = audit;
        self
    }

    /// Records an action and flushes it to disk before returning it, and queues its audit
    /// record (the audit writer makes that durable within one commit interval).
    pub fn append(
        &self,
        action: AdminActionKind,
        actor: &str,
        target: &str,
        org: Option<&str>,
        now: u64,
    ) -> Result<AdminAction, AdminLogError> {
        if !is_display_text(actor, MAX_ACTOR_CHARS) {
            return Err(AdminLogError::InvalidActor);
        }
        if !is_org_id(target) || org.is_some_and(|org| !is_org_id(org)) {
            return Err(AdminLogError::InvalidTarget);
        }
        // A poisoned lock still holds the right next number: it only advances after a write.
        let mut next_seq = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = AdminAction {
            seq: *next_seq,
            ts: now,
            action,
            actor: actor.to_owned(),
            target: target.to_owned(),
            org: org.map(str::to_owned),
        };
        self.tree.insert_json(&entry.seq.to_be_bytes(), &entry)?;
        // The entry is written: its number is used even if the flush below fails.
        *next_seq = entry.seq.saturating_add(1);
        self.store.flush()?;
        if let Some(audit) = &self.audit {
            audit.admin(action, actor, target, org)?;
        }
        Ok(entry)
    }

    /// Up to `limit` entries, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<AdminAction>, StoreError> {
        self.tree
            .iter_json::<AdminAction>()
            .rev()
            .take(limit)
            .map(|item| item.map(|(_, entry)| entry))
            .collect()
    }
}

fn decode_seq(key: &[u8]) -> Result<u64, StoreError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::corrupt(ADMIN_ACTIONS_TREE, key))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn appends_number_from_one_and_list_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AdminLog::open(&Store::open(dir.path()).unwrap()).unwrap();
        assert!(log.list(10).unwrap().is_empty());
        let first = log
            .append(
                AdminActionKind::OrgCreated,
                "alice",
                "acme",
                Some("acme"),
                5,
            )
            .unwrap();
        assert_eq!(first.seq, 1);
        log.append(
            AdminActionKind::KeyMinted,
            "alice",
            "0a1b2c3d",
            Some("acme"),
            6,
        )
        .unwrap();
        log.append(AdminActionKind::KeyRevoked, "bob", "0a1b2c3d", None, 7)
            .unwrap();
        let listed = log.list(2).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (listed[0].seq, listed[0].action),
            (3, AdminActionKind::KeyRevoked)
        );
        assert_eq!(
            (listed[1].seq, listed[1].action),
            (2, AdminActionKind::KeyMinted)
        );
        assert_eq!(log.list(0).unwrap(), Vec::new());
        assert_eq!(log.list(100).unwrap().len(), 3);
    }

    #[test]
    fn json_shape_is_snake_case() {
        let entry = AdminAction {
            seq: 1,
            ts: 2,
            action: AdminActionKind::HipaaModeSet,
            actor: "alice".into(),
            target: "acme".into(),
            org: Some("acme".into()),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["action"], "hipaa_mode_set");
        assert_eq!(
            serde_json::to_value(AdminActionKind::BaaRecorded).unwrap(),
            "baa_recorded"
        );
    }

    #[test]
    fn refuses_secret_shaped_targets_and_bad_actors() {
        let dir = tempfile::tempdir().unwrap();
        let log = AdminLog::open(&Store::open(dir.path()).unwrap()).unwrap();
        let key_text = "pcl_test_0a1b2c3d_0123456789abcdef0123456789abcdef01234567";
        assert!(matches!(
            log.append(AdminActionKind::KeyMinted, "alice", key_text, None, 1),
            Err(AdminLogError::InvalidTarget)
        ));
        assert!(matches!(
            log.append(
                AdminActionKind::KeyMinted,
                "alice",
                "0a1b2c3d",
                Some(key_text),
                1
            ),
            Err(AdminLogError::InvalidTarget)
        ));
        assert!(matches!(
            log.append(
                AdminActionKind::KeyMinted,
                "a\u{1b}[31m",
                "0a1b2c3d",
                None,
                1
            ),
            Err(AdminLogError::InvalidActor)
        ));
        // Refusals use no sequence numbers.
        let entry = log
            .append(AdminActionKind::KeyMinted, "alice", "0a1b2c3d", None, 1)
            .unwrap();
        assert_eq!(entry.seq, 1);
    }

    #[test]
    fn sequence_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AdminLog::open(&Store::open(dir.path()).unwrap()).unwrap();
            for ts in 0..300 {
                log.append(AdminActionKind::KeyUpdated, "alice", "0a1b2c3d", None, ts)
                    .unwrap();
            }
        }
        let log = AdminLog::open(&Store::open(dir.path()).unwrap()).unwrap();
        let next = log
            .append(AdminActionKind::KeyUpdated, "alice", "0a1b2c3d", None, 1000)
            .unwrap();
        assert_eq!(next.seq, 301);
        assert_eq!(log.list(1).unwrap()[0].seq, 301);
    }

    #[test]
    fn concurrent_appends_get_distinct_consecutive_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AdminLog::open(&Store::open(dir.path()).unwrap()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| {
                            log.append(AdminActionKind::OrgUpdated, "ops", "acme", None, 1)
                                .unwrap()
                                .seq
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
        assert_eq!(log.list(100).unwrap().len(), 40);
    }
}
