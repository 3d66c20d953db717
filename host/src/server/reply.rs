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
    #[serde(default)]
    pub(super) content: serde_json::Value,
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

/// A chat completion request: every field this server reads. What it does
/// with each, and with the fields it leaves alone, is in the README
/// ("What each request field does").
#[derive(Deserialize)]
pub(super) struct ChatBody {
    pub(super) messages: Vec<ChatMessage>,
    #[serde(default)]
    pub(super) stream: bool,
    #[serde(default)]
    pub(super) model: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    functions: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    function_call: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default)]
    audio: Option<serde_json::Value>,
}

/// The most choices a request may ask for (`n`).
pub(super) const MAX_CHOICES: u32 = 8;
/// The most stop sequences a request may give, and their longest.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

/// What a checked request asks for.
pub(super) struct Asked {
    pub(super) question: String,
    /// Choices wanted (1..=[`MAX_CHOICES`]).
    pub(super) n: u32,
    pub(super) sampling: crate::model::Sampling,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub(super) include_usage: bool,
}

/// A request refused before any run: 400, naming the field.
pub(super) struct BadField {
    pub(super) param: &'static str,
    pub(super) message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadField {
    BadField {
        param,
        message: message.into(),
    }
}

impl ChatBody {
    /// Checks every field this server reads; what it cannot honour is
    /// refused here, with the field named, before any run.
    pub(super) fn checked(&self) -> Result<Asked, BadField> {
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(bad(
                "n",
                format!("n must be from 1 to {MAX_CHOICES} (the team's answer, then the other answers its ballots gave); got {n}"),
            ));
        }
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(0), _) | (_, Some(0)) => {
                return Err(bad("max_tokens", "max_tokens must be at least 1"))
            }
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(bad(
                    "temperature",
                    format!("temperature must be from 0 to 2; got {t}"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad(
                    "top_p",
                    format!("top_p must be above 0 and at most 1; got {p}"),
                ));
            }
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(bad(
                "stop",
                format!("at most {MAX_STOPS} stop sequences; got {}", stop.len()),
            ));
        }
        if let Some(s) = stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(bad(
                "stop",
                format!(
                    "a stop sequence must be 1 to {MAX_STOP_BYTES} bytes; got {} bytes",
                    s.len()
                ),
            ));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty())
            || self.functions.as_ref().is_some_and(|f| !f.is_empty())
        {
            return Err(bad(
                "tools",
                "tools are not supported: a team answers with text and calls no tools",
            ));
        }
        for choice in [&self.tool_choice, &self.function_call]
            .into_iter()
            .flatten()
        {
            if choice != "none" && choice != "auto" {
                return Err(bad(
                    "tool_choice",
                    "tool_choice can only be \"none\" (or \"auto\" with no tools): a team calls no tools",
                ));
            }
        }
        if let Some(f) = &self.response_format {
            let kind = f.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if kind != "text" {
                return Err(bad(
                    "response_format",
                    format!("response_format {kind:?} is not supported: a team's answer is text (\"text\" is the only format)"),
                ));
            }
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(bad(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ));
        }
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return Err(bad(
                "logprobs",
                "logprobs are not supported: a team's answer is a vote over several samples, not one sample's tokens",
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(bad(
                "logit_bias",
                "logit_bias is not supported: the nodes of a team may use different tokenizers",
            ));
        }
        if self.audio.is_some()
            || self
                .modalities
                .as_ref()
                .is_some_and(|m| m.iter().any(|x| x != "text"))
        {
            return Err(bad("modalities", "only text is supported"));
        }
        let question = question(&self.messages)?;
        Ok(Asked {
            question,
            n,
            sampling: crate::model::Sampling {
                max_tokens,
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed.map(|s| s as u64),
                stop,
            },
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// The question: the last user message (its text parts joined; a part of
/// another kind is refused, naming it).
fn question(messages: &[ChatMessage]) -> Result<String, BadField> {
    let no_text = || {
        bad(
            "messages",
            "the request has no user message with text to answer",
        )
    };
    let (i, m) = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m.role == "user")
        .ok_or_else(no_text)?;
    let text = match &m.content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(|t| t.as_str()).unwrap_or("text") {
                    "text" | "input_text" => {
                        texts.push(p.get("text").and_then(|t| t.as_str()).unwrap_or(""))
                    }
                    other => {
                        return Err(bad(
                            "messages",
                            format!("messages[{i}].content[{j}] is of type {other:?}: a team reads text parts only"),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        _ => return Err(no_text()),
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(no_text());
    }
    Ok(text)
}

pub(super) fn usage(r: &JobResult) -> serde_json::Value {
    json!({
        "prompt_tokens": r.tokens_in,
        "completion_tokens": r.tokens_out,
        "total_tokens": r.tokens_in + r.tokens_out,
    })
}

/// The reply's `conclave` object. `digest`: the run's digest in the
/// journal's hash chain, which a client can keep to prove later what the
/// team did (`conclave verify RUN --digest D`).
pub(super) fn conclave(
    r: &JobResult,
    candidates: &[(String, u32)],
    digest: Option<&str>,
) -> serde_json::Value {
    json!({
        "run_id": r.run_id,
        "digest": digest,
        "support": r.support,
        "total": r.total,
        "synthesised": r.synthesised,
        "citations": r.citations,
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
