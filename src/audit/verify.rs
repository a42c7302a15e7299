//! Checking every link of the chain, across files, as `portcullis audit verify` does.
//!
//! Files are read in the order given (a directory stands for its audit files in chain order).
//! Every line must be a chained record whose `hash` matches its content and `prev`, whose
//! `prev` is the previous record's `hash`, and whose `seq` is one more than the previous
//! one. The first record read is the anchor: its own `prev` cannot be checked without the
//! file before it. The first failure is reported with the sequence number the chain
//! expected there, so an edited, a deleted and a swapped line are all reported at the first
//! record that can no longer be trusted.
//!
//! A last line without its newline in the last file is not counted as a failure but
//! reported: it is a write in progress, or a line torn by a crash that the next start cuts
//! (and records).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, ChainKey, Digest, GENESIS};
use super::files;
use super::record::StoredRecord;

/// What a clean verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Files read.
    pub files: usize,
    /// Records verified.
    pub records: u64,
    /// Sequence number of the first record, if any.
    pub first_seq: Option<u64>,
    /// Sequence number of the last record, if any.
    pub last_seq: Option<u64>,
    /// Whether the first record starts the trail (its `prev` is the genesis value).
    pub from_genesis: bool,
    /// A file whose last line is incomplete (being written, or torn by a crash).
    pub incomplete_tail: Option<PathBuf>,
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The sequence number the chain expected at that line.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// The line number in the file (from 1).
    pub line: u64,
    /// What is wrong.
    pub reason: BreakReason,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain broken at seq {} ({}:{}): {}",
            self.seq,
            self.path.display(),
            self.line,
            self.reason
        )
    }
}

/// Why a line breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// The line is not a chained record at all.
    NotARecord,
    /// The record's hash does not match its content (edited, or the wrong key).
    HashMismatch,
    /// The record does not link to the previous record.
    PrevMismatch,
    /// The record has another sequence number than the one expected (a line deleted,
    /// inserted or moved).
    UnexpectedSeq {
        /// The number found on the line.
        found: u64,
    },
    /// A file other than the last ends in the middle of a line.
    IncompleteLine,
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotARecord => f.write_str("the line is not an audit record"),
            Self::HashMismatch => f.write_str(
                "the record's hash does not match its content (edited, or verified with the \
                 wrong HMAC key)",
            ),
            Self::PrevMismatch => f.write_str("the record does not link to the previous record"),
            Self::UnexpectedSeq { found } => write!(
                f,
                "found seq {found}: a record was deleted, inserted or moved"
            ),
            Self::IncompleteLine => {
                f.write_str("a file before the last ends in the middle of a line")
            }
        }
    }
}

/// Why verification could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain does not hold.
    #[error("{0}")]
    Broken(Broken),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Nothing to verify.
    #[error("no audit files found")]
    Empty,
}

/// Expands directories into their audit files (in chain order); files are kept as given.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let listed = files::list(path).map_err(|source| VerifyError::Read {
                path: path.clone(),
                source,
            })?;
            out.extend(listed.into_iter().map(|file| file.path));
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Verifies `paths` (files or directories) as one chain.
pub fn verify(paths: &[PathBuf], key: &ChainKey) -> Result<Verified, VerifyError> {
    let files = expand(paths)?;
    if files.is_empty() {
        return Err(VerifyError::Empty);
    }
    let mut state = ChainState::default();
    let mut verified = Verified {
        files: files.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        from_genesis: false,
        incomplete_tail: None,
    };
    let last_index = files.len() - 1;
    for (index, path) in files.iter().enumerate() {
        let incomplete = verify_file(path, key, &mut state, &mut verified)?;
        if incomplete {
            if index != last_index {
                return Err(VerifyError::Broken(Broken {
                    seq: state.expected_seq(),
                    path: path.clone(),
                    line: state.line_in_file,
                    reason: BreakReason::IncompleteLine,
                }));
            }
            verified.incomplete_tail = Some(path.clone());
        }
    }
    Ok(verified)
}

/// The chain as far as it has been checked.
#[derive(Default)]
struct ChainState {
    last: Option<(u64, Digest)>,
    line_in_file: u64,
}

impl ChainState {
    fn expected_seq(&self) -> u64 {
        self.last.map_or(1, |(seq, _)| seq.saturating_add(1))
    }
}

/// Verifies one file; returns whether its last line lacks a newline.
fn verify_file(
    path: &Path,
    key: &ChainKey,
    state: &mut ChainState,
    verified: &mut Verified,
) -> Result<bool, VerifyError> {
    let read_error = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
    let mut line = Vec::new();
    state.line_in_file = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            return Ok(false);
        }
        state.line_in_file += 1;
        let Some(complete) = line.strip_suffix(b"\n") else {
            return Ok(true);
        };
        let broken = |reason| {
            VerifyError::Broken(Broken {
                seq: state.expected_seq(),
                path: path.to_owned(),
                line: state.line_in_file,
                reason,
            })
        };
        let (Some(split), Some(record)) = (chain::split(complete), StoredRecord::decode(complete))
        else {
            return Err(broken(BreakReason::NotARecord));
        };
        if !split.hash_matches(key) {
            return Err(broken(BreakReason::HashMismatch));
        }
        match state.last {
            None => {
                verified.first_seq = Some(record.seq);
                verified.from_genesis = split.prev == GENESIS;
            }
            Some((seq, hash)) => {
                if record.seq != seq.saturating_add(1) {
                    return Err(broken(BreakReason::UnexpectedSeq { found: record.seq }));
                }
                if split.prev != hash {
                    return Err(broken(BreakReason::PrevMismatch));
                }
            }
        }
        state.last = Some((record.seq, split.hash));
        verified.records += 1;
        verified.last_seq = Some(record.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::seal;

    /// Plain-chained lines for seqs `from..=to` after `prev`.
    fn chained(from: u64, to: u64, prev: Digest) -> (String, Digest) {
        let mut text = Vec::new();
        let mut prev = prev;
        for seq in from..=to {
            let mut line = format!("{{\"seq\":{seq},\"ts\":\"x\",\"kind\":\"system\"").into_bytes();
            prev = seal(&ChainKey::plain(), &prev, &mut line);
            text.extend_from_slice(&line);
        }
        (String::from_utf8(text).unwrap(), prev)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_chain_split_over_files_verifies_and_a_later_start_is_anchored() {
        let dir = tempfile::tempdir().unwrap();
        let (first, hash) = chained(1, 3, GENESIS);
        let (second, _) = chained(4, 6, hash);
        let a = write(dir.path(), "a.jsonl", &first);
        let b = write(dir.path(), "b.jsonl", &second);
        let verified = verify(&[a.clone(), b.clone()], &ChainKey::plain()).unwrap();
        assert_eq!(
            (verified.records, verified.first_seq, verified.last_seq),
            (6, Some(1), Some(6))
        );
        assert!(verified.from_genesis);
        let later = verify(std::slice::from_ref(&b), &ChainKey::plain()).unwrap();
        assert!(!later.from_genesis);
        // Files out of order break at the first record of the misplaced file.
        let Err(VerifyError::Broken(broken)) = verify(&[b, a], &ChainKey::plain()) else {
            panic!("out of order");
        };
        assert_eq!(broken.seq, 7);
        assert_eq!(broken.reason, BreakReason::UnexpectedSeq { found: 1 });
    }

    #[test]
    fn an_incomplete_last_line_is_a_note_at_the_end_and_a_break_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (first, hash) = chained(1, 2, GENESIS);
        let (second, _) = chained(3, 3, hash);
        let torn = format!("{first}{{\"seq\":3,\"ts");
        let a = write(dir.path(), "a.jsonl", &torn);
        let verified = verify(std::slice::from_ref(&a), &ChainKey::plain()).unwrap();
        assert_eq!(verified.records, 2);
        assert_eq!(verified.incomplete_tail, Some(a.clone()));
        let b = write(dir.path(), "b.jsonl", &second);
        let Err(VerifyError::Broken(broken)) = verify(&[a, b], &ChainKey::plain()) else {
            panic!("a torn line before the last file");
        };
        assert_eq!(broken.reason, BreakReason::IncompleteLine);
        assert!(matches!(
            verify(&[dir.path().join("none")], &ChainKey::plain()),
            Err(VerifyError::Read { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify(&[empty.path().to_owned()], &ChainKey::plain()),
            Err(VerifyError::Empty)
        ));
    }
}
