//! Logging and tracing: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`; and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! spans at INFO and above (reconciles among them) exported over OTLP/HTTP (protobuf) to
//! that collector.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The environment variables that turn OTLP export on (the OpenTelemetry standard ones).
const OTLP_ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot load the system's CA certificates for OTLP over HTTPS: {0}")]
    Certificates(#[source] std::io::Error),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Flushes and stops the OTLP export when dropped (at the end of `main`), so the spans of
/// the last moments reach the collector.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing OTLP spans: {error}");
        }
    }
}

/// Whether the environment asks for OTLP export.
fn otlp_requested() -> bool {
    OTLP_ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Installs the global subscriber (once; later calls keep the first). Call it inside the
/// tokio runtime: the OTLP batch exporter runs on it.
pub fn init(json: bool) -> Result<Telemetry, TelemetryError> {
    let provider = otlp_requested().then(tracer_provider).transpose()?;
    // Spans go to the collector at INFO whatever `RUST_LOG` keeps in the log.
    let otlp = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("printfleet-operator"))
            .with_filter(LevelFilter::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(fmt.json())
    } else {
        Box::new(fmt)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(otlp)
        .try_init();
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
    Ok(Telemetry { provider })
}

/// OTLP/HTTP with protobuf bodies; the endpoint, headers and batching come from the
/// standard `OTEL_*` environment variables. HTTPS endpoints are verified against the
/// system's CA certificates.
fn tracer_provider() -> Result<SdkTracerProvider, TelemetryError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(TelemetryError::Certificates)?
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name("printfleet-operator")
                .build(),
        )
        .build())
}
