//! The journal: every run recorded and listed; replay with no model call
//! (same voter: same decisions; a changed plugin: the first divergence,
//! and its file named by hash even when no decision changes; another voter:
//! what would change); damaged tails,
//! unusable data directories, two processes sharing one journal, and the
//! README's `sqlite3` query. Crash-resume is in `journal_crash`.

use std::path::Path;
use std::process::{Command, Output};

use conclave::journal::sqlite::{SqliteJournal, CRASH_ENV};
use conclave::journal::{Entry, Journal};
use conclave::team::events::Event;
use conclave_tests::{conclave_bin, workspace};

/// Three tasks (two side by side, one after both) on one seeded sim node:
/// the same run id gives the same run.
pub(crate) const TEAM: &str = r#"
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

/// `conclave ARGS` with `env`, the data directory `data` and the built
/// plugins, ready to run or spawn.
pub(crate) fn command(args: &[&str], data: &Path, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(conclave_bin());
    c.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub(crate) fn conclave(args: &[&str], data: &Path, env: &[(&str, String)]) -> Output {
    command(args, data, env).output().expect("conclave runs")
}

pub(crate) fn team_file(dir: &Path, text: &str) -> String {
    let p = dir.join("team.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub(crate) fn run(spec: &str, data: &Path, id: &str, env: &[(&str, String)]) -> Output {
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

pub(crate) fn result(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (real model calls, calls answered from the journal)
pub(crate) fn calls(journal: &SqliteJournal, run: &str) -> (usize, usize) {
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

/// The SQL of the README's `sqlite3` example.
fn readme_query() -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let at = readme
        .find("sqlite3 ~/.local/share/conclave/journal.sqlite")
        .expect("the README has its sqlite3 example");
    let rest = &readme[at..];
    let open = rest.find('"').unwrap() + 1;
    let close = open + rest[open..].find('"').unwrap();
    rest[open..close].to_string()
}

#[test]
fn the_readme_query_counts_the_calls_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let out = run(&spec, dir.path(), "asked", &[]);
    assert!(out.status.success());
    let j = SqliteJournal::open(dir.path()).unwrap();
    let (made, _) = calls(&j, "asked");
    let rows: Vec<(String, i64)> = j.with_connection(|c| {
        c.prepare(&readme_query())
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    });
    assert_eq!(rows, vec![("sim".to_string(), made as i64)]);
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
    // A voter that answers with its version and the ballot count: an
    // answer no ballot gave, refused unless it is let synthesise.
    let other = workspace().join("target/fixtures/swap-v2.wasm");
    let refused = conclave(
        &["replay", "replay-1", "--voter", other.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("which none of the"), "{err}");
    let out = conclave(
        &[
            "replay",
            "replay-1",
            "--voter",
            other.to_str().unwrap(),
            "--synthesises",
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
    // The final task decided early, once 2 of its 3 replicas agreed: the
    // other voter counts the same 2 ballots.
    assert_eq!(rep["answer_now"], "2.0.0:2");
}

#[test]
fn replay_reports_the_first_decision_a_changed_plugin_makes_differently() {
    let dir = tempfile::tempdir().unwrap();
    let voter = dir.path().join("voter.wasm");
    std::fs::copy(workspace().join("target/fixtures/swap-v1.wasm"), &voter).unwrap();
    let text = TEAM
        .replace(
            "[[task]]\nid = \"left\"",
            "[[plugin]]\nname = \"myvote\"\npath = \"voter.wasm\"\nsynthesises = true\n\n[[task]]\nid = \"left\"",
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
fn a_damaged_tail_is_cut_back_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let killed = run(&spec, dir.path(), "torn", &[(CRASH_ENV, "25".into())]);
    assert!(!killed.status.success());
    let j = SqliteJournal::open(dir.path()).unwrap();
    let kept = j.read("torn").unwrap().records.len();
    assert!(kept > 12, "{kept}");
    // Records are stored in chunks (a transaction's records of a run in one
    // row): damage cuts the run back to the start of the damaged chunk.
    let chunk_of = |seq: i64| -> (i64, i64) {
        j.with_connection(|c| {
            c.query_row(
                "SELECT first, count FROM chunks WHERE run = 'torn' AND first <= ?1 AND first + count > ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        })
    };
    let (first, count) = chunk_of(10);
    j.with_connection(|c| {
        c.execute(
            "UPDATE chunks SET checksum = 0 WHERE run = 'torn' AND first = ?1",
            [first],
        )
        .unwrap()
    });
    let log = j.read("torn").unwrap();
    assert_eq!(
        log.records.len() as i64,
        first,
        "nothing before the damaged chunk is lost"
    );
    let why = log.damaged.clone().unwrap();
    let fails = if count == 1 {
        format!("record {first} fails its checksum")
    } else {
        format!(
            "records {first} to {} fail their checksum",
            first + count - 1
        )
    };
    assert!(
        why.contains(&format!("journal.sqlite: run torn: {fails}")),
        "{why}"
    );
    let (first, _) = chunk_of(5);
    j.with_connection(|c| {
        c.execute(
            "UPDATE chunks SET version = 99 WHERE run = 'torn' AND first = ?1",
            [first],
        )
        .unwrap()
    });
    let unknown = format!(
        "record {first} has format version 99; this build reads versions 1 to {}",
        conclave::journal::VERSION
    );
    let why = j.read("torn").unwrap().damaged.unwrap();
    assert!(why.contains(&unknown), "{why}");
    drop(j);
    let resumed = conclave(&["resume", "torn", "--json"], dir.path(), &[]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(err.contains("warning:") && err.contains(&unknown), "{err}");
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
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// A node that is gone before the first call: every attempt on it is
/// journaled with its cause, `conclave trace` counts them against it, and
/// each failed call shows the retry that answered on the other node.
#[tokio::test]
async fn trace_shows_every_failed_attempt_on_a_dead_node_and_the_retry_that_answered() {
    let server = conclave_tests::http::FakeServer::always(conclave_tests::http::Behaviour::Reply(
        "Answer: 42".into(),
    ))
    .await;
    let dead = server.base_url();
    let addr = server.addr;
    drop(server);
    // Dropping the server aborts its accept loop; wait until the port refuses.
    conclave_tests::eventually(
        std::time::Duration::from_secs(5),
        "the port to refuse",
        || std::net::TcpStream::connect(addr).is_err().then_some(()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(
        dir.path(),
        &format!(
            r#"
[team]
name = "one-dead"

[router]
retries = 3

[[node]]
name = "dead"
backend = "openai"
base_url = "{dead}"
model = "gone"

[[node]]
name = "sim"
backend = "sim"
accuracy = 1.0
seed = 3

[[task]]
id = "solve"
role = "solver"
replicas = 6
voter = "majority"
answer_kind = "number"
"#
        ),
    );
    let data = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let out = run(&spec, &data, "dead-1", &[]);
        let trace = conclave(&["trace", "dead-1", "--json"], &data, &[]);
        (out, trace)
    })
    .await
    .unwrap();
    let (out, trace) = out;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result(&out)["answer"], "42");
    let j = SqliteJournal::open(dir.path()).unwrap();
    let log = j.read("dead-1").unwrap();
    let mut failed = Vec::new();
    let mut answered = std::collections::BTreeMap::new();
    for (_, e) in log.events() {
        match e {
            Event::Attempt {
                task,
                replica,
                call,
                node,
                outcome,
                cause,
                ..
            } => {
                assert_eq!(
                    (node.as_str(), *outcome),
                    ("dead", conclave::team::events::AttemptEnd::Failed)
                );
                let cause = cause.clone().unwrap_or_default();
                assert!(cause.contains("node dead is unavailable"), "{cause}");
                failed.push((task.clone(), *replica, *call));
            }
            Event::ModelCall {
                task,
                replica,
                call,
                node,
                attempts,
                ..
            } => {
                answered.insert((task.clone(), *replica, *call), (node.clone(), *attempts));
            }
            _ => {}
        }
    }
    // Six replicas spread over two nodes, siblings' nodes avoided: some
    // call is sent to the dead node first.
    assert!(!failed.is_empty(), "no attempt reached the dead node");
    for key in &failed {
        let (node, attempts) = &answered[key];
        let tries = failed.iter().filter(|k| *k == key).count() as u32;
        assert_eq!(
            (node.as_str(), *attempts),
            ("sim", tries + 1),
            "{key:?}: answered after its failed attempts"
        );
    }
    assert!(
        trace.status.success(),
        "{}",
        String::from_utf8_lossy(&trace.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&trace.stdout).unwrap();
    let row = |name: &str| {
        t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row for node {name}: {t}"))
    };
    let dead_row = row("dead");
    assert_eq!(
        (dead_row["calls"].as_u64(), dead_row["failures"].as_u64()),
        (Some(0), Some(failed.len() as u64))
    );
    assert_eq!(row("sim")["failures"].as_u64(), Some(0));
    let timeline = t["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|l| {
            let l = l.as_str().unwrap();
            l.contains("on dead: failed after") && l.contains("unavailable")
        }),
        "{timeline:?}"
    );
}
