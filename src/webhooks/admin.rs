//! The dead-letter queue on the admin socket: listing dead deliveries and putting them back
//! in the queue (`portcullis webhooks dlq list`, `portcullis webhooks redeliver`).
//!
//! A redelivery moves a dead delivery back to pending, due at once, with its attempt count
//! reset (so it gets the whole retry schedule again), keeping its event id: receivers that
//! de-duplicate still can. Every redelivery is an admin action in the admin log and the
//! audit trail (`webhook_redelivered`): for one delivery the target is the delivery id's hex
//! part (an admin action's target has the shape of an id), for a whole queue it is the
//! organization, one action per organization that had dead deliveries.

use std::collections::BTreeSet;

use super::deliveries_api::rfc3339_ms;
use super::delivery::{DeliveryId, DeliveryRecord, DeliveryStatus};
use crate::admin::protocol::DeliveryView;
use crate::admin_log::{AdminActionKind, AdminLogError};
use crate::state::{unix_now, State};
use crate::store::StoreError;

/// What to redeliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One dead delivery.
    One(DeliveryId),
    /// Every dead delivery, of one organization when given.
    AllDead(Option<String>),
}

/// Why a redelivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    /// No delivery has this id.
    #[error("no webhook delivery has this id")]
    NotFound,
    /// The delivery is not dead (pending, delivered or failed).
    #[error("the delivery is {0}, not dead; only dead deliveries can be redelivered")]
    NotDead(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin action could not be recorded.
    #[error(transparent)]
    Log(#[from] AdminLogError),
}

/// The operator's view of a delivery.
pub fn view(record: &DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: record.id.to_string(),
        event_id: record.event_id.to_string(),
        event_type: record.event_type.clone(),
        org: record.org.clone(),
        subscription_id: record.subscription_id.clone(),
        status: record.status.as_str().to_owned(),
        attempts: record.attempts,
        created_at: rfc3339_ms(record.created_ms),
        updated_at: rfc3339_ms(record.updated_ms),
        last_status_code: record.last_status_code,
        last_error: record.last_error.map(|kind| kind.as_str().to_owned()),
    }
}

/// Dead deliveries, newest first, of `org` when given. Blocking.
pub fn dead(
    state: &State,
    org: Option<&str>,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    state
        .deliveries
        .outbox()
        .list(org, Some(DeliveryStatus::Dead), None, limit)
}

/// Puts `target` back in the queue and records it as done by `actor`. Blocking.
pub fn redeliver(
    state: &State,
    target: &Target,
    actor: &str,
) -> Result<Vec<DeliveryRecord>, RedeliverError> {
    let outbox = state.deliveries.outbox();
    let now = state.deliveries.now_ms();
    let moved = match target {
        Target::One(id) => {
            let record = outbox.delivery(id)?.ok_or(RedeliverError::NotFound)?;
            if record.status != DeliveryStatus::Dead {
                return Err(RedeliverError::NotDead(record.status.as_str()));
            }
            outbox.redeliver(Some(std::slice::from_ref(id)), None, now)?
        }
        Target::AllDead(org) => outbox.redeliver(None, org.as_deref(), now)?,
    };
    if !moved.is_empty() {
        state.deliveries.wake();
    }
    match target {
        Target::One(id) => {
            if let Some(record) = moved.first() {
                state.admin_log.append(
                    AdminActionKind::WebhookRedelivered,
                    actor,
                    id.hex_part(),
                    Some(&record.org),
                    unix_now(),
                )?;
            }
        }
        Target::AllDead(_) => {
            let orgs: BTreeSet<&str> = moved.iter().map(|record| record.org.as_str()).collect();
            for org in orgs {
                state.admin_log.append(
                    AdminActionKind::WebhookRedelivered,
                    actor,
                    org,
                    Some(org),
                    unix_now(),
                )?;
            }
        }
    }
    Ok(moved)
}
