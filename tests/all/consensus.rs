//! One task to a decision on sim nodes with the built-in plugins: majority
//! over k replicas, adaptive sampling with `quorum`, faulty nodes, a stop
//! reason for every task, early decisions that cancel the replicas still
//! running (and replay the same), and hedged replicas.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conclave::model::router::NodeHandle;
use conclave::model::{NodeSpec, Router, RouterConfig};
use conclave::plugin::AnswerKind;
use conclave::team::caps::Caps;
use conclave::team::consensus::{
    ConsensusConfig, Decide, PluginUse, ReplicaHedge, StopReason, TaskContext, TaskSpec, Team,
};
use conclave::team::events::Event;
use conclave::{Grants, PluginRuntime};
use conclave_tests::{conclave_bin, plugin, runtime, workspace, Recorder};

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
        synthesises: false,
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
        remote: None,
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
        // Early decisions: the vote may be settled by 3 or 4 ballots, and
        // the replicas still running are cancelled, not sampled.
        assert!((3..=5).contains(&r.samples), "{}", r.samples);
        let mut nodes = r.nodes.clone();
        nodes.sort();
        nodes.dedup();
        // Only counted ballots name their node; an early decision counts 3
        // or 4 of the 5 replicas, which the router spread over the nodes.
        assert!(
            nodes.len() >= 2,
            "replicas spread over the nodes: {:?}",
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

#[tokio::test]
async fn adaptive_voter_spends_fewer_samples_than_a_fixed_vote_of_ten() {
    let t = team(
        vec![sim("a", "accuracy = 0.95")],
        "adaptive",
        r#"{"threshold":0.95,"max_samples":10}"#,
        RouterConfig::default(),
    )
    .await;
    let (mut samples, mut right) = (0, 0);
    for i in 0..40 {
        let r = t.run_task("run-ac", &question(i, 1, 10)).await;
        assert_eq!(r.stop, StopReason::Decided, "{r:?}");
        assert!((4..=10).contains(&r.samples), "{}", r.samples);
        samples += r.samples;
        right += (r.answer.as_deref() == Some(&(2 * i).to_string())) as u32;
    }
    // 4-0 is the fewest that can decide (31/32 >= 0.95); a fixed vote
    // would draw 400.
    assert!(samples < 40 * 6, "{samples} samples for 40 tasks, cap 10");
    assert!(right >= 39, "{right}/40 right at 95% accuracy");
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
        // Breakers that open do so for a few virtual milliseconds: this test
        // is about faulty calls ending honestly, and a breaker open for its
        // default 2 s would fail every later task without a single call,
        // depending on how the replicas' calls interleave.
        breaker: conclave::model::health::BreakerConfig {
            open_for: Duration::from_millis(5),
            max_open_for: Duration::from_millis(20),
            ..Default::default()
        },
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

/// A fast node that always answers right after 1 s, and a slow one that
/// takes an hour and serves at most two calls at once: of five replicas
/// started together, the router sends two to the slow node (the calls
/// alternate by load) and three to the fast one.
fn fast_and_slow() -> Vec<NodeHandle> {
    vec![
        sim(
            "fast",
            "accuracy = 1.0\nlatency = { kind = \"constant\", value = \"1s\" }",
        ),
        sim(
            "slow",
            "accuracy = 1.0\nmax_concurrency = 2\nlatency = { kind = \"constant\", value = \"1h\" }",
        ),
    ]
}

/// A context recording events into `rec`, with `consensus` settings.
fn recorded(rec: &Recorder, consensus: ConsensusConfig) -> TaskContext {
    TaskContext {
        observer: rec.observer(),
        caps: Arc::new(Caps {
            consensus,
            ..Caps::default()
        }),
        ..TaskContext::standalone()
    }
}

/// (replica, reason, tokens) of every cancelled replica.
fn cancelled(events: &[Event]) -> Vec<(u32, String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReplicaCancelled {
                replica,
                reason,
                tokens,
                ..
            } => Some((*replica, reason.clone(), *tokens)),
            _ => None,
        })
        .collect()
}

// Virtual time: the slow node's hour costs nothing.
#[tokio::test(start_paused = true)]
async fn a_five_replica_majority_decides_on_three_agreeing_ballots_and_cancels_the_other_two() {
    let t = team(fast_and_slow(), "majority", "", RouterConfig::default()).await;
    let rec = Recorder::default();
    let ctx = recorded(&rec, ConsensusConfig::default());
    let r = t.run_task_in("early-1", &question(1, 5, 5), &ctx).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    assert_eq!(
        (r.answer.as_deref(), r.support, r.total, r.samples),
        (Some("2"), 3, 3, 3)
    );
    assert_eq!(r.nodes, vec!["fast"; 3]);
    let events = rec.events();
    let votes: Vec<(u32, Vec<u32>, u32, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Vote {
                ballots,
                counted,
                running,
                decision,
                ..
            } => Some((*ballots, counted.clone(), *running, decision.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(votes.len(), 1, "{votes:?}");
    let (ballots, counted, running, decision) = &votes[0];
    assert_eq!((*ballots, counted.len(), *running), (3, 3, 2));
    assert_eq!(decision, "decided 2 (3 of 3)");
    let gone = cancelled(&events);
    assert_eq!(gone.len(), 2, "{gone:?}");
    for (replica, reason, tokens) in &gone {
        assert!(!counted.contains(replica), "replica {replica} was counted");
        assert_eq!(
            reason, "the vote was decided 2 (3 of 3) without it",
            "replica {replica}"
        );
        // Their only model call was cut off in flight: nothing was charged.
        assert_eq!(*tokens, 0);
    }
    // What the task was charged is exactly what its answered calls cost.
    let charged: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall {
                tokens_in,
                tokens_out,
                ..
            } => Some(u64::from(*tokens_in) + u64::from(*tokens_out)),
            _ => None,
        })
        .sum();
    assert!(charged > 0);
    assert_eq!(r.tokens, charged);
    // Nothing from the slow node was answered or counted.
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::ModelCall { node, .. } if node == "slow")));
}

#[tokio::test(start_paused = true)]
async fn deciding_on_all_ballots_waits_for_every_replica_and_cancels_none() {
    let router = RouterConfig {
        deadline: Duration::from_secs(7200),
        ..Default::default()
    };
    let t = team(fast_and_slow(), "majority", "", router).await;
    let rec = Recorder::default();
    let ctx = recorded(
        &rec,
        ConsensusConfig {
            decide: Decide::All,
            ..Default::default()
        },
    );
    let r = t.run_task_in("all-1", &question(1, 5, 5), &ctx).await;
    assert_eq!(
        (r.answer.as_deref(), r.support, r.total, r.samples),
        (Some("2"), 5, 5, 5)
    );
    let events = rec.events();
    assert_eq!(cancelled(&events), vec![]);
    let running: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Vote { running, .. } => Some(*running),
            _ => None,
        })
        .collect();
    assert_eq!(running, vec![0]);
}

#[tokio::test(start_paused = true)]
async fn a_replica_on_a_stalled_node_is_won_by_its_copy_on_a_healthy_node() {
    let nodes = vec![
        sim(
            "healthy",
            "accuracy = 1.0\nlatency = { kind = \"constant\", value = \"1s\" }",
        ),
        sim("stalled", "accuracy = 1.0\nhang_rate = 1.0"),
    ];
    let t = team(nodes, "majority", "", RouterConfig::default()).await;
    // One call pinned to the healthy node gives the router a latency to
    // hedge at (1 s). The stalled node has none, so it looks the faster of
    // two idle nodes and takes the next replica.
    let warm = Team {
        role: PluginUse {
            config: r#"{"sampling":{"node":"healthy"}}"#.into(),
            ..t.role.clone()
        },
        verifiers: t.verifiers.clone(),
        voter: t.voter.clone(),
        remote: None,
        router: t.router.clone(),
        runtime: t.runtime.clone(),
    };
    assert_eq!(
        warm.run_task("hedge-0", &question(2, 1, 1)).await.stop,
        StopReason::Decided
    );
    let rec = Recorder::default();
    let hedge = ReplicaHedge {
        enabled: true,
        min_samples: 1,
        ..Default::default()
    };
    let ctx = recorded(
        &rec,
        ConsensusConfig {
            hedge,
            ..Default::default()
        },
    );
    let r = t.run_task_in("hedge-1", &question(3, 1, 2), &ctx).await;
    assert_eq!(r.stop, StopReason::Decided, "{r:?}");
    assert_eq!(
        (r.answer.as_deref(), r.nodes.clone(), r.samples),
        (Some("6"), vec!["healthy".to_string()], 1)
    );
    let events = rec.events();
    let hedged: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ReplicaHedged { replica, copy, .. } => Some((*replica, *copy)),
            _ => None,
        })
        .collect();
    assert_eq!(hedged, vec![(0, 1)]);
    assert_eq!(
        cancelled(&events),
        vec![(0, "hedged: replica 1 answered first".to_string(), 0)]
    );
    let counted: Vec<Vec<u32>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Vote { counted, .. } => Some(counted.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(counted, vec![vec![1]]);
}

#[test]
fn replay_reproduces_an_early_decision() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("team.toml");
    std::fs::write(
        &spec,
        r#"
[team]
name = "early"

[[node]]
name = "fast"
backend = "sim"
accuracy = 1.0
latency = { kind = "constant", value = "10ms" }

[[node]]
name = "slow"
backend = "sim"
accuracy = 1.0
max_concurrency = 2
latency = { kind = "constant", value = "1h" }

[[task]]
id = "answer"
role = "solver"
replicas = 5
verifiers = ["answer-format"]
voter = "majority"
answer_kind = "number"
"#,
    )
    .unwrap();
    let conclave = |args: &[&str]| {
        let out = std::process::Command::new(conclave_bin())
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let spec = spec.display().to_string();
    let ran = conclave(&[
        "run",
        &spec,
        "What is 40 + 2?",
        "--gold",
        "42",
        "--json",
        "--run-id",
        "early-1",
    ]);
    assert_eq!(ran["answer"], "42", "{ran}");
    use conclave::journal::Journal;
    let log = conclave::journal::sqlite::SqliteJournal::open(dir.path())
        .unwrap()
        .read("early-1")
        .unwrap();
    let events: Vec<Event> = log.events().map(|(_, e)| e.clone()).collect();
    assert_eq!(cancelled(&events).len(), 2, "{events:?}");
    let rep = &conclave(&["replay", "early-1", "--json"])[0];
    assert_eq!(rep["votes"], 1);
    assert_eq!(rep["changed"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(
        (&rep["answer_before"], &rep["answer_now"]),
        (&"42".into(), &"42".into())
    );
}
