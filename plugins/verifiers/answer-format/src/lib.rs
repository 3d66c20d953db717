//! `answer-format`: passes a candidate when an answer of the task's kind can
//! be extracted from its text (and, for multiple choice, is one of the allowed
//! letters).

use conclave_sdk::answer::{extract, Kind};
use conclave_sdk::verifier::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Allowed letters for multiple-choice tasks.
    choices: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            choices: "ABCD".into(),
        }
    }
}

struct AnswerFormat;

impl Verifier for AnswerFormat {
    fn describe() -> Descriptor {
        Descriptor {
            name: "answer-format".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Verifier,
            capabilities: vec![Capability::Log],
            description: "Passes when an answer of the expected kind can be extracted.".into(),
        }
    }

    fn verify(task: Task, candidate: Candidate) -> Result<Verdict, PluginError> {
        let c: Config = task.parse_config()?;
        let kind = task.kind();
        let source = if candidate.text.trim().is_empty() {
            &candidate.answer
        } else {
            &candidate.text
        };
        let verdict = |pass: bool, reason: String| Verdict {
            verifier: "answer-format".into(),
            pass,
            score: if pass { 1.0 } else { 0.0 },
            reason,
        };
        Ok(match extract(source, kind) {
            None => verdict(false, format!("no {kind} answer could be extracted")),
            Some(a) if kind == Kind::Choice && !c.choices.contains(a.as_str()) => {
                verdict(false, format!("choice {a} is not one of {}", c.choices))
            }
            Some(a) => verdict(true, format!("{kind} answer {a:?} found")),
        })
    }
}

export_verifier!(AnswerFormat);
