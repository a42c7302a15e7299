//! Telling a TLS client from a plaintext one by the first byte on the wire.
//!
//! A TLS connection opens with a handshake record (content type 22). A plaintext HTTP/1.x
//! request opens with an upper-case method token. Answering the latter with a readable `400`
//! problem, instead of a TLS alert, tells a partner at once that they forgot `https://`.

use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::problem::{Problem, ProblemCode};
use crate::request_id::RequestId;

/// What the first byte says the client is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1.x request line in clear text.
    PlainHttp,
    /// Neither: the connection is dropped.
    Unknown,
}

/// TLS record content type for handshake messages (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// Classifies the first byte a client sent.
pub fn classify(first: u8) -> FirstByte {
    match first {
        TLS_HANDSHAKE => FirstByte::Tls,
        b'A'..=b'Z' => FirstByte::PlainHttp,
        _ => FirstByte::Unknown,
    }
}

/// Waits for the client's first byte without consuming it. `None` if the client closed.
pub async fn peek_first_byte(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let n = stream.peek(&mut byte).await?;
    Ok((n == 1).then_some(byte[0]))
}

/// Largest plaintext request head read before answering; the rest is not looked at.
const MAX_PLAIN_HEAD: usize = 16 * 1024;

/// Reads a plaintext request head (bounded in size and time) and returns its method, if it
/// has one, for the request's audit record.
///
/// The head is read before answering so that the client's unread bytes do not turn the close
/// into a reset that would swallow the answer. Nothing else of it is looked at.
pub async fn read_plain_head(stream: &mut TcpStream, patience: Duration) -> Option<Method> {
    let mut head = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 2048];
        while head.len() < MAX_PLAIN_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(patience, read_head).await;
    head.split(|byte| *byte == b' ')
        .next()
        .and_then(|token| Method::from_bytes(token).ok())
}

/// Answers a plaintext request with `400 request.plain_http` carrying `request_id`, and
/// closes the connection.
pub async fn answer_plain_http(mut stream: TcpStream, request_id: &RequestId, patience: Duration) {
    let problem = Problem::new(ProblemCode::PlainHttp)
        .with_detail("this port speaks HTTPS only; use an https:// URL");
    let body = problem.to_json(request_id.as_str());
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nx-request-id: {}\r\n\
         connection: close\r\n\r\n",
        body.len(),
        request_id
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(patience, write).await.is_ok() {
        // Give the client a moment to read before the socket closes.
        let mut sink = [0u8; 1024];
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(0x16), FirstByte::Tls);
        assert_eq!(classify(b'G'), FirstByte::PlainHttp);
        assert_eq!(classify(b'P'), FirstByte::PlainHttp);
        assert_eq!(classify(0x00), FirstByte::Unknown);
        assert_eq!(classify(b'g'), FirstByte::Unknown);
    }
}
