//! What a finished run answers over HTTP: the reply's message, usage and
//! `conclave` object, the candidates a client sees of a vote, and the
//! OpenAI-shaped error a run that did not decide becomes.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::team::consensus::StopReason;
use crate::team::events::Event;
use crate::team::job::JobResult;

/// Why a request got no answer from the team, as an OpenAI-style error:
/// the status, a `code` a client can match, and what happened.
pub(super) struct Refused {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Refused {
    /// The error object (`{"error": {...}}`), with the run's id and stop
    /// reason when there was a run.
    pub(super) fn body(&self, run: Option<&JobResult>) -> serde_json::Value {
        let mut e = json!({
            "message": self.message,
            "type": if self.status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": self.code,
        });
        if let Some(r) = run {
            e["run_id"] = json!(r.run_id);
            e["stop"] = json!(r.stop);
        }
        json!({ "error": e })
    }
}

/// What a finished run answers: `None` for a reply (decided, or no
/// consensus), else the error. `deadline_passed`: the run was cancelled
/// because the request's deadline passed.
pub(super) fn refusal(r: &JobResult, deadline: Duration, deadline_passed: bool) -> Option<Refused> {
    let (status, code, message) = match &r.stop {
        StopReason::Decided | StopReason::NoConsensus(_) => return None,
        StopReason::Failed(w) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "run_failed",
            format!("run {} failed: {w}", r.run_id),
        ),
        StopReason::BudgetExhausted(w) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "budget_exhausted",
            format!("run {} ran out of budget before a decision: {w}", r.run_id),
        ),
        StopReason::Cancelled(_) if deadline_passed => (
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!(
                "run {} was cancelled: the request's deadline of {} passed (waiting for a slot included)",
                r.run_id,
                humantime::format_duration(deadline)
            ),
        ),
        StopReason::Cancelled(w) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "cancelled",
            format!("run {} was cancelled: {w}", r.run_id),
        ),
    };
    Some(Refused {
        status,
        code,
        message,
    })
}

#[derive(Deserialize)]
pub(super) struct ChatMessage {
    pub(super) role: String,
    pub(super) content: serde_json::Value,
}

#[derive(Deserialize)]
pub(super) struct ChatBody {
    pub(super) messages: Vec<ChatMessage>,
    #[serde(default)]
    pub(super) stream: bool,
    #[serde(default)]
    pub(super) model: Option<String>,
}

/// The question: the last user message (text parts joined).
pub(super) fn question(body: &ChatBody) -> Option<String> {
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

pub(super) fn usage(r: &JobResult) -> serde_json::Value {
    json!({
        "prompt_tokens": r.tokens_in,
        "completion_tokens": r.tokens_out,
        "total_tokens": r.tokens_in + r.tokens_out,
    })
}

pub(super) fn conclave(r: &JobResult, candidates: &[(String, u32)]) -> serde_json::Value {
    json!({
        "run_id": r.run_id,
        "support": r.support,
        "total": r.total,
        "runner_up": r.runner_up,
        "samples": r.samples,
        "stop": r.stop,
        "cost": r.cost,
        "simulated": r.simulated,
        "candidates": candidates
            .iter()
            .map(|(answer, ballots)| json!({"answer": answer, "ballots": ballots}))
            .collect::<Vec<_>>(),
    })
}

/// The message of a reply: the answer, or for no consensus no content and
/// a refusal saying why.
pub(super) fn message(r: &JobResult) -> serde_json::Value {
    match &r.stop {
        StopReason::NoConsensus(why) => {
            json!({"role": "assistant", "content": null, "refusal": format!("no consensus: {why}")})
        }
        _ => json!({"role": "assistant", "content": r.answer.clone().unwrap_or_default()}),
    }
}

/// The answer task's ballots in its last round, by answer, most first:
/// what a client sees of a vote, whatever it decided.
#[derive(Default)]
pub(super) struct Ballots(Mutex<Vec<(String, u32, String)>>);

impl Ballots {
    pub(super) fn hear(&self, e: &Event) {
        if let Event::Ballot {
            task,
            round,
            ballot,
            ..
        } = e
        {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                task.clone(),
                *round,
                ballot.answer.clone(),
            ));
        }
    }

    pub(super) fn candidates(&self, answer_task: Option<&str>) -> Vec<(String, u32)> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(task) = answer_task else {
            return Vec::new();
        };
        let ours = all.iter().filter(|(t, _, _)| t == task);
        let Some(last) = ours.clone().map(|(_, r, _)| *r).max() else {
            return Vec::new();
        };
        let mut counts: Vec<(String, u32)> = Vec::new();
        for (_, _, answer) in ours.filter(|(_, r, _)| *r == last) {
            match counts.iter_mut().find(|(a, _)| a == answer) {
                Some((_, n)) => *n += 1,
                None => counts.push((answer.clone(), 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }
}

pub(super) fn created() -> u64 {
    crate::journal::now_ms() / 1000
}
