//! The run board behind `/ui`: the runs in progress and the recent ones,
//! each with its events as they happened (milliseconds since the run
//! began), for the page that watches a team work.
//!
//! Bounded: it keeps every run in progress, the last `keep` finished runs,
//! and at most [`EVENTS_PER_RUN`] events of a run (the ones after that are
//! counted, not kept); long texts in events (a model's reply, a prompt, a
//! reason) are cut to [`TEXT_KEPT`] characters. The journal keeps
//! everything; the board is for watching.
//!
//! Served here: `GET /ui` (one self-contained page, `ui.html`, with its
//! script and style inline; it holds no data, so it is served without
//! auth), `GET /v1/runs` (the runs, in progress first) and `GET
//! /v1/runs/{id}?after=N` (a run's summary and its events from the N-th,
//! so that the page polls a running run incrementally), both behind the
//! server's bearer token.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::team::consensus::{StopReason, TaskResult};
use crate::team::events::{Event, Observer};
use crate::team::job::JobResult;

/// Checks a request's credentials (the server's bearer token).
pub type Auth = Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>;

/// Events kept per run; later ones are counted (`dropped`), not kept.
pub const EVENTS_PER_RUN: usize = 10_000;

/// Characters kept of a long text in an event (a model's reply, a ballot's
/// text, a prompt, a reason): enough to read, not a second journal.
pub const TEXT_KEPT: usize = 500;

/// Characters of a question in `GET /v1/runs` (a run's own page has up to
/// [`QUESTION_KEPT`]).
const QUESTION_LISTED: usize = 200;

/// Characters of a question kept at all.
const QUESTION_KEPT: usize = 4_000;

/// Events in one answer of `GET /v1/runs/{id}`; `more` says whether the
/// run has more after them.
const EVENTS_PER_PAGE: usize = 2_000;

/// Runs in progress and recent.
pub struct Board {
    keep: usize,
    events_per_run: usize,
    runs: Mutex<Runs>,
}

#[derive(Default)]
struct Runs {
    /// In the order they began.
    running: Vec<Arc<Run>>,
    /// Newest first, at most `keep`.
    finished: VecDeque<Arc<Run>>,
}

/// One run on the board.
struct Run {
    id: String,
    team: String,
    question: String,
    /// Milliseconds since the Unix epoch when it began.
    started_ms: u64,
    began: Instant,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// (milliseconds since the run began, the event), in the order heard.
    events: Vec<(f64, Event)>,
    /// Events heard after `events` was full.
    dropped: u64,
    /// Model calls heard, kept or not.
    calls: u64,
    ended: Option<Ended>,
}

/// How a run ended.
struct Ended {
    wall: Duration,
    /// `None`: it never ran.
    result: Option<Outcome>,
}

/// What the board keeps of a run's result.
struct Outcome {
    stop: StopReason,
    answer: Option<String>,
    support: u32,
    total: u32,
    synthesised: bool,
    runner_up: Option<String>,
    samples: u32,
    tokens: u64,
    cost: f64,
    simulated: bool,
    tasks: Vec<(String, TaskResult)>,
}

/// A lock, even if a thread panicked while holding it (what it guards is
/// a log: still worth showing).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `s` cut to `n` characters, with `…` when it was cut.
fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

fn cut_in_place(s: &mut String, n: usize) {
    if let Some((at, _)) = s.char_indices().nth(n) {
        s.truncate(at);
        s.push('…');
    }
}

/// A copy of `e` with its long texts cut to [`TEXT_KEPT`].
fn shortened(e: &Event) -> Event {
    let mut e = e.clone();
    let n = TEXT_KEPT;
    match &mut e {
        Event::TaskStarted { prompt, .. } => cut_in_place(prompt, n),
        Event::ModelCall { text, .. } => cut_in_place(text, n),
        Event::Ballot { ballot, .. } => {
            cut_in_place(&mut ballot.text, n);
            cut_in_place(&mut ballot.answer, n);
            for v in &mut ballot.verdicts {
                cut_in_place(&mut v.3, n);
            }
        }
        Event::Failure { what, .. } | Event::PluginFailure { what, .. } => cut_in_place(what, n),
        Event::Attempt { cause: Some(c), .. } => cut_in_place(c, n),
        Event::ReplicaCancelled { reason, .. } => cut_in_place(reason, n),
        Event::Vote { decision, .. } => cut_in_place(decision, n),
        _ => {}
    }
    e
}

/// What a run's stop reason is called on the board.
fn state(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::Decided => "decided",
        StopReason::NoConsensus(_) => "no consensus",
        StopReason::BudgetExhausted(_) => "budget exhausted",
        StopReason::Cancelled(_) => "cancelled",
        StopReason::Failed(_) => "failed",
    }
}

/// Hears one run's events: a clock read and a push under the run's own
/// lock (the runtime's threads call it).
struct Recorder {
    run: Arc<Run>,
    most: usize,
}

impl Observer for Recorder {
    fn event(&self, _run: &str, event: &Event) {
        let t = self.run.began.elapsed().as_secs_f64() * 1e3;
        let full = lock(&self.run.log).events.len() >= self.most;
        let kept = (!full).then(|| shortened(event));
        let mut log = lock(&self.run.log);
        if matches!(event, Event::ModelCall { .. }) {
            log.calls += 1;
        }
        match kept {
            Some(e) if log.events.len() < self.most => log.events.push((t, e)),
            _ => log.dropped += 1,
        }
    }
}

impl Board {
    /// A board keeping the last `keep` finished runs.
    pub fn new(keep: usize) -> Arc<Self> {
        Self::with_limits(keep, EVENTS_PER_RUN)
    }

    /// A board keeping the last `keep` finished runs and at most
    /// `events_per_run` events of each.
    pub fn with_limits(keep: usize, events_per_run: usize) -> Arc<Self> {
        Arc::new(Board {
            keep,
            events_per_run,
            runs: Mutex::default(),
        })
    }

    /// A run begins: the observer that hears its events.
    pub fn begin(self: &Arc<Self>, run_id: &str, team: &str, question: &str) -> Arc<dyn Observer> {
        let started_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let run = Arc::new(Run {
            id: run_id.to_string(),
            team: team.to_string(),
            question: cut(question, QUESTION_KEPT),
            started_ms,
            began: Instant::now(),
            log: Mutex::default(),
        });
        lock(&self.runs).running.push(run.clone());
        Arc::new(Recorder {
            run,
            most: self.events_per_run,
        })
    }

    /// A run ended (`None`: it never ran, e.g. its client left while it
    /// waited for a slot). It moves to the recent runs; the oldest of
    /// those beyond `keep` leave the board.
    pub fn end(&self, run_id: &str, result: Option<&JobResult>) {
        let mut runs = lock(&self.runs);
        let Some(at) = runs.running.iter().position(|r| r.id == run_id) else {
            return;
        };
        let run = runs.running.remove(at);
        lock(&run.log).ended = Some(Ended {
            wall: result
                .map(|r| r.wall)
                .unwrap_or_else(|| run.began.elapsed()),
            result: result.map(|r| Outcome {
                stop: r.stop.clone(),
                answer: r.answer.clone(),
                support: r.support,
                total: r.total,
                synthesised: r.synthesised,
                runner_up: r.runner_up.clone(),
                samples: r.samples,
                tokens: r.tokens_in + r.tokens_out,
                cost: r.cost,
                simulated: r.simulated,
                tasks: r.tasks.clone(),
            }),
        });
        runs.finished.push_front(run);
        runs.finished.truncate(self.keep);
    }

    /// The runs: in progress first (newest first), then the recent ones
    /// (newest first). The body of `GET /v1/runs`.
    pub fn list(&self, load: Option<&crate::plugin::RuntimeLoad>) -> Value {
        let (running, finished) = {
            let runs = lock(&self.runs);
            let running: Vec<_> = runs.running.iter().rev().cloned().collect();
            let finished: Vec<_> = runs.finished.iter().cloned().collect();
            (running, finished)
        };
        let data: Vec<Value> = running
            .iter()
            .chain(&finished)
            .map(|r| summary(r, &lock(&r.log), QUESTION_LISTED))
            .collect();
        json!({
            "object": "list",
            "running": running.len(),
            "keep": self.keep,
            "events_per_run": self.events_per_run,
            "load": load,
            "data": data,
        })
    }

    /// One run: its summary, its tasks' results once it ended, and its
    /// events from the `after`-th on (at most [`EVENTS_PER_PAGE`]). The
    /// body of `GET /v1/runs/{id}`; `None` for a run not on the board.
    pub fn run(&self, id: &str, after: usize) -> Option<Value> {
        let run = {
            let runs = lock(&self.runs);
            runs.running
                .iter()
                .chain(&runs.finished)
                .find(|r| r.id == id)
                .cloned()?
        };
        let (head, page, total, tasks) = {
            let log = lock(&run.log);
            let total = log.events.len();
            let from = after.min(total);
            let to = (from + EVENTS_PER_PAGE).min(total);
            let tasks: Vec<Value> = log
                .ended
                .as_ref()
                .and_then(|e| e.result.as_ref())
                .map(|o| o.tasks.iter().map(|(id, t)| task_json(id, t)).collect())
                .unwrap_or_default();
            (
                summary(&run, &log, QUESTION_KEPT),
                log.events[from..to].to_vec(),
                total,
                tasks,
            )
        };
        let from = after.min(total);
        let next = from + page.len();
        let events: Vec<Value> = page
            .into_iter()
            .enumerate()
            .map(|(k, (t, e))| {
                let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
                if let Some(m) = v.as_object_mut() {
                    m.insert("i".into(), json!(from + k));
                    m.insert("t_ms".into(), json!((t * 10.0).round() / 10.0));
                }
                v
            })
            .collect();
        Some(json!({
            "object": "run",
            "run": head,
            "tasks": tasks,
            "after": from,
            "next": next,
            "more": next < total,
            "events": events,
        }))
    }

    /// `/ui` and the JSON it reads, behind `auth`.
    /// `load`: what the plugin runtime is doing, shown above the runs.
    pub fn routes(self: Arc<Self>, auth: Auth, load: LoadFn) -> axum::Router {
        let list = {
            let (board, auth) = (self.clone(), auth.clone());
            move |headers: HeaderMap| async move {
                if !auth(&headers) {
                    return unauthorised();
                }
                json_reply(board.list(Some(&load())))
            }
        };
        let one = {
            let board = self;
            move |Path(id): Path<String>,
                  query: Result<Query<After>, QueryRejection>,
                  headers: HeaderMap| async move {
                if !auth(&headers) {
                    return unauthorised();
                }
                let after = match query {
                    Ok(Query(q)) => q.after.unwrap_or(0),
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request_error",
                            format!("`after` must be an event index (a whole number): {e}"),
                        )
                    }
                };
                match board.run(&id, after) {
                    Some(v) => json_reply(v),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "not_found_error",
                        format!(
                            "no run {id} on the board (it keeps the runs in progress and the last {} finished; the journal has every run: `conclave trace`)",
                            board.keep
                        ),
                    ),
                }
            }
        };
        axum::Router::new()
            .route("/ui", get(super::ui::page))
            .route("/v1/runs", get(list))
            .route("/v1/runs/{id}", get(one))
    }
}

/// What the plugin runtime is doing now, for `/v1/runs`.
pub type LoadFn = Arc<dyn Fn() -> crate::plugin::RuntimeLoad + Send + Sync>;

#[derive(Deserialize)]
struct After {
    after: Option<usize>,
}

/// A run's summary: what `GET /v1/runs` lists and `GET /v1/runs/{id}`
/// heads its events with.
fn summary(run: &Run, log: &Log, question: usize) -> Value {
    let wall = match &log.ended {
        Some(e) => e.wall,
        None => run.began.elapsed(),
    };
    let mut v = json!({
        "id": run.id,
        "team": run.team,
        "question": cut(&run.question, question),
        "state": "running",
        "stop": null,
        "started_ms": run.started_ms,
        "started": humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_millis(run.started_ms)
        ).to_string(),
        "wall_ms": wall.as_millis() as u64,
        "answer": null,
        "support": null,
        "total": null,
        "synthesised": null,
        "runner_up": null,
        "samples": null,
        "tokens": null,
        "cost": null,
        "simulated": null,
        "model_calls": log.calls,
        "events": log.events.len(),
        "dropped": log.dropped,
    });
    match log.ended.as_ref().map(|e| e.result.as_ref()) {
        None => {}
        Some(None) => v["state"] = json!("never ran"),
        Some(Some(o)) => {
            v["state"] = json!(state(&o.stop));
            v["stop"] = json!(o.stop.to_string());
            v["answer"] = json!(o.answer);
            v["support"] = json!(o.support);
            v["total"] = json!(o.total);
            v["synthesised"] = json!(o.synthesised);
            v["runner_up"] = json!(o.runner_up);
            v["samples"] = json!(o.samples);
            v["tokens"] = json!(o.tokens);
            v["cost"] = json!(o.cost);
            v["simulated"] = json!(o.simulated);
        }
    }
    v
}

fn task_json(id: &str, t: &TaskResult) -> Value {
    json!({
        "task": id,
        "state": state(&t.stop),
        "stop": t.stop.to_string(),
        "answer": t.answer.as_deref().map(|a| cut(a, TEXT_KEPT)),
        "support": t.support,
        "total": t.total,
        "synthesised": t.synthesised,
        "runner_up": t.runner_up.as_deref().map(|a| cut(a, TEXT_KEPT)),
        "samples": t.samples,
        "rounds": t.rounds,
        "tokens": t.tokens,
        "cost": t.cost,
        "failures": t.failures.iter().take(20).map(|f| cut(f, TEXT_KEPT)).collect::<Vec<_>>(),
    })
}

fn json_reply(v: Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
}

/// An OpenAI-style error reply (as the rest of the server's).
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message.into(), "type": kind, "param": null, "code": status.as_u16()}})),
    )
        .into_response()
}

fn unauthorised() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing or wrong bearer token",
    )
}

#[cfg(test)]
mod tests {
    //! The board's bounds and JSON: runs kept, events kept and counted,
    //! pages of events, texts cut; and the page's parts.
    use super::*;
    use crate::team::events::BallotRecord;

    fn call(replica: u32, text: &str) -> Event {
        Event::ModelCall {
            task: "t".into(),
            replica,
            call: 0,
            node: "sim".into(),
            tokens_in: 1,
            tokens_out: 2,
            cost: 0.0,
            latency_ms: 5.0,
            attempts: 1,
            hedged: false,
            text: text.into(),
            replayed: false,
        }
    }

    fn result(run: &str, answer: &str) -> JobResult {
        JobResult {
            run_id: run.into(),
            question: "q".into(),
            answer: Some(answer.into()),
            support: 2,
            total: 3,
            synthesised: false,
            runner_up: Some("5".into()),
            stop: StopReason::Decided,
            nodes: vec![],
            samples: 3,
            tokens_in: 10,
            tokens_out: 20,
            cost: 0.0,
            messages: 0,
            wall: Duration::from_millis(1234),
            simulated: true,
            tasks: vec![],
            citations: vec![],
        }
    }

    #[test]
    fn only_the_last_keep_finished_runs_stay_and_running_ones_come_first() {
        let board = Board::new(3);
        for i in 0..5 {
            let id = format!("run-{i}");
            board.begin(&id, "team", "q");
            board.end(&id, Some(&result(&id, &i.to_string())));
        }
        board.begin("run-live", "team", "still going");
        let list = board.list(None);
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["run-live", "run-4", "run-3", "run-2"]);
        assert_eq!(list["data"][0]["state"], "running");
        assert_eq!(list["data"][1]["state"], "decided");
        assert_eq!(list["data"][1]["answer"], "4");
        assert_eq!(
            (&list["data"][1]["support"], &list["data"][1]["total"]),
            (&json!(2), &json!(3))
        );
        assert_eq!(list["data"][1]["wall_ms"], 1234);
        assert!(board.run("run-0", 0).is_none());
        assert!(board.run("run-2", 0).is_some());
    }

    #[test]
    fn events_past_the_cap_are_counted_not_kept_and_pages_follow_on() {
        let board = Board::with_limits(10, 2_500);
        let heard = board.begin("r", "team", "q");
        for i in 0..3_000 {
            heard.event("r", &call(i, "x"));
        }
        let first = board.run("r", 0).unwrap();
        assert_eq!(first["run"]["events"], 2_500);
        assert_eq!(first["run"]["dropped"], 500);
        assert_eq!(first["run"]["model_calls"], 3_000);
        assert_eq!(first["events"].as_array().unwrap().len(), EVENTS_PER_PAGE);
        assert_eq!(first["more"], true);
        let next = first["next"].as_u64().unwrap() as usize;
        let second = board.run("r", next).unwrap();
        assert_eq!(second["events"].as_array().unwrap().len(), 500);
        assert_eq!(second["events"][0]["i"], 2_000);
        assert_eq!(second["events"][0]["replica"], 2_000);
        assert_eq!(second["events"][0]["event"], "model-call");
        assert!(second["events"][0]["t_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(second["more"], false);
        // Past the end: nothing, and the next index stays at the end.
        let past = board.run("r", 99_999).unwrap();
        assert_eq!(
            (past["events"].as_array().unwrap().len(), &past["next"]),
            (0, &json!(2_500))
        );
    }

    #[test]
    fn long_texts_are_cut_and_a_run_that_never_ran_says_so() {
        let board = Board::new(10);
        let long = "é".repeat(3 * TEXT_KEPT);
        let heard = board.begin("r", "team", &"q".repeat(1_000));
        heard.event("r", &call(0, &long));
        heard.event(
            "r",
            &Event::Ballot {
                task: "t".into(),
                round: 0,
                ballot: BallotRecord {
                    replica: 0,
                    node: "sim".into(),
                    answer: "4".into(),
                    text: long.clone(),
                    confidence: None,
                    ranking: vec![],
                    verdicts: vec![("v".into(), true, 1.0, long.clone())],
                },
                role: None,
                verifiers: vec![],
            },
        );
        board.end("r", None);
        let r = board.run("r", 0).unwrap();
        let text = r["events"][0]["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), TEXT_KEPT + 1);
        assert!(text.ends_with('…'));
        assert_eq!(r["events"][1]["ballot"]["answer"], "4");
        assert_eq!(
            r["events"][1]["ballot"]["verdicts"][0][3]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            TEXT_KEPT + 1
        );
        assert_eq!(r["run"]["state"], "never ran");
        assert_eq!(r["run"]["question"].as_str().unwrap().len(), 1_000);
        let listed = &board.list(None)["data"][0];
        assert_eq!(
            listed["question"].as_str().unwrap().chars().count(),
            QUESTION_LISTED + 1
        );
    }
}
