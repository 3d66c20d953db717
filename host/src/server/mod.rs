//! Teams served as OpenAI-compatible models: `POST /v1/chat/completions`
//! (plain and streaming; the request's `model` picks the team, see
//! [`teams`]), `GET /v1/models` and `/v1/models/{id}`, `GET /v1/plugins`
//! (the plugin versions serving), `/healthz`, `/metrics` (Prometheus
//! text) and `/ui` (runs in progress and recent, see `board`). Any OpenAI
//! client can ask a team as if it were one model; each reply carries the
//! usual fields plus a `conclave` object with the support, the runner-up,
//! the stop reason and the run id. Every request field is used, refused
//! with a 400 naming it, or documented as ignored (`reply::ChatBody`).
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

mod board;
mod metrics;
mod reply;
mod stream;
pub mod teams;
mod ui;

pub use teams::{Served, Teams, TeamsError};

mod cluster;
mod models;
use models::{model_not_found, served_list};
use reply::{conclave, created, message, refusal, usage, Asked, Ballots, ChatBody, Refused};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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
use crate::team::events::{Both, Event, Observer};
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
    /// Finished runs the run board (`/ui`, `/v1/runs`) keeps besides the
    /// runs in progress. Default 100.
    pub runs_kept: usize,
    /// Cluster mode: requests are served only while this process holds
    /// the coordinator lease (a standby answers 503 naming the holder), and
    /// each run is registered so that a successor resumes it.
    pub cluster: Option<Arc<crate::cluster::coordinator::Coordinator>>,
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
            runs_kept: 100,
            cluster: None,
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
    teams: Arc<Teams>,
    journal: Arc<dyn Journal>,
    config: ServerConfig,
    /// SHA-256 of the token: what a given token's digest is compared with,
    /// so that the comparison takes the same time whatever its length.
    token_digest: Option<[u8; 32]>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot.
    waiting: AtomicUsize,
    metrics: metrics::Metrics,
    /// Runs in progress and recent, for `/ui`.
    board: Arc<board::Board>,
}

/// A bound server, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Arc<App>,
}

impl Server {
    /// Checks the config and binds the address.
    pub async fn bind(
        teams: Arc<Teams>,
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
                board: board::Board::new(config.runs_kept),
                teams,
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
        let auth: board::Auth = {
            let digest = self.app.token_digest;
            Arc::new(move |headers: &HeaderMap| authorised_by(digest.as_ref(), headers))
        };
        let load: board::LoadFn = {
            let runtime = self.app.teams.runtime().clone();
            Arc::new(move || runtime.load())
        };
        let board = self.app.board.clone().routes(auth, load);
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models::models))
            .route("/v1/models/{id}", get(models::model))
            .route("/v1/plugins", get(models::plugins))
            .route("/healthz", get(cluster::healthz))
            .route("/metrics", get(metrics_text))
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self.app)
            .merge(board);
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
    authorised_by(app.token_digest.as_ref(), headers)
}

/// [`authorised`], given the token's digest (`None`: no token is needed).
fn authorised_by(digest: Option<&[u8; 32]>, headers: &HeaderMap) -> bool {
    let Some(want) = digest else {
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

async fn metrics_text(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(
            app.waiting.load(Ordering::SeqCst),
            &app.teams.runtime().load(),
        ),
    )
        .into_response()
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
        /// Its submission is in the journal.
        submitted: bool,
        /// Why its journal did not take every record (its end included).
        journal_error: Option<String>,
        /// The run's digest in the journal's hash chain.
        digest: Option<String>,
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
    let asked: Asked = match body.checked() {
        Ok(a) => a,
        Err(e) => {
            app.metrics.request("400");
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {
                    "message": e.message,
                    "type": "invalid_request_error",
                    "param": e.param,
                    "code": "unsupported_parameter",
                }})),
            )
                .into_response();
        }
    };
    // The model id picks the team; with one team served it may be left out.
    let served = match body.model.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => match app.teams.get(m) {
            Some(s) => s,
            None => {
                app.metrics.request("404");
                return model_not_found(&app, m);
            }
        },
        None => match app.teams.only() {
            Some(s) => s,
            None => {
                app.metrics.request("400");
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!(
                        "model is required: this server serves {}",
                        served_list(&app)
                    ),
                );
            }
        },
    };
    // Cluster mode: only the coordinator runs requests.
    let lead = match cluster::admit(app.config.cluster.as_ref()) {
        Ok(lead) => lead,
        Err(refused) => {
            app.metrics.request("503");
            return *refused;
        }
    };
    let team = served.team.clone();
    let team_name = served.name().to_string();
    let Asked {
        question: q,
        n,
        sampling,
        include_usage,
    } = asked;
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
    if let Some(lead) = &lead {
        if let Err(refused) = lead.start(&run_id, &cancel).await {
            app.metrics.request("503");
            return refused.into_response();
        }
    }
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
        let team_name_for_board = team_name.clone();
        let question_for_board = q.clone();
        let team = team.clone();
        let lead = lead.clone();
        tokio::spawn(async move {
            let outcome = async {
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
                let watched = app
                    .board
                    .begin(&run_id, &team_name_for_board, &question_for_board);
                let observer: Arc<dyn Observer> = Arc::new(Both(observer, watched));
                app.metrics.in_flight(1);
                let timer = cancel.clone();
                let expiry = tokio::spawn(async move {
                    tokio::time::sleep_until(until).await;
                    timer.cancel();
                });
                let job = crate::team::submit::Job::new(&run_id, &q, None).with_sampling(sampling);
                let done = team
                    .submit(&job, app.journal.clone(), None, observer, cancel)
                    .await;
                expiry.abort();
                app.metrics.in_flight(-1);
                app.metrics.finished(&done.result);
                app.board.end(&run_id, Some(&done.result));
                Outcome::Ran {
                    deadline_passed: Instant::now() >= until,
                    submitted: done.submitted,
                    journal_error: done.journal_error,
                    digest: done.digest,
                    result: Box::new(done.result),
                }
            }
            .await;
            if let Some(lead) = lead {
                let durable = match &outcome {
                    Outcome::Ran { journal_error, .. } => journal_error.is_none(),
                    // Never journaled: nothing to resume.
                    Outcome::NoSlot | Outcome::Left => true,
                };
                lead.end(&run_id, durable).await;
            }
            outcome
        })
    };
    let guard = CancelOnDrop(cancel);
    let reply = Reply {
        app: app.clone(),
        lead: lead.clone(),
        team,
        model: team_name,
        ballots,
        n,
        include_usage,
    };
    if body.stream {
        app.metrics.request("200");
        return stream::stream(job, guard, progress_rx, reply, run_id);
    }
    let outcome = job.await.unwrap_or(Outcome::NoSlot);
    drop(guard);
    let (r, deadline_passed, digest, journal) = match outcome {
        Outcome::Ran {
            result,
            deadline_passed,
            digest,
            submitted,
            journal_error,
        } => (
            result,
            deadline_passed,
            digest,
            cluster::Journaling {
                submitted,
                error: journal_error,
            },
        ),
        Outcome::Left => {
            let e = cluster::left_the_queue(lead.as_ref()).unwrap_or_else(|| no_slot(&app));
            app.metrics.request(e.status.as_str());
            return e.into_response();
        }
        Outcome::NoSlot => {
            app.metrics.request("504");
            return no_slot(&app).into_response();
        }
    };
    if let Some(e) = cluster::handed_over(lead.as_ref(), &r, deadline_passed, &journal)
        .or_else(|| refusal(&r, app.config.deadline, deadline_passed))
    {
        app.metrics.request(e.status.as_str());
        let mut reply = (e.status, axum::Json(e.body(Some(&*r)))).into_response();
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            reply
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        return reply;
    }
    app.metrics.request("200");
    axum::Json(json!({
        "id": format!("chatcmpl-{}", r.run_id),
        "object": "chat.completion",
        "created": created(),
        "model": reply.model,
        "choices": reply.choices(&r),
        "usage": usage(&r),
        "conclave": conclave(&r, &reply.candidates(), digest.as_deref()),
    }))
    .into_response()
}

/// What a reply needs besides the run's result.
struct Reply {
    app: Arc<App>,
    /// The term that admitted the request, in cluster mode.
    lead: Option<cluster::Lead>,
    team: Arc<PreparedTeam>,
    model: String,
    ballots: Arc<Ballots>,
    /// Choices asked for.
    n: u32,
    /// A last streamed chunk with the usage.
    include_usage: bool,
}

impl Reply {
    /// The reply's choices: the team's answer (or its refusal), then, up
    /// to `n` in all, the other distinct answers its ballots gave, most
    /// supported first. Fewer when the ballots held fewer answers.
    fn choices(&self, r: &JobResult) -> Vec<serde_json::Value> {
        self.messages(r)
            .into_iter()
            .enumerate()
            .map(|(i, (message, ballots))| {
                json!({
                    "index": i,
                    "message": message,
                    "finish_reason": "stop",
                    "conclave": {"ballots": ballots},
                })
            })
            .collect()
    }

    /// Each choice's message and the ballots behind it.
    fn messages(&self, r: &JobResult) -> Vec<(serde_json::Value, u32)> {
        let mut out = vec![(message(r), r.support)];
        for (answer, ballots) in self.candidates() {
            if out.len() >= self.n as usize {
                break;
            }
            if r.answer.as_deref() == Some(answer.as_str())
                && !matches!(r.stop, crate::team::consensus::StopReason::NoConsensus(_))
            {
                continue;
            }
            out.push((json!({"role": "assistant", "content": answer}), ballots));
        }
        out
    }

    fn candidates(&self) -> Vec<(String, u32)> {
        let spec = self.team.spec();
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
    /// A 503 says when to try again (`Retry-After`, in seconds): every
    /// 503 here is a state that passes (a full queue, a coordinator
    /// changing, a journal out of reach).
    fn into_response(self) -> Response {
        let body = self.body(None);
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .entry(header::RETRY_AFTER)
                .or_insert(HeaderValue::from(1));
        }
        r
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
