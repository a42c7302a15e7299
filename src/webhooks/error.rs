//! The one error type of the webhook stores (subscriptions, outbox, deliveries), so the
//! endpoints and the worker map every storage failure the same way.

use crate::gate::idempotency::seal::SealError;
use crate::keys::secret::RandomError;
use crate::store::StoreError;
use crate::webhooks::secret::SecretError;

/// Why a webhook store operation failed.
///
/// No variant carries a stored value or a secret: records are named by their tree and id only.
#[derive(Debug, thiserror::Error)]
pub enum WebhookStoreError {
    /// The state store failed (I/O, engine, a value that does not decode).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signing secret could not be sealed for storage.
    #[error("cannot seal a webhook signing secret: {0}")]
    Seal(#[from] SealError),
    /// A stored signing secret did not open under the sealing key: the key file was replaced,
    /// or the record was altered.
    #[error(
        "the signing secret of webhook subscription {id} does not open under the sealing key \
         (was the idempotency key file replaced?)"
    )]
    Unsealable {
        /// The subscription id (public).
        id: String,
    },
    /// No randomness for a new id.
    #[error("cannot generate a webhook id: {0}")]
    Random(#[from] RandomError),
    /// A new signing secret could not be generated.
    #[error("cannot generate a webhook signing secret: {0}")]
    Secret(#[from] SecretError),
}
