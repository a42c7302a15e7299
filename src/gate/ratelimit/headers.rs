//! The rate-limit fields partners read on every authenticated answer.
//!
//! Two vocabularies say the same thing: the de-facto `X-RateLimit-Limit` / `-Remaining` /
//! `-Reset` trio that integration platforms already parse, and the IETF draft's
//! `RateLimit-Policy` and `RateLimit` structured fields. The policy picks one or both. Values
//! come from the limiter's state at the moment the request was decided, so they are exact
//! when read together with the answer they arrived on.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::clock::ceil_secs;

/// `X-RateLimit-Limit`: sustained requests per minute of the limit that answered.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests that could still be made right now.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: unix seconds when the bucket is full again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft): the limit, as `"<name>";q=<per minute>;w=60`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft): the state, as `"<name>";r=<remaining>;t=<seconds to full>`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The draft's window: limits are stated per minute.
const WINDOW_SECS: u32 = 60;

/// The policy name shown for the key's own limit (the policy default or its override).
pub const DEFAULT_POLICY: &str = "default";

/// Which header vocabulary answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// Both the `X-RateLimit-*` fields and the IETF draft fields.
    #[default]
    Both,
    /// Only `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    Legacy,
    /// Only `RateLimit-Policy` and `RateLimit`.
    Draft,
}

impl HeaderStyle {
    fn legacy(self) -> bool {
        matches!(self, Self::Both | Self::Legacy)
    }

    fn draft(self) -> bool {
        matches!(self, Self::Both | Self::Draft)
    }
}

/// Where a key stood against one limit when its request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateStatus {
    /// The route class whose limit this is, or `None` for the key's own limit.
    pub class: Option<Arc<str>>,
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests that could still be made right now.
    pub remaining: u32,
    /// Time until the bucket is full again, from `decided_at`.
    pub full_in: Duration,
    /// Wall-clock time of the decision, since the unix epoch.
    pub decided_at: Duration,
}

impl RateStatus {
    /// The name partners see in the draft fields.
    pub fn policy_name(&self) -> &str {
        self.class.as_deref().unwrap_or(DEFAULT_POLICY)
    }

    /// Unix seconds when the bucket is full again, rounded up.
    pub fn reset_at(&self) -> u64 {
        ceil_secs(self.decided_at + self.full_in)
    }

    /// Whether `other` is the tighter of the two, so it is the one to show: less left now,
    /// then the lower sustained rate.
    pub fn is_looser_than(&self, other: &RateStatus) -> bool {
        (other.remaining, other.per_minute) < (self.remaining, self.per_minute)
    }

    /// Sets the fields `style` asks for on `headers`, replacing any the backend sent, so a
    /// partner only ever reads Portcullis's numbers.
    pub fn apply(&self, style: HeaderStyle, headers: &mut HeaderMap) {
        for name in [
            X_RATELIMIT_LIMIT,
            X_RATELIMIT_REMAINING,
            X_RATELIMIT_RESET,
            RATELIMIT_POLICY,
            RATELIMIT,
        ] {
            headers.remove(name);
        }
        if style.legacy() {
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.per_minute));
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(self.reset_at()));
        }
        if style.draft() {
            let name = self.policy_name();
            let policy = format!("\"{name}\";q={};w={WINDOW_SECS}", self.per_minute);
            let state = format!(
                "\"{name}\";r={};t={}",
                self.remaining,
                ceil_secs(self.full_in)
            );
            // Class names are validated to header-safe characters; should one ever not be,
            // the draft fields are left out rather than sent malformed.
            if let (Ok(policy), Ok(state)) =
                (HeaderValue::try_from(policy), HeaderValue::try_from(state))
            {
                headers.insert(RATELIMIT_POLICY, policy);
                headers.insert(RATELIMIT, state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(class: Option<&str>, remaining: u32) -> RateStatus {
        RateStatus {
            class: class.map(Arc::from),
            per_minute: 600,
            remaining,
            full_in: Duration::from_millis(2_500),
            decided_at: Duration::from_secs(1_700_000_000),
        }
    }

    fn rendered(status: &RateStatus, style: HeaderStyle) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("9999"));
        headers.insert("ratelimit", HeaderValue::from_static("\"backend\";r=1;t=1"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        status.apply(style, &mut headers);
        let mut pairs: Vec<_> = headers
            .iter()
            .filter(|(name, _)| name.as_str() != "content-type")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = expected
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn both_styles_carry_the_same_numbers() {
        assert_eq!(
            rendered(&status(None, 49), HeaderStyle::Both),
            pairs(&[
                ("x-ratelimit-limit", "600"),
                ("x-ratelimit-remaining", "49"),
                ("x-ratelimit-reset", "1700000003"),
                ("ratelimit-policy", "\"default\";q=600;w=60"),
                ("ratelimit", "\"default\";r=49;t=3"),
            ])
        );
    }

    #[test]
    fn each_style_alone_replaces_what_the_backend_sent() {
        assert_eq!(
            rendered(&status(Some("writes"), 0), HeaderStyle::Draft),
            pairs(&[
                ("ratelimit-policy", "\"writes\";q=600;w=60"),
                ("ratelimit", "\"writes\";r=0;t=3"),
            ])
        );
        assert_eq!(
            rendered(&status(Some("writes"), 7), HeaderStyle::Legacy),
            pairs(&[
                ("x-ratelimit-limit", "600"),
                ("x-ratelimit-remaining", "7"),
                ("x-ratelimit-reset", "1700000003"),
            ])
        );
    }

    #[test]
    fn the_tighter_status_is_the_one_with_less_left() {
        let key = status(None, 10);
        let mut class = status(Some("writes"), 3);
        assert!(key.is_looser_than(&class));
        assert!(!class.is_looser_than(&key));
        class.remaining = 10;
        class.per_minute = 60;
        assert!(
            key.is_looser_than(&class),
            "same remaining: lower rate is tighter"
        );
        assert!(!key.is_looser_than(&key.clone()), "a tie keeps the first");
    }
}
