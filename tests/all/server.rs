//! `conclave serve` in-process, driven over real HTTP: completions plain
//! and streamed with the `conclave` object, models, health and metrics;
//! auth, malformed and oversized bodies; 50 requests at once; and a client
//! that leaves mid-stream, whose run is cancelled and journaled as such.

use std::sync::Arc;
use std::time::Duration;

use conclave::journal::sqlite::SqliteJournal;
use conclave::journal::Journal;
use conclave::server::{Server, ServerConfig, ServerError};
use conclave_tests::prepare_team;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TEAM: &str = r#"
[team]
name = "served"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.9
{latency}

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#;

struct Running {
    base: String,
    journal: Arc<SqliteJournal>,
    shutdown: CancellationToken,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start(latency: &str, token: Option<&str>, max_body: usize) -> Running {
    let (spec_dir, team) = prepare_team(&TEAM.replace("{latency}", latency)).await;
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.token = token.map(String::from);
    config.max_body = max_body;
    let server = Server::bind(Arc::new(team), journal.clone(), config)
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    Running {
        base,
        journal,
        shutdown,
        _dirs: (spec_dir, data),
    }
}

fn ask(q: &str) -> Value {
    json!({"model": "served", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]})
}

#[tokio::test]
async fn a_completion_carries_the_answer_and_the_conclave_object() {
    let s = start("", None, 1 << 20).await;
    let c = reqwest::Client::new();
    let r: Value = c
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&ask("What is 6 * 7?"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "served");
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.parse::<i64>().is_ok(), "{r}");
    assert_eq!(r["conclave"]["stop"]["stop"], "decided");
    assert_eq!(r["conclave"]["samples"], 3);
    assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let run = r["conclave"]["run_id"].as_str().unwrap();
    let log = s.journal.read(run).unwrap();
    assert_eq!(log.ended().unwrap().answer.as_deref(), Some(answer));
    let models: Value = c
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "served");
    let health = c.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let metrics = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("conclave_requests_total{status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("conclave_runs_total{stop=\"decided\"} 1"),
        "{metrics}"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_streamed_completion_ends_with_the_conclave_object_and_done() {
    let s = start("", None, 1 << 20).await;
    let mut body = ask("What is 6 * 7?");
    body["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["conclave"]["stop"]["stop"], "decided");
    let run = last["conclave"]["run_id"].as_str().unwrap();
    let ended = s.journal.read(run).unwrap();
    assert_eq!(
        ended.ended().unwrap().answer.as_deref(),
        Some(content.as_str())
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let s = start("", Some("sesame"), 2_000).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = c.post(&url).json(&ask("1 + 1?")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("wrong!")
        .json(&ask("1 + 1?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("sesame")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the request body is not a chat completion request: EOF"),
        "{e}"
    );
    let r = c
        .post(&url)
        .bearer_auth("sesame")
        .json(&json!({"messages": [{"role": "system", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = ask(&"x".repeat(4_000));
    let r = c
        .post(&url)
        .bearer_auth("sesame")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(&url)
        .bearer_auth("sesame")
        .json(&ask("What is 1 + 1?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown.cancel();
}

#[tokio::test]
async fn without_a_token_only_loopback_is_served() {
    let (_dir, team) = prepare_team(&TEAM.replace("{latency}", "")).await;
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let config = ServerConfig::new("0.0.0.0:0".parse().unwrap());
    let e = Server::bind(Arc::new(team), journal, config)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ServerError::NoToken(_)));
    assert!(e
        .to_string()
        .contains("refusing to listen on 0.0.0.0:0 without a token"));
}

#[tokio::test]
async fn fifty_requests_at_once_are_all_answered() {
    let s = start(
        "latency = { kind = \"constant\", value = \"20ms\" }",
        None,
        1 << 20,
    )
    .await;
    let c = reqwest::Client::new();
    let asks = (0..50).map(|i| {
        let c = c.clone();
        let url = format!("{}/v1/chat/completions", s.base);
        async move {
            let r = c
                .post(url)
                .json(&ask(&format!("What is {i} + 1?")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    });
    let replies = futures::future::join_all(asks).await;
    let mut runs: Vec<&str> = replies
        .iter()
        .map(|r| r["conclave"]["run_id"].as_str().unwrap())
        .collect();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), 50, "one run per request");
    assert!(replies
        .iter()
        .all(|r| r["conclave"]["stop"]["stop"] == "decided"));
    assert_eq!(s.journal.runs().unwrap().len(), 50);
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_its_run() {
    let s = start(
        "latency = { kind = \"constant\", value = \"30s\" }",
        None,
        1 << 20,
    )
    .await;
    let mut body = ask("What is 6 * 7?");
    body["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut chunks = r.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(
        std::str::from_utf8(&first)
            .unwrap()
            .trim()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    let run = first["id"]
        .as_str()
        .unwrap()
        .strip_prefix("chatcmpl-")
        .unwrap()
        .to_string();
    drop(chunks);
    // The run ends as cancelled, and says so in the journal, long before
    // the node's 30 s would have passed.
    let mut stop = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(r) = s.journal.runs().unwrap().into_iter().find(|r| r.run == run) {
            if r.stop.is_some() {
                stop = r.stop;
                break;
            }
        }
    }
    assert_eq!(stop.as_deref(), Some("cancelled: the job was cancelled"));
    s.shutdown.cancel();
}
