//! Tracing export: the operator binary, pointed at an OTLP/HTTP endpoint by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, sends its reconcile spans there as OTLP protobuf. The
//! receiver here is a plain HTTP listener that decodes the requests with the OTLP
//! protobuf definitions (`opentelemetry-proto`), as a collector would.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kube::Api;
use kube::api::PostParams;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use printfleet_crds::{PrintQueue, PrintQueueSpec, Printer};
use printfleet_e2e::apiserver::write_kubeconfig;
use prost::Message;
use support::apiserver::ApiServer;
use support::operator_process::OperatorProcess;

/// One span as received: its name, and its string attributes.
#[derive(Debug)]
struct ReceivedSpan {
    name: String,
    service: Option<String>,
    attributes: Vec<(String, String)>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Requests that were not OTLP protobuf traces: path, content type, why.
    refused: Vec<String>,
}

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn record(received: &Mutex<Received>, path: &str, content_type: &str, body: &[u8]) {
    let mut received = received.lock().expect("lock");
    if path != "/v1/traces" || content_type != "application/x-protobuf" {
        received.refused.push(format!("{path} ({content_type})"));
        return;
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => {
            received.refused.push(format!("{path}: {error}"));
            return;
        }
    };
    for resource_spans in request.resource_spans {
        let service = resource_spans.resource.as_ref().and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| string_value(attribute.value.as_ref()))
        });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.spans.push(ReceivedSpan {
                    name: span.name,
                    service: service.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), string_value(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
}

/// An OTLP/HTTP endpoint on 127.0.0.1: its URL and what it has received.
async fn start_receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let received = Arc::new(Mutex::new(Received::default()));
    let shared = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get(hyper::header::CONTENT_TYPE)
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        record(&received, &path, &content_type, &body);
                        // An empty ExportTraceServiceResponse: everything accepted.
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn reconcile_spans_reach_the_otlp_endpoint() {
    let (endpoint, received) = start_receiver().await;
    let api = ApiServer::start(&[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = write_kubeconfig(dir.path(), api.address);
    let _operator = OperatorProcess::start_with_env(
        &kubeconfig,
        "operator-a",
        3,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let client = api.client();
    Api::<Printer>::namespaced(client.clone(), "office")
        .create(&PostParams::default(), &support::file_printer("hall"))
        .await
        .expect("create printer");
    Api::<PrintQueue>::namespaced(client, "office")
        .create(
            &PostParams::default(),
            &PrintQueue::new(
                "letters",
                PrintQueueSpec {
                    printers: vec!["hall".into()],
                    ..PrintQueueSpec::default()
                },
            ),
        )
        .await
        .expect("create queue");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let received = received.lock().expect("lock");
            assert!(
                received.refused.is_empty(),
                "not OTLP traces: {:?}",
                received.refused
            );
            let queue_span = received.spans.iter().find(|span| {
                span.name == "reconcile_queue"
                    && span
                        .attributes
                        .iter()
                        .any(|(key, value)| key == "name" && value == "letters")
            });
            let printer_span = received.spans.iter().any(|span| {
                span.name == "reconcile_printer"
                    && span
                        .attributes
                        .iter()
                        .any(|(key, value)| key == "name" && value == "hall")
            });
            if let Some(queue_span) = queue_span
                && printer_span
            {
                assert_eq!(
                    queue_span.service.as_deref(),
                    Some("printfleet-operator"),
                    "{queue_span:?}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no reconcile spans for queue letters and printer hall within 30 s; received {:?}",
                received.spans
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
