//! Validation of `[logging]`: the line format and the filter directive.

use tracing_subscriber::EnvFilter;

use super::super::raw::RawLogging;
use super::super::{LogFormat, LoggingConfig};
use super::Validator;

impl Validator<'_> {
    pub(super) fn logging(&mut self, raw: RawLogging) -> LoggingConfig {
        let defaults = LoggingConfig::default();
        let format = match &raw.format {
            None => defaults.format,
            Some(value) => match value.get_ref().as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => {
                    self.report(
                        "logging.format",
                        &value.span(),
                        "must be \"pretty\" (text lines) or \"json\" (one JSON object per line)",
                    );
                    defaults.format
                }
            },
        };
        let level = match &raw.level {
            None => defaults.level,
            Some(value) => match EnvFilter::builder().parse(value.get_ref()) {
                Ok(_) if !value.get_ref().trim().is_empty() => value.get_ref().clone(),
                Ok(_) => {
                    self.report("logging.level", &value.span(), "must not be empty");
                    defaults.level
                }
                Err(error) => {
                    self.report(
                        "logging.level",
                        &value.span(),
                        format!(
                            "is not a log filter ({error}); write a level such as \"info\" or \
                             \"debug\", or directives such as \"portcullis=debug,info\""
                        ),
                    );
                    defaults.level
                }
            },
        };
        LoggingConfig { format, level }
    }
}
