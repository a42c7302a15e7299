//! The gate itself: the step just before forwarding that decides whether a write goes to
//! the backend, is answered from the cache, or is refused.
//!
//! In order: does the route require a key (its `idempotency` setting, else the configured
//! methods); is there exactly one well-formed key (`400 idempotency.missing`); does the body
//! fit the limit (`413`, before anything is stored); then the cache decides: claim and
//! forward, replay, `409 idempotency.in_progress`, `422 idempotency.mismatch`, or
//! `409 idempotency.not_replayable`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use super::cache::{Begin, Cache, CacheError, Replaced, Terms};
use super::capture::{self, RequestBodyError};
use super::fingerprint::RequestShape;
use super::key::{self, KeyHeaderError};
use super::lease::{Lease, SettleTerms};
use super::{replay, Durability, Idempotency};
use crate::body::{full_body, ProxyBody};
use crate::config::{Config, IdempotencyConfig, RouteConfig};
use crate::gate::authn::Authenticated;
use crate::gate::limits;
use crate::problem::{Problem, ProblemCode};

/// How long a client is asked to wait before retrying a request still in progress.
const IN_PROGRESS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the gate decided.
#[derive(Debug)]
pub enum Admission {
    /// Forward the request. With a lease, the answer must be settled through
    /// [`Lease::forward`]; without one, the route does not use idempotency keys and the
    /// request is untouched (its body still streaming).
    Forward {
        /// The request, its body read into memory when there is a lease.
        request: Request<ProxyBody>,
        /// The claim on the key, if the route requires one (boxed: most requests have none).
        lease: Option<Box<Lease>>,
    },
    /// Answer with this cached answer; the backend is not called.
    Replay(Response<ProxyBody>),
}

/// Whether `route` requires an `Idempotency-Key`: its own setting, else the method list.
pub fn requires_key(route: &RouteConfig, settings: &IdempotencyConfig) -> bool {
    route
        .idempotency
        .unwrap_or_else(|| settings.methods.contains(&route.method))
}

impl Idempotency {
    /// Runs the gate for an authenticated request to `route`.
    pub async fn admit(
        &self,
        request: Request<ProxyBody>,
        route: &RouteConfig,
        caller: &Authenticated,
        config: &Config,
    ) -> Result<Admission, Problem> {
        let settings = &config.idempotency;
        if !requires_key(route, settings) {
            return Ok(Admission::Forward {
                request,
                lease: None,
            });
        }
        let key = key::from_headers(request.headers()).map_err(key_problem)?;
        let limit = settings.max_body_bytes.min(config.server.max_body_bytes);
        limits::check_declared_length(request.headers(), limit)?;
        let (parts, body) = request.into_parts();
        let body = capture::read_request(body, limit)
            .await
            .map_err(|error| match error {
                RequestBodyError::TooLarge => limits::too_large(limit),
                RequestBodyError::Incomplete => Problem::new(ProblemCode::BodyIncomplete)
                    .with_detail("the request body ended before it was complete"),
            })?;

        let digester = self.cache.keys().digester();
        let key_id = caller.key.id.to_string();
        let scope = digester.scope(&caller.org.id, &key_id, &key);
        drop(key);
        let fingerprint = digester.fingerprint(&RequestShape {
            method: &parts.method,
            route: &route.name,
            path: parts.uri.path(),
            query: parts.uri.query(),
            body: &body,
        });
        let terms = Terms {
            retention: settings.retention,
            lease: settings.lease,
        };
        let begin = self
            .cache
            .begin(&scope, &fingerprint, &terms)
            .map_err(|error| unavailable(&error, &key_id, &route.name))?;

        match begin {
            Begin::Claimed(claim) => {
                if claim.replaced == Replaced::LeaseEnded {
                    tracing::warn!(
                        %key_id,
                        route = %route.name,
                        "a request with this idempotency key ended without an answer (a crash or \
                         a lost exchange) and its lease is over; forwarding the retry again"
                    );
                }
                let lease = Lease {
                    cache: self.cache.clone(),
                    claim,
                    claimed_at: Instant::now(),
                    terms: SettleTerms {
                        durability: settings.durability,
                        lease: settings.lease,
                        max_response_bytes: settings.max_response_bytes,
                        store_failures: settings.store_failures,
                    },
                    key_id,
                    route: route.name.clone(),
                };
                if settings.durability == Durability::Fsync {
                    if let Err(error) = flush(&self.cache).await {
                        let problem = unavailable(&error, &lease.key_id, &lease.route);
                        if let Err(error) = lease.cache.release(&lease.claim) {
                            tracing::error!(%error, "cannot remove an unflushed pending record");
                        }
                        return Err(problem);
                    }
                }
                Ok(Admission::Forward {
                    request: Request::from_parts(parts, full_body(body)),
                    lease: Some(Box::new(lease)),
                })
            }
            Begin::Replay(stored) => {
                tracing::debug!(%key_id, route = %route.name, "answered from the idempotency cache");
                Ok(Admission::Replay(replay::response(stored)))
            }
            Begin::InProgress => Err(Problem::new(ProblemCode::IdempotencyInProgress)
                .with_detail(
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                )
                .with_retry_after(IN_PROGRESS_RETRY_AFTER)),
            Begin::Mismatch => Err(Problem::new(ProblemCode::IdempotencyMismatch).with_detail(
                "this Idempotency-Key was already used for a different request (method, path, \
                 query or body); send a new key with a new request",
            )),
            Begin::NotReplayable => Err(Problem::new(ProblemCode::IdempotencyNotReplayable)
                .with_detail(
                    "the request with this Idempotency-Key was processed, but its answer was too \
                     large to keep and cannot be replayed; do not retry it, fetch the result \
                     instead",
                )),
        }
    }
}

/// The `400` for a missing, repeated or malformed key; the detail states the rule.
fn key_problem(error: KeyHeaderError) -> Problem {
    Problem::new(ProblemCode::IdempotencyMissing).with_detail(match error {
        KeyHeaderError::Missing => {
            "this route requires an Idempotency-Key header: 1-255 visible ASCII characters, \
             e.g. a UUID"
        }
        KeyHeaderError::Repeated => "send exactly one Idempotency-Key header",
        KeyHeaderError::Malformed => {
            "the Idempotency-Key must be 1-255 visible ASCII characters, bare or as a quoted \
             string"
        }
    })
}

/// The store cannot promise at-most-once right now: refuse rather than forward unprotected.
fn unavailable(error: &CacheError, key_id: &str, route: &str) -> Problem {
    tracing::error!(%error, %key_id, %route, "idempotency store unavailable; write refused");
    Problem::new(ProblemCode::IdempotencyUnavailable)
        .with_detail("the idempotency store is unavailable; retry shortly")
        .with_retry_after(IN_PROGRESS_RETRY_AFTER)
}

/// Flushes the store off the async workers.
async fn flush(cache: &Arc<Cache>) -> Result<(), CacheError> {
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || cache.flush()).await {
        Ok(flushed) => flushed.map_err(CacheError::from),
        Err(_) => Err(CacheError::Task),
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn refusals_carry_their_status_code_and_retry_advice() {
        for error in [
            KeyHeaderError::Missing,
            KeyHeaderError::Repeated,
            KeyHeaderError::Malformed,
        ] {
            let problem = key_problem(error);
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
            assert_eq!(problem.code().as_str(), "idempotency.missing");
        }
        let response = unavailable(&CacheError::Task, "0a0a0a0a", "echo.post").into_response("id");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(
            ProblemCode::BodyIncomplete.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProblemCode::IdempotencyNotReplayable.status(),
            StatusCode::CONFLICT
        );
    }
}
