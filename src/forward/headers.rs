//! Header hygiene between the partner and the backend.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) describe one connection and never cross the proxy.
//! Identity fields (`X-Portcullis-*`, `X-Forwarded-*`, `Forwarded`) are set by Portcullis
//! alone: whatever a client sent under those names is removed before Portcullis writes its own,
//! so a partner can never impersonate an organization or a client address to the backend.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::HeaderMap;

/// Prefix of the identity headers Portcullis sends to the backend.
pub const INTERNAL_PREFIX: &str = "x-portcullis-";

/// Fields that are always connection-specific, whether or not `Connection` lists them.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Client-supplied fields that claim where a request came from.
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Removes the hop-by-hop fields and every field the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes every `X-Portcullis-*` field, so only the gates can set identity.
pub fn strip_internal(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Who the backend is told is calling, as verified by the gates.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// Organization id.
    pub org: &'a str,
    /// The key's public id.
    pub key_id: &'a str,
    /// `test` or `live`.
    pub env: &'a str,
    /// The key's scopes, comma-joined.
    pub scopes: &'a str,
}

/// Writes `X-Portcullis-Org`, `-Key-Id`, `-Env` and `-Scopes`. Call after [`strip_internal`].
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity<'_>) {
    for (name, value) in [
        ("x-portcullis-org", identity.org),
        ("x-portcullis-key-id", identity.key_id),
        ("x-portcullis-env", identity.env),
        ("x-portcullis-scopes", identity.scopes),
    ] {
        // Every value is minted or validated by Portcullis (ids, env names, policy scopes).
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}

/// Replaces client-supplied forwarding fields with what Portcullis itself saw.
///
/// `host` is the authority the client addressed (the `Host` field or the HTTP/2 `:authority`).
pub fn set_forwarded(headers: &mut HeaderMap, client_ip: IpAddr, host: Option<&str>) {
    for name in FORWARDING {
        headers.remove(name);
    }
    headers.remove(HOST);
    headers.insert("x-forwarded-for", client_ip_value(client_ip));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert("x-forwarded-host", value);
    }
}

fn client_ip_value(ip: IpAddr) -> HeaderValue {
    // An IP address always renders as a valid header value.
    HeaderValue::from_str(&ip.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_connection_named_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn spoofed_identity_and_forwarding_fields_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-portcullis-org", HeaderValue::from_static("victim"));
        headers.insert("X-Portcullis-Anything", HeaderValue::from_static("x"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        strip_internal(&mut headers);
        set_forwarded(
            &mut headers,
            "::ffff:10.1.2.3".parse().unwrap(),
            Some("api.example"),
        );
        assert!(!headers.contains_key("x-portcullis-org"));
        assert!(!headers.contains_key("x-portcullis-anything"));
        assert!(!headers.contains_key("forwarded"));
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "api.example");
    }
}
