//! One job is one trace: the trace context is made at submission and stored with the
//! job as a W3C `traceparent`; every later span, in whichever process, takes its
//! parent from a `traceparent` carried along (in the job row, in gRPC metadata, in
//! the container's environment).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OTLP (gRPC) span pipeline, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub(crate) fn provider(default_service_name: &str) -> Option<SdkTracerProvider> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("slipway: traces are off: cannot build the OTLP exporter: {e}");
            return None;
        }
    };
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service_name.to_string());
    }
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Some(provider)
}

/// The span's context as a `traceparent`, when it has one (traces are on).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// A fresh `traceparent` for a job submitted while traces are off, so that the
/// job still has a trace id to hand to its container.
pub fn random_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

/// Makes `traceparent` the parent of `span`.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// Marks the span failed with `message`.
pub fn mark_error(span: &tracing::Span, message: &str) {
    span.set_status(Status::error(message.to_string()));
}

/// Records an attribute on the span after it started.
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: String) {
    span.set_attribute(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_traceparents_are_well_formed() {
        let tp = random_traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
        assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
