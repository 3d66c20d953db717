//! Jobs from team spec files: tasks in dependency order with the blackboard
//! between them, the example specs, and a stop reason for every job.

use conclave::team::consensus::StopReason;
use conclave::team::events::Event;
use conclave_tests::{prepare_file, prepare_team as prepare, run_job, workspace};

const TWO_TASKS: &str = r#"
[team]
name = "two steps"

[[node]]
name = "a"
backend = "sim"
accuracy = 0.9
seed = 1

[[node]]
name = "b"
backend = "sim"
accuracy = 0.9
seed = 2

[[plugin]]
name = "solver"
grants = ["llm", "blackboard"]
config = { use_blackboard = true }

[[task]]
id = "first"
role = "solver"
replicas = 5
verifiers = ["answer-format"]
voter = "majority"
answer_kind = "number"

[[task]]
id = "second"
role = "solver"
prompt = "Check the earlier result for: {question}"
replicas = 3
voter = "quorum"
answer_kind = "number"
max_samples = 9
depends_on = ["first"]
"#;

#[tokio::test]
async fn tasks_run_in_order_and_the_job_reports_its_spend() {
    let (_dir, team) = prepare(TWO_TASKS).await;
    let (r, events) = run_job(&team, "run-job-1", "What is 21 * 2?", Some("42")).await;
    let ended: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::TaskEnded { task, .. } => Some(task.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ended, ["first", "second"]);
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    assert_eq!(r.answer.as_deref(), Some("42"));
    assert!(r.simulated);
    // Early decisions: a majority of 5 can be settled by 3 ballots and of 3
    // by 2; the replicas then cancelled are not samples.
    assert!(r.samples >= 3 + 2 && r.samples <= 5 + 9, "{}", r.samples);
    assert!(
        r.tokens_in > 0 && r.tokens_out >= 40 * r.samples as u64 - 40 * 2,
        "{r:?}"
    );
    assert!((3..=5).contains(&r.tasks[0].1.samples));
}

#[tokio::test]
async fn a_task_without_a_decision_stops_its_dependents_with_its_reason() {
    let text = TWO_TASKS
        .replace("accuracy = 0.9\nseed = 1", "error_rate = 1.0")
        .replace("accuracy = 0.9\nseed = 2", "error_rate = 1.0");
    let (_dir, team) = prepare(&text).await;
    let (r, _) = run_job(&team, "run-job-2", "What is 21 * 2?", Some("42")).await;
    assert!(
        matches!(&r.tasks[0].1.stop, StopReason::Failed(w) if w.contains("replicas failed")),
        "{:?}",
        r.tasks[0].1.stop
    );
    assert!(
        matches!(&r.stop, StopReason::Failed(w) if w.starts_with("dependency first did not decide: all")),
        "{:?}",
        r.stop
    );
    assert_eq!(r.tasks[1].1.samples, 0, "the dependent task did not run");
    assert_eq!(r.answer, None);
}

#[tokio::test]
async fn a_custom_plugin_path_is_loaded_and_its_kind_checked() {
    let fixture = workspace().join("target/fixtures/swap-v1.wasm");
    let text = TWO_TASKS
        .replace(
            "[[plugin]]\nname = \"solver\"",
            &format!(
                "[[plugin]]\nname = \"myvote\"\npath = {:?}\nsynthesises = true\n\n[[plugin]]\nname = \"solver\"",
                fixture.display().to_string()
            ),
        )
        .replace("voter = \"quorum\"", "voter = \"myvote\"");
    let (_dir, team) = prepare(&text).await;
    let (r, _) = run_job(&team, "run-job-3", "What is 21 * 2?", Some("42")).await;
    assert_eq!(r.answer.as_deref(), Some("1.0.0:3"));
}

#[tokio::test]
async fn the_self_consistency_example_runs_on_the_embedded_model() {
    let path = workspace().join("examples/self-consistency.toml");
    let team = prepare_file(&path).await;
    let (r, _) = run_job(&team, "run-example", "What is 12 + 30?", None).await;
    assert!(!r.simulated);
    assert_eq!(r.samples, 5);
    match &r.stop {
        StopReason::Decided => assert!(r.support >= 1 && r.support <= 5 && r.answer.is_some()),
        StopReason::NoConsensus(w) => assert!(!w.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(r.tokens_out > 0);
}
