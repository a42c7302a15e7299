//! Audit files on disk: names, listing in chain order, and creating them privately.
//!
//! A file is named after the sequence number of its first record and the UTC date it was
//! started: `audit-00000000000000000001-20261123.jsonl`. The number is zero-padded so that
//! sorting names sorts files in chain order (what `ls` and shell globs do too).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::time;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";
const SEQ_DIGITS: usize = 20;
const DATE_DIGITS: usize = 8;

/// One audit file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFile {
    /// Where it is.
    pub path: PathBuf,
    /// The sequence number its name says its first record has.
    pub first_seq: u64,
}

impl AuditFile {
    /// The file's name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The name of a file whose first record is `first_seq`, started at `ts` (microseconds).
pub fn file_name(first_seq: u64, ts: u64) -> String {
    format!(
        "{PREFIX}{first_seq:0width$}-{date}{SUFFIX}",
        width = SEQ_DIGITS,
        date = time::compact_date(ts)
    )
}

/// The first sequence number from an audit file name; `None` for any other name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (seq, date) = rest.split_once('-')?;
    let all_digits =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(seq, SEQ_DIGITS) || !all_digits(date, DATE_DIGITS) {
        return None;
    }
    seq.parse().ok()
}

/// The audit files in `dir`, in chain order. Other files are ignored; a missing directory
/// has none.
pub fn list(dir: &Path) -> io::Result<Vec<AuditFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            files.push(AuditFile {
                path: entry.path(),
                first_seq,
            });
        }
    }
    files.sort_by(|a, b| (a.first_seq, &a.path).cmp(&(b.first_seq, &b.path)));
    Ok(files)
}

/// Creates `dir` (and missing parents) with mode 0700, and restricts it to 0700 if it exists:
/// records name organizations, keys and client networks.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Opens `path` for appending, creating it with mode 0600 if it does not exist.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Makes a new directory entry durable (after creating a file in `dir`).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_parse_back() {
        let a = file_name(9, 0);
        let b = file_name(10, 0);
        assert_eq!(a, "audit-00000000000000000009-19700101.jsonl");
        assert!(a < b);
        assert_eq!(parse_file_name(&b), Some(10));
        for other in [
            "audit-1-19700101.jsonl",
            "audit-00000000000000000009.jsonl",
            "audit-00000000000000000009-1970010.jsonl",
            "audit-0000000000000000000x-19700101.jsonl",
            "notes.jsonl",
            "audit-00000000000000000009-19700101.jsonl.tmp",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn listing_ignores_other_files_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for name in [file_name(20, 0), file_name(3, 0), "README".to_owned()] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        fs::create_dir(dir.path().join(file_name(50, 0))).unwrap();
        let listed: Vec<u64> = list(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.first_seq)
            .collect();
        assert_eq!(listed, vec![3, 20]);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn directories_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("a/b");
        prepare_dir(&audit).unwrap();
        let mode = fs::metadata(&audit).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = audit.join(file_name(1, 0));
        open_append(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
