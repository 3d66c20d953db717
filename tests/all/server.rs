//! `conclave serve` in-process, driven over real HTTP: completions plain
//! and streamed with the `conclave` object, models, plugins, health and
//! metrics; auth, malformed and oversized bodies; 50 requests at once; a
//! client that leaves mid-stream, whose run is cancelled and journaled as
//! such; failed runs and no consensus; the deadline, the bounded queue and
//! clients that leave it.

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

pub(crate) struct Running {
    pub(crate) base: String,
    journal: Arc<SqliteJournal>,
    pub(crate) shutdown: CancellationToken,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start(latency: &str, token: Option<&str>, max_body: usize) -> Running {
    start_team(&TEAM.replace("{latency}", latency), |c| {
        c.token = token.map(String::from);
        c.max_body = max_body;
    })
    .await
}

/// Serves the team spec `team` with the defaults changed by `configure`.
pub(crate) async fn start_team(team: &str, configure: impl FnOnce(&mut ServerConfig)) -> Running {
    let (spec_dir, team) = prepare_team(team).await;
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    let server = Server::bind(
        conclave::server::Teams::of(vec![Arc::new(team)]).unwrap(),
        journal.clone(),
        config,
    )
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

pub(crate) fn ask(q: &str) -> Value {
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
    // Three replicas of a majority vote decide on 2 agreeing ballots or 3.
    let samples = r["conclave"]["samples"].as_u64().unwrap();
    assert!((2..=3).contains(&samples), "{r}");
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
    let e = Server::bind(
        conclave::server::Teams::of(vec![Arc::new(team)]).unwrap(),
        journal,
        config,
    )
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

/// `TEAM` on a sim node that answers after `latency` (e.g. `"1s"`).
pub(crate) fn slow_team(latency: &str) -> String {
    TEAM.replace(
        "{latency}",
        &format!("latency = {{ kind = \"constant\", value = \"{latency}\" }}"),
    )
}

/// A metric's value from `/metrics` (0 if it is not there).
pub(crate) async fn metric(c: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Waits (at most 30 s) until the metric `name` is `value`.
pub(crate) async fn until_metric(c: &reqwest::Client, base: &str, name: &str, value: f64) {
    for _ in 0..1500 {
        if metric(c, base, name).await == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never became {value}");
}

/// The `data:` payloads of a server-sent event stream.
fn events(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

/// A team whose one node fails every call, with no retries anywhere.
const FAILING: &str = r#"
[team]
name = "served"

[router]
retries = 0

[[node]]
name = "sim"
backend = "sim"
error_rate = 1.0

[[task]]
id = "answer"
role = "solver"
replicas = 2
retries = 0
voter = "majority"
answer_kind = "number"
"#;

#[tokio::test]
async fn a_failed_run_is_a_500_naming_its_stop_reason_and_run_plain_or_streamed() {
    let s = start_team(FAILING, |_| {}).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = c
        .post(&url)
        .json(&ask("What is 6 * 7?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    assert_eq!(e["error"]["code"], "run_failed", "{e}");
    assert_eq!(e["error"]["stop"]["stop"], "failed", "{e}");
    let run = e["error"]["run_id"].as_str().unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("run {run} failed: ")),
        "{e}"
    );
    let ended = s.journal.read(run).unwrap();
    let stop: conclave::team::consensus::StopReason =
        serde_json::from_value(e["error"]["stop"].clone()).unwrap();
    assert_eq!(ended.ended().unwrap().stop, stop);

    let mut body = ask("What is 6 * 7?");
    body["stream"] = json!(true);
    let text = c
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = events(&text);
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let e: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(e["error"]["code"], "run_failed", "{text}");
    assert_eq!(e["error"]["stop"]["stop"], "failed", "{text}");
    assert!(e["error"]["run_id"].as_str().unwrap().starts_with("run-"));
    assert!(
        !text.contains("finish_reason\":\"stop"),
        "no chunk pretends it ended well: {text}"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn no_consensus_is_a_200_whose_message_is_a_refusal_with_the_candidates() {
    let team = TEAM.replace("{latency}", "").replace(
        "[[task]]",
        "[[plugin]]\nname = \"strict\"\nbuiltin = \"quorum\"\nconfig = { min_votes = 10, max_samples = 3 }\n\n[[task]]",
    ).replace("voter = \"majority\"", "voter = \"strict\"\nmax_samples = 3");
    let s = start_team(&team, |_| {}).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = c
        .post(&url)
        .json(&ask("What is 6 * 7?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{r}");
    assert_eq!(choice["message"]["content"], Value::Null, "{r}");
    assert!(
        choice["message"]["refusal"]
            .as_str()
            .unwrap()
            .starts_with("no consensus: quorum of 60% not reached after 3 samples"),
        "{r}"
    );
    assert_eq!(r["conclave"]["stop"]["stop"], "no-consensus");
    let counted: u64 = r["conclave"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ballots"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3, "{r}");

    let mut body = ask("What is 6 * 7?");
    body["stream"] = json!(true);
    let text = c
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = events(&text);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks.iter().any(|c| c["choices"][0]["delta"]["refusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("no consensus: "))),
        "{text}"
    );
    assert_eq!(
        chunks.last().unwrap()["conclave"]["stop"]["stop"],
        "no-consensus"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_deadline_counts_the_wait_for_a_slot() {
    let s = start_team(&slow_team("1s"), |c| {
        c.max_concurrency = 1;
        c.deadline = Duration::from_millis(1500);
    })
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let first = tokio::spawn(c.post(&url).json(&ask("What is 1 + 1?")).send());
    until_metric(&c, &s.base, "conclave_runs_in_flight", 1.0).await;
    // It waits about a second for the slot, then needs a second more.
    let r = c
        .post(&url)
        .json(&ask("What is 2 + 2?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "deadline_exceeded", "{e}");
    assert_eq!(e["error"]["stop"]["stop"], "cancelled", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline of 1s 500ms passed (waiting for a slot included)"),
        "{e}"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_request_whose_client_leaves_while_it_waits_for_a_slot_never_runs() {
    let s = start_team(&slow_team("1s"), |c| c.max_concurrency = 1).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let first = tokio::spawn(c.post(&url).json(&ask("What is 1 + 1?")).send());
    until_metric(&c, &s.base, "conclave_runs_in_flight", 1.0).await;
    let gone = c
        .post(&url)
        .timeout(Duration::from_millis(300))
        .json(&ask("What is 2 + 2?"))
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    // Its place in the queue is given back at once, not when a slot frees.
    until_metric(&c, &s.base, "conclave_requests_waiting", 0.0).await;
    assert_eq!(metric(&c, &s.base, "conclave_runs_in_flight").await, 1.0);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    until_metric(&c, &s.base, "conclave_runs_in_flight", 0.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = s.journal.runs().unwrap();
    assert_eq!(runs.len(), 1, "only the first request ran: {runs:?}");
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_full_queue_is_answered_503_with_retry_after() {
    let s = start_team(&slow_team("1s"), |c| {
        c.max_concurrency = 1;
        c.max_queue = Some(1);
    })
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let running = tokio::spawn(c.post(&url).json(&ask("What is 1 + 1?")).send());
    until_metric(&c, &s.base, "conclave_runs_in_flight", 1.0).await;
    let waiting = tokio::spawn(c.post(&url).json(&ask("What is 2 + 2?")).send());
    until_metric(&c, &s.base, "conclave_requests_waiting", 1.0).await;
    let r = c
        .post(&url)
        .json(&ask("What is 3 + 3?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let after: u64 = r.headers()[reqwest::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full", "{e}");
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    assert_eq!(waiting.await.unwrap().unwrap().status(), 200);
    s.shutdown.cancel();
}

#[tokio::test]
async fn with_a_token_metrics_and_plugins_need_it_and_healthz_does_not() {
    let s = start("", Some("sesame"), 1 << 20).await;
    let c = reqwest::Client::new();
    for path in ["/metrics", "/v1/plugins", "/v1/models"] {
        let url = format!("{}{path}", s.base);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 401, "{path}");
        for wrong in ["sesam", "sesame!", "Sesame", ""] {
            let r = c.get(&url).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {wrong:?}");
        }
        let r = c.get(&url).bearer_auth("sesame").send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let health = c.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    s.shutdown.cancel();
}

#[tokio::test]
async fn plugins_lists_each_plugin_with_its_version_hash_and_load_time() {
    let s = start("", None, 1 << 20).await;
    let r: Value = reqwest::get(format!("{}/v1/plugins", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = r["data"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|p| p["team_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["majority", "solver"]);
    for p in rows {
        let file = conclave_tests::plugin(p["team_name"].as_str().unwrap());
        let hash = conclave::plugin::cache::content_hash(&std::fs::read(&file).unwrap());
        assert_eq!(p["sha256"], hash.as_str(), "{p}");
        assert_eq!(p["name"], p["team_name"]);
        assert_eq!(p["path"], file.to_str().unwrap());
        assert_eq!(p["version"].as_str().unwrap().split('.').count(), 3, "{p}");
        // RFC 3339 in UTC with milliseconds, the same instant as loaded_at_ms.
        let at = p["loaded_at"].as_str().unwrap();
        let ms = p["loaded_at_ms"].as_u64().unwrap();
        assert_eq!((at.len(), &at[10..11], &at[23..]), (24, "T", "Z"), "{p}");
        assert_eq!(at[20..23].parse::<u64>().unwrap(), ms % 1000, "{p}");
        assert_eq!(at[17..19].parse::<u64>().unwrap(), ms / 1000 % 60, "{p}");
        assert_eq!(p["refused"], Value::Null);
    }
    assert_eq!(rows[0]["kind"], "voter");
    assert_eq!(rows[1]["kind"], "role");
    s.shutdown.cancel();
}
