//! Start-up: find where the chain stands, cut a line torn by a crash, and complete the index.
//!
//! A crash can interrupt the write of a batch, leaving a partial last line (or, on some file
//! systems, a tail of zero bytes). Everything after the last line that decodes as a complete,
//! chained record is cut, the file is synced, and the repair is recorded as a `system` record
//! so an auditor sees that it happened and how many bytes it removed. Nothing before that
//! line is touched: damage in the middle of a file is evidence, and `audit verify` reports
//! it.
//!
//! The index may be behind the files (it is written after them and not synced); every record
//! after its head is indexed again here. If the index is *ahead* of the files, records that
//! were once durable have disappeared from the files: that is logged as an error and the
//! sequence continues after the index's head, so the gap stays visible to `audit verify`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use super::chain::{self, GENESIS};
use super::error::AuditError;
use super::files::{self, AuditFile};
use super::index::{AuditIndex, NewBlock, Position, MAX_BLOCK_RECORDS};
use super::record::{FileName, StoredRecord, SystemEvent};
use super::time;
use super::writer::{ChainHead, CurrentFile};
use crate::orgs::is_org_id;

/// What start-up found and did.
pub(super) struct Recovered {
    /// Where the chain continues.
    pub head: ChainHead,
    /// The last file, open for appending, if there is one to continue.
    pub file: Option<CurrentFile>,
    /// The repair to record, if a torn tail was cut.
    pub repair: Option<SystemEvent>,
}

/// Recovers the audit directory `dir` and brings `index` up to date with it.
pub(super) fn recover(dir: &Path, index: &AuditIndex) -> Result<Recovered, AuditError> {
    files::prepare_dir(dir).map_err(|source| AuditError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let listed = files::list(dir).map_err(|source| AuditError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let mut repair = None;
    let mut file = None;
    let mut last: Option<LastRecord> = None;
    if let Some(newest) = listed.last() {
        let tail = scan_tail(newest)?;
        if tail.torn_bytes > 0 {
            cut(&newest.path, tail.valid_len)?;
            tracing::warn!(
                file = %newest.path.display(),
                truncated_bytes = tail.torn_bytes,
                "cut a torn last line from the audit trail (an interrupted write)"
            );
            repair = FileName::new(&newest.name()).map(|file| SystemEvent::Repaired {
                file,
                truncated_bytes: tail.torn_bytes,
            });
        }
        last = tail.last;
        let handle = files::open_append(&newest.path).map_err(|source| AuditError::Repair {
            path: newest.path.clone(),
            source,
        })?;
        file = Some(CurrentFile {
            file: handle,
            name: Arc::from(newest.name()),
            len: tail.valid_len,
            day: tail.first_ts.map(time::utc_day),
        });
        // The newest file holds no record: the chain ends in an earlier file.
        if last.is_none() {
            for older in listed.iter().rev().skip(1) {
                if let Some(found) = scan_tail(older)?.last {
                    last = Some(found);
                    break;
                }
            }
        }
    }
    let indexed = index.head()?;
    let mut head = match &last {
        Some(last) => ChainHead {
            next_seq: last.seq.saturating_add(1),
            prev: last.hash,
            last_ts: last.ts,
        },
        None => ChainHead {
            next_seq: 1,
            prev: GENESIS,
            last_ts: 0,
        },
    };
    let newest_in_files = head.next_seq - 1;
    if indexed > newest_in_files {
        tracing::error!(
            files_end_at = newest_in_files,
            index_ends_at = indexed,
            "the audit files end before records that were once written: they were truncated, \
             removed or replaced; the trail continues after the last indexed record"
        );
        head.next_seq = indexed.saturating_add(1);
    } else if indexed < newest_in_files {
        reindex(&listed, index, indexed)?;
    }
    // A reused empty file must be named after the next record, or a new file is started.
    if let (Some(newest), Some(current)) = (listed.last(), &file) {
        if current.len == 0 && newest.first_seq != head.next_seq {
            file = None;
        }
    }
    Ok(Recovered { head, file, repair })
}

/// The last record of a file.
struct LastRecord {
    seq: u64,
    ts: u64,
    hash: chain::Digest,
}

/// Where a file's valid records end.
struct Tail {
    /// Bytes up to and including the newline of the last valid record.
    valid_len: u64,
    /// Bytes after it.
    torn_bytes: u64,
    /// The last valid record.
    last: Option<LastRecord>,
    /// The first record's timestamp.
    first_ts: Option<u64>,
}

fn scan_tail(file: &AuditFile) -> Result<Tail, AuditError> {
    let read_error = |source| AuditError::Read {
        path: file.path.clone(),
        source,
    };
    let handle = File::open(&file.path).map_err(read_error)?;
    let total = handle.metadata().map_err(read_error)?.len();
    let mut reader = BufReader::new(handle);
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut tail = Tail {
        valid_len: 0,
        torn_bytes: 0,
        last: None,
        first_ts: None,
    };
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(read_error)?;
        if read == 0 {
            break;
        }
        offset += read as u64;
        let Some(complete) = line.strip_suffix(b"\n") else {
            break;
        };
        if let Some(record) = decode_chained(complete) {
            tail.first_ts.get_or_insert(record.ts);
            tail.last = Some(record);
            tail.valid_len = offset;
        }
    }
    tail.torn_bytes = total.saturating_sub(tail.valid_len);
    Ok(tail)
}

/// A line's position and link, if it is a complete chained record.
fn decode_chained(line: &[u8]) -> Option<LastRecord> {
    let split = chain::split(line)?;
    let record = StoredRecord::decode(line)?;
    Some(LastRecord {
        seq: record.seq,
        ts: record.ts_micros()?,
        hash: split.hash,
    })
}

/// Cuts `path` to `len` bytes and makes the cut durable.
fn cut(path: &Path, len: u64) -> Result<(), AuditError> {
    let repair_error = |source| AuditError::Repair {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(repair_error)?;
    file.set_len(len).map_err(repair_error)?;
    file.sync_all().map_err(repair_error)
}

/// Indexes every record in the files with a sequence number above `from`.
fn reindex(listed: &[AuditFile], index: &AuditIndex, from: u64) -> Result<(), AuditError> {
    // Files whose successor starts at or below `from + 1` hold nothing newer.
    let start = listed
        .iter()
        .rposition(|file| file.first_seq <= from.saturating_add(1))
        .unwrap_or(0);
    let mut newest = from;
    for file in &listed[start..] {
        let name = file.name();
        let text = fs::read(&file.path).map_err(|source| AuditError::Read {
            path: file.path.clone(),
            source,
        })?;
        let mut groups: Vec<(String, Vec<Position>)> = Vec::new();
        let mut offset = 0u64;
        for line in text.split_inclusive(|b| *b == b'\n') {
            let at = offset;
            offset += line.len() as u64;
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            let Some(record) = StoredRecord::decode(line) else {
                continue;
            };
            if record.seq <= from || chain::split(line).is_none() {
                continue;
            }
            newest = newest.max(record.seq);
            let org = record.org.clone().filter(|org| is_org_id(org));
            let (Some(org), Some(ts), Ok(len)) =
                (org, record.ts_micros(), u32::try_from(line.len()))
            else {
                continue;
            };
            let position = Position {
                seq: record.seq,
                ts,
                offset: at,
                len,
            };
            match groups.iter_mut().find(|(o, _)| *o == org) {
                Some((_, positions)) => positions.push(position),
                None => groups.push((org, vec![position])),
            }
        }
        let blocks = groups.iter().flat_map(|(org, positions)| {
            positions.chunks(MAX_BLOCK_RECORDS).map(|records| NewBlock {
                org,
                file: &name,
                records,
            })
        });
        index.insert(blocks, None)?;
    }
    index.insert(std::iter::empty(), Some(newest))?;
    tracing::info!(from, to = newest, "audit index completed from the files");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_log::AdminActionKind;
    use crate::audit::chain::ChainKey;
    use crate::audit::record::{encode_body, Actor, AdminEvent, Event, EventBody, Ident};
    use crate::store::Store;

    /// Chained lines for seqs `from..from+count` after `prev`, for organization `org`.
    fn lines(from: u64, count: u64, prev: chain::Digest, org: &str) -> (Vec<u8>, chain::Digest) {
        let mut out = Vec::new();
        let mut prev = prev;
        for seq in from..from + count {
            let event = Event {
                ts: seq * 1_000_000,
                body: EventBody::Admin(AdminEvent {
                    action: AdminActionKind::OrgUpdated,
                    actor: Actor::new("uid:0").unwrap(),
                    target: Ident::new(org).unwrap(),
                    org: Ident::new(org),
                }),
            };
            let mut line = Vec::new();
            encode_body(seq, &event, &mut line);
            prev = chain::seal(&ChainKey::plain(), &prev, &mut line);
            out.extend_from_slice(&line);
        }
        (out, prev)
    }

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, AuditIndex) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let index =
            AuditIndex::open(&Store::open(&tmp.path().join("data")).unwrap(), &dir).unwrap();
        (tmp, dir, index)
    }

    #[test]
    fn an_empty_directory_starts_the_chain_at_genesis() {
        let (_tmp, dir, index) = setup();
        let recovered = recover(&dir, &index).unwrap();
        assert_eq!(recovered.head.next_seq, 1);
        assert_eq!(recovered.head.prev, GENESIS);
        assert!(recovered.file.is_none() && recovered.repair.is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_reported_and_the_index_completed() {
        let (_tmp, dir, index) = setup();
        let (first, hash) = lines(1, 3, GENESIS, "acme");
        let (second, last) = lines(4, 2, hash, "acme");
        std::fs::write(dir.join(files::file_name(1, 0)), &first).unwrap();
        let newest = dir.join(files::file_name(4, 0));
        let mut bytes = second.clone();
        bytes.extend_from_slice(b"{\"seq\":6,\"ts\":\"1970-01-01T00:00:06.000000Z\",\"ki");
        std::fs::write(&newest, &bytes).unwrap();
        let recovered = recover(&dir, &index).unwrap();
        assert_eq!(std::fs::read(&newest).unwrap(), second);
        let Some(SystemEvent::Repaired {
            file,
            truncated_bytes,
        }) = recovered.repair
        else {
            panic!("a repair is reported");
        };
        assert_eq!(file.as_str(), files::file_name(4, 0));
        assert_eq!(truncated_bytes, (bytes.len() - second.len()) as u64);
        assert_eq!(recovered.head.next_seq, 6);
        assert_eq!(recovered.head.prev, last);
        assert_eq!(recovered.file.map(|f| f.len), Some(second.len() as u64));
        // The index (empty before) now holds all five records.
        assert_eq!(index.head().unwrap(), 5);
        let mut reader = index.reader();
        let seqs: Vec<u64> = index
            .newest_first("acme", None)
            .map(|located| reader.read(&located.unwrap()).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3, 2, 1]);
    }

    #[test]
    fn damage_before_the_last_record_is_left_for_verify_to_report() {
        let (_tmp, dir, index) = setup();
        let (good, hash) = lines(1, 2, GENESIS, "acme");
        let (tail, last) = lines(3, 1, hash, "acme");
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"garbage that is not a record\n");
        bytes.extend_from_slice(&tail);
        let path = dir.join(files::file_name(1, 0));
        std::fs::write(&path, &bytes).unwrap();
        let recovered = recover(&dir, &index).unwrap();
        assert!(recovered.repair.is_none());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!((recovered.head.next_seq, recovered.head.prev), (4, last));
    }

    #[test]
    fn a_newest_file_without_records_continues_from_the_one_before() {
        let (_tmp, dir, index) = setup();
        let (first, hash) = lines(1, 2, GENESIS, "acme");
        std::fs::write(dir.join(files::file_name(1, 0)), &first).unwrap();
        std::fs::write(dir.join(files::file_name(3, 0)), b"{\"seq\":3,\"t").unwrap();
        let recovered = recover(&dir, &index).unwrap();
        assert_eq!((recovered.head.next_seq, recovered.head.prev), (3, hash));
        assert!(recovered.repair.is_some());
        // The emptied file is named after the next record, so it is used again.
        assert_eq!(recovered.file.map(|f| f.len), Some(0));
    }

    #[test]
    fn an_index_ahead_of_the_files_leaves_a_visible_gap() {
        let (_tmp, dir, index) = setup();
        let (first, _) = lines(1, 2, GENESIS, "acme");
        std::fs::write(dir.join(files::file_name(1, 0)), &first).unwrap();
        index.insert(std::iter::empty(), Some(9)).unwrap();
        let recovered = recover(&dir, &index).unwrap();
        assert_eq!(recovered.head.next_seq, 10);
    }
}
