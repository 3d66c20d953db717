//! Team benchmarks on sim nodes: tokens saved by adaptive consistency, and
//! the orchestration's own throughput.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_sdk::answer::{self, Kind};
use serde::Serialize;

use crate::model::router::NodeHandle;
use crate::model::sim::{SimBackend, SimConfig};
use crate::model::{Router, RouterConfig};
use crate::plugin::{AnswerKind, Grants, PluginRuntime, RuntimeConfig};
use crate::team::budget::{Limits, Meter};
use crate::team::consensus::{PluginUse, StopReason, TaskContext, TaskResult, TaskSpec, Team};
use crate::team::events::{Event, Observer};
use crate::team::scheduler::{self, Executor, JobTask};

/// One policy's score on a data set.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyScore {
    pub policy: String,
    pub items: usize,
    pub accuracy: f64,
    pub samples_per_item: f64,
    pub no_decision: usize,
}

/// Result of [`adaptive`].
#[derive(Clone, Debug, Serialize)]
pub struct AdaptiveReport {
    pub fixed: PolicyScore,
    pub adaptive: PolicyScore,
    /// fixed samples / adaptive samples.
    pub samples_saved: f64,
}

async fn load(
    rt: &PluginRuntime,
    dir: &Path,
    name: &str,
    config: &str,
    grants: Grants,
) -> Result<PluginUse, String> {
    let plugin = rt
        .load_file(&dir.join(format!("{name}.wasm")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(PluginUse {
        name: name.to_string(),
        plugin: plugin.into(),
        config: config.into(),
        grants,
        limits: None,
        synthesises: false,
    })
}

fn sim_router(accuracy: f64) -> Result<Arc<Router>, String> {
    let cfg = SimConfig {
        accuracy,
        seed: 11,
        ..Default::default()
    };
    let sim = SimBackend::new("sim", cfg, Path::new(".")).map_err(|e| e.to_string())?;
    Ok(Arc::new(Router::new(
        vec![NodeHandle::new(Arc::new(sim))],
        RouterConfig::default(),
    )))
}

/// Reads `question`/`answer` items from a JSONL file.
pub fn read_items(path: &Path, limit: usize) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            let q = v["question"]
                .as_str()
                .ok_or_else(|| format!("{}:{}: no `question`", path.display(), i + 1))?;
            let a = match &v["answer"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok((q.to_string(), a))
        })
        .collect()
}

/// A task context whose voter is asked only once every replica of a draw
/// has reported (`decide = "all"`): these benchmarks compare stopping
/// rules, so a fixed vote of `cap` must really draw `cap` samples.
fn every_ballot() -> crate::team::consensus::TaskContext {
    let mut ctx = crate::team::consensus::TaskContext::standalone();
    let mut caps = crate::team::caps::Caps::default();
    caps.consensus.decide = crate::team::consensus::Decide::All;
    ctx.caps = Arc::new(caps);
    ctx
}

/// A fixed vote of `cap` samples (majority) against adaptive sampling
/// (quorum: stop once the vote is decisive, at most `cap`) on the items of
/// `data`, on a sim node of the given accuracy. `quorum_config` is the
/// adaptive voter's config; `{cap}` in it stands for `cap`.
pub async fn adaptive(
    plugins: &Path,
    data: &Path,
    accuracy: f64,
    cap: u32,
    limit: usize,
    quorum_config: &str,
) -> Result<AdaptiveReport, String> {
    let items = read_items(data, limit)?;
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let solver = load(
        &rt,
        plugins,
        "solver",
        "",
        Grants {
            llm: true,
            ..Grants::default()
        },
    )
    .await?;
    let check = load(&rt, plugins, "answer-format", "", Grants::default()).await?;
    let mut scores = Vec::new();
    for (policy, voter, config, first) in [
        (
            "fixed vote of the cap (majority)",
            "majority",
            String::new(),
            cap,
        ),
        (
            "adaptive (quorum, stop when decisive)",
            "quorum",
            quorum_config.replace("{cap}", &cap.to_string()),
            2,
        ),
    ] {
        let team = Team {
            runtime: rt.clone(),
            router: sim_router(accuracy)?,
            role: solver.clone(),
            verifiers: vec![check.clone()],
            voter: load(&rt, plugins, voter, &config, Grants::default()).await?,
            remote: None,
        };
        let (mut right, mut samples, mut undecided) = (0usize, 0u32, 0usize);
        for (i, (q, gold)) in items.iter().enumerate() {
            let spec = TaskSpec {
                id: format!("item-{i}"),
                prompt: q.clone(),
                answer_kind: AnswerKind::Number,
                gold: Some(gold.clone()),
                checker: None,
                replicas: first,
                max_samples: cap,
                max_rounds: 1,
                debate_rounds: 0,
                retries: 1,
                inputs: vec![],
            };
            let r = team
                .run_task_in("bench-adaptive", &spec, &every_ballot())
                .await;
            samples += r.samples;
            match (&r.stop, &r.answer) {
                (StopReason::Decided, Some(a)) if answer::same(a, gold, Kind::Number) => right += 1,
                (StopReason::Decided, _) => {}
                _ => undecided += 1,
            }
        }
        scores.push(PolicyScore {
            policy: policy.into(),
            items: items.len(),
            accuracy: right as f64 / items.len().max(1) as f64,
            samples_per_item: samples as f64 / items.len().max(1) as f64,
            no_decision: undecided,
        });
    }
    let adaptive = scores.pop().expect("two policies");
    let fixed = scores.pop().expect("two policies");
    Ok(AdaptiveReport {
        samples_saved: fixed.samples_per_item / adaptive.samples_per_item.max(1e-9),
        fixed,
        adaptive,
    })
}

/// One policy at one accuracy in [`sweep`], with 95% intervals.
#[derive(Clone, Debug, Serialize)]
pub struct SweepScore {
    pub accuracy_of_node: f64,
    pub score: PolicyScore,
    /// Wilson interval of the accuracy.
    pub accuracy_interval: (f64, f64),
    /// Normal interval of the mean samples per item.
    pub samples_interval: (f64, f64),
}

/// A voter to score in [`sweep`]: a name for the report, the built-in, its
/// config (`{cap}` stands for the cap) and the samples it starts with.
#[derive(Clone, Debug)]
pub struct SweepPolicy {
    pub label: String,
    pub voter: String,
    pub config: String,
    pub first: u32,
}

/// The Wilson score interval (95%) of `k` successes in `n`: honest near 0
/// and 1, where the normal interval is not.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n, p) = (1.96f64, n as f64, k as f64 / n as f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    ((c - h).max(0.0), (c + h).min(1.0))
}

/// Each policy on `items` items (the data set's questions, cycled) on two
/// sim nodes of each accuracy, cap `cap`. Every policy gets fresh nodes
/// with the same seeds, so the draws repeat from policy to policy.
pub async fn sweep(
    plugins: &Path,
    data: &Path,
    accuracies: &[f64],
    items: usize,
    cap: u32,
    policies: &[SweepPolicy],
) -> Result<Vec<SweepScore>, String> {
    let questions = read_items(data, usize::MAX)?;
    if questions.is_empty() {
        return Err(format!("{}: no items", data.display()));
    }
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let solver = load(
        &rt,
        plugins,
        "solver",
        "",
        Grants {
            llm: true,
            ..Grants::default()
        },
    )
    .await?;
    let check = load(&rt, plugins, "answer-format", "", Grants::default()).await?;
    let mut out = Vec::new();
    for &accuracy in accuracies {
        for p in policies {
            let config = p.config.replace("{cap}", &cap.to_string());
            // Two nodes of the same accuracy, as a team would have.
            let nodes = [11, 12]
                .into_iter()
                .map(|seed| {
                    let cfg = SimConfig {
                        accuracy,
                        seed,
                        ..Default::default()
                    };
                    SimBackend::new(&format!("sim-{seed}"), cfg, Path::new("."))
                        .map(|b| NodeHandle::new(Arc::new(b)))
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let team = Team {
                runtime: rt.clone(),
                router: Arc::new(Router::new(nodes, RouterConfig::default())),
                role: solver.clone(),
                verifiers: vec![check.clone()],
                voter: load(&rt, plugins, &p.voter, &config, Grants::default()).await?,
                remote: None,
            };
            let (mut right, mut undecided) = (0usize, 0usize);
            let mut samples: Vec<f64> = Vec::with_capacity(items);
            for i in 0..items {
                let (q, gold) = &questions[i % questions.len()];
                let spec = TaskSpec {
                    id: format!("item-{i}"),
                    prompt: q.clone(),
                    answer_kind: AnswerKind::Number,
                    gold: Some(gold.clone()),
                    checker: None,
                    replicas: p.first.min(cap),
                    max_samples: cap,
                    max_rounds: 1,
                    debate_rounds: 0,
                    retries: 1,
                    inputs: vec![],
                };
                let r = team
                    .run_task_in("bench-sweep", &spec, &every_ballot())
                    .await;
                samples.push(r.samples as f64);
                match (&r.stop, &r.answer) {
                    (StopReason::Decided, Some(a)) if answer::same(a, gold, Kind::Number) => {
                        right += 1
                    }
                    (StopReason::Decided, _) => {}
                    _ => undecided += 1,
                }
            }
            let n = items.max(1) as f64;
            let mean = samples.iter().sum::<f64>() / n;
            let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            let half = 1.96 * (var / n).sqrt();
            out.push(SweepScore {
                accuracy_of_node: accuracy,
                score: PolicyScore {
                    policy: p.label.clone(),
                    items,
                    accuracy: right as f64 / n,
                    samples_per_item: mean,
                    no_decision: undecided,
                },
                accuracy_interval: wilson(right, items),
                samples_interval: (mean - half, mean + half),
            });
        }
    }
    Ok(out)
}

/// Result of [`throughput`].
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub tasks: usize,
    pub concurrency: usize,
    pub wall: Duration,
    pub tasks_per_second: f64,
    /// Plugin calls per task (roles, verifiers, voter).
    pub plugin_calls_per_task: usize,
    /// The same tasks as one job of independent tasks on the scheduler
    /// (`concurrency` tasks at once), with the events heard by an
    /// observer: what scheduling, budgets and events add.
    pub scheduled_wall: Duration,
    pub scheduled_tasks_per_second: f64,
    /// Scheduled throughput over direct throughput.
    pub scheduled_ratio: f64,
}

/// Runs scheduler tasks on one team, counting events.
struct BenchExecutor {
    team: Arc<Team>,
    ctx: TaskContext,
}

impl Executor for BenchExecutor {
    fn execute(
        self: Arc<Self>,
        task: Arc<JobTask>,
        inputs: Vec<(String, String)>,
        meter: Arc<Meter>,
    ) -> futures::future::BoxFuture<'static, TaskResult> {
        Box::pin(async move {
            let mut spec = TaskSpec::new(&task.id, &task.prompt, task.answer_kind);
            spec.replicas = task.replicas;
            spec.max_samples = task.max_samples;
            spec.inputs = inputs;
            spec.gold = Some(
                task.id
                    .trim_start_matches('t')
                    .parse::<u64>()
                    .map(|i| i + 1)
                    .unwrap_or(0)
                    .to_string(),
            );
            let ctx = TaskContext {
                meter,
                ..self.ctx.clone()
            };
            self.team.run_task_in("bench-scheduled", &spec, &ctx).await
        })
    }
}

/// Tasks per second through the whole pipeline (5 replicas of `solver`,
/// `answer-format` on each, `majority`) against a zero-latency sim node.
pub async fn throughput(
    plugins: &Path,
    tasks: usize,
    concurrency: usize,
) -> Result<ThroughputReport, String> {
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let team = Arc::new(Team {
        runtime: rt.clone(),
        router: sim_router(0.8)?,
        role: load(
            &rt,
            plugins,
            "solver",
            "",
            Grants {
                llm: true,
                ..Grants::default()
            },
        )
        .await?,
        verifiers: vec![load(&rt, plugins, "answer-format", "", Grants::default()).await?],
        voter: load(&rt, plugins, "majority", "", Grants::default()).await?,
        remote: None,
    });
    let spec = |i: usize| TaskSpec {
        id: format!("t{i}"),
        prompt: format!("What is {i} + 1?"),
        answer_kind: AnswerKind::Number,
        gold: Some((i + 1).to_string()),
        checker: None,
        replicas: 5,
        max_samples: 5,
        max_rounds: 1,
        debate_rounds: 0,
        retries: 1,
        inputs: vec![],
    };
    // Warm up.
    team.run_task("warm", &spec(0)).await;
    let start = Instant::now();
    let per = tasks.div_ceil(concurrency.max(1));
    let mut handles = Vec::new();
    for w in 0..concurrency.max(1) {
        let team = team.clone();
        handles.push(tokio::spawn(async move {
            for k in 0..per {
                team.run_task("bench", &spec(w * per + k)).await;
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())?;
    }
    let wall = start.elapsed();
    let done = per * concurrency.max(1);
    // The same tasks through the scheduler, as one job.
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = events.clone();
    let observer: Arc<dyn Observer> = Arc::new(move |_: &str, _: &Event| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let executor = Arc::new(BenchExecutor {
        team: team.clone(),
        ctx: TaskContext {
            observer: observer.clone(),
            ..TaskContext::standalone()
        },
    });
    let jobs: Vec<JobTask> = (0..done)
        .map(|i| JobTask {
            id: format!("t{i}"),
            role: "solver".into(),
            verifiers: vec!["answer-format".into()],
            voter: "majority".into(),
            prompt: format!("What is {i} + 1?"),
            answer_kind: AnswerKind::Number,
            replicas: 5,
            max_samples: 5,
            max_rounds: 1,
            debate_rounds: 0,
            retries: 1,
            limits: Limits::default(),
            depends_on: vec![],
            subtasks: None,
        })
        .collect();
    let start = Instant::now();
    let results = scheduler::run(
        "bench-scheduled",
        jobs,
        executor,
        Meter::job(Limits::default()),
        scheduler::Options {
            max_parallel_tasks: concurrency.max(1),
            ..Default::default()
        },
        tokio_util::sync::CancellationToken::new(),
        observer.as_ref(),
    )
    .await;
    let scheduled_wall = start.elapsed();
    let decided = results
        .iter()
        .filter(|(_, r)| r.stop == StopReason::Decided)
        .count();
    if decided * 10 < done * 9 {
        return Err(format!("only {decided} of {done} scheduled tasks decided"));
    }
    let tasks_per_second = done as f64 / wall.as_secs_f64();
    let scheduled_tasks_per_second = done as f64 / scheduled_wall.as_secs_f64();
    Ok(ThroughputReport {
        tasks: done,
        concurrency,
        wall,
        tasks_per_second,
        plugin_calls_per_task: 5 + 5 + 1,
        scheduled_wall,
        scheduled_tasks_per_second,
        scheduled_ratio: scheduled_tasks_per_second / tasks_per_second,
    })
}
