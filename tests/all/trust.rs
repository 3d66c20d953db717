//! What an untrusted policy cannot do to the team's answer: a voter cannot
//! decide an answer no replica gave (unless its team declares it may
//! synthesise, and then the answer says so), nor misstate how many ballots
//! carried it; a verifier's verdicts are recorded under the name the team
//! gave it, whatever name it signs them with.

use conclave::team::consensus::StopReason;
use conclave::team::events::Event;
use conclave::team::job::{JobResult, PreparedTeam};
use conclave_tests::{fixture, plugin_dir, run_job, runtime};

/// Five replicas on two sim nodes that are right half of the time, so that
/// the ballots disagree; `voter` is the fixture `fixture` as plugin
/// `forge`, with `config` and any `extra` lines in its [[plugin]] table.
fn spec(voter: &str, config: &str, extra: &str, verifiers: &str) -> String {
    format!(
        r#"
[team]
name = "trust"

[[node]]
name = "sim-a"
backend = "sim"
accuracy = 0.5
seed = 3

[[node]]
name = "sim-b"
backend = "sim"
accuracy = 0.5
seed = 4

[[plugin]]
name = "forge"
path = "{}"
config = {config}
{extra}

[[plugin]]
name = "my-check"
path = "{}"

[[task]]
id = "a"
role = "solver"
replicas = 5
verifiers = {verifiers}
voter = "forge"
answer_kind = "number"
"#,
        fixture(voter).display(),
        fixture("misnamer").display()
    )
}

async fn run(text: &str) -> (JobResult, Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, text).unwrap();
    let spec = conclave::spec::team::TeamSpec::load(&path).unwrap();
    let team = PreparedTeam::prepare(spec, runtime(), &plugin_dir())
        .await
        .unwrap();
    run_job(&team, "run-trust", "What is 6 * 7?", Some("42")).await
}

/// The answers of the ballots the run journaled.
fn answers(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ballot { ballot, .. } => Some(ballot.answer.clone()),
            _ => None,
        })
        .collect()
}

fn votes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Vote { decision, .. } => Some(decision.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_voter_that_decides_an_answer_no_replica_gave_fails_its_task_0_1_and_0_2() {
    for voter in ["hostile", "hostile-v2"] {
        let (r, events) = run(&spec(voter, r#"{ do = "fabricate" }"#, "", "[]")).await;
        // The voter is asked as soon as a decision is possible: after
        // four of the five ballots or all of them.
        let given = answers(&events);
        let n = given.len();
        assert!(n >= 4, "{voter}: {events:?}");
        assert!(!given.contains(&"1337".to_string()), "{given:?}");
        let why = match &r.stop {
            StopReason::Failed(why) => why.clone(),
            other => panic!("{voter}: expected the task to fail, got {other:?}"),
        };
        assert!(why.contains("malformed output"), "{why}");
        assert!(why.contains("voter `forge`"), "{why}");
        assert!(why.contains(&format!("({voter}@")), "{why}");
        assert!(
            why.contains(&format!("decided \"1337\" ({n} of {n})")),
            "{why}"
        );
        assert!(
            why.contains(&format!("none of the {n} ballots gave")),
            "{why}"
        );
        assert!(why.contains("synthesises = true"), "{why}");
        assert_eq!(r.answer, None);
        assert!(votes(&events).is_empty(), "no vote is journaled");
    }
}

#[tokio::test]
async fn a_voter_declared_to_synthesise_may_and_its_answer_says_so() {
    let (r, events) = run(&spec(
        "hostile",
        r#"{ do = "fabricate" }"#,
        "synthesises = true",
        "[]",
    ))
    .await;
    assert_eq!(r.stop, StopReason::Decided);
    assert_eq!(r.answer.as_deref(), Some("1337"));
    assert!(r.synthesised);
    let n = answers(&events).len();
    assert_eq!((r.support, r.total), (0, n as u32), "no ballot carried it");
    assert_eq!(
        votes(&events),
        vec![format!("decided 1337 (synthesised from {n} ballots)")]
    );
    let ended = events
        .iter()
        .find_map(|e| match e {
            Event::TaskEnded { result, .. } => Some(result.clone()),
            _ => None,
        })
        .unwrap();
    assert!(ended.synthesised, "the journal's task end says so");
    // A declared voter that picks a ballot's answer is not marked.
    let (r, _) = run(&spec(
        "hostile",
        r#"{ do = "overclaim" }"#,
        "synthesises = true",
        "[]",
    ))
    .await;
    assert_eq!(r.stop, StopReason::Decided);
    assert!(!r.synthesised);
}

#[tokio::test]
async fn an_overclaiming_voter_is_reported_with_the_hosts_count_0_1_and_0_2() {
    for voter in ["hostile", "hostile-v2"] {
        let (r, events) = run(&spec(voter, r#"{ do = "overclaim" }"#, "", "[]")).await;
        let given = answers(&events);
        let n = given.len() as u32;
        let winner = r.answer.clone().expect("decided");
        assert_eq!(Some(&winner), given.last(), "it picks the last ballot's");
        let carried = given.iter().filter(|a| **a == winner).count() as u32;
        assert!(
            carried < n,
            "the sim seeds must give disagreeing ballots: {given:?}"
        );
        assert_eq!(
            (r.support, r.total, r.synthesised),
            (carried, n, false),
            "{voter} claimed {n} of {n}"
        );
        assert_eq!(
            votes(&events),
            vec![format!("decided {winner} ({carried} of {n})")]
        );
    }
}

#[tokio::test]
async fn a_runner_up_no_replica_gave_is_refused() {
    let (r, _) = run(&spec(
        "hostile",
        r#"{ do = "fabricate-runner-up" }"#,
        "",
        "[]",
    ))
    .await;
    match &r.stop {
        StopReason::Failed(why) => {
            assert!(why.contains("named \"1337\" as the runner-up"), "{why}")
        }
        other => panic!("expected the task to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_verdict_is_recorded_and_shown_to_voters_under_the_name_the_team_gave_its_verifier() {
    // The 0.2 voter reads every ballot's marks back as its answer
    // (`verifier:reason` lines): what a voter that weighs verifiers by name
    // would see.
    let (r, events) = run(&spec(
        "hostile-v2",
        r#"{ do = "read-all" }"#,
        "synthesises = true",
        r#"["my-check"]"#,
    ))
    .await;
    let seen = r.answer.clone().expect("decided");
    assert!(r.synthesised);
    let n = answers(&events).len();
    assert_eq!(seen.matches("my-check:").count(), n, "{seen}");
    assert!(!seen.contains("numeric-check"), "{seen}");
    let mut judged = 0;
    for e in &events {
        if let Event::Ballot {
            ballot, verifiers, ..
        } = e
        {
            judged += 1;
            assert_eq!(ballot.verdicts.len(), 1);
            assert_eq!(ballot.verdicts[0].0, "my-check", "{ballot:?}");
            assert_eq!(verifiers[0].plugin, "my-check");
            assert_eq!(
                verifiers[0].hash,
                conclave::plugin::cache::content_hash(&std::fs::read(fixture("misnamer")).unwrap())
            );
        }
    }
    assert_eq!(judged, n);
}
