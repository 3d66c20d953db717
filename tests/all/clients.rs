//! `conclave serve` of several teams behind the clients people use: the
//! official `openai` Python client and LiteLLM's SDK, each plain and
//! streamed, and every request field the server documents, checked on both
//! sides (what the client got, what the node was sent). Needs Python with
//! `openai` and `litellm` (`.ci/run` installs them); without them these
//! tests say so and pass, unless `CONCLAVE_REQUIRE_CLIENTS=1` (as in CI).

use std::path::Path;

use conclave_tests::http::{Behaviour, FakeServer};
use conclave_tests::workspace;
use serde_json::Value;

use crate::hot_swap_serve::Serving;

/// Whether python3 can import `module`; panics when it cannot and the
/// clients are required.
fn have(module: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CONCLAVE_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "python3 cannot import {module}, and CONCLAVE_REQUIRE_CLIENTS=1: \
             pip install openai litellm"
        );
        eprintln!("skipped: python3 cannot import {module} (pip install openai litellm)");
    }
    ok
}

/// Two teams in one folder: `recorded` on a fake node that records what it
/// is sent, `simulated` on a sim node.
fn teams(dir: &Path, node: &FakeServer) {
    std::fs::write(
        dir.join("recorded.toml"),
        format!(
            r#"
[team]
name = "recorded"
# Every replica is asked (no early decision), so the node's counts are exact.
consensus = {{ decide = "all" }}

[[node]]
name = "fake"
backend = "openai"
base_url = "{}"
model = "m"

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#,
            node.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("simulated.toml"),
        r#"
[team]
name = "simulated"

[[node]]
name = "sim"
backend = "sim"
accuracy = 1.0

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#,
    )
    .unwrap();
}

fn python(script: &str, base: &str, teams: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(workspace().join("tests/python").join(script))
        .arg(base)
        .args(teams)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_client_drives_several_teams_and_every_field() {
    if !have("openai") {
        return;
    }
    let node = FakeServer::always(Behaviour::Reply("5".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    teams(dir.path(), &node);
    let s = Serving::start_specs(dir.path(), data.path(), &["."], &[]);
    let base = format!("{}/v1", s.base);
    let printed = tokio::task::spawn_blocking(move || {
        python("openai_fields.py", &base, &["recorded", "simulated"])
    })
    .await
    .unwrap();
    let runs: Value = serde_json::from_str(printed.lines().last().unwrap_or("")).unwrap();
    assert!(
        runs["sampled"].as_str().unwrap().starts_with("run-"),
        "{runs}"
    );
    // What the node was sent for the request with sampling fields: find
    // its calls by their stop sequences, which no other request sets.
    let bodies = node.bodies.lock().unwrap().clone();
    let sampled: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["stop"].to_string().contains("###"))
        .collect();
    assert_eq!(sampled.len(), 3, "{bodies:?}\n{}", s.log());
    for b in &sampled {
        assert_eq!(b["temperature"], serde_json::json!(0.25), "{b}");
        assert_eq!(b["top_p"], serde_json::json!(0.5), "{b}");
        assert!(b["max_tokens"].as_u64().unwrap() <= 5, "{b}");
    }
    // The multi-part question reached the node as its text parts, joined.
    assert!(
        bodies
            .iter()
            .any(|b| b["messages"].to_string().contains("What is\\n2 + 3?")),
        "{bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn litellm_drives_several_teams_plain_and_streamed() {
    if !have("litellm") {
        return;
    }
    let node = FakeServer::always(Behaviour::Reply("5".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    teams(dir.path(), &node);
    let s = Serving::start_specs(
        dir.path(),
        data.path(),
        &["recorded.toml", "simulated.toml"],
        &[],
    );
    let base = format!("{}/v1", s.base);
    let printed = tokio::task::spawn_blocking(move || {
        python("litellm_client.py", &base, &["recorded", "simulated"])
    })
    .await
    .unwrap();
    assert!(printed.contains("recorded answered '5'"), "{printed}");
    assert!(printed.contains("simulated answered"), "{printed}");
    // Plain and streamed: two runs of three replicas on the fake node.
    assert_eq!(node.count(), 6, "{}", s.log());
}
