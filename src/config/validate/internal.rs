//! Validation of `[internal]`: the plain-HTTP listener for metrics and backend events.
//!
//! The listener has no TLS and no partner authentication, so it is loopback-only unless the
//! operator says otherwise in so many words (`allow_non_loopback = true`).

use std::net::SocketAddr;

use toml::Spanned;

use super::super::raw::RawInternal;
use super::super::InternalConfig;
use super::Validator;

/// Where the internal listener binds when `[internal]` is present without `listen`.
pub const DEFAULT_INTERNAL_LISTEN: &str = "127.0.0.1:9464";

impl Validator<'_> {
    pub(super) fn internal(&mut self, raw: Option<Spanned<RawInternal>>) -> Option<InternalConfig> {
        let raw = raw?.into_inner();
        let listen = match &raw.listen {
            None => DEFAULT_INTERNAL_LISTEN.parse::<SocketAddr>().ok()?,
            Some(value) => match value.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    let allowed = raw
                        .allow_non_loopback
                        .as_ref()
                        .is_some_and(|flag| *flag.get_ref());
                    if !addr.ip().is_loopback() && !allowed {
                        self.report(
                            "internal.listen",
                            &value.span(),
                            "is not a loopback address; the internal listener has no TLS and \
                             no authentication, so bind it to 127.0.0.1 or [::1], or set \
                             internal.allow_non_loopback = true if a firewall protects it",
                        );
                    }
                    addr
                }
                Err(_) => {
                    self.report(
                        "internal.listen",
                        &value.span(),
                        "is not an IP address with a port, e.g. \"127.0.0.1:9464\"",
                    );
                    return None;
                }
            },
        };
        Some(InternalConfig { listen })
    }
}
