//! Deterministic simulation of the work queue: the coordinator's side
//! ([`crate::cluster::work::WorkQueue`]) and `conclave worker`'s loop
//! ([`crate::cluster::worker::serve`]), unchanged, against the model of
//! the server's messages and work stream (`simulation/queue.rs`) and its
//! heartbeat bucket, in virtual time, with faults drawn from a seed.
//!
//! A seed gives a [`Plan`]: 1–3 workers (and a replacement for each one
//! killed), the queue's ack wait and deliveries, replicas queued over the
//! first 20 s (each a model call of its own length, some longer than the
//! ack wait, some withdrawn by the coordinator on the way, as an early
//! decision does), lost, duplicated and delayed messages, server
//! restarts, and pauses and partitions of the coordinator and of the
//! workers. Invariants checked after each run:
//!
//! - **answered**: every replica the coordinator did not withdraw ends,
//!   with a result or with a reason;
//! - **from a delivery**: a result counted comes from a run of that
//!   replica, by the worker and the delivery it names, that finished;
//! - **no needless rerun**: a replica is delivered again only when the delivery
//!   before it was disturbed: its worker was killed, paused or cut off,
//!   the server was down, a message of that worker was lost, or the
//!   worker could not hand its result in and said it would be
//!   redelivered (a model call made twice for nothing is a cost);
//! - **no unwanted work**: a replica the coordinator stopped waiting for
//!   (withdrawn, or failed) does not start its model call on a worker more
//!   than a second later, unless the coordinator or the server could not
//!   act meanwhile (or shortly before: a request sent then is answered
//!   only by its timeout), or the worker was stopped or cut off while it
//!   held the delivery;
//! - **nothing left**: at the end no item is left on the stream that a
//!   worker could still be given, and no replica is still running.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::server::{Faults, Proc, Server};
use crate::cluster::work::{Names, WorkQueue, HEARTBEAT_TTL};
use crate::cluster::worker::{serve, Serves, Serving};
use crate::team::remote::{RemoteReplicas, ReplicaDone, ReplicaJob};

mod check;

const TEAM: &str = "team";
const RUN: &str = "run-1";

/// One replica the coordinator queues.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Replica {
    /// When it is queued.
    pub at: Duration,
    /// How long its model call takes.
    pub runs_for: Duration,
    /// When the coordinator stops waiting for it, if it does.
    pub withdrawn: Option<Duration>,
}

/// What a seed makes happen, in virtual time from the start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub seed: u64,
    pub workers: usize,
    pub ack_wait: Duration,
    pub max_deliver: u32,
    pub max_latency: Duration,
    pub message_loss: f64,
    pub duplicate: f64,
    pub replicas: Vec<Replica>,
    pub server_down: Vec<(Duration, Duration)>,
    /// Process `.0` (0: the coordinator, 1..: the workers) is paused over
    /// `.1`–`.2`.
    pub pauses: Vec<(usize, Duration, Duration)>,
    /// Process `.0` is cut off from the server over `.1`–`.2`.
    pub cuts: Vec<(usize, Duration, Duration)>,
    /// Worker `.0` is killed at `.1`; a new one starts `.2` later.
    pub kills: Vec<(usize, Duration, Duration)>,
    pub end: Duration,
}

fn secs(rng: &mut ChaCha8Rng, a: f64, b: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(a..b))
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x776f_726b);
        let workers = rng.random_range(1..=3);
        let ack_wait = Duration::from_secs([2, 4, 8][rng.random_range(0..3)]);
        let max_deliver = [2, 3, 5][rng.random_range(0..3)];
        let max_latency = secs(&mut rng, 0.0, 0.3);
        let noisy = rng.random_bool(0.5);
        let message_loss = if noisy {
            rng.random_range(0.0..0.1)
        } else {
            0.0
        };
        let duplicate = if noisy {
            rng.random_range(0.0..0.1)
        } else {
            0.0
        };
        let replicas = (0..rng.random_range(4..=24))
            .map(|_| {
                let at = secs(&mut rng, 0.0, 20.0);
                let runs_for = ack_wait.mul_f64(rng.random_range(0.05..3.0));
                let withdrawn = rng
                    .random_bool(0.2)
                    .then(|| at + runs_for.mul_f64(rng.random_range(0.0..1.5)));
                Replica {
                    at,
                    runs_for,
                    withdrawn,
                }
            })
            .collect();
        let span = |rng: &mut ChaCha8Rng, longest: f64| {
            let a = secs(rng, 1.0, 40.0);
            (a, a + secs(rng, 0.3, longest))
        };
        let server_down = (0..rng.random_range(0..=2))
            .map(|_| span(&mut rng, 8.0))
            .collect();
        let longest = ack_wait.as_secs_f64() * 3.0;
        let pauses = (0..rng.random_range(0..=3))
            .map(|_| {
                let (a, b) = span(&mut rng, longest);
                (rng.random_range(0..=workers), a, b)
            })
            .collect();
        let cuts = (0..rng.random_range(0..=2))
            .map(|_| {
                let (a, b) = span(&mut rng, longest);
                (rng.random_range(0..=workers), a, b)
            })
            .collect();
        let kills = (0..rng.random_range(0..=2))
            .map(|_| {
                (
                    rng.random_range(1..=workers),
                    secs(&mut rng, 1.0, 40.0),
                    secs(&mut rng, 0.5, 10.0),
                )
            })
            .collect();
        let mut plan = Plan {
            seed,
            workers,
            ack_wait,
            max_deliver,
            max_latency,
            message_loss,
            duplicate,
            replicas,
            server_down,
            pauses,
            cuts,
            kills,
            end: Duration::ZERO,
        };
        let longest_call = plan
            .replicas
            .iter()
            .map(|r| r.runs_for)
            .max()
            .unwrap_or_default();
        plan.end =
            plan.quiet_from() + (ack_wait + longest_call) * max_deliver + Duration::from_secs(60);
        plan
    }

    /// When the last fault is over and the last replica queued.
    pub fn quiet_from(&self) -> Duration {
        let spans = self.server_down.iter().map(|s| s.1);
        let procs = self.pauses.iter().chain(&self.cuts).map(|s| s.2);
        let kills = self.kills.iter().map(|k| k.1 + k.2);
        let queued = self.replicas.iter().map(|r| r.at);
        spans
            .chain(procs)
            .chain(kills)
            .chain(queued)
            .max()
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: {} workers (p1..), coordinator p0; ack wait {:?}, {} deliveries at most; latency up to {:.0?}, {:.1}% of messages lost, {:.1}% duplicated",
            self.seed,
            self.workers,
            self.ack_wait,
            self.max_deliver,
            self.max_latency,
            self.message_loss * 100.0,
            self.duplicate * 100.0
        )?;
        for (i, r) in self.replicas.iter().enumerate() {
            write!(
                f,
                "  replica {i}: queued {:.2?}, runs {:.2?}",
                r.at, r.runs_for
            )?;
            match r.withdrawn {
                Some(w) => writeln!(f, ", withdrawn {w:.2?}")?,
                None => writeln!(f)?,
            }
        }
        for (a, b) in &self.server_down {
            writeln!(f, "  server down {a:.2?} .. {b:.2?}")?;
        }
        for (p, a, b) in &self.pauses {
            writeln!(f, "  p{p} paused {a:.2?} .. {b:.2?}")?;
        }
        for (p, a, b) in &self.cuts {
            writeln!(f, "  p{p} cut off from the server {a:.2?} .. {b:.2?}")?;
        }
        for (p, at, after) in &self.kills {
            writeln!(f, "  p{p} killed {at:.2?}, a new worker {after:.2?} later")?;
        }
        writeln!(f, "  checked at {:.1?}", self.end)
    }
}

/// One run of a replica's model call on a worker.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Execution {
    pub replica: u32,
    pub worker: usize,
    pub attempt: u32,
    pub started: Duration,
    /// When it finished (none: stopped, or its worker died).
    pub finished: Option<Duration>,
    /// When its worker stopped it (a withdrawal).
    pub stopped: Option<Duration>,
}

/// One delivery of a replica's item to a worker.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivered {
    pub at: Duration,
    pub replica: u32,
    pub delivery: u32,
    pub worker: usize,
}

/// How the coordinator's wait for a replica ended.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Ended {
    /// A result, from `(worker, delivery)`.
    Result(String, u32),
    Failed(String),
    Withdrawn,
}

#[derive(Default)]
struct Log {
    executions: Vec<Execution>,
    ended: BTreeMap<u32, (Duration, Ended)>,
    said: Vec<(Duration, usize, String)>,
}

/// The team as the simulation's workers run it: each replica's model
/// call takes its planned time.
struct SimTeam {
    proc: Arc<Proc>,
    plan: Arc<Plan>,
    log: Arc<Mutex<Log>>,
    start: Instant,
}

/// Marks an execution finished, or stopped when dropped first (a killed
/// worker's is neither: it never runs on).
struct Running<'a> {
    team: &'a SimTeam,
    at: usize,
    finished: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let now = self.team.start.elapsed();
        let mut log = self.team.log.lock().unwrap_or_else(|p| p.into_inner());
        // Gone once the run's log was taken (the runtime shutting down).
        if let Some(e) = log.executions.get_mut(self.at) {
            if self.finished {
                e.finished = Some(now);
            } else {
                e.stopped = Some(now);
            }
        }
    }
}

#[async_trait::async_trait]
impl Serves for SimTeam {
    fn digest(&self) -> String {
        "sim".into()
    }

    async fn work(&self, job: &ReplicaJob, worker: &str, attempt: u32) -> ReplicaDone {
        let at = {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.executions.push(Execution {
                replica: job.replica,
                worker: self.proc.id,
                attempt,
                started: self.start.elapsed(),
                finished: None,
                stopped: None,
            });
            log.executions.len() - 1
        };
        let mut running = Running {
            team: self,
            at,
            finished: false,
        };
        tokio::time::sleep(self.plan.replicas[job.replica as usize].runs_for).await;
        self.proc.gate().await;
        running.finished = true;
        drop(running);
        ReplicaDone::refused(job, worker, attempt, format!("answered by {worker}"))
    }
}

fn job(replica: u32) -> ReplicaJob {
    ReplicaJob {
        team: TEAM.into(),
        digest: "sim".into(),
        run: RUN.into(),
        task: "t".into(),
        prompt: String::new(),
        answer_kind: crate::plugin::AnswerKind::Text,
        gold: None,
        checker: None,
        replicas: 1,
        inputs: Vec::new(),
        role: "role".into(),
        verifiers: Vec::new(),
        round: 0,
        replica,
        feedback: Vec::new(),
        sampling: Default::default(),
        recorded: Vec::new(),
    }
}

/// What happened in one run, and what broke.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// The work stream's deliveries, in order.
    pub deliveries: Vec<Delivered>,
    pub executions: Vec<Execution>,
    /// Each replica's end: `(replica, time, how)`.
    pub ended: Vec<(u32, Duration, Ended)>,
    /// What the workers said: `(time, process, words)`.
    pub said: Vec<(Duration, usize, String)>,
    /// Broken invariants: `(which, what happened)`.
    pub broken: Vec<(&'static str, String)>,
}

impl Outcome {
    pub fn held(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Runs `plan` on a runtime of its own and checks the invariants.
pub fn run(plan: &Plan) -> Outcome {
    super::in_virtual_time(simulate(plan.clone()))
}

async fn simulate(plan: Plan) -> Outcome {
    let plan = Arc::new(plan);
    let server = Server::new(
        Faults {
            down: plan.server_down.clone(),
            max_latency: plan.max_latency,
            quiet: plan.quiet_from(),
            message_loss: plan.message_loss,
            duplicate: plan.duplicate,
            ..Default::default()
        },
        ChaCha8Rng::seed_from_u64(plan.seed),
    );
    let start = server.start;
    let at = move |d: Duration| start + d;
    let spans = |p: usize, of: &[(usize, Duration, Duration)]| -> Vec<(Instant, Instant)> {
        of.iter()
            .filter(|s| s.0 == p)
            .map(|s| (at(s.1), at(s.2)))
            .collect()
    };
    let log = Arc::new(Mutex::new(Log::default()));
    let names = Names { name: "sim".into() };
    let coordinator = Proc::new(0, spans(0, &plan.pauses), spans(0, &plan.cuts));
    let queue = WorkQueue::over(
        Arc::new(server.wire(coordinator.clone())),
        Arc::new(server.bucket(&names.bucket(), Some(HEARTBEAT_TTL), coordinator.clone())),
        Names { name: "sim".into() },
        "coordinator",
        None,
    )
    .await
    .expect("the coordinator's queue opens before any fault");

    let stop = CancellationToken::new();
    let start_worker = |id: usize, paused, cut| {
        let proc = Proc::new(id, paused, cut);
        let team = Arc::new(SimTeam {
            proc: proc.clone(),
            plan: plan.clone(),
            log: log.clone(),
            start,
        });
        let (server, log, stop, names) = (
            server.clone(),
            log.clone(),
            stop.clone(),
            Names { name: "sim".into() },
        );
        let ack_wait = plan.ack_wait;
        let max_deliver = plan.max_deliver;
        let p = proc.clone();
        tokio::spawn(async move {
            let say: crate::cluster::worker::Say = Arc::new(move |words: String| {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.said.push((start.elapsed(), id, words));
            });
            // A supervisor starts it again when it gives up (its first
            // beat failed, the server being down).
            let serving = async {
                loop {
                    let s = Serving {
                        id: format!("w{id}"),
                        place: "in the simulation".into(),
                        wire: Arc::new(server.wire(p.clone())),
                        beats: Arc::new(server.bucket(
                            &names.bucket(),
                            Some(HEARTBEAT_TTL),
                            p.clone(),
                        )),
                        bucket: names.bucket(),
                        lease: Arc::new(|| Box::pin(async { None })),
                        cancel_subject: names.cancel(),
                        teams: vec![(
                            TEAM.to_string(),
                            team.clone() as Arc<dyn Serves>,
                            Arc::new(server.pull(
                                &names.stream(),
                                &names.consumer(TEAM),
                                &names.subject(TEAM),
                                ack_wait,
                                max_deliver,
                                p.clone(),
                            )) as Arc<dyn crate::cluster::wire::Pull>,
                        )],
                        ack_wait,
                        max_inflight: 2,
                        tags: Vec::new(),
                    };
                    if serve(s, stop.clone(), say.clone()).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            tokio::select! {
                biased;
                _ = p.killed() => {}
                _ = serving => {}
            }
        });
        proc
    };
    let mut workers = HashMap::new();
    for id in 1..=plan.workers {
        let w = start_worker(id, spans(id, &plan.pauses), spans(id, &plan.cuts));
        workers.insert(id, w);
    }
    // Kills, and their replacements (never paused or cut off).
    let mut killed: Vec<(usize, Duration)> = Vec::new();
    let mut kills = plan.kills.clone();
    kills.sort_by_key(|k| k.1);
    let mut replacements = Vec::new();
    for (next_id, (w, t, after)) in (plan.workers + 1..).zip(kills) {
        replacements.push((next_id, t + after));
        killed.push((w, t));
    }
    let mut events: Vec<(Duration, Option<usize>, usize)> = killed
        .iter()
        .map(|(w, t)| (*t, Some(*w), 0))
        .chain(replacements.iter().map(|(id, t)| (*t, None, *id)))
        .collect();
    events.sort_by_key(|e| e.0);
    let faults = async {
        for (t, kill, id) in events {
            tokio::time::sleep_until(at(t)).await;
            match kill {
                Some(w) => {
                    if let Some(p) = workers.get(&w) {
                        p.kill();
                    }
                }
                None => {
                    let p = start_worker(id, Vec::new(), Vec::new());
                    workers.insert(id, p);
                }
            }
        }
    };
    let mut waits = tokio::task::JoinSet::new();
    for (i, r) in plan.replicas.iter().enumerate() {
        let (queue, log, r) = (queue.clone(), log.clone(), r.clone());
        waits.spawn(async move {
            tokio::time::sleep_until(at(r.at)).await;
            let asked = queue.run(job(i as u32));
            let ended = match r.withdrawn {
                Some(w) => tokio::select! {
                    biased;
                    d = asked => Some(d),
                    _ = tokio::time::sleep_until(at(w)) => None,
                },
                None => Some(asked.await),
            };
            let ended = match ended {
                Some(Ok(d)) => Ended::Result(d.worker, d.attempt),
                Some(Err(why)) => Ended::Failed(why),
                None => Ended::Withdrawn,
            };
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .ended
                .insert(i as u32, (start.elapsed(), ended));
        });
    }
    let all = async { while waits.join_next().await.is_some() {} };
    tokio::join!(faults, async {
        let _ = tokio::time::timeout_at(at(plan.end), all).await;
    });
    tokio::time::sleep_until(at(plan.end)).await;
    let (left, lost, deliveries) = {
        let state = server.lock();
        let q = &state.queue;
        // Each delivery's replica, read from the item it delivered.
        let replica_of = |seq: u64| {
            q.queued
                .get(&seq)
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["job"]["replica"].as_u64())
                .unwrap_or(u64::MAX) as u32
        };
        let deliveries: Vec<Delivered> = q
            .deliveries
            .iter()
            .map(|(t, seq, n, p)| Delivered {
                at: *t - start,
                replica: replica_of(*seq),
                delivery: *n,
                worker: *p,
            })
            .collect();
        (q.left(), q.lost.clone(), deliveries)
    };
    stop.cancel();
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    let lost: Vec<(Duration, usize)> = lost.iter().map(|(t, p, _)| (*t - start, *p)).collect();
    let broken = check::check(&plan, &log, &deliveries, &left, &lost, &killed);
    Outcome {
        plan: (*plan).clone(),
        deliveries,
        executions: log.executions,
        ended: log.ended.into_iter().map(|(r, (t, e))| (r, t, e)).collect(),
        said: log.said,
        broken,
    }
}

/// The summary of many seeds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sweep {
    pub seeds: u64,
    pub first: u64,
    pub failures: u64,
    /// Per invariant, the seeds that broke it.
    pub by_invariant: BTreeMap<&'static str, u64>,
    /// Replicas queued and model calls made, over all seeds.
    pub replicas: u64,
    pub executions: u64,
    pub failed: Vec<Outcome>,
    pub wall: Duration,
    pub simulated: Duration,
}

/// Runs seeds `first .. first + seeds`, keeping the failures (at most
/// `keep`; a single seed is kept whatever happened).
pub fn sweep(first: u64, seeds: u64, keep: usize) -> Sweep {
    let began = std::time::Instant::now();
    let mut s = Sweep {
        seeds,
        first,
        ..Sweep::default()
    };
    for seed in first..first + seeds {
        let plan = Plan::from_seed(seed);
        s.simulated += plan.end;
        s.replicas += plan.replicas.len() as u64;
        let o = run(&plan);
        s.executions += o.executions.len() as u64;
        if !o.held() {
            s.failures += 1;
            super::count_broken(&mut s.by_invariant, &o.broken);
        }
        if (!o.held() || seeds == 1) && s.failed.len() < keep {
            s.failed.push(o);
        }
    }
    s.wall = began.elapsed();
    s
}
