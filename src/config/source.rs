//! Turning byte offsets in a policy file into the `file:line:column: key` form ops expect.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// The text of one policy file and the name it is reported under.
#[derive(Debug, Clone)]
pub struct SourceText {
    path: PathBuf,
    text: String,
}

/// A 1-based line and column in a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl SourceText {
    /// Wraps file contents; `path` is only used in messages.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// The name errors are reported under.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Line and column of a byte offset (clamped to the end of the text).
    pub fn locate(&self, offset: usize) -> Location {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }

    /// The dotted key a span sits under, read back from the text: the nearest table header
    /// above it plus the key on its own line. Used for parser errors, which carry only a span.
    pub fn key_at(&self, span: &Range<usize>) -> Option<String> {
        let offset = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let header_name = |text: &str| {
            text.trim()
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned()
        };
        if line.trim_start().starts_with('[') {
            return Some(header_name(line));
        }
        let key = line
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| !key.is_empty() && !key.starts_with('#'));
        let table = self.text[..line_start]
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('['))
            .map(header_name);
        match (table, key) {
            (Some(table), Some(key)) => Some(format!("{table}.{key}")),
            (None, Some(key)) => Some(key.to_owned()),
            (table, None) => table,
        }
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let src = SourceText::new("p.toml", "a = 1\n[server]\nlisten = \"x\"\n");
        let offset = src.text().find("\"x\"").unwrap();
        assert_eq!(
            src.locate(offset),
            Location {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            src.key_at(&(offset..offset + 3)).as_deref(),
            Some("server.listen")
        );
    }

    #[test]
    fn key_outside_any_table() {
        let src = SourceText::new("p.toml", "bogus = 1\n");
        assert_eq!(src.key_at(&(8..9)).as_deref(), Some("bogus"));
    }
}
