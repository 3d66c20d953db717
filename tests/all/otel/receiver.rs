//! The OTLP/HTTP receiver the OpenTelemetry tests export to, and readers
//! of the spans' attributes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered 200 with an empty response; every
/// span received is kept with its resource's `service.name`.
pub(super) struct Receiver {
    pub(super) url: String,
    pub(super) spans: Arc<Mutex<Vec<(String, Span)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub(super) async fn start() -> Self {
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut kept = kept.lock().unwrap();
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .as_ref()
                            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                Any::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            kept.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    (
                        axum::http::StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, spans, task }
    }

    pub(super) fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of run `run_id` (its trace), once its run span and
    /// `at_least` spans in all have arrived; at most 30 s.
    pub(super) async fn run(&self, run_id: &str, at_least: usize) -> Vec<Span> {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.spans();
            let trace = all
                .iter()
                .find(|(_, s)| s.name == "run" && text(s, "conclave.run_id") == Some(run_id))
                .map(|(_, s)| s.trace_id.clone());
            if let Some(trace) = trace {
                let of: Vec<Span> = all
                    .into_iter()
                    .filter(|(service, s)| s.trace_id == trace && service == "conclave")
                    .map(|(_, s)| s)
                    .collect();
                if of.len() >= at_least {
                    return of;
                }
            }
            assert!(
                std::time::Instant::now() < until,
                "gave up after 30 s waiting for the spans of {run_id}; received: {:?}",
                self.spans()
                    .iter()
                    .map(|(_, s)| &s.name)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(super) fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Any> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub(super) fn text<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key)? {
        Any::StringValue(v) => Some(v),
        _ => None,
    }
}

pub(super) fn int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        Any::IntValue(v) => Some(*v),
        _ => None,
    }
}

pub(super) fn flag(s: &Span, key: &str) -> Option<bool> {
    match attr(s, key)? {
        Any::BoolValue(v) => Some(*v),
        _ => None,
    }
}
