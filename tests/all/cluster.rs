//! Cluster mode's journal on NATS JetStream, against a real nats-server
//! (scripts/install-nats.sh fetches it; each test starts its own on free
//! loopback ports with a temporary store): a run recorded through it reads
//! back from other processes as it does from SQLite; acknowledged records
//! survive `kill -9` of the recording process and of the server, and the
//! run resumes from the stream; a server restarting mid-run loses nothing;
//! servers that could lose acknowledged writes are refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use conclave::journal::jetstream::{ClusterConfig, JetStreamJournal};
use conclave::journal::sqlite::SqliteJournal;
use conclave::journal::{Entry, Journal, RunLog};
use conclave::team::events::Event;
use conclave_tests::workspace;

use crate::journal::{command, conclave, team_file, TEAM};
use crate::journal_crash::SLOW_TEAM;

/// The nats-server the tests run: `CONCLAVE_NATS_SERVER`, else the one
/// scripts/install-nats.sh puts in target/nats.
pub(crate) fn nats_binary() -> PathBuf {
    let path = std::env::var_os("CONCLAVE_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/nats/nats-server"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-nats.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server of this test's own.
pub(crate) struct Nats {
    child: Option<Child>,
    binary: PathBuf,
    conf: PathBuf,
    port: u16,
    http: u16,
}

impl Nats {
    pub(crate) fn start(dir: &Path, sync_always: bool) -> Nats {
        Nats::start_with(nats_binary(), dir, sync_always)
    }

    fn start_with(binary: PathBuf, dir: &Path, sync_always: bool) -> Nats {
        Nats::start_configured(binary, dir, sync_always, "")
    }

    /// A server (syncing every write) with `more` in its configuration:
    /// an `authorization` or a `tls` block.
    pub(crate) fn start_secured(dir: &Path, more: &str) -> Nats {
        Nats::start_configured(nats_binary(), dir, true, more)
    }

    fn start_configured(binary: PathBuf, dir: &Path, sync_always: bool, more: &str) -> Nats {
        let (port, http) = (free_port(), free_port());
        let store = dir.join("nats-store");
        let conf = dir.join(format!("nats-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\njetstream {{\n  store_dir: {:?}\n{}}}\n{more}\n",
                store.display().to_string(),
                if sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        let mut n = Nats {
            child: None,
            binary,
            conf,
            port,
            http,
        };
        n.spawn();
        n
    }

    pub(crate) fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the server.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) fn config(&self) -> ClusterConfig {
        ClusterConfig {
            monitor: Some(format!("http://127.0.0.1:{}", self.http)),
            ..ClusterConfig::new(self.url())
        }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONCLAVE_CLUSTER", self.url()),
            (
                "CONCLAVE_CLUSTER_MONITOR",
                format!("http://127.0.0.1:{}", self.http),
            ),
        ]
    }

    pub(crate) fn read(&self, run: &str) -> RunLog {
        JetStreamJournal::connect(&self.config())
            .unwrap()
            .read(run)
            .unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ok_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The checks every complete journal of a run passes: records 0, 1, 2, ...
/// without damage, a submission first and an end last; in each stretch
/// between resumptions at most one decision per task, every task of the
/// last stretch decided once, a task decided again after a resumption
/// decided the same; no model call made for real twice (a resumed run
/// reuses the journaled ones); and no replica's ballot counted twice in a
/// stretch.
pub(crate) fn assert_complete(log: &RunLog, question: &str) {
    use std::collections::BTreeMap;
    assert!(log.damaged.is_none(), "{:?}", log.damaged);
    for (i, r) in log.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
    }
    assert!(
        matches!(&log.records[0].entry, Entry::JobSubmitted { question: q, .. } if q == question),
        "{:?}",
        log.records[0].entry
    );
    assert!(log.ended().is_some(), "the run ended");
    let mut stretch = 0;
    let mut started: BTreeMap<(u32, String), u32> = BTreeMap::new();
    let mut decided: BTreeMap<(u32, String), Vec<Option<String>>> = BTreeMap::new();
    let mut calls = BTreeMap::new();
    let mut ballots: BTreeMap<(u32, String, u32, u32), u32> = BTreeMap::new();
    for r in &log.records {
        let e = match &r.entry {
            Entry::Resumed { .. } => {
                stretch += 1;
                continue;
            }
            Entry::Event { event } => event,
            _ => continue,
        };
        match e {
            Event::TaskStarted { task, .. } => {
                *started.entry((stretch, task.clone())).or_default() += 1
            }
            Event::TaskEnded { task, result } => decided
                .entry((stretch, task.clone()))
                .or_default()
                .push(result.answer.clone()),
            Event::ModelCall {
                task,
                replica,
                call,
                replayed: false,
                ..
            } => *calls.entry((task.clone(), *replica, *call)).or_insert(0) += 1,
            Event::Ballot {
                task,
                round,
                ballot,
                ..
            } => {
                *ballots
                    .entry((stretch, task.clone(), *round, ballot.replica))
                    .or_insert(0) += 1
            }
            _ => {}
        }
    }
    assert!(
        decided.values().all(|d| d.len() == 1),
        "one decision per task in each stretch: {decided:?}"
    );
    let last: Vec<&String> = started
        .keys()
        .filter(|(s, _)| *s == stretch)
        .map(|(_, t)| t)
        .collect();
    assert!(!last.is_empty());
    for t in last {
        assert!(
            decided.contains_key(&(stretch, t.clone())),
            "{t} decided at the end: {decided:?}"
        );
    }
    let mut answers: BTreeMap<&String, &Option<String>> = BTreeMap::new();
    for ((_, task), d) in &decided {
        let before = answers.insert(task, &d[0]);
        assert!(
            before.is_none_or(|b| b == &d[0]),
            "{task} decided differently after a resumption: {decided:?}"
        );
    }
    assert!(
        calls.values().all(|&n| n == 1),
        "a model call made twice: {calls:?}"
    );
    assert!(!ballots.is_empty());
    assert!(
        ballots.values().all(|&n| n == 1),
        "a replica's ballot counted twice: {ballots:?}"
    );
}

#[test]
fn a_run_on_the_cluster_reads_back_from_other_processes_as_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), TEAM);
    let question = "What is 40 + 2?";
    let args = [
        "run", &spec, question, "--gold", "42", "--json", "--run-id", "c1",
    ];
    let on_cluster = ok_json(&conclave(&args, &dir.path().join("unused"), &nats.env()));
    let local_dir = dir.path().join("local");
    let local = ok_json(&conclave(&args, &local_dir, &[]));
    assert_eq!(on_cluster["answer"], local["answer"]);
    assert_eq!(on_cluster["stop"], local["stop"]);
    assert!(
        !dir.path().join("unused").join("journal.sqlite").exists(),
        "the cluster's run wrote no local journal"
    );

    let cluster_log = nats.read("c1");
    assert_complete(&cluster_log, question);
    let local_log = SqliteJournal::open(&local_dir).unwrap().read("c1").unwrap();
    // The same seeded run: the same records, kind by kind, and the same
    // ballots.
    let kinds = |log: &RunLog| {
        let mut k: Vec<String> = log
            .events()
            .map(|(_, e)| e.name().to_string())
            .collect::<Vec<_>>();
        k.sort();
        k
    };
    assert_eq!(kinds(&cluster_log), kinds(&local_log));
    assert_eq!(cluster_log.records.len(), local_log.records.len());

    // Other processes read it: runs, trace, replay.
    let other = dir.path().join("other");
    let runs = ok_json(&conclave(&["runs", "--json"], &other, &nats.env()));
    let row = &runs.as_array().unwrap()[0];
    assert_eq!(row["run"], "c1");
    assert_eq!(row["team"], "journaled");
    assert_eq!(row["question"], question);
    assert_eq!(row["stop"], "decided");
    assert_eq!(
        row["tokens"].as_u64().unwrap(),
        on_cluster["tokens_in"].as_u64().unwrap() + on_cluster["tokens_out"].as_u64().unwrap()
    );
    let trace = ok_json(&conclave(&["trace", "c1", "--json"], &other, &nats.env()));
    assert_eq!(trace["run"], "c1", "{trace}");
    let replay = ok_json(&conclave(&["replay", "c1", "--json"], &other, &nats.env()));
    assert_eq!(replay[0]["answer_now"], on_cluster["answer"], "{replay}");
    let missing = conclave(&["trace", "nope"], &other, &nats.env());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no run \"nope\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// Waits until the stream holds at least `n` records of `run`.
fn wait_for_records(nats: &Nats, run: &str, n: usize) -> usize {
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(log) = journal.read(run) {
            if log.records.len() >= n {
                return log.records.len();
            }
        }
        assert!(Instant::now() < deadline, "{run} never had {n} records");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn acknowledged_records_survive_kill_9_of_process_and_server_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), SLOW_TEAM);
    let question = "What is 40 + 2?";
    let data = dir.path().join("unused");
    let mut child = command(
        &["run", &spec, question, "--gold", "42", "--run-id", "k1"],
        &data,
        &nats.env(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Some model calls in: kill the recording process.
    wait_for_records(&nats, "k1", 8);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = nats.read("k1");
    assert!(before.ended().is_none(), "killed before its end");
    // And the server.
    nats.kill();
    nats.spawn();
    let after = nats.read("k1");
    assert!(after.damaged.is_none(), "{:?}", after.damaged);
    assert_eq!(
        after.records.len(),
        before.records.len(),
        "every record read before the server's kill is there after it"
    );
    assert_eq!(after.records, before.records);

    // Another process resumes it from the stream.
    let resumed = ok_json(&conclave(
        &["resume", "k1", "--json"],
        &dir.path().join("elsewhere"),
        &nats.env(),
    ));
    assert_eq!(resumed["stop"]["stop"], "decided", "{resumed}");
    let log = nats.read("k1");
    assert_complete(&log, question);
    assert_eq!(log.records[..before.records.len()], before.records[..]);
    assert!(
        log.records
            .iter()
            .any(|r| matches!(r.entry, Entry::Resumed { .. })),
        "the resumption is journaled"
    );
    let reused = log
        .events()
        .filter(|(_, e)| matches!(e, Event::ModelCall { replayed: true, .. }))
        .count();
    assert!(reused > 0, "calls journaled before the kill are reused");
    let runs = ok_json(&conclave(&["runs", "--json"], &data, &nats.env()));
    assert_eq!(runs[0]["run"], "k1");
    assert_eq!(runs[0]["stop"], "decided");
}

#[test]
fn a_server_restarting_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), SLOW_TEAM);
    let question = "What is 40 + 2?";
    let child = command(
        &[
            "run", &spec, question, "--gold", "42", "--run-id", "r1", "--json",
        ],
        &dir.path().join("unused"),
        &nats.env(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_records(&nats, "r1", 5);
    nats.kill();
    std::thread::sleep(Duration::from_millis(500));
    nats.spawn();
    let out = child.wait_with_output().unwrap();
    let result = ok_json(&out);
    assert_eq!(result["stop"]["stop"], "decided", "{result}");
    let log = nats.read("r1");
    assert_complete(&log, question);
    assert_eq!(
        log.ended().unwrap().answer,
        result["answer"].as_str().map(String::from)
    );
}

#[test]
fn servers_that_could_lose_acknowledged_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let unsynced = Nats::start(dir.path(), false);
    let o = conclave(&["runs"], &dir.path().join("d"), &unsynced.env());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sync_interval: always") && err.contains(&unsynced.url()),
        "{err}"
    );
    // No monitoring endpoint to check it with: refused too, saying how.
    let o = conclave(
        &["runs"],
        &dir.path().join("d"),
        &[
            ("CONCLAVE_CLUSTER", unsynced.url()),
            (
                "CONCLAVE_CLUSTER_MONITOR",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--cluster-monitor"), "{err}");
    // Debian's nats-server (2.9) has no way to sync every write.
    for debian in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        let debian = PathBuf::from(debian);
        let version = Command::new(&debian).arg("--version").output();
        let Ok(version) = version else { continue };
        if !String::from_utf8_lossy(&version.stdout).contains("v2.9.") {
            continue;
        }
        let old_dir = dir.path().join("debian");
        std::fs::create_dir_all(&old_dir).unwrap();
        let old = Nats::start_with(debian, &old_dir, false);
        let o = conclave(&["runs"], &dir.path().join("d"), &old.env());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("2.10 or later"), "{err}");
    }
    // A server that syncs is taken.
    let synced_dir = dir.path().join("synced");
    std::fs::create_dir_all(&synced_dir).unwrap();
    let synced = Nats::start(&synced_dir, true);
    let o = conclave(&["runs", "--json"], &dir.path().join("d"), &synced.env());
    assert_eq!(ok_json(&o), serde_json::json!([]));
}

/// A cut inside a stored chunk keeps exactly the records before it, and
/// the run goes on from there, as read by this connection and a new one.
#[test]
fn truncating_inside_a_chunk_keeps_what_is_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let retry = |i: u32| Entry::Event {
        event: Event::Retry {
            task: format!("t{i}"),
            replica: i,
        },
    };
    for i in 0..10 {
        assert_eq!(journal.append("cut", retry(i)), u64::from(i));
    }
    futures::executor::block_on(journal.flush()).unwrap();
    assert_eq!(journal.read("cut").unwrap().records.len(), 10);
    journal.truncate("cut", 4).unwrap();
    let log = journal.read("cut").unwrap();
    let entries: Vec<Entry> = log.records.iter().map(|r| r.entry.clone()).collect();
    assert_eq!(entries, (0..4).map(retry).collect::<Vec<_>>());
    assert_eq!(journal.append("cut", retry(40)), 4);
    futures::executor::block_on(journal.flush()).unwrap();
    let fresh = nats.read("cut");
    assert!(fresh.damaged.is_none(), "{:?}", fresh.damaged);
    // The records kept by the cut keep their links, and the next one
    // chains on from them.
    assert!(fresh.chain.intact(), "{:?}", fresh.chain);
    assert_eq!(fresh.chain.verified, 5);
    let entries: Vec<Entry> = fresh.records.iter().map(|r| r.entry.clone()).collect();
    assert_eq!(
        entries,
        [0, 1, 2, 3, 40].into_iter().map(retry).collect::<Vec<_>>()
    );
    assert_eq!(
        fresh.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // Cut to nothing: the run is gone.
    journal.truncate("cut", 0).unwrap();
    assert!(journal.read("cut").is_err());
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// A process stopped mid-run while another resumes the run and finishes
/// it, then continued: its next write is refused by the server (each chunk
/// expects the run's last stream sequence it knows), it exits with an
/// error saying so, and the journal is the other process's.
#[test]
fn a_writer_overtaken_by_a_resume_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), SLOW_TEAM);
    let question = "What is 40 + 2?";
    let first = command(
        &["run", &spec, question, "--gold", "42", "--run-id", "f1"],
        &dir.path().join("one"),
        &nats.env(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_records(&nats, "f1", 6);
    signal(&first, "STOP");
    let stopped_at = nats.read("f1").records.len();
    let resumed = ok_json(&conclave(
        &["resume", "f1", "--json"],
        &dir.path().join("two"),
        &nats.env(),
    ));
    assert_eq!(resumed["stop"]["stop"], "decided", "{resumed}");
    let taken_over = nats.read("f1");
    assert_complete(&taken_over, question);
    signal(&first, "CONT");
    let out = first.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("taken over by another process") && err.contains("f1"),
        "{err}"
    );
    // Nothing the stopped process tried to write after the takeover is in
    // the journal: it reads exactly as the resumed run left it.
    assert_fenced_off(&nats.read("f1"), &taken_over, stopped_at);
}

/// A journal read after a fenced-off writer came back (`after`) is the
/// one its successor left (`successor`), resumed after the `stopped_at`
/// records the fenced-off writer had written.
pub(crate) fn assert_fenced_off(after: &RunLog, successor: &RunLog, stopped_at: usize) {
    assert_eq!(after.records, successor.records);
    assert!(
        after
            .records
            .iter()
            .position(|r| matches!(r.entry, Entry::Resumed { .. }))
            .is_some_and(|i| i >= stopped_at),
        "resumed after the records written before the stop"
    );
}

/// A process whose run was taken over by another keeps journaling its
/// other runs: the refusal fails that run's flushes, not the others'.
#[test]
fn a_run_taken_over_fails_only_its_own_flushes() {
    use futures::executor::block_on;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let first = JetStreamJournal::connect(&nats.config()).unwrap();
    for run in ["taken", "kept"] {
        first.append(run, Entry::Resumed { after: 0 });
    }
    block_on(first.flush()).unwrap();
    // Another process writes to one of them.
    let other = JetStreamJournal::connect(&nats.config()).unwrap();
    other.append("taken", Entry::Resumed { after: 1 });
    block_on(other.flush()).unwrap();
    // The first one's next write to it is refused; its other run goes on.
    first.append("taken", Entry::Resumed { after: 1 });
    first.append("kept", Entry::Resumed { after: 1 });
    let refused = block_on(first.flush_run("taken")).unwrap_err().to_string();
    assert!(refused.contains(conclave::journal::TAKEN_OVER), "{refused}");
    block_on(first.flush_run("kept")).unwrap();
    assert_eq!(nats.read("kept").records.len(), 2);
    let taken = nats.read("taken");
    assert_eq!(taken.records.len(), 2, "the first's and the other's");
    assert_eq!(taken.records[1].entry, Entry::Resumed { after: 1 });
    // The journal-wide flush still says a run was taken over.
    assert!(block_on(first.flush()).is_err());
}

#[test]
fn a_chunk_forged_on_the_stream_breaks_the_runs_chain_at_the_record_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), TEAM);
    let args = [
        "run",
        &spec,
        "What is 40 + 2?",
        "--gold",
        "42",
        "--json",
        "--run-id",
        "forged",
    ];
    let data = dir.path().join("unused");
    let reply = ok_json(&conclave(&args, &data, &nats.env()));
    let digest = reply["digest"].as_str().expect("a digest").to_string();
    let answer = reply["answer"].as_str().unwrap().to_string();
    let verified = ok_json(&conclave(
        &["verify", "forged", "--digest", &digest, "--json"],
        &data,
        &nats.env(),
    ));
    assert_eq!(verified["ok"], true, "{verified}");
    let ended = nats
        .read("forged")
        .records
        .iter()
        .find(|r| matches!(r.entry, Entry::JobEnded { .. }))
        .map(|r| r.seq)
        .unwrap();
    // Whoever may publish on the journal's subjects republishes the chunk
    // that holds the end, with another answer and the same headers: a
    // reader takes the later of two chunks that start at one record.
    let url = nats.config().url;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("CONCLAVE_CONCLAVE_JOURNAL").await.unwrap();
        let last = stream
            .get_last_raw_message_by_subject("conclave.conclave.journal.forged")
            .await
            .unwrap();
        let text = String::from_utf8(last.payload.to_vec()).unwrap();
        let forged = text.replace(&format!("\"answer\":\"{answer}\""), "\"answer\":\"999\"");
        assert_ne!(forged, text);
        let mut headers = async_nats::HeaderMap::new();
        for name in ["Conclave-Seq", "Conclave-Count", "Conclave-Version"] {
            headers.insert(name, last.headers.get(name).unwrap().as_str());
        }
        js.publish_with_headers(
            "conclave.conclave.journal.forged",
            headers,
            forged.into_bytes().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    });
    let log = nats.read("forged");
    let stop = log.ended().map(|r| r.answer.clone());
    assert_eq!(
        stop,
        Some(Some("999".to_string())),
        "the forged end is read"
    );
    let out = conclave(&["verify", "forged", "--json"], &data, &nats.env());
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let broken = v["chain"]["broken"].as_str().unwrap();
    assert!(
        broken.starts_with(&format!("record {ended} does not match its link")),
        "{broken}"
    );
}
