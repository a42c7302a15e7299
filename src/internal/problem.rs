//! Refusals on the internal listener, written as RFC 9457 documents like every other refusal
//! (see [`crate::problem::render_document`]), with `internal.*` codes of their own.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::body::{full_body, ProxyBody};
use crate::problem::{render_document, PROBLEM_CONTENT_TYPE};

/// A refusal on the internal listener.
#[derive(Debug, Clone)]
pub struct InternalProblem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Cow<'static, str>,
    allow: Option<&'static str>,
    retry_after_secs: Option<u32>,
}

impl InternalProblem {
    /// A refusal with a fixed code (`internal.<something>`) and title; `detail` must be fixed
    /// text or policy names, never something the request carried.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            allow: None,
            retry_after_secs: None,
        }
    }

    /// Adds `Retry-After` (whole seconds, at least 1): when a refusal is temporary, a sender
    /// (the backend) is told when to try again.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// `404 internal.not_found`: the listener has no such endpoint.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "internal.not_found",
            "Not found",
            "the internal listener has no such endpoint",
        )
    }

    /// `405 internal.method_not_allowed`, with `Allow` naming the methods the path takes.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut problem = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "internal.method_not_allowed",
            "Method not allowed",
            format!("this endpoint takes {allow}"),
        );
        problem.allow = Some(allow);
        problem
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem document as an answer, with `instance` naming `request_id`.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = render_document(self.code, self.title, self.status, &self.detail, request_id);
        let mut response = Response::new(full_body(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: every 401 names the scheme the client should use.
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
