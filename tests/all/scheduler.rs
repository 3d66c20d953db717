//! Jobs on the scheduler: independent tasks isolated from a failing one,
//! budgets of tokens and wall time for a job and a task, cancellation, and
//! faulty nodes under a whole job — each ending with one honest stop reason.

use std::time::Duration;

use conclave::team::consensus::StopReason;
use conclave::team::events::Event;
use conclave_tests::{prepare_team, run_job, Recorder};

const NODES: &str = r#"
[[node]]
name = "good"
backend = "sim"
accuracy = 0.9
seed = 1

[[node]]
name = "dead"
backend = "sim"
error_rate = 1.0
"#;

#[tokio::test]
async fn a_failing_task_does_not_stop_its_independent_siblings() {
    let text = format!(
        r#"[team]
answer = "after"
{NODES}
[[plugin]]
name = "on-dead"
builtin = "solver"
grants = ["llm"]
config = {{ sampling = {{ node = "dead" }} }}

[[task]]
id = "doomed"
role = "on-dead"
voter = "majority"
replicas = 2

[[task]]
id = "fine"
role = "solver"
voter = "majority"
replicas = 3
answer_kind = "number"

[[task]]
id = "after"
role = "solver"
voter = "majority"
answer_kind = "number"
depends_on = ["fine"]
"#
    );
    let (_dir, team) = prepare_team(&text).await;
    let (r, _) = run_job(&team, "iso-1", "What is 40 + 2?", Some("42")).await;
    let stop = |id: &str| {
        r.tasks
            .iter()
            .find(|(t, _)| t == id)
            .unwrap()
            .1
            .stop
            .clone()
    };
    assert!(matches!(stop("doomed"), StopReason::Failed(w) if w.contains("dead")));
    assert_eq!(stop("fine"), StopReason::Decided);
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
}

const ENDLESS: &str = r#"
[[node]]
name = "sim"
backend = "sim"
accuracy = 0.5
{latency}

[[plugin]]
name = "quorum"
config = { share = 1.0, min_votes = 50, max_samples = 50 }

[[task]]
id = "answer"
role = "solver"
voter = "quorum"
answer_kind = "number"
replicas = 2
max_samples = 50
"#;

#[tokio::test]
async fn a_job_token_budget_stops_sampling_with_its_reason() {
    let text = format!(
        "[team]\nmax_tokens = 500\n{}",
        ENDLESS.replace("{latency}", "")
    );
    let (_dir, team) = prepare_team(&text).await;
    let (r, _) = run_job(&team, "tok-1", "What is 6 * 7?", Some("42")).await;
    assert!(
        matches!(&r.stop, StopReason::BudgetExhausted(w) if w.starts_with("job: token budget of 500 spent")),
        "{:?}",
        r.stop
    );
    let t = &r.tasks[0].1;
    // A sample costs about 80 tokens: the meter stops short of 500 once
    // it knows that, rather than overshooting by a whole batch.
    assert!(t.tokens > 500 - 2 * 120 && t.tokens <= 500, "{}", t.tokens);
    // Samples are drawn only while the budget has room for them.
    assert!(t.samples <= 8 && t.failures.is_empty(), "{t:?}");
}

#[tokio::test(start_paused = true)]
async fn a_task_wall_budget_cancels_its_calls_in_flight() {
    let text = ENDLESS.replace(
        "{latency}",
        "latency = { kind = \"constant\", value = \"10s\" }",
    ) + "max_wall = \"3s\"\n";
    let (_dir, team) = prepare_team(&text).await;
    let start = tokio::time::Instant::now();
    let (r, _) = run_job(&team, "wall-1", "What is 6 * 7?", Some("42")).await;
    assert_eq!(
        r.stop,
        StopReason::BudgetExhausted("task answer: wall-time budget of 3s spent".into())
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_job_wall_budget_stops_every_unfinished_task() {
    let text = format!(
        "[team]\nmax_wall = \"15s\"\n{}\n[[task]]\nid = \"next\"\nrole = \"solver\"\nvoter = \"majority\"\ndepends_on = [\"answer\"]\n",
        ENDLESS.replace("{latency}", "latency = { kind = \"constant\", value = \"10s\" }")
    );
    let (_dir, team) = prepare_team(&text).await;
    let (r, _) = run_job(&team, "wall-2", "What is 6 * 7?", Some("42")).await;
    let why = StopReason::BudgetExhausted("job: wall-time budget of 15s spent".into());
    assert_eq!(r.stop, why);
    assert_eq!(r.tasks[0].1.stop, why);
    assert_eq!(r.tasks[1].1.samples, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_job_stops_it_and_its_model_calls() {
    let text = ENDLESS.replace(
        "{latency}",
        "latency = { kind = \"constant\", value = \"1h\" }",
    );
    let (_dir, team) = prepare_team(&text).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.cancel();
    });
    let rec = Recorder::default();
    let start = tokio::time::Instant::now();
    let r = team
        .run(
            "cancel-1",
            "What is 6 * 7?",
            Some("42"),
            rec.observer(),
            cancel,
        )
        .await;
    assert_eq!(
        r.stop,
        StopReason::Cancelled("the job was cancelled".into())
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // No model call completed: the two in flight were dropped.
    let calls = rec
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ModelCall { .. }))
        .count();
    assert_eq!((calls, r.tokens_out), (0, 0));
}

// Virtual time: hangs and deadlines cost no real time.
#[tokio::test(start_paused = true)]
async fn with_thirty_percent_of_calls_failing_every_job_ends_honestly() {
    let text = r#"
[router]
deadline = "2s"
retries = 2
backoff = "10ms"

[[node]]
name = "a"
backend = "sim"
accuracy = 0.9
error_rate = 0.15
hang_rate = 0.15

[[node]]
name = "b"
backend = "sim"
accuracy = 0.9
error_rate = 0.15
hang_rate = 0.15

[[plugin]]
name = "quorum"
config = { share = 0.6, min_votes = 2, max_samples = 9 }

[[task]]
id = "first"
role = "solver"
replicas = 5
max_samples = 9
voter = "quorum"
answer_kind = "number"
max_wall = "30s"

[[task]]
id = "second"
role = "solver"
replicas = 3
max_samples = 9
voter = "quorum"
answer_kind = "number"
depends_on = ["first"]
max_wall = "30s"
"#;
    let (_dir, team) = prepare_team(text).await;
    let (mut right, mut wrong) = (0, 0);
    let mut stops = Vec::new();
    for i in 0..10 {
        let gold = (40 + i).to_string();
        let q = format!("What is {i} + 40?");
        let (r, _) = tokio::time::timeout(
            Duration::from_secs(3600),
            run_job(&team, &format!("faults-{i}"), &q, Some(&gold)),
        )
        .await
        .expect("nothing hangs");
        stops.push(format!("{:?} {:?}", r.stop, r.answer));
        match &r.stop {
            StopReason::Decided if r.answer.as_deref() == Some(gold.as_str()) => right += 1,
            StopReason::Decided => wrong += 1,
            StopReason::Cancelled(w) => panic!("nobody cancelled: {w}"),
            StopReason::NoConsensus(w) | StopReason::BudgetExhausted(w) | StopReason::Failed(w) => {
                assert!(!w.is_empty())
            }
        }
    }
    assert!(wrong <= 1, "a wrong consensus {wrong} times");
    assert!(
        right >= 5,
        "the right consensus despite faults: {right}/10: {stops:#?}"
    );
}
