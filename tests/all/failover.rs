//! Cluster mode's elected coordinator, as separate OS processes against a
//! real nats-server: two `conclave serve --cluster` servers elect one
//! coordinator; when it is killed (`SIGKILL`) mid-run the standby takes the
//! lease and finishes the run from the journal; when it is stopped
//! (`SIGSTOP`) past its lease and then continued, it finds itself deposed,
//! writes nothing more, and goes on as a standby; so does a coordinator
//! whose NATS server was down past its lease, which then leads again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use conclave::journal::jetstream::JetStreamJournal;
use conclave::journal::{Entry, Journal, RunLog};

use crate::cluster::{assert_complete, assert_fenced_off, free_port, signal, Nats};
use crate::journal::{command, team_file};
use crate::journal_crash::SLOW_TEAM;

/// The crash tests' team (three tasks of three replicas on a simulated
/// node), slower, so that a run is in progress when a test interferes.
fn team() -> String {
    let slower = SLOW_TEAM.replace("median = \"80ms\"", "median = \"600ms\"");
    assert_ne!(slower, SLOW_TEAM, "the crash tests' team has an 80 ms node");
    slower
}

/// The lease's time to live in these tests (the shortest accepted).
const TTL: &str = "2s";

/// A `conclave serve --cluster` process, its standard error in a file.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) port: u16,
    log: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start(dir: &Path, name: &str, spec: &str, nats: &Nats) -> Server {
        Server::start_with_ttl(dir, name, spec, nats, TTL)
    }

    /// [`Server::start`] with a lease time to live of `ttl`.
    pub(crate) fn start_with_ttl(
        dir: &Path,
        name: &str,
        spec: &str,
        nats: &Nats,
        ttl: &str,
    ) -> Server {
        Server::start_with(dir, name, spec, nats, ttl, &[])
    }

    /// [`Server::start_with_ttl`] with `more` arguments to `serve`.
    pub(crate) fn start_with(
        dir: &Path,
        name: &str,
        spec: &str,
        nats: &Nats,
        ttl: &str,
        more: &[&str],
    ) -> Server {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "serve",
            spec,
            "--listen",
            &listen,
            "--lease-ttl",
            ttl,
            "--no-watch",
        ];
        args.extend_from_slice(more);
        let child = command(&args, &dir.join(name), &nats.env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server {
            child: Some(child),
            port,
            log,
        }
    }

    /// The status of `GET /healthz`, if the server answers.
    pub(crate) fn health(&self) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        reply.split(' ').nth(1)?.parse().ok()
    }

    /// Waits until `/healthz` answers `status`.
    pub(crate) fn wait_health(&self, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while self.health() != Some(status) {
            assert!(
                Instant::now() < deadline,
                "/healthz never answered {status}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a chat request and keeps the connection open (a client that
    /// leaves would cancel its run).
    pub(crate) fn ask(&self, question: &str) -> TcpStream {
        let body =
            serde_json::json!({"messages": [{"role": "user", "content": question}]}).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn child(&self) -> &Child {
        self.child.as_ref().unwrap()
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die of SIGKILL's
            // cleanup in order.
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}

/// The one run on the cluster, once it has `n` records.
pub(crate) fn wait_for_run(journal: &JetStreamJournal, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(row) = journal.runs().unwrap().first() {
            if journal
                .read(&row.run)
                .is_ok_and(|log| log.records.len() >= n)
            {
                return row.run.clone();
            }
        }
        assert!(Instant::now() < deadline, "no run with {n} records");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `run`'s records once it has ended.
pub(crate) fn wait_for_end(journal: &JetStreamJournal, run: &str, servers: &[&Server]) -> RunLog {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = journal.read(run).unwrap();
        if log.ended().is_some() {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} did not end: {}",
            servers
                .iter()
                .map(|s| s.stderr())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn submitted_question(log: &RunLog) -> String {
    match &log.records[0].entry {
        Entry::JobSubmitted { question, .. } => question.clone(),
        e => panic!("the first record is not the submission: {e:?}"),
    }
}

/// Two servers, `a` elected (started first, so it takes the lease).
fn two_servers(dir: &Path, nats: &Nats) -> (Server, Server) {
    let spec = team_file(dir, &team());
    let a = Server::start(dir, "a", &spec, nats);
    a.wait_health(200, Duration::from_secs(60));
    let b = Server::start(dir, "b", &spec, nats);
    b.wait_health(503, Duration::from_secs(60));
    // Still: one coordinator.
    assert_eq!(a.health(), Some(200));
    (a, b)
}

#[test]
fn a_standby_takes_over_when_the_coordinator_is_killed_and_the_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let (mut a, b) = two_servers(dir.path(), &nats);
    assert!(
        b.stderr().contains("standby:"),
        "the standby says so: {}",
        b.stderr()
    );
    let _client = a.ask("What is 40 + 2?");
    let run = wait_for_run(&journal, 6);
    // The coordinator, its term, and its run registered under that term.
    let dead = cluster_status(dir.path(), &nats);
    a.kill();
    let before = journal.read(&run).unwrap();
    assert!(before.ended().is_none(), "killed before its end");
    assert_eq!(
        dead["coordinator"]["http"],
        format!("http://127.0.0.1:{}", a.port)
    );
    let dead_term = dead["term"].as_u64().expect("a term");
    assert_eq!(
        dead["runs"],
        serde_json::json!([[run, dead_term]]),
        "{dead}"
    );

    // The standby takes the lease, then the run.
    b.wait_health(200, Duration::from_secs(30));
    let log = wait_for_end(&journal, &run, &[&b]);
    assert_complete(&log, &submitted_question(&log));
    assert_eq!(log.records[..before.records.len()], before.records[..]);
    let resumptions = log
        .records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Resumed { .. }))
        .count();
    assert_eq!(resumptions, 1, "resumed once, by the new coordinator");
    assert!(
        b.stderr().contains(&format!("taking over run {run}"))
            && b.stderr().contains("coordinating the cluster (term"),
        "{}",
        b.stderr()
    );
    assert_eq!(
        log.ended().unwrap().stop.to_string(),
        "decided",
        "{:?}",
        log.ended()
    );
    // The new coordinator, in a later term, with nothing left in progress.
    let deadline = Instant::now() + Duration::from_secs(30);
    let now = loop {
        let now = cluster_status(dir.path(), &nats);
        if now["term"].is_u64() && now["runs"] == serde_json::json!([]) {
            break now;
        }
        assert!(Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        now["coordinator"]["http"],
        format!("http://127.0.0.1:{}", b.port)
    );
    assert!(now["term"].as_u64().unwrap() > dead_term, "{now}");
}

/// `conclave cluster --json`.
fn cluster_status(dir: &Path, nats: &Nats) -> serde_json::Value {
    let out = command(&["cluster", "--json"], &dir.join("status"), &nats.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rest of a reply to a request sent with [`Server::ask`].
/// (The connection is kept alive: the reply ends where its
/// `content-length` says.)
fn reply(mut client: TcpStream) -> String {
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return text;
            }
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).to_string(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn a_deposed_coordinator_writes_nothing_more_and_rejoins_as_a_standby() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let (mut a, mut b) = two_servers(dir.path(), &nats);
    let client = a.ask("What is 40 + 2?");
    let run = wait_for_run(&journal, 6);
    // Stopped, not dead: its lease runs out and the standby takes over.
    signal(a.child(), "STOP");
    let stopped_at = journal.read(&run).unwrap().records.len();
    b.wait_health(200, Duration::from_secs(30));
    let finished = wait_for_end(&journal, &run, &[&b]);
    assert_complete(&finished, &submitted_question(&finished));

    // Continued: it finds the lease gone, stops its run, writes nothing
    // more, and stays up as a standby.
    signal(a.child(), "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.stderr().contains("rejoins the cluster as a standby") {
        assert!(Instant::now() < deadline, "{}", a.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    a.wait_health(503, Duration::from_secs(30));
    assert!(
        a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "a deposed coordinator keeps running: {}",
        a.stderr()
    );
    assert!(
        a.stderr().contains("lost the coordinator lease of term"),
        "{}",
        a.stderr()
    );
    assert_fenced_off(&journal.read(&run).unwrap(), &finished, stopped_at);
    assert_eq!(b.health(), Some(200), "the new coordinator serves");
    // Its client was told the run goes on elsewhere.
    let told = reply(client);
    assert!(
        told.starts_with("HTTP/1.1 503")
            && told.contains("coordinator_changed")
            && told.contains(&run),
        "{told}"
    );

    // A standby like any other: when the coordinator dies, it leads again
    // (a later term) and runs requests to their end.
    b.kill();
    a.wait_health(200, Duration::from_secs(30));
    let answered = reply(a.ask("What is 1 + 2?"));
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(answered.contains("\"choices\""), "{answered}");
}

#[test]
fn a_coordinator_deposed_by_a_nats_restart_leads_again_and_finishes_its_own_run() {
    // The only server; the NATS server is down longer than the lease's
    // deadline (three quarters of its 2 s), so the coordinator is deposed.
    // It must not stop for good: it rejoins, takes the lease again in a
    // later term, and resumes the run it was running from the journal.
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team());
    let a = Server::start(dir.path(), "a", &spec, &nats);
    a.wait_health(200, Duration::from_secs(60));
    let client = a.ask("What is 40 + 2?");
    let run = wait_for_run(&journal, 6);
    nats.kill();
    std::thread::sleep(Duration::from_millis(2500));
    nats.spawn();
    let log = wait_for_end(&journal, &run, &[&a]);
    assert_complete(&log, "What is 40 + 2?");
    assert_eq!(log.ended().unwrap().stop.to_string(), "decided");
    let said = a.stderr();
    assert!(
        said.contains("lost the coordinator lease of term")
            && said.contains(&format!("taking over run {run}")),
        "{said}"
    );
    // Terms: the one it lost and the one it leads in now (and, while the
    // server was still starting, maybe one more it lost again).
    let terms = said
        .lines()
        .filter(|l| l.starts_with("coordinating the cluster (term"))
        .count();
    assert!(terms >= 2, "{said}");
    let told = reply(client);
    assert!(
        told.starts_with("HTTP/1.1 503") && told.contains("coordinator_changed"),
        "{told}"
    );
    // And it serves.
    a.wait_health(200, Duration::from_secs(30));
    let answered = reply(a.ask("What is 1 + 2?"));
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[test]
fn a_request_queued_at_a_coordinator_that_loses_the_lease_is_told_to_ask_again() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team());
    // One run at a time: a second request waits in the queue.
    let a = Server::start_with(
        dir.path(),
        "a",
        &spec,
        &nats,
        TTL,
        &["--max-concurrency", "1"],
    );
    a.wait_health(200, Duration::from_secs(60));
    let b = Server::start(dir.path(), "b", &spec, &nats);
    b.wait_health(503, Duration::from_secs(60));
    let _running = a.ask("What is 40 + 2?");
    let _run = wait_for_run(&journal, 6);
    let mut queued = a.ask("What is 1 + 2?");
    std::thread::sleep(Duration::from_millis(300));
    signal(a.child(), "STOP");
    b.wait_health(200, Duration::from_secs(30));
    signal(a.child(), "CONT");
    // The queued request never ran: its client is told so, with a 503 it
    // may retry, not a 504 blaming a deadline ten minutes away.
    let mut reply = String::new();
    queued
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = queued.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("coordinator_changed"), "{reply}");
    assert!(reply.contains("it never ran"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );
}

/// `run`'s records once it has at least `n`.
fn wait_for_records_of(journal: &JetStreamJournal, run: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !journal.read(run).is_ok_and(|log| log.records.len() >= n) {
        assert!(Instant::now() < deadline, "run {run} never had {n} records");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_coordinator_takes_over_the_run_of_a_killed_run_process() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team());
    let a = Server::start(dir.path(), "a", &spec, &nats);
    a.wait_health(200, Duration::from_secs(60));
    // A `run --cluster` process that lives: the coordinator leaves its
    // run alone, and it leaves the registry when it ends.
    let out = command(
        &[
            "run",
            &spec,
            "What is 1 + 1?",
            "--gold",
            "2",
            "--run-id",
            "own1",
        ],
        &dir.path().join("one"),
        &nats.env(),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lived = journal.read("own1").unwrap();
    assert!(lived.ended().is_some());
    assert!(
        !lived
            .records
            .iter()
            .any(|r| matches!(r.entry, Entry::Resumed { .. })),
        "the coordinator took over a live process's run"
    );
    assert_eq!(
        cluster_status(dir.path(), &nats)["runs"],
        serde_json::json!([])
    );
    // One killed mid-run: the coordinator resumes its run once its beat
    // has expired.
    let mut child = command(
        &[
            "run",
            &spec,
            "What is 40 + 2?",
            "--gold",
            "42",
            "--run-id",
            "own2",
        ],
        &dir.path().join("two"),
        &nats.env(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_records_of(&journal, "own2", 6);
    assert_eq!(
        cluster_status(dir.path(), &nats)["runs"],
        serde_json::json!([["own2", 0]]),
        "registered as its owner's (term 0)"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let before = journal.read("own2").unwrap();
    assert!(before.ended().is_none(), "killed before its end");
    let log = wait_for_end(&journal, "own2", &[&a]);
    assert_complete(&log, "What is 40 + 2?");
    assert_eq!(log.records[..before.records.len()], before.records[..]);
    let resumptions = log
        .records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Resumed { .. }))
        .count();
    assert_eq!(resumptions, 1, "resumed once, by the coordinator");
    assert!(
        a.stderr().contains("taking over run own2 of the process"),
        "{}",
        a.stderr()
    );
    assert_eq!(log.ended().unwrap().stop.to_string(), "decided");
}

#[test]
fn requests_queued_at_a_coordinator_deposed_by_a_nats_restart_are_told_to_ask_again() {
    // The only server, one run at a time, so that the next requests wait
    // in its queue. The NATS server is down past the lease's deadline: the
    // coordinator is deposed, and takes the lease again in a later term
    // once the server is back. Each queued request is told that the term
    // which admitted it ended (503 coordinator_changed, "it never ran"),
    // never a 504 that blames a deadline ten minutes away. (Under load a
    // queued request can end only after the server leads again, which
    // once made it a 504; `conclave bench chaos --seed 0 --lease-ttl 2s`
    // shows that order, this test the contract.)
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team());
    let a = Server::start_with(
        dir.path(),
        "a",
        &spec,
        &nats,
        "2s",
        &["--max-concurrency", "1"],
    );
    a.wait_health(200, Duration::from_secs(60));
    let running = a.ask("What is 40 + 2?");
    let _run = wait_for_run(&journal, 6);
    let queued: Vec<_> = (0..4)
        .map(|i| a.ask(&format!("What is {i} + 2?")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    nats.kill();
    std::thread::sleep(Duration::from_millis(2500));
    nats.spawn();
    for q in queued {
        let told = reply(q);
        assert!(
            told.starts_with("HTTP/1.1 503")
                && told.contains("coordinator_changed")
                && told.contains("it never ran"),
            "{told}"
        );
    }
    let told = reply(running);
    assert!(
        told.starts_with("HTTP/1.1 503") && told.contains("coordinator_changed"),
        "{told}"
    );
    a.wait_health(200, Duration::from_secs(30));
}
