//! Logs and traces: tracing to stdout (readable text, or JSON with `LOG_FORMAT=json`), and
//! OpenTelemetry traces over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Also the request id that follows a request
//! from the HTTP layer to the provider calls it causes. The access trail is `trail`'s.
//!
//! Owns: the log format, the subscriber, the exporter, the request id.

pub mod metrics;
pub mod trail;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

tokio::task_local! {
    /// The id of the HTTP request this task is serving; sent upstream as `x-request-id`.
    static REQUEST_ID: String;
}

/// Runs `future` with `id` as the current request id.
pub async fn with_request_id<F: std::future::Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// The current request id, if this task serves a request.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Keeps the log writer and the trace exporter alive; `shutdown` flushes what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    /// Dropping it writes the log lines still queued.
    _log_writer: tracing_appender::non_blocking::WorkerGuard,
}

impl Telemetry {
    /// Sends the spans still buffered and writes the queued log lines; call once before the
    /// process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("checkout-gateway: flushing traces failed: {error}");
            }
        }
    }
}

static DROPPED_LOG_LINES: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped because stdout could not keep up (0 before `init`).
pub fn dropped_log_lines() -> u64 {
    DROPPED_LOG_LINES.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// Installs the global subscriber. Call before the async runtime starts: the OTLP exporter
/// owns a blocking HTTP client and a thread of its own.
/// `queue_lines`: log lines waiting for stdout at most; past it lines are dropped (and
/// counted) rather than making a request wait on a slow log pipe.
pub fn init(format: LogFormat, queue_lines: usize) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines are formatted on the request path but written by a thread of their own.
    let (writer, log_writer) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines)
        .thread_name("log-writer")
        // Buffered: the writer thread drains every queued line, then flushes once, so a busy
        // moment costs one write to stdout rather than one per line.
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    trail::install(writer.clone(), format);
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };
    let tracer_provider = if otlp_configured() {
        crate::net::install_crypto_provider();
        // Endpoint, headers, timeout and protocol come from the standard OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("checkout-gateway");
        }
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    } else {
        None
    };
    let traces = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("checkout-gateway")));
    tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init()?;
    if tracer_provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry { tracer_provider, _log_writer: log_writer })
}
