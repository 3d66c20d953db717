//! The built-in plugins, run as components: voters' decisions, verifiers'
//! verdicts and roles' outcomes on known inputs.

use std::sync::Arc;
use std::time::Duration;

use conclave::plugin::{AnswerKind, Ballot, Decided, Decision, GuestError, Outcome, PluginError};
use conclave::{Grants, Invocation, Plugin, PluginRuntime, SandboxLimits};
use conclave_tests::{ballot, candidate, judged, plugin, runtime, task, ScriptedServices};
use proptest::prelude::*;

async fn load(rt: &PluginRuntime, name: &str) -> Plugin {
    rt.load_file(&plugin(name)).await.unwrap()
}

async fn tally(name: &str, config: &str, ballots: &[Ballot]) -> Result<Decision, PluginError> {
    let rt = runtime();
    let p = load(&rt, name).await;
    rt.tally(&p, &Invocation::default(), &task(config), ballots)
        .await
}

fn decided(answer: &str, support: u32, total: u32, runner_up: Option<&str>) -> Decision {
    Decision::Decided(Decided {
        answer: answer.into(),
        support,
        total,
        runner_up: runner_up.map(Into::into),
    })
}

#[tokio::test]
async fn majority_picks_the_plurality_and_names_the_runner_up() {
    let b = [
        ballot("42"),
        ballot("41"),
        ballot("42"),
        ballot(""),
        ballot("40"),
        ballot("42"),
    ];
    assert_eq!(
        tally("majority", "", &b).await.unwrap(),
        decided("42", 3, 5, Some("40"))
    );
}

#[tokio::test]
async fn majority_skips_failed_ballots_unless_told_to_count_them() {
    let b = [
        judged("1", false, 0.0),
        judged("1", false, 0.0),
        judged("2", true, 1.0),
    ];
    assert_eq!(
        tally("majority", "", &b).await.unwrap(),
        decided("2", 1, 1, None)
    );
    let d = tally("majority", r#"{"count_failed":true}"#, &b)
        .await
        .unwrap();
    assert_eq!(d, decided("1", 2, 3, Some("2")));
    let none = tally("majority", "", &[judged("1", false, 0.0)])
        .await
        .unwrap();
    assert!(
        matches!(none, Decision::NoConsensus(ref r) if r.contains("none of 1 ballots")),
        "{none:?}"
    );
}

/// A plurality of one decides by default, its support saying how thin it
/// is; with `min_support = 2` it is no consensus, while a lone counted
/// ballot still decides.
#[tokio::test]
async fn majority_calls_a_plurality_of_one_no_consensus_when_told_to() {
    let spread = [ballot("41"), ballot("42"), ballot("43"), ballot("")];
    assert_eq!(
        tally("majority", "", &spread).await.unwrap(),
        decided("41", 1, 3, Some("42"))
    );
    let strict = r#"{"min_support":2}"#;
    let d = tally("majority", strict, &spread).await.unwrap();
    assert!(
        matches!(d, Decision::NoConsensus(ref r)
            if r == "no answer has 2 of the 3 ballots counted (3 distinct answers)"),
        "{d:?}"
    );
    assert_eq!(
        tally("majority", strict, &[ballot("42"), ballot("")])
            .await
            .unwrap(),
        decided("42", 1, 1, None)
    );
    let two = [ballot("7"), ballot("7"), ballot("8")];
    assert_eq!(
        tally("majority", strict, &two).await.unwrap(),
        decided("7", 2, 3, Some("8"))
    );
    assert!(matches!(
        tally("majority", r#"{"min_support":3}"#, &two)
            .await
            .unwrap(),
        Decision::NoConsensus(_)
    ));
}

#[tokio::test]
async fn majority_rejects_unknown_config_keys() {
    match tally("majority", r#"{"count_faild":true}"#, &[ballot("1")])
        .await
        .unwrap_err()
    {
        PluginError::Guest {
            error: GuestError::InvalidConfig(m),
            ..
        } => assert!(m.contains("count_faild"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn weighted_counts_confidence_and_scores() {
    let mut sure = judged("9", true, 1.0);
    sure.candidate.confidence = Some(0.9);
    let mut unsure = judged("8", true, 0.5);
    unsure.candidate.confidence = Some(0.4);
    let b = [sure, unsure.clone(), unsure];
    // 9: 0.9 ; 8: 2 × 0.2 = 0.4
    assert_eq!(
        tally("weighted", "", &b).await.unwrap(),
        decided("9", 1, 3, Some("8"))
    );
}

/// Learned node weights: one ballot from a reliable node outweighs two
/// from an unreliable one; a node the weights do not name counts
/// `default_weight`; a negative weight is refused by name.
#[tokio::test]
async fn weighted_counts_each_nodes_learned_weight() {
    let from = |answer: &str, node: &str| {
        let mut b = ballot(answer);
        b.candidate.node = node.into();
        b
    };
    let b = [from("9", "good"), from("8", "poor"), from("8", "poor")];
    assert_eq!(
        tally("weighted", "", &b).await.unwrap(),
        decided("8", 2, 3, Some("9")),
        "without weights every ballot counts 1"
    );
    let learned = r#"{"weights": {"good": 2.5, "poor": 0.5}}"#;
    assert_eq!(
        tally("weighted", learned, &b).await.unwrap(),
        decided("9", 1, 3, Some("8"))
    );
    let unknown = [from("9", "good"), from("7", "new"), from("7", "new")];
    assert_eq!(
        tally(
            "weighted",
            r#"{"weights": {"good": 2.5}, "default_weight": 1.0}"#,
            &unknown
        )
        .await
        .unwrap(),
        decided("9", 1, 3, Some("7"))
    );
    match tally("weighted", r#"{"weights": {"good": -1}}"#, &b)
        .await
        .unwrap_err()
    {
        PluginError::Guest {
            error: GuestError::InvalidConfig(m),
            ..
        } => assert!(m.contains("weight of `good`"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn quorum_decides_asks_for_more_or_gives_up() {
    let cfg = r#"{"share":0.6,"min_votes":2,"max_samples":5}"#;
    let d = tally("quorum", cfg, &[ballot("3"), ballot("3"), ballot("4")])
        .await
        .unwrap();
    assert_eq!(d, decided("3", 2, 3, Some("4")));
    // 1 of 2 agree: one more agreeing sample would make 2 of 3 = 67%.
    let d = tally("quorum", cfg, &[ballot("3"), ballot("4")])
        .await
        .unwrap();
    assert_eq!(d, Decision::NeedMore(1));
    let spread = [
        ballot("1"),
        ballot("2"),
        ballot("3"),
        ballot("4"),
        ballot("5"),
    ];
    match tally("quorum", cfg, &spread).await.unwrap() {
        Decision::NoConsensus(r) => assert!(r.contains("after 5 samples"), "{r}"),
        other => panic!("{other:?}"),
    }
    match tally("quorum", r#"{"share":1.5}"#, &spread)
        .await
        .unwrap_err()
    {
        PluginError::Guest {
            error: GuestError::InvalidConfig(m),
            ..
        } => assert!(m.contains("share"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn quorum_margin_and_plurality_at_the_cap() {
    let b = [ballot("3"), ballot("3"), ballot("4")];
    // 2 of 3 meets the share, but a lead of 1 is below a margin of 2.
    let cfg = r#"{"share":0.6,"min_votes":2,"margin":2,"max_samples":5}"#;
    assert_eq!(
        tally("quorum", cfg, &b).await.unwrap(),
        Decision::NeedMore(1)
    );
    let at_cap = r#"{"share":0.9,"min_votes":2,"max_samples":3,"plurality_at_cap":true}"#;
    assert_eq!(
        tally("quorum", at_cap, &b).await.unwrap(),
        decided("3", 2, 3, Some("4"))
    );
}

#[tokio::test]
async fn adaptive_stops_on_the_posterior_and_asks_for_one_more_near_it() {
    let cfg = r#"{"threshold":0.95,"max_samples":10}"#;
    let four = [ballot("3"), ballot("3"), ballot("3"), ballot("3")];
    // 4-0: the leader beats the runner-up with probability 31/32.
    assert_eq!(
        tally("adaptive", cfg, &four).await.unwrap(),
        decided("3", 4, 4, None)
    );
    // 3-0 is 15/16, just short: one more sample could decide.
    assert_eq!(
        tally("adaptive", cfg, &four[..3]).await.unwrap(),
        Decision::NeedMore(1)
    );
    // 3-1 needs three more agreeing samples (6-1 = 0.965; 5-1 = 0.9375).
    let mut b = four[..3].to_vec();
    b.push(ballot("4"));
    assert_eq!(
        tally("adaptive", cfg, &b).await.unwrap(),
        Decision::NeedMore(3)
    );
    // At the cap the plurality is decided.
    let at_cap = r#"{"threshold":0.95,"max_samples":4}"#;
    assert_eq!(
        tally("adaptive", at_cap, &b).await.unwrap(),
        decided("3", 3, 4, Some("4"))
    );
    match tally("adaptive", r#"{"threshold":1.0}"#, &b)
        .await
        .unwrap_err()
    {
        PluginError::Guest {
            error: GuestError::InvalidConfig(m),
            ..
        } => assert!(m.contains("threshold"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn borda_uses_rankings() {
    let ranked = |r: &[&str]| {
        let mut b = ballot(r[0]);
        b.candidate.ranking = r.iter().map(|s| s.to_string()).collect();
        b
    };
    let b = [
        ranked(&["a", "b", "c"]),
        ranked(&["b", "c", "a"]),
        ranked(&["b", "a", "c"]),
    ];
    assert_eq!(
        tally("borda", "", &b).await.unwrap(),
        decided("b", 2, 3, Some("a"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Results do not depend on ballot order, for every built-in voter.
    #[test]
    fn voters_ignore_ballot_order(answers in proptest::collection::vec(0u8..4, 1..9), seed in any::<u64>()) {
        let rt_handle = tokio::runtime::Runtime::new().unwrap();
        rt_handle.block_on(async {
            let rt = runtime();
            let ballots: Vec<Ballot> = answers.iter().map(|a| ballot(&a.to_string())).collect();
            let mut shuffled = ballots.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            for name in ["majority", "weighted", "quorum", "adaptive", "borda"] {
                let p = load(&rt, name).await;
                let a = rt.tally(&p, &Invocation::default(), &task(""), &ballots).await.unwrap();
                let b = rt.tally(&p, &Invocation::default(), &task(""), &shuffled).await.unwrap();
                prop_assert_eq!(a, b, "{}", name);
            }
            Ok(())
        })?;
    }

    /// Quorum never decides below its threshold.
    #[test]
    fn quorum_never_decides_below_its_share(answers in proptest::collection::vec(0u8..3, 1..10), share in 0.3f64..1.0) {
        let rt_handle = tokio::runtime::Runtime::new().unwrap();
        let ballots: Vec<Ballot> = answers.iter().map(|a| ballot(&a.to_string())).collect();
        let cfg = format!(r#"{{"share":{share},"min_votes":1,"max_samples":10}}"#);
        let d = rt_handle.block_on(tally("quorum", &cfg, &ballots)).unwrap();
        if let Decision::Decided(d) = d {
            prop_assert!(d.support as f64 >= share * d.total as f64 - 1e-6, "{:?} share {}", d, share);
        }
    }

    /// A majority of identical ballots is that ballot.
    #[test]
    fn identical_ballots_decide_themselves(answer in 0u32..1000, n in 1usize..8) {
        let rt_handle = tokio::runtime::Runtime::new().unwrap();
        let d = rt_handle.block_on(tally("majority", "", &vec![ballot(&answer.to_string()); n])).unwrap();
        prop_assert_eq!(d, decided(&answer.to_string(), n as u32, n as u32, None));
    }
}

async fn verify(
    name: &str,
    cfg: &str,
    t: conclave::plugin::Task,
    c: conclave::plugin::Candidate,
    inv: Invocation,
) -> conclave::plugin::Verdict {
    let rt = runtime();
    let p = load(&rt, name).await;
    let mut t = t;
    t.config = cfg.into();
    rt.verify(&p, &inv, &t, &c).await.unwrap()
}

#[tokio::test]
async fn answer_format_checks_the_expected_kind() {
    let v = verify(
        "answer-format",
        "",
        task(""),
        candidate("42", 0),
        Invocation::default(),
    )
    .await;
    assert!(v.pass && v.score == 1.0, "{v:?}");
    let mut c = candidate("", 0);
    c.text = "I am not sure.".into();
    let v = verify("answer-format", "", task(""), c, Invocation::default()).await;
    assert!(!v.pass && v.reason.contains("no number answer"), "{v:?}");
    let mut t = task("");
    t.answer_kind = AnswerKind::Choice;
    let mut c = candidate("E", 0);
    c.text = "Answer: E".into();
    let v = verify("answer-format", "", t, c, Invocation::default()).await;
    assert!(!v.pass && v.reason.contains("not one of ABCD"), "{v:?}");
}

#[tokio::test]
async fn numeric_check_rederives_and_range_checks() {
    let mut t = task("");
    t.checker = Some(r#"{"expression":"6*7","min":0,"integer":true}"#.into());
    let v = verify(
        "numeric-check",
        "",
        t.clone(),
        candidate("42", 0),
        Invocation::default(),
    )
    .await;
    assert!(v.pass && v.score == 1.0, "{v:?}");
    let v = verify(
        "numeric-check",
        "",
        t,
        candidate("41", 0),
        Invocation::default(),
    )
    .await;
    assert!(
        !v.pass && v.reason.contains("differs from 6*7 = 42"),
        "{v:?}"
    );
    let mut t = task("");
    t.prompt = "Calculate -9 / 3 + 8 * -8 - -6.".into();
    let cfg = r#"{"derive_from_prompt":true}"#;
    assert!(
        verify(
            "numeric-check",
            cfg,
            t.clone(),
            candidate("-61", 0),
            Invocation::default()
        )
        .await
        .pass
    );
    assert!(
        !verify(
            "numeric-check",
            cfg,
            t,
            candidate("61", 0),
            Invocation::default()
        )
        .await
        .pass
    );
    let v = verify(
        "numeric-check",
        "",
        task(""),
        candidate("5", 0),
        Invocation::default(),
    )
    .await;
    assert!(v.pass && v.score == 0.5, "no check given is neutral: {v:?}");
}

fn with_model(s: Arc<ScriptedServices>) -> Invocation {
    Invocation::new(
        Grants {
            llm: true,
            blackboard: true,
            ..Grants::default()
        },
        Some(s),
    )
}

#[tokio::test]
async fn llm_judge_reads_the_verdict_and_keeps_the_reason() {
    let s = ScriptedServices::new("6*7 is 42, so this is right.\nVERDICT: correct");
    let v = verify(
        "llm-judge",
        "",
        task(""),
        candidate("42", 0),
        with_model(s.clone()),
    )
    .await;
    assert!(
        v.pass && v.score == 1.0 && v.reason.contains("6*7 is 42"),
        "{v:?}"
    );
    assert!(s
        .last_prompt
        .lock()
        .unwrap()
        .contains("Proposed answer: 42"));
    let s = ScriptedServices::new("No.\nVERDICT: incorrect");
    assert!(
        !verify("llm-judge", "", task(""), candidate("41", 0), with_model(s))
            .await
            .pass
    );
}

async fn run_role(name: &str, t: conclave::plugin::Task, s: Arc<ScriptedServices>) -> Outcome {
    let rt = runtime();
    let p = load(&rt, name).await;
    rt.run_role(&p, &with_model(s), &t).await.unwrap()
}

#[tokio::test]
async fn solver_returns_the_extracted_answer_and_its_node() {
    let s = ScriptedServices::new("6 times 7 is 42.\nAnswer: 42");
    match run_role("solver", task(""), s.clone()).await {
        Outcome::Candidate(c) => {
            assert_eq!((c.answer.as_str(), c.node.as_str()), ("42", "scripted"));
            assert!(c.text.starts_with("6 times 7"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let prompt = s.last_prompt.lock().unwrap().clone();
    assert!(
        prompt.contains("user: What is 6 * 7?") && prompt.contains("Answer: <number>"),
        "{prompt}"
    );
}

#[tokio::test]
async fn waiting_for_a_model_does_not_count_against_the_compute_deadline() {
    let rt = runtime();
    let p = load(&rt, "solver").await;
    let s = ScriptedServices::with("Answer: 42", Duration::from_millis(800), vec![]);
    let mut inv = with_model(s);
    inv.limits = Some(SandboxLimits {
        deadline: Duration::from_millis(200),
        ..Default::default()
    });
    let out = rt.run_role(&p, &inv, &task("")).await.unwrap();
    assert!(matches!(out, Outcome::Candidate(c) if c.answer == "42"));
}

#[tokio::test]
async fn critic_revises_the_candidate_in_its_feedback() {
    let mut t = task("");
    t.feedback = vec!["6*7 = 48\nAnswer: 48".into()];
    let s = ScriptedServices::new("The product is wrong: 6*7 = 42.\nAnswer: 42");
    match run_role("critic", t, s.clone()).await {
        Outcome::Candidate(c) => assert_eq!(c.answer, "42"),
        other => panic!("{other:?}"),
    }
    assert!(s
        .last_prompt
        .lock()
        .unwrap()
        .contains("Proposed solution:\n6*7 = 48"));
}

#[tokio::test]
async fn coordinator_turns_model_text_into_a_plan() {
    let s = ScriptedServices::new("1. [after] find the price\n2. [after 1] multiply by 3\nthanks!");
    match run_role("coordinator", task(""), s).await {
        Outcome::Plan(p) => {
            assert_eq!(p.subtasks.len(), 2);
            assert_eq!(p.subtasks[1].prompt, "multiply by 3");
            assert_eq!(p.subtasks[1].depends_on, vec!["s1".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let fixed = r#"{"plan":[{"id":"a","prompt":"x"},{"id":"b","prompt":"y","depends_on":["a"]}]}"#;
    match run_role("coordinator", task(fixed), ScriptedServices::new("unused")).await {
        Outcome::Plan(p) => assert_eq!(
            p.subtasks.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn coordinator_plans_with_cycles_are_bad_output() {
    let rt = runtime();
    let p = load(&rt, "coordinator").await;
    let cyclic = r#"{"plan":[{"id":"a","prompt":"x","depends_on":["b"]},{"id":"b","prompt":"y","depends_on":["a"]}]}"#;
    match rt
        .run_role(&p, &with_model(ScriptedServices::new("")), &task(cyclic))
        .await
        .unwrap_err()
    {
        PluginError::BadOutput { reason, .. } => assert!(reason.contains("cycle"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn synthesizer_merges_the_blackboard() {
    let board = vec![
        ("s1".to_string(), "price is 14".to_string()),
        ("s2".to_string(), "3 items".to_string()),
    ];
    let s = ScriptedServices::with("14 * 3 = 42\nAnswer: 42", Duration::ZERO, board);
    match run_role("synthesizer", task(""), s.clone()).await {
        Outcome::Candidate(c) => assert_eq!(c.answer, "42"),
        other => panic!("{other:?}"),
    }
    let prompt = s.last_prompt.lock().unwrap().clone();
    assert!(
        prompt.contains("[s1]\nprice is 14") && prompt.contains("[s2]\n3 items"),
        "{prompt}"
    );
    let empty = ScriptedServices::new("x");
    let rt = runtime();
    let p = load(&rt, "synthesizer").await;
    match rt
        .run_role(&p, &with_model(empty), &task(""))
        .await
        .unwrap_err()
    {
        PluginError::Guest {
            error: GuestError::InvalidInput(m),
            ..
        } => assert!(m.contains("nothing to synthesise")),
        other => panic!("{other:?}"),
    }
}
