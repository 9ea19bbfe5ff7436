//! Export of spans to an OpenTelemetry collector over OTLP/HTTP.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then no layer is installed
//! and a request pays nothing for it. When on, the standard variables
//! apply (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` or `http/json`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`), spans are batched on the tokio
//! runtime, and [`Telemetry::shutdown`] flushes what is left.
//!
//! A request's span is exported with the ids the server already uses
//! ([`TraceContext`]): the trace id of the incoming `traceparent` (or the
//! one started here), which the logs print, and the span id the response's
//! `traceparent` names. The SDK draws ids from an [`IdGenerator`]; ours
//! hands out the request's ids while its span is started
//! ([`start_request_span`]), and random ones otherwise.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::trace::TraceContext;

const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];
const DEFAULT_SERVICE_NAME: &str = "tagbase";
/// Longest wait for the collector's answer to one batch.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The exporting tracer provider, kept to be flushed and shut down.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The exporter the environment asks for, or `None` when no OTLP
    /// endpoint is set. Must run inside the tokio runtime (the batch
    /// processor is a task on it).
    ///
    /// # Errors
    /// An unknown or unsupported protocol, or an invalid endpoint.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        if !ENDPOINT_VARS.iter().any(|var| env(var).is_some()) {
            return Ok(None);
        }
        let protocol = match PROTOCOL_VARS.iter().find_map(|var| env(var).map(|v| (*var, v))) {
            None => Protocol::HttpBinary,
            Some((_, p)) if p == "http/protobuf" => Protocol::HttpBinary,
            Some((_, p)) if p == "http/json" => Protocol::HttpJson,
            Some((var, p)) => anyhow::bail!(
                "{var}={p:?} is not supported: tagbase exports over HTTP, `http/protobuf` (the default) or `http/json`"
            ),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_http_client(ReqwestClient(
                reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build().context("OpenTelemetry HTTP client")?,
            ))
            .build()
            .context("OpenTelemetry exporter")?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let mut resource = Resource::builder();
        let named_in_attributes = env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        if env("OTEL_SERVICE_NAME").is_none() && !named_in_attributes {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .with_id_generator(RequestIds::default())
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(Self { provider }))
    }

    /// The tracer for the `tracing` layer.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("tagbase")
    }

    /// Exports the spans still queued and stops the exporter.
    pub async fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        // The SDK waits for the batch task by blocking its thread.
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "OpenTelemetry export did not finish"),
            Err(err) => tracing::warn!(error = %err, "OpenTelemetry shutdown failed"),
        }
    }
}

/// True while spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts the OpenTelemetry span of a request's `tracing` span with the
/// request's ids: the joined trace's caller as its remote parent, the
/// trace id and this server's span id from `trace`.
pub fn start_request_span(span: &tracing::Span, trace: &TraceContext) {
    if let Some(parent) = trace.parent_id {
        let remote = SpanContext::new(
            TraceId::from(trace.trace_id),
            SpanId::from(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    NEXT_IDS.with(|ids| ids.set(Some((trace.trace_id, trace.span_id))));
    // Asking for the span's context starts it, on this thread, now.
    let _ = span.context();
    NEXT_IDS.with(|ids| ids.set(None));
}

thread_local! {
    /// The ids of the span being started by [`start_request_span`].
    static NEXT_IDS: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

#[derive(Debug, Default)]
struct RequestIds {
    random: RandomIdGenerator,
}

impl IdGenerator for RequestIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(Cell::get).map_or_else(|| self.random.new_trace_id(), |(trace, _)| TraceId::from(trace))
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(Cell::get).map_or_else(|| self.random.new_span_id(), |(_, span)| SpanId::from(span))
    }
}

/// The exporter's HTTP client: the reqwest the server already links (the
/// exporter's own reqwest feature would build a second major version).
#[derive(Debug)]
struct ReqwestClient(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let response = self.0.execute(reqwest::Request::try_from(request)?).await?;
        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        let body = response.bytes().await?;
        Ok(out.body(body)?)
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}
