//! Cluster workers (`conclave worker`) as separate OS processes against a
//! real nats-server: the coordinator (`serve --cluster`) hands replicas to
//! them through the work queue; a replica longer than the ack wait is kept
//! by progress acks; a worker killed mid-replica has its work redelivered
//! to another; a worker stopped past its ack wait and then continued has
//! its late result ignored, never counted twice; the NATS server
//! restarting mid-job loses no replica and counts none twice. Each test
//! reads the
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
pub(crate) fn team(replicas: u32) -> String {
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
pub(crate) const ACK_WAIT: &str = "1s";

/// A `conclave worker` process, its standard error in a file.
pub(crate) struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    pub(crate) fn start(dir: &Path, name: &str, spec: &str, nats: &Nats) -> Worker {
        Worker::start_inflight(dir, name, spec, nats, 1)
    }

    /// A worker running up to `inflight` replicas at once.
    pub(crate) fn start_inflight(
        dir: &Path,
        name: &str,
        spec: &str,
        nats: &Nats,
        inflight: u32,
    ) -> Worker {
        Worker::start_with(dir, name, spec, nats, inflight, ACK_WAIT)
    }

    /// ... and creating the team's work queue with `ack_wait`.
    fn start_with(
        dir: &Path,
        name: &str,
        spec: &str,
        nats: &Nats,
        inflight: u32,
        ack_wait: &str,
    ) -> Worker {
        Worker::start_args(dir, name, spec, nats, inflight, ack_wait, &[])
    }

    /// ... with `extra` arguments.
    pub(crate) fn start_args(
        dir: &Path,
        name: &str,
        spec: &str,
        nats: &Nats,
        inflight: u32,
        ack_wait: &str,
        extra: &[&str],
    ) -> Worker {
        let inflight = inflight.to_string();
        let log = dir.join(format!("{name}.log"));
        let child = command(
            &[
                "worker",
                spec,
                "--ack-wait",
                ack_wait,
                "--max-inflight",
                &inflight,
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
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

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its id in the journal and in `conclave cluster`: `host/pid`.
    fn id_suffix(&self) -> String {
        format!("/{}", self.child.as_ref().unwrap().id())
    }

    pub(crate) fn wait_for(&self, line: &str) {
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

    pub(crate) fn child(&self) -> &Child {
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
pub(crate) fn worked(log: &RunLog) -> Vec<(u32, String, u32)> {
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
pub(crate) fn ballots(log: &RunLog) -> Vec<u32> {
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
pub(crate) fn ask(server: &Server, question: &str) -> std::net::TcpStream {
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
pub(crate) fn answer(mut s: std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

pub(crate) fn coordinator(dir: &Path, spec: &str, nats: &Nats) -> Server {
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

#[test]
fn a_nats_server_restart_mid_job_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), &team(3));
    // A lease long enough to outlive the restart: this test is about the
    // work queue, not the election.
    let server = Server::start_with_ttl(dir.path(), "coordinator", &spec, &nats, "20s");
    server.wait_health(200, Duration::from_secs(60));
    let worker = Worker::start_inflight(dir.path(), "w", &spec, &nats, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    worker.wait_for("took run");
    nats.kill();
    std::thread::sleep(Duration::from_millis(500));
    nats.spawn();
    let reply = answer(asked);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}\n---\n{}",
        server.stderr(),
        worker.stderr()
    );
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    assert!(
        matches!(
            &log.ended().unwrap().stop,
            conclave::team::consensus::StopReason::Decided
        ),
        "{:?}",
        log.ended()
    );
    // Every ballot is one replica's, counted once, whether its replica ran
    // on the worker (once) or in the coordinator while the worker could
    // not be reached.
    let b = ballots(&log);
    let mut unique = b.clone();
    unique.dedup();
    assert_eq!(b, unique, "a replica counted twice");
    let mut ran: Vec<u32> = worked(&log).iter().map(|w| w.0).collect();
    ran.sort();
    let mut once = ran.clone();
    once.dedup();
    assert_eq!(ran, once, "a replica's result taken twice");
}

#[test]
fn a_replica_straggling_on_a_stalled_worker_is_hedged_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    // Replicas are hedged past the median of the workers' round trips,
    // known after one.
    let spec = team_file(
        dir.path(),
        &team(1).replace(
            "[[node]]",
            "[team.consensus]\nhedge = { enabled = true, quantile = 0.5, min_samples = 1, max_extra = 1 }\n\n[[node]]",
        ),
    );
    let server = coordinator(dir.path(), &spec, &nats);
    // An ack wait far longer than the run: what rescues the replica below
    // is the hedge, not a redelivery.
    let a = Worker::start_with(dir.path(), "a", &spec, &nats, 1, "60s");
    let b = Worker::start_with(dir.path(), "b", &spec, &nats, 1, "60s");
    std::thread::sleep(Duration::from_millis(1500));
    let first = answer(ask(&server, "What is 1 + 2?"));
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let took = |w: &Worker| w.stderr().matches("took run").count();
    let before = (took(&a), took(&b));
    let asked = ask(&server, "What is 40 + 2?");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Whichever worker takes the second run's replica is stopped.
    let stalled = loop {
        if took(&a) > before.0 {
            break &a;
        }
        if took(&b) > before.1 {
            break &b;
        }
        assert!(Instant::now() < deadline, "{}\n{}", a.stderr(), b.stderr());
        std::thread::sleep(Duration::from_millis(10));
    };
    signal(stalled.child(), "STOP");
    let other = if std::ptr::eq(stalled, &a) { &b } else { &a };
    let reply = answer(asked);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let runs = journal.runs().unwrap();
    let run = runs
        .iter()
        .find(|r| r.question == "What is 40 + 2?")
        .expect("the second run")
        .run
        .clone();
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    assert!(
        log.records.iter().any(|r| matches!(
            &r.entry,
            Entry::Event {
                event: Event::ReplicaHedged {
                    replica: 0,
                    copy: 1,
                    ..
                }
            }
        )),
        "the straggler was hedged"
    );
    let worked = worked(&log);
    assert_eq!(worked.len(), 1, "{worked:?}");
    assert_eq!(worked[0].0, 1, "the copy's result counts");
    assert!(worked[0].1.ends_with(&other.id_suffix()), "{worked:?}");
    assert_eq!(worked[0].2, 1, "a first delivery, not a redelivery");
    assert_eq!(ballots(&log), vec![1]);
}

#[test]
fn a_killed_coordinators_job_is_finished_on_the_workers_by_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(3));
    let mut a = coordinator(dir.path(), &spec, &nats);
    let b = Server::start(dir.path(), "standby", &spec, &nats);
    b.wait_health(503, Duration::from_secs(60));
    let worker = Worker::start_inflight(dir.path(), "w", &spec, &nats, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let _client = ask(&a, "What is 40 + 2?");
    worker.wait_for("took run");
    let run = wait_for_run(&journal, 1);
    a.kill();
    b.wait_health(200, Duration::from_secs(30));
    let log = wait_for_end(&journal, &run, &[&b]);
    assert_complete(&log, "What is 40 + 2?");
    let resumed_at = log
        .records
        .iter()
        .position(|r| matches!(r.entry, Entry::Resumed { .. }))
        .expect("resumed by the successor");
    // Under the successor, the replicas ran on the worker again; each
    // ballot is one replica's, counted once.
    let after = RunLog {
        records: log.records[resumed_at..].to_vec(),
        ..log.clone()
    };
    let ran: Vec<u32> = worked(&after).iter().map(|w| w.0).collect();
    assert!(
        !ran.is_empty(),
        "the successor's replicas ran on the worker"
    );
    let b_ballots = ballots(&after);
    let mut unique = b_ballots.clone();
    unique.dedup();
    assert_eq!(b_ballots, unique);
    // The replicas the dead coordinator had handed out were finished and
    // then dropped: nobody was left to take their results.
    worker.wait_for("the coordinator that asked for it is gone");
}

#[test]
fn work_given_up_after_its_last_delivery_fails_its_replica_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(1));
    let server = coordinator(dir.path(), &spec, &nats);
    // One delivery only: a worker that dies with the work loses it.
    let mut a = Worker::start_args(
        dir.path(),
        "a",
        &spec,
        &nats,
        1,
        ACK_WAIT,
        &["--max-deliver", "1"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    a.wait_for("took run");
    let mut child = a.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _reply = answer(asked);
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    let failures: Vec<&str> = log
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Event {
                event: Event::PluginFailure { what, .. },
            } => Some(what.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        failures.first().is_some_and(
            |w| w.starts_with("replica 0:") && w.contains("given up after 1 deliveries")
        ),
        "{failures:?}"
    );
    // The task redrew the replica (once, its one retry); nothing from the
    // dead worker was counted.
    assert!(worked(&log).is_empty(), "{:?}", worked(&log));
    assert!(
        log.records.iter().any(|r| matches!(
            &r.entry,
            Entry::Event {
                event: Event::Retry { replica: 1, .. }
            }
        )),
        "the replica was drawn again"
    );
    // Its redraw found no live worker once the dead one's heartbeat had
    // expired: the task fails, saying why, rather than waiting forever.
    assert!(
        failures
            .get(1)
            .is_some_and(|w| w.contains("no live worker serves team remote")),
        "{failures:?}"
    );
    let stop = &log.ended().expect("the run ended").stop;
    assert!(
        matches!(stop, conclave::team::consensus::StopReason::Failed(w) if w.contains("all 2 replicas failed")),
        "{stop:?}"
    );
}
