//! One task to a decision on sim nodes with the built-in plugins: majority
//! over k replicas, adaptive sampling with `quorum`, faulty nodes, and a
//! stop reason for every task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conclave::model::router::NodeHandle;
use conclave::model::{NodeSpec, Router, RouterConfig};
use conclave::plugin::AnswerKind;
use conclave::team::consensus::{PluginUse, StopReason, TaskSpec, Team};
use conclave::{Grants, PluginRuntime};
use conclave_tests::{plugin, runtime};

fn sim(name: &str, extra: &str) -> NodeHandle {
    let t: toml::Table = format!("name = \"{name}\"\nbackend = \"sim\"\n{extra}")
        .parse()
        .unwrap();
    NodeSpec::from_table(&t, 0)
        .unwrap()
        .build(Path::new("."))
        .unwrap()
}

async fn uses(rt: &PluginRuntime, name: &str, config: &str, grants: Grants) -> PluginUse {
    PluginUse {
        name: name.to_string(),
        plugin: rt.load_file(&plugin(name)).await.unwrap().into(),
        config: config.into(),
        grants,
        limits: None,
    }
}

async fn team(
    nodes: Vec<NodeHandle>,
    voter: &str,
    voter_config: &str,
    router: RouterConfig,
) -> Team {
    let rt = runtime();
    Team {
        role: uses(
            &rt,
            "solver",
            "",
            Grants {
                llm: true,
                ..Grants::default()
            },
        )
        .await,
        verifiers: vec![uses(&rt, "answer-format", "", Grants::default()).await],
        voter: uses(&rt, voter, voter_config, Grants::default()).await,
        router: Arc::new(Router::new(nodes, router)),
        runtime: rt,
    }
}

fn question(i: u32, replicas: u32, max_samples: u32) -> TaskSpec {
    TaskSpec {
        id: format!("q{i}"),
        prompt: format!("What is {i} + {i}?"),
        answer_kind: AnswerKind::Number,
        gold: Some((2 * i).to_string()),
        checker: None,
        replicas,
        max_samples,
        max_rounds: 1,
        debate_rounds: 0,
        retries: 1,
        inputs: vec![],
    }
}

#[tokio::test]
async fn majority_of_five_beats_one_sample_and_spreads_over_nodes() {
    let nodes = vec![
        sim("a", "accuracy = 0.7\nseed = 1"),
        sim("b", "accuracy = 0.7\nseed = 2"),
        sim("c", "accuracy = 0.7\nseed = 3"),
    ];
    let t = team(nodes, "majority", "", RouterConfig::default()).await;
    let (mut voted, mut single) = (0, 0);
    for i in 0..30 {
        let r = t.run_task("run-1", &question(i, 5, 5)).await;
        assert_eq!(r.stop, StopReason::Decided, "{r:?}");
        assert_eq!(r.samples, 5);
        let mut nodes = r.nodes.clone();
        nodes.sort();
        nodes.dedup();
        assert_eq!(
            nodes.len(),
            3,
            "replicas spread over all nodes: {:?}",
            r.nodes
        );
        voted += (r.answer.as_deref() == Some(&(2 * i).to_string())) as u32;
        let one = t.run_task("run-1", &question(i, 1, 1)).await;
        single += (one.answer.as_deref() == Some(&(2 * i).to_string())) as u32;
    }
    assert!(
        voted > single,
        "majority {voted}/30 against single {single}/30"
    );
    assert!(voted >= 23, "majority of 5 at 70% accuracy: {voted}/30");
}

#[tokio::test]
async fn adaptive_quorum_stops_early_when_the_vote_is_decisive() {
    let t = team(
        vec![sim("a", "accuracy = 0.95")],
        "quorum",
        r#"{"share":0.6,"min_votes":2,"max_samples":10}"#,
        RouterConfig::default(),
    )
    .await;
    let mut samples = 0;
    for i in 0..20 {
        let r = t.run_task("run-2", &question(i, 2, 10)).await;
        assert!(matches!(
            r.stop,
            StopReason::Decided | StopReason::NoConsensus(_) | StopReason::BudgetExhausted(_)
        ));
        samples += r.samples;
    }
    assert!(
        samples < 20 * 10 / 2,
        "{samples} samples for 20 tasks with a cap of 10 each"
    );
}

// Virtual time: hangs and deadlines cost no real time.
#[tokio::test(start_paused = true)]
async fn with_thirty_percent_of_calls_failing_every_task_ends_honestly() {
    let faulty = "accuracy = 0.9\nerror_rate = 0.15\nhang_rate = 0.15\nhang = \"5s\"";
    let nodes = vec![sim("a", faulty), sim("b", faulty), sim("c", faulty)];
    let router = RouterConfig {
        deadline: Duration::from_millis(300),
        retries: 2,
        backoff: Duration::from_millis(1),
        ..Default::default()
    };
    // A quorum voter: a decision needs agreement, so faults lead to more
    // samples or an honest no-consensus rather than a coin toss.
    let quorum = r#"{"share":0.6,"min_votes":2,"max_samples":9}"#;
    let t = team(nodes, "quorum", quorum, router).await;
    let (mut right, mut wrong) = (0, 0);
    let mut stops = Vec::new();
    for i in 0..15 {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            t.run_task("run-3", &question(i, 5, 9)),
        )
        .await
        .expect("nothing hangs");
        stops.push(format!("{:?} {:?}", r.stop, r.answer));
        match &r.stop {
            StopReason::Decided if r.answer.as_deref() == Some(&(2 * i).to_string()) => right += 1,
            StopReason::Decided => wrong += 1,
            StopReason::Failed(why)
            | StopReason::NoConsensus(why)
            | StopReason::BudgetExhausted(why) => {
                assert!(!why.is_empty())
            }
            StopReason::Cancelled(why) => panic!("nobody cancelled: {why}"),
        }
    }
    assert!(wrong <= 1, "a wrong consensus {wrong} times");
    // The rest end in an honest no-consensus or failure, with a reason.
    assert!(
        right >= 6,
        "the right consensus despite faults: {right}/15: {stops:#?}"
    );
}

#[tokio::test]
async fn when_every_node_fails_the_task_fails_with_the_cause_after_redraws() {
    let t = team(
        vec![sim("dead", "error_rate = 1.0")],
        "majority",
        "",
        RouterConfig {
            retries: 0,
            ..Default::default()
        },
    )
    .await;
    let r = t.run_task("run-4", &question(1, 3, 3)).await;
    match r.stop {
        StopReason::Failed(why) => assert!(
            why.contains("all 6 replicas failed") && why.contains("dead"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    // Three replicas, each drawn once more (`retries = 1`) before giving up.
    assert_eq!((r.samples, r.failures.len()), (6, 6));
}
