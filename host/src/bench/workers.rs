//! Throughput with cluster workers: one job (many requests at once to a
//! team on a simulated node that serves two calls at a time, with the
//! paper's measured call latencies, so the work is model-bound) served by one `conclave serve` process alone (the
//! baseline, journaling to SQLite), and by a `serve --cluster` coordinator
//! with 1, 2, 4 ... `conclave worker` processes (this binary), each with
//! its own copy of the node. Requests per second, and the ratio to the
//! baseline measured in the same invocation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::failover::{free_port, wait_health, Server};
use crate::journal::jetstream::ClusterConfig;

/// One task of three replicas on a simulated node that serves
/// `node_concurrency` calls at a time (0: any number), each call's latency
/// drawn from the paper's measured calls (`LATENCIES`, by `MODEL`, times
/// `SCALE`).
fn team(latencies: &Path, node_concurrency: usize) -> String {
    let cap = match node_concurrency {
        0 => String::new(),
        n => format!("max_concurrency = {n}\n"),
    };
    format!(
        r#"[team]
name = "workers-bench"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
{cap}latency = {{ kind = "empirical", csv = {:?}, model = "{MODEL}", scale = {SCALE} }}

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

/// The load: requests sent at once, the coordinator's lease, replicas each
/// worker runs at once, and calls each copy of the node serves at once (0:
/// any number).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Shape {
    pub requests: usize,
    /// The coordinator's `--lease-ttl`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    pub max_inflight: usize,
    pub node_concurrency: usize,
}

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
    /// What the requests that did not get 200 got in the end, counted.
    pub failed: BTreeMap<String, usize>,
    /// Times a request was asked again after a 503.
    pub retried: usize,
    /// Peak resident memory: of the process alone (baseline), or the
    /// largest of the workers'.
    pub peak_rss_bytes: u64,
}

/// The numbers.
#[derive(Clone, Debug, Serialize)]
pub struct WorkersReport {
    pub cluster: String,
    pub shape: Shape,
    pub rows: Vec<Row>,
}

/// Starts this binary with `args`, its standard error in `log`, and
/// `cluster` (its credentials included) in its environment if given.
fn spawn(
    exe: &Path,
    args: &[String],
    cluster: Option<&ClusterConfig>,
    log: &Path,
) -> Result<std::process::Child, String> {
    let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(exe)
        .args(args)
        .envs(cluster.map(|c| c.child_env()).unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

/// Sends `n` requests at once, each asked again after a 503 (up to
/// `RETRIES` times); how many got 200, the wall time, what the others got
/// in the end (status and error code, or the transport's error), counted,
/// and how many times a request was asked again.
async fn burst(http: &reqwest::Client, port: u16, n: usize) -> Burst {
    let t0 = Instant::now();
    let asks: Vec<_> = (0..n)
        .map(|i| {
            let req = http
                .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                .json(&serde_json::json!({"messages": [{"role": "user", "content": format!("What is {i} + 2?")}]}));
            tokio::spawn(async move {
                // As a client of a cluster does: a 503 (a standby, a
                // coordinator that changed) is asked again after its
                // Retry-After, a bounded number of times.
                let mut retries = 0;
                loop {
                    let Some(req) = req.try_clone() else {
                        return (Some("cannot repeat the request".to_string()), retries);
                    };
                    match req.send().await {
                        Ok(r) if r.status().as_u16() == 200 => return (None, retries),
                        Ok(r) if r.status().as_u16() == 503 && retries < RETRIES => {
                            retries += 1;
                            let after = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                                .unwrap_or(1);
                            tokio::time::sleep(Duration::from_secs(after)).await;
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                            return (Some(format!("{status} {code}").trim().to_string()), retries);
                        }
                        Err(e) => return (Some(format!("no answer: {e}")), retries),
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = BTreeMap::new();
    let mut retried = 0;
    for a in asks {
        match a.await {
            Ok((None, r)) => {
                ok += 1;
                retried += r;
            }
            Ok((Some(why), r)) => {
                *failed.entry(why).or_default() += 1;
                retried += r;
            }
            Err(e) => *failed.entry(format!("client task: {e}")).or_default() += 1,
        }
    }
    Burst {
        ok,
        wall: t0.elapsed(),
        failed,
        retried,
    }
}

/// How many times a client asks again after a 503.
const RETRIES: usize = 30;

/// What a burst got.
struct Burst {
    ok: usize,
    wall: Duration,
    failed: BTreeMap<String, usize>,
    retried: usize,
}

/// Runs the benchmark: the baseline, then each count in `workers`;
/// `latencies`: the paper's `llm_call_latencies.csv`.
pub async fn run(
    exe: &Path,
    cluster: &ClusterConfig,
    workers: &[usize],
    shape: Shape,
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
    let report = measure(exe, cluster, workers, shape, &dir, &latencies).await;
    // The processes' logs are kept where a request was not answered.
    match &report {
        Ok(r) if r.rows.iter().all(|row| row.failed.is_empty()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!("the processes' standard error is kept in {}", dir.display()),
    }
    report
}

async fn measure(
    exe: &Path,
    cluster: &ClusterConfig,
    workers: &[usize],
    shape: Shape,
    dir: &Path,
    latencies: &Path,
) -> Result<WorkersReport, String> {
    let requests = shape.requests;
    let spec = dir.join("team.toml");
    std::fs::write(&spec, team(latencies, shape.node_concurrency)).map_err(|e| e.to_string())?;
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
            child: spawn(exe, &args, None, &dir.join("alone.log"))?,
            port,
        };
        wait_health(&http, server.port, 200, Duration::from_secs(60)).await?;
        let Burst {
            ok,
            wall,
            failed,
            retried,
        } = burst(&http, server.port, requests).await;
        rows.push(Row {
            workers: None,
            requests,
            ok,
            wall,
            failed,
            retried,
            per_second: requests as f64 / wall.as_secs_f64(),
            speedup: 1.0,
            peak_rss_bytes: peak_rss(&server.child),
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
        args.extend([
            "--lease-ttl".into(),
            humantime::format_duration(shape.lease_ttl).to_string(),
        ]);
        let coordinator = Server {
            child: spawn(
                exe,
                &args,
                Some(&config),
                &dir.join(format!("coordinator-{n}.log")),
            )?,
            port,
        };
        wait_health(&http, port, 200, Duration::from_secs(60)).await?;
        let mut procs = Vec::new();
        for i in 0..n {
            let args = vec![
                "worker".into(),
                spec_arg.clone(),
                "--max-inflight".into(),
                shape.max_inflight.to_string(),
            ];
            procs.push(Server {
                child: spawn(
                    exe,
                    &args,
                    Some(&config),
                    &dir.join(format!("worker-{n}-{i}.log")),
                )?,
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
        let Burst {
            ok,
            wall,
            failed,
            retried,
        } = burst(&http, port, requests).await;
        let per_second = requests as f64 / wall.as_secs_f64();
        rows.push(Row {
            workers: Some(n),
            requests,
            ok,
            wall,
            failed,
            retried,
            per_second,
            speedup: per_second / base,
            peak_rss_bytes: procs.iter().map(|p| peak_rss(&p.child)).max().unwrap_or(0),
        });
        drop(procs);
        drop(coordinator);
    }
    Ok(WorkersReport {
        cluster: cluster.url.clone(),
        shape,
        rows,
    })
}

/// A running child's peak resident memory (Linux's `VmHWM`; 0 elsewhere).
fn peak_rss(child: &std::process::Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
