//! Hot swap: a watched directory replaces plugins atomically under load,
//! refuses broken replacements, and lets calls in flight finish on the
//! version they started with; a team's own plugin files are watched the
//! same way while it serves (`conclave serve` under load, with every vote
//! journaled with the version that counted it).

use std::io::BufRead;
use std::path::{Path, PathBuf};
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
    ballot, conclave_bin, eventually, fixture, plugin, prepare_file, replace_atomically, restamped,
    runtime, task, workspace,
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
const VOTED: &str = r#"
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

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "vote"
answer_kind = "number"
"#;

/// A folder holding `team.toml` (from `spec`) and `voter.wasm` (a copy of
/// `voter`).
fn team_dir(spec: &str, voter: &Path) -> tempfile::TempDir {
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

fn hash_of(file: &Path) -> String {
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
        team.clone(),
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

/// `conclave serve` in a process of its own, killed when dropped; what it
/// writes to standard error is kept.
struct Serving {
    child: std::process::Child,
    base: String,
    log: Arc<std::sync::Mutex<String>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn start(dir: &Path, data: &Path, args: &[&str]) -> Self {
        let mut child = std::process::Command::new(conclave_bin())
            .args([
                "serve",
                "team.toml",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .args(args)
            .current_dir(dir)
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .env_remove("CONCLAVE_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("conclave starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.split(" at http://").nth(1) {
                    let _ = tx.send(at.split("/v1").next().unwrap_or_default().to_string());
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Serving {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    async fn plugin(&self, c: &reqwest::Client, name: &str) -> Value {
        let all: Value = c
            .get(format!("{}/v1/plugins", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["team_name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plugin {name} in {all}"))
    }

    /// Polls `/v1/plugins` until `name`'s row passes `check`.
    async fn wait_for(
        &self,
        c: &reqwest::Client,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let row = self.plugin(c, name).await;
            if check(&row) {
                return row;
            }
            assert!(
                std::time::Instant::now() < until,
                "gave up waiting for {what}: {row}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Which version of the swap voter a hash is.
fn version_of(hash: &str, v1: &str, v2: &str) -> &'static str {
    match hash {
        h if h == v1 => "1.0.0",
        h if h == v2 => "2.0.0",
        other => panic!("a vote was counted by an unknown component {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_swaps_its_voter_ten_times_under_load_without_failing_a_request() {
    let dir = team_dir(
        &VOTED.replace(
            "{latency}",
            "latency = { kind = \"constant\", value = \"20ms\" }",
        ),
        &fixture("swap-v1"),
    );
    let voter = dir.path().join("voter.wasm");
    let data = dir.path().join("data");
    let server = Serving::start(dir.path(), &data, &[]);
    let (v1, v2) = (
        std::fs::read(fixture("swap-v1")).unwrap(),
        std::fs::read(fixture("swap-v2")).unwrap(),
    );
    let (h1, h2) = (
        conclave::plugin::cache::content_hash(&v1),
        conclave::plugin::cache::content_hash(&v2),
    );
    let c = reqwest::Client::new();
    let first = server.plugin(&c, "vote").await;
    assert_eq!(first["sha256"], h1.as_str());
    assert_eq!(first["kind"], "voter");
    assert_eq!(first["name"], "swap");
    // Each version that served, from when it was loaded.
    let mut live: Vec<(String, u64)> = vec![(h1.clone(), first["loaded_at_ms"].as_u64().unwrap())];

    let swapping = Arc::new(AtomicBool::new(true));
    let (sent, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (c, url) = (c.clone(), format!("{}/v1/chat/completions", server.base));
        let (swapping, sent, answered) = (swapping.clone(), sent.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            while swapping.load(Ordering::SeqCst) || sent.load(Ordering::SeqCst) < 240 {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                let r = c
                    .post(&url)
                    .timeout(Duration::from_secs(60))
                    .json(&json!({"messages": [{"role": "user", "content": format!("What is {n} + 1?")}]}))
                    .send()
                    .await;
                let reply = match r {
                    Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
                    Err(e) => (0, json!({"transport": e.to_string()})),
                };
                replies.push(reply);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            replies
        }));
    }

    let mut current = h1.clone();
    for i in 0..10 {
        // Let some requests through on the version serving.
        let before = answered.load(Ordering::SeqCst);
        eventually(Duration::from_secs(60), "requests between swaps", || {
            (answered.load(Ordering::SeqCst) >= before + 10).then_some(())
        })
        .await;
        if i == 4 {
            replace_atomically(&voter, b"\0asm\x0d\0\x01\0 but then garbage");
            let row = server
                .wait_for(&c, "vote", "the refusal", |r| !r["refused"].is_null())
                .await;
            assert_eq!(
                row["sha256"],
                current.as_str(),
                "the old version keeps serving"
            );
            assert!(row["refused"]["path"]
                .as_str()
                .unwrap()
                .ends_with("voter.wasm"));
            continue;
        }
        let (bytes, hash) = if current == h1 {
            (&v2, &h2)
        } else {
            (&v1, &h1)
        };
        if i % 2 == 0 {
            replace_atomically(&voter, bytes);
        } else {
            // A plain overwrite: the watcher must wait for the whole file.
            std::fs::write(&voter, bytes).unwrap();
        }
        let row = server
            .wait_for(&c, "vote", "the swap", |r| r["sha256"] == hash.as_str())
            .await;
        current = hash.clone();
        live.push((current.clone(), row["loaded_at_ms"].as_u64().unwrap()));
    }
    swapping.store(false, Ordering::SeqCst);
    let mut replies = Vec::new();
    for client in clients {
        replies.extend(client.await.unwrap());
    }

    assert!(replies.len() >= 200, "only {} requests", replies.len());
    let failed: Vec<&(u16, Value)> = replies
        .iter()
        .filter(|(status, r)| *status != 200 || r["conclave"]["stop"]["stop"] != "decided")
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed[0]
    );
    let answers: std::collections::BTreeSet<&str> = replies
        .iter()
        .map(|(_, r)| r["choices"][0]["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        answers,
        ["1.0.0:3", "2.0.0:3"].into_iter().collect(),
        "both versions served, and only they"
    );
    assert_eq!(live.len(), 10, "nine swaps after the first load");
    let log = server.log();
    assert!(
        log.contains("refused the new")
            && log.contains("voter.wasm")
            && log.contains("keeps serving"),
        "{log}"
    );
    drop(server);

    // Every vote names a version that was serving at some moment between
    // its run's submission and the vote's record.
    let journal = SqliteJournal::open(&data).unwrap();
    let runs = journal.runs().unwrap();
    assert_eq!(runs.len(), replies.len(), "one journaled run per request");
    for (_, r) in &replies {
        let run = r["conclave"]["run_id"].as_str().unwrap();
        let log = journal.read(run).unwrap();
        let submitted = log.records[0].at_ms;
        let votes: Vec<(u64, String)> = log
            .events()
            .filter_map(|(at, e)| match e {
                Event::Vote { hash, .. } => Some((at, hash.clone().expect("a hash per vote"))),
                _ => None,
            })
            .collect();
        assert_eq!(votes.len(), 1, "{run}");
        let (at, hash) = &votes[0];
        let was_live = live.iter().enumerate().any(|(i, (h, from))| {
            h == hash && *from <= *at && live.get(i + 1).is_none_or(|(_, to)| *to >= submitted)
        });
        assert!(
            was_live,
            "{run}: its vote at {at} names {hash}, not serving since {submitted}: {live:?}"
        );
        assert_eq!(
            r["choices"][0]["message"]["content"].as_str().unwrap(),
            format!("{}:3", version_of(hash, &h1, &h2)),
            "{run}: the answer comes from the version the journal names"
        );
    }
}

/// The trace of a run: what `conclave trace --json` prints.
fn trace_json(data: &Path, run: &str) -> Value {
    let out = std::process::Command::new(conclave_bin())
        .args(["trace", run, "--json", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_watch_keeps_the_version_it_loaded_and_trace_names_it() {
    let dir = team_dir(&VOTED.replace("{latency}", ""), &fixture("swap-v1"));
    let data: PathBuf = dir.path().join("data");
    let server = Serving::start(dir.path(), &data, &["--no-watch"]);
    assert!(!server.log().contains("watching"), "{}", server.log());
    let c = reqwest::Client::new();
    replace_atomically(
        &dir.path().join("voter.wasm"),
        &std::fs::read(fixture("swap-v2")).unwrap(),
    );
    // Long enough for a watcher to have swapped it (it settles in 200 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r: Value = c
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&json!({"messages": [{"role": "user", "content": "What is 1 + 1?"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["choices"][0]["message"]["content"], "1.0.0:3");
    let row = server.plugin(&c, "vote").await;
    let h1 = hash_of(&fixture("swap-v1"));
    assert_eq!(row["sha256"], h1.as_str());
    drop(server);
    let t = trace_json(&data, r["conclave"]["run_id"].as_str().unwrap());
    let vote = t["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "vote")
        .cloned()
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(
        (vote["hash"].as_str(), vote["calls"].as_u64()),
        (Some(h1.as_str()), Some(1))
    );
    let solver = t["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "solver")
        .unwrap();
    assert_eq!(solver["hash"], hash_of(&plugin("solver")).as_str());
    assert_eq!(solver["calls"], 3);
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
