//! The vocabulary of one task's consensus: what a task asks for
//! ([`TaskSpec`]), how the voter is asked and slow replicas chased
//! ([`ConsensusConfig`]), the plugins a team uses ([`PluginUse`]), what a
//! task shares with its job ([`TaskContext`]) and how it ends
//! ([`TaskResult`], [`StopReason`]). The loop itself is in the parent module.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::plugin::{AnswerKind, Grants};
use crate::team::budget::{Limits, Meter};
use crate::team::bus::Bus;
use crate::team::events::{Observer, Quiet};

/// Read from the team spec; defined with it so a spec loads without the runtime.
pub use crate::spec::config::{ConsensusConfig, Decide, ReplicaHedge};

/// A plugin as a team uses it: the component, its config and its grants.
#[derive(Clone)]
pub struct PluginUse {
    /// The team's name for it (a built-in's, or a `[[plugin]]`'s).
    pub name: String,
    /// The component, swappable while the team serves (see
    /// [`crate::team::swap`]): each call takes the current version at its start.
    pub plugin: crate::team::swap::PluginSlot,
    /// JSON given to the plugin as `task.config`.
    pub config: String,
    pub grants: Grants,
    /// The spec's `limits` for it; the runtime's defaults when `None`.
    pub limits: Option<crate::plugin::SandboxLimits>,
    /// A voter its team declared may synthesise answers no ballot gave
    /// (`synthesises = true`); see [`crate::plugin::checks::vouch`].
    pub synthesises: bool,
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

impl StopReason {
    /// The kind of stop, as the journal tags it (`decided`,
    /// `no-consensus`, `budget-exhausted`, `cancelled`, `failed`).
    pub fn kind(&self) -> &'static str {
        match self {
            StopReason::Decided => "decided",
            StopReason::NoConsensus(_) => "no-consensus",
            StopReason::BudgetExhausted(_) => "budget-exhausted",
            StopReason::Cancelled(_) => "cancelled",
            StopReason::Failed(_) => "failed",
        }
    }

    /// Why it stopped, in words; `None` when it decided.
    pub fn reason(&self) -> Option<&str> {
        match self {
            StopReason::Decided => None,
            StopReason::NoConsensus(w)
            | StopReason::BudgetExhausted(w)
            | StopReason::Cancelled(w)
            | StopReason::Failed(w) => Some(w),
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
    /// The decided answer is none of the ballots': the team's voter, which
    /// its spec declares may synthesise answers, made it up (`support` 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthesised: bool,
    pub runner_up: Option<String>,
    /// Samples drawn that reported (a candidate, a plan or a failure;
    /// redraws and hedge copies included). A replica cancelled before it
    /// reported (an early decision, a hedge that lost) is not a sample.
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
            synthesised: false,
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
    /// messages ([`crate::team::caps`]).
    pub caps: Arc<crate::team::caps::Caps>,
    /// The roles a plan may name: the team's role plugins (empty: any).
    pub roles: Arc<[String]>,
}

/// Model replies by (task, replica, the replica's n-th call).
pub type Recorded = std::collections::HashMap<(String, u32, u32), RecordedCall>;

/// A journaled model reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
