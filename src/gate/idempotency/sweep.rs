//! Removing expired records in bounded batches.
//!
//! Expired records already behave as absent when a request meets them; the sweep only gives
//! their space back. Each pass looks at no more than `batch` records, starting where the
//! previous pass stopped and wrapping at the end of the tree, so a pass holds the store
//! briefly however many records there are, and every record is visited within
//! `records / batch` passes. Expiry is read from the clear header, so the sweep never needs
//! the sealing key, and records that are not even readable as a header are removed too.
//! Removal is a compare-and-swap against the bytes examined, so a record a request has just
//! replaced is never lost.

use std::sync::Mutex;

use super::record;
use crate::store::{StoreError, Swap, Tree};

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Records looked at.
    pub examined: usize,
    /// Records removed.
    pub removed: usize,
}

/// Where the next pass starts.
#[derive(Debug, Default)]
pub struct Sweeper {
    cursor: Mutex<Option<Vec<u8>>>,
}

impl Sweeper {
    /// Looks at up to `batch` records after the previous pass's last one and removes those
    /// expired at `now_ms`. Blocking: async callers run it in `spawn_blocking`.
    pub fn pass(&self, tree: &Tree, now_ms: u64, batch: usize) -> Result<SweepReport, StoreError> {
        let mut cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = cursor.take().unwrap_or_default();
        let mut report = SweepReport::default();
        let mut last = None;
        for entry in tree.iter_from(&start).take(batch) {
            let (key, value) = entry?;
            report.examined += 1;
            let expired = record::expires_ms(&value).is_none_or(|expires| expires <= now_ms);
            if expired && tree.compare_and_swap(&key, Some(&value), None)? == Swap::Done {
                report.removed += 1;
            }
            last = Some(key);
        }
        // A full batch may have stopped mid-tree: resume right after its last key. A short
        // one reached the end: start over next time.
        *cursor = match last {
            Some(mut key) if report.examined == batch => {
                key.push(0);
                Some(key)
            }
            _ => None,
        };
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fingerprint::{Fingerprint, RecordScope, DIGEST_LEN};
    use super::super::record::{encode, Header, Payload};
    use super::super::seal::SealKeys;
    use super::*;
    use crate::store::Store;

    fn put(tree: &Tree, keys: &SealKeys, name: &[u8], expires_ms: u64) {
        let scope = RecordScope::from_stored(name.to_vec());
        let header = Header {
            created_ms: 0,
            expires_ms,
            lease_until_ms: 0,
            fingerprint: Fingerprint::from_bytes([0; DIGEST_LEN]),
        };
        let bytes = encode(keys.sealer(), &scope, &header, &Payload::Pending).unwrap();
        tree.insert(name, &bytes).unwrap();
    }

    #[test]
    fn passes_are_bounded_resume_and_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree("sweep").unwrap();
        let keys = SealKeys::from_master(&[4; 32]);
        // Ten records; odd ones expired at 100.
        for i in 0..10u8 {
            let expires = if i % 2 == 1 { 100 } else { 1_000 };
            put(&tree, &keys, &[b'k', i], expires);
        }
        tree.insert(b"k\xffjunk", b"not a record").unwrap();
        let sweeper = Sweeper::default();

        let first = sweeper.pass(&tree, 100, 4).unwrap();
        assert_eq!(
            first,
            SweepReport {
                examined: 4,
                removed: 2
            }
        );
        let second = sweeper.pass(&tree, 100, 4).unwrap();
        assert_eq!(
            second,
            SweepReport {
                examined: 4,
                removed: 2
            }
        );
        // Two records and the junk are left after the cursor: a short pass, then wrap.
        let third = sweeper.pass(&tree, 100, 4).unwrap();
        assert_eq!(
            third,
            SweepReport {
                examined: 3,
                removed: 2
            }
        );
        assert_eq!(tree.len(), 5);
        let wrapped = sweeper.pass(&tree, 100, 4).unwrap();
        assert_eq!(
            wrapped,
            SweepReport {
                examined: 4,
                removed: 0
            }
        );

        let later = sweeper.pass(&tree, 1_000, 100).unwrap();
        assert_eq!(
            later.removed, 1,
            "the pass resumed where the last one stopped"
        );
        let rest = sweeper.pass(&tree, 1_000, 100).unwrap();
        assert_eq!(rest.removed, 4);
        assert!(tree.is_empty());
    }
}
