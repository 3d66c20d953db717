//! One task to a decision: k replicas of a role on model nodes, each
//! candidate judged by the verifiers, the ballots counted by a voter, and the
//! voter's answer acted on: `need-more` draws more samples (adaptive
//! consistency), `revise` runs another round with the feedback (debate,
//! critique), `no-consensus` ends the task with its reason. Debate rounds
//! deliver each replica the others' previous answers over the bus. A
//! failing replica is drawn again on another node up to `retries` times; a
//! failing replica or verifier fails that ballot only; the task goes on with
//! the rest and ends with exactly one stop reason. A role may answer with a
//! plan instead: the task is then decided by that plan, and the scheduler
//! runs its subtasks.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::budget::{Limits, Meter};
use super::bus::{Bus, Envelope};
use super::events::{Event, Observer, Quiet, Served};
use super::services::RoutedServices;
use crate::model::router::CallTag;
use crate::model::Router;
use crate::plugin::{
    AnswerKind, Ballot, CallInfo, Candidate, Decided, Decision, Grants, Invocation, Outcome,
    Plugin, PluginRuntime, Task,
};

/// A plugin as a team uses it: the component, its config and its grants.
#[derive(Clone)]
pub struct PluginUse {
    /// The team's name for it (a built-in's, or a `[[plugin]]`'s).
    pub name: String,
    /// The component, swappable while the team serves (see
    /// [`super::swap`]): each call takes the current version at its start.
    pub plugin: super::swap::PluginSlot,
    /// JSON given to the plugin as `task.config`.
    pub config: String,
    pub grants: Grants,
    /// The spec's `limits` for it; the runtime's defaults when `None`.
    pub limits: Option<crate::plugin::SandboxLimits>,
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
    /// Most samples over all rounds, not counting redraws of failed ones.
    pub max_samples: u32,
    /// Most rounds the voter may ask for with `revise` (1 = no revision).
    pub max_rounds: u32,
    /// Debate: rounds in which every replica sees the others' previous
    /// answers, before the vote (0 = no debate).
    pub debate_rounds: u32,
    /// How often a failed replica is drawn again on another node.
    pub retries: u32,
    /// Decided answers of the tasks this one depends on, by task id: what
    /// `blackboard.read` returns.
    pub inputs: Vec<(String, String)>,
}

impl TaskSpec {
    /// One sample, one round, one retry, no inputs.
    pub fn new(id: &str, prompt: &str, answer_kind: AnswerKind) -> Self {
        TaskSpec {
            id: id.into(),
            prompt: prompt.into(),
            answer_kind,
            gold: None,
            checker: None,
            replicas: 1,
            max_samples: 1,
            max_rounds: 1,
            debate_rounds: 0,
            retries: 1,
            inputs: Vec::new(),
        }
    }
}

/// Why a task (or a job) stopped. Exactly one per task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stop", content = "reason", rename_all = "kebab-case")]
pub enum StopReason {
    Decided,
    NoConsensus(String),
    BudgetExhausted(String),
    Cancelled(String),
    Failed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Decided => write!(f, "decided"),
            StopReason::NoConsensus(w) => write!(f, "no consensus: {w}"),
            StopReason::BudgetExhausted(w) => write!(f, "budget exhausted: {w}"),
            StopReason::Cancelled(w) => write!(f, "cancelled: {w}"),
            StopReason::Failed(w) => write!(f, "failed: {w}"),
        }
    }
}

/// A subtask of a coordinator's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSubtask {
    pub id: String,
    pub prompt: String,
    /// Empty: the task's default subtask role.
    pub role: String,
    pub depends_on: Vec<String>,
}

/// The outcome of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub stop: StopReason,
    pub answer: Option<String>,
    pub support: u32,
    pub total: u32,
    pub runner_up: Option<String>,
    /// Samples drawn (successful or not, redraws included).
    pub samples: u32,
    pub rounds: u32,
    /// Nodes whose candidates were counted, one per ballot.
    pub nodes: Vec<String>,
    /// Why replicas or verifiers failed, one line each.
    pub failures: Vec<String>,
    /// The plan a coordinator answered with, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlannedSubtask>>,
    /// Tokens (in plus out) and cost charged to this task.
    pub tokens: u64,
    pub cost: f64,
}

impl TaskResult {
    /// A task that never ran, for `reason`.
    pub fn not_run(stop: StopReason) -> Self {
        TaskResult {
            stop,
            answer: None,
            support: 0,
            total: 0,
            runner_up: None,
            samples: 0,
            rounds: 0,
            nodes: Vec::new(),
            failures: Vec::new(),
            plan: None,
            tokens: 0,
            cost: 0.0,
        }
    }
}

/// A role, its verifiers and its voter, over a router.
pub struct Team {
    pub runtime: Arc<PluginRuntime>,
    pub router: Arc<Router>,
    pub role: PluginUse,
    pub verifiers: Vec<PluginUse>,
    pub voter: PluginUse,
}

/// What a task shares with the rest of its job: the run's bus, the meter
/// its model calls are charged to, and who hears its events.
#[derive(Clone)]
pub struct TaskContext {
    pub bus: Arc<Bus>,
    pub meter: Arc<Meter>,
    pub observer: Arc<dyn Observer>,
    /// Model replies already in the journal (resume): answered from here
    /// instead of calling a node again.
    pub recorded: Option<Arc<Recorded>>,
    /// What the task's plugins may make the host do: plans, model calls,
    /// messages ([`super::caps`]).
    pub caps: Arc<super::caps::Caps>,
    /// The roles a plan may name: the team's role plugins (empty: any).
    pub roles: Arc<[String]>,
}

/// Model replies by (task, replica, the replica's n-th call).
pub type Recorded = std::collections::HashMap<(String, u32, u32), RecordedCall>;

/// A journaled model reply.
#[derive(Clone, Debug)]
pub struct RecordedCall {
    pub node: String,
    pub text: String,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub cost: f64,
}

impl TaskContext {
    /// A bus of its own, no limits, nobody listening.
    pub fn standalone() -> Self {
        TaskContext {
            bus: Arc::new(Bus::new(64)),
            meter: Meter::job(Limits::default()),
            observer: Arc::new(Quiet),
            recorded: None,
            caps: Arc::default(),
            roles: Arc::new([]),
        }
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

/// What a task has gathered so far.
#[derive(Default)]
struct Gathered {
    ballots: Vec<Ballot>,
    /// The slot (position in its round) of each ballot's replica.
    slots: Vec<u32>,
    plans: Vec<Vec<PlannedSubtask>>,
    /// The role version behind the first plan.
    plan_by: Option<Served>,
    failures: Vec<String>,
    samples: u32,
}

impl Team {
    /// Runs one task to a stop reason on a bus of its own, without limits.
    pub async fn run_task(&self, run: &str, spec: &TaskSpec) -> TaskResult {
        self.run_task_in(run, spec, &TaskContext::standalone())
            .await
    }

    /// Runs one task to a stop reason within its job's `ctx`. Dropping the
    /// future cancels the model calls in flight.
    pub async fn run_task_in(&self, run: &str, spec: &TaskSpec, ctx: &TaskContext) -> TaskResult {
        let used = Arc::new(Mutex::new(Default::default()));
        let services = Arc::new(RoutedServices {
            router: self.router.clone(),
            tag: CallTag {
                run: run.to_string(),
                role: self.role.current().name().to_string(),
            },
            run: run.to_string(),
            gold: spec.gold.clone(),
            used: used.clone(),
            board: spec.inputs.clone(),
            ctx: ctx.clone(),
            calls: Mutex::default(),
            capped: Mutex::default(),
        });
        let mut g = Gathered::default();
        let mut feedback: Vec<String> = Vec::new();
        let (mut round, mut want) = (0u32, spec.replicas.max(1));
        let finish = |stop: StopReason, decided: Option<&Decided>, round: u32, g: Gathered| {
            ctx.bus.close_task(&spec.id);
            let (tokens, cost) = ctx.meter.used();
            let plan = g.plans.into_iter().next();
            TaskResult {
                answer: decided.map(|d| d.answer.clone()),
                support: decided.map(|d| d.support).unwrap_or(0),
                total: decided.map(|d| d.total).unwrap_or(g.ballots.len() as u32),
                runner_up: decided.and_then(|d| d.runner_up.clone()),
                samples: g.samples,
                rounds: round + 1,
                nodes: g.ballots.iter().map(|b| b.candidate.node.clone()).collect(),
                failures: g.failures,
                plan: if stop == StopReason::Decided {
                    plan
                } else {
                    None
                },
                stop,
                tokens,
                cost,
            }
        };
        loop {
            if let Some(why) = ctx.meter.exhausted() {
                return finish(StopReason::BudgetExhausted(why), None, round, g);
            }
            // No more samples than the budgets still have room for.
            if let Some(room) = ctx.meter.room() {
                want = want.min(room.clamp(1, u64::from(u32::MAX)) as u32);
            }
            self.draw(run, spec, ctx, &services, round, want, &feedback, &mut g)
                .await;
            if g.ballots.is_empty() && !g.plans.is_empty() {
                let plan = &g.plans[0];
                let text = plan
                    .iter()
                    .map(|s| format!("{}: {}", s.id, s.prompt))
                    .collect::<Vec<_>>()
                    .join("\n");
                let d = Decided {
                    answer: text,
                    support: 1,
                    total: g.plans.len() as u32,
                    runner_up: None,
                };
                ctx.observer.event(
                    run,
                    &Event::Planned {
                        task: spec.id.clone(),
                        subtasks: plan.iter().map(|s| s.id.clone()).collect(),
                        role: g.plan_by.clone(),
                    },
                );
                return finish(StopReason::Decided, Some(&d), round, g);
            }
            let left = spec.max_samples.saturating_sub(g.samples);
            if g.ballots.is_empty() && (left == 0 || ctx.meter.exhausted().is_some()) {
                let stop = match ctx.meter.exhausted().or_else(|| services.capped()) {
                    Some(why) => StopReason::BudgetExhausted(why),
                    None => StopReason::Failed(format!(
                        "all {} replicas failed; last: {}",
                        g.samples,
                        g.failures.last().cloned().unwrap_or_default()
                    )),
                };
                return finish(stop, None, round, g);
            }
            if round < spec.debate_rounds && !g.ballots.is_empty() {
                round += 1;
                feedback = self.exchange(run, spec, ctx, g.samples, &g);
                g.ballots.clear();
                g.slots.clear();
                used.lock().unwrap_or_else(|p| p.into_inner()).clear();
                want = spec.replicas.max(1);
                continue;
            }
            let vt = wit_task(
                run,
                spec,
                &self.voter.config,
                round,
                0,
                g.samples,
                &feedback,
            );
            let inv = Invocation {
                grants: self.voter.grants,
                limits: self.voter.limits.clone(),
                services: None,
                info: CallInfo {
                    run_id: run.into(),
                    task_id: spec.id.clone(),
                    call: g.ballots.len() as u32,
                    ..Default::default()
                },
            };
            let voter = self.voter.current();
            let decision = match self.runtime.tally(&voter, &inv, &vt, &g.ballots).await {
                Ok(d) => d,
                Err(e) => {
                    let what = format!("voter: {e}");
                    let by = served(&self.voter, &voter);
                    let failure = Event::PluginFailure {
                        task: spec.id.clone(),
                        what: what.clone(),
                        by,
                    };
                    ctx.observer.event(run, &failure);
                    return finish(StopReason::Failed(what), None, round, g);
                }
            };
            ctx.observer.event(
                run,
                &Event::Vote {
                    task: spec.id.clone(),
                    round,
                    ballots: g.ballots.len() as u32,
                    voter: self.voter.name.clone(),
                    decision: describe(&decision),
                    hash: Some(voter.hash().to_string()),
                },
            );
            let spent = ctx.meter.exhausted();
            let stop = match decision {
                Decision::Decided(d) => Some((StopReason::Decided, Some(d))),
                Decision::NoConsensus(r) => Some((StopReason::NoConsensus(r), None)),
                Decision::NeedMore(_) | Decision::Revise(_) if spent.is_some() => {
                    Some((StopReason::BudgetExhausted(spent.unwrap_or_default()), None))
                }
                Decision::NeedMore(_) | Decision::Revise(_) if left == 0 => {
                    let why = format!(
                        "task {}: sample budget of {} spent",
                        spec.id, spec.max_samples
                    );
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::Revise(_) if round + 1 >= spec.max_rounds.max(1) + spec.debate_rounds => {
                    let why = format!(
                        "task {}: round budget of {} spent",
                        spec.id,
                        spec.max_rounds.max(1)
                    );
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::NeedMore(k) => {
                    want = k.min(left).max(1);
                    None
                }
                Decision::Revise(reason) => {
                    round += 1;
                    feedback = self.exchange(run, spec, ctx, g.samples, &g);
                    feedback.push(reason);
                    g.ballots.clear();
                    g.slots.clear();
                    used.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    want = spec.replicas.max(1).min(left);
                    None
                }
            };
            if let Some((stop, decided)) = stop {
                return finish(stop, decided.as_ref(), round, g);
            }
        }
    }

    /// Draws `want` samples at once, drawing failed ones again (new
    /// replica numbers, so new seeds and other nodes) up to
    /// `spec.retries` times, and judges every candidate.
    #[allow(clippy::too_many_arguments)]
    async fn draw(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        services: &Arc<RoutedServices>,
        round: u32,
        want: u32,
        feedback: &[String],
        g: &mut Gathered,
    ) {
        // (slot, replica number)
        let mut pending: Vec<(u32, u32)> = (0..want).map(|i| (i, g.samples + i)).collect();
        for attempt in 0..=spec.retries {
            if pending.is_empty() || (attempt > 0 && ctx.meter.exhausted().is_some()) {
                break;
            }
            for (_, replica) in &pending {
                ctx.bus.open(&format!("{}/{replica}", spec.id));
                if attempt > 0 {
                    ctx.observer.event(
                        run,
                        &Event::Retry {
                            task: spec.id.clone(),
                            replica: *replica,
                        },
                    );
                }
            }
            let calls = pending.iter().map(|&(slot, replica)| {
                let task = wit_task(
                    run,
                    spec,
                    &self.role.config,
                    round,
                    replica,
                    spec.replicas,
                    feedback,
                );
                let inv = Invocation {
                    grants: self.role.grants,
                    limits: self.role.limits.clone(),
                    services: Some(services.for_call()),
                    info: CallInfo {
                        run_id: run.into(),
                        task_id: spec.id.clone(),
                        replica,
                        ..Default::default()
                    },
                };
                async move {
                    // This call's version, to its end, whatever is swapped in meanwhile.
                    let role = self.role.current();
                    let out = self.runtime.run_role(&role, &inv, &task).await;
                    (slot, replica, served(&self.role, &role), out)
                }
            });
            let outcomes = futures::future::join_all(calls).await;
            g.samples += pending.len() as u32;
            let mut failed = Vec::new();
            for (slot, replica, by, outcome) in outcomes {
                let fail = |why: String| format!("replica {replica}: {why}");
                match outcome {
                    Ok(Outcome::Candidate(c)) => {
                        let (verdicts, judges) =
                            self.judge(run, spec, ctx, round, &c, services, g).await;
                        let ballot = Ballot {
                            candidate: c,
                            verdicts,
                        };
                        ctx.observer.event(
                            run,
                            &Event::Ballot {
                                task: spec.id.clone(),
                                round,
                                ballot: (&ballot).into(),
                                role: Some(by),
                                verifiers: judges,
                            },
                        );
                        g.ballots.push(ballot);
                        g.slots.push(slot);
                    }
                    Ok(Outcome::Plan(p)) => match ctx.caps.plan.check(&p, &ctx.roles) {
                        Ok(plan) => {
                            g.plan_by.get_or_insert(by);
                            g.plans.push(plan)
                        }
                        Err(e) => {
                            let what = fail(format!("invalid plan: {e}"));
                            self.failed(run, spec, ctx, g, by, what);
                            failed.push(slot);
                        }
                    },
                    Err(e) => {
                        self.failed(run, spec, ctx, g, by, fail(e.to_string()));
                        failed.push(slot);
                    }
                }
            }
            let base = g.samples;
            pending = failed
                .into_iter()
                .enumerate()
                .map(|(i, slot)| (slot, base + i as u32))
                .collect();
        }
    }

    /// A plugin call `by` failed with `what`; the task goes on.
    fn failed(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        g: &mut Gathered,
        by: Served,
        what: String,
    ) {
        ctx.observer.event(
            run,
            &Event::PluginFailure {
                task: spec.id.clone(),
                what: what.clone(),
                by,
            },
        );
        g.failures.push(what);
    }

    /// Starts the next round: every replica of it gets the others'
    /// previous answers, over the bus when the role may read it, and as
    /// feedback otherwise (the returned feedback).
    fn exchange(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        next: u32,
        g: &Gathered,
    ) -> Vec<String> {
        let said = |b: &Ballot| format!("answered {}: {}", b.candidate.answer, b.candidate.text);
        if !self.role.grants.bus {
            return g
                .ballots
                .iter()
                .map(|b| format!("Another solver {}", said(b)))
                .collect();
        }
        for slot in 0..spec.replicas.max(1) {
            let to = format!("{}/{}", spec.id, next + slot);
            ctx.bus.open(&to);
            for (b, s) in g.ballots.iter().zip(&g.slots) {
                if *s == slot {
                    continue;
                }
                let from = format!("{}/{}", spec.id, b.candidate.replica);
                let m = Envelope::new(&from, &to, "answer", &said(b))
                    .fit(ctx.bus.limits().message_bytes);
                if let Ok(n) = ctx.bus.send(m) {
                    super::services::journal_message(ctx, run, n, &from, &to, "answer");
                }
            }
        }
        Vec::new()
    }

    #[allow(clippy::too_many_arguments)]
    async fn judge(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        round: u32,
        c: &Candidate,
        services: &Arc<RoutedServices>,
        g: &mut Gathered,
    ) -> (Vec<crate::plugin::Verdict>, Vec<Served>) {
        let (mut verdicts, mut judges) = (Vec::new(), Vec::new());
        for v in &self.verifiers {
            let task = wit_task(run, spec, &v.config, round, c.replica, spec.replicas, &[]);
            let inv = Invocation {
                grants: v.grants,
                limits: v.limits.clone(),
                services: Some(services.for_call()),
                info: CallInfo {
                    run_id: run.into(),
                    task_id: spec.id.clone(),
                    replica: c.replica,
                    ..Default::default()
                },
            };
            let plugin = v.current();
            match self.runtime.verify(&plugin, &inv, &task, c).await {
                Ok(verdict) => {
                    verdicts.push(verdict);
                    judges.push(served(v, &plugin));
                }
                Err(e) => {
                    let what = format!("verifier {} on replica {}: {e}", plugin.name(), c.replica);
                    self.failed(run, spec, ctx, g, served(v, &plugin), what);
                }
            }
        }
        (verdicts, judges)
    }
}

/// Which component served a call of `u`: `plugin`, the version it took.
fn served(u: &PluginUse, plugin: &Plugin) -> Served {
    Served {
        plugin: u.name.clone(),
        hash: plugin.hash().to_string(),
    }
}

/// A decision in a few words, for events (and for replay to compare).
pub fn describe(d: &Decision) -> String {
    match d {
        Decision::Decided(d) => format!("decided {} ({} of {})", d.answer, d.support, d.total),
        Decision::NeedMore(k) => format!("need {k} more"),
        Decision::Revise(r) => format!("revise: {r}"),
        Decision::NoConsensus(r) => format!("no consensus: {r}"),
    }
}
