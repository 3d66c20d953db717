//! The SDK's helpers against the cases shared with the Python and
//! JavaScript helpers (`sdk/cases/helpers.json`): the three must agree, and
//! this is the side the expected values were taken from.

use conclave_sdk::answer::{self, Kind};
use conclave_sdk::{prompt, vote};
use serde_json::Value;

fn cases(section: &str) -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cases/helpers.json");
    let text = std::fs::read_to_string(path).expect("sdk/cases/helpers.json is readable");
    let all: Value = serde_json::from_str(&text).expect("sdk/cases/helpers.json is JSON");
    let list = all[section].as_array().cloned().unwrap_or_default();
    assert!(!list.is_empty(), "no {section} cases");
    list
}

fn kind(v: &Value) -> Kind {
    match v.as_str() {
        Some("number") => Kind::Number,
        Some("choice") => Kind::Choice,
        Some("text") => Kind::Text,
        other => panic!("unknown kind {other:?}"),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().expect("a string")
}

fn strings(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).expect("a list of strings")
}

fn n(v: &Value) -> u32 {
    v.as_u64().expect("a count") as u32
}

fn assert_counts(got: &[vote::Count], expected: &Value, what: &str) {
    let expected = expected.as_array().expect("counts");
    assert_eq!(got.len(), expected.len(), "{what}: {got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(
            (g.answer.as_str(), g.votes),
            (s(&e["answer"]), n(&e["votes"])),
            "{what}"
        );
        assert!(
            (g.weight - e["weight"].as_f64().unwrap()).abs() <= 1e-12,
            "{what}"
        );
        assert!(
            (g.score - e["score"].as_f64().unwrap()).abs() <= 1e-12,
            "{what}"
        );
    }
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    serde_json::from_value(v.clone()).expect("[role, content] pairs")
}

#[test]
fn extract_gives_the_expected_answer() {
    for c in cases("extract") {
        let got = answer::extract(s(&c["text"]), kind(&c["kind"]));
        assert_eq!(got.as_deref(), c["expected"].as_str(), "{c}");
    }
}

#[test]
fn normalize_gives_the_expected_spelling() {
    for c in cases("normalize") {
        let k = kind(&c["kind"]);
        assert_eq!(
            answer::normalize(s(&c["answer"]), k),
            s(&c["expected"]),
            "{c}"
        );
        assert!(answer::same(s(&c["answer"]), s(&c["expected"]), k), "{c}");
    }
}

#[test]
fn tally_and_borda_give_the_expected_counts() {
    for c in cases("tally") {
        let mut votes: Vec<vote::Vote> = c["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| vote::Vote {
                answer: s(&v["answer"]).into(),
                weight: v["weight"].as_f64().unwrap(),
                score: v["score"].as_f64().unwrap(),
            })
            .collect();
        assert_counts(&vote::tally(&votes), &c["expected"], &c.to_string());
        votes.reverse();
        assert_counts(&vote::tally(&votes), &c["expected"], &c.to_string());
    }
    for c in cases("borda") {
        let rankings: Vec<Vec<String>> = serde_json::from_value(c["rankings"].clone()).unwrap();
        assert_counts(&vote::borda(&rankings), &c["expected"], &c.to_string());
    }
}

#[test]
fn quorum_and_posterior_give_the_expected_numbers() {
    for c in cases("meets_share") {
        let got = vote::meets_share(n(&c["votes"]), n(&c["total"]), c["share"].as_f64().unwrap());
        assert_eq!(Some(got), c["expected"].as_bool(), "{c}");
    }
    for c in cases("leader_posterior") {
        let got = vote::leader_posterior(n(&c["leader"]), n(&c["runner_up"]));
        assert!(
            (got - c["expected"].as_f64().unwrap()).abs() <= 1e-12,
            "{c}: {got}"
        );
    }
    for c in cases("samples_to_reach") {
        let got = vote::samples_to_reach(
            n(&c["leader"]),
            n(&c["runner_up"]),
            c["threshold"].as_f64().unwrap(),
            n(&c["left"]),
        );
        assert_eq!(got, n(&c["expected"]), "{c}");
    }
}

#[test]
fn prompts_are_the_expected_text() {
    for c in cases("solve") {
        let got = prompt::solve(s(&c["question"]), kind(&c["kind"]));
        assert_eq!(got, pairs(&c["expected"]), "{c}");
    }
    for c in cases("revise") {
        let got = prompt::revise(
            s(&c["question"]),
            kind(&c["kind"]),
            &strings(&c["feedback"]),
        );
        assert_eq!(got, pairs(&c["expected"]), "{c}");
    }
    for c in cases("with_choices") {
        let got = prompt::with_choices(s(&c["question"]), &strings(&c["choices"]));
        assert_eq!(got, s(&c["expected"]), "{c}");
    }
}
