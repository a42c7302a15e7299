//! Which endpoint a request path names, and what its query string says.
//!
//! Paths are matched exactly, segment by segment, after the `/v1` prefix; ids in them are
//! checked here so handlers only ever see a valid [`KeyId`] or organization id. A malformed id
//! is `400` and never repeated back; a well-formed one that does not exist is the handler's
//! `404`.

use std::collections::HashMap;

use percent_encoding::percent_decode_str;

use super::problem::{AdminCode, AdminProblem};
use super::protocol::API_PREFIX;
use crate::keys::KeyId;
use crate::orgs::is_org_id;

/// An admin endpoint, with the ids its path carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v1/keys`
    Keys,
    /// `/v1/keys/{id}`
    Key(KeyId),
    /// `/v1/keys/{id}/rotate`
    KeyRotate(KeyId),
    /// `/v1/keys/{id}/revoke`
    KeyRevoke(KeyId),
    /// `/v1/orgs`
    Orgs,
    /// `/v1/orgs/{id}`
    Org(String),
    /// `/v1/orgs/{id}/baa`
    OrgBaa(String),
    /// `/v1/admin-actions`
    AdminActions,
    /// `/v1/webhooks/dlq`
    WebhookDlq,
    /// `/v1/webhooks/redeliver`
    WebhookRedeliver,
    /// `/v1/reload`
    Reload,
}

impl Route {
    /// The methods the endpoint takes, for `405` answers.
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Self::Keys | Self::Orgs => "GET, POST",
            Self::Key(_) | Self::Org(_) => "GET, PATCH",
            Self::KeyRotate(_) | Self::KeyRevoke(_) | Self::OrgBaa(_) => "POST",
            Self::AdminActions | Self::WebhookDlq => "GET",
            Self::WebhookRedeliver | Self::Reload => "POST",
        }
    }
}

/// Matches `path` against the admin endpoints.
pub fn route(path: &str) -> Result<Route, AdminProblem> {
    let not_found = || AdminProblem::new(AdminCode::NotFound, "no such admin endpoint");
    let rest = path.strip_prefix(API_PREFIX).ok_or_else(not_found)?;
    let segments: Vec<&str> = match rest.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(not_found()),
    };
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err(not_found());
    }
    match segments.as_slice() {
        ["keys"] => Ok(Route::Keys),
        ["keys", id] => key_id(id).map(Route::Key),
        ["keys", id, "rotate"] => key_id(id).map(Route::KeyRotate),
        ["keys", id, "revoke"] => key_id(id).map(Route::KeyRevoke),
        ["orgs"] => Ok(Route::Orgs),
        ["orgs", id] => org_id(id).map(Route::Org),
        ["orgs", id, "baa"] => org_id(id).map(Route::OrgBaa),
        ["admin-actions"] => Ok(Route::AdminActions),
        ["webhooks", "dlq"] => Ok(Route::WebhookDlq),
        ["webhooks", "redeliver"] => Ok(Route::WebhookRedeliver),
        ["reload"] => Ok(Route::Reload),
        _ => Err(not_found()),
    }
}

fn key_id(text: &str) -> Result<KeyId, AdminProblem> {
    text.parse().map_err(|_| {
        AdminProblem::new(
            AdminCode::Malformed,
            "a key id is 8 lowercase hex characters (the third part of the key prefix)",
        )
    })
}

fn org_id(text: &str) -> Result<String, AdminProblem> {
    if is_org_id(text) {
        Ok(text.to_owned())
    } else {
        Err(AdminProblem::new(
            AdminCode::Malformed,
            "an organization id is 1-63 characters of a-z, 0-9 and `-`, starting with a letter or digit",
        ))
    }
}

/// The query parameters of a request, each at most once and each one the endpoint knows.
pub fn query(raw: Option<&str>, known: &[&str]) -> Result<HashMap<String, String>, AdminProblem> {
    let mut params = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name)?;
        let Some(known) = known.iter().find(|known| **known == name) else {
            return Err(AdminProblem::new(
                AdminCode::Malformed,
                if known.is_empty() {
                    "this endpoint takes no query parameters".to_owned()
                } else {
                    format!(
                        "unknown query parameter; this endpoint takes {}",
                        known.join(", ")
                    )
                },
            ));
        };
        if params.insert((*known).to_owned(), decode(value)?).is_some() {
            return Err(AdminProblem::new(
                AdminCode::Malformed,
                format!("query parameter `{known}` given twice"),
            ));
        }
    }
    Ok(params)
}

fn decode(text: &str) -> Result<String, AdminProblem> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| AdminProblem::new(AdminCode::Malformed, "the query string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_endpoint() {
        let id: KeyId = "0a1b2c3d".parse().unwrap();
        let cases = [
            ("/v1/keys", Route::Keys),
            ("/v1/keys/0a1b2c3d", Route::Key(id)),
            ("/v1/keys/0a1b2c3d/rotate", Route::KeyRotate(id)),
            ("/v1/keys/0a1b2c3d/revoke", Route::KeyRevoke(id)),
            ("/v1/orgs", Route::Orgs),
            ("/v1/orgs/acme-2", Route::Org("acme-2".into())),
            ("/v1/orgs/acme/baa", Route::OrgBaa("acme".into())),
            ("/v1/admin-actions", Route::AdminActions),
            ("/v1/webhooks/dlq", Route::WebhookDlq),
            ("/v1/webhooks/redeliver", Route::WebhookRedeliver),
            ("/v1/reload", Route::Reload),
        ];
        for (path, expected) in cases {
            assert_eq!(route(path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "",
            "/",
            "/v1",
            "/v1/",
            "/keys",
            "/v2/keys",
            "/v1/keys/",
            "/v1/keys/0a1b2c3d/",
            "/v1/keys/0a1b2c3d/delete",
            "/v1/orgs/acme/baa/x",
            "/v1keys",
            "/v1/admin-actions/1",
            "/v1/reload/now",
        ] {
            assert_eq!(
                route(path).unwrap_err().code(),
                AdminCode::NotFound,
                "{path:?}"
            );
        }
    }

    #[test]
    fn malformed_ids_are_refused_without_echo() {
        for path in [
            "/v1/keys/0A1B2C3D",
            "/v1/keys/pcl_test_0a1b2c3d",
            "/v1/keys/%30a1b2c3d",
            "/v1/orgs/Acme",
            "/v1/orgs/a%20b/baa",
        ] {
            let problem = route(path).unwrap_err();
            assert_eq!(problem.code(), AdminCode::Malformed, "{path}");
            assert!(!problem.detail().contains(&path[9..]), "{path}");
        }
    }

    #[test]
    fn query_parameters_are_decoded_known_and_single() {
        let params = query(Some("org=acme%2Dx&limit=5"), &["org", "limit"]).unwrap();
        assert_eq!(params["org"], "acme-x");
        assert_eq!(params["limit"], "5");
        assert!(query(None, &["org"]).unwrap().is_empty());
        assert!(query(Some(""), &[]).unwrap().is_empty());
        let unknown = query(Some("orgs=acme"), &["org"]).unwrap_err();
        assert_eq!(unknown.code(), AdminCode::Malformed);
        assert!(unknown.detail().contains("takes org"));
        assert!(query(Some("org=a&org=b"), &["org"]).is_err());
        assert!(query(Some("org=%ff"), &["org"]).is_err());
        assert!(query(Some("x=1"), &[]).is_err());
    }
}
