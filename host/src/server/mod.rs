//! A team served as an OpenAI-compatible model: `POST /v1/chat/completions`
//! (plain and streaming), `GET /v1/models`, `/healthz` and `/metrics`
//! (Prometheus text). Any OpenAI client can ask a team as if it were one
//! model; each reply carries the usual fields plus a `conclave` object with
//! the support, the runner-up, the stop reason and the run id.
//!
//! Every request is a journaled run. A client that goes away cancels its
//! run (the model calls in flight are dropped) and the run is journaled as
//! cancelled. Bearer-token auth, a body limit (413), a limit on runs at
//! once (requests queue for a slot up to their deadline), a per-request
//! deadline, and a graceful shutdown that lets requests in flight finish.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::team::consensus::StopReason;
use crate::team::events::{Event, Observer};
use crate::team::job::{JobResult, PreparedTeam};

/// How the server behaves; one home for its numbers.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Requests must carry `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Largest request body. Default 1 MiB.
    pub max_body: usize,
    /// Runs at once; more requests wait for a slot. Default 16.
    pub max_concurrency: usize,
    /// Longest a request may take, waiting included. Default 10 minutes.
    pub deadline: Duration,
}

impl ServerConfig {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            token: None,
            max_body: 1 << 20,
            max_concurrency: 16,
            deadline: Duration::from_secs(600),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on {0} without a token: set one with --token-env VAR (only loopback addresses may go without)")]
    NoToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
}

struct App {
    team: Arc<PreparedTeam>,
    journal: Arc<dyn Journal>,
    config: ServerConfig,
    slots: tokio::sync::Semaphore,
    metrics: metrics::Metrics,
}

/// A bound server, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Arc<App>,
}

impl Server {
    /// Checks the config and binds the address.
    pub async fn bind(
        team: Arc<PreparedTeam>,
        journal: Arc<dyn Journal>,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        if config.token.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServerError::NoToken(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Server {
            listener,
            app: Arc::new(App {
                team,
                journal,
                slots: tokio::sync::Semaphore::new(config.max_concurrency.max(1)),
                config,
                metrics: Default::default(),
            }),
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.config.listen)
    }

    /// Serves until `shutdown` is cancelled, then lets the requests in
    /// flight finish.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let max_body = self.app.config.max_body;
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics_text))
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self.app);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServerError::Serve)
    }
}

/// An OpenAI-style error reply.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message.into(), "type": kind, "code": status.as_u16()}}),
        ),
    )
        .into_response()
}

fn authorised(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.config.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            // Same time whatever the first wrong byte.
            given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
}

/// The question: the last user message (text parts joined).
fn question(body: &ChatBody) -> Option<String> {
    let m = body.messages.iter().rev().find(|m| m.role == "user")?;
    let text = match &m.content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn usage(r: &JobResult) -> serde_json::Value {
    json!({
        "prompt_tokens": r.tokens_in,
        "completion_tokens": r.tokens_out,
        "total_tokens": r.tokens_in + r.tokens_out,
    })
}

fn conclave(r: &JobResult) -> serde_json::Value {
    json!({
        "run_id": r.run_id,
        "support": r.support,
        "total": r.total,
        "runner_up": r.runner_up,
        "samples": r.samples,
        "stop": r.stop,
        "cost": r.cost,
        "simulated": r.simulated,
    })
}

fn created() -> u64 {
    crate::journal::now_ms() / 1000
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or wrong bearer token",
        );
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"id": app.team.spec().team.name, "object": "model", "created": 0, "owned_by": "conclave"}],
    }))
    .into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// Cancels its run when dropped: a client that goes away stops the run.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&app, &headers) {
        app.metrics.request("401");
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or wrong bearer token",
        );
    }
    let body: ChatBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            app.metrics.request("400");
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body is not a chat completion request: {e}"),
            );
        }
    };
    let Some(q) = question(&body) else {
        app.metrics.request("400");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request has no user message with text to answer",
        );
    };
    let team_name = app.team.spec().team.name.clone();
    if let Some(m) = body
        .model
        .as_deref()
        .filter(|m| !m.is_empty() && *m != team_name)
    {
        tracing::debug!(requested = m, served = %team_name, "model name ignored: one team is served");
    }
    let run_id = crate::team::job::new_run_id();
    let cancel = CancellationToken::new();
    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let observer: Arc<dyn Observer> = Arc::new(move |_: &str, e: &Event| {
        if let Event::TaskEnded { task, result } = e {
            let _ = progress_tx.send(format!("task {task}: {}", result.stop));
        }
    });
    // The run goes on in a task of its own, so that it is journaled to
    // its end even when the client leaves (it then ends as cancelled).
    let job = {
        let app = app.clone();
        let cancel = cancel.clone();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            let deadline = app.config.deadline;
            let _slot = match tokio::time::timeout(deadline, app.slots.acquire()).await {
                Ok(Ok(p)) => p,
                _ => return None,
            };
            app.metrics.in_flight(1);
            let timer = cancel.clone();
            let expiry = tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                timer.cancel();
            });
            let done = crate::journal::resume::run(
                &app.team,
                app.journal.clone(),
                &run_id,
                &q,
                None,
                observer,
                cancel,
            )
            .await;
            expiry.abort();
            app.metrics.in_flight(-1);
            app.metrics.finished(&done.result);
            Some(done.result)
        })
    };
    let guard = CancelOnDrop(cancel);
    let model = team_name;
    if body.stream {
        app.metrics.request("200");
        return stream(job, guard, progress_rx, model, run_id);
    }
    let result = job.await.ok().flatten();
    drop(guard);
    match result {
        Some(r) => {
            app.metrics.request("200");
            axum::Json(json!({
                "id": format!("chatcmpl-{}", r.run_id),
                "object": "chat.completion",
                "created": created(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": r.answer.clone().unwrap_or_default()},
                    "finish_reason": finish_reason(&r.stop),
                }],
                "usage": usage(&r),
                "conclave": conclave(&r),
            }))
            .into_response()
        }
        None => {
            app.metrics.request("503");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no slot to run the team before the request's deadline; try again later",
            )
        }
    }
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::Decided => "stop",
        StopReason::BudgetExhausted(_) => "length",
        _ => "stop",
    }
}

/// Server-sent events: the role first, progress as comments while the team
/// works, then the answer, the final chunk with the `conclave` object, and
/// `[DONE]`. Dropping the stream (the client left) cancels the run.
fn stream(
    job: tokio::task::JoinHandle<Option<JobResult>>,
    guard: CancelOnDrop,
    mut progress: tokio::sync::mpsc::UnboundedReceiver<String>,
    model: String,
    run_id: String,
) -> Response {
    let id = format!("chatcmpl-{run_id}");
    let chunk =
        move |delta: serde_json::Value, finish: Option<&str>, extra: Option<serde_json::Value>| {
            let mut c = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created(),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if let Some(extra) = extra {
                c["usage"] = extra["usage"].clone();
                c["conclave"] = extra["conclave"].clone();
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
    let body = async_stream(move |tx| async move {
        let _guard = guard;
        if tx
            .send(chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                None,
            ))
            .await
            .is_err()
        {
            return;
        }
        let mut job = job;
        let result = loop {
            tokio::select! {
                r = &mut job => break r.ok().flatten(),
                Some(p) = progress.recv() => {
                    if tx.send(Bytes::from(format!(": {p}\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        };
        let Some(r) = result else {
            let _ = tx
                .send(Bytes::from(
                    "data: {\"error\": {\"message\": \"no slot to run the team before the request's deadline\", \"type\": \"server_error\"}}\n\n",
                ))
                .await;
            return;
        };
        let extra = json!({"usage": usage(&r), "conclave": conclave(&r)});
        let _ = tx
            .send(chunk(
                json!({"content": r.answer.clone().unwrap_or_default()}),
                None,
                None,
            ))
            .await;
        let _ = tx
            .send(chunk(json!({}), Some(finish_reason(&r.stop)), Some(extra)))
            .await;
        let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("a valid response")
}

/// A body fed by `producer` through a channel; when the client goes away
/// the body is dropped, and with it the producer's task.
fn async_stream<F, Fut>(producer: F) -> axum::body::Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(producer(tx));
    let abort = task.abort_handle();
    let stream = futures::stream::unfold((rx, AbortOnDrop(abort)), |(mut rx, guard)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), (rx, guard)))
    });
    axum::body::Body::from_stream(stream)
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
