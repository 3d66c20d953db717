//! `{{name}}`: a Conclave verifier (`wit/conclave.wit`, world `verifier`).
//! Build: `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/{{crate}}.wasm`. Test: `cargo test`.

// The Conclave SDK's helpers, vendored as source: plain Rust with no host
// calls, so `cargo test` runs them natively. Not every plugin uses them all.
#[allow(dead_code)]
mod answer;
#[allow(dead_code)]
mod config;
#[allow(dead_code)]
mod prompt;
#[allow(dead_code)]
mod vote;

wit_bindgen::generate!({ path: "wit", world: "verifier", generate_all });

// The world's own types (`Descriptor`, `Task`, `Candidate`, `Verdict`,
// `PluginError`) are in scope already; these are the rest it needs.
use conclave::plugin0_1_0::types::{AnswerKind, Capability, PluginKind};

struct {{Ident}};

impl Guest for {{Ident}} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Verifier,
            capabilities: vec![Capability::Log],
            description: "{{description}}"
                .into(),
        }
    }

    fn verify(task: Task, candidate: Candidate) -> Result<Verdict, PluginError> {
        Ok(judge(&task, &candidate))
    }
}

/// The helpers' name for a WIT answer kind.
fn kind(k: AnswerKind) -> answer::Kind {
    match k {
        AnswerKind::Number => answer::Kind::Number,
        AnswerKind::Choice => answer::Kind::Choice,
        AnswerKind::Text => answer::Kind::Text,
    }
}

/// Passes a candidate whose text states an answer of the expected kind that
/// agrees with the candidate's answer.
fn judge(task: &Task, candidate: &Candidate) -> Verdict {
    let k = kind(task.answer_kind);
    let (pass, reason) = match answer::extract(&candidate.text, k) {
        None => (false, format!("the text states no {k} answer")),
        Some(found) if answer::same(&found, &candidate.answer, k) => {
            (true, format!("the text states {found:?}"))
        }
        Some(found) => (
            false,
            format!("the text states {found:?}, not {:?}", candidate.answer),
        ),
    };
    Verdict {
        verifier: "{{name}}".into(),
        pass,
        score: if pass { 1.0 } else { 0.0 },
        reason,
    }
}

export!({{Ident}});

#[cfg(test)]
mod tests {
    //! The judgement on hand-made candidates, natively.
    use super::*;

    fn task() -> Task {
        Task {
            id: "t".into(),
            run_id: "r".into(),
            prompt: "What is 2 + 2?".into(),
            answer_kind: AnswerKind::Number,
            round: 0,
            replica: 0,
            replicas: 1,
            feedback: Vec::new(),
            config: "{}".into(),
            checker: None,
        }
    }

    fn candidate(answer: &str, text: &str) -> Candidate {
        Candidate {
            replica: 0,
            node: String::new(),
            answer: answer.into(),
            text: text.into(),
            confidence: None,
            ranking: Vec::new(),
        }
    }

    #[test]
    fn a_stated_matching_answer_passes() {
        let v = judge(&task(), &candidate("4", "2 + 2 = 4\nAnswer: 4"));
        assert!(v.pass && v.score == 1.0, "{}", v.reason);
    }

    #[test]
    fn a_missing_or_different_answer_fails() {
        let v = judge(&task(), &candidate("4", "I am not sure."));
        assert!(!v.pass && v.reason.contains("no number"), "{}", v.reason);
        let v = judge(&task(), &candidate("4", "Answer: 5"));
        assert!(!v.pass && v.reason.contains("\"5\""), "{}", v.reason);
    }
}
