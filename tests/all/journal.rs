//! The journal: every run recorded and listed; replay with no model call
//! (same voter: same decisions; a changed plugin: the first divergence,
//! and its file named by hash even when no decision changes; another voter:
//! what would change); crash-resume at 50 seeded points of a
//! killed process with no journaled model call made twice; damaged tails,
//! unusable data directories, and two processes sharing one journal.

use std::path::Path;
use std::process::{Command, Output};

use conclave::journal::sqlite::{SqliteJournal, CRASH_ENV};
use conclave::journal::{Entry, Journal};
use conclave::team::events::Event;
use conclave_tests::{conclave_bin, workspace};

/// Three tasks (two side by side, one after both) on one seeded sim node:
/// the same run id gives the same run.
const TEAM: &str = r#"
[team]
name = "journaled"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
seed = 5

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

fn conclave(args: &[&str], data: &Path, env: &[(&str, String)]) -> Output {
    let mut c = Command::new(conclave_bin());
    c.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("conclave runs")
}

fn team_file(dir: &Path, text: &str) -> String {
    let p = dir.join("team.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn run(spec: &str, data: &Path, id: &str, env: &[(&str, String)]) -> Output {
    conclave(
        &[
            "run",
            spec,
            "What is 40 + 2?",
            "--gold",
            "42",
            "--json",
            "--run-id",
            id,
        ],
        data,
        env,
    )
}

fn result(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (real model calls, calls answered from the journal)
fn calls(journal: &SqliteJournal, run: &str) -> (usize, usize) {
    let log = journal.read(run).unwrap();
    let mut n = (0, 0);
    for (_, e) in log.events() {
        if let Event::ModelCall { replayed, .. } = e {
            if *replayed {
                n.1 += 1
            } else {
                n.0 += 1
            }
        }
    }
    n
}

#[test]
fn a_run_is_journaled_whole_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let out = run(&spec, dir.path(), "whole-1", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = result(&out);
    let j = SqliteJournal::open(dir.path()).unwrap();
    let log = j.read("whole-1").unwrap();
    assert!(log.damaged.is_none());
    assert!(matches!(log.records[0].entry, Entry::JobSubmitted { .. }));
    assert!(matches!(
        log.records.last().unwrap().entry,
        Entry::JobEnded { .. }
    ));
    assert!(log
        .records
        .iter()
        .enumerate()
        .all(|(i, r)| r.seq == i as u64));
    assert_eq!(
        calls(&j, "whole-1").0 as u64,
        r["samples"].as_u64().unwrap()
    );
    let runs = j.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (
            runs[0].run.as_str(),
            runs[0].team.as_str(),
            runs[0].stop.as_deref()
        ),
        ("whole-1", "journaled", Some("decided"))
    );
    let listed = conclave(&["runs"], dir.path(), &[]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("whole-1"));
    let html = dir.path().join("trace.html");
    let trace = conclave(
        &["trace", "whole-1", "--html", html.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(trace.status.success());
    let text = String::from_utf8_lossy(&trace.stdout);
    assert!(
        text.contains("critical path: left -> both")
            || text.contains("critical path: right -> both"),
        "{text}"
    );
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<svg") && page.contains("whole-1"));
}

#[test]
fn replay_repeats_every_decision_and_another_voter_changes_them() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    assert!(run(&spec, dir.path(), "replay-1", &[]).status.success());
    let same = conclave(&["replay", "replay-1", "--json"], dir.path(), &[]);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let rep = &result(&same)[0];
    assert_eq!(rep["votes"], 3);
    assert_eq!(rep["changed"].as_array().unwrap().len(), 0);
    assert_eq!(rep["answer_before"], rep["answer_now"]);
    // A voter that answers with its version and the ballot count.
    let other = workspace().join("target/fixtures/swap-v2.wasm");
    let out = conclave(
        &[
            "replay",
            "replay-1",
            "--voter",
            other.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = &result(&out)[0];
    assert_eq!(rep["changed"].as_array().unwrap().len(), 3);
    assert_eq!(rep["answer_now"], "2.0.0:3");
}

#[test]
fn replay_reports_the_first_decision_a_changed_plugin_makes_differently() {
    let dir = tempfile::tempdir().unwrap();
    let voter = dir.path().join("voter.wasm");
    std::fs::copy(workspace().join("target/fixtures/swap-v1.wasm"), &voter).unwrap();
    let text = TEAM
        .replace(
            "[[task]]\nid = \"left\"",
            "[[plugin]]\nname = \"myvote\"\npath = \"voter.wasm\"\n\n[[task]]\nid = \"left\"",
        )
        .replace("voter = \"majority\"", "voter = \"myvote\"");
    let spec = team_file(dir.path(), &text);
    assert!(run(&spec, dir.path(), "drift-1", &[]).status.success());
    std::fs::copy(workspace().join("target/fixtures/swap-v2.wasm"), &voter).unwrap();
    let out = conclave(&["replay", "drift-1"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diverges from its journal at task")
            && err.contains("recorded \"decided 1.0.0:3"),
        "{err}"
    );
    // And it says why: the voter's file is not the one that counted.
    let (v1, v2) = (
        hash_of(&workspace().join("target/fixtures/swap-v1.wasm")),
        hash_of(&voter),
    );
    assert!(
        err.contains(&format!(
            "because voter myvote is not the component that counted 3 of these votes: the journal names sha256 {}, the file loaded now is {}",
            &v1[..12],
            &v2[..12]
        )),
        "{err}"
    );
}

fn hash_of(file: &Path) -> String {
    conclave::plugin::cache::content_hash(&std::fs::read(file).unwrap())
}

#[test]
fn replay_names_a_voter_file_that_changed_even_when_its_decisions_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let voter = dir.path().join("voter.wasm");
    let majority = std::fs::read(workspace().join("target/plugins/majority.wasm")).unwrap();
    std::fs::write(&voter, &majority).unwrap();
    let text = TEAM
        .replace(
            "[[task]]\nid = \"left\"",
            "[[plugin]]\nname = \"myvote\"\npath = \"voter.wasm\"\n\n[[task]]\nid = \"left\"",
        )
        .replace("voter = \"majority\"", "voter = \"myvote\"");
    let spec = team_file(dir.path(), &text);
    assert!(run(&spec, dir.path(), "rebuilt-1", &[]).status.success());
    let unchanged = conclave(&["replay", "rebuilt-1", "--json"], dir.path(), &[]);
    assert!(unchanged.status.success());
    assert_eq!(result(&unchanged)[0]["swapped"], serde_json::json!([]));
    // The same voter, rebuilt: same behaviour, another file.
    std::fs::write(&voter, conclave_tests::restamped(&majority, "rebuilt")).unwrap();
    let out = conclave(&["replay", "rebuilt-1", "--json"], dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = &result(&out)[0];
    assert_eq!(rep["changed"], serde_json::json!([]));
    assert_eq!(
        rep["swapped"],
        serde_json::json!([{
            "voter": "myvote",
            "recorded": hash_of(&workspace().join("target/plugins/majority.wasm")),
            "loaded": hash_of(&voter),
            "votes": 3,
        }])
    );
    let text = conclave(&["replay", "rebuilt-1"], dir.path(), &[]);
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(
        err.contains("warning: run rebuilt-1: voter myvote is not the component that counted 3 of these votes")
            && err.contains("the decisions came out the same"),
        "{err}"
    );
}

#[test]
fn a_killed_run_resumes_to_the_same_result_without_repeating_a_journaled_call() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let reference_dir = dir.path().join("reference");
    let reference = result(&run(&spec, &reference_dir, "crash", &[]));
    let j = SqliteJournal::open(&reference_dir).unwrap();
    let records = j.read("crash").unwrap().records.len() as u64;
    let (uninterrupted_calls, _) = calls(&j, "crash");
    drop(j);
    // 50 crash points spread over the run (seeded), each a killed process.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for point in 0..50 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = 1 + state % (records - 1);
        let data = dir.path().join(format!("crash-{point}"));
        let killed = run(&spec, &data, "crash", &[(CRASH_ENV, at.to_string())]);
        assert!(
            !killed.status.success(),
            "the process was killed at record {at}"
        );
        let resumed = conclave(&["resume", "crash", "--json"], &data, &[]);
        assert!(
            resumed.status.success(),
            "resume after record {at}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let r = result(&resumed);
        for k in ["answer", "support", "total", "samples", "stop"] {
            assert_eq!(r[k], reference[k], "{k} after a crash at record {at}");
        }
        let j = SqliteJournal::open(&data).unwrap();
        let (real, reused) = calls(&j, "crash");
        // Every call of the uninterrupted run made once, none twice.
        assert_eq!(
            real, uninterrupted_calls,
            "crash at record {at}: real calls"
        );
        assert!(reused <= real);
        let log = j.read("crash").unwrap();
        assert!(log.damaged.is_none());
    }
}

#[test]
fn a_damaged_tail_is_cut_back_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let killed = run(&spec, dir.path(), "torn", &[(CRASH_ENV, "25".into())]);
    assert!(!killed.status.success());
    let j = SqliteJournal::open(dir.path()).unwrap();
    let kept = j.read("torn").unwrap().records.len();
    assert!(kept > 12, "{kept}");
    j.with_connection(|c| {
        c.execute(
            "UPDATE records SET checksum = 0 WHERE run = 'torn' AND seq = 10",
            [],
        )
        .unwrap()
    });
    let log = j.read("torn").unwrap();
    assert_eq!(log.records.len(), 10, "nothing before the damage is lost");
    let why = log.damaged.clone().unwrap();
    assert!(
        why.contains("journal.sqlite: run torn: record 10 fails its checksum"),
        "{why}"
    );
    j.with_connection(|c| {
        c.execute(
            "UPDATE records SET version = 99 WHERE run = 'torn' AND seq = 5",
            [],
        )
        .unwrap()
    });
    let why = j.read("torn").unwrap().damaged.unwrap();
    assert!(
        why.contains("record 5 has format version 99; this build reads version 1"),
        "{why}"
    );
    drop(j);
    let resumed = conclave(&["resume", "torn", "--json"], dir.path(), &[]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        err.contains("warning:") && err.contains("record 5 has format version 99"),
        "{err}"
    );
    let j = SqliteJournal::open(dir.path()).unwrap();
    let log = j.read("torn").unwrap();
    assert!(log.damaged.is_none());
    assert!(log.ended().is_some());
}

#[test]
fn a_data_directory_that_cannot_be_made_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a file").unwrap();
    let spec = team_file(dir.path(), TEAM);
    let out = run(&spec, &blocker, "nowhere", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "journal {}: cannot open: cannot create the data directory",
            blocker.display()
        )),
        "{err}"
    );
}

#[test]
fn two_processes_share_one_journal() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let spawn = |id: &str| {
        Command::new(conclave_bin())
            .args([
                "run",
                &spec,
                "What is 40 + 2?",
                "--gold",
                "42",
                "--json",
                "--run-id",
                id,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("twin-a"));
        let b = s.spawn(|| spawn("twin-b"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success());
    let j = SqliteJournal::open(dir.path()).unwrap();
    for id in ["twin-a", "twin-b"] {
        let log = j.read(id).unwrap();
        assert!(log.damaged.is_none(), "{id}");
        assert!(log.ended().is_some(), "{id}");
        assert!(log
            .records
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == i as u64));
    }
    assert_eq!(j.runs().unwrap().len(), 2);
}

#[test]
fn replay_can_judge_the_recorded_candidates_with_another_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    assert!(run(&spec, dir.path(), "verify-1", &[]).status.success());
    let out = conclave(
        &[
            "replay",
            "verify-1",
            "--verifier",
            "numeric-check",
            "--verifier-config",
            "{\"derive_from_prompt\": true}",
            "--json",
        ],
        dir.path(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = &result(&out)[0];
    assert_eq!(rep["verifier"], "numeric-check");
    assert_eq!(rep["votes"], 3);
    // Only 42 passes the re-derivation, so every decision now is 42 or none.
    for c in rep["changed"].as_array().unwrap() {
        let now = c["now"].as_str().unwrap();
        assert!(
            now.starts_with("decided 42 (") || now.starts_with("no consensus"),
            "{now}"
        );
    }
    assert_eq!(rep["answer_now"], "42");
    // A verifier that needs a model cannot be replayed without one.
    let out = conclave(
        &["replay", "verify-1", "--verifier", "llm-judge"],
        dir.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verifier llm-judge"), "{err}");
}
