//! Workers under a coordinator that changes: what a deposed coordinator
//! queued is dropped by the workers; what another coordinator withdraws
//! does not drop this one's replicas; a coordinator deposed by a NATS
//! restart leads again and its workers finish the run. Separate OS
//! processes against a real nats-server, as in [`super::workers`].

use std::time::Duration;

use conclave::journal::jetstream::JetStreamJournal;

use crate::cluster::{assert_complete, signal, Nats};
use crate::failover::{wait_for_end, wait_for_run, Server};
use crate::journal::team_file;
use crate::workers::{answer, ask, coordinator, team, Worker};

#[test]
fn a_deposed_coordinators_queued_work_is_dropped_by_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(3));
    let a = coordinator(dir.path(), &spec, &nats);
    let b = Server::start(dir.path(), "standby", &spec, &nats);
    b.wait_health(503, Duration::from_secs(60));
    // One worker that takes one of the coordinator's three replicas; the
    // other two wait in the queue.
    let first = Worker::start(dir.path(), "first", &spec, &nats);
    std::thread::sleep(Duration::from_millis(1500));
    let _client = ask(&a, "What is 40 + 2?");
    first.wait_for("took run");
    // Both stop: the standby takes over (a later term) and finishes the
    // run; the old coordinator's items are still queued.
    signal(first.child(), "STOP");
    signal(a.child(), "STOP");
    b.wait_health(200, Duration::from_secs(30));
    let second = Worker::start(dir.path(), "second", &spec, &nats);
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&b]);
    assert_complete(&log, "What is 40 + 2?");
    // The new worker dropped what the deposed coordinator had queued,
    // without running it.
    second.wait_for("queued by a deposed coordinator (term");
    let dropped = second
        .stderr()
        .lines()
        .filter(|l| l.contains("queued by a deposed coordinator"))
        .count();
    assert!(dropped >= 2, "{}", second.stderr());
    signal(a.child(), "CONT");
}

#[test]
fn a_withdrawal_by_another_coordinator_does_not_drop_this_ones_replicas() {
    // What a deposed coordinator withdraws as it stops names the same
    // (run, task, replica) as its successor's redraws of the run it took
    // over: the worker must drop only the items of the coordinator that
    // withdrew them, or the successor's replicas are dropped unanswered and
    // its run never ends.
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    // The team waits for every ballot: an early decision would make its
    // own coordinator withdraw the last replica, which is not what this
    // test is about.
    let spec = team_file(
        dir.path(),
        &team(3).replace(
            "name = \"remote\"\n",
            "name = \"remote\"\nconsensus = { decide = \"all\" }\n",
        ),
    );
    let server = coordinator(dir.path(), &spec, &nats);
    let worker = Worker::start_inflight(dir.path(), "w", &spec, &nats, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    worker.wait_for("took run");
    let run = wait_for_run(&journal, 1);
    // Withdrawals of every replica number of the run, from another
    // coordinator's inbox and from one that names none (an older host).
    let url = nats.config().url;
    let cancel = format!("conclave.{}.cancel", nats.config().name);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        for replica in 0..6u32 {
            for reply in [
                Some(format!(
                    "conclave.{}.results.another-coordinator",
                    nats.config().name
                )),
                None,
            ] {
                let mut w = serde_json::json!({"run": run, "task": "answer", "replica": replica});
                if let Some(r) = reply {
                    w["reply"] = r.into();
                }
                client
                    .publish(cancel.clone(), serde_json::to_vec(&w).unwrap().into())
                    .await
                    .unwrap();
            }
        }
        client.flush().await.unwrap();
    });
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    let reply = answer(asked);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        !worker.stderr().contains("withdrawn by its coordinator"),
        "{}",
        worker.stderr()
    );
}

#[test]
fn a_coordinator_deposed_by_a_nats_restart_leads_again_and_its_workers_finish_the_run() {
    // The only coordinator loses its 2 s lease while the NATS server is
    // down and stops its run; it must lead again in a later term and draw
    // the run's replicas again, for the workers to run.
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), true);
    let spec = team_file(dir.path(), &team(3));
    let server = coordinator(dir.path(), &spec, &nats);
    let worker = Worker::start_inflight(dir.path(), "w", &spec, &nats, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    worker.wait_for("took run");
    nats.kill();
    std::thread::sleep(Duration::from_millis(2500));
    nats.spawn();
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    assert_complete(&log, "What is 40 + 2?");
    assert!(
        matches!(
            &log.ended().unwrap().stop,
            conclave::team::consensus::StopReason::Decided
        ),
        "{:?}\n{}\n---\n{}",
        log.ended(),
        server.stderr(),
        worker.stderr()
    );
    let said = server.stderr();
    assert!(
        said.contains("lost the coordinator lease of term")
            && said.contains(&format!("taking over run {run}")),
        "{said}"
    );
    // The worker ran the new term's replicas.
    assert!(
        worker.stderr().matches("done run").count() >= 2,
        "{}",
        worker.stderr()
    );
    let reply = answer(asked);
    assert!(
        reply.starts_with("HTTP/1.1 503") && reply.contains("coordinator_changed"),
        "{reply}"
    );
}
