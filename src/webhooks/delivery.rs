//! What the outbox stores about one event and each of its deliveries.
//!
//! An event is what the backend posted (`{org, type, data}`) plus the id and time Portcullis
//! gave it; a delivery is that event on its way to one subscription. Both ids are minted here
//! from the OS CSPRNG, so a receiver can de-duplicate on the event id (the same on every
//! attempt) and an operator can name one delivery on the admin socket.
//!
//! Nothing here holds the event's `data` in clear: it lives only sealed in the outbox (see
//! [`super::outbox`]). A delivery record holds ids, numbers and fixed error kinds only, so it
//! can be shown to its tenant and logged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::keys::hex;
use crate::keys::secret::{fill_random, RandomError};

/// Random bytes in an event id (128 bits).
const EVENT_ID_BYTES: usize = 16;

/// Random bytes in a delivery id (80 bits, as subscription ids).
const DELIVERY_ID_BYTES: usize = 10;

/// Prefix of every event id.
pub const EVENT_ID_PREFIX: &str = "evt_";

/// Prefix of every delivery id.
pub const DELIVERY_ID_PREFIX: &str = "dlv_";

/// A malformed event or delivery id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct BadId;

/// The id of one event: `evt_` and 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

/// The id of one delivery: `dlv_` and 20 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryId(String);

macro_rules! random_id {
    ($ty:ident, $prefix:expr, $bytes:expr) => {
        impl $ty {
            /// A fresh id from the OS CSPRNG.
            pub fn generate() -> Result<Self, RandomError> {
                let mut raw = [0u8; $bytes];
                fill_random(&mut raw)?;
                let mut text = String::with_capacity($prefix.len() + 2 * $bytes);
                text.push_str($prefix);
                hex::encode_into(&raw, &mut text);
                Ok(Self(text))
            }

            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The hex part after the prefix: the shape of an organization id, which is how
            /// admin actions name it.
            pub fn hex_part(&self) -> &str {
                &self.0[$prefix.len()..]
            }
        }

        impl FromStr for $ty {
            type Err = BadId;

            fn from_str(text: &str) -> Result<Self, BadId> {
                let hex_part = text.strip_prefix($prefix).ok_or(BadId)?;
                if hex_part.len() == 2 * $bytes && hex_part.bytes().all(hex::is_lower_hex_digit) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(BadId)
                }
            }
        }

        impl TryFrom<String> for $ty {
            type Error = BadId;

            fn try_from(text: String) -> Result<Self, BadId> {
                text.parse()
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

random_id!(EventId, EVENT_ID_PREFIX, EVENT_ID_BYTES);
random_id!(DeliveryId, DELIVERY_ID_PREFIX, DELIVERY_ID_BYTES);

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (the first one, or a retry).
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Ended without success and without a retry: the subscription is gone (410) or was
    /// disabled or deleted. Not redeliverable.
    Failed,
    /// Every attempt of the schedule failed: in the dead-letter queue, redeliverable.
    Dead,
}

impl DeliveryStatus {
    /// Every status, for parsing and tests.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Delivered, Self::Failed, Self::Dead];

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    /// The status named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Whether the event's data is still needed for this delivery (pending, or dead and so
    /// redeliverable).
    pub fn needs_data(self) -> bool {
        matches!(self, Self::Pending | Self::Dead)
    }
}

/// Why an attempt failed, as a fixed kind: never a receiver's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The receiver answered with a status that is not 2xx.
    Status,
    /// No answer within `webhooks.delivery_timeout`.
    Timeout,
    /// The connection could not be made (refused, reset, DNS failure).
    Connect,
    /// The TLS handshake failed (untrusted or invalid certificate).
    Tls,
    /// The destination resolved to an address the SSRF rules forbid.
    DestinationRefused,
    /// The receiver answered 410: the subscription was disabled.
    Gone,
    /// The subscription was disabled or deleted before the attempt.
    SubscriptionInactive,
    /// The event's data could not be read back (a replaced key file, corruption).
    EventUnreadable,
    /// Anything else (a request that could not be built).
    Other,
    /// Dead longer than `webhooks.dead_retention`: ended, and the event's data deleted.
    Expired,
}

impl FailureKind {
    /// The kind as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::DestinationRefused => "destination_refused",
            Self::Gone => "gone",
            Self::SubscriptionInactive => "subscription_inactive",
            Self::EventUnreadable => "event_unreadable",
            Self::Other => "other",
            Self::Expired => "expired",
        }
    }
}

/// One delivery as stored (JSON) and shown to its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Its id.
    pub id: DeliveryId,
    /// The event delivered.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// The organization the event (and the subscription) belong to.
    pub org: String,
    /// The subscription it goes to (`sub_…`).
    pub subscription_id: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far (reset to 0 by a redelivery).
    pub attempts: u32,
    /// When it was created (unix milliseconds); orders listings.
    pub created_ms: u64,
    /// When the next attempt is due (unix milliseconds), while pending.
    pub next_attempt_ms: Option<u64>,
    /// The receiver's status code on the last attempt that got an answer.
    pub last_status_code: Option<u16>,
    /// How long the last attempt took, in milliseconds.
    pub last_latency_ms: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<FailureKind>,
    /// When the record last changed (unix milliseconds).
    pub updated_ms: u64,
}

impl DeliveryRecord {
    /// Whether an attempt may start at `now_ms`: pending and due. The worker checks this on
    /// the record it is about to send, not only in the due index it scanned, because an
    /// attempt that ends between the scan and the read has already moved the delivery on;
    /// sending it again would be a duplicate the receiver never asked for.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.status == DeliveryStatus::Pending
            && self.next_attempt_ms.is_some_and(|due| due <= now_ms)
    }
}

/// The event as the outbox keeps it, without its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    /// Its id.
    pub id: EventId,
    /// The organization it belongs to.
    pub org: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When Portcullis accepted it (unix milliseconds).
    pub created_ms: u64,
    /// Its deliveries, one per subscription that wanted it at ingest.
    pub deliveries: Vec<DeliveryId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_hex_and_round_trip() {
        let event = EventId::generate().unwrap();
        assert!(event.as_str().starts_with("evt_"));
        assert_eq!(event.as_str().len(), 4 + 32);
        assert_eq!(event.as_str().parse::<EventId>().unwrap(), event);
        let delivery = DeliveryId::generate().unwrap();
        assert_eq!(delivery.as_str().len(), 4 + 20);
        assert!(crate::orgs::is_org_id(delivery.hex_part()));
        assert_ne!(delivery, DeliveryId::generate().unwrap());
        for bad in [
            "",
            "evt_",
            "dlv_0123456789abcdef012",
            "dlv_0123456789ABCDEF0123",
            "sub_0123456789abcdef0123",
            "dlv_0123456789abcdef01234",
        ] {
            assert!(bad.parse::<DeliveryId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&delivery).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryId>(&json).unwrap(), delivery);
        assert!(serde_json::from_str::<DeliveryId>("\"dlv_x\"").is_err());
    }

    #[test]
    fn statuses_parse_and_know_whether_data_is_needed() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(DeliveryStatus::parse("Pending"), None);
        assert!(DeliveryStatus::Dead.needs_data());
        assert!(!DeliveryStatus::Delivered.needs_data());
        assert!(!DeliveryStatus::Failed.needs_data());
    }

    #[test]
    fn only_a_pending_delivery_whose_time_has_come_is_due() {
        let record = DeliveryRecord {
            id: DeliveryId::generate().unwrap(),
            event_id: EventId::generate().unwrap(),
            event_type: "note.signed".to_owned(),
            org: "acme".to_owned(),
            subscription_id: "sub_x".to_owned(),
            status: DeliveryStatus::Pending,
            attempts: 1,
            created_ms: 1_000,
            next_attempt_ms: Some(2_000),
            last_status_code: Some(500),
            last_latency_ms: Some(3),
            last_error: Some(FailureKind::Status),
            updated_ms: 1_000,
        };
        assert!(!record.is_due(1_999), "retry not yet due");
        assert!(record.is_due(2_000));
        assert!(record.is_due(9_000));
        for status in [
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
            DeliveryStatus::Dead,
        ] {
            let ended = DeliveryRecord {
                status,
                ..record.clone()
            };
            assert!(!ended.is_due(9_000), "{status:?}");
        }
        let unscheduled = DeliveryRecord {
            next_attempt_ms: None,
            ..record
        };
        assert!(!unscheduled.is_due(9_000));
    }
}
