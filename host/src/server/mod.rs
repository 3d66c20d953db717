//! A team served as an OpenAI-compatible model: `POST /v1/chat/completions`
//! (plain and streaming), `GET /v1/models`, `GET /v1/plugins` (the plugin
//! versions serving), `/healthz` and `/metrics` (Prometheus text). Any
//! OpenAI client can ask a team as if it were one model; each reply carries
//! the usual fields plus a `conclave` object with the support, the
//! runner-up, the stop reason and the run id.
//!
//! What a run's stop reason becomes: `decided` is a 200 with the answer;
//! `no consensus` is a 200 whose message has no content and a `refusal`
//! saying why (the team worked and disagreed: an outcome, not a server
//! fault; the answers it had are in `conclave.candidates`); `failed` is a
//! 500, an exhausted budget a 503, the request's deadline a 504, each an
//! OpenAI-shaped error naming the stop reason and the run id (in a stream:
//! an error event before `[DONE]`).
//!
//! Every request is a journaled run. A client that goes away cancels its
//! run (the model calls in flight are dropped) and the run is journaled as
//! cancelled; one that goes away while waiting for a slot is dropped
//! without a run. Bearer-token auth on everything but `/healthz`, a body
//! limit (413), a limit on runs at once with a bounded queue of requests
//! waiting for a slot (503 with `Retry-After` when full), a deadline per
//! request from its arrival (504), and a graceful shutdown that lets
//! requests in flight finish.

mod metrics;
mod reply;

use reply::{conclave, created, message, question, refusal, usage, Ballots, ChatBody, Refused};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
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
    /// Requests that may wait for a slot at once; one more is answered 503
    /// with `Retry-After`. `None`: four times `max_concurrency`.
    pub max_queue: Option<usize>,
    /// Longest a request may take from its arrival, waiting for a slot
    /// included. Default 10 minutes.
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
            max_queue: None,
            deadline: Duration::from_secs(600),
        }
    }

    /// Runs at once (at least one).
    pub fn slots(&self) -> usize {
        self.max_concurrency.max(1)
    }

    /// Requests that may wait for a slot: `max_queue`, else four times
    /// the slots.
    pub fn queue(&self) -> usize {
        self.max_queue.unwrap_or(4 * self.slots())
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
    /// SHA-256 of the token: what a given token's digest is compared with,
    /// so that the comparison takes the same time whatever its length.
    token_digest: Option<[u8; 32]>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot.
    waiting: AtomicUsize,
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
                token_digest: config.token.as_ref().map(|t| Sha256::digest(t).into()),
                slots: Arc::new(Semaphore::new(config.slots())),
                waiting: AtomicUsize::new(0),
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
            .route("/v1/plugins", get(plugins))
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
            json!({"error": {"message": message.into(), "type": kind, "param": null, "code": status.as_u16()}}),
        ),
    )
        .into_response()
}

/// Whether `headers` carry the server's bearer token (always, without
/// one). Digests of both are compared in constant time, so the time taken
/// tells nothing about the token, its length included.
fn authorised(app: &App, headers: &HeaderMap) -> bool {
    let Some(want) = &app.token_digest else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let got: [u8; 32] = Sha256::digest(given).into();
    bool::from(got.ct_eq(want))
}

fn unauthorised() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing or wrong bearer token",
    )
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"id": app.team.spec().team.name, "object": "model", "created": 0, "owned_by": "conclave"}],
    }))
    .into_response()
}

async fn metrics_text(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.waiting.load(Ordering::SeqCst)),
    )
        .into_response()
}

/// The plugins the team uses and the version of each serving new calls
/// (it changes when a watched file is swapped in).
async fn plugins(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    axum::Json(json!({"object": "list", "data": app.team.plugin_status()})).into_response()
}

/// A place in the queue of requests waiting for a slot, given back when
/// dropped (the request got a slot, ran out of time, or its client left).
struct QueuePlace(Arc<App>);

impl QueuePlace {
    /// A place, unless the queue is full.
    fn take(app: &Arc<App>) -> Option<Self> {
        let most = app.config.queue();
        app.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| QueuePlace(app.clone()))
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a request got (or did not get) to run.
enum Admission {
    /// A slot was free.
    Slot(OwnedSemaphorePermit),
    /// It waits for one.
    Queued(QueuePlace),
}

/// What became of a request's job.
enum Outcome {
    /// It ran; `deadline_passed` if it was cut short by the deadline.
    Ran {
        result: Box<JobResult>,
        deadline_passed: bool,
    },
    /// The deadline passed while it waited for a slot.
    NoSlot,
    /// Its client left while it waited for a slot: it never ran.
    Left,
}

/// Cancels its run when dropped: a client that goes away stops the run.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    // The deadline counts from the request's arrival, waiting included.
    let until = Instant::now() + app.config.deadline;
    if !authorised(&app, &headers) {
        app.metrics.request("401");
        return unauthorised();
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
    // A free slot, else a place in the queue, else 503 at once.
    let admission = match app.slots.clone().try_acquire_owned() {
        Ok(slot) => Admission::Slot(slot),
        Err(_) => match QueuePlace::take(&app) {
            Some(place) => Admission::Queued(place),
            None => {
                app.metrics.request("503");
                return queue_full(&app);
            }
        },
    };
    let run_id = crate::team::job::new_run_id();
    let cancel = CancellationToken::new();
    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let ballots = Arc::new(Ballots::default());
    let heard = ballots.clone();
    let observer: Arc<dyn Observer> = Arc::new(move |_: &str, e: &Event| {
        heard.hear(e);
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
            let _slot = match admission {
                Admission::Slot(slot) => slot,
                Admission::Queued(place) => {
                    let slot = tokio::select! {
                        slot = app.slots.clone().acquire_owned() => slot.ok(),
                        _ = cancel.cancelled() => return Outcome::Left,
                        _ = tokio::time::sleep_until(until) => None,
                    };
                    drop(place);
                    match slot {
                        Some(slot) => slot,
                        None => return Outcome::NoSlot,
                    }
                }
            };
            app.metrics.in_flight(1);
            let timer = cancel.clone();
            let expiry = tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                timer.cancel();
            });
            let job = crate::team::submit::Job::new(&run_id, &q, None);
            let done = app
                .team
                .submit(&job, app.journal.clone(), None, observer, cancel)
                .await;
            expiry.abort();
            app.metrics.in_flight(-1);
            app.metrics.finished(&done.result);
            Outcome::Ran {
                deadline_passed: Instant::now() >= until,
                result: Box::new(done.result),
            }
        })
    };
    let guard = CancelOnDrop(cancel);
    let reply = Reply {
        app: app.clone(),
        model: team_name,
        ballots,
    };
    if body.stream {
        app.metrics.request("200");
        return stream(job, guard, progress_rx, reply, run_id);
    }
    let outcome = job.await.unwrap_or(Outcome::NoSlot);
    drop(guard);
    let (r, deadline_passed) = match outcome {
        Outcome::Ran {
            result,
            deadline_passed,
        } => (result, deadline_passed),
        Outcome::NoSlot | Outcome::Left => {
            app.metrics.request("504");
            return no_slot(&app).into_response();
        }
    };
    if let Some(e) = refusal(&r, app.config.deadline, deadline_passed) {
        app.metrics.request(e.status.as_str());
        return (e.status, axum::Json(e.body(Some(&*r)))).into_response();
    }
    app.metrics.request("200");
    axum::Json(json!({
        "id": format!("chatcmpl-{}", r.run_id),
        "object": "chat.completion",
        "created": created(),
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": message(&r),
            "finish_reason": "stop",
        }],
        "usage": usage(&r),
        "conclave": conclave(&r, &reply.candidates()),
    }))
    .into_response()
}

/// What a reply needs besides the run's result.
struct Reply {
    app: Arc<App>,
    model: String,
    ballots: Arc<Ballots>,
}

impl Reply {
    fn candidates(&self) -> Vec<(String, u32)> {
        let spec = self.app.team.spec();
        let answer_task = spec
            .team
            .answer
            .as_deref()
            .or_else(|| spec.tasks.last().map(|t| t.id.as_str()));
        self.ballots.candidates(answer_task)
    }
}

/// The deadline passed before a slot was free: no run.
fn no_slot(app: &App) -> Refused {
    Refused {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: "deadline_exceeded",
        message: format!(
            "no slot to run the team before the request's deadline of {}; try again later",
            humantime::format_duration(app.config.deadline)
        ),
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = self.body(None);
        (self.status, axum::Json(body)).into_response()
    }
}

/// 503 with `Retry-After`: every slot is taken and the queue is full.
/// Retry after the mean run time so far (at least a second).
fn queue_full(app: &App) -> Response {
    let after = app.metrics.mean_run_seconds().ceil().max(1.0) as u64;
    let e = Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "queue_full",
        message: format!(
            "all {} slots are taken and {} requests are waiting already; try again in {after} s",
            app.config.slots(),
            app.config.queue()
        ),
    };
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(after));
    r
}

/// Server-sent events: the role first, progress as comments while the team
/// works, then the answer, the final chunk with the `conclave` object, and
/// `[DONE]`. Dropping the stream (the client left) cancels the run.
fn stream(
    job: tokio::task::JoinHandle<Outcome>,
    guard: CancelOnDrop,
    mut progress: tokio::sync::mpsc::UnboundedReceiver<String>,
    reply: Reply,
    run_id: String,
) -> Response {
    let id = format!("chatcmpl-{run_id}");
    let model = reply.model.clone();
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
        let outcome = loop {
            tokio::select! {
                r = &mut job => break r.unwrap_or(Outcome::NoSlot),
                Some(p) = progress.recv() => {
                    if tx.send(Bytes::from(format!(": {p}\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        };
        let app = &reply.app;
        // An error event in OpenAI's shape, then [DONE].
        let fail =
            |e: Refused, r: Option<&JobResult>| Bytes::from(format!("data: {}\n\n", e.body(r)));
        let r = match outcome {
            Outcome::Ran {
                result,
                deadline_passed,
            } => match refusal(&result, app.config.deadline, deadline_passed) {
                None => result,
                Some(e) => {
                    let _ = tx.send(fail(e, Some(&*result))).await;
                    let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
                    return;
                }
            },
            Outcome::NoSlot | Outcome::Left => {
                let _ = tx.send(fail(no_slot(app), None)).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
                return;
            }
        };
        let extra = json!({"usage": usage(&r), "conclave": conclave(&r, &reply.candidates())});
        let mut delta = message(&r);
        if let Some(m) = delta.as_object_mut() {
            m.remove("role");
        }
        let _ = tx.send(chunk(delta, None, None)).await;
        let _ = tx.send(chunk(json!({}), Some("stop"), Some(extra))).await;
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
