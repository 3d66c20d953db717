//! Deterministic simulation of the cluster's election: the lease loop of
//! [`super::lease`], unchanged, in several simulated processes against an
//! in-process model of the NATS key-value bucket it uses ([`Server`]), in
//! virtual time, with faults drawn from a seed.
//!
//! A seed gives a [`Schedule`]: how many processes, the lease's time to
//! live, the network's latency and reply loss, when the server is down
//! (durable state kept, requests in flight lost), which process is paused
//! (`SIGSTOP`: nothing of it runs, its timers fire late) and which is
//! killed and restarted. The same seed runs the same way every time: one
//! thread, tokio's paused clock, and one seeded generator for every
//! random draw. After each run the [`Outcome`] is checked:
//!
//! - **one leader at a time**: no two processes are leading, unpaused, at
//!   the same moment;
//! - **terms grow**: each new leader's term is larger than every earlier
//!   one's, and no term has two holders;
//! - **a leader comes back**: once the last fault is over, one live
//!   process leads by the end of the run.
//!
//! `conclave bench dst --seeds N` runs many seeds; a failure prints its
//! seed and schedule, and [`run`] with that seed replays it exactly.
//!
//! [`takeover`] runs the coordinators as well: the same election, the
//! registry and takeover of [`super::coordinator`], serving clients, and
//! the journal's fencing, against the model of the whole server
//! (`simulation/server.rs`). [`work`] runs the work queue: the
//! coordinator's queue and `conclave worker`'s loop, unchanged, behind the
//! [`super::wire`] seam, against the model's core messages and work
//! stream (`simulation/queue.rs`) and its heartbeat bucket. [`takeover`]
//! also runs the owners of `conclave run --cluster`. What is not
//! simulated yet: the work queue together with the takeover (one
//! coordinator in [`work`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kv::Kv;
use super::lease::{Holder, Role};

mod invariants;
mod journal;
mod queue;
mod server;
pub mod takeover;
pub mod work;

pub use server::{Proc, Record, RecordKind, Server, SimKv, REQUEST_TIMEOUT};

/// What a seed makes happen, in virtual time from the start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Schedule {
    pub seed: u64,
    /// Processes at the start.
    pub processes: usize,
    pub ttl: Duration,
    /// Each request and each reply takes up to this long, drawn per
    /// message.
    pub max_latency: Duration,
    /// The chance that a reply is lost (the request took effect).
    pub reply_loss: f64,
    /// The server is down over these spans.
    pub server_down: Vec<(Duration, Duration)>,
    /// Process `.0` is paused over the span `.1`–`.2`.
    pub pauses: Vec<(usize, Duration, Duration)>,
    /// Process `.0` is killed at `.1`; a new process starts `.2` later.
    pub kills: Vec<(usize, Duration, Duration)>,
    /// When the run ends.
    pub end: Duration,
}

impl Schedule {
    /// The faults of `seed`.
    pub fn from_seed(seed: u64) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let processes = rng.random_range(2..=4);
        let ttl = Duration::from_secs(if rng.random_bool(0.5) { 2 } else { 10 });
        let faults = ttl * 8;
        // Whole milliseconds: the timers' resolution, so that a pause
        // ends exactly when its process wakes.
        let within = |rng: &mut ChaCha8Rng, d: Duration| {
            Duration::from_millis((d.as_millis() as f64 * rng.random::<f64>()) as u64)
        };
        let span = |rng: &mut ChaCha8Rng, longest: Duration| {
            let start = within(rng, faults);
            (start, start + within(rng, longest))
        };
        // Each way; the lease assumes a round trip well under a quarter
        // of its time to live.
        let max_latency = match rng.random_range(0..4) {
            0 => Duration::ZERO,
            1 => Duration::from_millis(5),
            2 => ttl / 20,
            _ => ttl / 10,
        };
        let reply_loss = [0.0, 0.01, 0.1][rng.random_range(0..3)];
        let server_down = (0..rng.random_range(0..=2))
            .map(|_| span(&mut rng, ttl * 2))
            .collect();
        let pauses = (0..rng.random_range(0..=4))
            .map(|_| {
                let p = rng.random_range(0..processes);
                let (a, b) = span(&mut rng, ttl * 3);
                (p, a, b)
            })
            .collect();
        let kills = (0..rng.random_range(0..=2))
            .map(|_| {
                let p = rng.random_range(0..processes);
                let at = within(&mut rng, faults);
                (p, at, within(&mut rng, ttl))
            })
            .collect();
        let mut s = Schedule {
            seed,
            processes,
            ttl,
            max_latency,
            reply_loss,
            server_down,
            pauses,
            kills,
            end: Duration::ZERO,
        };
        s.end = s.quiet_from() + s.recovery() + ttl;
        s
    }

    /// How the server and the network fail.
    fn faults(&self) -> server::Faults {
        server::Faults {
            down: self.server_down.clone(),
            max_latency: self.max_latency,
            reply_loss: self.reply_loss,
            quiet: self.quiet_from(),
            ..Default::default()
        }
    }

    /// When the last fault is over.
    pub fn quiet_from(&self) -> Duration {
        self.server_down
            .iter()
            .map(|s| s.1)
            .chain(self.pauses.iter().map(|p| p.2))
            .chain(self.kills.iter().map(|k| k.1 + k.2))
            .max()
            .unwrap_or_default()
    }

    /// How long after the last fault a leader must be back: a dead
    /// holder's value expires, a deposed one waits a quarter of the ttl,
    /// a standby tries every quarter, and a request lost to the outage
    /// times out.
    pub fn recovery(&self) -> Duration {
        self.ttl * 2 + REQUEST_TIMEOUT + self.max_latency * 4
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: {} processes, lease ttl {:?}, latency up to {:?}, reply loss {}, run until {:.1?}",
            self.seed, self.processes, self.ttl, self.max_latency, self.reply_loss, self.end
        )?;
        for (a, b) in &self.server_down {
            writeln!(f, "  server down {a:.2?} .. {b:.2?}")?;
        }
        for (p, a, b) in &self.pauses {
            writeln!(f, "  p{p} paused {a:.2?} .. {b:.2?}")?;
        }
        for (p, at, after) in &self.kills {
            writeln!(
                f,
                "  p{p} killed at {at:.2?}, a new process {after:.2?} later"
            )?;
        }
        Ok(())
    }
}

/// A future that is not polled over its pause spans, as a stopped process
/// does not run: what it waits on completes meanwhile and is seen late.
struct Paused<F> {
    inner: Pin<Box<F>>,
    spans: Vec<(Instant, Instant)>,
    wake: Pin<Box<tokio::time::Sleep>>,
}

impl<F: Future> Future for Paused<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let now = Instant::now();
        let until = self
            .spans
            .iter()
            .filter(|(a, b)| *a <= now && now < *b)
            .map(|s| s.1)
            .max();
        if let Some(until) = until {
            self.wake.as_mut().reset(until);
            if self.wake.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.inner.as_mut().poll(cx)
    }
}

/// What happened in one run: each process's roles as they changed, and
/// what broke.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub schedule: Schedule,
    /// `(time, process, role)`, in the order they happened.
    pub roles: Vec<(Duration, usize, String)>,
    /// What the server did: `(time, operation and result)`.
    pub server: Vec<(Duration, String)>,
    /// Broken invariants, in words; empty when the run held.
    pub broken: Vec<String>,
}

impl Outcome {
    pub fn held(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Runs `schedule` on a runtime of its own (one thread, paused clock) and
/// checks the invariants.
pub fn run(schedule: &Schedule) -> Outcome {
    in_virtual_time(simulate(schedule.clone()))
}

/// Runs `f` to its end on a runtime of its own: one thread, tokio's
/// paused clock (time jumps to the next timer when nothing can run).
/// The cluster's warnings (lost renewals, late wake-ups, failed writes)
/// are what a schedule is made of: not printed.
fn in_virtual_time<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        rt.block_on(f)
    })
}

/// One process's life: when it was killed (if it was), and its pauses.
struct Life {
    ended: Option<Duration>,
    paused: Vec<(Duration, Duration)>,
}

async fn simulate(schedule: Schedule) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(schedule.seed ^ 0x005e_ed0f_1a7e);
    let server = Server::new(schedule.faults(), ChaCha8Rng::seed_from_u64(rng.random()));
    let start = server.start;
    let log: Arc<Mutex<Vec<(Duration, usize, Role)>>> = Arc::default();
    let mut lives: Vec<Life> = Vec::new();
    let mut handles = Vec::new();
    let stop = CancellationToken::new();
    // Starts process `p` now: its election, and a watcher that logs its
    // roles as they change.
    let spawn = |p: usize, lives: &mut Vec<Life>| {
        let now = Instant::now() - start;
        let paused: Vec<(Duration, Duration)> = schedule
            .pauses
            .iter()
            .filter(|(q, _, b)| *q == p && *b > now)
            .map(|(_, a, b)| (*a.max(&now), *b))
            .collect();
        let (tx, mut rx) = tokio::sync::watch::channel(Role::Standby { leader: None });
        let me = Holder {
            id: format!("p{p}"),
            http: None,
            term: None,
        };
        let kv: Arc<dyn Kv> = Arc::new(server.bucket("lease", Some(schedule.ttl), Proc::steady()));
        let election = super::lease::elect(kv, me, schedule.ttl, tx, stop.clone());
        let task = tokio::spawn(Paused {
            inner: Box::pin(election),
            spans: paused
                .iter()
                .map(|(a, b)| (start + *a, start + *b))
                .collect(),
            wake: Box::pin(tokio::time::sleep(Duration::ZERO)),
        });
        let log = log.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let role = rx.borrow_and_update().clone();
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    Instant::now() - start,
                    p,
                    role,
                ));
            }
        });
        lives.push(Life {
            ended: None,
            paused,
        });
        task
    };
    for p in 0..schedule.processes {
        handles.push(Some(spawn(p, &mut lives)));
    }
    // Kills and restarts, in time order.
    let mut kills = schedule.kills.clone();
    kills.sort_by_key(|k| k.1);
    let mut events: Vec<(Duration, Option<usize>)> = Vec::new();
    for (p, at, after) in &kills {
        events.push((*at, Some(*p)));
        events.push((*at + *after, None));
    }
    events.sort_by_key(|e| e.0);
    for (at, kill) in events {
        tokio::time::sleep_until(start + at).await;
        match kill {
            Some(p) => {
                if let Some(h) = handles.get_mut(p).and_then(Option::take) {
                    h.abort();
                    lives[p].ended = Some(at);
                }
            }
            None => {
                let p = handles.len();
                handles.push(Some(spawn(p, &mut lives)));
            }
        }
    }
    tokio::time::sleep_until(start + schedule.end).await;
    stop.cancel();
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut o = check(schedule, &lives, &log);
    o.server = server.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
    o
}

/// The invariants over a run's role log.
fn check(schedule: Schedule, lives: &[Life], log: &[(Duration, usize, Role)]) -> Outcome {
    let mut broken = Vec::new();
    let end = schedule.end;
    // Each process's spans of leading: (from, to, term).
    let mut leading: Vec<(usize, Duration, Duration, u64)> = Vec::new();
    for (p, life) in lives.iter().enumerate() {
        let mut open: Option<(Duration, u64)> = None;
        let stop = life.ended.unwrap_or(end);
        for (t, _, role) in log.iter().filter(|e| e.1 == p) {
            if let Some((from, term)) = open.take() {
                leading.push((p, from, (*t).min(stop), term));
            }
            if let Role::Leading { term } = role {
                open = Some((*t, *term));
            }
        }
        if let Some((from, term)) = open {
            leading.push((p, from, stop, term));
        }
    }
    // Unpaused parts of a span.
    let unpaused = |p: usize, from: Duration, to: Duration| -> Vec<(Duration, Duration)> {
        let mut parts = vec![(from, to)];
        for (a, b) in &lives[p].paused {
            parts = parts
                .into_iter()
                .flat_map(|(x, y)| {
                    let mut out = Vec::new();
                    if x < (*a).min(y) {
                        out.push((x, (*a).min(y)));
                    }
                    if (*b).max(x) < y {
                        out.push(((*b).max(x), y));
                    }
                    out
                })
                .collect();
        }
        parts
    };
    for (i, &(p, f1, t1, term1)) in leading.iter().enumerate() {
        for &(q, f2, t2, term2) in &leading[i + 1..] {
            if p == q {
                continue;
            }
            for (a1, b1) in unpaused(p, f1, t1) {
                for (a2, b2) in unpaused(q, f2, t2) {
                    let (a, b) = (a1.max(a2), b1.min(b2));
                    if a < b {
                        broken.push(format!(
                            "two leaders at once: p{p} (term {term1}) and p{q} (term {term2}) both lead, unpaused, over {a:.3?} .. {b:.3?}"
                        ));
                    }
                }
            }
        }
    }
    let mut by_start = leading.clone();
    by_start.sort_by_key(|l| (l.1, l.0));
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut highest: Option<(u64, usize)> = None;
    for &(p, from, _, term) in &by_start {
        if let Some(&q) = seen.get(&term) {
            if q != p {
                broken.push(format!("term {term} has two holders: p{q} and p{p}"));
            }
            continue;
        }
        if let Some((h, q)) = highest {
            if term <= h {
                broken.push(format!(
                    "terms went back: p{p} leads in term {term} at {from:.3?}, after p{q}'s term {h}"
                ));
            }
        }
        seen.insert(term, p);
        highest = Some((term, p));
    }
    let leader_at_end = leading
        .iter()
        .filter(|l| l.2 == end && lives[l.0].ended.is_none())
        .filter(|l| {
            lives[l.0]
                .paused
                .iter()
                .all(|(a, b)| !(*a <= end && end < *b))
        })
        .count();
    if leader_at_end != 1 {
        broken.push(format!(
            "{leader_at_end} live processes lead at the end ({:.1?}), {:.1?} after the last fault",
            end,
            end.saturating_sub(schedule.quiet_from())
        ));
    }
    let roles = log
        .iter()
        .map(|(t, p, r)| (*t, *p, format!("{r:?}")))
        .collect();
    Outcome {
        schedule,
        roles,
        server: Vec::new(),
        broken,
    }
}

/// Counts each invariant `broken` names once, in `by_invariant`.
fn count_broken(
    by_invariant: &mut std::collections::BTreeMap<&'static str, u64>,
    broken: &[(&'static str, String)],
) {
    let mut which: Vec<&'static str> = broken.iter().map(|b| b.0).collect();
    which.sort();
    which.dedup();
    for w in which {
        *by_invariant.entry(w).or_default() += 1;
    }
}

/// The summary of many seeds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sweep {
    pub seeds: u64,
    pub first: u64,
    /// Seeds that broke an invariant.
    pub failures: u64,
    /// The first of them, in full (a single seed's run, whatever it did).
    pub failed: Vec<Outcome>,
    pub wall: Duration,
    /// Virtual time simulated, over all seeds.
    pub simulated: Duration,
}

/// Runs seeds `first .. first + seeds`, keeping the failures (at most
/// `keep`).
pub fn sweep(first: u64, seeds: u64, keep: usize) -> Sweep {
    let began = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut failures = 0;
    let mut simulated = Duration::ZERO;
    for seed in first..first + seeds {
        let schedule = Schedule::from_seed(seed);
        simulated += schedule.end;
        let o = run(&schedule);
        if !o.held() {
            failures += 1;
        }
        // One seed is a replay: kept whatever happened.
        if (!o.held() || seeds == 1) && failed.len() < keep {
            failed.push(o);
        }
    }
    Sweep {
        seeds,
        first,
        failures,
        failed,
        wall: began.elapsed(),
        simulated,
    }
}

#[cfg(test)]
mod tests;
