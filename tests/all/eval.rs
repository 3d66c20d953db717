//! `conclave eval` end to end on a slice of the evaluation data with sim
//! teams: the table's numbers are the per-item results' numbers, the JSON
//! and chart are written, and running it again resumes (no new runs).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use conclave_tests::{conclave_bin, workspace};
use serde_json::Value;

/// `conclave eval SPEC --data DATA --limit LIMIT --data-dir DIR`, run in
/// the workspace with its built plugins; callers add the rest.
fn eval_command(spec: impl AsRef<OsStr>, data: &str, limit: usize, data_dir: &Path) -> Command {
    let mut c = Command::new(conclave_bin());
    c.arg("eval")
        .arg(spec)
        .args(["--data", data, "--limit", &limit.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .current_dir(workspace())
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"));
    c
}

fn eval(data_dir: &Path, out: &Path) -> Value {
    let o = eval_command(
        "examples/adaptive-consistency.toml",
        "data/eval/arithmetic_dev.jsonl",
        12,
        data_dir,
    )
    .args(["--compare", "examples/debate.toml", "--seed", "7", "--json"])
    .arg("--out")
    .arg(out)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn mean(results: &[Value], key: &str) -> f64 {
    results
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .sum::<f64>()
        / results.len() as f64
}

#[test]
fn the_table_is_the_per_item_results_and_a_second_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let scores = eval(&dir.path().join("data"), &out);
    let scores = scores.as_array().unwrap();
    assert_eq!(scores.len(), 2);
    for s in scores {
        let results = s["results"].as_array().unwrap();
        assert_eq!(results.len(), 12);
        let correct = results.iter().filter(|r| r["correct"] == true).count();
        assert_eq!(s["correct"], correct);
        assert!((s["accuracy"].as_f64().unwrap() - correct as f64 / 12.0).abs() < 1e-12);
        assert!((s["samples_per_item"].as_f64().unwrap() - mean(results, "samples")).abs() < 1e-9);
        assert!((s["tokens_per_item"].as_f64().unwrap() - mean(results, "tokens")).abs() < 1e-9);
        let (lo, hi) = (
            s["ci_low"].as_f64().unwrap(),
            s["ci_high"].as_f64().unwrap(),
        );
        assert!(lo <= s["accuracy"].as_f64().unwrap() && s["accuracy"].as_f64().unwrap() <= hi);
        // Each item's verdict follows from its answer and the gold.
        for r in results {
            let right = r["stop"] == "decided" && r["answer"] == r["gold"];
            assert_eq!(r["correct"], right, "{r}");
        }
    }
    assert_eq!(scores[0]["team"], "adaptive-consistency");
    // Debate: 3 replicas in each of 3 rounds; the last round, the vote,
    // decides once 2 of its 3 agree, so an item takes 8 or 9 samples.
    let debate = scores[1]["samples_per_item"].as_f64().unwrap();
    assert!(
        (8.0..=9.0).contains(&debate),
        "debate: {debate} samples per item"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(written[0]["accuracy"], scores[0]["accuracy"]);
    let chart = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert_eq!(chart.matches("<circle").count(), 2);
    // Again: every item is read back from the journal.
    let again = eval(&dir.path().join("data"), &out);
    for (a, b) in again.as_array().unwrap().iter().zip(scores) {
        assert_eq!(a["accuracy"], b["accuracy"]);
        assert!(a["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["resumed"] == true));
    }
}

/// A team spec that keeps its name, voting by `voter`.
fn named_team(voter: &str) -> String {
    format!(
        r#"
[team]
name = "kept-name"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.6
seed = 1

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "{voter}"
answer_kind = "number"
"#
    )
}

/// `conclave eval SPEC` on the first 4 arithmetic items; the results.
fn eval_spec(spec: &Path, data_dir: &Path) -> Vec<Value> {
    let o = eval_command(spec, "data/eval/arithmetic_dev.jsonl", 4, data_dir)
        .args(["--seed", "7", "--json"])
        .arg("--out")
        .arg(data_dir.join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["results"].as_array().unwrap().clone()
}

fn resumed(results: &[Value]) -> Vec<bool> {
    results.iter().map(|r| r["resumed"] == true).collect()
}

#[test]
fn a_team_that_keeps_its_name_but_changes_its_voter_is_evaluated_again() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("team.toml");
    let data = dir.path().join("data");
    std::fs::write(&spec, named_team("majority")).unwrap();
    let first = eval_spec(&spec, &data);
    assert_eq!(resumed(&first), [false; 4]);
    std::fs::write(&spec, named_team("borda")).unwrap();
    let changed = eval_spec(&spec, &data);
    assert_eq!(resumed(&changed), [false; 4], "nothing reused");
    for (a, b) in first.iter().zip(&changed) {
        assert_ne!(a["run_id"], b["run_id"]);
    }
    let same = eval_spec(&spec, &data);
    assert_eq!(resumed(&same), [true; 4], "everything reused");
    for (a, b) in changed.iter().zip(&same) {
        assert_eq!((&a["run_id"], &a["answer"]), (&b["run_id"], &b["answer"]));
    }
}

#[test]
fn a_team_whose_answer_kind_cannot_fit_the_data_is_refused_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("team.toml");
    // A number-kind team on multiple-choice items: every item would score
    // wrong whatever it answered.
    std::fs::write(&spec, named_team("majority")).unwrap();
    let o = eval_command(&spec, "data/eval/mmlu_dev.jsonl", 5, dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("answers task \"answer\" as number")
            && err.contains("5 of the 5 items")
            && err.contains("choice answers")
            && err.contains("answer_kind = \"choice\""),
        "{err}"
    );
    // Nothing ran: no run was journaled.
    use conclave::journal::Journal as _;
    let runs = conclave::journal::sqlite::SqliteJournal::open(dir.path())
        .unwrap()
        .runs()
        .unwrap();
    assert_eq!(runs.len(), 0);
    // The same team with the kind that fits runs.
    std::fs::write(
        &spec,
        named_team("majority").replace("answer_kind = \"number\"", "answer_kind = \"choice\""),
    )
    .unwrap();
    let o = eval_command(&spec, "data/eval/mmlu_dev.jsonl", 2, dir.path())
        .arg("--json")
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn items_whose_runs_failed_are_counted_apart_and_named_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A node on a port where nothing listens: every call is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = dir.path().join("team.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
[team]
name = "dead-node"

[[node]]
name = "gone"
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "m"

[[task]]
id = "answer"
role = "solver"
replicas = 2
voter = "majority"
answer_kind = "number"
"#
        ),
    )
    .unwrap();
    let o = eval_command(&spec, "data/eval/arithmetic_dev.jsonl", 3, dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let row = out
        .lines()
        .find(|l| l.starts_with("dead-node"))
        .unwrap_or_else(|| panic!("{out}"));
    // accuracy 0.0%, then no consensus 0.0% and failed 100.0% last.
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cells[2], &cells[cells.len() - 2..]),
        ("0.0%", &["0.0%", "100.0%"][..]),
        "{row}"
    );
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        warning.starts_with(
            "warning: dead-node: 3 of 3 items failed without an answer and are scored wrong; 3 of them like item 0: failed: all "
        ) && warning.contains("gone"),
        "{warning}"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/eval.json")).unwrap())
            .unwrap();
    assert_eq!(written[0]["failed_rate"], 1.0);
    assert!(written[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["failed"] == true && r["correct"] == false));
}
