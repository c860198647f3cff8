//! Logging: `tracing` to stderr, text or JSON (for journald).
//!
//! The SMPP codec logs whole PDUs, short_message included, at DEBUG under the
//! `rusmpp::codec` targets. Those would put PINs in the log, so they are dropped by a
//! filter that no configured level can override.

use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogConfig, LogFormat};

/// True for targets whose events may carry message bodies.
pub fn is_body_logging_target(target: &str) -> bool {
    target == "rusmpp"
        || target.starts_with("rusmpp::")
        || target.starts_with("rusmpp_core")
        || target.starts_with("rusmpp_extra")
}

/// Install the global subscriber. Call once, from `main`.
pub fn init(cfg: &LogConfig) {
    let env = EnvFilter::try_new(&cfg.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let guard = FilterFn::new(|meta| !is_body_logging_target(meta.target()));
    let layer = match cfg.format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(env).with_filter(guard))
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn codec_targets_are_blocked() {
        assert!(super::is_body_logging_target("rusmpp::codec::decode"));
        assert!(super::is_body_logging_target("rusmpp::codec::encode"));
        assert!(!super::is_body_logging_target("rusmppc::connection"));
        assert!(!super::is_body_logging_target("pinpost::dispatch"));
    }
}
