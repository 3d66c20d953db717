//! How fast a standby takes over: two `conclave serve --cluster` processes
//! (this binary) on a cluster of their own name, a run started on the
//! coordinator, the coordinator killed with `SIGKILL` mid-run, and the time
//! until the standby answers `/healthz` as coordinator and until the run
//! ends in the journal. Repeated (the killed server restarted as the new
//! standby each time), beside uninterrupted runs of the same team as the
//! baseline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::journal::jetstream::{ClusterConfig, JetStreamJournal};
use crate::journal::{Journal, RunLog};
use crate::team::events::Event;

/// The team every run uses: three tasks of three replicas on a simulated
/// node (150 ms median per call), a run of about a second.
const TEAM: &str = r#"[team]
name = "failover-bench"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
latency = { kind = "lognormal", median = "150ms", sigma = 0.3 }

[[task]]
id = "left"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"

[[task]]
id = "right"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"

[[task]]
id = "both"
role = "solver"
prompt = "Check: {question}"
replicas = 3
voter = "majority"
answer_kind = "number"
depends_on = ["left", "right"]
"#;

/// The numbers.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    pub cluster: String,
    pub lease_ttl: Duration,
    pub kills: usize,
    /// From the kill until the standby's `/healthz` answers 200, each kill.
    pub takeover: Vec<Duration>,
    /// From the kill until the killed coordinator's run ended in the
    /// journal (resumed by the new coordinator).
    pub completion_after_kill: Vec<Duration>,
    /// Whole runs not interrupted (request to reply): the baseline.
    pub uninterrupted: Vec<Duration>,
    /// Runs that ended decided, of `kills`.
    pub decided: usize,
    /// Model calls made for real twice in a run (journaled calls are
    /// reused on resume: should be 0).
    pub calls_made_twice: usize,
}

/// The `q` quantile of `xs` (nearest rank).
pub fn quantile(xs: &[Duration], q: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start(
    exe: &Path,
    spec: &Path,
    cluster: &ClusterConfig,
    ttl: Duration,
) -> Result<Server, String> {
    let port = free_port()?;
    let mut c = Command::new(exe);
    c.arg("serve")
        .arg(spec)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--lease-ttl", &humantime::format_duration(ttl).to_string()])
        .arg("--no-watch")
        .envs(cluster.child_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    Ok(Server { child, port })
}

async fn health(http: &reqwest::Client, port: u16) -> Option<u16> {
    http.get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

pub(super) async fn wait_health(
    http: &reqwest::Client,
    port: u16,
    status: u16,
    within: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    while health(http, port).await != Some(status) {
        if t0.elapsed() > within {
            return Err(format!(
                "the server on port {port} did not answer /healthz {status} within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t0.elapsed())
}

fn ask(http: &reqwest::Client, port: u16) -> tokio::task::JoinHandle<Option<u16>> {
    let req = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "What is 40 + 2?"}]}));
    tokio::spawn(async move { req.send().await.ok().map(|r| r.status().as_u16()) })
}

/// Reads the journal off the async threads.
async fn read(journal: &std::sync::Arc<JetStreamJournal>, run: &str) -> Option<RunLog> {
    let j = journal.clone();
    let run = run.to_string();
    tokio::task::spawn_blocking(move || j.read(&run).ok())
        .await
        .ok()
        .flatten()
}

async fn newest_run(journal: &std::sync::Arc<JetStreamJournal>) -> Option<String> {
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.runs().ok())
        .await
        .ok()
        .flatten()
        .and_then(|rows| rows.first().map(|r| r.run.clone()))
}

fn calls_made_twice(log: &RunLog) -> usize {
    let mut seen = std::collections::HashMap::new();
    for (_, e) in log.events() {
        if let Event::ModelCall {
            task,
            replica,
            call,
            replayed: false,
            ..
        } = e
        {
            *seen.entry((task.clone(), *replica, *call)).or_insert(0) += 1;
        }
    }
    seen.values().filter(|&&n| n > 1).count()
}

/// Runs the benchmark: `kills` takeovers and as many uninterrupted runs,
/// with `exe` (this binary) as the servers, on the cluster `cluster` under
/// a name of the benchmark's own.
pub async fn run(
    exe: &Path,
    cluster: &ClusterConfig,
    kills: usize,
    ttl: Duration,
) -> Result<FailoverReport, String> {
    let mut cluster = cluster.clone();
    cluster.name = format!("{}-failover-{}", cluster.name, crate::journal::now_ms());
    let dir: PathBuf =
        std::env::temp_dir().join(format!("conclave-bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = dir.join("team.toml");
    std::fs::write(&spec, TEAM).map_err(|e| e.to_string())?;
    let journal = JetStreamJournal::connect(&cluster).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let startup = Duration::from_secs(120);
    let mut leader = start(exe, &spec, &cluster, ttl)?;
    wait_health(&http, leader.port, 200, startup).await?;
    let mut standby = start(exe, &spec, &cluster, ttl)?;
    wait_health(&http, standby.port, 503, startup).await?;
    let mut report = FailoverReport {
        cluster: cluster.url.clone(),
        lease_ttl: ttl,
        kills,
        takeover: Vec::new(),
        completion_after_kill: Vec::new(),
        uninterrupted: Vec::new(),
        decided: 0,
        calls_made_twice: 0,
    };
    for _ in 0..kills {
        // The baseline: one whole run.
        let t0 = Instant::now();
        let status = ask(&http, leader.port).await.ok().flatten();
        if status != Some(200) {
            return Err(format!("an uninterrupted run answered {status:?}"));
        }
        report.uninterrupted.push(t0.elapsed());
        let baseline = newest_run(&journal).await;
        // A run killed with its coordinator once it has a few records.
        let _client = ask(&http, leader.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = loop {
            if let Some(r) = newest_run(&journal)
                .await
                .filter(|r| Some(r) != baseline.as_ref())
            {
                if read(&journal, &r)
                    .await
                    .is_some_and(|l| l.records.len() >= 4)
                {
                    break r;
                }
            }
            if Instant::now() > deadline {
                return Err("the run to interrupt never started".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let killed = Instant::now();
        let _ = leader.child.kill();
        report
            .takeover
            .push(wait_health(&http, standby.port, 200, ttl * 10).await?);
        let ended = loop {
            if let Some(log) = read(&journal, &run).await.filter(|l| l.ended().is_some()) {
                break log;
            }
            if killed.elapsed() > ttl * 10 + Duration::from_secs(60) {
                return Err(format!(
                    "run {run} did not end after its coordinator was killed"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        report.completion_after_kill.push(killed.elapsed());
        if ended
            .ended()
            .is_some_and(|r| r.stop.to_string() == "decided")
        {
            report.decided += 1;
        }
        report.calls_made_twice += calls_made_twice(&ended);
        // The killed one comes back as the standby.
        std::mem::swap(&mut leader, &mut standby);
        standby = start(exe, &spec, &cluster, ttl)?;
        wait_health(&http, standby.port, 503, startup).await?;
    }
    drop((leader, standby));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}
