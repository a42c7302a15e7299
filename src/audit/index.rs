//! The per-tenant index of the audit trail, kept in the state store so that a query goes
//! straight to an organization's records instead of scanning the files.
//!
//! The index is made of *blocks*: for each batch the writer commits, the records of one
//! organization in one file (up to [`MAX_BLOCK_RECORDS`] of them) become one entry, keyed
//! `<org> 0x00 <first seq as 8 big-endian bytes>`. All of an organization's blocks are
//! contiguous and in sequence order, and no organization's prefix is a prefix of another's
//! (ids cannot contain `0x00`), so a query for one organization can only ever touch that
//! organization's keys. A block holds, per record, its sequence number, timestamp and where
//! its line is (file, offset, length): a query reads exactly the lines it returns. One store
//! write per organization per batch (instead of one per record) is what lets the writer keep
//! up with 100,000 records per second.
//!
//! The index is written after the files are synced, so it never points at bytes that a crash
//! could take away. It is not synced itself: after a crash it is completed from the files at
//! start, from the `head` it last recorded (every record up to it is indexed). Blocks and the
//! head of one batch are written in one atomic store batch.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::files;
use super::record::StoredRecord;
use crate::store::{Store, StoreError, Tree};

/// The tree holding the index.
pub const AUDIT_INDEX_TREE: &str = "audit_index";

/// Most records in one block.
pub const MAX_BLOCK_RECORDS: usize = 256;

/// Where the head is kept; starts with `0x00`, which no organization id does.
const HEAD_KEY: &[u8] = b"\x00head";

/// Separates the organization from the sequence number in a key.
const SEPARATOR: u8 = 0;

/// Block format version (first byte of every value).
const VERSION: u8 = 1;

/// Bytes of one record in a block: seq, ts, offset (8 each) and length (4).
const POSITION_LEN: usize = 28;

/// Longest line the index points at (a record is a few hundred bytes).
const MAX_LINE_LEN: u32 = 64 * 1024;

/// Where one record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its sequence number.
    pub seq: u64,
    /// Its timestamp in microseconds.
    pub ts: u64,
    /// The offset of its line in its file.
    pub offset: u64,
    /// The length of its line, without the newline.
    pub len: u32,
}

/// The records of one organization in one file, to be indexed together.
#[derive(Debug, Clone)]
pub struct NewBlock<'a> {
    /// The organization.
    pub org: &'a str,
    /// The file's name (in the audit directory).
    pub file: &'a str,
    /// The records, in sequence order (at most [`MAX_BLOCK_RECORDS`]).
    pub records: &'a [Position],
}

/// One indexed record found by a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file its line is in.
    pub file: String,
    /// Where in it.
    pub position: Position,
}

/// One record with its line, as a query returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its timestamp in microseconds.
    pub ts: u64,
    /// The line as written (without its newline).
    pub line: Vec<u8>,
}

/// The index handle. Cloning shares the tree.
#[derive(Debug, Clone)]
pub struct AuditIndex {
    tree: Tree,
    dir: PathBuf,
}

impl AuditIndex {
    /// Opens (creating if needed) the index of the audit files in `dir`.
    pub fn open(store: &Store, dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree(AUDIT_INDEX_TREE)?,
            dir: dir.to_owned(),
        })
    }

    /// The highest sequence number up to which every record is indexed (0: none).
    pub fn head(&self) -> Result<u64, StoreError> {
        match self.tree.get(HEAD_KEY)? {
            None => Ok(0),
            Some(bytes) => {
                decode_u64(&bytes).ok_or_else(|| StoreError::corrupt(self.tree.name(), HEAD_KEY))
            }
        }
    }

    /// Writes `blocks` and, if given, moves the head to `head`, in one atomic batch.
    pub fn insert<'a>(
        &self,
        blocks: impl IntoIterator<Item = NewBlock<'a>>,
        head: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for block in blocks {
            let Some(first) = block.records.first() else {
                continue;
            };
            pairs.push((key(block.org, first.seq), encode_block(&block)));
        }
        if let Some(head) = head {
            pairs.push((HEAD_KEY.to_vec(), head.to_be_bytes().to_vec()));
        }
        if pairs.is_empty() {
            return Ok(());
        }
        self.tree
            .insert_batch(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// Where `org`'s records with a sequence number below `before` (all when `None`) are,
    /// newest first.
    pub fn newest_first(
        &self,
        org: &str,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<Located, StoreError>> + use<> {
        let start = key(org, 0);
        let end = match before {
            Some(seq) => key(org, seq),
            // Every key of `org` sorts below `<org> 0x01`.
            None => {
                let mut end = org.as_bytes().to_vec();
                end.push(SEPARATOR + 1);
                end
            }
        };
        let name = self.tree.name();
        self.tree.range(&start, &end).rev().flat_map(
            move |item| -> Vec<Result<Located, StoreError>> {
                let decoded = item.and_then(|(key, value)| {
                    decode_block(&value).ok_or_else(|| StoreError::corrupt(name, &key))
                });
                match decoded {
                    Err(error) => vec![Err(error)],
                    Ok((file, positions)) => positions
                        .into_iter()
                        .rev()
                        .filter(|position| before.is_none_or(|before| position.seq < before))
                        .map(|position| {
                            Ok(Located {
                                file: file.clone(),
                                position,
                            })
                        })
                        .collect(),
                }
            },
        )
    }

    /// Where record `seq` of `org` is, if it is `org`'s.
    pub fn find(&self, org: &str, seq: u64) -> Result<Option<Located>, StoreError> {
        let found = self
            .newest_first(org, seq.checked_add(1))
            .next()
            .transpose()?;
        Ok(found.filter(|located| located.position.seq == seq))
    }

    /// A reader of indexed lines, keeping files open for the length of one query.
    pub fn reader(&self) -> LineReader<'_> {
        LineReader {
            dir: &self.dir,
            open: HashMap::new(),
        }
    }
}

/// Reads indexed lines from the audit files.
pub struct LineReader<'a> {
    dir: &'a Path,
    open: HashMap<String, Option<File>>,
}

impl std::fmt::Debug for LineReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LineReader<'_> {
    /// The line at `located`, checked to be the record the index says it is. `None` when the
    /// file was removed (archived) or the bytes there are not that record (the file was
    /// altered; `audit verify` reports where).
    pub fn read(&mut self, located: &Located) -> Option<IndexEntry> {
        let dir = self.dir;
        let file = self
            .open
            .entry(located.file.clone())
            .or_insert_with(|| File::open(dir.join(&located.file)).ok())
            .as_ref()?;
        let position = located.position;
        let mut line = vec![0u8; usize::try_from(position.len).ok()?];
        file.read_exact_at(&mut line, position.offset).ok()?;
        let record = StoredRecord::decode(&line)?;
        if record.seq != position.seq {
            tracing::warn!(
                seq = position.seq,
                file = %located.file,
                "an indexed audit record is not where it was written; run `portcullis audit verify`"
            );
            return None;
        }
        Some(IndexEntry {
            seq: position.seq,
            ts: position.ts,
            line,
        })
    }
}

fn key(org: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + 9);
    key.extend_from_slice(org.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode_block(block: &NewBlock<'_>) -> Vec<u8> {
    let name = block.file.as_bytes();
    let mut value = Vec::with_capacity(2 + name.len() + block.records.len() * POSITION_LEN);
    value.push(VERSION);
    // File names are short ASCII (audit-<20 digits>-<8 digits>.jsonl).
    value.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    value.extend_from_slice(&name[..name.len().min(usize::from(u8::MAX))]);
    for position in block.records {
        value.extend_from_slice(&position.seq.to_be_bytes());
        value.extend_from_slice(&position.ts.to_be_bytes());
        value.extend_from_slice(&position.offset.to_be_bytes());
        value.extend_from_slice(&position.len.to_be_bytes());
    }
    value
}

fn decode_block(value: &[u8]) -> Option<(String, Vec<Position>)> {
    let (&version, rest) = value.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&name_len, rest) = rest.split_first()?;
    let (name, rest) = rest.split_at_checked(usize::from(name_len))?;
    let name = std::str::from_utf8(name).ok()?;
    // Only names of audit files are followed, so a damaged store cannot point elsewhere.
    files::parse_file_name(name)?;
    if rest.len() % POSITION_LEN != 0 {
        return None;
    }
    let positions = rest
        .chunks_exact(POSITION_LEN)
        .map(|chunk| {
            let len = u32::from_be_bytes(chunk[24..28].try_into().ok()?);
            (len <= MAX_LINE_LEN).then_some(Position {
                seq: decode_u64(&chunk[0..8])?,
                ts: decode_u64(&chunk[8..16])?,
                offset: decode_u64(&chunk[16..24])?,
                len,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((name.to_owned(), positions))
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        index: AuditIndex,
        file: String,
        text: Vec<u8>,
    }

    /// An index over one file holding records 1..=n, with `org_of(seq)` as organization.
    fn fixture(n: u64, org_of: impl Fn(u64) -> &'static str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        files::prepare_dir(&dir).unwrap();
        let index =
            AuditIndex::open(&Store::open(&tmp.path().join("data")).unwrap(), &dir).unwrap();
        let file = files::file_name(1, 0);
        let mut text = Vec::new();
        let mut by_org: Vec<(&str, Vec<Position>)> = Vec::new();
        for seq in 1..=n {
            let line = format!(
                "{{\"seq\":{seq},\"ts\":\"x\",\"kind\":\"request\",\"status\":{}}}",
                200 + seq % 2
            );
            let position = Position {
                seq,
                ts: seq * 10,
                offset: text.len() as u64,
                len: line.len() as u32,
            };
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
            let org = org_of(seq);
            match by_org.iter_mut().find(|(o, _)| *o == org) {
                Some((_, positions)) => positions.push(position),
                None => by_org.push((org, vec![position])),
            }
        }
        std::fs::write(dir.join(&file), &text).unwrap();
        let blocks: Vec<NewBlock<'_>> = by_org
            .iter()
            .flat_map(|(org, positions)| {
                positions.chunks(2).map(|records| NewBlock {
                    org,
                    file: &file,
                    records,
                })
            })
            .collect();
        index.insert(blocks, Some(n)).unwrap();
        Fixture {
            _tmp: tmp,
            index,
            file,
            text,
        }
    }

    fn seqs(index: &AuditIndex, org: &str, before: Option<u64>) -> Vec<u64> {
        index
            .newest_first(org, before)
            .map(|entry| entry.unwrap().position.seq)
            .collect()
    }

    #[test]
    fn organizations_never_see_each_others_records() {
        let orgs = |seq: u64| match seq % 3 {
            0 => "acme-labs",
            1 => "acme",
            _ => "b",
        };
        let fixture = fixture(9, orgs);
        let index = &fixture.index;
        assert_eq!(index.head().unwrap(), 9);
        assert_eq!(seqs(index, "acme", None), vec![7, 4, 1]);
        assert_eq!(seqs(index, "acme", Some(7)), vec![4, 1]);
        assert_eq!(seqs(index, "acme", Some(5)), vec![4, 1]);
        assert_eq!(seqs(index, "acme", Some(1)), Vec::<u64>::new());
        assert_eq!(seqs(index, "acme-labs", None), vec![9, 6, 3]);
        assert_eq!(seqs(index, "nobody", None), Vec::<u64>::new());
        assert_eq!(index.find("acme", 4).unwrap().unwrap().position.ts, 40);
        assert_eq!(index.find("acme", 3).unwrap(), None);
        assert_eq!(index.find("acme-labs", 4).unwrap(), None);
    }

    #[test]
    fn lines_are_read_from_the_files_and_checked() {
        let fixture = fixture(4, |_| "acme");
        let index = &fixture.index;
        let mut reader = index.reader();
        let located = index.find("acme", 3).unwrap().unwrap();
        assert_eq!(located.file, fixture.file);
        let entry = reader.read(&located).unwrap();
        assert!(entry.line.starts_with(b"{\"seq\":3,"));
        // A shifted file no longer yields the record the index points at.
        let path = fixture.index.dir.join(&fixture.file);
        let mut shifted = b"x".to_vec();
        shifted.extend_from_slice(&fixture.text);
        std::fs::write(&path, shifted).unwrap();
        assert_eq!(index.reader().read(&located), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(index.reader().read(&located), None);
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        for value in [
            &b""[..],
            &[2u8, 0][..],
            &[1u8, 200][..],
            &[1u8, 3, b'a', b'b', b'c'][..],
        ] {
            assert_eq!(decode_block(value), None, "{value:?}");
        }
        let name = files::file_name(1, 0);
        let mut value = vec![VERSION, name.len() as u8];
        value.extend_from_slice(name.as_bytes());
        value.extend_from_slice(&[0u8; POSITION_LEN - 1]);
        assert_eq!(decode_block(&value), None);
        let mut traversal = vec![VERSION, 9];
        traversal.extend_from_slice(b"../passwd");
        assert_eq!(decode_block(&traversal), None);
    }
}
