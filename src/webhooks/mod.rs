//! Outbound webhooks: the backend says "this happened", Portcullis makes sure every subscribed
//! partner hears it, signed, at least once, even across crashes.
//!
//! The parts, each in its own module:
//! - [`sign`]: the three signature schemes (`standard`, `stripe`, `split`), pure functions
//!   with a verifying twin;
//! - [`secret`]: signing secrets (`whsec_<base64>`), generated, parsed and never leaked;
//! - [`destination`]: which receiver URLs and addresses are allowed (SSRF rules), checked
//!   when a subscription is made and again against the resolved address at delivery time;
//! - [`cli`]: `portcullis webhooks sign|verify` for partners testing their receivers;
//! - [`delivery`]: event and delivery ids, statuses and the stored delivery record;
//! - [`outbox`]: the durable outbox in the store (events sealed at rest, deliveries, and the
//!   due, tenant and status indexes);
//! - [`deliveries`]: the shared handle on the outbox, the worker's clock and wake-up bell;
//! - [`ingest`]: `POST /events` on the internal listener, written and flushed before `202`;
//! - [`schedule`]: what follows an attempt (delivered, gone, retry with jitter, dead);
//! - [`worker`]: the supervisor and the attempts, bounded globally and per subscription;
//! - [`deliveries_api`]: the tenant's delivery status endpoint, keyset-paginated;
//! - [`admin`] and [`dlq_cli`]: the dead-letter queue and redelivery on the admin socket,
//!   and `portcullis webhooks dlq list|redeliver`;
//! - [`audit_stream`]: each organization's audit records as `audit.event` deliveries.

pub mod admin;
pub mod audit_stream;
pub mod cli;
pub mod deliveries;
pub mod deliveries_api;
pub mod delivery;
pub mod destination;
pub mod dlq_cli;
pub mod error;
pub mod ingest;
pub mod outbox;
pub mod schedule;
pub mod secret;
pub mod sign;
pub mod subscriptions;
pub mod subscriptions_api;
pub mod worker;

pub use error::WebhookStoreError;

/// The event type of the audit stream: always accepted, so an organization's SIEM can
/// subscribe to its own audit trail. The backend may not post it.
pub const AUDIT_EVENT_TYPE: &str = "audit.event";
