//! The admin API's refusals, as RFC 9457 problem documents in the same shape as the
//! partner-facing ones ([`crate::problem`]), with codes of their own under `admin.`.
//!
//! Partner codes and admin codes are kept apart on purpose: an operator's tooling branches on
//! `admin.*`, a partner never sees one. Details are written from validated ids and fixed text;
//! the registries' own error messages are used because they never repeat rejected input.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::admin_log::AdminLogError;
use crate::body::{full_body, ProxyBody};
use crate::keys::KeyError;
use crate::orgs::OrgError;
use crate::problem::PROBLEM_CONTENT_TYPE;

/// Prefix of the `type` URI, shared with partner-facing problems.
/// Every refusal the admin API can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminCode {
    /// The request could not be read: bad JSON, bad query, malformed id (400).
    Malformed,
    /// The request was read but breaks a rule: bad scope, past expiry, unknown org (422).
    Invalid,
    /// The caller's uid may not administer this instance (403).
    Forbidden,
    /// No such key, organization or path (404).
    NotFound,
    /// The path exists but not with this method (405).
    MethodNotAllowed,
    /// The body did not arrive in time (408).
    Timeout,
    /// The change contradicts the current state: already revoked, already exists (409).
    Conflict,
    /// The body is larger than the admin API accepts (413).
    TooLarge,
    /// The policy file could not be put into service; the running one stays (422).
    ReloadRefused,
    /// Portcullis failed (storage, randomness); details are in the server log (500).
    Internal,
}

impl AdminCode {
    /// The stable code tooling branches on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed | Self::Invalid => "admin.invalid",
            Self::Forbidden => "admin.forbidden",
            Self::NotFound => "admin.not_found",
            Self::MethodNotAllowed => "admin.method_not_allowed",
            Self::Timeout => "admin.timeout",
            Self::Conflict => "admin.conflict",
            Self::TooLarge => "admin.too_large",
            Self::ReloadRefused => "admin.reload_refused",
            Self::Internal => "admin.internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ReloadRefused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The RFC 9457 `title`: the same text for every occurrence.
    pub fn title(self) -> &'static str {
        match self {
            Self::Malformed => "Malformed request",
            Self::Invalid => "Invalid request",
            Self::Forbidden => "Not allowed",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Timeout => "Request timed out",
            Self::Conflict => "Conflict",
            Self::TooLarge => "Request too large",
            Self::ReloadRefused => "Reload refused",
            Self::Internal => "Internal error",
        }
    }
}

/// One admin refusal on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminProblem {
    code: AdminCode,
    detail: Cow<'static, str>,
    allow: Option<&'static str>,
    reasons: Vec<String>,
}

impl AdminProblem {
    /// A problem with the given detail.
    pub fn new(code: AdminCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            detail: detail.into(),
            allow: None,
            reasons: Vec::new(),
        }
    }

    /// Adds a `reasons` member: every reason, one string each, when there are several.
    pub fn with_reasons(mut self, reasons: Vec<String>) -> Self {
        self.reasons = reasons;
        self
    }

    /// The reasons given with [`AdminProblem::with_reasons`].
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// `405`, naming the methods the path does take.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                AdminCode::MethodNotAllowed,
                format!("this path takes {allow}"),
            )
        }
    }

    /// `500` for a failure whose details went to the server log.
    pub fn internal() -> Self {
        Self::new(
            AdminCode::Internal,
            "the operation failed inside portcullis; see its log",
        )
    }

    /// The code.
    pub fn code(&self) -> AdminCode {
        self.code
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The problem document; `instance` is the request id, as for partner problems.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let document = crate::problem::render_document(
            self.code.as_str(),
            self.code.title(),
            self.code.status(),
            &self.detail,
            request_id,
        );
        if self.reasons.is_empty() {
            return document;
        }
        // RFC 9457 extension member, added to the shared document shape.
        match serde_json::from_slice::<serde_json::Value>(&document) {
            Ok(serde_json::Value::Object(mut members)) => {
                members.insert("reasons".to_owned(), self.reasons.clone().into());
                serde_json::to_vec(&members).unwrap_or(document)
            }
            _ => document,
        }
    }

    /// The HTTP answer.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut response = Response::new(full_body(Bytes::from(self.to_json(request_id))));
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl std::fmt::Display for AdminProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl From<KeyError> for AdminProblem {
    fn from(error: KeyError) -> Self {
        let code = match &error {
            KeyError::NotFound(_) => AdminCode::NotFound,
            KeyError::AlreadyRevoked(_) | KeyError::Revoked(_) => AdminCode::Conflict,
            KeyError::InvalidOrg
            | KeyError::InvalidScope
            | KeyError::TooManyScopes { .. }
            | KeyError::InvalidLabel
            | KeyError::TooManyCidrs { .. }
            | KeyError::InvalidRate
            | KeyError::ExpiryNotInFuture
            | KeyError::NoChanges => AdminCode::Invalid,
            KeyError::Pepper(_)
            | KeyError::Store(_)
            | KeyError::Random(_)
            | KeyError::Namespace(_)
            | KeyError::IdSpaceExhausted => {
                tracing::error!(%error, "admin key operation failed");
                return Self::internal();
            }
        };
        Self::new(code, error.to_string())
    }
}

impl From<OrgError> for AdminProblem {
    fn from(error: OrgError) -> Self {
        let code = match &error {
            OrgError::NotFound(_) => AdminCode::NotFound,
            OrgError::AlreadyExists(_) => AdminCode::Conflict,
            OrgError::InvalidId
            | OrgError::InvalidName
            | OrgError::InvalidReference
            | OrgError::InvalidActor
            | OrgError::ReferenceRequired => AdminCode::Invalid,
            OrgError::Store(_) => {
                tracing::error!(%error, "admin organization operation failed");
                return Self::internal();
            }
        };
        Self::new(code, error.to_string())
    }
}

impl From<AdminLogError> for AdminProblem {
    /// The change itself was made; only its record failed. Saying so keeps the operator from
    /// retrying a revocation that already happened.
    fn from(error: AdminLogError) -> Self {
        tracing::error!(%error, "an admin action was applied but could not be recorded");
        Self::new(
            AdminCode::Internal,
            "the change was applied but could not be recorded in the admin log; see the portcullis log",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyId;

    #[test]
    fn document_shape_matches_partner_problems() {
        let problem = AdminProblem::new(AdminCode::Conflict, "API key 0a1b2c3d is already revoked");
        let json: serde_json::Value = serde_json::from_slice(&problem.to_json("rid")).unwrap();
        assert_eq!(json["type"], "urn:portcullis:problem:admin.conflict");
        assert_eq!(json["title"], "Conflict");
        assert_eq!(json["status"], 409);
        assert_eq!(json["code"], "admin.conflict");
        assert_eq!(json["instance"], "urn:request:rid");
        let response = problem.into_response("rid");
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
    }

    #[test]
    fn reasons_are_an_extension_member() {
        let problem = AdminProblem::new(AdminCode::ReloadRefused, "not reloaded")
            .with_reasons(vec!["a".into(), "b".into()]);
        let json: serde_json::Value = serde_json::from_slice(&problem.to_json("rid")).unwrap();
        assert_eq!(json["code"], "admin.reload_refused");
        assert_eq!(json["status"], 422);
        assert_eq!(json["reasons"], serde_json::json!(["a", "b"]));
        let plain = AdminProblem::new(AdminCode::Conflict, "x").to_json("rid");
        let json: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(json.get("reasons").is_none());
    }

    #[test]
    fn method_not_allowed_names_the_methods() {
        let response = AdminProblem::method_not_allowed("GET, POST").into_response("rid");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
    }

    #[test]
    fn registry_errors_map_to_codes() {
        let id: KeyId = "0a1b2c3d".parse().unwrap();
        let cases = [
            (AdminProblem::from(KeyError::NotFound(id)), 404),
            (AdminProblem::from(KeyError::AlreadyRevoked(id)), 409),
            (AdminProblem::from(KeyError::Revoked(id)), 409),
            (AdminProblem::from(KeyError::InvalidScope), 422),
            (AdminProblem::from(KeyError::NoChanges), 422),
            (AdminProblem::from(KeyError::IdSpaceExhausted), 500),
            (AdminProblem::from(OrgError::NotFound("acme".into())), 404),
            (
                AdminProblem::from(OrgError::AlreadyExists("acme".into())),
                409,
            ),
            (AdminProblem::from(OrgError::ReferenceRequired), 422),
            (AdminProblem::from(AdminLogError::InvalidActor), 500),
        ];
        for (problem, status) in cases {
            assert_eq!(problem.code().status().as_u16(), status, "{problem}");
        }
        assert_eq!(
            AdminProblem::from(KeyError::NotFound(id)).detail(),
            "no API key with id 0a1b2c3d"
        );
    }
}
