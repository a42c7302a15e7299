//! `portcullis audit export`: one organization's records, oldest first, as the exact lines of
//! the files (so a SIEM receives the same bytes, with `prev` and `hash`, that the trail
//! holds).
//!
//! Export reads the files, not the state store: it runs beside a live sidecar (which holds
//! the store's lock) and needs nothing but read access to the audit directory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::chain;
use super::files;
use super::record::StoredRecord;

/// Which records to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFilter {
    /// The organization.
    pub org: String,
    /// Only records at or after this instant (microseconds).
    pub since: Option<u64>,
    /// Only records before this instant (microseconds).
    pub until: Option<u64>,
}

impl ExportFilter {
    fn matches(&self, record: &StoredRecord) -> bool {
        if record.org.as_deref() != Some(self.org.as_str()) {
            return false;
        }
        let Some(ts) = record.ts_micros() else {
            return false;
        };
        self.since.is_none_or(|since| ts >= since) && self.until.is_none_or(|until| ts < until)
    }
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The directory or a file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The output could not be written.
    #[error("cannot write the export: {0}")]
    Write(#[source] io::Error),
}

/// Writes every record of `dir` that `filter` matches to `out`, one line each; returns how
/// many. Lines that are not chained records (a torn tail being written) are skipped.
pub fn export(dir: &Path, filter: &ExportFilter, out: &mut impl Write) -> Result<u64, ExportError> {
    let listed = files::list(dir).map_err(|source| ExportError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut count = 0;
    let mut line = Vec::new();
    for file in listed {
        let read_error = |source| ExportError::Read {
            path: file.path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(&file.path).map_err(read_error)?);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
                break;
            }
            let Some(complete) = line.strip_suffix(b"\n") else {
                break;
            };
            if chain::split(complete).is_none() {
                continue;
            }
            let Some(record) = StoredRecord::decode(complete) else {
                continue;
            };
            if filter.matches(&record) {
                out.write_all(&line).map_err(ExportError::Write)?;
                count += 1;
            }
        }
    }
    out.flush().map_err(ExportError::Write)?;
    Ok(count)
}
