//! Benchmarks that run inside one process and report numbers, so results
//! can be compared with a baseline measured in the same run
//! (`conclave bench ...`; see BENCHMARKS.md).
//!
//! Only measuring lives here; the CLI prints.

pub mod amdahl;
pub mod chaos;
pub mod consensus;
pub mod embedded;
pub mod failover;
pub mod index;
pub mod journal;
pub mod languages;
pub mod load;
pub mod reexecute;
pub mod router;
pub mod serve;
pub mod team;
pub mod workers;

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

/// CPU time the process has used (user and system).
pub fn cpu_time() -> Duration {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let t = |tv: libc::timeval| {
                Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
            };
            return t(u.ru_utime) + t(u.ru_stime);
        }
    }
    Duration::ZERO
}

/// CPU time the process's threads named `name` (as the kernel shortens
/// names, to 15 bytes) have used, from `/proc/self/task/*/schedstat`
/// (nanoseconds on a CPU); zero where there is no such file.
pub fn thread_cpu_time(name: &str) -> Duration {
    let short: String = name.chars().take(15).collect();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != short {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

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
    /// epoch deadlines, full checks of the output; a contract 0.1 voter,
    /// every ballot copied into the guest whole.
    pub runtime: Latency,
    /// The same way with a contract 0.2 voter: the ballot box (answers and
    /// verifier names once, flat lists of numbers), texts left in the host.
    pub runtime_v2: Latency,
    /// Decisions per second with `concurrency` calls in flight on all cores.
    pub concurrent_per_sec: f64,
    pub concurrency: usize,
    pub pooling: bool,
    /// Mean time of each phase of a call: new store, instantiate, the call
    /// itself (arguments in, guest work, result out), dropping the store;
    /// 0.1 voter.
    pub phases: [Duration; 4],
    /// The same for the 0.2 voter (its ballot box is built in "new store").
    pub phases_v2: [Duration; 4],
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
        clock: None,
        tape: None,
        log: Default::default(),
    };
    StoreState::new(
        WasiCtx::builder().build(),
        setup,
        CappedPipe::new(1024),
        CappedPipe::new(1024),
    )
}

/// Measures one voter call on `ballots` ballots, fresh instance each time,
/// `iterations` calls each: a contract 0.1 voter (`voter_path`) the naive way
/// and this runtime's way, and a contract 0.2 voter (`v2_path`, the same
/// policy) this runtime's way, alternating in rounds so that drift hits all
/// alike; then the 0.2 voter's throughput with `concurrency` calls in flight.
pub async fn voter_calls(
    voter_path: &Path,
    v2_path: &Path,
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

    // This runtime's way, both contracts.
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig {
        cache_dir: None,
        ..Default::default()
    })?);
    let plugin = rt.load_bytes(bytes, voter_path).await?;
    let v2_bytes = std::fs::read(v2_path).map_err(|source| PluginError::Io {
        path: v2_path.into(),
        source,
    })?;
    let v2 = rt.load_bytes(v2_bytes, v2_path).await?;
    for (p, want) in [(&plugin, "0.1"), (&v2, "0.2")] {
        if p.contract() != want {
            return Err(PluginError::Engine(format!(
                "{} is a contract {} voter; this benchmark wants a {want} one there",
                p.path().display(),
                p.contract()
            )));
        }
    }
    let shared = Arc::new(ballots_v.clone());
    let inv = Invocation::default();
    for _ in 0..iterations / 10 + 1 {
        rt.tally_shared(&plugin, &inv, &task, &shared).await?;
        rt.tally_shared(&v2, &inv, &task, &shared).await?;
    }
    let mut ours = Vec::with_capacity(iterations);
    let mut ours_v2 = Vec::with_capacity(iterations);
    let round = 1000;
    for start in (0..iterations).step_by(round) {
        let n = round.min(iterations - start);
        for (p, out) in [(&plugin, &mut ours), (&v2, &mut ours_v2)] {
            for _ in 0..n {
                let t = Instant::now();
                rt.tally_shared(p, &inv, &task, &shared).await?;
                out.push(t.elapsed());
            }
        }
    }

    let (mut phases, mut phases_v2) = ([Duration::ZERO; 4], [Duration::ZERO; 4]);
    for _ in 0..iterations {
        for (p, acc) in [(&plugin, &mut phases), (&v2, &mut phases_v2)] {
            let (d, _) = rt.tally_phases(p, &inv, &task, &shared).await?;
            for (a, d) in acc.iter_mut().zip(d) {
                *a += d;
            }
        }
    }
    let [phases, phases_v2] = [phases, phases_v2].map(|p| p.map(|d| d / iterations.max(1) as u32));

    // Throughput with many calls in flight on a multi-threaded runtime.
    let per_task = (iterations / concurrency.max(1)).max(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (rt, plugin, task, shared) = (rt.clone(), v2.clone(), task.clone(), shared.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                rt.tally_shared(&plugin, &Invocation::default(), &task, &shared)
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
        runtime_v2: Latency::of(ours_v2),
        concurrent_per_sec,
        concurrency,
        pooling: rt.is_pooling(),
        phases,
        phases_v2,
    })
}
