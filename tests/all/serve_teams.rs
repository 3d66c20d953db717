//! Many teams behind one server, and every field of a chat request: the
//! model id picks the team (unknown ids are OpenAI's 404), the teams share
//! their nodes, a changed spec is served without a restart and a broken
//! one is refused; `n`, `max_tokens`, `temperature`, `top_p`, `seed` and
//! `stop` reach the nodes or the reply, and what a team cannot honour is a
//! 400 naming the field. Real HTTP both ways: the server in-process, its
//! nodes fake OpenAI-compatible servers that record what they were sent.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conclave::journal::sqlite::SqliteJournal;
use conclave::server::{Server, ServerConfig, Teams};
use conclave_tests::http::{Behaviour, FakeServer};
use conclave_tests::{plugin_dir, runtime};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A team named `name` asking `replicas` replicas of one node at `url`;
/// every replica is asked (no early decision), so the node's counts are
/// exact.
fn team(name: &str, url: &str, replicas: u32) -> String {
    format!(
        r#"
[team]
name = "{name}"
consensus = {{ decide = "all" }}

[[node]]
name = "fake"
backend = "openai"
base_url = "{url}"
model = "m"

[[task]]
id = "answer"
role = "solver"
replicas = {replicas}
voter = "majority"
answer_kind = "number"
"#
    )
}

/// A team of sim nodes that disagree often: every replica reports
/// (`decide = "all"`), so its ballots hold several answers.
const SPREAD: &str = r#"
[team]
name = "spread"
consensus = { decide = "all" }

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.3

[[task]]
id = "answer"
role = "solver"
replicas = 7
voter = "majority"
answer_kind = "number"
"#;

struct Running {
    base: String,
    teams: Arc<Teams>,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

async fn serve(paths: &[&Path]) -> Running {
    let paths: Vec<_> = paths.iter().map(|p| p.to_path_buf()).collect();
    let teams = Teams::load(&paths, runtime(), &plugin_dir()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let server = Server::bind(
        teams.clone(),
        journal,
        ServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    Running {
        base,
        teams,
        shutdown,
        _data: data,
    }
}

async fn post(base: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(url: String) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls `check` every 50 ms until it gives a value, for at most 20 s.
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ask(model: &str, q: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": q}]})
}

fn answer(r: &Value) -> &str {
    r["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn the_model_id_picks_one_of_several_teams_and_an_unknown_one_is_a_404() {
    let (a, b) = (
        FakeServer::always(Behaviour::Reply("41".into())).await,
        FakeServer::always(Behaviour::Reply("42".into())).await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alpha.toml"),
        team("alpha", &a.base_url(), 3),
    )
    .unwrap();
    std::fs::write(dir.path().join("beta.toml"), team("beta", &b.base_url(), 3)).unwrap();
    // Not a spec: left alone.
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let s = serve(&[dir.path()]).await;
    assert_eq!(s.teams.names(), ["alpha", "beta"]);

    let (status, r) = post(&s.base, ask("alpha", "What is 40 + 1?")).await;
    assert_eq!((status, answer(&r)), (200, "41"), "{r}");
    assert_eq!(r["model"], "alpha");
    let (status, r) = post(&s.base, ask("beta", "What is 40 + 2?")).await;
    assert_eq!((status, answer(&r)), (200, "42"), "{r}");
    assert_eq!(r["model"], "beta");
    assert_eq!(a.count(), 3, "alpha's node served alpha's replicas only");

    let (status, r) = post(&s.base, ask("gamma", "What is 1 + 1?")).await;
    assert_eq!(status, 404, "{r}");
    assert_eq!(r["error"]["code"], "model_not_found");
    assert_eq!(r["error"]["param"], "model");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`gamma`") && message.contains("`alpha`, `beta`"),
        "{message}"
    );
    // No model with two teams served: which one is meant is not guessed.
    let (status, r) = post(
        &s.base,
        json!({"messages": [{"role": "user", "content": "What is 1 + 1?"}]}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("model is required"));

    let (status, models) = get(format!("{}/v1/models", s.base)).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let (status, m) = get(format!("{}/v1/models/beta", s.base)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("beta"), Some("model"))
    );
    assert!(m["conclave"]["spec"]
        .as_str()
        .unwrap()
        .ends_with("beta.toml"));
    let (status, m) = get(format!("{}/v1/models/gamma", s.base)).await;
    assert_eq!(status, 404);
    assert_eq!(m["error"]["code"], "model_not_found");
    s.shutdown.cancel();
}

#[tokio::test]
async fn teams_defining_a_node_the_same_way_share_it_and_differing_ones_do_not() {
    let fake = FakeServer::always(Behaviour::Reply("7".into())).await;
    let other = FakeServer::always(Behaviour::Reply("7".into())).await;
    let dir = tempfile::tempdir().unwrap();
    for (file, name, url) in [
        ("a.toml", "a", fake.base_url()),
        ("b.toml", "b", fake.base_url()),
        ("c.toml", "c", other.base_url()),
    ] {
        std::fs::write(dir.path().join(file), team(name, &url, 2)).unwrap();
    }
    let s = serve(&[dir.path()]).await;
    // `fake` in a and b is one node; c's `fake` points elsewhere.
    assert_eq!(s.teams.nodes(), 2);
    s.shutdown.cancel();
}

#[tokio::test]
async fn two_specs_with_one_team_name_are_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("one.toml"),
        team("same", "http://127.0.0.1:9/v1", 1),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("two.toml"),
        team("same", "http://127.0.0.1:9/v1", 1),
    )
    .unwrap();
    let e = match Teams::load(&[dir.path().to_path_buf()], runtime(), &plugin_dir()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("two teams named `same` were both served"),
    };
    assert!(
        e.contains("\"same\"") && e.contains("one.toml") && e.contains("two.toml"),
        "{e}"
    );
}

#[tokio::test]
async fn a_changed_spec_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let (a, b) = (
        FakeServer::always(Behaviour::Reply("41".into())).await,
        FakeServer::always(Behaviour::Reply("43".into())).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("alpha.toml");
    std::fs::write(&spec, team("alpha", &a.base_url(), 3)).unwrap();
    let s = serve(&[&spec]).await;
    let _watch = s.teams.watch(Duration::from_millis(50), true).unwrap();
    let (_, r) = post(&s.base, ask("alpha", "What is 40 + 1?")).await;
    assert_eq!(answer(&r), "41");

    // The same team, now on another node.
    std::fs::write(&spec, team("alpha", &b.base_url(), 3)).unwrap();
    let base = s.base.clone();
    poll("the reloaded spec", || {
        let base = base.clone();
        async move {
            let (_, r) = post(&base, ask("alpha", "What is 40 + 3?")).await;
            (answer(&r) == "43").then_some(())
        }
    })
    .await;

    // A broken spec: refused with its line, and the version serving goes on.
    std::fs::write(&spec, "[team\nname = \"alpha\"\n").unwrap();
    let base = s.base.clone();
    let refused = poll("the reloaded spec", || {
        let base = base.clone();
        async move {
            let (_, m) = get(format!("{base}/v1/models/alpha")).await;
            m["conclave"]["refused"]["reason"]
                .as_str()
                .map(String::from)
        }
    })
    .await;
    assert!(refused.contains("alpha.toml:1:"), "{refused}");
    let (status, r) = post(&s.base, ask("alpha", "What is 40 + 3?")).await;
    assert_eq!((status, answer(&r)), (200, "43"), "{r}");

    // Renamed: the new name is served, the old one is a 404.
    std::fs::write(&spec, team("alpha-2", &a.base_url(), 3)).unwrap();
    let base = s.base.clone();
    poll("the reloaded spec", || {
        let base = base.clone();
        async move {
            let (status, _) = get(format!("{base}/v1/models/alpha-2")).await;
            (status == 200).then_some(())
        }
    })
    .await;
    let (status, _) = post(&s.base, ask("alpha", "What is 1 + 1?")).await;
    assert_eq!(status, 404);
    let (_, m) = get(format!("{}/v1/models/alpha-2", s.base)).await;
    assert!(m["conclave"]["refused"].is_null(), "{m}");
    s.shutdown.cancel();
}

#[tokio::test]
async fn sampling_fields_reach_every_model_call_of_the_run() {
    let fake = FakeServer::always(Behaviour::Reply("5".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("t.toml");
    std::fs::write(&spec, team("t", &fake.base_url(), 3)).unwrap();
    let s = serve(&[&spec]).await;
    let mut body = ask("t", "What is 2 + 3?");
    body["temperature"] = json!(0.25);
    body["top_p"] = json!(0.5);
    body["max_tokens"] = json!(5);
    body["stop"] = json!(["END", "###"]);
    body["seed"] = json!(7);
    let (status, r) = post(&s.base, body.clone()).await;
    assert_eq!(status, 200, "{r}");
    let sent = fake.bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    for b in &sent {
        assert_eq!(b["temperature"], json!(0.25), "{b}");
        assert_eq!(b["top_p"], json!(0.5), "{b}");
        assert!(b["max_tokens"].as_u64().unwrap() <= 5, "{b}");
        let stop: Vec<&str> = b["stop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(stop.contains(&"END") && stop.contains(&"###"), "{b}");
    }
    let seeds = |bodies: &[Value]| {
        let mut s: Vec<u64> = bodies.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
        s.sort();
        s
    };
    let first = seeds(&sent);
    // Replicas sample apart: each its own seed.
    assert_eq!(
        first
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    // The same seed again: the same seeds, under another run id.
    let (_, r2) = post(&s.base, body.clone()).await;
    assert_ne!(r["conclave"]["run_id"], r2["conclave"]["run_id"]);
    let again = seeds(&fake.bodies.lock().unwrap()[3..6]);
    assert_eq!(first, again);
    // No seed: seeds of the run's own.
    body.as_object_mut().unwrap().remove("seed");
    post(&s.base, body).await;
    let unseeded = seeds(&fake.bodies.lock().unwrap()[6..9]);
    assert_ne!(first, unseeded);
    s.shutdown.cancel();
}

#[tokio::test]
async fn n_gives_the_answer_then_the_other_answers_by_support() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spread.toml");
    std::fs::write(&spec, SPREAD).unwrap();
    let s = serve(&[&spec]).await;
    let mut body = ask("spread", "What is 12 + 30?");
    body["n"] = json!(3);
    let (status, r) = post(&s.base, body).await;
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    let candidates = r["conclave"]["candidates"].as_array().unwrap();
    assert!(!choices.is_empty() && choices.len() <= 3, "{r}");
    // As many choices as asked, or as distinct answers the ballots held.
    assert_eq!(choices.len(), candidates.len().min(3), "{r}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{r}");
    }
    if r["conclave"]["stop"]["stop"] == "decided" {
        assert_eq!(
            choices[0]["message"]["content"],
            r["conclave"]["candidates"][0]["answer"]
        );
        assert_eq!(choices[0]["conclave"]["ballots"], r["conclave"]["support"]);
    }
    // The rest: distinct answers, most ballots first, each with its count.
    let rest: Vec<(String, u64)> = choices[1..]
        .iter()
        .map(|c| {
            (
                c["message"]["content"].as_str().unwrap().to_string(),
                c["conclave"]["ballots"].as_u64().unwrap(),
            )
        })
        .collect();
    for w in rest.windows(2) {
        assert!(w[0].1 >= w[1].1 && w[0].0 != w[1].0, "{r}");
    }
    for (a, n) in &rest {
        let c = candidates
            .iter()
            .find(|c| c["answer"] == a.as_str())
            .unwrap();
        assert_eq!(c["ballots"].as_u64(), Some(*n));
    }
    s.shutdown.cancel();
}

#[tokio::test]
async fn fields_a_team_cannot_honour_are_a_400_naming_the_field() {
    let fake = FakeServer::always(Behaviour::Reply("5".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("t.toml");
    std::fs::write(&spec, team("t", &fake.base_url(), 1)).unwrap();
    let s = serve(&[&spec]).await;
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
    let image = json!([{"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]);
    for (field, value, param) in [
        ("tools", json!([tool]), "tools"),
        ("tool_choice", json!("required"), "tool_choice"),
        (
            "response_format",
            json!({"type": "json_object"}),
            "response_format",
        ),
        ("n", json!(0), "n"),
        ("n", json!(9), "n"),
        ("max_tokens", json!(0), "max_tokens"),
        ("temperature", json!(3.5), "temperature"),
        ("stop", json!(["a", "b", "c", "d", "e"]), "stop"),
        (
            "stream_options",
            json!({"include_usage": true}),
            "stream_options",
        ),
        ("logprobs", json!(true), "logprobs"),
        ("logit_bias", json!({"50256": -100}), "logit_bias"),
    ] {
        let mut body = ask("t", "What is 2 + 3?");
        body[field] = value;
        let (status, r) = post(&s.base, body).await;
        assert_eq!(status, 400, "{field}: {r}");
        assert_eq!(r["error"]["param"], param, "{field}: {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error");
    }
    let (status, r) = post(
        &s.base,
        json!({"model": "t", "messages": [{"role": "user", "content": image}]}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content[1] is of type \"image_url\""),
        "{r}"
    );
    assert_eq!(fake.count(), 0, "a refused request calls no node");

    // What is honoured: text parts joined, tool_choice "none", text format.
    let parts = json!([{"type": "text", "text": "What is"}, {"type": "text", "text": "2 + 3?"}]);
    let (status, r) = post(
        &s.base,
        json!({"model": "t", "messages": [{"role": "user", "content": parts}],
               "tool_choice": "none", "response_format": {"type": "text"}, "user": "u-1"}),
    )
    .await;
    assert_eq!((status, answer(&r)), (200, "5"), "{r}");
    let sent = fake.bodies.lock().unwrap()[0].clone();
    assert!(
        sent["messages"].to_string().contains("What is\\n2 + 3?"),
        "{sent}"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_stream_with_include_usage_ends_with_a_usage_chunk_without_choices() {
    let fake = FakeServer::always(Behaviour::Reply("5".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("t.toml");
    std::fs::write(&spec, team("t", &fake.base_url(), 3)).unwrap();
    let s = serve(&[&spec]).await;
    let events = |text: String| -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    };
    let stream = |usage: bool| {
        let mut body = ask("t", "What is 2 + 3?");
        body["stream"] = json!(true);
        if usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let base = s.base.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let with = events(stream(true).await);
    let last = with.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    // Three replicas of the fake node: 11 prompt and 7 completion tokens each.
    assert_eq!(last["usage"]["completion_tokens"], 21, "{last}");
    assert_eq!(last["usage"]["total_tokens"], 54, "{last}");
    assert!(with[..with.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_none()));
    let without = events(stream(false).await);
    assert!(without.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        without.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    s.shutdown.cancel();
}
