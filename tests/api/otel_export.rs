//! Export of spans to an OpenTelemetry collector: the real binary, started
//! with the standard `OTEL_*` variables, sends its request spans over
//! OTLP/HTTP (protobuf) to a collector played by this test, with the trace
//! ids that the logs and the `traceparent` response header show.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::helpers::{Backend, TestDb};

/// What the collector received: every span with its resource's
/// `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

async fn collect(
    State(received): State<Received>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export in protobuf");
    let mut spans = received.0.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn start_collector() -> (String, Received) {
    let received = Received::default();
    let router = axum::Router::new().route("/v1/traces", axum::routing::post(collect)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (endpoint, received)
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `tagbase serve` on `db`, exporting to `endpoint`. The batch delay is
/// long, so only the flush at shutdown can deliver the spans.
fn serve(db: &TestDb, listen: SocketAddr, endpoint: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagbase"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command
        .args(["serve", "--listen", &listen.to_string()])
        .env("DATABASE_URL", &db.url)
        .env("TAGBASE_LOG", "info")
        .env("TAGBASE_LOG_FORMAT", "json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "tagbase-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tagbase serve")
}

async fn wait_until_serving(client: &reqwest::Client, base: &str, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("tagbase serve exited with {status}");
        }
        assert!(Instant::now() < deadline, "tagbase serve did not answer /healthz in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `00-<trace>-<span>-<flags>` split into its trace and span ids.
fn ids_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn request_spans_are_exported_with_the_trace_ids_of_logs_and_headers(backend: Backend) {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let db = TestDb::new(backend).await;
    let (endpoint, received) = start_collector().await;
    let listen = free_port();
    let base = format!("http://{listen}");
    let mut server = serve(&db, listen, &endpoint);
    let client = reqwest::Client::new();
    wait_until_serving(&client, &base, &mut server).await;

    let query = serde_json::json!({ "query": "{ __typename }" });
    let joined = client
        .post(format!("{base}/graphql"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&query)
        .send()
        .await
        .unwrap();
    let (joined_trace, joined_span) = ids_of(joined.headers()["traceparent"].to_str().unwrap());
    assert_eq!(joined_trace, TRACE, "the response joins the caller's trace");
    let fresh = client.post(format!("{base}/graphql")).json(&query).send().await.unwrap();
    let (fresh_trace, fresh_span) = ids_of(fresh.headers()["traceparent"].to_str().unwrap());
    drop(client);
    assert!(received.0.lock().unwrap().is_empty(), "nothing is sent before the batch delay or shutdown");

    // SIGTERM: the server stops gracefully and flushes its spans.
    let stopped = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait().unwrap();
        let mut logs = String::new();
        server.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
        (status, logs)
    })
    .await
    .unwrap();
    let (status, logs) = status;
    assert!(status.success(), "tagbase serve stopped with {status}:\n{logs}");

    let spans = received.0.lock().unwrap().clone();
    let request_span = |trace: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == "request" && hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no request span of trace {trace} among {} spans", spans.len()))
            .clone()
    };
    let (service, span) = request_span(TRACE);
    assert_eq!(service, "tagbase-under-test", "OTEL_SERVICE_NAME names the service");
    assert_eq!(hex(&span.span_id), joined_span, "the exported span is the one the response names");
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN, "the caller's span is its parent");
    let (_, span) = request_span(&fresh_trace);
    assert_eq!(hex(&span.span_id), fresh_span);
    assert!(span.parent_span_id.is_empty(), "a trace started here has no parent");

    // The access log line of each request carries the same trace id.
    for trace in [TRACE, fresh_trace.as_str()] {
        assert!(
            logs.lines().any(|l| l.contains("tagbase::access") && l.contains(&format!("\"trace_id\":\"{trace}\""))),
            "no access-log line with trace id {trace}:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_with_the_trace_ids_of_logs_and_headers_on_sqlite() {
    request_spans_are_exported_with_the_trace_ids_of_logs_and_headers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_with_the_trace_ids_of_logs_and_headers_on_postgres() {
    request_spans_are_exported_with_the_trace_ids_of_logs_and_headers(Backend::Postgres).await;
}

/// A protocol tagbase does not speak is refused at start, naming the
/// variable, rather than silently exporting nothing.
#[test]
fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase"))
        .arg("export-schema")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported"), "{stderr}");
}
