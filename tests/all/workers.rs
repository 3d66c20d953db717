//! Cluster workers (`conclave worker`) as separate OS processes against a
//! real nats-server: the coordinator (`serve --cluster`) hands replicas to
//! them through the work queue; a replica longer than the ack wait is kept
//! by progress acks; a worker killed mid-replica has its work redelivered
//! to another; a worker stopped past its ack wait and then continued has
//! its late result ignored, never counted twice. Each test reads the
//! journal: which worker ran each replica, on which delivery.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use conclave::journal::jetstream::JetStreamJournal;
use conclave::journal::{Entry, Journal, RunLog};
use conclave::team::events::Event;

use crate::cluster::{assert_complete, signal, Nats};
use crate::failover::{wait_for_end, wait_for_run, Server};
use crate::journal::{command, team_file};

/// One task of `replicas` replicas on a simulated node whose calls take
/// about 2.5 s: longer than the ack wait below.
fn team(replicas: u32) -> String {
    format!(
        r#"
[team]
name = "remote"

[[node]]
name = "sim"
backend = "sim"
accuracy = 1.0
seed = 5
latency = {{ kind = "lognormal", median = "2500ms", sigma = 0.05 }}

[[task]]
id = "answer"
role = "solver"
replicas = {replicas}
voter = "majority"
answer_kind = "number"
"#
    )
}

/// The work queue's ack wait in these tests.
const ACK_WAIT: &str = "1s";

/// A `conclave worker` process, its standard error in a file.
struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    fn start(dir: &Path, name: &str, spec: &str, nats: &Nats) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let child = command(
            &[
                "worker",
                spec,
                "--ack-wait",
                ACK_WAIT,
                "--max-inflight",
                "1",
            ],
            &dir.join(name),
            &nats.env(),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
        let w = Worker {
            child: Some(child),
            log,
        };
        w.wait_for("serving teams remote");
        w
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its id in the journal and in `conclave cluster`: `host/pid`.
    fn id_suffix(&self) -> String {
        format!("/{}", self.child.as_ref().unwrap().id())
    }

    fn wait_for(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stderr().contains(line) {
            assert!(
                Instant::now() < deadline,
                "the worker never said {line:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child(&self) -> &Child {
        self.child.as_ref().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Which worker ran each replica, on which delivery: (replica, worker,
/// delivery), in journal order.
fn worked(log: &RunLog) -> Vec<(u32, String, u32)> {
    log.records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Event {
                event:
                    Event::ReplicaWorked {
                        replica,
                        worker,
                        attempt,
                        ..
                    },
            } => Some((*replica, worker.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

/// Ballots counted, by replica.
fn ballots(log: &RunLog) -> Vec<u32> {
    let mut b: Vec<u32> = log
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Event {
                event: Event::Ballot { ballot, .. },
            } => Some(ballot.replica),
            _ => None,
        })
        .collect();
    b.sort();
    b
}

/// Sends a chat request, asking the server to close the connection after
/// its answer; read it with [`answer`].
fn ask(server: &Server, question: &str) -> std::net::TcpStream {
    use std::io::Write;
    let body = serde_json::json!({"messages": [{"role": "user", "content": question}]}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// The answer to a request sent with [`ask`].
fn answer(mut s: std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

fn coordinator(dir: &Path, spec: &str, nats: &Nats) -> Server {
    let server = Server::start(dir, "coordinator", spec, nats);
    server.wait_health(200, Duration::from_secs(60));
    server
}

#[test]
fn a_worker_runs_the_replicas_and_progress_acks_keep_a_long_one() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(3));
    let server = coordinator(dir.path(), &spec, &nats);
    let worker = Worker::start(dir.path(), "w1", &spec, &nats);
    // The coordinator sees the worker's heartbeat within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let reply = answer(ask(&server, "What is 40 + 2?"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    let worked = worked(&log);
    // The worker runs one replica at a time. Each ran on the worker, on
    // its first delivery, although its model call took longer than the ack
    // wait; each ballot is one of them.
    for (replica, by, attempt) in &worked {
        assert!(by.ends_with(&worker.id_suffix()), "{replica} ran on {by}");
        assert_eq!(*attempt, 1, "replica {replica} was redelivered");
    }
    let ran: Vec<u32> = worked.iter().map(|w| w.0).collect();
    assert_eq!(ballots(&log), ran);
    // The simulated node answers 0 or 1 (no gold answer over HTTP): when
    // the first two agree, the vote is decided without the third, which
    // is withdrawn from the worker.
    if ran == [0, 1] {
        assert!(
            log.records.iter().any(|r| matches!(
                &r.entry,
                Entry::Event {
                    event: Event::ReplicaCancelled { replica: 2, .. }
                }
            )),
            "the third replica was cancelled"
        );
        worker.wait_for("replica 2 (delivery 1): withdrawn by its coordinator");
    } else {
        assert_eq!(ran, vec![0, 1, 2], "{worked:?}");
    }
    // The model calls were the worker's, journaled by the coordinator.
    let calls = log
        .records
        .iter()
        .filter(|r| {
            matches!(
                &r.entry,
                Entry::Event {
                    event: Event::ModelCall { latency_ms, .. }
                } if *latency_ms > 1000.0
            )
        })
        .count();
    assert_eq!(calls, ran.len());
    assert!(
        !worker.stderr().contains("late"),
        "no delivery expired: {}",
        worker.stderr()
    );
    // `conclave cluster` lists the worker, with what it has done by its
    // next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = command(&["cluster", "--json"], &dir.path().join("c"), &nats.env())
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let workers = status["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{status}");
        assert_eq!(workers[0]["teams"][0], "remote");
        assert!(
            workers[0]["id"]
                .as_str()
                .unwrap()
                .ends_with(&worker.id_suffix()),
            "{status}"
        );
        if workers[0]["done"] == ran.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_workers_replica_is_redelivered_to_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(1));
    let server = coordinator(dir.path(), &spec, &nats);
    let mut a = Worker::start(dir.path(), "a", &spec, &nats);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    a.wait_for("took run");
    let killed = a.id_suffix();
    let mut child = a.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let b = Worker::start(dir.path(), "b", &spec, &nats);
    let reply = answer(asked);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    let worked = worked(&log);
    assert_eq!(worked.len(), 1, "{worked:?}");
    let (replica, by, attempt) = &worked[0];
    assert_eq!(*replica, 0);
    assert!(by.ends_with(&b.id_suffix()), "ran on {by}, not {killed}");
    assert!(*attempt >= 2, "delivery {attempt}: not a redelivery");
    assert_eq!(ballots(&log), vec![0]);
    assert!(b.stderr().contains("took run"), "{}", b.stderr());
}

#[test]
fn a_stalled_workers_late_result_is_ignored_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(1));
    let server = coordinator(dir.path(), &spec, &nats);
    let a = Worker::start(dir.path(), "a", &spec, &nats);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    a.wait_for("took run");
    signal(a.child(), "STOP");
    let b = Worker::start(dir.path(), "b", &spec, &nats);
    let reply = answer(asked);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let run = wait_for_run(&journal, 1);
    let before = wait_for_end(&journal, &run, &[&server]);
    // Continued, the stalled worker finishes its copy and sends it.
    signal(a.child(), "CONT");
    a.wait_for("done run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("ignored a result") {
        assert!(
            Instant::now() < deadline,
            "the coordinator never saw the late result: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.stderr().contains(
            &format!("from worker {}", worked(&before)[0].1)
                .replace(&b.id_suffix(), &a.id_suffix())
        ),
        "the ignored result is the stalled worker's: {}",
        server.stderr()
    );
    let after = journal.read(&run).unwrap();
    assert_eq!(after.records, before.records, "nothing was added");
    assert_complete(&after, "What is 40 + 2?");
    let worked = worked(&after);
    assert_eq!(worked.len(), 1, "{worked:?}");
    assert!(worked[0].1.ends_with(&b.id_suffix()), "{worked:?}");
    assert!(worked[0].2 >= 2, "{worked:?}");
    assert_eq!(ballots(&after), vec![0]);
}
