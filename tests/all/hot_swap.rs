//! Hot swap: a watched directory replaces plugins atomically under load,
//! refuses broken replacements, and lets calls in flight finish on the
//! version they started with; a team's own plugin files are watched the
//! same way while it runs. `conclave serve` swapping under load is in
//! `hot_swap_serve`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave::journal::sqlite::SqliteJournal;
use conclave::journal::Journal;
use conclave::plugin::Decision;
use conclave::team::events::Event;
use conclave::team::job::PreparedTeam;
use conclave::team::swap::PluginStatus;
use conclave::{Invocation, Registry};
use conclave_tests::http::{Behaviour, FakeServer};
use conclave_tests::{
    ballot, eventually, fixture, plugin, prepare_file, replace_atomically, restamped, runtime, task,
};
use serde_json::{json, Value};

/// Writes `bytes` to `path` the way a deploy should: a temporary file, then a
/// rename, so a reader never sees half a file.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn answer(d: &Decision) -> &str {
    match d {
        Decision::Decided(d) => &d.answer,
        other => panic!("expected a decision, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap.wasm");
    std::fs::copy(fixture("swap-v1"), &file).unwrap();
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    let v1 = reg.get("swap").unwrap();
    assert_eq!(v1.version(), "1.0.0");

    std::fs::write(&file, b"\0asm\x0d\0\x01\0 but then garbage").unwrap();
    let e = reg.reload(&file).await.unwrap_err();
    assert!(matches!(e, conclave::PluginError::Compile { .. }), "{e:?}");
    assert_eq!(reg.get("swap").unwrap().hash(), v1.hash());
    assert_eq!(reg.failures().len(), 1);

    replace(&file, &std::fs::read(fixture("swap-v2")).unwrap());
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Loaded(_)
    ));
    assert_eq!(reg.get("swap").unwrap().version(), "2.0.0");
    assert_eq!(reg.failures(), vec![]);
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Unchanged
    ));

    // A handle taken before the swap still runs version 1.
    let rt = reg.runtime();
    let d = rt
        .tally(&v1, &Invocation::default(), &task(""), &[ballot("1")])
        .await
        .unwrap();
    assert_eq!(answer(&d), "1.0.0:1");

    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Removed
    ));
    assert!(reg.get("swap").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_survive_ten_swaps_including_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap.wasm");
    let v1 = std::fs::read(fixture("swap-v1")).unwrap();
    let v2 = std::fs::read(fixture("swap-v2")).unwrap();
    replace(&file, &v1);
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    let _watch = reg.watch(Duration::from_millis(20)).unwrap();

    let swapping = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for worker in 0..8 {
        let (reg, swapping, calls) = (reg.clone(), swapping.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let ballots = vec![ballot("x"); 3];
            while swapping.load(Ordering::SeqCst) || calls.load(Ordering::SeqCst) < 1000 {
                let p = reg.get("swap").expect("a version is always loaded");
                let d = reg
                    .runtime()
                    .tally(&p, &Invocation::default(), &task(""), &ballots)
                    .await
                    .unwrap_or_else(|e| panic!("worker {worker}: call failed: {e}"));
                let got = answer(&d).to_string();
                // The answer must come from one whole version: the version
                // of the handle used, and nothing else.
                assert_eq!(got, format!("{}:3", p.version()));
                seen.push(got);
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            seen
        }));
    }

    let mut changes = reg.subscribe();
    let mut refused = 0;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        if i == 4 {
            replace(&file, b"definitely not a component");
            // Wait until the watcher has seen and refused it.
            for _ in 0..500 {
                if !reg.failures().is_empty() {
                    refused += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(reg.get("swap").is_ok(), "the old version keeps serving");
        } else {
            // Alternate versions, so every good write is a real change.
            let next = if (i < 4 && i % 2 == 0) || (i > 4 && i % 2 == 1) {
                &v2
            } else {
                &v1
            };
            replace(&file, next);
            tokio::time::timeout(Duration::from_secs(30), changes.changed())
                .await
                .expect("the watcher swapped the new version in")
                .unwrap();
        }
    }
    swapping.store(false, Ordering::SeqCst);
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    assert!(all.len() >= 1000, "only {} calls", all.len());
    assert_eq!(refused, 1, "the broken file was refused");
    assert!(
        all.iter().any(|a| a == "1.0.0:3") && all.iter().any(|a| a == "2.0.0:3"),
        "both versions served"
    );
    // The last write (i = 9) was v2.
    assert_eq!(reg.get("swap").unwrap().version(), "2.0.0");
    assert_eq!(reg.failures(), vec![]);
}

// A team's own plugin files, watched while it serves: `PreparedTeam::watch`
// and `conclave serve`.

/// A sim team whose voter is `voter.wasm` next to the spec.
pub(crate) const VOTED: &str = r#"
[team]
name = "swapped"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.9
{latency}

[[plugin]]
name = "vote"
path = "voter.wasm"
# Its answers name its version: none of the ballots gives them.
synthesises = true

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "vote"
answer_kind = "number"
"#;

/// A folder holding `team.toml` (from `spec`) and `voter.wasm` (a copy of
/// `voter`).
pub(crate) fn team_dir(spec: &str, voter: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team.toml"), spec).unwrap();
    std::fs::copy(voter, dir.path().join("voter.wasm")).unwrap();
    dir
}

fn status_of(team: &PreparedTeam, name: &str) -> PluginStatus {
    team.plugin_status()
        .into_iter()
        .find(|p| p.team_name == name)
        .unwrap_or_else(|| panic!("the team uses no plugin {name}"))
}

pub(crate) fn hash_of(file: &Path) -> String {
    conclave::plugin::cache::content_hash(&std::fs::read(file).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_is_not_the_same_plugin_is_refused_and_the_old_version_keeps_serving() {
    let dir = team_dir(&VOTED.replace("{latency}", ""), &fixture("swap-v1"));
    let voter = dir.path().join("voter.wasm");
    let team = prepare_file(&dir.path().join("team.toml")).await;
    let _watch = team.watch(Duration::from_millis(30)).unwrap();
    let v1 = status_of(&team, "vote");
    assert_eq!(
        (v1.name.as_str(), v1.version.as_str(), v1.kind.as_str()),
        ("swap", "1.0.0", "voter")
    );
    assert_eq!(v1.sha256, hash_of(&fixture("swap-v1")));
    assert_eq!(v1.refused, None);
    let refusals = [
        (
            plugin("majority"),
            "it is plugin `majority`, but the team loaded `swap` from this file",
        ),
        (
            plugin("answer-format"),
            "it is a verifier, but the team uses `vote` as a voter",
        ),
        (fixture("wrong-world"), "exports none of `run`"),
    ];
    for (file, cause) in refusals {
        replace_atomically(&voter, &std::fs::read(&file).unwrap());
        let refused = eventually(Duration::from_secs(30), cause, || {
            status_of(&team, "vote")
                .refused
                .filter(|r| r.reason.contains(cause))
        })
        .await;
        assert!(refused.path.ends_with("voter.wasm"), "{refused:?}");
        let now = status_of(&team, "vote");
        assert_eq!(
            (now.sha256.as_str(), now.loaded_at_ms),
            (v1.sha256.as_str(), v1.loaded_at_ms),
            "the old version keeps serving"
        );
    }
    let (r, _) = conclave_tests::run_job(&team, "refused-1", "What is 2 + 2?", None).await;
    assert_eq!(r.answer.as_deref(), Some("1.0.0:3"));
    // A good file again is swapped in, and the refusal is forgotten.
    std::fs::copy(fixture("swap-v2"), &voter).unwrap();
    let v2 = eventually(Duration::from_secs(30), "version 2", || {
        Some(status_of(&team, "vote")).filter(|s| s.version == "2.0.0")
    })
    .await;
    assert_eq!(v2.sha256, hash_of(&fixture("swap-v2")));
    assert_eq!(v2.refused, None);
    assert!(v2.loaded_at_ms >= v1.loaded_at_ms);
    let (r, events) = conclave_tests::run_job(&team, "swapped-1", "What is 2 + 2?", None).await;
    assert_eq!(r.answer.as_deref(), Some("2.0.0:3"));
    let voted: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Vote { hash, .. } => Some(hash.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(voted, vec![Some(v2.sha256.clone())]);
}

/// A team whose one replica's model call goes to `url`, with the
/// built-in solver loaded from `solver.wasm` next to the spec.
const GATED: &str = r#"
[team]
name = "gated"

[[node]]
name = "gate"
backend = "openai"
base_url = "{url}"
model = "m"

[[plugin]]
name = "solver"
path = "solver.wasm"
grants = ["llm"]

[[task]]
id = "answer"
role = "solver"
replicas = 1
voter = "majority"
answer_kind = "number"
"#;

/// The role version behind each ballot of `run`.
fn role_hashes(journal: &SqliteJournal, run: &str) -> Vec<String> {
    journal
        .read(run)
        .unwrap()
        .events()
        .filter_map(|(_, e)| match e {
            Event::Ballot { role, .. } => role.as_ref().map(|r| r.hash.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_open_across_a_swap_finishes_on_its_version_and_the_next_gets_the_new_one() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let model = FakeServer::start(
        vec![Behaviour::Gate(gate.clone(), "Answer: 42".into())],
        Behaviour::Reply("Answer: 42".into()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("team.toml"),
        GATED.replace("{url}", &model.base_url()),
    )
    .unwrap();
    let solver = dir.path().join("solver.wasm");
    let old = std::fs::read(plugin("solver")).unwrap();
    std::fs::write(&solver, &old).unwrap();
    let new = restamped(&old, "v2");
    let team = Arc::new(prepare_file(&dir.path().join("team.toml")).await);
    let _watch = team.watch(Duration::from_millis(30)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(data.path()).unwrap();
    let server = conclave::server::Server::bind(
        conclave::server::Teams::of(vec![team.clone()]).unwrap(),
        journal.clone(),
        conclave::server::ServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/v1/chat/completions", server.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    let ask = |url: String| async move {
        let r: Value = reqwest::Client::new()
            .post(url)
            .json(&json!({"messages": [{"role": "user", "content": "What is 6 * 7?"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r
    };

    // The first request's role call is under way, waiting on its model.
    let first = tokio::spawn(ask(url.clone()));
    eventually(Duration::from_secs(30), "the first model call", || {
        (model.count() == 1).then_some(())
    })
    .await;
    replace_atomically(&solver, &new);
    let new_hash = conclave::plugin::cache::content_hash(&new);
    eventually(Duration::from_secs(60), "the swap", || {
        (status_of(&team, "solver").sha256 == new_hash).then_some(())
    })
    .await;
    // Started after the swap: the new version, while the first still waits.
    let second = ask(url.clone()).await;
    assert_eq!(second["conclave"]["stop"]["stop"], "decided", "{second}");
    assert!(!first.is_finished(), "the first call is still held open");
    gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(first["conclave"]["stop"]["stop"], "decided", "{first}");
    assert_eq!(first["choices"][0]["message"]["content"], "42");
    let run = |r: &Value| r["conclave"]["run_id"].as_str().unwrap().to_string();
    let old_hash = conclave::plugin::cache::content_hash(&old);
    assert_ne!(old_hash, new_hash);
    assert_eq!(role_hashes(&journal, &run(&first)), vec![old_hash]);
    assert_eq!(role_hashes(&journal, &run(&second)), vec![new_hash]);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_0_1_voter_is_replaced_by_its_0_2_build_while_the_team_runs() {
    let dir = team_dir(&VOTED.replace("{latency}", ""), &fixture("majority-v1"));
    let voter = dir.path().join("voter.wasm");
    let team = prepare_file(&dir.path().join("team.toml")).await;
    let _watch = team.watch(Duration::from_millis(30)).unwrap();
    let old = status_of(&team, "vote");
    assert_eq!(
        (old.name.as_str(), old.contract.as_str()),
        ("majority", "0.1")
    );
    let (r, _) = conclave_tests::run_job(&team, "on-0.1", "What is 2 + 2?", Some("4")).await;
    assert!(r.answer.is_some(), "{r:?}");
    replace_atomically(&voter, &std::fs::read(plugin("majority")).unwrap());
    let new = eventually(Duration::from_secs(30), "the 0.2 build", || {
        Some(status_of(&team, "vote")).filter(|s| s.contract == "0.2")
    })
    .await;
    assert_eq!(new.sha256, hash_of(&plugin("majority")));
    assert_eq!(new.refused, None);
    let (r, events) = conclave_tests::run_job(&team, "on-0.2", "What is 2 + 2?", Some("4")).await;
    assert!(r.answer.is_some(), "{r:?}");
    let voted: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Vote { hash, .. } => Some(hash.clone()),
            _ => None,
        })
        .collect();
    assert!(!voted.is_empty());
    assert!(
        voted
            .iter()
            .all(|h| h.as_deref() == Some(new.sha256.as_str())),
        "{voted:?}"
    );
}
