//! The run board behind `/ui`: `GET /v1/runs` and `GET /v1/runs/{id}`
//! (their values against the replies and the journal, the bound on runs
//! kept, pages of events, unknown runs, the token). The page itself, in a
//! real browser, is `ui_browser`.

use std::collections::BTreeMap;
use std::sync::Arc;

use conclave::journal::sqlite::SqliteJournal;
use conclave::journal::Journal;
use conclave::server::{Server, ServerConfig, Teams};
use conclave::team::events::Event;
use conclave_tests::prepare_team;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Two sim nodes, three replicas, a majority: `{quick}` and `{slow}` are
/// the nodes' latencies.
pub(crate) const TEAM: &str = r#"
[team]
name = "watched"

[[node]]
name = "quick"
backend = "sim"
distractors = 1
seed = 1
latency = { kind = "constant", value = "{quick}" }

[[node]]
name = "slow"
backend = "sim"
distractors = 1
seed = 2
latency = { kind = "constant", value = "{slow}" }

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#;

pub(crate) fn team(quick: &str, slow: &str) -> String {
    TEAM.replace("{quick}", quick).replace("{slow}", slow)
}

pub(crate) fn ask(q: &str) -> Value {
    json!({"model": "watched", "messages": [{"role": "user", "content": q}]})
}

// ---- the JSON API, in process ----

struct InProcess {
    base: String,
    journal: Arc<SqliteJournal>,
    shutdown: CancellationToken,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn in_process(spec: &str, configure: impl FnOnce(&mut ServerConfig)) -> InProcess {
    let (spec_dir, team) = prepare_team(spec).await;
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    let server = Server::bind(
        Teams::of(vec![Arc::new(team)]).unwrap(),
        journal.clone(),
        config,
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    InProcess {
        base,
        journal,
        shutdown,
        _dirs: (spec_dir, data),
    }
}

pub(crate) async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every event of a run, following `next` while `more`.
pub(crate) async fn all_events(
    c: &reqwest::Client,
    base: &str,
    run: &str,
    token: Option<&str>,
) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let (status, page) = get(
            c,
            &format!("{base}/v1/runs/{run}?after={}", events.len()),
            token,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        if page["more"] != true {
            return events;
        }
    }
}

/// How many model calls each node answered, from the journal.
pub(crate) fn journaled_calls(journal: &dyn Journal, run: &str) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (_, e) in journal.read(run).unwrap().events() {
        if let Event::ModelCall { node, .. } = e {
            *by.entry(node.clone()).or_insert(0) += 1;
        }
    }
    by
}

/// How many model calls each node answered, from the board's events.
pub(crate) fn board_calls(events: &[Value]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == "model-call") {
        *by.entry(e["node"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    by
}

#[tokio::test]
async fn the_runs_api_matches_the_replies_and_the_journal_and_keeps_only_the_last_runs() {
    let s = in_process(&team("10ms", "20ms"), |c| c.runs_kept = 3).await;
    let c = reqwest::Client::new();
    let mut replies = Vec::new();
    for i in 0..5 {
        let r: Value = c
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&ask(&format!("What is {i} + {i}?")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["conclave"]["stop"]["stop"], "decided", "{r}");
        replies.push(r);
    }
    let (status, list) = get(&c, &format!("{}/v1/runs", s.base), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!((&list["keep"], &list["running"]), (&json!(3), &json!(0)));
    let listed = list["data"].as_array().unwrap();
    // Newest first, and only the last three.
    let ids: Vec<&str> = listed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = replies[2..]
        .iter()
        .rev()
        .map(|r| r["conclave"]["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want);
    for (row, reply) in listed.iter().zip(replies[2..].iter().rev()) {
        assert_eq!(row["state"], "decided");
        assert_eq!(row["stop"], "decided");
        assert_eq!(row["team"], "watched");
        assert_eq!(row["answer"], reply["choices"][0]["message"]["content"]);
        assert_eq!(row["support"], reply["conclave"]["support"]);
        assert_eq!(row["total"], reply["conclave"]["total"]);
        assert!(row["question"].as_str().unwrap().starts_with("What is "));
        assert!(row["wall_ms"].as_u64().unwrap() >= 10, "{row}");
        assert!(row["started"].as_str().unwrap().ends_with('Z'), "{row}");
    }
    // One run in full: its events are the journal's, in pages from `after`.
    let run = want[0];
    let events = all_events(&c, &s.base, run, None).await;
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["i"], i, "{e}");
        assert!(e["t_ms"].as_f64().unwrap() >= 0.0, "{e}");
    }
    let calls = board_calls(&events);
    assert_eq!(calls, journaled_calls(&*s.journal, run));
    assert_eq!(
        listed[0]["model_calls"],
        calls.values().sum::<usize>(),
        "{}",
        listed[0]
    );
    let journaled: Vec<Value> = s
        .journal
        .read(run)
        .unwrap()
        .events()
        .map(|(_, e)| serde_json::to_value(e).unwrap())
        .collect();
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&events), names(&journaled));
    let (_, from2) = get(&c, &format!("{}/v1/runs/{run}?after=2", s.base), None).await;
    assert_eq!(from2["events"][0]["i"], 2);
    assert_eq!(from2["events"][0]["event"], events[2]["event"]);
    assert_eq!(from2["run"]["answer"], listed[0]["answer"]);
    assert_eq!(from2["tasks"][0]["task"], "answer");
    assert_eq!(from2["tasks"][0]["state"], "decided");
    // A run that left the board, one never made, and a bad `after`.
    for gone in [
        replies[0]["conclave"]["run_id"].as_str().unwrap(),
        "run-never",
    ] {
        let (status, e) = get(&c, &format!("{}/v1/runs/{gone}", s.base), None).await;
        assert_eq!(status, 404, "{e}");
        assert_eq!(e["error"]["type"], "not_found_error", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(gone),
            "{e}"
        );
    }
    let (status, e) = get(&c, &format!("{}/v1/runs/{run}?after=soon", s.base), None).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
}

#[tokio::test]
async fn the_runs_api_needs_the_token_and_the_page_does_not() {
    let s = in_process(&team("10ms", "20ms"), |c| c.token = Some("sesame".into())).await;
    let c = reqwest::Client::new();
    for path in ["/v1/runs", "/v1/runs/run-x"] {
        for token in [None, Some("wrong!")] {
            let (status, e) = get(&c, &format!("{}{path}", s.base), token).await;
            assert_eq!(status, 401, "{path}: {e}");
            assert_eq!(e["error"]["type"], "authentication_error", "{e}");
        }
    }
    let (status, list) = get(&c, &format!("{}/v1/runs", s.base), Some("sesame")).await;
    assert_eq!((status, &list["data"]), (200, &json!([])));
    let (status, _) = get(&c, &format!("{}/v1/runs/run-x", s.base), Some("sesame")).await;
    assert_eq!(status, 404);
    let page = c.get(format!("{}/ui", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"timeline\"") && html.contains("v1/runs"));
    // Self-contained: nothing loaded from elsewhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
}

// ---- the page, in a real browser ----
