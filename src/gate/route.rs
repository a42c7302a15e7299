//! Route matching: maps a request's method and raw path to the policy route
//! that governs it, and refuses paths the backend could read differently.
//!
//! # Why this module is strict
//!
//! The matched route decides which scope a partner needs. If the gate and the
//! backend disagree about which resource a path names, a partner holding a
//! weak scope reaches a resource guarded by a strong one (route confusion).
//! So this module:
//!
//! * matches on percent-decoded segments, because the backend decodes them:
//!   `/v1/notes/%65xport` is the literal `export`, never an `{id}`;
//! * refuses, rather than repairs, anything a backend might normalise into a
//!   different path: dot segments (also encoded, and with a `;` parameter as
//!   in `..;`, which some servlet containers strip), encoded slashes and
//!   backslashes, raw backslashes, empty segments, control bytes, malformed
//!   percent-encoding, and a raw `?` or `#` (the caller must pass the path
//!   without its query string);
//! * never rewrites the path: what is checked here is what is forwarded.
//!
//! # Matching
//!
//! Routes compile into one segment trie per method. Lookup walks the trie from
//! the left, preferring a literal, then a `{param}`, then a `{*rest}` at each
//! segment, and backtracks when the preferred branch fails further down. Each
//! trie node is visited at most once per lookup, so the cost is bounded by the
//! size of the table, never exponential in the path.
//!
//! A path with a single trailing slash (`/v1/notes/`) is valid but matches no
//! template: templates cannot end in `/`, so `/x/` and `/x` are never silently
//! treated as the same resource. The bare root `/` matches only the root
//! template `/`.
//!
//! # What the backend must agree with
//!
//! Literals compare byte for byte after one round of decoding, so the
//! backend is assumed to route case-sensitively, to decode exactly once and
//! not to strip `;` parameters from ordinary segments. A backend that folds
//! case (`/v1/notes/EXPORT`), decodes twice (`%2565xport`) or drops `;x`
//! (`export;x`) would route such a path to a literal that the gate matched as
//! a `{param}`. This module does not guard against those backends.

use std::borrow::Cow;

use http::Method;
use percent_encoding::percent_decode_str;

/// A parsed path template: literal segments, `{param}` segments, and an
/// optional final `{*rest}` catch-all.
///
/// Parsing is separate from table building so a policy loader can report a
/// bad template against the route that declared it, before any table exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    text: Box<str>,
    segments: Vec<Segment>,
}

/// One segment of a template. Names are kept for diagnostics; matching and
/// conflict detection ignore them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Text that must equal the decoded request segment byte for byte.
    Literal(Box<str>),
    /// `{name}`: exactly one non-empty segment.
    Param(Box<str>),
    /// `{*name}`: one or more remaining segments.
    CatchAll(Box<str>),
}

impl Segment {
    fn param_name(&self) -> Option<&str> {
        match self {
            Segment::Literal(_) => None,
            Segment::Param(name) | Segment::CatchAll(name) => Some(name),
        }
    }
}

/// Why a path template was rejected. Each message names the offending text so
/// a policy author can fix the file without reading this code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// Templates are absolute paths; a relative one has no defined meaning.
    #[error("path template must start with '/'")]
    MissingLeadingSlash,
    /// `//` or a trailing `/` would declare a path that requests are refused
    /// for, so the route could never match.
    #[error("empty segment in path template: remove the doubled `//` or the trailing `/`")]
    EmptySegment,
    /// A catch-all swallows the rest of the path, so nothing may follow it.
    #[error("catch-all `{segment}` must be the last segment")]
    CatchAllNotLast {
        /// The catch-all segment as written, e.g. `{*rest}`.
        segment: String,
    },
    /// Names must be identifiers so they can be referenced unambiguously.
    #[error(
        "invalid parameter name `{segment}`: use a letter or `_` followed by letters, digits or `_`"
    )]
    InvalidParamName {
        /// The braced segment as written, e.g. `{1id}`.
        segment: String,
    },
    /// Two parameters with one name would make the captured value ambiguous.
    #[error("duplicate parameter name `{name}`")]
    DuplicateParam {
        /// The repeated name, without braces.
        name: String,
    },
    /// Partial-segment parameters (`abc{id}`) would need prefix matching and
    /// invite ambiguity; a parameter must be a whole segment.
    #[error(
        "segment `{segment}` mixes braces with other text: a parameter must be a whole segment, `{{name}}` or `{{*name}}`"
    )]
    MixedSegment {
        /// The segment as written.
        segment: String,
    },
    /// Literals are limited to RFC 3986 path characters, so what the policy
    /// says is exactly what a conforming client sends.
    #[error("character `{}` is not allowed in a path template", .character.escape_debug())]
    DisallowedChar {
        /// The first offending character.
        character: char,
    },
    /// Requests are matched after decoding, so literals are written decoded;
    /// an encoded literal could never match.
    #[error(
        "percent-encoding is not allowed in a path template: write the literal segment unencoded"
    )]
    PercentEncoded,
    /// `.` and `..` (also with a `;` parameter) are refused in requests, so a
    /// template holding one could never match.
    #[error("dot segment `{segment}` is not allowed in a path template")]
    DotSegment {
        /// The segment as written.
        segment: String,
    },
}

impl PathTemplate {
    /// Parses and validates a template such as `/v1/patients/{id}`, so that
    /// every mistake surfaces when the policy is loaded rather than as a route
    /// that silently never matches.
    ///
    /// # Errors
    ///
    /// Returns the first [`TemplateError`] found, reading left to right.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let rest = template
            .strip_prefix('/')
            .ok_or(TemplateError::MissingLeadingSlash)?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let mut pieces = rest.split('/').peekable();
            while let Some(piece) = pieces.next() {
                let segment = parse_segment(piece)?;
                if matches!(segment, Segment::CatchAll(_)) && pieces.peek().is_some() {
                    return Err(TemplateError::CatchAllNotLast {
                        segment: piece.to_owned(),
                    });
                }
                segments.push(segment);
            }
        }
        for (position, segment) in segments.iter().enumerate() {
            if let Some(name) = segment.param_name() {
                if segments[..position]
                    .iter()
                    .any(|other| other.param_name() == Some(name))
                {
                    return Err(TemplateError::DuplicateParam {
                        name: name.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            text: template.into(),
            segments,
        })
    }

    /// The template exactly as written in the policy, for logs and errors.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_segment(text: &str) -> Result<Segment, TemplateError> {
    if text.is_empty() {
        return Err(TemplateError::EmptySegment);
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let (catch_all, name) = match inner.strip_prefix('*') {
            Some(name) => (true, name),
            None => (false, inner),
        };
        if !is_param_name(name) {
            return Err(TemplateError::InvalidParamName {
                segment: text.to_owned(),
            });
        }
        return Ok(if catch_all {
            Segment::CatchAll(name.into())
        } else {
            Segment::Param(name.into())
        });
    }
    if text.contains(['{', '}']) {
        return Err(TemplateError::MixedSegment {
            segment: text.to_owned(),
        });
    }
    if let Some(character) = text.chars().find(|c| !is_pchar(*c)) {
        return Err(if character == '%' {
            TemplateError::PercentEncoded
        } else {
            TemplateError::DisallowedChar { character }
        });
    }
    if is_dot_segment(text.bytes()) {
        return Err(TemplateError::DotSegment {
            segment: text.to_owned(),
        });
    }
    Ok(Segment::Literal(text.into()))
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 3986 `pchar` without percent-encoding.
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

/// True for `.` and `..`, also when followed by a `;` parameter (`..;x`),
/// because some servers strip path parameters before resolving dot segments.
fn is_dot_segment(decoded: impl IntoIterator<Item = u8>) -> bool {
    let mut dots = 0usize;
    for byte in decoded {
        match byte {
            b'.' if dots < 2 => dots += 1,
            b';' => break,
            _ => return false,
        }
    }
    dots > 0
}

/// Two routes that can never be told apart: same method and same shape
/// (same literals, parameters and catch-all in the same positions, whatever
/// the parameter names). Reported so policy loading fails instead of one
/// route silently shadowing the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// Index of the route declared first.
    pub first: usize,
    /// Index of the later route that duplicates it.
    pub second: usize,
}

/// Why a request path was refused. Messages never include the path, because
/// paths carry patient identifiers and errors end up in logs.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum InvalidPath {
    /// Only origin-form paths can be routed; `*` and absolute URIs cannot.
    #[error("path must start with '/'")]
    MissingLeadingSlash,
    /// Backends and proxies disagree on whether `//` collapses.
    #[error("empty path segment")]
    EmptySegment,
    /// `.` or `..`, raw or encoded, or followed by `;`: the backend may
    /// resolve it into a different route than the one checked here.
    #[error("dot segment in path")]
    DotSegment,
    /// `%2F` or `%5C`: some backends decode these into separators.
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    /// A `%` not followed by two hex digits decodes differently per server.
    #[error("malformed percent-encoding in path")]
    MalformedPercent,
    /// Control bytes (raw or decoded) enable header and log injection and are
    /// handled inconsistently by backends.
    #[error("control character in path")]
    ControlChar,
    /// Some servers treat a raw `\` as a path separator.
    #[error("backslash in path")]
    Backslash,
    /// A raw `?` or `#` means the query or fragment was passed along with the
    /// path; the backend would route on less of it than was checked here.
    #[error("query or fragment delimiter in path")]
    QueryOrFragment,
}

/// Compiled routes: one segment trie per method, so lookup cost depends on
/// the path's depth and the branching at each level, not on the route count.
/// Index values refer to the position in the slice given to `build`.
#[derive(Debug)]
pub struct RouteTable {
    methods: Vec<(Method, Node)>,
}

#[derive(Debug, Default)]
struct Node {
    /// Literal children sorted by text, for binary search.
    literals: Vec<(Box<[u8]>, Node)>,
    param: Option<Box<Node>>,
    /// Route whose catch-all starts at this node's next segment.
    catch_all: Option<usize>,
    /// Route whose template ends exactly at this node.
    route: Option<usize>,
}

impl RouteTable {
    /// Compiles the routes, reporting every pair that cannot be told apart so
    /// that a policy author sees all conflicts at once.
    ///
    /// # Errors
    ///
    /// Returns every [`RouteConflict`], in declaration order of the later
    /// route; with three identical shapes both later ones name the first.
    pub fn build(routes: &[(Method, PathTemplate)]) -> Result<Self, Vec<RouteConflict>> {
        let mut methods: Vec<(Method, Node)> = Vec::new();
        let mut conflicts = Vec::new();
        for (index, (method, template)) in routes.iter().enumerate() {
            let position = methods
                .iter()
                .position(|(known, _)| known == method)
                .unwrap_or_else(|| {
                    methods.push((method.clone(), Node::default()));
                    methods.len() - 1
                });
            let root = &mut methods[position].1;
            if let Err(first) = root.insert(&template.segments, index) {
                conflicts.push(RouteConflict {
                    first,
                    second: index,
                });
            }
        }
        if conflicts.is_empty() {
            Ok(Self { methods })
        } else {
            Err(conflicts)
        }
    }

    /// Finds the most specific route for a request.
    ///
    /// `path` is the raw request path as received (percent-encoded, no query
    /// string). The whole path is validated before any matching and whatever
    /// the method, so a refused path is refused consistently. `Ok(None)` means
    /// the path is acceptable but no route of this method matches it. Methods
    /// compare exactly: a `GET` route does not serve `HEAD`.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidPath`] when the path could be read differently by the
    /// backend; the request must then be refused, not forwarded.
    pub fn find(&self, method: &Method, path: &str) -> Result<Option<usize>, InvalidPath> {
        let rest = path
            .strip_prefix('/')
            .ok_or(InvalidPath::MissingLeadingSlash)?;
        let (body, trailing_slash) = match rest.strip_suffix('/') {
            Some(body) => (body, true),
            None => (rest, false),
        };
        if !body.is_empty() || trailing_slash {
            body.split('/').try_for_each(check_segment)?;
        }
        if trailing_slash {
            return Ok(None);
        }
        let Some((_, root)) = self.methods.iter().find(|(known, _)| known == method) else {
            return Ok(None);
        };
        Ok(if body.is_empty() {
            root.route
        } else {
            root.lookup(body)
        })
    }
}

impl Node {
    /// Adds a route; on a clash returns the index already holding the slot.
    fn insert(&mut self, segments: &[Segment], index: usize) -> Result<(), usize> {
        let mut node = self;
        for segment in segments {
            node = match segment {
                Segment::Literal(text) => node.literal_child_mut(text.as_bytes()),
                Segment::Param(_) => node.param.get_or_insert_with(Box::default).as_mut(),
                // Parsing guarantees a catch-all is the last segment.
                Segment::CatchAll(_) => return claim(&mut node.catch_all, index),
            };
        }
        claim(&mut node.route, index)
    }

    fn literal_child_mut(&mut self, text: &[u8]) -> &mut Node {
        let position = match self
            .literals
            .binary_search_by(|(known, _)| known.as_ref().cmp(text))
        {
            Ok(position) => position,
            Err(position) => {
                self.literals
                    .insert(position, (text.into(), Node::default()));
                position
            }
        };
        &mut self.literals[position].1
    }

    /// Matches `path` (validated, non-empty, no leading or trailing slash)
    /// below this node: literal first, then parameter, then catch-all.
    fn lookup(&self, path: &str) -> Option<usize> {
        let (segment, tail) = match path.split_once('/') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (path, None),
        };
        let descend = |child: &Node| match tail {
            Some(tail) => child.lookup(tail),
            None => child.route,
        };
        self.literal_child(segment)
            .and_then(descend)
            .or_else(|| self.param.as_deref().and_then(descend))
            .or(self.catch_all)
    }

    fn literal_child(&self, segment: &str) -> Option<&Node> {
        if self.literals.is_empty() {
            return None;
        }
        let decoded = decode(segment);
        let position = self
            .literals
            .binary_search_by(|(known, _)| known.as_ref().cmp(decoded.as_ref()))
            .ok()?;
        self.literals.get(position).map(|(_, child)| child)
    }
}

fn claim(slot: &mut Option<usize>, index: usize) -> Result<(), usize> {
    match *slot {
        Some(first) => Err(first),
        None => {
            *slot = Some(index);
            Ok(())
        }
    }
}

/// Decodes a validated segment; borrows when it holds no `%`, so the common
/// case does not allocate.
fn decode(segment: &str) -> Cow<'_, [u8]> {
    percent_decode_str(segment).into()
}

/// Refuses a raw segment that a backend could read as something else.
fn check_segment(segment: &str) -> Result<(), InvalidPath> {
    if segment.is_empty() {
        return Err(InvalidPath::EmptySegment);
    }
    let bytes = segment.as_bytes();
    let mut index = 0;
    while let Some(&raw) = bytes.get(index) {
        let byte = match raw {
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(InvalidPath::MalformedPercent);
                };
                let decoded = (high << 4) | low;
                if decoded == b'/' || decoded == b'\\' {
                    return Err(InvalidPath::EncodedSlash);
                }
                index += 3;
                decoded
            }
            b'\\' => return Err(InvalidPath::Backslash),
            b'?' | b'#' => return Err(InvalidPath::QueryOrFragment),
            other => {
                index += 1;
                other
            }
        };
        if byte.is_ascii_control() {
            return Err(InvalidPath::ControlChar);
        }
    }
    if is_dot_segment(percent_decode_str(segment)) {
        return Err(InvalidPath::DotSegment);
    }
    Ok(())
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        PathTemplate::parse(template)
    }

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let parsed: Vec<_> = routes
            .iter()
            .map(|(method, path)| {
                (
                    Method::from_bytes(method.as_bytes()).expect("method"),
                    parse(path).expect("template"),
                )
            })
            .collect();
        RouteTable::build(&parsed).expect("no conflicts")
    }

    fn get(table: &RouteTable, path: &str) -> Result<Option<usize>, InvalidPath> {
        table.find(&Method::GET, path)
    }

    fn conflicts(routes: &[(Method, &str)]) -> Vec<RouteConflict> {
        let parsed: Vec<_> = routes
            .iter()
            .map(|(method, path)| (method.clone(), parse(path).expect("template")))
            .collect();
        match RouteTable::build(&parsed) {
            Ok(_) => Vec::new(),
            Err(conflicts) => conflicts,
        }
    }

    #[test]
    fn valid_templates_parse_and_keep_their_text() {
        for text in [
            "/",
            "/v1/patients/{id}",
            "/v1/{*rest}",
            "/{*rest}",
            "/a-b._~!$&'()*+,;=:@/{_x9}/{Y}",
            "/...",
            "/.a/a./;./..x",
        ] {
            let template = parse(text).expect(text);
            assert_eq!(template.as_str(), text);
        }
        assert_eq!(parse("/").expect("root").segments, Vec::new());
    }

    #[test]
    fn template_missing_leading_slash() {
        for text in ["", "v1/x", "{id}", " /x"] {
            assert_eq!(
                parse(text),
                Err(TemplateError::MissingLeadingSlash),
                "{text}"
            );
        }
    }

    #[test]
    fn template_empty_segment() {
        for text in ["//", "/a//b", "/a/", "/a/{id}/"] {
            assert_eq!(parse(text), Err(TemplateError::EmptySegment), "{text}");
        }
    }

    #[test]
    fn template_catch_all_not_last() {
        let error = parse("/{*rest}/x").expect_err("catch-all first");
        assert_eq!(
            error,
            TemplateError::CatchAllNotLast {
                segment: "{*rest}".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "catch-all `{*rest}` must be the last segment"
        );
    }

    #[test]
    fn template_invalid_param_name() {
        for segment in [
            "{}", "{*}", "{1id}", "{a-b}", "{a b}", "{{a}}", "{**a}", "{é}",
        ] {
            assert_eq!(
                parse(&format!("/x/{segment}")),
                Err(TemplateError::InvalidParamName {
                    segment: segment.into()
                }),
                "{segment}"
            );
        }
        let message = parse("/{1id}").expect_err("bad name").to_string();
        assert!(
            message.starts_with("invalid parameter name `{1id}`"),
            "{message}"
        );
    }

    #[test]
    fn template_duplicate_param() {
        for text in ["/{id}/{id}", "/{id}/x/{*id}"] {
            assert_eq!(
                parse(text),
                Err(TemplateError::DuplicateParam { name: "id".into() }),
                "{text}"
            );
        }
        assert_eq!(
            parse("/{id}/{id}").expect_err("dup").to_string(),
            "duplicate parameter name `id`"
        );
    }

    #[test]
    fn template_mixed_segment() {
        for segment in ["abc{id}", "{id}x", "{id", "id}", "{", "}", "a{*b}"] {
            assert_eq!(
                parse(&format!("/{segment}")),
                Err(TemplateError::MixedSegment {
                    segment: segment.into()
                }),
                "{segment}"
            );
        }
    }

    #[test]
    fn template_disallowed_char() {
        for (text, character) in [
            ("/a?b", '?'),
            ("/a#", '#'),
            ("/a b", ' '),
            ("/a\\b", '\\'),
            ("/é", 'é'),
            ("/a\"", '"'),
            ("/a\nb", '\n'),
        ] {
            assert_eq!(
                parse(text),
                Err(TemplateError::DisallowedChar { character }),
                "{text}"
            );
        }
        assert_eq!(
            parse("/a?b").expect_err("?").to_string(),
            "character `?` is not allowed in a path template"
        );
        assert_eq!(
            parse("/a\nb").expect_err("newline").to_string(),
            "character `\\n` is not allowed in a path template"
        );
    }

    #[test]
    fn template_percent_encoded() {
        for text in ["/%65xport", "/a%2Fb", "/%"] {
            assert_eq!(parse(text), Err(TemplateError::PercentEncoded), "{text}");
        }
    }

    #[test]
    fn template_dot_segment() {
        for segment in [".", "..", ".;", "..;x"] {
            assert_eq!(
                parse(&format!("/a/{segment}")),
                Err(TemplateError::DotSegment {
                    segment: segment.into()
                }),
                "{segment}"
            );
        }
    }

    #[test]
    fn invalid_paths_are_refused_with_the_right_reason() {
        let routes = table(&[("GET", "/{*rest}"), ("GET", "/")]);
        let cases = [
            ("", InvalidPath::MissingLeadingSlash),
            ("*", InvalidPath::MissingLeadingSlash),
            ("v1/notes", InvalidPath::MissingLeadingSlash),
            ("http://h/v1", InvalidPath::MissingLeadingSlash),
            ("//", InvalidPath::EmptySegment),
            ("//a", InvalidPath::EmptySegment),
            ("/a//b", InvalidPath::EmptySegment),
            ("/a//", InvalidPath::EmptySegment),
            ("/.", InvalidPath::DotSegment),
            ("/a/../b", InvalidPath::DotSegment),
            ("/a/..", InvalidPath::DotSegment),
            ("/a/%2e%2E/b", InvalidPath::DotSegment),
            ("/a/.%2e", InvalidPath::DotSegment),
            ("/a/%2E", InvalidPath::DotSegment),
            ("/a/..;/b", InvalidPath::DotSegment),
            ("/a/.;x", InvalidPath::DotSegment),
            ("/a/..%3b", InvalidPath::DotSegment),
            ("/a/./", InvalidPath::DotSegment),
            ("/a%2Fb", InvalidPath::EncodedSlash),
            ("/a%2fb", InvalidPath::EncodedSlash),
            ("/a%5cb", InvalidPath::EncodedSlash),
            ("/a%5C", InvalidPath::EncodedSlash),
            ("/a%zz", InvalidPath::MalformedPercent),
            ("/a%", InvalidPath::MalformedPercent),
            ("/a%4", InvalidPath::MalformedPercent),
            ("/a%4g", InvalidPath::MalformedPercent),
            ("/%%41", InvalidPath::MalformedPercent),
            ("/a%0a", InvalidPath::ControlChar),
            ("/a%00", InvalidPath::ControlChar),
            ("/a%7F", InvalidPath::ControlChar),
            ("/a%1f", InvalidPath::ControlChar),
            ("/a\tb", InvalidPath::ControlChar),
            ("/a\u{7f}", InvalidPath::ControlChar),
            ("/a\\b", InvalidPath::Backslash),
            ("\\a", InvalidPath::MissingLeadingSlash),
            ("/\\", InvalidPath::Backslash),
            ("/a?b=1", InvalidPath::QueryOrFragment),
            ("/a#frag", InvalidPath::QueryOrFragment),
        ];
        for (path, expected) in cases {
            assert_eq!(get(&routes, path), Err(expected), "{path:?}");
        }
    }

    #[test]
    fn invalid_path_is_refused_whatever_the_method() {
        let routes = table(&[("GET", "/{*rest}")]);
        let unknown = Method::from_bytes(b"PURGE").expect("method");
        assert_eq!(
            routes.find(&unknown, "/a/../b"),
            Err(InvalidPath::DotSegment)
        );
        // Refused even beyond the trailing slash that would otherwise match nothing.
        assert_eq!(get(&routes, "/a%2f/"), Err(InvalidPath::EncodedSlash));
    }

    #[test]
    fn invalid_path_messages_never_include_the_path() {
        let routes = table(&[("GET", "/{*rest}")]);
        for path in [
            "PATIENT4711",
            "/PATIENT4711//x",
            "/PATIENT4711/..",
            "/PATIENT4711%2f",
            "/PATIENT4711%zz",
            "/PATIENT4711%0a",
            "/PATIENT4711\\",
            "/PATIENT4711?x",
        ] {
            let message = get(&routes, path).expect_err(path).to_string();
            assert!(!message.contains("PATIENT"), "{message}");
            assert!(!message.contains("4711"), "{message}");
        }
    }

    #[test]
    fn encoded_characters_that_are_not_dangerous_are_accepted() {
        let routes = table(&[("GET", "/p/{id}")]);
        for path in [
            "/p/a%3Fb",
            "/p/%23",
            "/p/%25",
            "/p/%ff%fe",
            "/p/...",
            "/p/a.b",
            "/p/%20",
        ] {
            assert_eq!(get(&routes, path), Ok(Some(0)), "{path}");
        }
    }

    #[test]
    fn literal_beats_param_beats_catch_all() {
        let routes = table(&[
            ("GET", "/v1/notes/{*rest}"),
            ("GET", "/v1/notes/{id}"),
            ("GET", "/v1/notes/export"),
        ]);
        assert_eq!(get(&routes, "/v1/notes/export"), Ok(Some(2)));
        assert_eq!(get(&routes, "/v1/notes/n-17"), Ok(Some(1)));
        assert_eq!(get(&routes, "/v1/notes/n-17/history"), Ok(Some(0)));
        assert_eq!(get(&routes, "/v1/notes/export/x"), Ok(Some(0)));
        assert_eq!(get(&routes, "/v1/notes"), Ok(None));
    }

    #[test]
    fn precedence_is_decided_from_the_left() {
        let routes = table(&[("GET", "/{a}/x"), ("GET", "/l/{b}")]);
        assert_eq!(get(&routes, "/l/x"), Ok(Some(1)));
        assert_eq!(get(&routes, "/m/x"), Ok(Some(0)));
    }

    #[test]
    fn backtracks_when_the_preferred_branch_fails() {
        let routes = table(&[("GET", "/a/b/c"), ("GET", "/a/{x}/d")]);
        assert_eq!(get(&routes, "/a/b/c"), Ok(Some(0)));
        assert_eq!(get(&routes, "/a/b/d"), Ok(Some(1)));
        assert_eq!(get(&routes, "/a/b/e"), Ok(None));

        let routes = table(&[
            ("GET", "/a/b/c/d"),
            ("GET", "/a/{x}/c/e"),
            ("GET", "/a/{*rest}"),
        ]);
        assert_eq!(get(&routes, "/a/b/c/e"), Ok(Some(1)));
        assert_eq!(get(&routes, "/a/b/c/f"), Ok(Some(2)));
        assert_eq!(get(&routes, "/a/b"), Ok(Some(2)));
    }

    #[test]
    fn percent_encoded_segment_matches_its_decoded_literal() {
        let routes = table(&[
            ("GET", "/v1/notes/{id}"),
            ("GET", "/v1/notes/export"),
            ("GET", "/v1/a+b"),
        ]);
        assert_eq!(get(&routes, "/v1/notes/%65xport"), Ok(Some(1)));
        assert_eq!(
            get(&routes, "/%76%31/notes/%65%78%70%6F%72%74"),
            Ok(Some(1))
        );
        assert_eq!(get(&routes, "/v1/a%2Bb"), Ok(Some(2)));
        // Literals are case-sensitive and encoding does not fold case.
        assert_eq!(get(&routes, "/v1/notes/%45xport"), Ok(Some(0)));
    }

    #[test]
    fn decoding_borrows_when_there_is_nothing_to_decode() {
        assert!(matches!(decode("export"), Cow::Borrowed(b"export")));
        let decoded = decode("%65xport");
        assert!(matches!(decoded, Cow::Owned(_)));
        assert_eq!(decoded.as_ref(), b"export");
    }

    #[test]
    fn conflicts_are_detected_whatever_the_names() {
        assert_eq!(
            conflicts(&[
                (Method::GET, "/v1/patients/{id}"),
                (Method::GET, "/v1/patients/{patient_id}"),
            ]),
            vec![RouteConflict {
                first: 0,
                second: 1
            }]
        );
        assert_eq!(
            conflicts(&[
                (Method::POST, "/x"),
                (Method::GET, "/files/{*path}"),
                (Method::GET, "/files/{*rest}"),
                (Method::GET, "/"),
                (Method::GET, "/"),
                (Method::GET, "/files/{*other}"),
            ]),
            vec![
                RouteConflict {
                    first: 1,
                    second: 2
                },
                RouteConflict {
                    first: 3,
                    second: 4
                },
                RouteConflict {
                    first: 1,
                    second: 5
                },
            ]
        );
        assert_eq!(
            conflicts(&[(Method::GET, "/a/b"), (Method::GET, "/a/b")]),
            vec![RouteConflict {
                first: 0,
                second: 1
            }]
        );
    }

    #[test]
    fn distinguishable_routes_do_not_conflict() {
        assert!(conflicts(&[
            (Method::GET, "/v1/patients/{id}"),
            (Method::POST, "/v1/patients/{id}"),
            (Method::GET, "/v1/patients/search"),
            (Method::GET, "/v1/patients/{*rest}"),
            (Method::GET, "/v1/patients"),
            (Method::GET, "/v1/{kind}/{id}"),
            (Method::GET, "/"),
            (Method::GET, "/{*all}"),
        ])
        .is_empty());
    }

    #[test]
    fn root_template_matches_only_the_root() {
        let routes = table(&[("GET", "/"), ("GET", "/{*rest}")]);
        assert_eq!(get(&routes, "/"), Ok(Some(0)));
        assert_eq!(get(&routes, "/a"), Ok(Some(1)));
        let without_root = table(&[("GET", "/{*rest}"), ("GET", "/{id}")]);
        assert_eq!(get(&without_root, "/"), Ok(None));
    }

    #[test]
    fn catch_all_needs_at_least_one_segment() {
        let routes = table(&[("GET", "/files/{*path}")]);
        assert_eq!(get(&routes, "/files"), Ok(None));
        assert_eq!(get(&routes, "/files/a"), Ok(Some(0)));
        assert_eq!(get(&routes, "/files/a/b/c/d"), Ok(Some(0)));
    }

    #[test]
    fn param_matches_exactly_one_segment() {
        let routes = table(&[("GET", "/p/{id}")]);
        assert_eq!(get(&routes, "/p"), Ok(None));
        assert_eq!(get(&routes, "/p/1/2"), Ok(None));
        assert_eq!(get(&routes, "/p/1"), Ok(Some(0)));
    }

    #[test]
    fn trailing_slash_paths_match_nothing_but_the_root() {
        let routes = table(&[
            ("GET", "/v1/notes"),
            ("GET", "/v1/notes/{id}"),
            ("GET", "/{*rest}"),
            ("GET", "/"),
        ]);
        assert_eq!(get(&routes, "/v1/notes"), Ok(Some(0)));
        assert_eq!(get(&routes, "/v1/notes/"), Ok(None));
        assert_eq!(get(&routes, "/v1/notes/7/"), Ok(None));
        assert_eq!(get(&routes, "/"), Ok(Some(3)));
    }

    #[test]
    fn methods_compare_exactly() {
        let purge = Method::from_bytes(b"PURGE").expect("method");
        let routes = table(&[("GET", "/a"), ("PURGE", "/a")]);
        assert_eq!(routes.find(&Method::GET, "/a"), Ok(Some(0)));
        assert_eq!(routes.find(&purge, "/a"), Ok(Some(1)));
        assert_eq!(routes.find(&Method::HEAD, "/a"), Ok(None));
        assert_eq!(routes.find(&Method::DELETE, "/a"), Ok(None));
        let empty = RouteTable::build(&[]).expect("empty");
        assert_eq!(empty.find(&Method::GET, "/a"), Ok(None));
    }

    #[test]
    fn table_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
        assert_send_sync::<PathTemplate>();
    }

    #[test]
    fn thousand_generated_routes_build_and_match() {
        let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
        let mut routes = Vec::new();
        for i in 0..1000 {
            let method = methods[i % methods.len()].clone();
            let text = match i % 3 {
                0 => format!("/api/v{}/res{i}/{{id}}", i % 7),
                1 => format!("/api/v{}/res{i}", i % 7),
                _ => format!("/api/v{}/res{i}/{{id}}/{{*rest}}", i % 7),
            };
            routes.push((method, parse(&text).expect("template")));
        }
        let table = RouteTable::build(&routes).expect("no conflicts");
        for (i, (method, _)) in routes.iter().enumerate() {
            let path = match i % 3 {
                0 => format!("/api/v{}/res{i}/p-{i}", i % 7),
                1 => format!("/api/v{}/res{i}", i % 7),
                _ => format!("/api/v{}/res{i}/p-{i}/x/y", i % 7),
            };
            assert_eq!(table.find(method, &path), Ok(Some(i)), "{path}");
            let other = &methods[(i + 1) % methods.len()];
            assert_eq!(table.find(other, &path), Ok(None), "{path}");
        }
        assert_eq!(table.find(&Method::GET, "/api/v0/res1000"), Ok(None));
    }

    /// Deterministic xorshift64 so the property test needs no extra crates
    /// and every failure reproduces.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    fn random_path(rng: &mut XorShift) -> String {
        const PIECES: &[&str] = &[
            "/", "/", "/", "/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%00", "%0a", "%7f",
            "%ff", "%zz", "%6", "%65", "\\", ";", "?", "#", "a", "b", "c", "d", "x", "v1", "notes",
            "export", "%65xport", "é", "\t", " ", "~", "1",
        ];
        let mut path = String::new();
        if rng.below(10) != 0 {
            path.push('/');
        }
        for _ in 0..rng.below(10) {
            if rng.below(3) == 0 {
                path.push(char::from(rng.below(128) as u8));
            } else {
                path.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        path
    }

    /// Independent restatement of the refusal rules, used as an oracle.
    fn naive_is_refused(path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return true;
        };
        let body = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return false;
        }
        if path
            .bytes()
            .any(|b| b == b'\\' || b == b'?' || b == b'#' || b.is_ascii_control())
        {
            return true;
        }
        let bytes = path.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let hex = |j: usize| bytes.get(j).is_some_and(|c| c.is_ascii_hexdigit());
                if !hex(i + 1) || !hex(i + 2) {
                    return true;
                }
            }
        }
        body.split('/').any(|segment| {
            let decoded: Vec<u8> = percent_decode_str(segment).collect();
            let lead = decoded.split(|b| *b == b';').next().unwrap_or_default();
            segment.is_empty()
                || lead == b"."
                || lead == b".."
                || decoded
                    .iter()
                    .any(|b| *b == b'/' || *b == b'\\' || b.is_ascii_control())
        })
    }

    /// Rank per position (literal 2, param 1, catch-all 0): the most specific
    /// route is the accepting one with the greatest rank vector.
    fn naive_rank(template: &PathTemplate, segments: &[Vec<u8>]) -> Option<Vec<u8>> {
        let mut rank = Vec::new();
        for (position, segment) in template.segments.iter().enumerate() {
            match segment {
                Segment::CatchAll(_) => {
                    rank.push(0);
                    return (segments.len() > position).then_some(rank);
                }
                Segment::Param(_) => rank.push(1),
                Segment::Literal(text) => {
                    if segments.get(position).map(Vec::as_slice) != Some(text.as_bytes()) {
                        return None;
                    }
                    rank.push(2);
                }
            }
        }
        (segments.len() == template.segments.len()).then_some(rank)
    }

    #[test]
    fn random_paths_never_panic_and_agree_with_a_naive_matcher() {
        let texts = [
            "/",
            "/v1/notes/export",
            "/v1/notes/{id}",
            "/v1/notes/{id}/a",
            "/v1/{*rest}",
            "/{a}/b",
            "/{a}/{b}/x",
            "/a/{*rest}",
            "/a/b/c",
            "/a/{x}/d",
            "/{a}/{b}/{c}",
            "/~/{*all}",
            "/{*all}",
        ];
        let templates: Vec<_> = texts
            .iter()
            .map(|text| parse(text).expect("template"))
            .collect();
        let routes: Vec<_> = templates
            .iter()
            .map(|template| (Method::GET, template.clone()))
            .collect();
        let table = RouteTable::build(&routes).expect("no conflicts");
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut matched = 0;
        for _ in 0..50_000 {
            let path = random_path(&mut rng);
            let result = get(&table, &path);
            assert_eq!(result.is_err(), naive_is_refused(&path), "{path:?}");
            let Ok(found) = result else { continue };
            let body = &path[1..];
            if body.ends_with('/') {
                assert_eq!(found, None, "{path:?}");
                continue;
            }
            let segments: Vec<Vec<u8>> = if body.is_empty() {
                Vec::new()
            } else {
                body.split('/')
                    .map(|segment| percent_decode_str(segment).collect())
                    .collect()
            };
            if found.is_some() {
                matched += 1;
                for segment in &segments {
                    assert!(segment != b"." && segment != b"..", "{path:?}");
                }
            }
            let expected = templates
                .iter()
                .enumerate()
                .filter_map(|(index, template)| Some((naive_rank(template, &segments)?, index)))
                .max()
                .map(|(_, index)| index);
            assert_eq!(found, expected, "{path:?}");
        }
        assert!(matched > 1_000, "generator too weak: {matched} matches");
    }
}
