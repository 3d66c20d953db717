//! One task to a decision: k replicas of a role on model nodes, each
//! candidate judged by the verifiers, the ballots counted by a voter, and the
//! voter's answer acted on: `need-more` draws more samples (adaptive
//! consistency), `revise` runs another round with the feedback (debate,
//! critique), `no-consensus` ends the task with its reason. A failing
//! replica or verifier fails that ballot only; the task goes on with the
//! rest and ends with exactly one stop reason.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::model::router::{CallTag, Route};
use crate::model::{self, ModelError, Router};
use crate::plugin::bindings::llm;
use crate::plugin::{
    AnswerKind, Ballot, CallInfo, Candidate, Decision, Grants, HostServices, Invocation, Outcome,
    Plugin, PluginRuntime, Task,
};

/// A plugin as a team uses it: the component, its config and its grants.
#[derive(Clone)]
pub struct PluginUse {
    pub plugin: Plugin,
    /// JSON given to the plugin as `task.config`.
    pub config: String,
    pub grants: Grants,
}

/// What one task asks for.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub id: String,
    pub prompt: String,
    pub answer_kind: AnswerKind,
    /// The right answer, when an evaluation provides it (only `sim` nodes
    /// look at it).
    pub gold: Option<String>,
    pub checker: Option<String>,
    /// Samples in the first round.
    pub replicas: u32,
    /// Most samples over all rounds.
    pub max_samples: u32,
    /// Most rounds (1 = no revision).
    pub max_rounds: u32,
    /// Decided answers of the tasks this one depends on, by task id: what
    /// `blackboard.read` returns.
    pub inputs: Vec<(String, String)>,
}

/// Why a task stopped. Exactly one per task.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "stop", content = "reason", rename_all = "kebab-case")]
pub enum StopReason {
    Decided,
    NoConsensus(String),
    BudgetExhausted(String),
    Failed(String),
}

/// The outcome of a task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    pub stop: StopReason,
    pub answer: Option<String>,
    pub support: u32,
    pub total: u32,
    pub runner_up: Option<String>,
    /// Samples drawn (successful or not).
    pub samples: u32,
    pub rounds: u32,
    /// Nodes whose candidates were counted, one per ballot.
    pub nodes: Vec<String>,
    /// Why replicas or verifiers failed, one line each.
    pub failures: Vec<String>,
}

/// A role, its verifiers and its voter, over a router.
pub struct Team {
    pub runtime: Arc<PluginRuntime>,
    pub router: Arc<Router>,
    pub role: PluginUse,
    pub verifiers: Vec<PluginUse>,
    pub voter: PluginUse,
}

/// The host services a replica sees: model calls through the router,
/// spread over nodes the task's other replicas are not using.
struct RoutedServices {
    router: Arc<Router>,
    tag: CallTag,
    gold: Option<String>,
    used: Arc<Mutex<Vec<String>>>,
    board: Vec<(String, String)>,
}

fn replica_seed(call: &CallInfo) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&call.run_id, &call.task_id, call.replica).hash(&mut h);
    h.finish()
}

fn to_llm_error(e: ModelError) -> llm::LlmError {
    let s = e.to_string();
    match e {
        ModelError::Unavailable { .. } => llm::LlmError::Unavailable(s),
        ModelError::RateLimited { .. } => llm::LlmError::RateLimited(s),
        ModelError::Timeout { .. } => llm::LlmError::Timeout(s),
        ModelError::Protocol { .. } => llm::LlmError::Protocol(s),
    }
}

#[async_trait::async_trait]
impl HostServices for RoutedServices {
    async fn chat(
        &self,
        call: &CallInfo,
        request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        let req = model::ChatRequest {
            messages: request
                .messages
                .iter()
                .map(|m| model::Message::new(&m.role, &m.content))
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stop: request.stop.clone(),
            n: 1,
            // A seed of its own for every replica, so that replicas sample
            // independently even on a node that would otherwise repeat
            // itself for the same prompt.
            seed: Some(replica_seed(call)),
            gold: self.gold.clone(),
            ..Default::default()
        };
        let route = Route {
            tags: request.route.tags.clone(),
            node: (!request.route.node.is_empty()).then(|| request.route.node.clone()),
            avoid: self.used.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            deadline: None,
        };
        let routed = self
            .router
            .chat(&route, &self.tag, &req)
            .await
            .map_err(to_llm_error)?;
        let r = routed.response;
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r.node.clone());
        let text = r
            .choices
            .first()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        Ok(llm::ChatResponse {
            completion_tokens: r.completion_tokens(),
            prompt_tokens: r.prompt_tokens,
            node: r.node,
            text,
        })
    }

    fn read(&self, _call: &CallInfo, id: &str) -> Option<String> {
        self.board
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    }

    fn keys(&self, _call: &CallInfo) -> Vec<String> {
        self.board.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// The task as a plugin sees it.
fn wit_task(
    run: &str,
    spec: &TaskSpec,
    config: &str,
    round: u32,
    replica: u32,
    replicas: u32,
    feedback: &[String],
) -> Task {
    Task {
        id: spec.id.clone(),
        run_id: run.to_string(),
        prompt: spec.prompt.clone(),
        answer_kind: spec.answer_kind,
        round,
        replica,
        replicas,
        feedback: feedback.to_vec(),
        config: config.to_string(),
        checker: spec.checker.clone(),
    }
}

impl Team {
    /// Runs one task to a stop reason.
    pub async fn run_task(&self, run: &str, spec: &TaskSpec) -> TaskResult {
        let used = Arc::new(Mutex::new(Vec::new()));
        let services: Arc<dyn HostServices> = Arc::new(RoutedServices {
            router: self.router.clone(),
            tag: CallTag {
                run: run.to_string(),
                role: self.role.plugin.name().to_string(),
            },
            gold: spec.gold.clone(),
            used: used.clone(),
            board: spec.inputs.clone(),
        });
        let mut ballots: Vec<Ballot> = Vec::new();
        let mut failures = Vec::new();
        let mut feedback: Vec<String> = Vec::new();
        let (mut samples, mut round, mut want) = (0u32, 0u32, spec.replicas.max(1));
        let result = |stop,
                      decision: Option<&crate::plugin::Decided>,
                      samples,
                      round,
                      ballots: &[Ballot],
                      failures: Vec<String>| TaskResult {
            stop,
            answer: decision.map(|d| d.answer.clone()),
            support: decision.map(|d| d.support).unwrap_or(0),
            total: decision.map(|d| d.total).unwrap_or(ballots.len() as u32),
            runner_up: decision.and_then(|d| d.runner_up.clone()),
            samples,
            rounds: round + 1,
            nodes: ballots.iter().map(|b| b.candidate.node.clone()).collect(),
            failures,
        };
        loop {
            // Draw `want` more samples, all at once.
            let calls = (0..want).map(|i| {
                let replica = samples + i;
                let task = wit_task(
                    run,
                    spec,
                    &self.role.config,
                    round,
                    replica,
                    spec.replicas,
                    &feedback,
                );
                let inv = Invocation {
                    grants: self.role.grants,
                    limits: None,
                    services: Some(services.clone()),
                    info: CallInfo {
                        run_id: run.into(),
                        task_id: spec.id.clone(),
                        replica,
                        plugin: String::new(),
                    },
                };
                async move {
                    (
                        replica,
                        self.runtime.run_role(&self.role.plugin, &inv, &task).await,
                    )
                }
            });
            let outcomes = futures::future::join_all(calls).await;
            samples += want;
            for (replica, outcome) in outcomes {
                match outcome {
                    Ok(Outcome::Candidate(c)) => {
                        let verdicts = self
                            .judge(run, spec, round, &c, &services, &mut failures)
                            .await;
                        ballots.push(Ballot {
                            candidate: c,
                            verdicts,
                        });
                    }
                    Ok(Outcome::Plan(_)) => failures.push(format!(
                        "replica {replica}: returned a plan where an answer was expected"
                    )),
                    Err(e) => failures.push(format!("replica {replica}: {e}")),
                }
            }
            if ballots.is_empty() && samples >= spec.max_samples.max(spec.replicas) {
                let why = format!(
                    "all {samples} replicas failed; last: {}",
                    failures.last().cloned().unwrap_or_default()
                );
                return result(
                    StopReason::Failed(why),
                    None,
                    samples,
                    round,
                    &ballots,
                    failures,
                );
            }
            let vt = wit_task(run, spec, &self.voter.config, round, 0, samples, &feedback);
            let inv = Invocation {
                grants: self.voter.grants,
                ..Default::default()
            };
            let decision = match self
                .runtime
                .tally(&self.voter.plugin, &inv, &vt, &ballots)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    return result(
                        StopReason::Failed(format!("voter: {e}")),
                        None,
                        samples,
                        round,
                        &ballots,
                        failures,
                    )
                }
            };
            let left = spec.max_samples.saturating_sub(samples);
            let stop = match decision {
                Decision::Decided(d) => Some((StopReason::Decided, Some(d))),
                Decision::NoConsensus(r) => Some((StopReason::NoConsensus(r), None)),
                Decision::NeedMore(_) | Decision::Revise(_) if left == 0 => {
                    let why = format!("sample budget of {} spent", spec.max_samples);
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::Revise(_) if round + 1 >= spec.max_rounds.max(1) => {
                    let why = format!("round budget of {} spent", spec.max_rounds.max(1));
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::NeedMore(k) => {
                    want = k.min(left).max(1);
                    None
                }
                Decision::Revise(reason) => {
                    round += 1;
                    feedback = ballots
                        .iter()
                        .map(|b| {
                            format!(
                                "Another solver answered {}: {}",
                                b.candidate.answer, b.candidate.text
                            )
                        })
                        .chain(std::iter::once(reason))
                        .collect();
                    ballots.clear();
                    used.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    want = spec.replicas.max(1).min(left);
                    None
                }
            };
            if let Some((stop, decided)) = stop {
                return result(stop, decided.as_ref(), samples, round, &ballots, failures);
            }
        }
    }

    async fn judge(
        &self,
        run: &str,
        spec: &TaskSpec,
        round: u32,
        c: &Candidate,
        services: &Arc<dyn HostServices>,
        failures: &mut Vec<String>,
    ) -> Vec<crate::plugin::Verdict> {
        let mut verdicts = Vec::new();
        for v in &self.verifiers {
            let task = wit_task(run, spec, &v.config, round, c.replica, spec.replicas, &[]);
            let inv = Invocation::new(v.grants, Some(services.clone()));
            match self.runtime.verify(&v.plugin, &inv, &task, c).await {
                Ok(verdict) => verdicts.push(verdict),
                Err(e) => failures.push(format!(
                    "verifier {} on replica {}: {e}",
                    v.plugin.name(),
                    c.replica
                )),
            }
        }
        verdicts
    }
}
