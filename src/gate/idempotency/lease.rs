//! Forwarding a claimed request and recording its answer.
//!
//! The forward runs in its own task and is awaited from there: if the client hangs up while
//! the backend works, the exchange still finishes and its answer is still recorded, so the
//! client's retry gets the answer instead of performing the write a second time. (A
//! forward tied to the client's connection would be cancelled mid-flight, leaving only the
//! lease to decide when a retry may go through.)
//!
//! Settling: an answer below 500 (or any answer, with `store_failures`) is read up to
//! `max_response_bytes`, sealed and stored before the client sees it; a larger one is
//! forwarded as it streams and recorded as too large to replay; a 5xx answer, a failed
//! exchange, an answer that breaks off or one that outlasts the lease removes the record so
//! the retry is forwarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::response::Parts;
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;

use super::cache::{Cache, CacheError, Claim};
use super::capture::{self, Captured, PrefixedBody};
use super::record::Payload;
use super::{replay, Durability};
use crate::body::{full_body, LimitTrip, ProxyBody};
use crate::forward::headers::Identity;
use crate::forward::{Destination, Forwarder, Outbound};
use crate::problem::{Problem, ProblemCode};
use crate::request_id::RequestId;

/// The right to forward one request for its key, and the duty to record the answer.
///
/// Dropping a lease without [`Lease::forward`] leaves the pending record to expire with its
/// lease; nothing in the pipeline does that after a successful admission.
#[derive(Debug)]
pub struct Lease {
    /// Where the record lives.
    pub(super) cache: Arc<Cache>,
    /// The pending record this request wrote.
    pub(super) claim: Claim,
    /// When the claim was written; the exchange must end within the lease from here.
    pub(super) claimed_at: Instant,
    pub(super) terms: SettleTerms,
    /// The key's public id, for logs.
    pub(super) key_id: String,
    /// The route's name, for logs.
    pub(super) route: String,
}

/// How the answer is settled, fixed by the policy when the request arrived.
#[derive(Debug, Clone, Copy)]
pub(super) struct SettleTerms {
    /// Whether the recorded answer is flushed before the client sees it.
    pub(super) durability: Durability,
    /// How long the exchange may take, from the claim.
    pub(super) lease: Duration,
    /// Largest answer kept for replay.
    pub(super) max_response_bytes: u64,
    /// Whether 5xx answers and failed exchanges are kept too.
    pub(super) store_failures: bool,
}

/// What came back from the backend, read as far as settling needs.
enum Exchange {
    /// An answer that is not kept (a 5xx, failures not being kept): passed on untouched.
    PassThrough(Response<ProxyBody>),
    /// An answer read whole, within the limit.
    Whole(Parts, Bytes),
    /// An answer past the limit: what was read, and the rest of the stream.
    Exceeded(Parts, Bytes, ProxyBody),
}

impl Lease {
    /// Forwards `request` and records the answer, to completion even if the client goes
    /// away meanwhile.
    ///
    /// The exchange (the backend's head, then the body as far as it is kept) must end before
    /// the lease does: past it a retry may claim the key, so this request stops waiting and
    /// answers `504`.
    pub async fn forward(
        self,
        forwarder: &Arc<Forwarder>,
        request: Request<ProxyBody>,
        outbound: &Outbound<'_>,
        trip: &LimitTrip,
    ) -> Result<Response<ProxyBody>, Problem> {
        let forwarder = forwarder.clone();
        let detached = DetachedOutbound::new(outbound);
        let trip = trip.clone();
        let deadline = tokio::time::Instant::from_std(self.claimed_at + self.terms.lease);
        let task = tokio::spawn(async move {
            let outbound = detached.view();
            let exchange = exchange(&forwarder, request, &outbound, &trip, self.terms);
            let outcome = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(Problem::new(ProblemCode::UpstreamTimeout)
                    .with_detail("the backend did not answer within the idempotency lease")),
            };
            self.settle(outcome, &detached.request_id).await
        });
        match task.await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::error!(%error, "the forwarding task of an idempotent request failed");
                Err(Problem::new(ProblemCode::UpstreamUnavailable)
                    .with_detail("the request could not be completed"))
            }
        }
    }

    async fn settle(
        self,
        outcome: Result<Exchange, Problem>,
        request_id: &RequestId,
    ) -> Result<Response<ProxyBody>, Problem> {
        match outcome {
            Err(problem) => self.fail(problem, request_id).await,
            Ok(Exchange::PassThrough(response)) => {
                self.release();
                Ok(response)
            }
            Ok(Exchange::Whole(parts, bytes)) => {
                let kept = replay::stored(parts.status, &parts.headers, bytes.clone());
                self.record(Payload::Stored(kept)).await;
                Ok(Response::from_parts(parts, full_body(bytes)))
            }
            Ok(Exchange::Exceeded(parts, prefix, rest)) => {
                tracing::info!(
                    key_id = %self.key_id,
                    route = %self.route,
                    limit = self.terms.max_response_bytes,
                    "answer too large to keep for replay; forwarded only"
                );
                self.record(Payload::TooLarge {
                    status: parts.status,
                })
                .await;
                Ok(Response::from_parts(
                    parts,
                    PrefixedBody::new(prefix, rest).boxed(),
                ))
            }
        }
    }

    /// Settles the claim with an answer Portcullis produced itself (a built-in endpoint's
    /// write), under the rules a backend's answer follows: kept for replay unless it is a 5xx
    /// (kept too with `store_failures`), too large ones recorded as not replayable, and on
    /// disk before the client sees it under `durability = "fsync"`.
    pub async fn settle_local(self, response: Response<Bytes>) -> Response<ProxyBody> {
        let (parts, bytes) = response.into_parts();
        if parts.status.is_server_error() && !self.terms.store_failures {
            self.release();
        } else if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > self.terms.max_response_bytes {
            self.record(Payload::TooLarge {
                status: parts.status,
            })
            .await;
        } else {
            let kept = replay::stored(parts.status, &parts.headers, bytes.clone());
            self.record(Payload::Stored(kept)).await;
        }
        Response::from_parts(parts, full_body(bytes))
    }

    /// No usable answer: keep the failure when configured to, else free the key.
    async fn fail(
        self,
        problem: Problem,
        request_id: &RequestId,
    ) -> Result<Response<ProxyBody>, Problem> {
        if self.terms.store_failures {
            let (parts, body) = problem
                .clone()
                .into_response(request_id.as_str())
                .into_parts();
            let bytes = body
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            let kept = replay::stored(parts.status, &parts.headers, bytes);
            self.record(Payload::Stored(kept)).await;
        } else {
            self.release();
        }
        Err(problem)
    }

    /// Stores the outcome (and flushes it, under `fsync`) before the client sees it, so a
    /// retry right after the answer, or after a restart, is a replay.
    async fn record(self, payload: Payload) {
        let Self {
            cache,
            claim,
            terms,
            key_id,
            route,
            ..
        } = self;
        let stored = tokio::task::spawn_blocking(move || {
            let stored = cache.complete(&claim, &payload)?;
            if stored && terms.durability == Durability::Fsync {
                cache.flush()?;
            }
            Ok::<_, CacheError>(stored)
        })
        .await;
        match stored {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                %key_id,
                %route,
                "the lease ran out before the answer arrived and another request holds the \
                 key; this answer was not recorded"
            ),
            Ok(Err(error)) => {
                tracing::error!(%error, %key_id, %route, "cannot record an idempotent answer");
            }
            Err(error) => {
                tracing::error!(%error, %key_id, %route, "the task recording an answer failed");
            }
        }
    }

    /// Removes the pending record so the client's retry is forwarded.
    fn release(self) {
        if let Err(error) = self.cache.release(&self.claim) {
            tracing::error!(
                %error,
                key_id = %self.key_id,
                route = %self.route,
                "cannot remove a pending idempotency record; the key stays busy until its \
                 lease ends"
            );
        }
    }
}

/// Sends the request and reads the answer as far as settling needs.
async fn exchange(
    forwarder: &Forwarder,
    request: Request<ProxyBody>,
    outbound: &Outbound<'_>,
    trip: &LimitTrip,
    terms: SettleTerms,
) -> Result<Exchange, Problem> {
    let response = forwarder.forward(request, outbound, trip).await?;
    if response.status().is_server_error() && !terms.store_failures {
        return Ok(Exchange::PassThrough(response));
    }
    let (parts, body) = response.into_parts();
    match capture::capture_response(body, terms.max_response_bytes).await {
        Ok(Captured::Whole(bytes)) => Ok(Exchange::Whole(parts, bytes)),
        Ok(Captured::Exceeded { prefix, rest }) => Ok(Exchange::Exceeded(parts, prefix, rest)),
        Err(error) => {
            tracing::warn!(request_id = %outbound.request_id, %error, "the backend's answer broke off");
            Err(Problem::new(ProblemCode::UpstreamUnavailable)
                .with_detail("the backend's answer broke off"))
        }
    }
}

/// An owned copy of [`Outbound`], so the forward can outlive the client's connection.
struct DetachedOutbound {
    request_id: RequestId,
    client_ip: IpAddr,
    destination: Destination,
    identity: Option<[String; 4]>,
    credential_headers: Vec<HeaderName>,
}

impl DetachedOutbound {
    fn new(outbound: &Outbound<'_>) -> Self {
        Self {
            request_id: outbound.request_id.clone(),
            client_ip: outbound.client_ip,
            destination: outbound.destination,
            identity: outbound.identity.as_ref().map(|identity| {
                [
                    identity.org.to_owned(),
                    identity.key_id.to_owned(),
                    identity.env.to_owned(),
                    identity.scopes.to_owned(),
                ]
            }),
            credential_headers: outbound.credential_headers.to_vec(),
        }
    }

    fn view(&self) -> Outbound<'_> {
        Outbound {
            request_id: &self.request_id,
            client_ip: self.client_ip,
            destination: self.destination,
            identity: self
                .identity
                .as_ref()
                .map(|[org, key_id, env, scopes]| Identity {
                    org,
                    key_id,
                    env,
                    scopes,
                }),
            credential_headers: &self.credential_headers,
        }
    }
}
