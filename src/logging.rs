//! Log output: tracing events as pretty text or JSON lines on stderr (journald collects it).
//!
//! The level comes from `[logging] level`, overridden by the `PORTCULLIS_LOG` environment
//! variable. JSON lines carry the event's own fields at the top level and no span fields:
//! span fields would copy request data into every line. What events may carry is the audit
//! log's rule: request ids, methods, route names, key ids, statuses and codes, never a path,
//! query, header or body.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// The environment variable that overrides `[logging] level`.
pub const LOG_ENV: &str = "PORTCULLIS_LOG";

/// Installs the process-wide subscriber. Call once, before anything logs; a second call
/// leaves the first subscriber in place.
pub fn init(config: &LoggingConfig) {
    let filter = EnvFilter::try_from_env(LOG_ENV)
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = match config.format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
}
