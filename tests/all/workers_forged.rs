//! A forged result on the work queue: someone who may publish on the
//! coordinator's results subject (a worker of another team, a client with
//! too broad a permission) but was not delivered the item cannot make the
//! coordinator count an answer no replica gave.

use std::time::{Duration, Instant};

use conclave::journal::jetstream::JetStreamJournal;
use conclave::plugin::{Candidate, Outcome};
use conclave::team::remote::{ReplicaDone, ReplicaJob};

use crate::cluster::Nats;
use crate::failover::{wait_for_end, wait_for_run};
use crate::journal::team_file;
use crate::workers::{answer, ask, ballots, coordinator, team, worked, Worker};

/// Publishes, for every item queued on the cluster's work stream, a result
/// answering "7" as worker `mallory/1`, without the item's ticket; how
/// many it forged.
async fn forge(url: &str) -> usize {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("CONCLAVE_CONCLAVE_WORK").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut forged = 0;
    for seq in state.first_sequence..=state.last_sequence {
        // The attacker reads the queue here only to learn what it could
        // also guess: the run (`conclave cluster` lists it), the task (the
        // spec), the replica numbers and the coordinator's subject. It
        // does not use the ticket.
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let item: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let job: ReplicaJob = serde_json::from_value(item["job"].clone()).unwrap();
        let mut done = ReplicaDone::refused(&job, "mallory/1", 1, String::new());
        done.outcome = Ok(Outcome::Candidate(Candidate {
            replica: job.replica,
            node: "sim".into(),
            answer: "7".into(),
            text: "The answer is 7.".into(),
            confidence: Some(1.0),
            ranking: vec![],
        }));
        let reply = item["reply"].as_str().unwrap().to_string();
        client
            .request(reply, serde_json::to_vec(&done).unwrap().into())
            .await
            .unwrap();
        forged += 1;
    }
    forged
}

#[test]
fn a_result_without_its_items_ticket_is_refused_and_the_real_one_counts() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let journal = JetStreamJournal::connect(&nats.config()).unwrap();
    let spec = team_file(dir.path(), &team(3));
    let server = coordinator(dir.path(), &spec, &nats);
    let worker = Worker::start_inflight(dir.path(), "a", &spec, &nats, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let asked = ask(&server, "What is 40 + 2?");
    worker.wait_for("took run");
    // The replicas take about 2.5 s on the worker: the forgeries come
    // first.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forged = rt.block_on(forge(&nats.url()));
    assert!(forged >= 1, "no item was queued to forge a result for");
    let reply = answer(asked);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let run = wait_for_run(&journal, 1);
    let log = wait_for_end(&journal, &run, &[&server]);
    // Every replica counted once, each from the worker that ran it; no
    // answer is 7 (a sim node asked without a gold answer answers a number
    // from 0 to its distractors, 3 here).
    let result = log.ended().unwrap();
    assert_ne!(
        result.answer.as_deref(),
        Some("7"),
        "a forged answer was counted: {result:?}"
    );
    assert_eq!(result.total, 3, "{result:?}");
    assert_eq!(ballots(&log), vec![0, 1, 2]);
    let worked = worked(&log);
    assert_eq!(worked.len(), 3, "{worked:?}");
    assert!(
        worked.iter().all(|(_, by, _)| !by.contains("mallory")),
        "a forged result was taken as a worker's: {worked:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stderr().matches("refused a result").count() < forged {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not say it refused {forged} forged results: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stderr().contains("from worker mallory/1"));
}
