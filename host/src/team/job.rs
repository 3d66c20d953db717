//! A job: one question given to a team spec. Its tasks run as a DAG on the
//! scheduler (each task's decided answer readable by its dependents through
//! the blackboard), within the job's budgets, and it ends with the answer
//! task's answer, its support, the tokens, cost and time spent, and exactly
//! one stop reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::budget::{Limits, Meter};
use super::bus::Bus;
use super::caps::Caps;
use super::consensus::{PluginUse, Recorded, StopReason, TaskContext, TaskResult, TaskSpec, Team};
use super::events::Observer;
use super::remote::{Remote, RemoteReplicas, ReplicaDone, ReplicaJob};
use super::scheduler::{self, Executor, JobTask, SubtaskDefaults};
use crate::model::Router;
use crate::plugin::{Grants, Plugin, PluginError, PluginRuntime};
use crate::spec::team::{answer_kind, TaskSection, TeamSpec};
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
    /// The spec gives a plugin limits the runtime cannot honour.
    #[error("plugin `{name}`: {reason}")]
    Limits { name: String, reason: String },
    /// An `[[index]]` the spec declares cannot be read.
    #[error("{spec}: index `{name}` ({path}): {reason}")]
    Index {
        spec: PathBuf,
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// What a job came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub run_id: String,
    pub question: String,
    pub answer: Option<String>,
    pub support: u32,
    pub total: u32,
    /// The final task's voter synthesised the answer: none of its ballots
    /// gave it (see [`TaskResult::synthesised`]).
    pub synthesised: bool,
    pub runner_up: Option<String>,
    pub stop: StopReason,
    /// Nodes behind the counted ballots of the final task.
    pub nodes: Vec<String>,
    pub samples: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: f64,
    /// Messages sent on the run's bus.
    pub messages: u64,
    pub wall: Duration,
    /// Whether any node was the simulator (its answers are not a model's).
    pub simulated: bool,
    pub tasks: Vec<(String, TaskResult)>,
    /// The passages the final task was given (`context`), where they come
    /// from: what its answer can cite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<crate::knowledge::Citation>,
}

/// A team spec made ready to run: nodes built, plugins loaded and checked.
pub struct PreparedTeam {
    spec: TeamSpec,
    runtime: Arc<PluginRuntime>,
    router: Arc<Router>,
    plugins: Arc<Vec<(String, PluginUse)>>,
    simulated: bool,
    /// Workers its replicas go to (cluster mode), once set.
    remote: std::sync::OnceLock<Remote>,
    /// The keys its components must be signed by (none: any component).
    trust: crate::plugin::signature::Trust,
    indexes: super::retrieval::Indexes,
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
        Self::prepare_in(spec, runtime, builtin_dir, &crate::model::NodePool::new()).await
    }

    /// [`PreparedTeam::prepare`], with nodes built in (and shared through)
    /// `pool`: the teams of one server route to one set of nodes.
    pub async fn prepare_in(
        spec: TeamSpec,
        runtime: Arc<PluginRuntime>,
        builtin_dir: &Path,
        pool: &crate::model::NodePool,
    ) -> Result<Self, JobError> {
        let router =
            crate::spec::build_router_in(&spec.source, &spec.path, spec.router.clone(), pool)?;
        let simulated = router.simulated();
        let router = Arc::new(router);
        let plugins = load_plugins(&spec, &runtime, builtin_dir).await?;
        let indexes = super::retrieval::open_indexes(&spec)?;
        Ok(PreparedTeam {
            indexes,
            trust: trust_of(&spec),
            spec,
            runtime,
            router,
            plugins: Arc::new(plugins),
            simulated,
            remote: Default::default(),
        })
    }

    /// The spec this team was made from.
    pub fn spec(&self) -> &TeamSpec {
        &self.spec
    }

    /// The keys its components must be signed by.
    pub fn trust(&self) -> &crate::plugin::signature::Trust {
        &self.trust
    }

    /// The plugins the team uses, by the team's names for them.
    pub fn plugins(&self) -> &[(String, PluginUse)] {
        &self.plugins
    }

    /// The runtime its plugins run (and are reloaded) on.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// The SHA-256 of its spec's text: what a worker's copy must match.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.spec.source.as_bytes()))
    }

    /// Sends its replicas to `workers` from now on, while a live worker
    /// serves this team (see [`super::remote`]); set once.
    pub fn use_workers(&self, workers: Arc<dyn RemoteReplicas>) {
        let _ = self.remote.set(Remote {
            replicas: workers,
            team: self.spec.team.name.clone(),
            digest: self.digest(),
        });
    }

    /// Runs one replica of this team for a coordinator elsewhere: `job`
    /// names the role and verifiers by the team's names for them.
    pub async fn work(&self, job: &ReplicaJob, worker: &str, attempt: u32) -> ReplicaDone {
        let get = |name: &str| {
            self.plugins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| format!("plugin `{name}` is not part of team {}", job.team))
        };
        let team = get(&job.role).and_then(|role| {
            Ok(Team {
                runtime: self.runtime.clone(),
                router: self.router.clone(),
                verifiers: job
                    .verifiers
                    .iter()
                    .map(|v| get(v))
                    .collect::<Result<_, _>>()?,
                // Not asked: the coordinator votes.
                voter: role.clone(),
                role,
                remote: None,
            })
        });
        match team {
            Ok(team) => {
                team.work(job, &Caps::of(&self.spec.team), worker, attempt)
                    .await
            }
            Err(why) => ReplicaDone::refused(job, worker, attempt, why),
        }
    }

    /// Runs `question` through the team's task DAG (see
    /// [`super::scheduler`]). `gold` is passed to `sim` nodes only.
    /// `observer` hears every event; cancelling `cancel` stops the job and
    /// its model calls in flight.
    pub async fn run(
        &self,
        run_id: &str,
        question: &str,
        gold: Option<&str>,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
    ) -> JobResult {
        self.run_with(
            run_id,
            question,
            gold,
            observer,
            cancel,
            None,
            &crate::model::Sampling::default(),
        )
        .await
    }

    /// [`PreparedTeam::run`], answering the model calls in `recorded`
    /// from there (resuming a run from its journal), with what the job's
    /// client asked of every model call (`sampling`).
    #[allow(clippy::too_many_arguments)]
    pub async fn run_with(
        &self,
        run_id: &str,
        question: &str,
        gold: Option<&str>,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
        recorded: Option<Arc<Recorded>>,
        sampling: &crate::model::Sampling,
    ) -> JobResult {
        let start = Instant::now();
        let t = &self.spec.team;
        // Exported only when a subscriber enables it (`--otlp-endpoint`);
        // the hedges it records are counted from the run's events, heard
        // only then.
        let span = crate::otel::run_span(run_id, &t.name);
        let tally = Arc::new(crate::otel::RunTally::default());
        let observer: Arc<dyn Observer> = if span.is_disabled() {
            observer
        } else {
            Arc::new(super::events::Both(tally.clone(), observer))
        };
        let meter = Meter::job(Limits {
            max_tokens: t.max_tokens,
            max_cost: t.max_cost,
            max_wall: t.max_wall,
            max_calls: t.max_calls,
        });
        let caps = Arc::new(Caps {
            sampling: sampling.clone(),
            ..Caps::of(t)
        });
        let mut tasks: Vec<JobTask> = self
            .spec
            .tasks
            .iter()
            .map(|t| job_task(t, question, &caps))
            .collect();
        // Passages for the tasks with `context`, before their prompts.
        let indexes = &self.indexes;
        let mut cited = indexes.give(&self.spec, &mut tasks, run_id, &*observer);
        let bus = Arc::new(Bus::with_limits(caps.bus));
        // What a plan may name as a subtask's role.
        let roles: Arc<[String]> = self
            .plugins
            .iter()
            .filter(|(_, u)| u.current().kind() == crate::plugin::PluginKind::Role)
            .map(|(n, _)| n.clone())
            .collect();
        let executor = Arc::new(TeamExecutor {
            runtime: self.runtime.clone(),
            router: self.router.clone(),
            plugins: self.plugins.clone(),
            run_id: run_id.to_string(),
            gold: gold.map(String::from),
            bus: bus.clone(),
            observer: observer.clone(),
            recorded,
            caps: caps.clone(),
            roles,
            span: span.clone(),
            remote: self.remote.get().cloned(),
        });
        let options = scheduler::Options {
            max_parallel_tasks: t.max_parallel_tasks.unwrap_or(16),
            plans: caps.plan,
            subtask_limits: Limits {
                max_calls: Some(caps.model.calls_per_task),
                ..Limits::default()
            },
            hedge_tasks: t.hedge_tasks,
        };
        let done = scheduler::run(
            run_id,
            tasks,
            executor,
            meter.clone(),
            options,
            cancel,
            observer.as_ref(),
        )
        .instrument(span.clone())
        .await;
        let final_id = t
            .answer
            .clone()
            .or_else(|| self.spec.tasks.last().map(|t| t.id.clone()));
        let last = done
            .iter()
            .find(|(id, _)| Some(id) == final_id.as_ref())
            .map(|(_, r)| r.clone());
        observer.flushed().await;
        let account = self.router.take_run(run_id);
        let run = account.as_ref();
        let result = JobResult {
            run_id: run_id.to_string(),
            question: question.to_string(),
            answer: last.as_ref().and_then(|r| r.answer.clone()),
            support: last.as_ref().map(|r| r.support).unwrap_or(0),
            total: last.as_ref().map(|r| r.total).unwrap_or(0),
            synthesised: last.as_ref().is_some_and(|r| r.synthesised),
            runner_up: last.as_ref().and_then(|r| r.runner_up.clone()),
            citations: final_id
                .as_ref()
                .and_then(|id| cited.remove(id))
                .unwrap_or_default(),
            nodes: last.as_ref().map(|r| r.nodes.clone()).unwrap_or_default(),
            samples: done.iter().map(|(_, r)| r.samples).sum(),
            stop: last
                .map(|r| r.stop)
                .unwrap_or_else(|| StopReason::Failed("the answer task did not run".into())),
            tokens_in: run.map(|s| s.tokens_in).unwrap_or(0),
            tokens_out: run.map(|s| s.tokens_out).unwrap_or(0),
            cost: meter.used().1,
            messages: bus.sent(),
            wall: start.elapsed(),
            simulated: self.simulated,
            tasks: done,
        };
        crate::otel::record_run(&span, &result, &tally);
        result
    }
}

/// Loads every plugin a spec's tasks use and every declared plugin (a
/// plan may name any role), by the team's names for them. Built-ins come
/// from `[team] plugin_dir` or else `builtin_dir`.
///
/// Grants are the spec's alone: a declared plugin gets exactly its
/// `grants` (plus `log`); an undeclared built-in loaded from `builtin_dir`
/// gets its documented default ([`crate::plugin::builtin_grants`]); any
/// other plugin gets `log` only, whatever its `describe()` asks for. What
/// was asked and not granted is logged. A plugin used as the wrong kind (a
/// voter as a role) is refused here, before any call.
/// The keys a spec trusts to sign its components (checked when the spec
/// was read).
fn trust_of(spec: &TeamSpec) -> crate::plugin::signature::Trust {
    crate::plugin::signature::Trust::new(
        spec.team
            .trusted_keys
            .iter()
            .filter_map(|k| crate::plugin::signature::PublicKey::parse(k).ok())
            .collect(),
    )
}

pub async fn load_plugins(
    spec: &TeamSpec,
    runtime: &Arc<PluginRuntime>,
    builtin_dir: &Path,
) -> Result<Vec<(String, PluginUse)>, JobError> {
    use crate::plugin::{builtin_grants, Capability, PluginKind};
    let trust = trust_of(spec);
    let base = spec.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dir: PathBuf = spec
        .team
        .plugin_dir
        .as_ref()
        .map(|d| base.join(d))
        .unwrap_or_else(|| builtin_dir.to_path_buf());
    let from_builtins = spec.team.plugin_dir.is_none();
    // Every declared plugin (a plan may name any role) and every
    // built-in a task or its subtasks name, with the kind each use needs.
    let mut uses: Vec<(&str, Option<(PluginKind, &str)>)> = spec
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), None))
        .collect();
    for t in &spec.tasks {
        let of = |k| Some((k, t.id.as_str()));
        uses.push((&t.role, of(PluginKind::Role)));
        uses.push((&t.voter, of(PluginKind::Voter)));
        uses.extend(
            t.verifiers
                .iter()
                .map(|v| (v.as_str(), of(PluginKind::Verifier))),
        );
        if let Some(s) = &t.subtasks {
            uses.push((&s.role, of(PluginKind::Role)));
            uses.push((&s.voter, of(PluginKind::Voter)));
            uses.extend(
                s.verifiers
                    .iter()
                    .map(|v| (v.as_str(), of(PluginKind::Verifier))),
            );
        }
    }
    let mut names: Vec<&str> = uses.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    let mut plugins = Vec::new();
    for name in names {
        let declared = spec.plugins.iter().find(|p| p.name == name);
        let file = match declared {
            Some(d) => match (&d.path, &d.builtin) {
                (Some(p), _) => base.join(p),
                (None, Some(b)) => dir.join(format!("{b}.wasm")),
                (None, None) => dir.join(format!("{name}.wasm")),
            },
            None => dir.join(format!("{name}.wasm")),
        };
        let plugin: Plugin = runtime.load_file(&file).await.map_err(load_error(name))?;
        trust.check(&file, plugin.hash()).map_err(|reason| {
            load_error(name)(PluginError::Untrusted {
                path: file.clone(),
                reason,
            })
        })?;
        for (_, need) in uses.iter().filter(|(n, _)| *n == name) {
            if let Some((kind, task)) = need.filter(|(k, _)| *k != plugin.kind()) {
                let world = crate::plugin::sandbox::kind_name(kind);
                return Err(load_error(name)(PluginError::WorldMismatch {
                    path: file.clone(),
                    world: world.into(),
                    reason: format!(
                        "it is a {}, and task `{task}` uses it as a {world}",
                        crate::plugin::sandbox::kind_name(plugin.kind())
                    ),
                }));
            }
        }
        let (caps, config, limits) = match declared {
            Some(d) => {
                let config = d
                    .config
                    .as_ref()
                    .map(|c| serde_json::to_string(c).expect("TOML is JSON-able"));
                (
                    d.grants.clone(),
                    config.unwrap_or_else(|| "{}".into()),
                    d.limits.clone(),
                )
            }
            None if from_builtins => (
                builtin_grants(name).unwrap_or(&[]).to_vec(),
                "{}".into(),
                None,
            ),
            None => (Vec::new(), "{}".into(), None),
        };
        let mut caps = caps;
        caps.push(Capability::Log);
        let grants = Grants::of(&caps);
        let refused: Vec<String> = plugin
            .descriptor()
            .capabilities
            .iter()
            .map(|c| Capability::from(*c))
            .filter(|c| !grants.allows(*c))
            .map(|c| c.to_string())
            .collect();
        if !refused.is_empty() {
            let note = format!(
                "plugin `{name}` ({}) asks for {} but the team spec does not grant it; \
                 add `grants = [...]` to its [[plugin]] table if it should have it",
                plugin.id(),
                refused.join(", ")
            );
            // The built-ins ask for everything they can use when configured
            // to; that is expected, not a warning.
            if builtin_grants(plugin.name()).is_some() {
                tracing::info!("{note}");
            } else {
                tracing::warn!("{note}");
            }
        }
        if let Some(l) = &limits {
            let ceiling = runtime.config().max_memory_bytes;
            if l.memory_bytes > ceiling {
                return Err(JobError::Limits {
                    name: name.to_string(),
                    reason: format!(
                        "limits.memory_bytes = {} is above the runtime's ceiling of {ceiling} bytes",
                        l.memory_bytes
                    ),
                });
            }
        }
        plugins.push((
            name.to_string(),
            PluginUse {
                name: name.to_string(),
                plugin: plugin.into(),
                config,
                grants,
                limits,
                synthesises: declared.is_some_and(|d| d.synthesises),
            },
        ));
    }
    Ok(plugins)
}

/// A spec task as the scheduler runs it, for `question`.
fn job_task(t: &TaskSection, question: &str, caps: &Caps) -> JobTask {
    JobTask {
        id: t.id.clone(),
        role: t.role.clone(),
        verifiers: t.verifiers.clone(),
        voter: t.voter.clone(),
        prompt: t
            .prompt
            .as_deref()
            .map(|p| p.replace("{question}", question))
            .unwrap_or_else(|| question.to_string()),
        answer_kind: answer_kind(&t.answer_kind).expect("checked at load"),
        replicas: t.replicas,
        max_samples: t.max_samples.unwrap_or(t.replicas),
        max_rounds: t.max_rounds,
        debate_rounds: t.debate_rounds,
        retries: t.retries,
        limits: Limits {
            max_tokens: t.max_tokens,
            max_cost: t.max_cost,
            max_wall: t.max_wall,
            max_calls: Some(t.max_calls.unwrap_or(caps.model.calls_per_task)),
        },
        depends_on: t.depends_on.clone(),
        subtasks: t.subtasks.as_ref().map(|s| SubtaskDefaults {
            role: s.role.clone(),
            verifiers: s.verifiers.clone(),
            voter: s.voter.clone(),
            replicas: s.replicas,
            answer_kind: answer_kind(&s.answer_kind).expect("checked at load"),
        }),
    }
}

/// Runs the scheduler's tasks on a prepared team's plugins and nodes.
struct TeamExecutor {
    runtime: Arc<PluginRuntime>,
    router: Arc<Router>,
    plugins: Arc<Vec<(String, PluginUse)>>,
    run_id: String,
    gold: Option<String>,
    bus: Arc<Bus>,
    observer: Arc<dyn Observer>,
    recorded: Option<Arc<Recorded>>,
    caps: Arc<Caps>,
    roles: Arc<[String]>,
    /// The run's span: each task's is a child of it (tasks run as tokio
    /// tasks of their own, which do not inherit the current span).
    span: tracing::Span,
    remote: Option<Remote>,
}

impl TeamExecutor {
    /// The team for one task: its role, verifiers and voter, loaded.
    fn team_for(&self, task: &JobTask) -> Result<Team, String> {
        let get = |name: &str| {
            self.plugins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    format!("plugin `{name}` is not part of this team; declare it with [[plugin]]")
                })
        };
        Ok(Team {
            runtime: self.runtime.clone(),
            router: self.router.clone(),
            remote: self.remote.clone(),
            role: get(&task.role)?,
            verifiers: task
                .verifiers
                .iter()
                .map(|v| get(v))
                .collect::<Result<_, _>>()?,
            voter: get(&task.voter)?,
        })
    }
}

impl Executor for TeamExecutor {
    fn execute(
        self: Arc<Self>,
        task: Arc<JobTask>,
        inputs: Vec<(String, String)>,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, TaskResult> {
        let span =
            crate::otel::task_span(&self.span, &task.id, &task.role, &task.voter, task.replicas);
        let on = span.clone();
        let work = async move {
            let team = match self.team_for(&task) {
                Ok(t) => t,
                Err(why) => return TaskResult::not_run(StopReason::Failed(why)),
            };
            let spec = TaskSpec {
                id: task.id.clone(),
                prompt: task.prompt.clone(),
                answer_kind: task.answer_kind,
                gold: self.gold.clone(),
                checker: None,
                replicas: task.replicas,
                max_samples: task.max_samples,
                max_rounds: task.max_rounds,
                debate_rounds: task.debate_rounds,
                retries: task.retries,
                inputs,
            };
            let ctx = TaskContext {
                bus: self.bus.clone(),
                meter: meter.clone(),
                observer: self.observer.clone(),
                recorded: self.recorded.clone(),
                caps: self.caps.clone(),
                roles: self.roles.clone(),
            };
            let run = team.run_task_in(&self.run_id, &spec, &ctx);
            let result = match meter.deadline() {
                Some((at, why)) => match tokio::time::timeout_at(at, run).await {
                    Ok(r) => r,
                    Err(_) => {
                        let mut r = TaskResult::not_run(StopReason::BudgetExhausted(why));
                        (r.tokens, r.cost) = meter.used();
                        r
                    }
                },
                None => run.await,
            };
            // The scheduler reports the decision once what led to it is
            // safe (`Observer::flushed`).
            result
        };
        Box::pin(
            async move {
                // A copy of a straggling task that lost is aborted here.
                let open = crate::otel::Unfinished::new(&on);
                let result = work.await;
                open.finish();
                crate::otel::record_task(&on, &result);
                result
            }
            .instrument(span),
        )
    }
}

/// A run id: time-ordered, and unique in one data directory: the time,
/// the process and a counter within the process (many runs start in the
/// same millisecond on a server).
pub fn new_run_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("run-{}-{:x}-{n}", now.as_millis(), std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_started_together_differ() {
        let ids: std::collections::BTreeSet<String> =
            (0..1000).map(|_| super::new_run_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
