//! What durable re-execution costs: the compute a replica spends running
//! its code again up to each model call, and the memory a replica holds
//! while it waits on a model.
//!
//! Compute: each role is called many times in a row on a model stand-in
//! that answers at once, with re-execution on and off (the instance held
//! through the call), in the same process; the difference per model call is
//! what a step costs. Memory: `waiting` role calls are started on a model
//! stand-in that answers none of them until all are waiting, and the
//! process's resident memory is read before and while they wait.
//!
//! Only measuring lives here; the CLI prints.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::load::rss_bytes;
use crate::plugin::bindings::llm;
use crate::plugin::{
    AnswerKind, CallInfo, Grants, HostServices, Invocation, Outcome, Plugin, PluginRuntime,
    RuntimeConfig, Task,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct ReexecuteBench {
    /// The built-in plugins' folder (`solver`, `programmer`).
    pub plugins: PathBuf,
    /// The test fixtures' folder (`hostile-role`, whose `script` action
    /// makes as many model calls as asked).
    pub fixtures: PathBuf,
    pub iterations: usize,
    /// Replicas left waiting for the memory rows: Rust `solver`, Python
    /// `programmer`.
    pub waiting_rust: usize,
    pub waiting_python: usize,
}

/// One role's compute.
#[derive(Clone, Debug, Serialize)]
pub struct ComputeRow {
    pub role: String,
    pub model_calls: usize,
    /// Mean wall time of one role call, instance held throughout.
    pub straight_us: f64,
    /// Mean wall time of one role call run in steps.
    pub durable_us: f64,
    /// (durable − straight) / model calls.
    pub extra_us_per_model_call: f64,
}

/// One role's memory while its replicas wait.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRow {
    pub role: String,
    pub waiting: usize,
    pub rss_before: u64,
    pub rss_waiting: u64,
    /// (rss_waiting − rss_before) / waiting.
    pub bytes_per_waiting_replica: f64,
    /// Instance slots in use while they waited.
    pub running: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReexecuteReport {
    pub iterations: usize,
    pub compute: Vec<ComputeRow>,
    pub memory: Vec<MemoryRow>,
}

/// Runs both parts on a runtime of their own.
pub fn run(b: ReexecuteBench) -> Result<ReexecuteReport, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(all(&b))
    })
    .join()
    .map_err(|_| "the bench thread panicked".to_string())?
}

/// A model stand-in: answers `reply` to every call, at once or once
/// `gate` calls wait at the same time.
struct Answering {
    reply: String,
    gate: Option<(usize, AtomicUsize, tokio::sync::Notify)>,
}

#[async_trait::async_trait]
impl HostServices for Answering {
    async fn chat(
        &self,
        _call: &CallInfo,
        _request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        if let Some((n, waiting, open)) = &self.gate {
            let came = open.notified();
            if waiting.fetch_add(1, Ordering::SeqCst) + 1 < *n {
                came.await;
            }
        }
        Ok(llm::ChatResponse {
            text: self.reply.clone(),
            node: "stand-in".into(),
            prompt_tokens: 10,
            completion_tokens: 10,
        })
    }
}

fn task(config: &str) -> Task {
    Task {
        id: "t".into(),
        run_id: "bench-reexecute".into(),
        prompt: "What is 6 * 7?".into(),
        answer_kind: AnswerKind::Number,
        round: 0,
        replica: 0,
        replicas: 1,
        feedback: vec![],
        config: config.into(),
        checker: None,
    }
}

fn invocation(services: Arc<dyn HostServices>, replica: u32) -> Invocation {
    let mut inv = Invocation::new(
        Grants {
            llm: true,
            ..Grants::default()
        },
        Some(services),
    );
    inv.info.replica = replica;
    inv.info.run_id = "bench-reexecute".into();
    inv.info.task_id = "t".into();
    inv
}

const PROGRAM: &str = "```python\nprint(6 * 7)\n```";

async fn all(b: &ReexecuteBench) -> Result<ReexecuteReport, String> {
    let runtime = |reexecute: bool| {
        PluginRuntime::new(RuntimeConfig {
            reexecute,
            ..RuntimeConfig::default()
        })
        .map(Arc::new)
        .map_err(|e| e.to_string())
    };
    let (on, off) = (runtime(true)?, runtime(false)?);
    let load = |rt: Arc<PluginRuntime>, file: PathBuf| async move {
        rt.load_file(&file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))
    };
    let script = b.fixtures.join("hostile-role.wasm");
    let solver = b.plugins.join("solver.wasm");
    let programmer = b.plugins.join("programmer.wasm");
    let mut cases: Vec<(String, PathBuf, String, usize, &str)> = [1usize, 4, 16]
        .into_iter()
        .map(|n| {
            (
                format!(
                    "Rust script role, {n} model call{}",
                    if n == 1 { "" } else { "s" }
                ),
                script.clone(),
                format!(r#"{{"do": "script", "steps": "{}"}}"#, "c".repeat(n)),
                n,
                "Answer: 42",
            )
        })
        .collect();
    cases.push((
        "Rust solver (built-in)".into(),
        solver.clone(),
        String::new(),
        1,
        "Answer: 42",
    ));
    cases.push((
        "Python programmer (built-in)".into(),
        programmer.clone(),
        String::new(),
        1,
        PROGRAM,
    ));
    let mut compute = Vec::new();
    for (label, file, config, calls, reply) in cases {
        let services: Arc<dyn HostServices> = Arc::new(Answering {
            reply: reply.into(),
            gate: None,
        });
        let (p_on, p_off) = (
            load(on.clone(), file.clone()).await?,
            load(off.clone(), file).await?,
        );
        let t = task(&config);
        // Alternate the two ways in rounds, so a busy machine hits both.
        let (mut d_on, mut d_off) = (Duration::ZERO, Duration::ZERO);
        let rounds = 5;
        let per = (b.iterations / rounds).max(1);
        for round in 0..=rounds {
            let a = time_calls(&on, &p_on, &services, &t, per).await?;
            let c = time_calls(&off, &p_off, &services, &t, per).await?;
            // Round 0 warms up.
            if round > 0 {
                d_on += a;
                d_off += c;
            }
        }
        let n = (per * rounds) as f64;
        let durable_us = d_on.as_secs_f64() * 1e6 / n;
        let straight_us = d_off.as_secs_f64() * 1e6 / n;
        compute.push(ComputeRow {
            role: label,
            model_calls: calls,
            straight_us,
            durable_us,
            extra_us_per_model_call: (durable_us - straight_us) / calls as f64,
        });
    }
    let mut memory = Vec::new();
    for (label, file, n, reply) in [
        ("Rust solver", solver, b.waiting_rust, "Answer: 42"),
        ("Python programmer", programmer, b.waiting_python, PROGRAM),
    ] {
        if n == 0 {
            continue;
        }
        let plugin = load(on.clone(), file).await?;
        memory.push(waiting(&on, &plugin, label, n, reply).await?);
    }
    Ok(ReexecuteReport {
        iterations: b.iterations,
        compute,
        memory,
    })
}

async fn time_calls(
    rt: &PluginRuntime,
    plugin: &Plugin,
    services: &Arc<dyn HostServices>,
    task: &Task,
    n: usize,
) -> Result<Duration, String> {
    let start = Instant::now();
    for i in 0..n {
        let out = rt
            .run_role(plugin, &invocation(services.clone(), i as u32), task)
            .await
            .map_err(|e| e.to_string())?;
        // The script role answers a digest of what it saw, and says
        // what it saw: every reply.
        let fine = match &out {
            Outcome::Candidate(c) => c.answer == "42" || c.text.starts_with("c:Answer: 42"),
            Outcome::Plan(_) => false,
        };
        if !fine {
            return Err(format!("{} did not answer 42: {out:?}", plugin.id()));
        }
    }
    Ok(start.elapsed())
}

/// `n` replicas of `plugin` waiting on a model at once: the memory they
/// hold. They are released once all wait, and must all answer.
async fn waiting(
    rt: &Arc<PluginRuntime>,
    plugin: &Plugin,
    label: &str,
    n: usize,
    reply: &str,
) -> Result<MemoryRow, String> {
    let services = Arc::new(Answering {
        reply: reply.into(),
        gate: Some((n, AtomicUsize::new(0), tokio::sync::Notify::new())),
    });
    let before = rss_bytes();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (rt, plugin, s) = (rt.clone(), plugin.clone(), services.clone());
            tokio::spawn(async move {
                rt.run_role(&plugin, &invocation(s, i as u32), &task(""))
                    .await
            })
        })
        .collect();
    // Wait until every replica is parked on the model (the last one to
    // arrive is let through at once), then read the memory.
    let (rss_waiting, running) = loop {
        let l = rt.load();
        if l.waiting_on_model as usize + 1 >= n {
            break (rss_bytes(), l.running);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if let Some((_, _, open)) = &services.gate {
        open.notify_waiters();
    }
    let mut answered = 0;
    let mut first = None;
    for c in calls {
        match c.await {
            Ok(Ok(Outcome::Candidate(c))) if c.answer == "42" => answered += 1,
            other => {
                first.get_or_insert_with(|| format!("{other:?}"));
            }
        }
    }
    if answered != n {
        return Err(format!(
            "{label}: {answered} of {n} waiting replicas answered 42; the first other: {}",
            first.unwrap_or_default()
        ));
    }
    Ok(MemoryRow {
        role: label.into(),
        waiting: n,
        rss_before: before,
        rss_waiting,
        bytes_per_waiting_replica: rss_waiting.saturating_sub(before) as f64 / n.max(1) as f64,
        running,
    })
}
