//! A team under load, in real time: many questions in flight at once to a
//! 5-replica majority team (deciding early with hedging, and waiting for
//! every replica) and to one sample, on sim nodes that replay the paper's
//! measured model latencies. Unlike `bench consensus` (virtual time, one
//! question at a time) this shows what the host itself costs when
//! thousands of replicas wait on models at once: instance slots, the
//! scheduler, the voter calls, memory.
//!
//! Each level keeps `in_flight` questions in flight (a closed loop: a
//! question that ends is replaced by the next) until `items` have ended,
//! for each of the three teams in turn, on one plugin runtime. What the
//! runtime did meanwhile (slots in use, replicas waiting on a model or for
//! admission, guest steps) is sampled every 10 ms.
//!
//! Only measuring lives here; the CLI prints.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::consensus::{item, quantile, solver_team, ConsensusBench, Quantile};
use crate::journal::sqlite::SqliteJournal;
use crate::journal::{Journal, Recorder};
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::team::caps::Caps;
use crate::team::consensus::{
    ConsensusConfig, Decide, ReplicaHedge, StopReason, TaskContext, Team,
};
use crate::team::events::{Event, Observer};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadBench {
    /// Plugins, latencies, model, nodes, accuracy, seed, hedge quantile
    /// (`items` there is unused).
    pub base: ConsensusBench,
    /// Questions in flight, one level each.
    pub levels: Vec<usize>,
    /// Questions per team and level: at least this many, and at least
    /// three times the level.
    pub items: usize,
    /// Instance slots of the plugin runtime.
    pub slots: u32,
    /// Durable re-execution on (the default) or off (a replica holds its
    /// instance while it waits: the runtime as it was).
    pub reexecute: bool,
    /// Journal every question as a run of its own in a SQLite journal (in
    /// a temporary folder), each decision durable before it is reported,
    /// as `serve` and `eval` do.
    pub journal: bool,
}

/// One team at one level.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub team: String,
    pub items: usize,
    pub p50: Quantile,
    pub p95: Quantile,
    pub accuracy: f64,
    /// Questions ended per second of wall time.
    pub per_sec: f64,
    pub wall_secs: f64,
    /// Replicas run per question (hedges included).
    pub samples_per_item: f64,
    /// Instance slots in use, at most.
    pub peak_running: u64,
    /// Replicas waiting on a model call with no instance, at most.
    pub peak_waiting_on_model: u64,
    /// Replicas in flight (admitted role calls), at most.
    pub peak_replicas: u64,
    /// Role calls that waited for admission, at most at once.
    pub peak_waiting_for_admission: u64,
    /// Guest steps (role and verifier calls begun) per replica: with
    /// re-execution a solver takes 2 (one more per model call) and the
    /// answer-format verifier 1; without, 1 and 1.
    pub steps_per_replica: f64,
    /// Resident memory of the process at most while the row ran, bytes.
    pub peak_rss_bytes: u64,
    /// CPU time of the process while the row ran, as a share of the
    /// machine's cores over the row's wall time.
    pub cpu_share: f64,
    /// Plugin calls that failed (`Busy` among them).
    pub plugin_failures: u64,
    /// With `journal`: records written per second, commits (syncs) per
    /// second, and how long a decision waited for its records to be
    /// durable (p50, p95, seconds).
    pub journal: Option<JournalLoad>,
}

/// The journal under load.
#[derive(Clone, Debug, Serialize)]
pub struct JournalLoad {
    pub records: u64,
    pub records_per_sec: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    pub flush_p50: f64,
    pub flush_p95: f64,
}

/// One level's rows and its ratios.
#[derive(Clone, Debug, Serialize)]
pub struct LevelReport {
    pub in_flight: usize,
    pub rows: Vec<LoadRow>,
    /// Early-deciding team's p50 over one sample's.
    pub p50_ratio: f64,
    /// Early-deciding team's p95 over one sample's.
    pub p95_ratio: f64,
    /// Early-deciding team's accuracy minus the wait-for-all team's, points.
    pub accuracy_gap_points: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub model: String,
    pub nodes: usize,
    pub slots: u32,
    pub reexecute: bool,
    pub max_replicas: u64,
    pub cores: usize,
    pub journal: bool,
    pub levels: Vec<LevelReport>,
}

/// Runs the levels on a multi-threaded runtime of its own (all cores).
pub fn run(b: LoadBench) -> Result<LoadReport, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(levels(&b))
    })
    .join()
    .map_err(|_| "the bench thread panicked".to_string())?
}

async fn levels(b: &LoadBench) -> Result<LoadReport, String> {
    let rt = Arc::new(
        PluginRuntime::new(RuntimeConfig {
            max_concurrent_calls: b.slots,
            reexecute: b.reexecute,
            ..RuntimeConfig::default()
        })
        .map_err(|e| e.to_string())?,
    );
    let model = b
        .base
        .models
        .first()
        .cloned()
        .unwrap_or_else(|| "gpt-5.2".into());
    let dir = std::env::temp_dir().join(format!(
        "conclave-bench-load-{}-{}",
        std::process::id(),
        crate::journal::now_ms()
    ));
    let journal = if b.journal {
        Some(SqliteJournal::open(&dir).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut out = Vec::new();
    for &level in &b.levels {
        let items = b.items.max(3 * level);
        let early = ConsensusConfig {
            decide: Decide::Early,
            hedge: ReplicaHedge {
                enabled: true,
                quantile: b.base.hedge_quantile,
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
            let team = Arc::new(solver_team(&b.base, &rt, &model).await?);
            let how = Load {
                label,
                replicas,
                consensus,
                in_flight: level,
                items,
                journal: journal.clone(),
            };
            rows.push(measure(&rt, &team, how).await);
        }
        let ratio = |f: fn(&LoadRow) -> f64| f(&rows[0]) / f(&rows[2]).max(1e-9);
        out.push(LevelReport {
            in_flight: level,
            p50_ratio: ratio(|r| r.p50.secs),
            p95_ratio: ratio(|r| r.p95.secs),
            accuracy_gap_points: (rows[0].accuracy - rows[1].accuracy) * 100.0,
            rows,
        });
    }
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(LoadReport {
        journal: b.journal,
        model,
        nodes: b.base.nodes,
        slots: b.slots,
        reexecute: b.reexecute,
        max_replicas: rt.load().max_replicas,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        levels: out,
    })
}

/// Peaks of the runtime's load and the process's memory, sampled.
#[derive(Default)]
struct Peaks {
    running: AtomicU64,
    waiting_on_model: AtomicU64,
    replicas: AtomicU64,
    admitting: AtomicU64,
    rss: AtomicU64,
}

/// One row's team and load.
struct Load<'a> {
    label: &'a str,
    replicas: u32,
    consensus: ConsensusConfig,
    in_flight: usize,
    items: usize,
    journal: Option<Arc<SqliteJournal>>,
}

/// Counts failures and records, and times how long a decision waits for
/// its records to be durable; hands the events to a recorder when there is
/// one.
struct Counted {
    recorder: Option<Arc<Recorder>>,
    failures: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
    flushes: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl Observer for Counted {
    fn event(&self, run: &str, e: &Event) {
        if matches!(e, Event::PluginFailure { .. }) {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = &self.recorder {
            self.records.fetch_add(1, Ordering::Relaxed);
            r.event(run, e);
        }
    }

    fn flushed(&self) -> futures::future::BoxFuture<'static, ()> {
        let Some(r) = &self.recorder else {
            return Box::pin(std::future::ready(()));
        };
        let (flush, times) = (r.flushed(), self.flushes.clone());
        Box::pin(async move {
            let began = Instant::now();
            flush.await;
            let took = began.elapsed().as_secs_f64();
            times.lock().unwrap_or_else(|p| p.into_inner()).push(took);
        })
    }
}

async fn measure(rt: &Arc<PluginRuntime>, team: &Arc<Team>, how: Load<'_>) -> LoadRow {
    let Load {
        label,
        replicas,
        consensus,
        in_flight,
        items,
        journal,
    } = how;
    let failures = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let flushes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let counted = {
        let (failures, records, flushes, journal) = (
            failures.clone(),
            records.clone(),
            flushes.clone(),
            journal.clone(),
        );
        move || -> Arc<dyn Observer> {
            Arc::new(Counted {
                recorder: journal
                    .as_ref()
                    .map(|j| Recorder::new(j.clone() as Arc<dyn Journal>)),
                failures: failures.clone(),
                records: records.clone(),
                flushes: flushes.clone(),
            })
        }
    };
    let commits0 = journal.as_ref().map_or(0, |j| j.commits());
    let ctx = TaskContext {
        observer: counted(),
        caps: Arc::new(Caps {
            consensus,
            ..Caps::default()
        }),
        ..TaskContext::standalone()
    };
    let peaks = Arc::new(Peaks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (rt, peaks, stop) = (rt.clone(), peaks.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let l = rt.load();
                peaks.running.fetch_max(l.running, Ordering::Relaxed);
                peaks
                    .waiting_on_model
                    .fetch_max(l.waiting_on_model, Ordering::Relaxed);
                peaks.replicas.fetch_max(l.replicas, Ordering::Relaxed);
                peaks
                    .admitting
                    .fetch_max(l.waiting_for_admission, Ordering::Relaxed);
                peaks.rss.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let steps0 = rt.load().steps;
    let cpu0 = super::cpu_time();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    let label_id = label.split(',').next().unwrap_or(label).replace(' ', "-");
    for _ in 0..in_flight.max(1) {
        let (team, ctx, next) = (team.clone(), ctx.clone(), next.clone());
        let (counted, label_id) = (counted.clone(), label_id.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break mine;
                }
                let (spec, gold) = item(i, replicas);
                let ctx = TaskContext {
                    meter: crate::team::budget::Meter::job(Default::default()),
                    observer: counted(),
                    ..ctx.clone()
                };
                let began = Instant::now();
                let run = format!("bench-load-{in_flight}-{label_id}-{i}");
                let r = team.run_task_in(&run, &spec, &ctx).await;
                // A decision is reported once what led to it is durable,
                // as a job's is.
                ctx.observer.flushed().await;
                let right = r.stop == StopReason::Decided && r.answer.as_deref() == Some(&gold);
                mine.push((began.elapsed().as_secs_f64(), right, r.samples));
            }
        }));
    }
    let mut results = Vec::with_capacity(items);
    for w in workers {
        results.extend(w.await.unwrap_or_default());
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = super::cpu_time().saturating_sub(cpu0).as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let steps = rt.load().steps - steps0;
    let journal = journal.map(|j| {
        let records = records.load(Ordering::Relaxed);
        let commits = j.commits().saturating_sub(commits0);
        let mut f = flushes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        JournalLoad {
            records,
            records_per_sec: records as f64 / wall.max(1e-9),
            commits,
            commits_per_sec: commits as f64 / wall.max(1e-9),
            flush_p50: quantile(&mut f, 0.50).secs,
            flush_p95: quantile(&mut f, 0.95).secs,
        }
    });
    let n = results.len().max(1) as f64;
    let samples: u64 = results.iter().map(|r| u64::from(r.2)).sum();
    let mut times: Vec<f64> = results.iter().map(|r| r.0).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    LoadRow {
        team: label.to_string(),
        items: results.len(),
        p50: quantile(&mut times, 0.50),
        p95: quantile(&mut times, 0.95),
        accuracy: results.iter().filter(|r| r.1).count() as f64 / n,
        per_sec: results.len() as f64 / wall.max(1e-9),
        wall_secs: wall,
        samples_per_item: samples as f64 / n,
        peak_running: peaks.running.load(Ordering::Relaxed),
        peak_waiting_on_model: peaks.waiting_on_model.load(Ordering::Relaxed),
        peak_replicas: peaks.replicas.load(Ordering::Relaxed),
        peak_waiting_for_admission: peaks.admitting.load(Ordering::Relaxed),
        steps_per_replica: steps as f64 / samples.max(1) as f64,
        peak_rss_bytes: peaks.rss.load(Ordering::Relaxed),
        cpu_share: cpu / (wall.max(1e-9) * cores),
        plugin_failures: failures.load(Ordering::Relaxed),
        journal,
    }
}

/// The process's resident memory now (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
