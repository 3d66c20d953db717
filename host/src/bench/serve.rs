//! What serving costs: requests per second and latency for a team of one
//! task, one replica, on a zero-latency sim node, asked three ways: the
//! sim node called directly (the floor), the team run in-process with its
//! journal, and the team through `conclave serve` over HTTP; at 1 and 64
//! clients at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::journal::sqlite::SqliteJournal;
use crate::model::{ChatRequest, Message};
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::server::{Server, ServerConfig};
use crate::spec::team::TeamSpec;
use crate::team::events::Quiet;
use crate::team::job::PreparedTeam;

const SPEC: &str = "[team]\nname = \"served\"\n\n[[node]]\nname = \"sim\"\nbackend = \"sim\"\n\n[[task]]\nid = \"answer\"\nrole = \"solver\"\nvoter = \"majority\"\nanswer_kind = \"number\"\n";

/// One way of asking, at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub way: String,
    pub clients: usize,
    pub requests: usize,
    pub per_second: f64,
    pub mean_ms: f64,
}

async fn drive<F, Fut>(clients: usize, requests: usize, ask: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = requests / clients;
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let ask = ask.clone();
        handles.push(tokio::spawn(async move {
            let mut total = Duration::ZERO;
            for k in 0..per {
                let t = Instant::now();
                ask(c * per + k).await;
                total += t.elapsed();
            }
            total
        }));
    }
    let mut latency = Duration::ZERO;
    for h in handles {
        latency += h.await.unwrap_or_default();
    }
    let wall = start.elapsed().as_secs_f64();
    let n = (per * clients) as f64;
    (n / wall, latency.as_secs_f64() * 1e3 / n)
}

/// Runs the benchmark with the built-in plugins in `plugins`.
pub async fn run(plugins: &std::path::Path, requests: usize) -> Result<Vec<Row>, String> {
    let dir = std::env::temp_dir().join(format!("conclave-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("team.toml");
    let spec = TeamSpec::parse(SPEC, &path).map_err(|e| e.to_string())?;
    let nodes = crate::spec::build_nodes_from(SPEC, &path).map_err(|e| e.to_string())?;
    let sim = nodes[0].backend.clone();
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let team = Arc::new(
        PreparedTeam::prepare(spec, rt, plugins)
            .await
            .map_err(|e| e.to_string())?,
    );
    let journal = SqliteJournal::open(&dir.join("data")).map_err(|e| e.to_string())?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("an address"));
    config.max_concurrency = 64;
    let teams = crate::server::Teams::of(vec![team.clone()]).expect("one team");
    let server = Server::bind(teams, journal.clone(), config)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("http://{}/v1/chat/completions", server.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for clients in [1usize, 64] {
        let sim = sim.clone();
        let (ps, ms) = drive(clients, requests, move |i| {
            let sim = sim.clone();
            async move {
                let req = ChatRequest {
                    messages: vec![Message::new("user", &format!("What is {i} + 1?"))],
                    ..Default::default()
                };
                let _ = sim.chat(&req).await;
            }
        })
        .await;
        rows.push(Row {
            way: "sim node, called directly".into(),
            clients,
            requests,
            per_second: ps,
            mean_ms: ms,
        });
        let (t, j) = (team.clone(), journal.clone());
        let (ps, ms) = drive(clients, requests, move |i| {
            let (t, j) = (t.clone(), j.clone());
            async move {
                let id = format!("inproc-{clients}-{i}");
                let q = format!("What is {i} + 1?");
                t.submit(
                    &crate::team::submit::Job::new(&id, &q, None),
                    j,
                    None,
                    Arc::new(Quiet),
                    CancellationToken::new(),
                )
                .await;
            }
        })
        .await;
        rows.push(Row {
            way: "team in-process, journaled".into(),
            clients,
            requests,
            per_second: ps,
            mean_ms: ms,
        });
        let (h, u) = (http.clone(), url.clone());
        let (ps, ms) = drive(clients, requests, move |i| {
            let (h, u) = (h.clone(), u.clone());
            async move {
                let body = serde_json::json!({"messages": [{"role": "user", "content": format!("What is {i} + 1?")}]});
                if let Ok(r) = h.post(&u).json(&body).send().await {
                    let _ = r.bytes().await;
                }
            }
        })
        .await;
        rows.push(Row {
            way: "team over HTTP (conclave serve)".into(),
            clients,
            requests,
            per_second: ps,
            mean_ms: ms,
        });
    }
    shutdown.cancel();
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}
