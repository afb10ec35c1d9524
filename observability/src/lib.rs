//! Logging, tracing and metrics setup for every Slipway process, and the names of
//! the fields that spans and log events carry, kept in one place so that
//! dashboards and queries can rely on them.
//!
//! Traces go to an OTLP collector (Jaeger, an OpenTelemetry collector) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, configured by the standard `OTEL_*`
//! variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`); without it
//! nothing is exported and nothing costly runs.

pub mod fields;
pub mod metrics;
pub mod trace;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the telemetry pipeline alive; dropping it flushes the spans still buffered.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("slipway: flushing traces failed: {e}");
        }
    }
}

/// Settings; an unset filter means `RUST_LOG`, or `info` without it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub filter: Option<String>,
    /// The service name when `OTEL_SERVICE_NAME` is not set (`slipway-server`, …).
    pub service_name: String,
    pub format: LogFormat,
}

/// Installs the global subscriber: log lines to standard error (so that the CLI's
/// standard output stays data only) and, when an OTLP endpoint is configured,
/// spans to it. Must run inside the Tokio runtime (the exporter lives there).
pub fn init(config: &Config) -> Guard {
    let filter = config
        .filter
        .clone()
        .map(EnvFilter::new)
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let provider = trace::provider(&config.service_name);
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(p.tracer("slipway"))
    });
    // Colour only for a person at a terminal; a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let lines = match config.format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).with_current_span(false).boxed(),
    };
    let _ = tracing_subscriber::registry().with(filter).with(lines).with(otel).try_init();
    Guard { provider }
}

/// How log lines are written: text for people, or one JSON object a line for log
/// shippers (`SLIPWAY_LOG_FORMAT=json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("SLIPWAY_LOG_FORMAT: `{other}` is not a log format; use text or json")),
        }
    }
}
