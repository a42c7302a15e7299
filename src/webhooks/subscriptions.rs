//! The subscription store: who wants which events, where, and the secrets deliveries are
//! signed with.
//!
//! Two trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `webhook_subscriptions` | subscription id | the record, JSON |
//! | `webhook_subscriptions_by_org` | org 0x00 subscription id | empty |
//!
//! The second is the listing index: a tenant's subscriptions are one prefix scan, in id order,
//! and a page resumes after the last id it showed (keyset pagination). Organization ids never
//! hold `0x00`, so one tenant's prefix never covers another's keys. A record and its index
//! entry are written by the same locked operation; a record without an index entry (a crash
//! between the two writes) is unreachable from the API and is removed by the next write to it.
//!
//! **Secrets at rest.** Signing secrets are sealed with XChaCha20-Poly1305 under the
//! idempotency key file (the shared sealing code of [`crate::gate::idempotency::seal`]), bound
//! to a label and the subscription id, so a sealed secret copied into another record does not
//! open. Only ids, the URL, event types, status and timestamps are stored in clear. A secret
//! leaves the store twice: once in the answer that created it, and as signing keys for the
//! delivery worker ([`Subscription::signing_secrets`]).
//!
//! **Rotation.** A subscription holds its current secret and at most one previous secret that
//! keeps signing until its grace period ends, so receivers can switch keys without dropping
//! deliveries. Rotating while a previous secret is still live drops that oldest one.
//!
//! **Durability.** Creating, deleting, rotating and disabling flush the store before they
//! return: an answer the partner saw is never forgotten.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::Uri;
use serde::{Deserialize, Serialize};

use super::error::WebhookStoreError;
use super::secret::Secret;
use crate::gate::idempotency::seal::{SealKeys, NONCE_LEN};
use crate::keys::hex;
use crate::keys::secret::fill_random;
use crate::store::{Store, StoreError, Tree};

/// The tree of subscription records.
pub const SUBSCRIPTIONS_TREE: &str = "webhook_subscriptions";

/// The tree indexing subscriptions by organization.
pub const SUBSCRIPTIONS_BY_ORG_TREE: &str = "webhook_subscriptions_by_org";

/// Prefix of every subscription id.
pub const SUBSCRIPTION_ID_PREFIX: &str = "sub_";

/// Random bytes in a subscription id (80 bits: unguessable, short enough to read aloud).
const SUBSCRIPTION_ID_BYTES: usize = 10;

/// Associated-data label of sealed signing secrets.
const SEAL_LABEL: &[u8] = b"portcullis/webhooks/subscription-secret/v1";

/// Version tag at the start of every listing cursor, so the format can change.
const CURSOR_VERSION: &str = "s1";

/// A malformed subscription id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a subscription id")]
pub struct BadSubscriptionId;

/// A subscription's id: `sub_` and 20 lowercase hex characters. Public: safe to show and log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionId(String);

impl SubscriptionId {
    /// A fresh id from the OS CSPRNG.
    pub fn generate() -> Result<Self, WebhookStoreError> {
        let mut raw = [0u8; SUBSCRIPTION_ID_BYTES];
        fill_random(&mut raw)?;
        let mut text = String::with_capacity(SUBSCRIPTION_ID_PREFIX.len() + 2 * raw.len());
        text.push_str(SUBSCRIPTION_ID_PREFIX);
        hex::encode_into(&raw, &mut text);
        Ok(Self(text))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SubscriptionId {
    type Err = BadSubscriptionId;

    fn from_str(text: &str) -> Result<Self, BadSubscriptionId> {
        let hex_part = text
            .strip_prefix(SUBSCRIPTION_ID_PREFIX)
            .ok_or(BadSubscriptionId)?;
        if hex_part.len() == 2 * SUBSCRIPTION_ID_BYTES
            && hex_part.bytes().all(hex::is_lower_hex_digit)
        {
            Ok(Self(text.to_owned()))
        } else {
            Err(BadSubscriptionId)
        }
    }
}

impl TryFrom<String> for SubscriptionId {
    type Error = BadSubscriptionId;

    fn try_from(text: String) -> Result<Self, BadSubscriptionId> {
        text.parse()
    }
}

impl From<SubscriptionId> for String {
    fn from(id: SubscriptionId) -> String {
        id.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a subscription receives deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Events are delivered.
    Active,
    /// Nothing is delivered any more (see [`DisableReason`]); the partner deletes it and
    /// creates a new one to resume.
    Disabled,
}

impl SubscriptionStatus {
    /// The name used in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

/// Why a subscription was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// The receiver answered `410 Gone`: it asked not to be called again.
    Gone,
}

impl DisableReason {
    /// The name used in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "gone",
        }
    }
}

/// A subscription as the rest of the crate sees it.
///
/// Secrets are opened only when the store is asked for them ([`Subscriptions::get_any`],
/// [`Subscriptions::matching`]); records read for the partner-facing endpoints carry none.
#[derive(Clone)]
pub struct Subscription {
    /// The id.
    pub id: SubscriptionId,
    /// The organization that owns it.
    pub org: String,
    /// The receiver (`https`, checked against the destination rules when it was created).
    pub url: Uri,
    /// The event types it receives.
    pub events: BTreeSet<String>,
    /// Whether it receives deliveries.
    pub status: SubscriptionStatus,
    /// Why it was disabled, when it is.
    pub disabled_reason: Option<DisableReason>,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// When the rotated-out secret stops signing, if there is one (it may have ended).
    pub previous_secret_expires_at: Option<i64>,
    secrets: Vec<LiveSecret>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("events", &self.events)
            .field("status", &self.status)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// An opened secret and when it stops signing (`None`: the current secret).
#[derive(Clone)]
struct LiveSecret {
    secret: Secret,
    expires_at: Option<i64>,
}

impl Subscription {
    /// The secrets deliveries are signed with at `now` (unix seconds): the current one first,
    /// then a rotated-out one still inside its grace period. Empty for records read without
    /// their secrets.
    pub fn signing_secrets(&self, now: i64) -> Vec<Secret> {
        self.secrets
            .iter()
            .filter(|live| live.expires_at.is_none_or(|end| now < end))
            .map(|live| live.secret.clone())
            .collect()
    }

    /// Whether it receives events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.contains(event_type)
    }

    /// When the rotated-out secret stops signing, if one still signs at `now`.
    pub fn previous_secret_live_until(&self, now: i64) -> Option<i64> {
        self.previous_secret_expires_at.filter(|end| now < *end)
    }
}

/// A new subscription and its secret, to be shown once.
pub struct Created {
    /// The record.
    pub subscription: Subscription,
    /// The signing secret.
    pub secret: Secret,
}

/// Why a subscription could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The organization already holds the most subscriptions allowed.
    #[error("the organization already has {limit} webhook subscriptions")]
    LimitReached {
        /// `webhooks.max_subscriptions_per_org`.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] WebhookStoreError),
}

/// One page of a tenant's subscriptions.
#[derive(Debug)]
pub struct Page {
    /// The subscriptions, in id order.
    pub subscriptions: Vec<Subscription>,
    /// Where the next page starts, when there may be one.
    pub next_cursor: Option<Cursor>,
}

/// Where a listing page ended: the organization it was issued for and the last id shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    org: String,
    after: SubscriptionId,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        let mut text = String::from(CURSOR_VERSION);
        text.push_str(&self.after.as_str()[SUBSCRIPTION_ID_PREFIX.len()..]);
        hex::encode_into(self.org.as_bytes(), &mut text);
        text
    }

    /// Reads a cursor [`Cursor::encode`] wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let body = text.strip_prefix(CURSOR_VERSION)?;
        let id_len = 2 * SUBSCRIPTION_ID_BYTES;
        if !body.is_ascii() || body.len() <= id_len || body.len() % 2 != 0 {
            return None;
        }
        let (id_hex, org_hex) = body.split_at(id_len);
        let after = format!("{SUBSCRIPTION_ID_PREFIX}{id_hex}").parse().ok()?;
        let org_bytes = hex::decode_vec(org_hex);
        let org = String::from_utf8(org_bytes?).ok()?;
        crate::orgs::is_org_id(&org).then_some(Self { org, after })
    }

    /// The organization the cursor was issued for.
    pub fn org(&self) -> &str {
        &self.org
    }
}

/// The stored form of a subscription.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: SubscriptionId,
    org: String,
    url: String,
    events: BTreeSet<String>,
    status: SubscriptionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<DisableReason>,
    created_at: i64,
    /// The current secret first, then at most one rotated-out secret.
    secrets: Vec<SealedSecret>,
}

/// A sealed signing secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedSecret {
    /// The nonce, hex.
    nonce: String,
    /// Ciphertext and tag, base64.
    sealed: String,
    /// Unix seconds at which it stops signing; absent for the current secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
}

/// The subscription store. Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    store: Store,
    records: Tree,
    by_org: Tree,
    keys: Arc<SealKeys>,
    /// Serializes writes, so the per-organization limit and rotations never race.
    write: Arc<Mutex<()>>,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscriptions")
    }
}

impl Subscriptions {
    /// Opens the trees in `store`; `keys` seal the signing secrets.
    pub fn open(store: &Store, keys: SealKeys) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            records: store.tree(SUBSCRIPTIONS_TREE)?,
            by_org: store.tree(SUBSCRIPTIONS_BY_ORG_TREE)?,
            keys: Arc::new(keys),
            write: Arc::new(Mutex::new(())),
        })
    }

    /// Creates an active subscription with a fresh secret, flushed before it returns.
    /// Blocking.
    pub fn create(
        &self,
        org: &str,
        url: &Uri,
        events: BTreeSet<String>,
        now: i64,
        limit: usize,
    ) -> Result<Created, CreateError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if self.count(org)? >= limit {
            return Err(CreateError::LimitReached { limit });
        }
        let id = SubscriptionId::generate()?;
        let secret = Secret::generate().map_err(WebhookStoreError::from)?;
        let record = Record {
            id: id.clone(),
            org: org.to_owned(),
            url: url.to_string(),
            events,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            created_at: now,
            secrets: vec![self.seal(&id, &secret, None)?],
        };
        self.records
            .insert_json(id.as_str().as_bytes(), &record)
            .map_err(WebhookStoreError::from)?;
        self.by_org
            .insert(&index_key(org, &id), b"")
            .map_err(WebhookStoreError::from)?;
        self.store.flush().map_err(WebhookStoreError::from)?;
        let mut subscription = self.decode(record, false)?;
        subscription.secrets = vec![LiveSecret {
            secret: secret.clone(),
            expires_at: None,
        }];
        Ok(Created {
            subscription,
            secret,
        })
    }

    /// How many subscriptions `org` holds. Walks its index prefix. Blocking.
    pub fn count(&self, org: &str) -> Result<usize, WebhookStoreError> {
        let mut count = 0;
        for entry in self.by_org.scan_prefix(&org_prefix(org)) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// One page of `org`'s subscriptions, in id order, after `cursor`. The cursor must have
    /// been issued for `org` (the caller checks). Blocking.
    pub fn list(
        &self,
        org: &str,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, WebhookStoreError> {
        let prefix = org_prefix(org);
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 0x01;
        }
        let start = match cursor {
            Some(cursor) => {
                let mut start = index_key(org, &cursor.after);
                start.push(0x00);
                start
            }
            None => prefix.clone(),
        };
        let mut subscriptions = Vec::with_capacity(limit.min(64));
        let mut more = false;
        for entry in self.by_org.range(&start, &end) {
            let (key, _) = entry?;
            if subscriptions.len() == limit {
                more = true;
                break;
            }
            let id = id_of_index_key(&key, prefix.len())?;
            match self.load(&id, false)? {
                Some(found) if found.org == org => subscriptions.push(found),
                // An index entry whose record is gone or not this tenant's: skip it.
                _ => {}
            }
        }
        let next_cursor = match (more, subscriptions.last()) {
            (true, Some(last)) => Some(Cursor {
                org: org.to_owned(),
                after: last.id.clone(),
            }),
            _ => None,
        };
        Ok(Page {
            subscriptions,
            next_cursor,
        })
    }

    /// `org`'s subscription `id`, without its secrets; `None` when it does not exist or
    /// belongs to another organization. Blocking.
    pub fn get(
        &self,
        org: &str,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>, WebhookStoreError> {
        Ok(self.load(id, false)?.filter(|found| found.org == org))
    }

    /// Subscription `id` of any organization, with its secrets: for the delivery worker.
    /// Blocking.
    pub fn get_any(&self, id: &SubscriptionId) -> Result<Option<Subscription>, WebhookStoreError> {
        self.load(id, true)
    }

    /// The ids of `org`'s active subscriptions that receive `event_type`: what an event fans
    /// out to. Nothing is unsealed (the attempt reads the secrets it signs with). Blocking.
    pub fn matching(
        &self,
        org: &str,
        event_type: &str,
    ) -> Result<Vec<SubscriptionId>, WebhookStoreError> {
        let prefix = org_prefix(org);
        let mut found = Vec::new();
        for entry in self.by_org.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = id_of_index_key(&key, prefix.len())?;
            let Some(record) = self.records.get_json::<Record>(id.as_str().as_bytes())? else {
                continue;
            };
            if record.org != org
                || record.status != SubscriptionStatus::Active
                || !record.events.contains(event_type)
            {
                continue;
            }
            found.push(record.id);
        }
        Ok(found)
    }

    /// Deletes `org`'s subscription `id`, flushed before it returns; `false` when there was
    /// none (or it is another organization's). Blocking.
    pub fn delete(&self, org: &str, id: &SubscriptionId) -> Result<bool, WebhookStoreError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(record) = self.records.get_json::<Record>(id.as_str().as_bytes())? else {
            return Ok(false);
        };
        if record.org != org {
            return Ok(false);
        }
        self.by_org.remove(&index_key(org, id))?;
        self.records.remove(id.as_str().as_bytes())?;
        self.store.flush()?;
        Ok(true)
    }

    /// Gives `org`'s subscription `id` a new current secret; the old current one keeps
    /// signing until `now + grace`, and any older one is dropped. Flushed before it returns.
    /// `None` when there is no such subscription. Blocking.
    pub fn rotate(
        &self,
        org: &str,
        id: &SubscriptionId,
        now: i64,
        grace: Duration,
    ) -> Result<Option<Created>, WebhookStoreError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut record) = self.records.get_json::<Record>(id.as_str().as_bytes())? else {
            return Ok(None);
        };
        if record.org != org {
            return Ok(None);
        }
        let secret = Secret::generate()?;
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let mut secrets = vec![self.seal(id, &secret, None)?];
        if let Some(mut previous) = record.secrets.first().cloned() {
            previous.expires_at = Some(now.saturating_add(grace));
            secrets.push(previous);
        }
        record.secrets = secrets;
        self.records.insert_json(id.as_str().as_bytes(), &record)?;
        self.store.flush()?;
        let subscription = self.decode(record, true)?;
        Ok(Some(Created {
            subscription,
            secret,
        }))
    }

    /// Stops deliveries to subscription `id` (of any organization), flushed before it
    /// returns. Disabling a missing or already disabled subscription does nothing. Blocking.
    pub fn disable(
        &self,
        id: &SubscriptionId,
        reason: DisableReason,
    ) -> Result<(), WebhookStoreError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut record) = self.records.get_json::<Record>(id.as_str().as_bytes())? else {
            return Ok(());
        };
        if record.status == SubscriptionStatus::Disabled {
            return Ok(());
        }
        record.status = SubscriptionStatus::Disabled;
        record.disabled_reason = Some(reason);
        self.records.insert_json(id.as_str().as_bytes(), &record)?;
        self.store.flush()?;
        Ok(())
    }

    fn load(
        &self,
        id: &SubscriptionId,
        with_secrets: bool,
    ) -> Result<Option<Subscription>, WebhookStoreError> {
        self.records
            .get_json::<Record>(id.as_str().as_bytes())?
            .map(|record| self.decode(record, with_secrets))
            .transpose()
    }

    fn decode(
        &self,
        record: Record,
        with_secrets: bool,
    ) -> Result<Subscription, WebhookStoreError> {
        let corrupt = || {
            WebhookStoreError::from(StoreError::corrupt(
                SUBSCRIPTIONS_TREE,
                record.id.as_str().as_bytes(),
            ))
        };
        let url = record.url.parse::<Uri>().map_err(|_| corrupt())?;
        let secrets = if with_secrets {
            record
                .secrets
                .iter()
                .map(|sealed| self.open_secret(&record.id, sealed))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(Subscription {
            id: record.id,
            org: record.org,
            url,
            events: record.events,
            status: record.status,
            disabled_reason: record.disabled_reason,
            created_at: record.created_at,
            previous_secret_expires_at: record.secrets.iter().find_map(|s| s.expires_at),
            secrets,
        })
    }

    fn seal(
        &self,
        id: &SubscriptionId,
        secret: &Secret,
        expires_at: Option<i64>,
    ) -> Result<SealedSecret, WebhookStoreError> {
        let sealed = self
            .keys
            .sealer()
            .seal(&aad(id), secret.expose().as_bytes())?;
        Ok(SealedSecret {
            nonce: hex::encode(&sealed.nonce),
            sealed: BASE64.encode(&sealed.ciphertext),
            expires_at,
        })
    }

    fn open_secret(
        &self,
        id: &SubscriptionId,
        sealed: &SealedSecret,
    ) -> Result<LiveSecret, WebhookStoreError> {
        let unsealable = || WebhookStoreError::Unsealable { id: id.to_string() };
        let nonce = hex::decode_array::<NONCE_LEN>(&sealed.nonce).ok_or_else(unsealable)?;
        let ciphertext = BASE64.decode(&sealed.sealed).map_err(|_| unsealable())?;
        let plain = zeroize::Zeroizing::new(
            self.keys
                .sealer()
                .open(&aad(id), &nonce, &ciphertext)
                .map_err(|_| unsealable())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| unsealable())?;
        let secret = Secret::parse(text).map_err(|_| unsealable())?;
        Ok(LiveSecret {
            secret,
            expires_at: sealed.expires_at,
        })
    }
}

/// Associated data binding a sealed secret to its subscription.
fn aad(id: &SubscriptionId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEAL_LABEL.len() + 1 + id.as_str().len());
    aad.extend_from_slice(SEAL_LABEL);
    aad.push(0x00);
    aad.extend_from_slice(id.as_str().as_bytes());
    aad
}

fn org_prefix(org: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + 1);
    key.extend_from_slice(org.as_bytes());
    key.push(0x00);
    key
}

fn index_key(org: &str, id: &SubscriptionId) -> Vec<u8> {
    let mut key = org_prefix(org);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The subscription id after the `prefix_len` bytes of an org prefix in an index key.
fn id_of_index_key(key: &[u8], prefix_len: usize) -> Result<SubscriptionId, StoreError> {
    key.get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|text| text.parse::<SubscriptionId>().ok())
        .ok_or_else(|| StoreError::corrupt(SUBSCRIPTIONS_BY_ORG_TREE, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Subscriptions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = SealKeys::from_master(&[7; 32]);
        (dir, Subscriptions::open(&store, keys).unwrap())
    }

    fn events(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn url() -> Uri {
        Uri::from_static("https://hooks.example/x")
    }

    #[test]
    fn ids_parse_strictly() {
        let id = SubscriptionId::generate().unwrap();
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(id.as_str().parse::<SubscriptionId>().unwrap(), id);
        for bad in [
            "",
            "sub_",
            "sub_0123456789abcdef012",
            "sub_0123456789abcdef01234",
            "sub_0123456789ABCDEF0123",
            "dlv_0123456789abcdef0123",
            "sub_0123456789abcdef012g",
        ] {
            assert!(bad.parse::<SubscriptionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let cursor = Cursor {
            org: "acme-1".to_owned(),
            after: "sub_0123456789abcdef0123".parse().unwrap(),
        };
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text), Some(cursor));
        assert_eq!(Cursor::decode(&text[..text.len() - 1]), None);
        assert_eq!(Cursor::decode(&text.to_uppercase()), None);
        assert_eq!(Cursor::decode(&text.replacen("s1", "s2", 1)), None);
        assert_eq!(Cursor::decode("s1"), None);
        assert_eq!(Cursor::decode("s10123456789abcdef0123"), None);
    }

    #[test]
    fn rotation_keeps_one_previous_secret_for_its_grace() {
        let (_dir, subs) = open();
        let created = subs
            .create("acme", &url(), events(&["a.b"]), 1_000, 10)
            .unwrap();
        let id = created.subscription.id.clone();
        let first = created.secret.expose().to_owned();
        let grace = Duration::from_secs(100);
        let second = subs.rotate("acme", &id, 2_000, grace).unwrap().unwrap();
        let second = second.secret.expose().to_owned();
        let found = subs.get_any(&id).unwrap().unwrap();
        let at = |now| -> Vec<String> {
            found
                .signing_secrets(now)
                .iter()
                .map(|s| s.expose().to_owned())
                .collect()
        };
        assert_eq!(at(2_050), [second.clone(), first.clone()]);
        assert_eq!(at(2_100), [second.as_str()]);
        assert_eq!(found.previous_secret_live_until(2_050), Some(2_100));
        assert_eq!(found.previous_secret_live_until(2_100), None);
        let third = subs.rotate("acme", &id, 2_010, grace).unwrap().unwrap();
        let found = subs.get_any(&id).unwrap().unwrap();
        let now: Vec<String> = found
            .signing_secrets(2_020)
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(now, [third.secret.expose().to_owned(), second]);
        // Another organization cannot rotate it.
        assert!(subs.rotate("other", &id, 2_020, grace).unwrap().is_none());
    }

    #[test]
    fn secrets_are_bound_to_their_record_and_key() {
        let (_dir, subs) = open();
        let a = subs
            .create("acme", &url(), events(&["a.b"]), 1, 10)
            .unwrap();
        let b = subs
            .create("acme", &url(), events(&["a.b"]), 1, 10)
            .unwrap();
        // Move a's sealed secret into b's record: it must not open there.
        let a_record: Record = subs
            .records
            .get_json(a.subscription.id.as_str().as_bytes())
            .unwrap()
            .unwrap();
        let mut b_record: Record = subs
            .records
            .get_json(b.subscription.id.as_str().as_bytes())
            .unwrap()
            .unwrap();
        b_record.secrets = a_record.secrets.clone();
        subs.records
            .insert_json(b.subscription.id.as_str().as_bytes(), &b_record)
            .unwrap();
        assert!(matches!(
            subs.get_any(&b.subscription.id),
            Err(WebhookStoreError::Unsealable { .. })
        ));
        // The partner-facing read does not need the secret.
        assert!(subs.get("acme", &b.subscription.id).unwrap().is_some());
        // Another sealing key cannot open a's.
        let store = subs.store.clone();
        let other = Subscriptions::open(&store, SealKeys::from_master(&[8; 32])).unwrap();
        assert!(other.get_any(&a.subscription.id).is_err());
    }

    #[test]
    fn matching_disable_delete_and_the_cap() {
        let (_dir, subs) = open();
        let one = subs
            .create("acme", &url(), events(&["a.b", "audit.event"]), 1, 2)
            .unwrap();
        let two = subs.create("acme", &url(), events(&["c.d"]), 1, 2).unwrap();
        assert!(matches!(
            subs.create("acme", &url(), events(&["c.d"]), 1, 2),
            Err(CreateError::LimitReached { limit: 2 })
        ));
        subs.create("beta", &url(), events(&["a.b"]), 1, 2).unwrap();
        assert_eq!(
            subs.matching("acme", "a.b").unwrap(),
            vec![one.subscription.id.clone()]
        );
        assert_eq!(
            subs.matching("acme", "c.d").unwrap(),
            vec![two.subscription.id.clone()]
        );
        assert!(subs.matching("acme", "x.y").unwrap().is_empty());
        subs.disable(&one.subscription.id, DisableReason::Gone)
            .unwrap();
        assert!(subs.matching("acme", "a.b").unwrap().is_empty());
        let disabled = subs.get("acme", &one.subscription.id).unwrap().unwrap();
        assert_eq!(disabled.status, SubscriptionStatus::Disabled);
        assert_eq!(disabled.disabled_reason, Some(DisableReason::Gone));
        assert!(!subs.delete("beta", &two.subscription.id).unwrap());
        assert!(subs.delete("acme", &two.subscription.id).unwrap());
        assert!(!subs.delete("acme", &two.subscription.id).unwrap());
        assert_eq!(subs.count("acme").unwrap(), 1);
        assert_eq!(subs.count("beta").unwrap(), 1);
        let page = subs.list("acme", None, 10).unwrap();
        let listed: Vec<SubscriptionId> = page.subscriptions.into_iter().map(|s| s.id).collect();
        assert_eq!(listed, [one.subscription.id]);
        assert_eq!(page.next_cursor, None);
    }
}
