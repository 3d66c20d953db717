//! Contract 0.2 beside 0.1: the same policy decides alike on both, a 0.2
//! voter reads ballot texts only through `ballot-texts` and cannot abuse it,
//! and `plugins list` / `plugins check` say which contract a plugin is on.

use std::time::Duration;

use conclave::plugin::{Ballot, Candidate, Decision, PluginError, Registry, Verdict};
use conclave::{Invocation, SandboxLimits};
use conclave_tests::{fixture, plugin, runtime, task};

/// A small deterministic generator, so the cases are the same each run.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// A random ballot set: answers from a small pool (empty ones included),
/// zero to two verdicts each, some failing, rankings on some.
fn ballots(state: &mut u64) -> Vec<Ballot> {
    let pool = ["42", "41", "", "40", "3/4"];
    let verifiers = ["answer-format", "range"];
    (0..next(state) % 9)
        .map(|i| {
            let answer = pool[(next(state) % 5) as usize].to_string();
            let ranking = if next(state).is_multiple_of(3) {
                vec![answer.clone(), pool[(next(state) % 5) as usize].to_string()]
            } else {
                vec![]
            };
            Ballot {
                candidate: Candidate {
                    replica: i as u32,
                    node: format!("node-{}", i % 2),
                    text: format!("reasoning {i}\nAnswer: {answer}"),
                    answer,
                    confidence: Some((next(state) % 11) as f64 / 10.0),
                    ranking,
                },
                verdicts: (0..next(state) % 3)
                    .map(|v| Verdict {
                        verifier: verifiers[v as usize].into(),
                        pass: !next(state).is_multiple_of(4),
                        score: (next(state) % 11) as f64 / 10.0,
                        reason: format!("reason {i}.{v}"),
                    })
                    .collect(),
            }
        })
        .collect()
}

#[tokio::test]
async fn majority_decides_alike_on_contract_0_1_and_0_2() {
    let rt = runtime();
    let v1 = rt.load_file(&fixture("majority-v1")).await.unwrap();
    let v2 = rt.load_file(&plugin("majority")).await.unwrap();
    assert_eq!((v1.contract(), v2.contract()), ("0.1", "0.2"));
    assert_eq!(v1.name(), v2.name());
    let mut state = 11;
    let configs = [
        "{}",
        r#"{"count_failed":true}"#,
        r#"{"revise_on_fail":true}"#,
    ];
    let mut decided = 0;
    for case in 0..150 {
        let b = ballots(&mut state);
        let t = task(configs[case % configs.len()]);
        let inv = Invocation::default();
        let a = rt.tally(&v1, &inv, &t, &b).await.unwrap();
        let z = rt.tally(&v2, &inv, &t, &b).await.unwrap();
        assert_eq!(a, z, "case {case}: {b:?}");
        decided += matches!(a, Decision::Decided(_)) as usize;
    }
    // The cases exercise both outcomes, not only one.
    assert!((20..150).contains(&decided), "{decided} of 150 decided");
}

async fn hostile_v2(
    what: &str,
    limits: SandboxLimits,
    b: &[Ballot],
) -> Result<Decision, PluginError> {
    let rt = runtime();
    let p = rt.load_file(&fixture("hostile-v2")).await.unwrap();
    assert_eq!(p.contract(), "0.2");
    let inv = Invocation {
        limits: Some(limits),
        ..Default::default()
    };
    rt.tally(&p, &inv, &task(&format!("{{\"do\":\"{what}\"}}")), b)
        .await
}

fn answer(d: Decision) -> String {
    match d {
        Decision::Decided(d) => d.answer,
        other => panic!("expected a decided answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_0_2_voter_reads_exactly_the_texts_of_its_ballots() {
    let mut state = 5;
    let b = loop {
        let b = ballots(&mut state);
        if b.len() >= 3 && b.iter().any(|x| !x.verdicts.is_empty()) {
            break b;
        }
    };
    let mut want = Vec::new();
    for x in &b {
        want.push(format!(
            "{}|{}|{}",
            x.candidate.answer, x.candidate.text, x.candidate.node
        ));
        for v in &x.verdicts {
            want.push(format!("{}:{}", v.verifier, v.reason));
        }
    }
    let got = answer(
        hostile_v2("read-all", SandboxLimits::default(), &b)
            .await
            .unwrap(),
    );
    assert_eq!(got, want.join("\n"));
}

#[tokio::test]
async fn indices_the_host_never_sent_read_as_empty_not_as_a_crash() {
    let b = vec![conclave_tests::judged("7", true, 1.0)];
    let got = answer(
        hostile_v2("out-of-range", SandboxLimits::default(), &b)
            .await
            .unwrap(),
    );
    assert_eq!(got, "[][][][]");
}

#[tokio::test]
async fn reading_texts_without_end_is_stopped_by_the_compute_deadline() {
    let limits = SandboxLimits {
        deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let b = vec![conclave_tests::ballot("7")];
    match hostile_v2("read-forever", limits, &b).await {
        Err(PluginError::Timeout { plugin, deadline }) => {
            assert_eq!(plugin, "hostile-v2@0.2.0");
            assert_eq!(deadline, Duration::from_millis(300));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn hoarding_copies_of_a_text_is_stopped_by_the_memory_cap() {
    let limits = SandboxLimits {
        memory_bytes: 8 << 20,
        ..Default::default()
    };
    let mut big = conclave_tests::ballot("7");
    big.candidate.text = "x".repeat(64 << 10);
    match hostile_v2("hoard", limits, &[big]).await {
        Err(PluginError::OutOfMemory {
            plugin,
            limit_bytes,
        }) => {
            assert_eq!(plugin, "hostile-v2@0.2.0");
            assert_eq!(limit_bytes, 8 << 20);
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
}

#[tokio::test]
async fn the_registry_lists_each_plugins_contract() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin("quorum"), dir.path().join("quorum.wasm")).unwrap();
    std::fs::copy(fixture("majority-v1"), dir.path().join("majority.wasm")).unwrap();
    std::fs::copy(plugin("solver"), dir.path().join("solver.wasm")).unwrap();
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    assert!(reg.failures().is_empty(), "{:?}", reg.failures());
    let mut seen: Vec<(String, String)> = reg
        .list()
        .into_iter()
        .map(|p| (p.name, p.contract))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("majority".to_string(), "0.1".to_string()),
            ("quorum".to_string(), "0.2".to_string()),
            ("solver".to_string(), "0.1".to_string()),
        ]
    );
}
