//! Deterministic simulation of the coordinators: the election
//! ([`crate::cluster::lease`]) and the registry and takeover
//! ([`crate::cluster::coordinator`]), unchanged, in several simulated
//! processes that serve clients' requests, against the model of the NATS
//! server ([`super::server`]): the lease and registry buckets and the
//! journal's stream, in virtual time, with faults drawn from a seed.
//!
//! What stands in for the rest of a process (each mirrors the code named):
//!
//! - [`SimJournal`] (`simulation/journal.rs`): the journal's writer
//!   (`journal::jetstream::writer`): one message of a run in flight at a
//!   time; every append expects the run's last sequence as the writer
//!   knows it, so a writer another has overtaken is refused (fenced); a
//!   publish not acknowledged is sent again for [`RETRY_FOR`], then that
//!   run has failed; a fenced process writes nothing.
//! - [`run_model`]: a team's run (`team::submit`): its submission (or
//!   `Resumed`), one record per model call, its end, each flushed; a run
//!   that learns it was taken over stops.
//! - [`serve`]: the server's front in cluster mode (`server::cluster` and
//!   the cluster part of the chat handler in `server`): admit, register,
//!   start, answer.
//!
//! Beside the coordinators, the owners of `conclave run --cluster` runs
//! claim, beat and release with [`crate::cluster::owner::Owner`]'s own
//! code, and run their run with the same model; some are killed or
//! paused, and their runs taken over.
//!
//! After a run the [`Outcome`] is checked:
//!
//! - every request a server accepted was answered once;
//! - a client told "decided" has that decision in the journal;
//! - each run's journal is one fenced sequence: its terms never go back,
//!   it ends at most once, nothing follows its end, each model reply is
//!   in it once;
//! - once the faults are over, every journaled run ends, every run whose
//!   client was told it was handed over ends decided, and the registry
//!   empties.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::journal::SimJournal;
pub use super::journal::RETRY_FOR;
use super::server::{Proc, Record, RecordKind, Server};
use super::Paused;
use crate::cluster::coordinator::{Coordinator, Resumed, RunState, Runs, Unresumable};
use crate::cluster::kv::Kv;
use crate::cluster::lease::{Holder, Role};
use crate::cluster::owner::OWNER_TTL;

use crate::journal::TAKEN_OVER;

mod owners;
mod sweep;
pub use owners::OwnerRun;
pub use sweep::{sweep, Sweep};

/// What a seed makes happen: the election's faults, and the clients.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub faults: super::Schedule,
    /// Process `.0` is cut off from the server over the span `.1`–`.2`
    /// (it runs on; what it sends or is sent then is lost).
    pub partitions: Vec<(usize, Duration, Duration)>,
    /// When each client sends its request.
    pub requests: Vec<Duration>,
    /// Runs of `conclave run --cluster` processes (their owners).
    pub owners: Vec<OwnerRun>,
    /// When the run ends.
    pub end: Duration,
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let faults = super::Schedule::from_seed(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x007a_4e0e_5e55);
        let busy = faults.quiet_from().max(faults.ttl * 4);
        let mut requests: Vec<Duration> = (0..rng.random_range(4..=24))
            .map(|_| Duration::from_millis(rng.random_range(0..busy.as_millis() as u64)))
            .collect();
        requests.sort();
        let partitions = (0..rng.random_range(0..=2))
            .map(|_| {
                let p = rng.random_range(0..faults.processes);
                let at = Duration::from_millis(rng.random_range(0..busy.as_millis() as u64));
                let long =
                    Duration::from_millis(rng.random_range(0..(faults.ttl * 3).as_millis() as u64));
                (p, at, at + long)
            })
            .collect::<Vec<_>>();
        // After the last fault: the lease comes back, the registry is
        // scanned, a run unseen in the journal is forgotten, a writer
        // cut off gives up its retries, a run is resumed after its wait.
        let owners = OwnerRun::from_seed(seed, busy, faults.ttl);
        let mut plan = Plan {
            faults,
            partitions,
            requests,
            owners,
            end: Duration::ZERO,
        };
        plan.end = plan.quiet_from()
            + plan.faults.recovery()
            + crate::cluster::coordinator::NEVER_JOURNALED
            + RETRY_FOR
            + Duration::from_secs(30);
        plan
    }

    /// When the last fault is over.
    pub fn quiet_from(&self) -> Duration {
        let owners = self
            .owners
            .iter()
            .flat_map(|o| [o.killed, o.paused.map(|p| p.1)])
            .flatten();
        self.partitions
            .iter()
            .map(|p| p.2)
            .chain(owners)
            .max()
            .unwrap_or_default()
            .max(self.faults.quiet_from())
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.faults)?;
        for (p, a, b) in &self.partitions {
            writeln!(f, "  p{p} cut off from the server {a:.2?} .. {b:.2?}")?;
        }
        writeln!(
            f,
            "  {} requests at {:.2?}; checked at {:.1?}",
            self.requests.len(),
            self.requests,
            self.end
        )?;
        for (i, o) in self.owners.iter().enumerate() {
            write!(f, "  owner o{i} runs run o{i} from {:.2?}", o.at)?;
            if let Some((a, b)) = o.paused {
                write!(f, ", paused {a:.2?} .. {b:.2?}")?;
            }
            if let Some(k) = o.killed {
                write!(f, ", killed {k:.2?}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What a client was told.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Answer {
    /// 200: the run decided.
    Decided,
    /// 503 `standby`: this server does not coordinate (it never ran).
    Standby,
    /// 503 `cluster_unavailable`: it could not be registered (it never ran).
    Unregistered,
    /// 503 `coordinator_changed` before it started (it never ran).
    NeverStarted,
    /// 503 `coordinator_changed` while it ran: the cluster resumes it.
    HandedOver,
    /// 503 `journal_unavailable`: its end is not in the journal yet; the
    /// cluster resumes it.
    JournalUnavailable,
    /// The connection dropped (the server was killed).
    Dropped,
}

/// What the whole simulation shares: draws, and what happened.
struct World {
    rng: Mutex<ChaCha8Rng>,
    start: Instant,
    /// Model calls made: `(time, process, run, step)`.
    calls: Mutex<Vec<(Duration, usize, String, u32)>>,
    /// Each run's answer to its client (none: not answered yet).
    answers: Mutex<BTreeMap<String, (usize, Option<Answer>)>>,
}

impl World {
    fn draw(&self, lo: u64, hi: u64) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(lo..=hi)
    }
}

/// How a modelled run ended.
struct Done {
    cancelled: bool,
    /// Its submission is stored.
    submitted: bool,
    journal_error: Option<String>,
}

/// A team's run, as `team::submit` runs it (see the module's notes):
/// `resume` holds what the journal had, for a resumed run.
async fn run_model(
    journal: &SimJournal,
    world: &World,
    run: &str,
    term: u64,
    steps: u32,
    resume: Option<&[Record]>,
    cancel: CancellationToken,
) -> Done {
    let proc = journal.proc.id;
    journal.append(
        run,
        match resume {
            None => RecordKind::Submitted { steps },
            Some(_) => RecordKind::Resumed,
        },
        term,
    );
    let started = journal.flush_run(run).await.err();
    let cancel = cancel.child_token();
    let stop_if_taken = |e: &Option<String>| {
        if e.as_deref().is_some_and(|e| e.contains(TAKEN_OVER)) {
            cancel.cancel();
        }
    };
    stop_if_taken(&started);
    let mut recorder: Option<String> = None;
    let done =
        |step: u32| resume.is_some_and(|rs| rs.iter().any(|r| r.kind == RecordKind::Step { step }));
    for step in 0..steps {
        if done(step) {
            continue;
        }
        let latency = Duration::from_millis(world.draw(50, 1500));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(latency) => {}
        }
        world.calls.lock().unwrap_or_else(|p| p.into_inner()).push((
            Instant::now() - world.start,
            proc,
            run.to_string(),
            step,
        ));
        journal.append(run, RecordKind::Step { step }, term);
        let e = journal.flush_run(run).await.err();
        stop_if_taken(&e);
        if recorder.is_none() {
            recorder = e;
        }
    }
    let cancelled = cancel.is_cancelled();
    journal.append(
        run,
        RecordKind::Ended {
            decided: !cancelled,
        },
        term,
    );
    let ended = journal.flush_run(run).await.err();
    Done {
        cancelled,
        submitted: started.is_none(),
        journal_error: started.or(recorder).or(ended),
    }
}

/// The takeover's side of a simulated process.
struct SimRuns {
    journal: Arc<SimJournal>,
    world: Arc<World>,
}

#[async_trait::async_trait]
impl Runs for SimRuns {
    async fn state(&self, run: &str) -> Result<RunState, String> {
        let records = self.journal.read(run).await?;
        Ok(if records.is_empty() {
            RunState::NotJournaled
        } else if records
            .iter()
            .any(|r| matches!(r.kind, RecordKind::Ended { .. }))
        {
            RunState::Ended
        } else {
            RunState::InProgress
        })
    }

    fn fence(&self, why: &str) {
        self.journal.fence(why);
    }

    fn unfence(&self) {
        self.journal.unfence();
    }

    async fn resume(
        &self,
        run: &str,
        term: u64,
        cancel: CancellationToken,
    ) -> Result<Resumed, Unresumable> {
        // As `journal::resume`: a journal that cannot be read now is
        // tried again later; a run with no submission never can be.
        let records = self.journal.read(run).await.map_err(|why| Unresumable {
            why,
            for_good: false,
        })?;
        let Some(steps) = records.iter().find_map(|r| match r.kind {
            RecordKind::Submitted { steps } => Some(steps),
            _ => None,
        }) else {
            return Err(Unresumable {
                why: format!("run {run}: the journal has no submission record"),
                for_good: true,
            });
        };
        if records
            .iter()
            .any(|r| matches!(r.kind, RecordKind::Ended { .. }))
        {
            return Ok(Resumed {
                stop: "ended before".into(),
                journal_error: None,
            });
        }
        // As `Journal::resume_at`: read again; go on only if nothing was
        // written since, expecting the run's last sequence as read.
        let read_last = records.last().map_or(0, |r| r.seq);
        self.journal.forget(run);
        let now_last = self.journal.last_of(run).await.map_err(|why| Unresumable {
            why,
            for_good: false,
        })?;
        if now_last != read_last {
            return Err(Unresumable {
                why: format!("run {run} was written since it was read ({TAKEN_OVER})"),
                for_good: false,
            });
        }
        self.journal.lock().last.insert(run.to_string(), now_last);
        let done = run_model(
            &self.journal,
            &self.world,
            run,
            term,
            steps,
            Some(&records),
            cancel,
        )
        .await;
        Ok(Resumed {
            stop: if done.cancelled {
                "cancelled"
            } else {
                "decided"
            }
            .into(),
            journal_error: done.journal_error,
        })
    }
}

/// One simulated `serve --cluster` process.
struct Node {
    proc: Arc<Proc>,
    coordinator: Arc<Coordinator>,
    journal: Arc<SimJournal>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A request as the server's front runs it in cluster mode (see the
/// module's notes).
async fn serve(node: &Node, world: &World, run: &str, steps: u32) -> Answer {
    node.proc.gate().await;
    let c = &node.coordinator;
    let Some(term) = c.serving() else {
        return Answer::Standby;
    };
    if c.register(run, term).await.is_err() {
        return Answer::Unregistered;
    }
    if c.serving() != Some(term) {
        c.finished(run, true).await;
        return Answer::NeverStarted;
    }
    world
        .answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(run.to_string(), (node.proc.id, None));
    let deposed = c.while_leading(term);
    let done = run_model(&node.journal, world, run, term, steps, None, deposed).await;
    c.finished(run, done.journal_error.is_none()).await;
    node.proc.gate().await;
    // As `server::cluster::handed_over` answers.
    let fenced = done
        .journal_error
        .as_deref()
        .is_some_and(|e| e.contains(TAKEN_OVER));
    let cancelled = done.cancelled || fenced;
    if !done.submitted && (cancelled || done.journal_error.is_some()) {
        Answer::NeverStarted
    } else if cancelled {
        Answer::HandedOver
    } else if done.journal_error.is_some() {
        Answer::JournalUnavailable
    } else {
        Answer::Decided
    }
}

/// What happened in one run, and what broke.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// `(time, process, role)`, in the order they happened.
    pub roles: Vec<(Duration, usize, String)>,
    /// Each request's run and what its client was told.
    pub answers: Vec<(String, usize, Option<Answer>)>,
    /// The journal's stream at the end.
    pub journal: Vec<Record>,
    /// What the server did: `(time, operation and result)`.
    pub server: Vec<(Duration, String)>,
    /// Broken invariants: `(which, what happened)`; empty when it held.
    pub broken: Vec<(&'static str, String)>,
}

impl Outcome {
    pub fn held(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Runs `plan` on a runtime of its own (one thread, paused clock) and
/// checks the invariants.
pub fn run(plan: &Plan) -> Outcome {
    super::in_virtual_time(simulate(plan.clone()))
}

async fn simulate(plan: Plan) -> Outcome {
    let schedule = &plan.faults;
    let mut rng = ChaCha8Rng::seed_from_u64(schedule.seed ^ 0x0c00_4d14_a7e5);
    let server = Server::new(schedule.faults(), ChaCha8Rng::seed_from_u64(rng.random()));
    let start = server.start;
    let world = Arc::new(World {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(rng.random())),
        start,
        calls: Mutex::default(),
        answers: Mutex::default(),
    });
    let roles: Arc<Mutex<Vec<(Duration, usize, String)>>> = Arc::default();
    let stop = CancellationToken::new();
    let nodes: Arc<Mutex<Vec<Option<Arc<Node>>>>> = Arc::default();
    let spawn = |p: usize| -> Arc<Node> {
        let now = Instant::now() - start;
        let paused: Vec<(Instant, Instant)> = schedule
            .pauses
            .iter()
            .filter(|(q, _, b)| *q == p && *b > now)
            .map(|(_, a, b)| (start + *a.max(&now), start + *b))
            .collect();
        let cut: Vec<(Instant, Instant)> = plan
            .partitions
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, a, b)| (start + *a, start + *b))
            .collect();
        let proc = Proc::new(p, paused.clone(), cut);
        let (tx, rx) = watch::channel(Role::Standby { leader: None });
        let me = Holder {
            id: format!("p{p}"),
            http: None,
            term: None,
        };
        let lease: Arc<dyn Kv> = Arc::new(server.bucket("lease", Some(schedule.ttl), proc.clone()));
        let registry = Arc::new(server.bucket("registry", None, proc.clone()));
        let owners = Arc::new(server.bucket("owners", Some(OWNER_TTL), proc.clone()));
        let journal = SimJournal::new(server.clone(), proc.clone());
        let runs = Arc::new(SimRuns {
            journal: journal.clone(),
            world: world.clone(),
        });
        let coordinator = Arc::new(Coordinator::with(registry, owners, runs, rx.clone()));
        type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        let paused_future = |f: Boxed| Paused {
            inner: Box::pin(f),
            spans: paused.clone(),
            wake: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        let election = super::super::lease::elect(lease, me, schedule.ttl, tx, stop.clone());
        let lead = coordinator.clone().lead(stop.clone());
        let mut tasks = vec![
            tokio::spawn(paused_future(Box::pin(election))),
            tokio::spawn(paused_future(Box::pin(lead))),
        ];
        let log = roles.clone();
        let mut rx = rx;
        tasks.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let role = rx.borrow_and_update().clone();
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    Instant::now() - start,
                    p,
                    format!("{role:?}"),
                ));
            }
        }));
        Arc::new(Node {
            proc,
            coordinator,
            journal,
            tasks,
        })
    };
    for p in 0..schedule.processes {
        let node = spawn(p);
        nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Some(node));
    }
    // The clients: each sends its request to the process that serves
    // (else to any live one) and sends it again on an answer that says
    // it never ran, or when its connection drops.
    let mut clients = Vec::new();
    for (i, at) in plan.requests.iter().enumerate() {
        let (world, nodes, at) = (world.clone(), nodes.clone(), *at);
        let steps = world.draw(1, 3) as u32;
        clients.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + at).await;
            for attempt in 0..120 {
                let node = {
                    let nodes = nodes.lock().unwrap_or_else(|e| e.into_inner());
                    let live: Vec<Arc<Node>> = nodes.iter().flatten().cloned().collect();
                    live.iter()
                        .find(|n| n.coordinator.serving().is_some())
                        .or_else(|| live.get((i + attempt) % live.len().max(1)))
                        .cloned()
                };
                let Some(node) = node else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let run = format!("c{i}-{attempt}");
                let answer = tokio::select! {
                    biased;
                    a = serve(&node, &world, &run, steps) => a,
                    _ = node.proc.killed() => Answer::Dropped,
                };
                if let Some(a) = world
                    .answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&run)
                {
                    a.1 = Some(answer.clone());
                }
                match answer {
                    Answer::Standby | Answer::Unregistered | Answer::NeverStarted => {
                        tokio::time::sleep(Duration::from_secs(1)).await
                    }
                    Answer::Dropped => {}
                    _ => return,
                }
            }
        }));
    }
    let owned = owners::start(&plan.owners, &server, &world, start);
    // Kills and restarts, in time order.
    let mut events: Vec<(Duration, Option<usize>)> = Vec::new();
    for (p, at, after) in &schedule.kills {
        events.push((*at, Some(*p)));
        events.push((*at + *after, None));
    }
    events.sort_by_key(|e| e.0);
    for (at, kill) in events {
        tokio::time::sleep_until(start + at).await;
        let mut nodes = nodes.lock().unwrap_or_else(|e| e.into_inner());
        match kill {
            Some(p) => {
                if let Some(node) = nodes.get_mut(p).and_then(Option::take) {
                    node.proc.kill();
                    for t in &node.tasks {
                        t.abort();
                    }
                }
            }
            None => {
                let p = nodes.len();
                nodes.push(Some(spawn(p)));
            }
        }
    }
    tokio::time::sleep_until(start + plan.end).await;
    // What the registry holds now, read as an operator would.
    let registered = {
        let probe = server.bucket("registry", None, Proc::steady());
        crate::cluster::coordinator::registered(&probe)
            .await
            .unwrap_or_default()
    };
    stop.cancel();
    for c in clients.into_iter().chain(owned) {
        c.abort();
    }
    let journal = server.lock().journal.clone();
    let answers: Vec<(String, usize, Option<Answer>)> = world
        .answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(run, (p, a))| (run.clone(), *p, a.clone()))
        .collect();
    let broken = super::invariants::check(&plan, &journal, &answers, &registered);
    let roles = roles.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let server_ops = server.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Outcome {
        plan,
        roles,
        answers,
        journal,
        server: server_ops,
        broken,
    }
}
