//! A job: one question given to a team spec, its tasks run in dependency
//! order (each task's decided answer readable by its dependents through the
//! blackboard), ending with the last task's answer, its support, the
//! tokens, cost and time spent, and exactly one stop reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::consensus::{PluginUse, StopReason, TaskResult, TaskSpec, Team};
use crate::model::Router;
use crate::plugin::{Grants, Plugin, PluginError, PluginRuntime};
use crate::spec::team::{answer_kind, TeamSpec};
use crate::spec::SpecError;

/// Why a job could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("plugin `{name}`: {source}")]
    Plugin {
        name: String,
        #[source]
        source: PluginError,
    },
}

/// What a job came to.
#[derive(Clone, Debug, Serialize)]
pub struct JobResult {
    pub run_id: String,
    pub question: String,
    pub answer: Option<String>,
    pub support: u32,
    pub total: u32,
    pub runner_up: Option<String>,
    pub stop: StopReason,
    /// Nodes behind the counted ballots of the final task.
    pub nodes: Vec<String>,
    pub samples: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: f64,
    pub wall: Duration,
    /// Whether any node was the simulator (its answers are not a model's).
    pub simulated: bool,
    pub tasks: Vec<(String, TaskResult)>,
}

/// A team spec made ready to run: nodes built, plugins loaded and checked.
pub struct PreparedTeam {
    spec: TeamSpec,
    runtime: Arc<PluginRuntime>,
    router: Arc<Router>,
    plugins: Vec<(String, PluginUse)>,
    simulated: bool,
}

fn load_error(name: &str) -> impl Fn(PluginError) -> JobError + '_ {
    move |source| JobError::Plugin {
        name: name.to_string(),
        source,
    }
}

impl PreparedTeam {
    /// Builds the nodes and loads every plugin the tasks use. Built-ins come
    /// from `[team] plugin_dir` or else `builtin_dir`; an undeclared built-in
    /// is granted the capabilities it asks for, a declared plugin exactly
    /// its `grants` (plus `log`).
    pub async fn prepare(
        spec: TeamSpec,
        runtime: Arc<PluginRuntime>,
        builtin_dir: &Path,
    ) -> Result<Self, JobError> {
        let nodes = crate::spec::build_nodes(&spec.path)?;
        let simulated = nodes.iter().any(|n| n.backend.is_simulated());
        let router = Arc::new(Router::new(nodes, Default::default()));
        let base = spec.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let dir: PathBuf = spec
            .team
            .plugin_dir
            .as_ref()
            .map(|d| base.join(d))
            .unwrap_or_else(|| builtin_dir.to_path_buf());
        let mut names: Vec<&str> = Vec::new();
        for t in &spec.tasks {
            names.push(&t.role);
            names.push(&t.voter);
            names.extend(t.verifiers.iter().map(String::as_str));
        }
        names.sort_unstable();
        names.dedup();
        let mut plugins = Vec::new();
        for name in names {
            let declared = spec.plugins.iter().find(|p| p.name == name);
            let file = match declared.and_then(|p| p.path.as_ref()) {
                Some(p) => base.join(p),
                None => dir.join(format!("{name}.wasm")),
            };
            let plugin: Plugin = runtime.load_file(&file).await.map_err(load_error(name))?;
            let (grants, config) = match declared {
                Some(d) => {
                    let mut caps = d.grants.clone();
                    caps.push(crate::plugin::Capability::Log);
                    let config = d
                        .config
                        .as_ref()
                        .map(|c| serde_json::to_string(c).expect("TOML is JSON-able"));
                    (Grants::of(&caps), config.unwrap_or_else(|| "{}".into()))
                }
                None => {
                    let caps: Vec<_> = plugin
                        .descriptor()
                        .capabilities
                        .iter()
                        .map(|c| (*c).into())
                        .collect();
                    (Grants::of(&caps), "{}".into())
                }
            };
            plugins.push((
                name.to_string(),
                PluginUse {
                    plugin,
                    config,
                    grants,
                },
            ));
        }
        Ok(PreparedTeam {
            spec,
            runtime,
            router,
            plugins,
            simulated,
        })
    }

    fn plugin(&self, name: &str) -> PluginUse {
        self.plugins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .expect("loaded in prepare")
    }

    /// The spec this team was made from.
    pub fn spec(&self) -> &TeamSpec {
        &self.spec
    }

    /// Runs `question` through every task. `gold` is passed to `sim` nodes
    /// only. `progress` hears about each task as it ends.
    pub async fn run(
        &self,
        run_id: &str,
        question: &str,
        gold: Option<&str>,
        mut progress: impl FnMut(&str, &TaskResult),
    ) -> JobResult {
        let start = Instant::now();
        let mut done: Vec<(String, TaskResult)> = Vec::new();
        let mut stop = StopReason::Failed("no task ran".into());
        for t in &self.spec.tasks {
            let team = Team {
                runtime: self.runtime.clone(),
                router: self.router.clone(),
                role: self.plugin(&t.role),
                verifiers: t.verifiers.iter().map(|v| self.plugin(v)).collect(),
                voter: self.plugin(&t.voter),
            };
            let inputs: Vec<(String, String)> = t
                .depends_on
                .iter()
                .filter_map(|d| {
                    done.iter()
                        .find(|(id, _)| id == d)
                        .and_then(|(id, r)| r.answer.clone().map(|a| (id.clone(), a)))
                })
                .collect();
            let spec = TaskSpec {
                id: t.id.clone(),
                prompt: t
                    .prompt
                    .as_deref()
                    .map(|p| p.replace("{question}", question))
                    .unwrap_or_else(|| question.to_string()),
                answer_kind: answer_kind(&t.answer_kind).expect("checked at load"),
                gold: gold.map(String::from),
                checker: None,
                replicas: t.replicas,
                max_samples: t.max_samples.unwrap_or(t.replicas),
                max_rounds: t.max_rounds,
                inputs,
            };
            let result = team.run_task(run_id, &spec).await;
            progress(&t.id, &result);
            stop = result.stop.clone();
            let failed = result.stop != StopReason::Decided;
            done.push((t.id.clone(), result));
            if failed {
                break;
            }
        }
        let accounts = self.router.accounts();
        let run = accounts.by_run.get(run_id);
        let last = done.last().map(|(_, r)| r.clone());
        JobResult {
            run_id: run_id.to_string(),
            question: question.to_string(),
            answer: last.as_ref().and_then(|r| r.answer.clone()),
            support: last.as_ref().map(|r| r.support).unwrap_or(0),
            total: last.as_ref().map(|r| r.total).unwrap_or(0),
            runner_up: last.as_ref().and_then(|r| r.runner_up.clone()),
            nodes: last.as_ref().map(|r| r.nodes.clone()).unwrap_or_default(),
            samples: done.iter().map(|(_, r)| r.samples).sum(),
            stop,
            tokens_in: run.map(|s| s.tokens_in).unwrap_or(0),
            tokens_out: run.map(|s| s.tokens_out).unwrap_or(0),
            cost: run.map(|s| s.cost).unwrap_or(0.0),
            wall: start.elapsed(),
            simulated: self.simulated,
            tasks: done,
        }
    }
}

/// A run id: time-ordered and unique enough for one data directory.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "run-{}-{:04x}",
        now.as_millis(),
        std::process::id() & 0xffff
    )
}
