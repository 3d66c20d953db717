//! The cluster under compound faults, on the real thing: a nats-server of
//! the benchmark's own (so that it can kill and restart it), two
//! `conclave serve --cluster` processes and three `conclave worker`
//! processes (this binary), clients that keep asking whichever server
//! coordinates, and a seeded schedule of faults: workers killed
//! (`SIGKILL`) and paused (`SIGSTOP` … `SIGCONT`), the coordinator and the
//! standby killed and restarted, the NATS server killed and restarted with
//! its store kept, a worker added. Afterwards it checks what must hold
//! whatever the faults: every request answered, every journaled run ended,
//! no ballot counted twice, no model call made twice, no run left
//! registered; and reports the time until answers flow again after each
//! fault.
//!
//! Seed 0 is the schedule an operator first reported the cluster stalling
//! under; other seeds draw their own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::failover::free_port;

use crate::journal::jetstream::{ClusterConfig, JetStreamJournal};
use crate::journal::{Entry, Journal, RunLog};
use crate::team::events::Event;

mod clients;
mod procs;
use clients::{client, Asked};
use procs::{strike, Proc, Procs};

/// What the benchmark is asked to do.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub seed: u64,
    /// The servers' `--lease-ttl`.
    pub lease_ttl: Duration,
    /// Clients asking at once, each one question after another.
    pub clients: usize,
    /// How long, after the last fault, runs have to end.
    pub settle: Duration,
    /// The nats-server program.
    pub nats_server: PathBuf,
    /// The paper's measured call latencies, which the simulated node
    /// replays.
    pub latencies: PathBuf,
    /// Keep the processes' logs even when every invariant held.
    pub keep_logs: bool,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// `SIGKILL` to worker `worker` (of those started, in order; the next
    /// one alive if it is gone).
    KillWorker { worker: usize },
    /// `SIGSTOP` to worker `worker`, `SIGCONT` after `for_ms`.
    PauseWorker { worker: usize, for_ms: u64 },
    /// `SIGKILL` to the server coordinating at that moment (the first if
    /// none is), started again after `restart_after_ms`.
    KillCoordinator { restart_after_ms: u64 },
    /// `SIGKILL` to a server not coordinating, started again after
    /// `restart_after_ms`.
    KillStandby { restart_after_ms: u64 },
    /// `SIGKILL` to the NATS server, started again (its store kept) after
    /// `restart_after_ms`.
    KillNats { restart_after_ms: u64 },
    /// One more worker.
    StartWorker,
}

/// A fault and when it strikes, from the first request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// Workers started before the first request.
pub const WORKERS: usize = 3;

/// The schedule of `seed`: seed 0 is the reported one; any other draws 5
/// to 9 faults over 24 seconds.
pub fn schedule(seed: u64) -> Vec<Step> {
    let step = |at_ms, fault| Step { at_ms, fault };
    if seed == 0 {
        return vec![
            step(1_400, Fault::KillWorker { worker: 0 }),
            step(
                2_300,
                Fault::PauseWorker {
                    worker: 1,
                    for_ms: 9_900,
                },
            ),
            step(
                3_200,
                Fault::KillCoordinator {
                    restart_after_ms: 6_000,
                },
            ),
            step(
                14_800,
                Fault::KillNats {
                    restart_after_ms: 1_600,
                },
            ),
            step(
                20_600,
                Fault::KillCoordinator {
                    restart_after_ms: 1_000,
                },
            ),
            step(21_600, Fault::StartWorker),
        ];
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = rng.random_range(5..=9);
    let mut steps: Vec<Step> = (0..n)
        .map(|_| {
            let at_ms = rng.random_range(1_000..24_000);
            let fault = match rng.random_range(0..10) {
                0 | 1 => Fault::KillWorker {
                    worker: rng.random_range(0..WORKERS),
                },
                2 | 3 => Fault::PauseWorker {
                    worker: rng.random_range(0..WORKERS),
                    for_ms: rng.random_range(500..10_000),
                },
                4 | 5 => Fault::KillCoordinator {
                    restart_after_ms: rng.random_range(300..8_000),
                },
                6 => Fault::KillStandby {
                    restart_after_ms: rng.random_range(300..5_000),
                },
                7 | 8 => Fault::KillNats {
                    restart_after_ms: rng.random_range(300..4_000),
                },
                _ => Fault::StartWorker,
            };
            Step { at_ms, fault }
        })
        .collect();
    steps.sort_by_key(|s| s.at_ms);
    steps
}

/// What a fault did, and how long until answers flowed again.
#[derive(Clone, Debug, Serialize)]
pub struct Struck {
    #[serde(flatten)]
    pub step: Step,
    /// What it struck ("server 1 (coordinating)", "worker 2", ...), or why
    /// nothing.
    pub target: String,
    /// From the fault until the first reply 200 to a try sent after it
    /// (a first try, or a request asked again); unset if none came.
    pub recovered_after: Option<Duration>,
}

/// The numbers, and what did not hold.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub lease_ttl: Duration,
    pub clients: usize,
    pub faults: Vec<Struck>,
    /// Requests sent (a request asked again after a 503 or a dropped
    /// connection counts once).
    pub requests: usize,
    /// Of those, answered 200.
    pub answered: usize,
    /// From a request's first try to its answer, over the answered ones:
    /// the median and the longest.
    pub answer_p50: Duration,
    pub answer_max: Duration,
    /// Times a request was asked again, and why (a 503's error code, or
    /// no connection).
    pub retried: usize,
    pub retried_because: BTreeMap<String, usize>,
    /// Runs in the journal, ended, and decided.
    pub runs: usize,
    pub runs_ended: usize,
    pub runs_decided: usize,
    /// From the last fault until every journaled run had ended and no run
    /// was left registered with a coordinator.
    pub all_ended_after: Option<Duration>,
    /// Server and worker processes that exited by themselves (each
    /// started again, as a supervisor would).
    pub exited_by_themselves: Vec<String>,
    /// Every invariant broken, in words; empty when all held.
    pub broken: Vec<String>,
    /// Where the processes' logs are (kept when something broke).
    pub logs: Option<PathBuf>,
}

/// How long a client asks one question again before it gives up.
pub(super) const GIVE_UP: Duration = Duration::from_secs(180);

pub(super) async fn health(http: &reqwest::Client, port: u16) -> Option<u16> {
    http.get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// The team: two tasks of three replicas (the second on the first's
/// answer) on a simulated node replaying GPT-5.2's measured latencies
/// scaled by 0.25.
fn team(latencies: &Path) -> String {
    format!(
        r#"[team]
name = "chaos-bench"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
latency = {{ kind = "empirical", csv = {:?}, model = "openai_gpt-5.2", scale = 0.25 }}

[[task]]
id = "first"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"

[[task]]
id = "then"
role = "solver"
prompt = "Check: {{question}}"
replicas = 3
voter = "majority"
answer_kind = "number"
depends_on = ["first"]
"#,
        latencies.display().to_string()
    )
}

/// Runs one seed's schedule with `exe` (this binary) as the servers and
/// workers.
pub async fn run(exe: &Path, config: &ChaosConfig) -> Result<ChaosReport, String> {
    let latencies = config.latencies.canonicalize().map_err(|e| {
        format!(
            "{}: {e} (run from the repository's root, or name the file with --latencies)",
            config.latencies.display()
        )
    })?;
    let dir = std::env::temp_dir().join(format!(
        "conclave-bench-chaos-{}-{}",
        std::process::id(),
        config.seed
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = measure(exe, config, &dir, &latencies).await?;
    if report.broken.is_empty() && report.exited_by_themselves.is_empty() && !config.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        report.logs = Some(dir);
    }
    Ok(report)
}

async fn measure(
    exe: &Path,
    config: &ChaosConfig,
    dir: &Path,
    latencies: &Path,
) -> Result<ChaosReport, String> {
    let spec = dir.join("team.toml");
    std::fs::write(&spec, team(latencies)).map_err(|e| e.to_string())?;
    let (nats_port, monitor_port) = (free_port()?, free_port()?);
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{nats_port}\nhttp: 127.0.0.1:{monitor_port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            dir.join("nats-store").display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let cluster = ClusterConfig {
        name: format!("chaos{}", config.seed),
        monitor: Some(format!("http://127.0.0.1:{monitor_port}")),
        ..ClusterConfig::new(format!("nats://127.0.0.1:{nats_port}"))
    };
    let ttl = humantime::format_duration(config.lease_ttl).to_string();
    let ports = vec![free_port()?, free_port()?];
    let spec_arg = spec.display().to_string();
    let servers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| Proc {
            what: format!("server {i}"),
            args: vec![
                "serve".into(),
                spec_arg.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--no-watch".into(),
                "--lease-ttl".into(),
                ttl.clone(),
                "--data-dir".into(),
                dir.join(format!("server-{i}")).display().to_string(),
            ],
            log: dir.join(format!("server-{i}.log")),
            child: None,
            started: Instant::now(),
            down: false,
            paused: false,
        })
        .collect();
    let mut procs = Procs {
        exe: exe.to_path_buf(),
        env: cluster.child_env(),
        nats: Proc {
            what: "nats-server".into(),
            args: vec!["-c".into(), conf.display().to_string()],
            log: dir.join("nats.log"),
            child: None,
            started: Instant::now(),
            down: false,
            paused: false,
        },
        nats_exe: config.nats_server.clone(),
        servers,
        ports: ports.clone(),
        workers: Vec::new(),
        worker_args: vec![
            "worker".into(),
            spec_arg.clone(),
            "--max-inflight".into(),
            "16".into(),
        ],
        dir: dir.to_path_buf(),
        exited: Vec::new(),
    };
    let nats_exe = procs.nats_exe.clone();
    procs.nats.start(&nats_exe, &[]).map_err(|e| {
        format!("{e} (give the nats-server program with --nats-server; scripts/install-nats.sh fetches it)")
    })?;
    wait_tcp(nats_port, Duration::from_secs(20)).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let startup = Duration::from_secs(120);
    for (i, status) in [(0, 200), (1, 503)] {
        procs.servers[i].start(exe, &procs.env)?;
        let t0 = Instant::now();
        while health(&http, ports[i]).await != Some(status) {
            if !procs.servers[i].alive() {
                let log = std::fs::read_to_string(&procs.servers[i].log).unwrap_or_default();
                return Err(format!(
                    "server {i} exited as it started: {}",
                    log.lines().last().unwrap_or("(it said nothing)")
                ));
            }
            if t0.elapsed() > startup {
                return Err(format!(
                    "server {i} did not answer /healthz {status} within {startup:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..WORKERS {
        procs.start_worker()?;
    }
    let t0 = Instant::now();
    while crate::cluster::status(&cluster).await?.workers.len() < WORKERS {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("{WORKERS} workers did not start within a minute"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(crate::cluster::work::HEARTBEAT_EVERY * 2).await;

    let steps = schedule(config.seed);
    let last = Duration::from_millis(steps.iter().map(|s| s.at_ms).max().unwrap_or(0));
    let start = Instant::now();
    let stop = start + last + Duration::from_secs(3);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..config.clients)
        .map(|id| tokio::spawn(client(id, http.clone(), ports.clone(), stop, asked.clone())))
        .collect();
    let procs = Arc::new(tokio::sync::Mutex::new(procs));
    // The supervisor.
    let supervisor = {
        let procs = procs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let mut p = procs.lock().await;
                if let Err(e) = p.supervise() {
                    p.exited.push(format!("not started again: {e}"));
                }
            }
        })
    };
    // The faults, each at its time; a restart or a SIGCONT later.
    let mut struck = Vec::new();
    let mut pending = Vec::new();
    for step in &steps {
        let at = start + Duration::from_millis(step.at_ms);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        let struck_at = Instant::now();
        let target = strike(&procs, &http, &step.fault, &mut pending).await?;
        struck.push((step.clone(), target, struck_at));
    }
    for p in pending {
        let _ = p.await;
    }
    for c in clients {
        let _ = c.await;
    }
    let last_fault = struck.last().map(|s| s.2).unwrap_or(start);

    // Every journaled run ends within `settle` of the last fault.
    let journal = JetStreamJournal::connect(&cluster).map_err(|e| e.to_string())?;
    let mut all_ended_after = None;
    let rows = loop {
        let j = journal.clone();
        let rows = tokio::task::spawn_blocking(move || j.runs())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let registered = crate::cluster::status(&cluster)
            .await
            .map(|s| s.runs.len())
            .unwrap_or(usize::MAX);
        if rows.iter().all(|r| r.ended_ms.is_some()) && registered == 0 {
            all_ended_after = Some(last_fault.elapsed());
            break rows;
        }
        if last_fault.elapsed() > config.settle {
            break rows;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    supervisor.abort();
    let status = crate::cluster::status(&cluster).await?;

    let asked = std::mem::take(&mut *asked.lock().expect("not poisoned"));
    let mut broken = Vec::new();
    let unanswered: Vec<&Asked> = asked.iter().filter(|a| a.answered.is_none()).collect();
    if !unanswered.is_empty() {
        let mut why: HashMap<&str, usize> = HashMap::new();
        for a in &unanswered {
            *why.entry(a.failed.as_deref().unwrap_or("?")).or_default() += 1;
        }
        let mut why: Vec<_> = why.into_iter().collect();
        why.sort();
        broken.push(format!(
            "{} of {} requests not answered: {}",
            unanswered.len(),
            asked.len(),
            why.iter()
                .map(|(w, n)| format!("{n} × {w}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut decided = 0;
    for row in &rows {
        if row.ended_ms.is_none() {
            broken.push(format!(
                "run {} never ended ({} s after the last fault)",
                row.run,
                config.settle.as_secs()
            ));
            continue;
        }
        if row.stop.as_deref() == Some("decided") {
            decided += 1;
        }
        let j = journal.clone();
        let run = row.run.clone();
        match tokio::task::spawn_blocking(move || j.read(&run))
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(log) => broken.extend(counted_twice(&row.run, &log)),
            Err(e) => broken.push(format!("run {}: its journal cannot be read: {e}", row.run)),
        }
    }
    // Only now, with the journal read, does everything stop.
    let mut procs = procs.lock().await;
    let exited = std::mem::take(&mut procs.exited);
    procs.kill_all();
    drop(procs);
    for (run, _) in &status.runs {
        broken.push(format!(
            "run {run} still registered with a coordinator {} s after the last fault",
            last_fault.elapsed().as_secs()
        ));
    }
    let waits: Vec<Duration> = asked
        .iter()
        .filter_map(|a| Some(a.answered? - a.sent))
        .collect();
    let faults = struck
        .into_iter()
        .map(|(step, target, at)| Struck {
            recovered_after: asked
                .iter()
                .filter(|a| a.attempt >= at)
                .filter_map(|a| a.answered)
                .min()
                .map(|t| t - at),
            step,
            target,
        })
        .collect();
    Ok(ChaosReport {
        seed: config.seed,
        lease_ttl: config.lease_ttl,
        clients: config.clients,
        faults,
        requests: asked.len(),
        answered: asked.len() - unanswered.len(),
        answer_p50: super::failover::quantile(&waits, 0.5),
        answer_max: super::failover::quantile(&waits, 1.0),
        retried: asked.iter().map(|a| a.retries).sum(),
        retried_because: asked.iter().fold(BTreeMap::new(), |mut all, a| {
            for (k, n) in &a.why {
                *all.entry(k.clone()).or_default() += n;
            }
            all
        }),
        runs: rows.len(),
        runs_ended: rows.iter().filter(|r| r.ended_ms.is_some()).count(),
        runs_decided: decided,
        all_ended_after,
        exited_by_themselves: exited,
        broken,
        logs: None,
    })
}

/// Ballots counted twice and model calls made twice in one run's journal.
/// A resumed run records its ballots again, from the replies the journal
/// kept, so ballots count once per attempt (from the submission, or from
/// a resumption on); a model call is made once in the whole run (a hedged
/// copy of a call, and a call answered from the journal on resume, are
/// not made again).
fn counted_twice(run: &str, log: &RunLog) -> Vec<String> {
    let mut ballots: HashMap<(usize, &str, u32, u32), usize> = HashMap::new();
    let mut calls: HashMap<(&str, u32, u32), usize> = HashMap::new();
    let mut attempt = 0;
    for record in &log.records {
        let e = match &record.entry {
            Entry::Resumed { .. } => {
                attempt += 1;
                continue;
            }
            Entry::Event { event } => event,
            _ => continue,
        };
        match e {
            Event::Ballot {
                task,
                round,
                ballot,
                ..
            } => {
                *ballots
                    .entry((attempt, task, *round, ballot.replica))
                    .or_default() += 1
            }
            Event::ModelCall {
                task,
                replica,
                call,
                hedged: false,
                replayed: false,
                ..
            } => *calls.entry((task, *replica, *call)).or_default() += 1,
            _ => {}
        }
    }
    let mut broken = Vec::new();
    for ((_, task, round, replica), n) in ballots {
        if n > 1 {
            broken.push(format!(
                "run {run}: task {task} round {round}: replica {replica}'s ballot counted {n} times"
            ));
        }
    }
    for ((task, replica, call), n) in calls {
        if n > 1 {
            broken.push(format!(
                "run {run}: task {task} replica {replica}: model call {call} made {n} times"
            ));
        }
    }
    broken.sort();
    broken
}

/// Waits until something accepts connections on `port`.
async fn wait_tcp(port: u16, within: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if t0.elapsed() > within {
            return Err(format!(
                "nats-server did not listen on port {port} within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_each_time_and_seeds_differ() {
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
        let s = schedule(7);
        assert!((5..=9).contains(&s.len()), "{s:?}");
        assert!(s.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "{s:?}");
        assert!(s.iter().all(|x| (1_000..24_000).contains(&x.at_ms)));
    }

    #[test]
    fn seed_zero_is_the_reported_schedule() {
        let s = schedule(0);
        assert_eq!(s.len(), 6);
        assert_eq!(
            s[3],
            Step {
                at_ms: 14_800,
                fault: Fault::KillNats {
                    restart_after_ms: 1_600
                }
            }
        );
        assert_eq!(s[5].fault, Fault::StartWorker);
    }
}
