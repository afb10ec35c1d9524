//! Logging and tracing setup for every Slipway process, and the names of the fields
//! that spans and log events carry, kept in one place so that dashboards and
//! queries can rely on them.

pub mod fields;
pub mod metrics;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the telemetry pipeline alive; dropping it flushes what is buffered.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct Guard {
    _private: (),
}

/// Settings; an unset filter means `RUST_LOG`, or `info` without it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub filter: Option<String>,
}

/// Installs the global subscriber. Log lines go to standard error, so that the CLI's
/// standard output stays data only.
pub fn init(config: &Config) -> Guard {
    let filter = config
        .filter
        .clone()
        .map(EnvFilter::new)
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    Guard { _private: () }
}
