//! Benchmarks that run inside one process and report numbers, so results
//! can be compared with a baseline measured in the same run
//! (`conclave bench ...`; see BENCHMARKS.md).
//!
//! Only measuring lives here; the CLI prints.

pub mod amdahl;
pub mod consensus;
pub mod embedded;
pub mod journal;
pub mod router;
pub mod serve;
pub mod team;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::WasiCtx;

use crate::plugin::bindings::voter;
use crate::plugin::imports::{CallSetup, StoreState};
use crate::plugin::output::CappedPipe;
use crate::plugin::{
    AnswerKind, Ballot, CallInfo, Candidate, Grants, Invocation, PluginError, PluginRuntime,
    RuntimeConfig, SandboxLimits, Task, Verdict,
};

/// Latency percentiles of one way of calling.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len().max(1);
        let at = |q: f64| {
            samples
                .get(((n as f64 * q) as usize).min(n - 1))
                .copied()
                .unwrap_or_default()
        };
        Latency {
            calls: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            mean: samples.iter().sum::<Duration>() / n as u32,
        }
    }
}

/// Result of [`voter_calls`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct VoterCallReport {
    pub ballots: usize,
    /// New engine store per call, no pooling, fuel metering on, instantiation
    /// through the linker each time: the first prototype's way.
    pub naive: Latency,
    /// This runtime's way: pooling, copy-on-write images, `InstancePre`,
    /// epoch deadlines, full checks of the output.
    pub runtime: Latency,
    /// Decisions per second with `concurrency` calls in flight on all cores.
    pub concurrent_per_sec: f64,
    pub concurrency: usize,
    pub pooling: bool,
    /// Mean time of each phase of a call: new store, instantiate, the call
    /// itself (arguments in, guest work, result out), dropping the store.
    pub phases: [Duration; 4],
}

/// 16 realistic ballots: a short reasoning text, one verdict each.
pub fn sample_ballots(n: usize) -> Vec<Ballot> {
    (0..n)
        .map(|i| {
            let answer = ["42", "42", "41", "42", "40"][i % 5].to_string();
            Ballot {
                candidate: Candidate {
                    replica: i as u32,
                    node: format!("node-{}", i % 3),
                    text: format!("Six groups of seven make {answer}. Checking: 7+7+7+7+7+7.\nAnswer: {answer}"),
                    answer,
                    confidence: Some(0.5 + (i % 5) as f64 / 10.0),
                    ranking: vec![],
                },
                verdicts: vec![Verdict {
                    verifier: "answer-format".into(),
                    pass: true,
                    score: 1.0,
                    reason: "number answer found".into(),
                }],
            }
        })
        .collect()
}

/// A bench task.
pub fn sample_task() -> Task {
    Task {
        id: "bench".into(),
        run_id: "bench".into(),
        prompt: "What is 6 * 7?".into(),
        answer_kind: AnswerKind::Number,
        round: 0,
        replica: 0,
        replicas: 16,
        feedback: vec![],
        config: "{}".into(),
        checker: None,
    }
}

fn naive_state() -> StoreState {
    let setup = CallSetup {
        limits: SandboxLimits::default(),
        memory_cap: 64 << 20,
        grants: Grants::default(),
        services: None,
        info: CallInfo::default(),
    };
    StoreState::new(
        WasiCtx::builder().build(),
        setup,
        CappedPipe::new(1024),
        CappedPipe::new(1024),
    )
}

/// Measures one voter call on `ballots` ballots, fresh instance each time,
/// the naive way and this runtime's way, `iterations` calls each, then the
/// throughput with `concurrency` calls in flight.
pub async fn voter_calls(
    voter_path: &Path,
    iterations: usize,
    ballots: usize,
    concurrency: usize,
) -> Result<VoterCallReport, PluginError> {
    let bytes = std::fs::read(voter_path).map_err(|source| PluginError::Io {
        path: voter_path.into(),
        source,
    })?;
    let task = sample_task();
    let ballots_v = sample_ballots(ballots);

    // The naive way.
    let mut cfg = Config::new();
    cfg.consume_fuel(true);
    let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let component = Component::new(&engine, &bytes).map_err(|e| PluginError::Compile {
        path: voter_path.into(),
        reason: format!("{e:#}"),
    })?;
    let mut linker: Linker<StoreState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    voter::Voter::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
        &mut linker,
        |s| s,
    )
    .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let naive_call = || async {
        let mut store = Store::new(&engine, naive_state());
        store.set_fuel(u64::MAX / 2).expect("fuel is on");
        let v = voter::Voter::instantiate_async(&mut store, &component, &linker).await?;
        v.call_tally(&mut store, &task, &ballots_v).await
    };
    let engine_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
    for _ in 0..iterations / 10 + 1 {
        naive_call().await.map_err(engine_err)?.ok();
    }
    let mut naive = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        naive_call().await.map_err(engine_err)?.ok();
        naive.push(t.elapsed());
    }

    // This runtime's way.
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig {
        cache_dir: None,
        ..Default::default()
    })?);
    let plugin = rt.load_bytes(bytes, voter_path).await?;
    let inv = Invocation::default();
    for _ in 0..iterations / 10 + 1 {
        rt.tally(&plugin, &inv, &task, &ballots_v).await?;
    }
    let mut ours = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        rt.tally(&plugin, &inv, &task, &ballots_v).await?;
        ours.push(t.elapsed());
    }

    let mut phases = [Duration::ZERO; 4];
    for _ in 0..iterations {
        let p = rt.tally_phases(&plugin, &inv, &task, &ballots_v).await?;
        for (acc, d) in phases.iter_mut().zip(p) {
            *acc += d;
        }
    }
    let phases = phases.map(|d| d / iterations.max(1) as u32);

    // Throughput with many calls in flight on a multi-threaded runtime.
    let per_task = (iterations / concurrency.max(1)).max(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (rt, plugin, task, ballots_v) =
            (rt.clone(), plugin.clone(), task.clone(), ballots_v.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                rt.tally(&plugin, &Invocation::default(), &task, &ballots_v)
                    .await?;
            }
            Ok::<_, PluginError>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| PluginError::Engine(e.to_string()))??;
    }
    let total = per_task * concurrency.max(1);
    let concurrent_per_sec = total as f64 / start.elapsed().as_secs_f64();

    Ok(VoterCallReport {
        ballots,
        naive: Latency::of(naive),
        runtime: Latency::of(ours),
        concurrent_per_sec,
        concurrency,
        pooling: rt.is_pooling(),
        phases,
    })
}
