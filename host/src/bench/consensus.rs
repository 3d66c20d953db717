//! The live consensus loop's latency, in virtual time: a 5-replica
//! majority team that decides early and hedges late replicas, the same
//! team waiting for every replica (`decide = "all"`, the loop as it was),
//! and one sample, on sim nodes whose latencies are resampled from the
//! paper's measured model calls. Tokio's clock is paused, so the sim
//! nodes' sleeps cost no real time and the latencies are exact.
//!
//! Only measuring lives here; the CLI prints.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::model::latency::LatencySpec;
use crate::model::router::NodeHandle;
use crate::model::sim::{SimBackend, SimConfig};
use crate::model::{Router, RouterConfig};
use crate::plugin::{AnswerKind, Grants, PluginRuntime, RuntimeConfig};
use crate::team::caps::Caps;
use crate::team::consensus::{
    ConsensusConfig, Decide, PluginUse, ReplicaHedge, StopReason, TaskContext, TaskSpec, Team,
};
use crate::team::events::Event;

/// What to run.
#[derive(Clone, Debug)]
pub struct ConsensusBench {
    /// The built-in plugins' folder.
    pub plugins: std::path::PathBuf,
    /// `llm_call_latencies.csv`.
    pub latencies: std::path::PathBuf,
    /// Models (substrings of the CSV's `model` column).
    pub models: Vec<String>,
    pub items: usize,
    /// Each sample's chance of the right answer.
    pub accuracy: f64,
    /// Sim nodes the team spreads its replicas over.
    pub nodes: usize,
    pub seed: u64,
    /// The early team's hedge quantile (the default team's is 0.9).
    pub hedge_quantile: f64,
}

/// A quantile with its 95% interval (order statistics).
#[derive(Clone, Debug, Serialize)]
pub struct Quantile {
    pub secs: f64,
    pub low: f64,
    pub high: f64,
}

/// One team's numbers on one model's latencies.
#[derive(Clone, Debug, Serialize)]
pub struct TeamRow {
    pub team: String,
    pub p50: Quantile,
    pub p95: Quantile,
    pub accuracy: f64,
    /// Wilson 95% interval.
    pub accuracy_low: f64,
    pub accuracy_high: f64,
    pub samples_per_item: f64,
    pub tokens_per_item: f64,
    /// Voter calls per item: how often the voter was asked.
    pub votes_per_item: f64,
    pub cancelled_per_item: f64,
    pub hedges_per_item: f64,
}

/// One model's rows and the goals.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub rows: Vec<TeamRow>,
    /// early p50 / single p50 (goal: at most 1.7).
    pub p50_ratio: f64,
    /// early p95 / single p95 (goal: at most 1).
    pub p95_ratio: f64,
    /// early accuracy minus wait-for-all accuracy, in points (goal: within 1).
    pub accuracy_gap_points: f64,
}

/// Runs the bench on a current-thread runtime of its own with the clock
/// paused (a paused clock needs one), on a thread of its own so that it
/// can be called from any runtime.
pub fn run(b: ConsensusBench) -> Result<Vec<ModelReport>, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(all_models(&b))
    })
    .join()
    .map_err(|_| "the bench thread panicked".to_string())?
}

async fn all_models(b: &ConsensusBench) -> Result<Vec<ModelReport>, String> {
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let mut out = Vec::new();
    for model in &b.models {
        let early = ConsensusConfig {
            decide: Decide::Early,
            hedge: ReplicaHedge {
                enabled: true,
                quantile: b.hedge_quantile,
                ..ReplicaHedge::default()
            },
        };
        let all = ConsensusConfig {
            decide: Decide::All,
            ..ConsensusConfig::default()
        };
        let mut rows = Vec::new();
        for (label, replicas, consensus) in [
            ("5 replicas, early decision + hedging", 5, early),
            ("5 replicas, wait for all", 5, all),
            ("1 sample", 1, all),
        ] {
            let team = solver_team(b, &rt, model).await?;
            rows.push(measure(b, &team, label, replicas, consensus).await);
        }
        let ratio = |f: fn(&TeamRow) -> f64| f(&rows[0]) / f(&rows[2]).max(1e-9);
        out.push(ModelReport {
            model: model.clone(),
            p50_ratio: ratio(|r| r.p50.secs),
            p95_ratio: ratio(|r| r.p95.secs),
            accuracy_gap_points: (rows[0].accuracy - rows[1].accuracy) * 100.0,
            rows,
        });
    }
    Ok(out)
}

/// The benchmarks' team: the built-in `solver` (granted `llm`), the
/// `answer-format` verifier and the `majority` voter, on `b.nodes` sim
/// nodes with `model`'s measured latencies.
pub(crate) async fn solver_team(
    b: &ConsensusBench,
    rt: &Arc<PluginRuntime>,
    model: &str,
) -> Result<Team, String> {
    let load = |name: &'static str, grants: Grants| {
        let rt = rt.clone();
        let file = b.plugins.join(format!("{name}.wasm"));
        async move {
            let plugin = rt
                .load_file(&file)
                .await
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok::<_, String>(PluginUse {
                name: name.to_string(),
                plugin: plugin.into(),
                config: String::new(),
                grants,
                limits: None,
                synthesises: false,
            })
        }
    };
    let llm = Grants {
        llm: true,
        ..Grants::default()
    };
    Ok(Team {
        runtime: rt.clone(),
        router: router(b, model)?,
        role: load("solver", llm).await?,
        verifiers: vec![load("answer-format", Grants::default()).await?],
        voter: load("majority", Grants::default()).await?,
        remote: None,
    })
}

/// `b.nodes` sim nodes with `model`'s measured latencies; a deadline far
/// past the data's tail, so no call is cut short.
fn router(b: &ConsensusBench, model: &str) -> Result<Arc<Router>, String> {
    let nodes = (0..b.nodes)
        .map(|i| {
            let cfg = SimConfig {
                accuracy: b.accuracy,
                distractors: 3,
                seed: b.seed + i as u64,
                latency: LatencySpec::Empirical {
                    csv: b.latencies.clone(),
                    model: model.to_string(),
                    scale: 1.0,
                },
                ..SimConfig::default()
            };
            SimBackend::new(&format!("sim-{i}"), cfg, Path::new("."))
                .map(|n| NodeHandle::new(Arc::new(n)))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = RouterConfig {
        deadline: Duration::from_secs(3600),
        // The node choice is seeded too, so that a run is repeatable.
        seed: Some(b.seed),
        ..RouterConfig::default()
    };
    Ok(Arc::new(Router::new(nodes, config)))
}

async fn measure(
    b: &ConsensusBench,
    team: &Team,
    label: &str,
    replicas: u32,
    consensus: ConsensusConfig,
) -> TeamRow {
    let votes = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let hedges = Arc::new(AtomicU64::new(0));
    let (v, c, h) = (votes.clone(), cancelled.clone(), hedges.clone());
    let observer = move |_: &str, e: &Event| {
        let n = match e {
            Event::Vote { .. } => &v,
            Event::ReplicaCancelled { .. } => &c,
            Event::ReplicaHedged { .. } => &h,
            _ => return,
        };
        n.fetch_add(1, Ordering::Relaxed);
    };
    let ctx = TaskContext {
        observer: Arc::new(observer),
        caps: Arc::new(Caps {
            consensus,
            ..Caps::default()
        }),
        ..TaskContext::standalone()
    };
    let (mut times, mut right, mut samples, mut tokens) = (Vec::new(), 0usize, 0u64, 0u64);
    for i in 0..b.items {
        let (spec, gold) = item(i, replicas);
        // Each item its own meter, so tokens are per item.
        let ctx = TaskContext {
            meter: crate::team::budget::Meter::job(Default::default()),
            ..ctx.clone()
        };
        let start = tokio::time::Instant::now();
        let r = team.run_task_in("bench-consensus", &spec, &ctx).await;
        times.push(start.elapsed().as_secs_f64());
        right += (r.stop == StopReason::Decided && r.answer.as_deref() == Some(&gold)) as usize;
        samples += u64::from(r.samples);
        tokens += r.tokens;
    }
    let n = b.items.max(1) as f64;
    let (low, high) = crate::eval::wilson(right, b.items);
    TeamRow {
        team: label.to_string(),
        p50: quantile(&mut times, 0.50),
        p95: quantile(&mut times, 0.95),
        accuracy: right as f64 / n,
        accuracy_low: low,
        accuracy_high: high,
        samples_per_item: samples as f64 / n,
        tokens_per_item: tokens as f64 / n,
        votes_per_item: votes.load(Ordering::Relaxed) as f64 / n,
        cancelled_per_item: cancelled.load(Ordering::Relaxed) as f64 / n,
        hedges_per_item: hedges.load(Ordering::Relaxed) as f64 / n,
    }
}

/// The benchmarks' `i`-th question (a sum of two small numbers) for a
/// task of `replicas` replicas, and its answer.
pub(crate) fn item(i: usize, replicas: u32) -> (TaskSpec, String) {
    let (x, y) = (i % 97 + 3, i % 89 + 5);
    let gold = (x + y).to_string();
    let spec = TaskSpec {
        gold: Some(gold.clone()),
        replicas,
        max_samples: replicas,
        ..TaskSpec::new(
            &format!("item-{i}"),
            &format!("What is {x} + {y}?"),
            AnswerKind::Number,
        )
    };
    (spec, gold)
}

/// Quantile `q` of `xs`, with the 95% interval of the order statistics
/// around it (rank n·q ± 1.96·√(n·q·(1−q))).
pub(crate) fn quantile(xs: &mut [f64], q: f64) -> Quantile {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return Quantile {
            secs: 0.0,
            low: 0.0,
            high: 0.0,
        };
    }
    let at = |r: f64| xs[(r.max(0.0) as usize).min(n - 1)];
    let half = 1.96 * (n as f64 * q * (1.0 - q)).sqrt();
    Quantile {
        secs: at(n as f64 * q),
        low: at(n as f64 * q - half),
        high: at(n as f64 * q + half),
    }
}
