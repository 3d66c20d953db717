//! Throughput with cluster workers: one job (many requests at once to a
//! team on a simulated node that serves two calls at a time, with the
//! paper's measured call latencies, so the work is model-bound) served by one `conclave serve` process alone (the
//! baseline, journaling to SQLite), and by a `serve --cluster` coordinator
//! with 1, 2, 4 ... `conclave worker` processes (this binary), each with
//! its own copy of the node. Requests per second, and the ratio to the
//! baseline measured in the same invocation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::failover::{free_port, wait_health, Server};
use crate::journal::jetstream::ClusterConfig;

/// One task of three replicas on a simulated node that serves two calls
/// at a time, each call's latency drawn from the paper's measured calls
/// (`LATENCIES`, by `MODEL`, times `SCALE`).
fn team(latencies: &Path) -> String {
    format!(
        r#"[team]
name = "workers-bench"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
max_concurrency = 2
latency = {{ kind = "empirical", csv = {:?}, model = "{MODEL}", scale = {SCALE} }}

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#,
        latencies.display().to_string()
    )
}

/// The paper's calls whose latencies the node replays, and how they are
/// scaled (GPT-5.2's: p50 1.83 s, p90 6.8 s; scaled by 0.2, p50 0.37 s),
/// so that a run of the benchmark takes about a minute.
pub const LATENCIES: &str = "data/paper-amdahl/llm_call_latencies.csv";
const MODEL: &str = "openai_gpt-5.2";
const SCALE: f64 = 0.2;

/// One configuration's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `None`: the single-process baseline.
    pub workers: Option<usize>,
    pub requests: usize,
    pub ok: usize,
    pub wall: Duration,
    pub per_second: f64,
    /// Requests per second over the baseline's.
    pub speedup: f64,
}

/// The numbers.
#[derive(Clone, Debug, Serialize)]
pub struct WorkersReport {
    pub cluster: String,
    pub requests: usize,
    pub rows: Vec<Row>,
}

fn spawn(exe: &Path, args: &[String]) -> Result<std::process::Child, String> {
    Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

fn cluster_args(c: &ClusterConfig) -> Vec<String> {
    let mut a = vec![
        "--cluster".into(),
        c.url.clone(),
        "--cluster-name".into(),
        c.name.clone(),
    ];
    if let Some(m) = &c.monitor {
        a.extend(["--cluster-monitor".into(), m.clone()]);
    }
    a
}

/// Sends `n` requests at once; how many got 200, and the wall time.
async fn burst(http: &reqwest::Client, port: u16, n: usize) -> (usize, Duration) {
    let t0 = Instant::now();
    let asks: Vec<_> = (0..n)
        .map(|i| {
            let req = http
                .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                .json(&serde_json::json!({"messages": [{"role": "user", "content": format!("What is {i} + 2?")}]}));
            tokio::spawn(async move { req.send().await.ok().map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut ok = 0;
    for a in asks {
        if let Ok(Some(200)) = a.await {
            ok += 1;
        }
    }
    (ok, t0.elapsed())
}

/// Runs the benchmark: the baseline, then each count in `workers`;
/// `latencies`: the paper's `llm_call_latencies.csv`.
pub async fn run(
    exe: &Path,
    cluster: &ClusterConfig,
    workers: &[usize],
    requests: usize,
    latencies: &Path,
) -> Result<WorkersReport, String> {
    let latencies = latencies.canonicalize().map_err(|e| {
        format!(
            "{}: {e} (run from the repository's root, or name the file with --latencies)",
            latencies.display()
        )
    })?;
    let dir = std::env::temp_dir().join(format!("conclave-bench-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let report = measure(exe, cluster, workers, requests, &dir, &latencies).await;
    let _ = std::fs::remove_dir_all(&dir);
    report
}

async fn measure(
    exe: &Path,
    cluster: &ClusterConfig,
    workers: &[usize],
    requests: usize,
    dir: &Path,
    latencies: &Path,
) -> Result<WorkersReport, String> {
    let spec = dir.join("team.toml");
    std::fs::write(&spec, team(latencies)).map_err(|e| e.to_string())?;
    let spec_arg = spec.display().to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let serve_args = |port: u16| -> Vec<String> {
        vec![
            "serve".into(),
            spec_arg.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-watch".into(),
            "--max-concurrency".into(),
            requests.to_string(),
        ]
    };
    let mut rows = Vec::new();
    // The baseline: one process, its own node.
    {
        let port = free_port()?;
        let mut args = serve_args(port);
        args.extend(["--data-dir".into(), dir.join("alone").display().to_string()]);
        let server = Server {
            child: spawn(exe, &args)?,
            port,
        };
        wait_health(&http, server.port, 200, Duration::from_secs(60)).await?;
        let (ok, wall) = burst(&http, server.port, requests).await;
        rows.push(Row {
            workers: None,
            requests,
            ok,
            wall,
            per_second: requests as f64 / wall.as_secs_f64(),
            speedup: 1.0,
        });
    }
    let base = rows[0].per_second;
    for &n in workers {
        let config = ClusterConfig {
            name: format!("bench-workers-{}-{n}", std::process::id()),
            ..cluster.clone()
        };
        let port = free_port()?;
        let mut args = serve_args(port);
        args.extend(cluster_args(&config));
        args.extend(["--lease-ttl".into(), "2s".into()]);
        let coordinator = Server {
            child: spawn(exe, &args)?,
            port,
        };
        wait_health(&http, port, 200, Duration::from_secs(60)).await?;
        let mut procs = Vec::new();
        for _ in 0..n {
            let mut args = vec![
                "worker".into(),
                spec_arg.clone(),
                "--max-inflight".into(),
                "2".into(),
            ];
            args.extend(cluster_args(&config));
            procs.push(Server {
                child: spawn(exe, &args)?,
                port: 0,
            });
        }
        // Every worker beating, and the coordinator has read it.
        let t0 = Instant::now();
        while crate::cluster::status(&config).await?.workers.len() < n {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("{n} workers did not start within a minute"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(crate::cluster::work::HEARTBEAT_EVERY * 2).await;
        let (ok, wall) = burst(&http, port, requests).await;
        let per_second = requests as f64 / wall.as_secs_f64();
        rows.push(Row {
            workers: Some(n),
            requests,
            ok,
            wall,
            per_second,
            speedup: per_second / base,
        });
        drop(procs);
        drop(coordinator);
    }
    Ok(WorkersReport {
        cluster: cluster.url.clone(),
        requests,
        rows,
    })
}
