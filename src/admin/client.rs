//! The client the `portcullis keys|orgs|admin-log` commands use: one HTTP/1.1 exchange per
//! call over the admin socket.
//!
//! Failures are told apart for the operator: nothing listening (`is portcullis running?`), a
//! slow or broken server, and a refusal the server explained in a problem document.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::protocol::ProblemDocument;

/// How long one exchange (connect, send, read the whole answer) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer the client reads (a listing of many thousand keys fits).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection: portcullis is not running, or the path is wrong.
    #[error("cannot reach the admin socket {} (is portcullis running?): {}", path.display(), os_message(source))]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The exchange did not finish in time.
    #[error("the admin socket {} did not answer within {} seconds", path.display(), after.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The time limit.
        after: Duration,
    },
    /// The connection broke mid-exchange.
    #[error("the exchange over the admin socket {} failed: {source}", path.display())]
    Http {
        /// The socket path.
        path: PathBuf,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The answer was not what the admin API sends.
    #[error("unexpected answer from the admin socket {}: {reason}", path.display())]
    Unexpected {
        /// The socket path.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The server refused the request and said why.
    #[error("{}: {}{}", printable(&.0.title), printable(&.0.detail), reason_lines(&.0.reasons))]
    Problem(ProblemDocument),
}

/// A successful answer: its status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `200` or `201`.
    pub status: StatusCode,
    /// The JSON body, exactly as sent.
    pub body: Bytes,
}

/// A client for one admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    /// A client for the socket at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Changes the time limit of each exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Reply, ClientError> {
        self.send(Method::POST, path, self.encode(body)?).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch<B: Serialize>(&self, path: &str, body: &B) -> Result<Reply, ClientError> {
        self.send(Method::PATCH, path, self.encode(body)?).await
    }

    /// Decodes a reply's body into the answer type the endpoint sends.
    pub fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|error| ClientError::Unexpected {
            path: self.socket.clone(),
            reason: format!("the JSON does not have the expected shape ({error})"),
        })
    }

    fn encode<B: Serialize>(&self, body: &B) -> Result<Bytes, ClientError> {
        serde_json::to_vec(body)
            .map(Bytes::from)
            .map_err(|error| ClientError::Unexpected {
                path: self.socket.clone(),
                reason: format!("the request could not be encoded ({error})"),
            })
    }

    /// One exchange under the time limit; any non-2xx answer becomes [`ClientError::Problem`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.socket.clone(),
                after: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let http_error = |source| ClientError::Http {
            path: self.socket.clone(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin client connection ended with an error");
            }
        });

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| ClientError::Unexpected {
                path: self.socket.clone(),
                reason: format!("the request could not be built ({error})"),
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| ClientError::Unexpected {
                path: self.socket.clone(),
                reason: format!("the answer could not be read ({error})"),
            })?
            .to_bytes();
        driver.abort();

        if status.is_success() {
            return Ok(Reply { status, body });
        }
        match serde_json::from_slice::<ProblemDocument>(&body) {
            Ok(problem) => Err(ClientError::Problem(problem)),
            Err(_) => Err(ClientError::Unexpected {
                path: self.socket.clone(),
                reason: format!("status {status} without a problem document"),
            }),
        }
    }
}

/// The OS's message without the `(os error N)` suffix: `Connection refused`.
fn os_message(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Text from the server with anything that could drive a terminal replaced.
/// Each reason on an indented line of its own, after the summary.
fn reason_lines(reasons: &[String]) -> String {
    reasons
        .iter()
        .map(|reason| format!("\n  {}", printable(reason)))
        .collect()
}

pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_socket_says_so_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.sock");
        let error = AdminClient::new(&path).get("/v1/keys").await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ClientError::Unreachable { .. }));
        assert!(text.starts_with(&format!("cannot reach the admin socket {}", path.display())));
        assert!(
            text.contains("(is portcullis running?): No such file or directory"),
            "{text}"
        );
        assert!(!text.contains("os error"));
        assert!(!text.contains('\n'));

        // A socket file nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let text = AdminClient::new(&path)
            .get("/v1/keys")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.ends_with("(is portcullis running?): Connection refused"),
            "{text}"
        );
    }

    #[test]
    fn problems_print_title_and_detail_without_control_characters() {
        let error = ClientError::Problem(ProblemDocument {
            title: "Not found".into(),
            status: 404,
            detail: "no API key with id 0a1b2c3d\u{1b}[2J".into(),
            code: "admin.not_found".into(),
            reasons: Vec::new(),
        });
        assert_eq!(
            error.to_string(),
            "Not found: no API key with id 0a1b2c3d?[2J"
        );
    }

    #[test]
    fn every_reason_prints_on_a_line_of_its_own() {
        let error = ClientError::Problem(ProblemDocument {
            title: "Reload refused".into(),
            status: 422,
            detail: "the policy was not reloaded".into(),
            code: "admin.reload_refused".into(),
            reasons: vec!["p.toml:3:1: server.listen: x".into(), "bad\nline".into()],
        });
        assert_eq!(
            error.to_string(),
            "Reload refused: the policy was not reloaded\n  p.toml:3:1: server.listen: x\n  bad?line"
        );
    }
}
