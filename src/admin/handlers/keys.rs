//! `/v1/keys`: mint, list, show, change, rotate and revoke API keys.
//!
//! The full key text leaves the registry in exactly two answers, mint and rotate, and only
//! after the action is on record in the admin log: if it cannot be recorded, the text is
//! dropped unseen and the operator gets a `500`.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Response, StatusCode};

use super::{blocking, json, Context};
use crate::admin::problem::{AdminCode, AdminProblem};
use crate::admin::protocol::{
    parse_rfc3339, CreateKeyRequest, KeyList, KeyView, MintedKeyResponse, RatePatch,
    RevokeKeyRequest, RotateKeyRequest, UpdateKeyRequest, DEFAULT_ROTATION_GRACE_SECS,
    MAX_ROTATION_GRACE_SECS, MAX_TIMESTAMP,
};
use crate::admin::router;
use crate::admin_log::AdminActionKind;
use crate::body::ProxyBody;
use crate::keys::{
    Env, KeyChanges, KeyError, KeyId, KeyRecord, MintRequest, MintedKey, RateOverride, RevokeReason,
};
use crate::orgs::{is_org_id, OrgError};
use crate::state::unix_now;

type Answer = Result<Response<ProxyBody>, AdminProblem>;

/// `GET /v1/keys[?org=ID]`
pub(super) fn list(ctx: &Context, query: Option<&str>) -> Answer {
    let params = router::query(query, &["org"])?;
    let org = params.get("org").map(String::as_str);
    if org.is_some_and(|org| !is_org_id(org)) {
        return Err(malformed(OrgError::InvalidId.into()));
    }
    let now = unix_now();
    let keys = ctx
        .state
        .keys
        .list(org)
        .iter()
        .map(|record| KeyView::new(record, now))
        .collect();
    json(StatusCode::OK, &KeyList { keys })
}

/// `GET /v1/keys/{id}`
pub(super) fn show(ctx: &Context, id: KeyId) -> Answer {
    let record = ctx.state.keys.get(id).ok_or(KeyError::NotFound(id))?;
    json(StatusCode::OK, &KeyView::new(&record, unix_now()))
}

/// `POST /v1/keys`
pub(super) async fn create(ctx: Context, request: CreateKeyRequest) -> Answer {
    let now = unix_now();
    let mint = mint_request(request, now)?;
    blocking(move || {
        let org = match ctx.state.orgs.get(&mint.org) {
            Some(org) => org,
            None if is_org_id(&mint.org) => {
                return Err(AdminProblem::new(
                    AdminCode::Invalid,
                    format!(
                        "no organization `{}`; create it first (`portcullis orgs create`)",
                        mint.org
                    ),
                ))
            }
            None => return Err(OrgError::InvalidId.into()),
        };
        let env = mint.env;
        let minted = ctx.state.keys.mint(mint, now)?;
        record(&ctx, AdminActionKind::KeyMinted, &minted.record, now)?;
        let warnings = match (env, org.production_ready()) {
            (Env::Live, Err(reason)) => vec![format!(
                "{}; requests with this key are refused (403 env.gated) until that changes",
                reason.detail()
            )],
            _ => Vec::new(),
        };
        minted_answer(StatusCode::CREATED, &minted, now, warnings)
    })
    .await
}

/// `PATCH /v1/keys/{id}`
pub(super) async fn update(ctx: Context, id: KeyId, request: UpdateKeyRequest) -> Answer {
    let now = unix_now();
    blocking(move || {
        let current = ctx.state.keys.get(id).ok_or(KeyError::NotFound(id))?;
        let changes = key_changes(request, current.rate, now)?;
        let updated = ctx.state.keys.update(id, &changes, now)?;
        record(&ctx, AdminActionKind::KeyUpdated, &updated, now)?;
        json(StatusCode::OK, &KeyView::new(&updated, now))
    })
    .await
}

/// `POST /v1/keys/{id}/rotate`
pub(super) async fn rotate(ctx: Context, id: KeyId, request: RotateKeyRequest) -> Answer {
    let grace = rotation_grace(request)?;
    let now = unix_now();
    blocking(move || {
        let minted = ctx.state.keys.rotate(id, grace, now)?;
        record(&ctx, AdminActionKind::KeyRotated, &minted.record, now)?;
        minted_answer(StatusCode::OK, &minted, now, Vec::new())
    })
    .await
}

/// `POST /v1/keys/{id}/revoke`
pub(super) async fn revoke(ctx: Context, id: KeyId, _request: RevokeKeyRequest) -> Answer {
    let now = unix_now();
    blocking(move || {
        let revoked = ctx.state.keys.revoke(id, RevokeReason::Admin, now)?;
        record(&ctx, AdminActionKind::KeyRevoked, &revoked, now)?;
        json(StatusCode::OK, &KeyView::new(&revoked, now))
    })
    .await
}

/// Records a key action with the peer as actor, and logs it (ids only).
fn record(
    ctx: &Context,
    action: AdminActionKind,
    key: &KeyRecord,
    now: u64,
) -> Result<(), AdminProblem> {
    let actor = ctx.peer.actor();
    let entry =
        ctx.state
            .admin_log
            .append(action, &actor, &key.id.to_string(), Some(&key.org), now)?;
    tracing::info!(
        seq = entry.seq,
        action = ?action,
        actor = %actor,
        key_id = %key.id,
        org = %key.org,
        "admin action"
    );
    Ok(())
}

/// The one place a full key is written into an answer.
fn minted_answer(
    status: StatusCode,
    minted: &MintedKey,
    now: u64,
    warnings: Vec<String>,
) -> Answer {
    json(
        status,
        &MintedKeyResponse {
            key: minted.key.expose_secret(),
            record: KeyView::new(&minted.record, now),
            warnings,
        },
    )
}

/// Turns a mint request from the wire into the registry's, resolving the expiry.
fn mint_request(request: CreateKeyRequest, now: u64) -> Result<MintRequest, AdminProblem> {
    let expires_at = expiry(
        request.expires_in_seconds,
        request.expires_at.as_deref(),
        now,
    )?;
    let mut mint = MintRequest::new(request.org, request.env, scope_set(request.scopes));
    mint.label = request.label;
    mint.expires_at = expires_at;
    mint.allow_cidrs = request.allow_cidrs;
    mint.rate = request.rate;
    Ok(mint)
}

/// Turns a change request from the wire into the registry's. A rate change that names only
/// one half keeps the other from `current_rate`.
fn key_changes(
    request: UpdateKeyRequest,
    current_rate: Option<RateOverride>,
    now: u64,
) -> Result<KeyChanges, AdminProblem> {
    let expires_at = match (request.expires_in_seconds, request.expires_at) {
        (None, None) => None,
        (Some(_), Some(None)) => return Err(both_expiries()),
        (seconds, Some(Some(at))) => Some(expiry(seconds, Some(&at), now)?),
        (Some(seconds), None) => Some(expiry(Some(seconds), None, now)?),
        (None, Some(None)) => Some(None),
    };
    let rate = match request.rate {
        None => None,
        Some(None) => Some(None),
        Some(Some(patch)) => Some(Some(merge_rate(patch, current_rate)?)),
    };
    Ok(KeyChanges {
        scopes: request.scopes.map(scope_set),
        label: request.label,
        expires_at,
        allow_cidrs: request.allow_cidrs,
        rate,
    })
}

fn merge_rate(
    patch: RatePatch,
    current: Option<RateOverride>,
) -> Result<RateOverride, AdminProblem> {
    let per_minute = patch.per_minute.or(current.map(|rate| rate.per_minute));
    let burst = patch.burst.or(current.map(|rate| rate.burst));
    match (per_minute, burst) {
        (Some(per_minute), Some(burst)) => Ok(RateOverride { per_minute, burst }),
        _ => Err(AdminProblem::new(
            AdminCode::Invalid,
            "this key has no rate override yet; give both per_minute and burst",
        )),
    }
}

/// The expiry asked for: `seconds` from `now`, or an RFC 3339 time, not both.
fn expiry(seconds: Option<u64>, at: Option<&str>, now: u64) -> Result<Option<u64>, AdminProblem> {
    let unix = match (seconds, at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(both_expiries()),
        (Some(0), None) => {
            return Err(AdminProblem::new(
                AdminCode::Invalid,
                "expires_in_seconds must be at least 1",
            ))
        }
        (Some(seconds), None) => now.saturating_add(seconds),
        (None, Some(text)) => parse_rfc3339(text).ok_or_else(|| {
            AdminProblem::new(
                AdminCode::Invalid,
                "expires_at must be an RFC 3339 UTC time such as 2030-01-31T00:00:00Z",
            )
        })?,
    };
    if unix > MAX_TIMESTAMP {
        return Err(AdminProblem::new(
            AdminCode::Invalid,
            "the expiry must be before the year 10000",
        ));
    }
    Ok(Some(unix))
}

fn both_expiries() -> AdminProblem {
    AdminProblem::new(
        AdminCode::Invalid,
        "give expires_in_seconds or expires_at, not both",
    )
}

fn rotation_grace(request: RotateKeyRequest) -> Result<Duration, AdminProblem> {
    let seconds = request.grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    if seconds > MAX_ROTATION_GRACE_SECS {
        return Err(AdminProblem::new(
            AdminCode::Invalid,
            format!(
                "the grace period may be at most {} days",
                MAX_ROTATION_GRACE_SECS / 86_400
            ),
        ));
    }
    Ok(Duration::from_secs(seconds))
}

fn scope_set(scopes: Vec<String>) -> BTreeSet<String> {
    scopes.into_iter().collect()
}

/// An org id from a query string is a malformed request, not an invalid one.
fn malformed(problem: AdminProblem) -> AdminProblem {
    AdminProblem::new(AdminCode::Malformed, problem.detail().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000;

    fn create(json: &str) -> Result<MintRequest, AdminProblem> {
        mint_request(serde_json::from_str(json).unwrap(), NOW)
    }

    fn update(json: &str, current: Option<RateOverride>) -> Result<KeyChanges, AdminProblem> {
        key_changes(serde_json::from_str(json).unwrap(), current, NOW)
    }

    #[test]
    fn mint_request_resolves_expiry_and_collects_scopes() {
        let mint = create(
            r#"{"org":"acme","env":"live","scopes":["b","a","b"],"label":"L",
                "expires_in_seconds":60,"allow_cidrs":["10.1.2.3/8"],
                "rate":{"per_minute":600,"burst":50}}"#,
        )
        .unwrap();
        assert_eq!(mint.org, "acme");
        assert_eq!(mint.env, Env::Live);
        assert_eq!(
            mint.scopes,
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(mint.expires_at, Some(NOW + 60));
        assert_eq!(mint.label.as_deref(), Some("L"));
        assert_eq!(mint.allow_cidrs.len(), 1);
        assert_eq!(mint.rate.map(|r| (r.per_minute, r.burst)), Some((600, 50)));

        let at = create(
            r#"{"org":"acme","env":"test","scopes":[],"expires_at":"2030-03-17T17:46:40Z"}"#,
        )
        .unwrap();
        assert_eq!(at.expires_at, Some(1_900_000_000));
        let never = create(r#"{"org":"acme","env":"test","scopes":[]}"#).unwrap();
        assert_eq!(never.expires_at, None);
    }

    #[test]
    fn mint_request_refuses_bad_expiries() {
        for json in [
            r#"{"org":"a","env":"test","scopes":[],"expires_in_seconds":0}"#,
            r#"{"org":"a","env":"test","scopes":[],"expires_in_seconds":60,"expires_at":"2030-03-17T17:46:40Z"}"#,
            r#"{"org":"a","env":"test","scopes":[],"expires_at":"next week"}"#,
            r#"{"org":"a","env":"test","scopes":[],"expires_in_seconds":18446744073709551615}"#,
        ] {
            assert_eq!(
                create(json).unwrap_err().code(),
                AdminCode::Invalid,
                "{json}"
            );
        }
    }

    #[test]
    fn changes_distinguish_leave_set_and_clear() {
        assert_eq!(update("{}", None).unwrap(), KeyChanges::default());
        let cleared = update(
            r#"{"label":null,"expires_at":null,"rate":null,"allow_cidrs":[]}"#,
            None,
        )
        .unwrap();
        assert_eq!(cleared.label, Some(None));
        assert_eq!(cleared.expires_at, Some(None));
        assert_eq!(cleared.rate, Some(None));
        assert_eq!(cleared.allow_cidrs, Some(Vec::new()));
        let set = update(r#"{"scopes":["x"],"expires_in_seconds":10}"#, None).unwrap();
        assert_eq!(set.scopes, Some(BTreeSet::from(["x".to_owned()])));
        assert_eq!(set.expires_at, Some(Some(NOW + 10)));
        assert_eq!(
            update(r#"{"expires_in_seconds":10,"expires_at":null}"#, None)
                .unwrap_err()
                .code(),
            AdminCode::Invalid
        );
    }

    #[test]
    fn partial_rate_changes_merge_with_the_current_override() {
        let current = Some(RateOverride {
            per_minute: 600,
            burst: 50,
        });
        let burst_only = update(r#"{"rate":{"burst":5}}"#, current).unwrap();
        assert_eq!(
            burst_only.rate,
            Some(Some(RateOverride {
                per_minute: 600,
                burst: 5
            }))
        );
        let problem = update(r#"{"rate":{"burst":5}}"#, None).unwrap_err();
        assert_eq!(problem.code(), AdminCode::Invalid);
        let both = update(r#"{"rate":{"per_minute":1,"burst":2}}"#, None).unwrap();
        assert_eq!(
            both.rate,
            Some(Some(RateOverride {
                per_minute: 1,
                burst: 2
            }))
        );
    }

    #[test]
    fn rotation_grace_defaults_and_is_bounded() {
        assert_eq!(
            rotation_grace(RotateKeyRequest::default()).unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            rotation_grace(RotateKeyRequest {
                grace_seconds: Some(0)
            })
            .unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            rotation_grace(RotateKeyRequest {
                grace_seconds: Some(MAX_ROTATION_GRACE_SECS + 1)
            })
            .unwrap_err()
            .code(),
            AdminCode::Invalid
        );
    }
}
