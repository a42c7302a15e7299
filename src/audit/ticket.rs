//! The audit record of one request while it is being answered.
//!
//! A request gets its [`RequestAudit`] before any gate runs, holding a reserved slot in the
//! writer's queue, so the record can always be handed over without waiting. The pipeline
//! fills in what it learns (client address, caller, route, replay) and calls
//! [`RequestAudit::finish`] with the answer's status. If the request is dropped before that
//! (the client disconnected mid-request), the record is still sent, with no status and the
//! code `request.cancelled`: a request that may have reached the backend is never missing
//! from the trail.

use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::time::Instant;

use http::StatusCode;
use tokio::sync::OwnedSemaphorePermit;

use super::record::{
    AuditCode, ClientAddr, ClientIpMode, Event, EventBody, HttpMethod, Ident, RequestEvent,
    RouteName,
};
use super::time;
use super::writer::Message;
use crate::keys::{Env, KeyId, KeyRecord};
use crate::problem::ProblemCode;
use crate::request_id::RequestId;

/// Where a finished record goes: the writer's channel and the slot reserved in its queue.
pub(super) struct Sink {
    pub sender: Sender<Message>,
    pub slot: Option<OwnedSemaphorePermit>,
}

/// The record of one request, filled in as the request moves through the gates.
///
/// The default value records nothing (audit disabled, or the record was shed).
pub struct RequestAudit {
    sink: Option<Sink>,
    started: Instant,
    request_id: Option<RequestId>,
    method: HttpMethod,
    ip_mode: ClientIpMode,
    client_ip: Option<ClientAddr>,
    route: Option<RouteName>,
    org: Option<Ident>,
    key_id: Option<KeyId>,
    env: Option<Env>,
    replayed: bool,
}

impl std::fmt::Debug for RequestAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAudit")
            .field("recording", &self.sink.is_some())
            .field("method", &self.method)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Default for RequestAudit {
    fn default() -> Self {
        Self {
            sink: None,
            started: Instant::now(),
            request_id: None,
            method: HttpMethod::Other,
            ip_mode: ClientIpMode::Off,
            client_ip: None,
            route: None,
            org: None,
            key_id: None,
            env: None,
            replayed: false,
        }
    }
}

impl RequestAudit {
    /// A record for a request that arrived at `started` from `peer`.
    pub(super) fn new(
        sink: Option<Sink>,
        started: Instant,
        request_id: &RequestId,
        method: HttpMethod,
        peer: IpAddr,
        ip_mode: ClientIpMode,
    ) -> Self {
        Self {
            sink,
            started,
            request_id: Some(request_id.clone()),
            method,
            ip_mode,
            client_ip: ClientAddr::new(peer, ip_mode),
            route: None,
            org: None,
            key_id: None,
            env: None,
            replayed: false,
        }
    }

    /// Whether this record will be written.
    pub fn is_recording(&self) -> bool {
        self.sink.is_some()
    }

    /// The recorded method (standard methods by name, anything else `OTHER`), also what logs
    /// should show.
    pub fn method(&self) -> HttpMethod {
        self.method
    }

    /// The client address as determined from trusted proxies (replaces the TCP peer).
    pub fn client_ip(&mut self, ip: IpAddr) {
        self.client_ip = ClientAddr::new(ip, self.ip_mode);
    }

    /// The caller, once its key verified (or proved to be revoked or expired).
    pub fn caller(&mut self, key: &KeyRecord) {
        self.org = Ident::new(&key.org);
        self.key_id = Some(key.id);
        self.env = Some(key.env);
    }

    /// The policy route the request matched.
    pub fn policy_route(&mut self, name: &str) {
        self.route = RouteName::policy(name);
    }

    /// One of Portcullis's own endpoints.
    pub fn builtin_route(&mut self, route: RouteName) {
        self.route = Some(route);
    }

    /// The answer was replayed from the idempotency cache.
    pub fn replayed(&mut self) {
        self.replayed = true;
    }

    /// Hands the record to the writer with the answer's status and, for a refusal, its code.
    pub fn finish(&mut self, status: StatusCode, code: Option<ProblemCode>) {
        self.emit(Some(status.as_u16()), code.map(AuditCode::Problem));
    }

    fn emit(&mut self, status: Option<u16>, code: Option<AuditCode>) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        let Some(request_id) = self.request_id.take() else {
            return;
        };
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let event = Event {
            ts: time::now_micros(),
            body: EventBody::Request(RequestEvent {
                request_id,
                org: self.org.take(),
                key_id: self.key_id.take(),
                env: self.env.take(),
                method: self.method,
                route: self.route.take(),
                status,
                code,
                latency_us,
                replayed: self.replayed,
                client_ip: self.client_ip.take(),
            }),
        };
        let message = Message::Record {
            event,
            slot: sink.slot,
        };
        if sink.sender.send(message).is_err() {
            tracing::error!("the audit writer has stopped; a request record was lost");
        }
    }
}

impl Drop for RequestAudit {
    fn drop(&mut self) {
        self.emit(None, Some(AuditCode::Cancelled));
    }
}
