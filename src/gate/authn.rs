//! Authentication: find the credential, refuse keys in URLs, verify, check the allowlist.
//!
//! Failures are shaped so they reveal nothing: a malformed key, another deployment's key, an
//! unknown id and a wrong secret are all `401 auth.invalid`, and `auth.revoked` /
//! `auth.expired` are only said once the secret has matched. Every failure spends the caller's
//! failed-authentication budget; an exhausted budget is refused before verification.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Uri};
use percent_encoding::percent_decode_str;

use crate::admin_log::AdminActionKind;
use crate::config::{AuthConfig, CredentialHeader};
use crate::keys::{parse_key, KeyRecord, RevokeReason, VerifyError};
use crate::orgs::OrgRecord;
use crate::problem::{Problem, ProblemCode};
use crate::state::{unix_now, State};

/// Query parameter names that only ever carry credentials.
const KEY_PARAMETERS: [&str; 4] = ["api_key", "apikey", "key", "access_token"];

/// The actor recorded when Portcullis itself revokes a key.
pub const SYSTEM_ACTOR: &str = "portcullis";

/// A caller whose key verified: the key and the organization it acts for.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The verified key's record.
    pub key: Arc<KeyRecord>,
    /// The key's organization.
    pub org: Arc<OrgRecord>,
}

/// Refuses a request that carries a key, or a key parameter, in its query string.
///
/// A valid key found there has leaked into access logs and `Referer` headers, so it is revoked
/// on the spot when `auth.revoke_keys_found_in_urls` is on, and the revocation is recorded as
/// an admin action. The value itself is never logged.
pub fn refuse_key_in_url(
    uri: &Uri,
    state: &State,
    auth: &AuthConfig,
    client_ip: IpAddr,
) -> Result<(), Problem> {
    let Some(query) = uri.query() else {
        return Ok(());
    };
    let mut found_parameter = false;
    let mut found_key: Option<String> = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name);
        let value = decode(value);
        if KEY_PARAMETERS.iter().any(|p| name.eq_ignore_ascii_case(p)) && !value.is_empty() {
            found_parameter = true;
        }
        if state.keys.looks_like_key(&value) {
            found_key = Some(value.into_owned());
        }
    }
    if !found_parameter && found_key.is_none() {
        return Ok(());
    }
    let mut detail = "API keys must be sent in a request header, never in a URL";
    if let Some(presented) = found_key {
        match state.keys.verify(&presented, unix_now()) {
            Ok(record) if auth.revoke_keys_found_in_urls => {
                revoke_leaked(state, &record);
                detail = "API keys must be sent in a request header, never in a URL; this key has been revoked";
            }
            Ok(_) => {}
            Err(failure) => {
                let id = failure.presented_id.map(|id| id.to_string());
                state.throttle.record_failure(client_ip, id.as_deref());
            }
        }
    }
    Err(Problem::new(ProblemCode::KeyInUrl).with_detail(detail))
}

fn revoke_leaked(state: &State, record: &KeyRecord) {
    let now = unix_now();
    match state.keys.revoke(record.id, RevokeReason::KeyInUrl, now) {
        Ok(_) => {
            tracing::warn!(key_id = %record.id, org = %record.org, "key found in a URL was revoked");
            if let Err(error) = state.admin_log.append(
                AdminActionKind::KeyRevoked,
                SYSTEM_ACTOR,
                &record.id.to_string(),
                Some(&record.org),
                now,
            ) {
                tracing::error!(%error, key_id = %record.id, "cannot record the revocation of a leaked key");
            }
        }
        Err(error) => {
            tracing::error!(%error, key_id = %record.id, "cannot revoke a key found in a URL")
        }
    }
}

fn decode(text: &str) -> Cow<'_, str> {
    let spaced: Cow<'_, str> = if text.contains('+') {
        Cow::Owned(text.replace('+', " "))
    } else {
        Cow::Borrowed(text)
    };
    match percent_decode_str(&spaced).decode_utf8_lossy() {
        Cow::Borrowed(_) => spaced,
        Cow::Owned(decoded) => Cow::Owned(decoded),
    }
}

/// What the request presented as its credential.
enum Credential<'a> {
    /// No configured header was present.
    Missing,
    /// A header was present but unusable (wrong scheme, not text, two different keys).
    Unusable,
    /// The key text.
    Key(&'a str),
}

fn find_credential<'a>(headers: &'a HeaderMap, accepted: &[CredentialHeader]) -> Credential<'a> {
    let mut found: Option<&str> = None;
    let mut unusable = false;
    for header in accepted {
        let mut values = headers.get_all(header.name()).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            unusable = true;
            continue;
        }
        let Ok(text) = value.to_str() else {
            unusable = true;
            continue;
        };
        let key = match header {
            CredentialHeader::AuthorizationBearer => bearer_token(text),
            CredentialHeader::XApiKey => Some(text.trim()).filter(|t| !t.is_empty()),
        };
        match (key, found) {
            (None, _) => unusable = true,
            (Some(key), None) => found = Some(key),
            (Some(key), Some(previous)) if key != previous => unusable = true,
            (Some(_), Some(_)) => {}
        }
    }
    match (found, unusable) {
        (Some(_), true) | (None, true) => Credential::Unusable,
        (Some(key), false) => Credential::Key(key),
        (None, false) => Credential::Missing,
    }
}

/// `Bearer <token>` with a case-insensitive scheme (RFC 6750 §2.1); shared with the
/// internal listener's token check so both read the header the same way.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

fn unauthorized(code: ProblemCode, detail: &'static str) -> Problem {
    Problem::new(code)
        .with_detail(detail)
        .with_bearer_challenge()
}

/// Verifies the request's credential and returns who is calling.
pub fn authenticate(
    headers: &HeaderMap,
    state: &State,
    auth: &AuthConfig,
    client_ip: IpAddr,
) -> Result<Authenticated, Problem> {
    authenticate_noting(headers, state, auth, client_ip, &mut None)
}

/// [`authenticate`], also putting the key in `verified` as soon as its secret has matched,
/// even when the request is then refused (revoked, expired, outside its allowlist, orphaned),
/// so the refusal can be recorded in the audit trail of the key's organization. A key whose
/// secret did not match is never noted: its id is only a claim.
pub fn authenticate_noting(
    headers: &HeaderMap,
    state: &State,
    auth: &AuthConfig,
    client_ip: IpAddr,
    verified: &mut Option<Arc<KeyRecord>>,
) -> Result<Authenticated, Problem> {
    let presented = match find_credential(headers, &auth.credential_headers) {
        Credential::Missing => {
            return Err(unauthorized(
                ProblemCode::AuthMissing,
                "send an API key as `Authorization: Bearer <key>`",
            ));
        }
        Credential::Unusable => None,
        Credential::Key(key) => Some(key),
    };
    let claimed_id = presented
        .and_then(|key| parse_key(key).ok())
        .map(|parsed| parsed.id().to_string());
    state.throttle.check(client_ip, claimed_id.as_deref())?;

    let invalid = || unauthorized(ProblemCode::AuthInvalid, "the API key is not valid");
    let Some(presented) = presented else {
        state.throttle.record_failure(client_ip, None);
        return Err(invalid());
    };
    let now = unix_now();
    let key = match state.keys.verify(presented, now) {
        Ok(key) => key,
        Err(failure) => {
            state
                .throttle
                .record_failure(client_ip, claimed_id.as_deref());
            if failure.error != VerifyError::Invalid {
                *verified = failure.presented_id.and_then(|id| state.keys.get(id));
            }
            return Err(match failure.error {
                VerifyError::Invalid => invalid(),
                VerifyError::Revoked => {
                    unauthorized(ProblemCode::AuthRevoked, "the API key has been revoked")
                }
                VerifyError::Expired => {
                    unauthorized(ProblemCode::AuthExpired, "the API key has expired")
                }
            });
        }
    };
    *verified = Some(key.clone());
    let Some(org) = state.orgs.get(&key.org) else {
        tracing::error!(key_id = %key.id, "key belongs to an organization that no longer exists");
        state
            .throttle
            .record_failure(client_ip, claimed_id.as_deref());
        return Err(invalid());
    };
    if !key.allow_cidrs.is_empty() && !key.allow_cidrs.iter().any(|net| net.contains(&client_ip)) {
        return Err(Problem::new(ProblemCode::IpDenied)
            .with_detail("this API key may not be used from the client's network address"));
    }
    if let Err(error) = state.keys.touch(key.id, now) {
        tracing::warn!(%error, key_id = %key.id, "cannot record key use");
    }
    Ok(Authenticated { key, org })
}

/// The headers a credential may arrive in, to be removed before forwarding.
pub fn credential_header_names(auth: &AuthConfig) -> impl Iterator<Item = http::HeaderName> + '_ {
    auth.credential_headers.iter().map(|h| h.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const BOTH: [CredentialHeader; 2] = [
        CredentialHeader::AuthorizationBearer,
        CredentialHeader::XApiKey,
    ];

    #[test]
    fn finds_bearer_and_api_key_credentials() {
        assert!(matches!(
            find_credential(&headers(&[("authorization", "Bearer abc")]), &BOTH),
            Credential::Key("abc")
        ));
        assert!(matches!(
            find_credential(&headers(&[("authorization", "bearer  abc ")]), &BOTH),
            Credential::Key("abc")
        ));
        assert!(matches!(
            find_credential(&headers(&[("x-api-key", "abc")]), &BOTH),
            Credential::Key("abc")
        ));
        assert!(matches!(
            find_credential(&headers(&[]), &BOTH),
            Credential::Missing
        ));
    }

    #[test]
    fn unusable_credentials_are_not_missing() {
        for pairs in [
            vec![("authorization", "Basic dXNlcjpwdw==")],
            vec![("authorization", "Bearer")],
            vec![("authorization", "Bearer a b")],
            vec![("authorization", "Bearer a"), ("x-api-key", "b")],
            vec![("x-api-key", "a"), ("x-api-key", "a")],
        ] {
            assert!(
                matches!(
                    find_credential(&headers(&pairs), &BOTH),
                    Credential::Unusable
                ),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn only_configured_headers_are_read() {
        let only_bearer = [CredentialHeader::AuthorizationBearer];
        assert!(matches!(
            find_credential(&headers(&[("x-api-key", "abc")]), &only_bearer),
            Credential::Missing
        ));
    }
}
