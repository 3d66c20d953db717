//! The sections of a team spec as they deserialise: `[team]`, `[dag]` and
//! its subtasks, `[[plugin]]` and `[[task]]`, with their defaults. The
//! checks across sections are in the parent module.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::{Capability, SandboxLimits};
use crate::spec::config::{ConsensusConfig, HedgeTasks};

/// `[team]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where built-in plugins are looked up (default: the runtime's).
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// The task whose answer is the job's (default: the last task in
    /// dependency order).
    #[serde(default)]
    pub answer: Option<String>,
    /// Tasks running at once (default 16).
    #[serde(default)]
    pub max_parallel_tasks: Option<usize>,
    /// Public keys (`ed25519:<hex>`) trusted to sign the team's components:
    /// when any is given, every plugin the team loads, built-ins included,
    /// must carry a signature by one of them (`FILE.wasm.sig`, see
    /// [`crate::plugin::signature`]). A server's `--trusted-key` adds to it.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Copies of straggling tasks on idle slots, e.g. `{ after = "p90",
    /// max_copies = 2 }` (default: off; see [`HedgeTasks`]).
    #[serde(default)]
    pub hedge_tasks: Option<HedgeTasks>,
    /// Messages each replica's mailbox holds (default 64).
    #[serde(default)]
    pub bus_capacity: Option<usize>,
    /// Job budget: tokens (in plus out) over all tasks.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Job budget: cost at the nodes' prices.
    #[serde(default)]
    pub max_cost: Option<f64>,
    /// Job budget: wall time, e.g. `"30s"`, `"2m"`.
    #[serde(default, with = "humantime_serde")]
    pub max_wall: Option<Duration>,
    /// Job budget: model calls over all tasks (default: unlimited; each
    /// task has its own cap, `max_task_calls`).
    #[serde(default)]
    pub max_calls: Option<u64>,
    // Caps on what plugins can make the host do; the defaults and what
    // each bounds are documented in the runtime's `caps` module.
    /// Subtasks in one plan (default 64, at most 10,000).
    #[serde(default)]
    pub max_plan_subtasks: Option<usize>,
    /// How deep plans nest (default 3; 0: no task may plan).
    #[serde(default)]
    pub max_plan_depth: Option<u32>,
    /// Tasks in one job, plans' subtasks included (default 1,000).
    #[serde(default)]
    pub max_job_tasks: Option<usize>,
    /// Bytes of a planned subtask's prompt (default 16 KiB).
    #[serde(default)]
    pub max_plan_prompt_bytes: Option<usize>,
    /// Bytes of one bus message (default 64 KiB).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Bytes a mailbox holds (default 1 MiB).
    #[serde(default)]
    pub max_mailbox_bytes: Option<usize>,
    /// Bytes a run's bus carries in all (default 16 MiB).
    #[serde(default)]
    pub max_bus_bytes: Option<u64>,
    /// Messages a run's bus carries in all (default 10,000).
    #[serde(default)]
    pub max_bus_messages: Option<u64>,
    /// Messages one plugin call may send (default 256).
    #[serde(default)]
    pub max_messages_per_call: Option<u32>,
    /// Bus messages journaled per run (default 1,000; 0: none).
    #[serde(default)]
    pub max_journaled_messages: Option<u64>,
    /// Model calls one plugin call may make (default 16).
    #[serde(default)]
    pub max_calls_per_plugin_call: Option<u32>,
    /// Model calls per task unless its `max_calls` says otherwise (default
    /// 256).
    #[serde(default)]
    pub max_task_calls: Option<u64>,
    /// Bytes of one model request's messages and stop sequences (default
    /// 1 MiB).
    #[serde(default)]
    pub max_request_bytes: Option<usize>,
    /// Messages in one model request (default 256).
    #[serde(default)]
    pub max_request_messages: Option<usize>,
    /// Stop sequences in one model request (default 16).
    #[serde(default)]
    pub max_request_stops: Option<usize>,
    /// When each task's voter is asked (`decide = "early"` or `"all"`) and
    /// whether late replicas are hedged (`hedge = { enabled = true,
    /// quantile = 0.9, max_extra = 2 }`); see [`ConsensusConfig`] for the
    /// defaults.
    #[serde(default)]
    pub consensus: ConsensusConfig,
}

/// `[dag]`: tasks read from a task-list JSON file
/// (`{"tasks": [{"id", "title", "description", "dependencies"}]}`), each
/// run like a `[[task]]` with these settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagSection {
    /// The task list, relative to the spec.
    pub path: PathBuf,
    pub role: String,
    pub voter: String,
    #[serde(default)]
    pub verifiers: Vec<String>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default = "default_kind")]
    pub answer_kind: String,
    /// `{title}`, `{description}` and `{question}` are filled in. Default:
    /// the title, a blank line, the description.
    #[serde(default)]
    pub prompt: Option<String>,
}

/// `subtasks = {...}` of a task whose role may answer with a plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskSection {
    /// The role of subtasks whose plan entry names none.
    #[serde(default = "default_solver")]
    pub role: String,
    #[serde(default)]
    pub verifiers: Vec<String>,
    #[serde(default = "default_voter")]
    pub voter: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default = "default_kind")]
    pub answer_kind: String,
}

/// `[[plugin]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    pub name: String,
    /// A component file; absent means the built-in of this name (or of
    /// `builtin`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The built-in this plugin is an instance of, so that one built-in
    /// can be used under several names with different configs.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Given to the plugin as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Host imports granted (`log` is always granted).
    #[serde(default)]
    pub grants: Vec<Capability>,
    #[serde(default)]
    pub limits: Option<SandboxLimits>,
    /// A weights file written by `conclave calibrate` (relative to the
    /// spec): its node weights are given to the plugin as `config.weights`.
    /// Read at load, like a `[dag]` file: a replay or resume reads it again.
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// A voter that may decide an answer none of the ballots gave (a
    /// summary, a merge): the operator's declaration. Its decisions that do
    /// are marked synthesised everywhere the answer is shown; a voter
    /// without it that names an answer no ballot gave fails its task.
    #[serde(default)]
    pub synthesises: bool,
}

/// `[[task]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    pub id: String,
    pub role: String,
    /// The prompt; `{question}` stands for the job's question. Default:
    /// the question itself.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub verifiers: Vec<String>,
    pub voter: String,
    #[serde(default = "default_kind")]
    pub answer_kind: String,
    /// Most samples over all rounds (default: `replicas`).
    #[serde(default)]
    pub max_samples: Option<u32>,
    #[serde(default = "one")]
    pub max_rounds: u32,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Debate: rounds in which each replica sees the others' previous
    /// answers (over the bus), before the vote.
    #[serde(default)]
    pub debate_rounds: u32,
    /// How often a failed replica is drawn again on another node.
    #[serde(default = "one")]
    pub retries: u32,
    /// Task budget: tokens (in plus out).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Task budget: cost at the nodes' prices.
    #[serde(default)]
    pub max_cost: Option<f64>,
    /// Task budget: wall time, e.g. `"20s"`.
    #[serde(default, with = "humantime_serde")]
    pub max_wall: Option<Duration>,
    /// Task budget: model calls over all replicas, rounds and verifiers
    /// (default: `[team] max_task_calls`, 256).
    #[serde(default)]
    pub max_calls: Option<u64>,
    /// How to run the subtasks if the role answers with a plan.
    #[serde(default)]
    pub subtasks: Option<SubtaskSection>,
    /// Passages retrieved from an `[[index]]` for the task's prompt, put
    /// before it (retrieval-augmented prompting).
    #[serde(default)]
    pub context: Option<ContextSection>,
}

/// `[[index]]`: a knowledge base built with `conclave index build`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSection {
    /// What tasks call it (`context = { index = "NAME" }`).
    pub name: String,
    /// The index folder, relative to the spec file.
    pub path: PathBuf,
}

/// A task's `context`: which index, and how many passages.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSection {
    pub index: String,
    /// Passages put before the prompt (1 to 20; default 5).
    #[serde(default = "five")]
    pub passages: usize,
}

fn five() -> usize {
    5
}

fn one() -> u32 {
    1
}
fn default_solver() -> String {
    "solver".into()
}
fn default_voter() -> String {
    "majority".into()
}
fn default_kind() -> String {
    "text".into()
}
