//! Scheduling policies for task DAGs, simulated in virtual time.
//!
//! Each task is one model call whose latency is drawn from a measured set
//! (the paper's `llm_call_latencies.csv`). Draws are keyed by (seed, task,
//! attempt), so every policy sees the same latency for the same task's first
//! attempt, and the comparison is paired.
//!
//! - [`Policy::Preassign`], the paper's `preassign` condition: chains of
//!   dependent tasks pre-assigned to one agent, independent tasks
//!   round-robin; synchronous rounds in which each agent works on its next
//!   ready task, each round as long as its slowest call, with a barrier.
//! - [`Policy::SelfClaim`], the paper's `decentralized` condition: agents
//!   claim ready tasks themselves, one claim call per task, in synchronous
//!   rounds; claims made in the same round are only seen after it, so
//!   agents that claim the same task waste that round.
//! - [`Policy::CriticalPath`], Conclave's: event-driven with no rounds and
//!   no barriers; a free agent takes the ready task with the longest
//!   remaining chain; with `hedge`, an agent with nothing ready starts a
//!   second copy of a running task that has outlived the median call (at
//!   most `max_copies` per task), and the first copy to finish wins.
//!
//! [`live`] runs the same DAG on the live scheduler
//! ([`crate::team::scheduler`]) in virtual time (a paused tokio clock, each
//! task a sleep for its drawn latency); the tests check that it and
//! [`Policy::CriticalPath`] agree, so the numbers in BENCHMARKS.md are the
//! live runtime's, not only this model's.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;

use super::dag::Dag;

/// How tasks are given to agents.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Preassign,
    SelfClaim,
    CriticalPath { hedge: bool, max_copies: usize },
}

impl Policy {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Preassign => "preassign (paper)",
            Policy::SelfClaim => "self-claim (paper)",
            Policy::CriticalPath { hedge: false, .. } => "critical-path",
            Policy::CriticalPath { hedge: true, .. } => "critical-path + hedging",
        }
    }
}

/// Latencies to draw task times from, and a seed.
///
/// `correlation` (0..1) ties the copies of one task together: a request
/// that is long because of what it asks is long again when sent again. The
/// copies' latencies are the measured distribution's quantiles at
/// `Φ(√ρ·Z + √(1−ρ)·E)`, with `Z` shared by a task's copies and `E` drawn
/// per copy (a Gaussian copula): every copy keeps the measured
/// distribution, and two copies' normal scores correlate by `ρ`. At 0 the
/// copies are independent, which flatters hedging.
#[derive(Clone, Debug)]
pub struct Draws {
    latencies: Arc<Vec<f64>>,
    /// The same latencies, sorted: what a quantile is read from.
    sorted: Arc<Vec<f64>>,
    median: f64,
    correlation: f64,
    pub seed: u64,
}

impl Draws {
    /// Draws from `latencies` (seconds) with `seed`.
    pub fn new(latencies: Arc<Vec<f64>>, seed: u64) -> Self {
        let mut sorted = latencies.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        Draws {
            latencies,
            sorted: Arc::new(sorted),
            median,
            correlation: 0.0,
            seed,
        }
    }

    /// The same draws with copies of a task correlated by `correlation`,
    /// clamped to 0..1.
    pub fn with_correlation(&self, correlation: f64) -> Self {
        Draws {
            correlation: correlation.clamp(0.0, 1.0),
            ..self.clone()
        }
    }

    /// The same draws under another seed.
    pub fn with_seed(&self, seed: u64) -> Self {
        Draws {
            seed,
            ..self.clone()
        }
    }

    /// The latency of `attempt` of `task`.
    pub fn draw(&self, task: usize, attempt: usize) -> f64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, task, attempt).hash(&mut h);
        let mut rng = ChaCha8Rng::seed_from_u64(h.finish());
        if self.correlation == 0.0 {
            return self.latencies[rng.random_range(0..self.latencies.len())];
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, task, "size").hash(&mut h);
        let shared: f64 =
            rand_distr::StandardNormal.sample(&mut ChaCha8Rng::seed_from_u64(h.finish()));
        let own: f64 = rand_distr::StandardNormal.sample(&mut rng);
        let z = self.correlation.sqrt() * shared + (1.0 - self.correlation).sqrt() * own;
        let u = normal_cdf(z);
        let k = ((u * self.sorted.len() as f64) as usize).min(self.sorted.len() - 1);
        self.sorted[k]
    }
}

/// The standard normal CDF, from erf (Abramowitz and Stegun 7.1.26,
/// absolute error below 1.5e-7: far finer than 74k measured latencies
/// resolve).
pub(crate) fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// What one simulated run did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Time until the last task finished, seconds.
    pub makespan: f64,
    /// Model calls made (claims, duplicates and hedges included).
    pub calls: usize,
}

/// Runs `dag` on the live scheduler with `agents` slots, in virtual time:
/// each task (and each copy of it) sleeps for its drawn latency, the k-th
/// copy of a task drawing attempt k, as [`Policy::CriticalPath`] does. With
/// `hedge`, copies start after the median latency, at most `max_copies` of
/// a task at once.
pub fn live(dag: &Dag, agents: usize, hedge: Option<usize>, draws: &Draws) -> Outcome {
    use super::budget::{Limits, Meter};
    use super::consensus::{StopReason, TaskResult};
    use super::scheduler::{self, Executor, HedgeAfter, HedgeTasks, JobTask, Options};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Sleeps each task for its drawn latency, counting copies.
    struct Sleeper {
        draws: Draws,
        index: std::collections::HashMap<String, usize>,
        attempts: Mutex<Vec<usize>>,
        calls: AtomicUsize,
    }
    impl Executor for Sleeper {
        fn execute(
            self: Arc<Self>,
            task: Arc<JobTask>,
            _inputs: Vec<(String, String)>,
            _meter: Arc<Meter>,
        ) -> BoxFuture<'static, TaskResult> {
            let t = self.index[&task.id];
            let attempt = {
                let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
                a[t] += 1;
                a[t] - 1
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            let secs = self.draws.draw(t, attempt);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                let mut r = TaskResult::not_run(StopReason::Decided);
                r.answer = Some(task.id.clone());
                r
            })
        }
    }

    let tasks: Vec<JobTask> = dag
        .tasks
        .iter()
        .map(|t| JobTask {
            id: t.id.clone(),
            role: "sim".into(),
            verifiers: vec![],
            voter: "sim".into(),
            prompt: String::new(),
            answer_kind: crate::plugin::AnswerKind::Text,
            replicas: 1,
            max_samples: 1,
            max_rounds: 1,
            debate_rounds: 0,
            retries: 0,
            limits: Limits::default(),
            depends_on: t.dependencies.clone(),
            subtasks: None,
        })
        .collect();
    let exec = Arc::new(Sleeper {
        draws: draws.clone(),
        index: dag
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect(),
        attempts: Mutex::new(vec![0; dag.len()]),
        calls: AtomicUsize::new(0),
    });
    let options = Options {
        max_parallel_tasks: agents.max(1),
        hedge_tasks: hedge.map(|max_copies| HedgeTasks {
            after: HedgeAfter::Fixed(Duration::from_secs_f64(draws.median)),
            max_copies,
        }),
        ..Options::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    let makespan = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let done = scheduler::run(
            "simulate",
            tasks,
            exec.clone(),
            Meter::job(Limits::default()),
            options,
            tokio_util::sync::CancellationToken::new(),
            &super::events::Quiet,
        )
        .await;
        debug_assert!(done.iter().all(|(_, r)| r.stop == StopReason::Decided));
        start.elapsed().as_secs_f64()
    });
    Outcome {
        makespan,
        calls: exec.calls.load(Ordering::Relaxed),
    }
}

/// Simulates `dag` on `agents` agents under `policy`.
pub fn run(dag: &Dag, agents: usize, policy: Policy, draws: &Draws) -> Outcome {
    let agents = agents.max(1);
    match policy {
        Policy::Preassign => preassign(dag, agents, draws),
        Policy::SelfClaim => self_claim(dag, agents, draws),
        Policy::CriticalPath { hedge, max_copies } => {
            critical_path(dag, agents, draws, hedge, max_copies.max(1))
        }
    }
}

fn ready(dag: &Dag, done: &[bool], i: usize) -> bool {
    !done[i] && dag.deps[i].iter().all(|d| done[*d])
}

fn preassign(dag: &Dag, agents: usize, draws: &Draws) -> Outcome {
    let mut queues: Vec<VecDeque<usize>> = vec![VecDeque::new(); agents];
    let groups = dag.components();
    let chains_first = groups
        .iter()
        .filter(|g| g.len() > 1)
        .chain(groups.iter().filter(|g| g.len() == 1));
    for (k, g) in chains_first.enumerate() {
        queues[k % agents].extend(g.iter().copied());
    }
    let mut done = vec![false; dag.len()];
    let (mut time, mut calls) = (0.0, 0);
    while done.iter().any(|d| !d) {
        let mut finished = Vec::new();
        let mut round: f64 = 0.0;
        for q in queues.iter_mut() {
            if let Some(pos) = q.iter().position(|t| ready(dag, &done, *t)) {
                let t = q.remove(pos).expect("position is valid");
                round = round.max(draws.draw(t, 0));
                calls += 1;
                finished.push(t);
            }
        }
        assert!(!finished.is_empty(), "a DAG always has a ready task");
        time += round;
        for t in finished {
            done[t] = true;
        }
    }
    Outcome {
        makespan: time,
        calls,
    }
}

fn self_claim(dag: &Dag, agents: usize, draws: &Draws) -> Outcome {
    let mut done = vec![false; dag.len()];
    let mut claimed = vec![false; dag.len()];
    let mut holding: Vec<Option<usize>> = vec![None; agents];
    let mut rng = ChaCha8Rng::seed_from_u64(draws.seed ^ 0x5e1f_c1a1);
    let (mut time, mut calls, mut round_no) = (0.0, 0, 0usize);
    while done.iter().any(|d| !d) {
        round_no += 1;
        let mut round: f64 = 0.0;
        let mut finished = Vec::new();
        let mut claims: Vec<(usize, usize)> = Vec::new();
        let open: Vec<usize> = (0..dag.len())
            .filter(|i| ready(dag, &done, *i) && !claimed[*i])
            .collect();
        for (a, h) in holding.iter_mut().enumerate() {
            match h.take() {
                Some(t) => {
                    round = round.max(draws.draw(t, 0));
                    finished.push(t);
                    calls += 1;
                }
                None if !open.is_empty() => {
                    // A claim is a call too: read the board, pick, write.
                    let t = open[rng.random_range(0..open.len())];
                    round = round.max(draws.draw(t, 1 + a + agents * round_no));
                    claims.push((a, t));
                    calls += 1;
                }
                None => {}
            }
        }
        time += round;
        for t in finished {
            done[t] = true;
        }
        // The first claimant of a task gets it; the others wasted the round.
        for (a, t) in claims {
            if !claimed[t] {
                claimed[t] = true;
                holding[a] = Some(t);
            }
        }
    }
    Outcome {
        makespan: time,
        calls,
    }
}

fn critical_path(
    dag: &Dag,
    agents: usize,
    draws: &Draws,
    hedge: bool,
    max_copies: usize,
) -> Outcome {
    let n = dag.len();
    let priority = dag.remaining_path();
    let mut done = vec![false; n];
    let mut started = vec![false; n];
    // Running copies: (task, agent, start, end).
    let mut running: Vec<(usize, usize, f64, f64)> = Vec::new();
    let mut copies = vec![0usize; n];
    let mut free: Vec<usize> = (0..agents).collect();
    let (mut time, mut calls) = (0.0f64, 0usize);
    loop {
        // Give free agents the most critical ready tasks.
        let mut ready_tasks: Vec<usize> = (0..n)
            .filter(|i| !started[*i] && ready(dag, &done, *i))
            .collect();
        ready_tasks.sort_by_key(|i| (std::cmp::Reverse(priority[*i]), *i));
        for t in ready_tasks {
            let Some(a) = free.pop() else { break };
            started[t] = true;
            copies[t] = 1;
            running.push((t, a, time, time + draws.draw(t, 0)));
            calls += 1;
        }
        // Idle agents hedge running tasks that outlived the median call,
        // most critical first, then the one running longest.
        if hedge {
            while !free.is_empty() {
                let candidate = running
                    .iter()
                    // `time >= s + median`, not `time - s >= median`: the wake-up
                    // below is `s + median`, and the subtraction can round
                    // below the median and miss it.
                    .filter(|(t, _, s, _)| copies[*t] < max_copies && time >= s + draws.median)
                    .max_by(|x, y| {
                        priority[x.0]
                            .cmp(&priority[y.0])
                            .then((y.2).total_cmp(&x.2))
                    })
                    .map(|x| x.0);
                let Some(t) = candidate else { break };
                let a = free.pop().expect("checked non-empty");
                running.push((t, a, time, time + draws.draw(t, copies[t])));
                copies[t] += 1;
                calls += 1;
            }
        }
        if running.is_empty() {
            break;
        }
        // Next event: a copy finishing, or (hedging with idle agents) a
        // running copy reaching the median.
        let mut next = running.iter().map(|r| r.3).fold(f64::INFINITY, f64::min);
        if hedge && !free.is_empty() {
            for r in &running {
                let wake = r.2 + draws.median;
                if wake > time && copies[r.0] < max_copies {
                    next = next.min(wake);
                }
            }
        }
        time = next;
        let finished: Vec<usize> = running
            .iter()
            .filter(|r| r.3 <= time)
            .map(|r| r.0)
            .collect();
        for t in finished {
            if done[t] {
                continue;
            }
            done[t] = true;
            // The first copy wins; the others are cancelled.
            running.retain(|r| {
                if r.0 == t {
                    free.push(r.1);
                    false
                } else {
                    true
                }
            });
        }
    }
    debug_assert!(done.iter().all(|d| *d));
    Outcome {
        makespan: time,
        calls,
    }
}

#[cfg(test)]
mod tests {
    //! The policies on DAGs where the answer can be worked out by hand.
    use super::*;
    use crate::team::dag::DagTask;

    fn dag(chain: usize, independent: usize) -> Dag {
        let mut tasks = Vec::new();
        for i in 0..chain {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![format!("c{}", i - 1)]
            };
            tasks.push(DagTask {
                id: format!("c{i}"),
                title: String::new(),
                description: String::new(),
                dependencies: deps,
            });
        }
        for i in 0..independent {
            tasks.push(DagTask {
                id: format!("x{i}"),
                title: String::new(),
                description: String::new(),
                dependencies: vec![],
            });
        }
        Dag::new(tasks).unwrap()
    }

    fn constant(secs: f64) -> Draws {
        Draws::new(Arc::new(vec![secs]), 1)
    }

    #[test]
    fn one_agent_runs_everything_in_sequence() {
        let d = dag(2, 18);
        for p in [
            Policy::Preassign,
            Policy::CriticalPath {
                hedge: true,
                max_copies: 2,
            },
        ] {
            let o = run(&d, 1, p, &constant(1.0));
            assert_eq!((o.makespan, o.calls), (20.0, 20), "{p:?}");
        }
        // Self-claim pays a claim call per task.
        assert_eq!(run(&d, 1, Policy::SelfClaim, &constant(1.0)).makespan, 40.0);
    }

    #[test]
    fn constant_latency_makespans() {
        let d = dag(2, 18);
        // Agent 0 gets the chain plus round-robin leftovers: 5 rounds.
        assert_eq!(run(&d, 5, Policy::Preassign, &constant(1.0)).makespan, 5.0);
        // 20 tasks on 5 agents, chain fits: 4.
        assert_eq!(
            run(
                &d,
                5,
                Policy::CriticalPath {
                    hedge: false,
                    max_copies: 1
                },
                &constant(1.0)
            )
            .makespan,
            4.0
        );
        // A 10-chain bounds everything at 10.
        let long = dag(10, 10);
        assert_eq!(
            run(
                &long,
                5,
                Policy::CriticalPath {
                    hedge: false,
                    max_copies: 1
                },
                &constant(1.0)
            )
            .makespan,
            10.0
        );
    }

    #[test]
    fn the_most_critical_task_goes_first() {
        // One agent free at a time, a 3-chain and 2 singles: starting the
        // chain first gives 3 on 2 agents; starting singles first gives 4.
        let d = dag(3, 2);
        assert_eq!(
            run(
                &d,
                2,
                Policy::CriticalPath {
                    hedge: false,
                    max_copies: 1
                },
                &constant(1.0)
            )
            .makespan,
            3.0
        );
    }

    /// The live scheduler in virtual time against the critical-path model:
    /// mean makespans within 5% on the paper's nine DAGs at n = 1..5, with
    /// and without hedging, copies independent or correlated by 0.5.
    #[test]
    fn the_live_scheduler_agrees_with_the_model_on_the_papers_dags() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/paper-amdahl");
        let lat: Vec<f64> =
            crate::model::latency::load_csv(&data.join("llm_call_latencies.csv"), "gpt-5.2")
                .unwrap()
                .into_iter()
                .map(|d| d.as_secs_f64())
                .collect();
        let base = Draws::new(Arc::new(lat), 0);
        let mut paths: Vec<_> = std::fs::read_dir(data.join("tasks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        assert_eq!(paths.len(), 9);
        for (path, correlation) in paths.iter().flat_map(|p| [(p, 0.0), (p, 0.5)]) {
            let draws = base.with_correlation(correlation);
            let d = Dag::load(path).unwrap();
            for n in 1..=5 {
                for (hedge, copies) in [(false, 1), (true, 3)] {
                    let (mut model, mut live_sum) = (0.0, 0.0);
                    for s in 0..20 {
                        let dr = draws.with_seed(s);
                        let policy = Policy::CriticalPath {
                            hedge,
                            max_copies: copies,
                        };
                        model += run(&d, n, policy, &dr).makespan;
                        live_sum += live(&d, n, hedge.then_some(copies), &dr).makespan;
                    }
                    let ratio = live_sum / model;
                    assert!(
                        (0.95..=1.05).contains(&ratio),
                        "{} n={n} hedge={hedge} correlation={correlation}: live {live_sum:.1} s, model {model:.1} s",
                        path.display()
                    );
                }
            }
        }
    }

    #[test]
    fn live_runs_a_chain_in_sequence_in_virtual_time() {
        let o = live(&dag(3, 0), 2, None, &constant(2.0));
        assert!((o.makespan - 6.0).abs() < 0.01, "{o:?}");
        assert_eq!(o.calls, 3);
    }

    #[test]
    fn correlated_copies_keep_the_distribution_and_repeat_long_requests() {
        let lat: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
        let draws = Draws::new(Arc::new(lat), 7);
        let rank_corr = |rho: f64| {
            let d = draws.with_correlation(rho);
            let (a, b): (Vec<f64>, Vec<f64>) =
                (0..4000).map(|t| (d.draw(t, 0), d.draw(t, 1))).unzip();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (ma, mb) = (mean(&a), mean(&b));
            let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            (ma, cov / (va * vb).sqrt())
        };
        let (m0, c0) = rank_corr(0.0);
        let (m5, c5) = rank_corr(0.5);
        let (m9, c9) = rank_corr(0.9);
        // Uniform 1..1000 keeps its mean (500.5) at every correlation.
        for m in [m0, m5, m9] {
            assert!((m - 500.5).abs() < 15.0, "{m}");
        }
        // Spearman's rho of a Gaussian copula: 6/pi asin(rho/2) = 0.48 at 0.5.
        assert!(c0.abs() < 0.05, "{c0}");
        assert!((c5 - 0.48).abs() < 0.05, "{c5}");
        assert!((c9 - 0.89).abs() < 0.05, "{c9}");
    }

    #[test]
    fn hedging_cuts_a_straggler() {
        // Latencies 1 or 100: a hedge of a slow call on an idle agent
        // usually lands on a fast draw.
        let draws = Draws::new(Arc::new(vec![1.0, 1.0, 1.0, 100.0]), 3);
        let d = dag(1, 3);
        let mut plain = 0.0;
        let mut hedged = 0.0;
        for s in 0..200 {
            let dr = draws.with_seed(s);
            plain += run(
                &d,
                4,
                Policy::CriticalPath {
                    hedge: false,
                    max_copies: 1,
                },
                &dr,
            )
            .makespan;
            hedged += run(
                &d,
                4,
                Policy::CriticalPath {
                    hedge: true,
                    max_copies: 2,
                },
                &dr,
            )
            .makespan;
        }
        assert!(hedged < plain / 2.0, "hedged {hedged} vs plain {plain}");
    }
}
