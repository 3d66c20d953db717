//! Hot swap in `conclave serve`: a served team's voter replaced ten times
//! under load without a failed request, every vote journaled with the
//! version that counted it; and `--no-watch` keeping the version it loaded.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave::journal::sqlite::SqliteJournal;
use conclave::journal::Journal;
use conclave::team::events::Event;
use conclave_tests::{conclave_bin, eventually, fixture, plugin, replace_atomically, workspace};
use serde_json::{json, Value};

use crate::hot_swap::{hash_of, team_dir, VOTED};

/// `conclave serve` in a process of its own, killed when dropped; what it
/// writes to standard error is kept.
pub(crate) struct Serving {
    child: std::process::Child,
    pub(crate) base: String,
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
        Self::start_specs(dir, data, &["team.toml"], args)
    }

    /// `conclave serve SPECS...` in `dir`, journaling in `data`.
    pub(crate) fn start_specs(dir: &Path, data: &Path, specs: &[&str], args: &[&str]) -> Self {
        let mut child = std::process::Command::new(conclave_bin())
            .arg("serve")
            .args(specs)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
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

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) async fn plugin(&self, c: &reqwest::Client, name: &str) -> Value {
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
    pub(crate) async fn wait_for(
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
    // The reply's digest is the journal's, and the answer, which no
    // ballot gave, is marked as the voter's own.
    let digest = r["conclave"]["digest"].as_str().expect("a digest");
    assert_eq!(digest.len(), 64);
    assert_eq!(t["chain"]["digest"], digest, "{t}");
    assert_eq!(t["chain"]["broken"], Value::Null);
    assert_eq!(r["conclave"]["synthesised"], true, "{r}");
    assert_eq!(r["conclave"]["support"], 0);
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
