//! Every example spec in `examples/` run end to end on its sim nodes: what
//! each pattern promises (rounds, messages, plans, pinned proposers, DAG
//! order) checked on the events and the result.

use conclave::team::consensus::StopReason;
use conclave::team::events::Event;
use conclave_tests::{prepare_file, prepare_team, run_job, workspace};

fn example(name: &str) -> std::path::PathBuf {
    workspace().join("examples").join(format!("{name}.toml"))
}

/// Position of the first event matching `f`.
fn at(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().position(f).expect("the event happened")
}

fn started(task: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::TaskStarted { task: t, .. } if t == task)
}

fn ended(task: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::TaskEnded { task: t, .. } if t == task)
}

fn questions(n: u32) -> impl Iterator<Item = (String, String)> {
    (0..n).map(|i| {
        (
            format!("What is {} + {}?", 20 + i, 22),
            (42 + i).to_string(),
        )
    })
}

#[tokio::test]
async fn adaptive_consistency_stops_early_and_is_mostly_right() {
    let team = prepare_file(&example("adaptive-consistency")).await;
    let (mut right, mut samples) = (0, 0);
    for (i, (q, gold)) in questions(8).enumerate() {
        let (r, _) = run_job(&team, &format!("ac-{i}"), &q, Some(&gold)).await;
        assert_eq!(r.stop, StopReason::Decided, "{r:?}");
        assert!((2..=10).contains(&r.samples), "{}", r.samples);
        right += (r.answer.as_deref() == Some(gold.as_str())) as u32;
        samples += r.samples;
    }
    assert!(right >= 5, "{right}/8 right");
    assert!(
        samples < 8 * 10,
        "adaptive used {samples} samples for 8 items"
    );
}

#[tokio::test]
async fn debate_rounds_exchange_answers_over_the_bus() {
    let team = prepare_file(&example("debate")).await;
    let (r, events) = run_job(&team, "debate-1", "What is 17 * 3?", Some("51")).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    let t = &r.tasks[0].1;
    // The last round's vote may be settled by 2 agreeing ballots of 3 (an
    // early decision; the replica then cancelled is not a sample).
    assert_eq!(t.rounds, 3);
    assert!((8..=9).contains(&t.samples), "{}", t.samples);
    // Two exchanges, each replica told the other two's answers.
    let answers = events
        .iter()
        .filter(|e| matches!(e, Event::Message { kind, .. } if kind == "answer"))
        .count();
    assert_eq!(answers, 2 * 3 * 2);
    assert_eq!(r.messages, 12);
    // No message reaches the replica that sent it.
    for e in &events {
        if let Event::Message { from, to, .. } = e {
            assert_ne!(from, to);
        }
    }
}

#[tokio::test]
async fn generate_and_criticise_revises_until_an_answer_passes() {
    let team = prepare_file(&example("generate-and-criticise")).await;
    let mut revised = 0;
    for (i, (q, gold)) in questions(10).enumerate() {
        let (r, events) = run_job(&team, &format!("gc-{i}"), &q, Some(&gold)).await;
        let t = &r.tasks[0].1;
        match &r.stop {
            // The arithmetic check lets only the right answer through.
            StopReason::Decided => assert_eq!(r.answer.as_deref(), Some(gold.as_str())),
            StopReason::BudgetExhausted(w) => assert!(
                w.contains("round budget of 4") || w.contains("sample budget of 4"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        if t.rounds > 1 {
            revised += 1;
            assert!(events.iter().any(
                |e| matches!(e, Event::Vote { decision, .. } if decision.starts_with("revise: Every answer failed"))
            ));
        }
    }
    assert!(revised >= 1, "at 50% accuracy some first answers fail");
}

#[tokio::test]
async fn mixture_of_agents_pins_proposers_and_aggregates_after_them() {
    let team = prepare_file(&example("mixture-of-agents")).await;
    let (r, events) = run_job(&team, "moa-1", "What is 9 * 8?", Some("72")).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    for (id, node) in [
        ("propose-a", "sim-a"),
        ("propose-b", "sim-b"),
        ("propose-c", "sim-c"),
    ] {
        let t = &r.tasks.iter().find(|(t, _)| t == id).unwrap().1;
        assert_eq!(t.nodes, [node], "{id}");
        assert!(at(&events, ended(id)) < at(&events, started("aggregate")));
    }
    // The three proposers ran side by side.
    let last_start = ["propose-a", "propose-b", "propose-c"]
        .iter()
        .map(|id| at(&events, started(id)))
        .max();
    let first_end = ["propose-a", "propose-b", "propose-c"]
        .iter()
        .map(|id| at(&events, ended(id)))
        .min();
    assert!(last_start < first_end, "{events:?}");
    assert_eq!(r.tasks.last().unwrap().0, "aggregate");
}

#[tokio::test]
async fn decompose_solve_synthesise_schedules_the_plan() {
    let team = prepare_file(&example("decompose-solve-synthesise")).await;
    let (r, events) = run_job(&team, "dss-1", "What is (3 + 4) * (5 + 6)?", Some("77")).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    // A simulated planner gives no steps: the plan is the question itself.
    let ids: Vec<&str> = r.tasks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(ids, ["plan", "synthesise", "plan.s1"]);
    assert!(at(&events, ended("plan.s1")) < at(&events, started("synthesise")));
    assert!(r.tasks[0].1.plan.is_some());
}

#[tokio::test]
async fn a_fixed_plan_runs_its_subtasks_as_a_dag() {
    let text = std::fs::read_to_string(example("decompose-solve-synthesise"))
        .unwrap()
        .replace(
            "config = { max_subtasks = 4 }",
            r#"config = { plan = [
  { id = "left", prompt = "What is 3 + 4?" },
  { id = "right", prompt = "What is 5 + 6?" },
  { id = "product", prompt = "Multiply the two results.", depends_on = ["left", "right"] },
] }"#,
        );
    let (_dir, team) = prepare_team(&text).await;
    let (r, events) = run_job(&team, "dss-2", "What is (3 + 4) * (5 + 6)?", Some("77")).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    let ids: Vec<&str> = r.tasks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        ids,
        [
            "plan",
            "synthesise",
            "plan.left",
            "plan.right",
            "plan.product"
        ]
    );
    // left and right side by side; product after both; synthesis last.
    assert!(at(&events, started("plan.right")) < at(&events, ended("plan.left")));
    assert!(at(&events, ended("plan.left")) < at(&events, started("plan.product")));
    assert!(at(&events, ended("plan.right")) < at(&events, started("plan.product")));
    assert!(at(&events, ended("plan.product")) < at(&events, started("synthesise")));
    let planned = events.iter().find_map(|e| match e {
        Event::Planned { subtasks, .. } => Some(subtasks.clone()),
        _ => None,
    });
    assert_eq!(planned.unwrap(), ["left", "right", "product"]);
    for (_, t) in &r.tasks[2..] {
        // 3 replicas; a majority of 3 may be settled by 2 agreeing ballots,
        // and the replica then cancelled is not a sample.
        assert!(
            (2..=3).contains(&t.samples),
            "subtasks take the spec's subtask settings: {}",
            t.samples
        );
    }
}

#[tokio::test]
async fn the_paper_dag_runs_every_task_after_its_dependencies() {
    let path = example("paper-dag");
    let team = prepare_file(&path).await;
    let (r, events) = run_job(&team, "dag-1", "Implement the library.", None).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    assert_eq!(r.tasks.len(), 20);
    assert!(r.tasks.iter().all(|(_, t)| t.stop == StopReason::Decided));
    let dag = team.spec().dag();
    for (i, t) in dag.tasks.iter().enumerate() {
        for &d in &dag.deps[i] {
            assert!(
                at(&events, ended(&dag.tasks[d].id)) < at(&events, started(&t.id)),
                "{} started before its dependency {}",
                t.id,
                dag.tasks[d].id
            );
        }
    }
    // The independent tasks did not wait for the chain's end.
    let chain_end = at(&events, ended("task-16"));
    assert!(at(&events, started("task-17")) < chain_end);
    let shape = dag.shape(5);
    assert_eq!((shape.tasks, shape.critical_path), (20, 16));
    assert!((shape.amdahl[4].1 - 1.0 / (0.8 + 0.2 / 5.0)).abs() < 1e-9);
}
