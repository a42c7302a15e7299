//! Size limits that can be judged from the request head alone.
//!
//! hyper enforces a hard ceiling on header bytes and count while parsing (and answers a bare
//! `431` past it); the listener sets that ceiling above the policy's limits, so requests
//! between the two get the policy's own `431` problem document. Body size is checked here
//! when declared, and enforced while streaming otherwise ([`crate::body::LimitedBody`]).

use http::header::CONTENT_LENGTH;
use http::HeaderMap;

use crate::config::ServerConfig;
use crate::problem::{Problem, ProblemCode};

/// Per-field overhead in the RFC 9113 §6.5.2 size calculation.
const FIELD_OVERHEAD: usize = 32;

/// Refuses a header section with too many fields or too many bytes.
pub fn check_headers(headers: &HeaderMap, limits: &ServerConfig) -> Result<(), Problem> {
    if headers.len() > limits.max_headers {
        return Err(
            Problem::new(ProblemCode::HeadersTooLarge).with_detail(format!(
                "at most {} header fields are accepted",
                limits.max_headers
            )),
        );
    }
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .sum();
    if size > limits.max_header_bytes {
        return Err(
            Problem::new(ProblemCode::HeadersTooLarge).with_detail(format!(
                "the header section may be at most {} bytes",
                limits.max_header_bytes
            )),
        );
    }
    Ok(())
}

/// Refuses a body whose declared length is over the cap, before a byte of it is read.
pub fn check_declared_length(headers: &HeaderMap, max_body_bytes: u64) -> Result<(), Problem> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes => Err(too_large(max_body_bytes)),
        _ => Ok(()),
    }
}

/// The `413` problem for a body over `max_body_bytes`.
pub fn too_large(max_body_bytes: u64) -> Problem {
    Problem::new(ProblemCode::RequestTooLarge).with_detail(format!(
        "the request body may be at most {max_body_bytes} bytes"
    ))
}
