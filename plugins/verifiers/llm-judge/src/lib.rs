//! `llm-judge`: asks a model whether the candidate answers the task correctly.
//!
//! The judge is told to end with `VERDICT: correct` or `VERDICT: incorrect`.
//! The verdict's reason is the judge's own explanation (shortened). When the
//! judge gives no recognisable verdict, `on_unclear` decides (`pass` by
//! default, score 0.5) so that a confused judge cannot veto a good answer.

use conclave_sdk::config::Sampling;
use conclave_sdk::verifier::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// `pass` or `fail` when the judge gives no verdict.
    on_unclear: String,
    /// Temperature, token limit and routing (`tags`, `node`).
    sampling: Sampling,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            on_unclear: "pass".into(),
            sampling: Sampling {
                temperature: Some(0.0),
                max_tokens: Some(256),
                ..Default::default()
            },
        }
    }
}

/// Reads the judge's verdict: `Some(true)` correct, `Some(false)` incorrect.
fn read_verdict(text: &str) -> Option<bool> {
    let lower = text.to_lowercase();
    let pos = lower.rfind("verdict")?;
    let rest = &lower[pos..];
    let incorrect = rest.find("incorrect").or_else(|| rest.find("wrong"));
    let correct = rest
        .find("correct")
        .filter(|c| Some(*c) != incorrect.map(|i| i + 2));
    match (correct, incorrect) {
        (_, Some(_)) => Some(false),
        (Some(_), None) => Some(true),
        (None, None) => None,
    }
}

struct LlmJudge;

impl Verifier for LlmJudge {
    fn describe() -> Descriptor {
        Descriptor {
            name: "llm-judge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Verifier,
            capabilities: vec![Capability::Llm, Capability::Log],
            description: "Asks a model whether the candidate is right and why.".into(),
        }
    }

    fn verify(task: Task, candidate: Candidate) -> Result<Verdict, PluginError> {
        let c: Config = task.parse_config()?;
        if c.on_unclear != "pass" && c.on_unclear != "fail" {
            return Err(PluginError::InvalidConfig(format!(
                "on_unclear must be \"pass\" or \"fail\", got {:?}",
                c.on_unclear
            )));
        }
        let req = request_with(
            vec![
            (
                "system".into(),
                "You are a strict examiner. Check the proposed answer to the question. \
                 Explain briefly, then end with exactly `VERDICT: correct` or `VERDICT: incorrect`."
                    .into(),
            ),
            (
                "user".into(),
                format!(
                    "Question:\n{}\n\nProposed answer: {}\n\nReasoning given:\n{}",
                    task.prompt, candidate.answer, candidate.text
                ),
            ),
        ],
            &c.sampling,
        );
        let reply =
            chat(&req).map_err(|e| PluginError::Model(format!("judge call failed: {e:?}")))?;
        let reason: String = reply.text.trim().chars().take(300).collect();
        let (pass, score) = match read_verdict(&reply.text) {
            Some(true) => (true, 1.0),
            Some(false) => (false, 0.0),
            None => (c.on_unclear == "pass", 0.5),
        };
        Ok(Verdict {
            verifier: "llm-judge".into(),
            pass,
            score,
            reason,
        })
    }
}

export_verifier!(LlmJudge);

#[cfg(test)]
mod tests {
    //! Reading the judge's verdict line.
    use super::read_verdict;

    #[test]
    fn verdicts() {
        assert_eq!(read_verdict("fine.\nVERDICT: correct"), Some(true));
        assert_eq!(read_verdict("no.\nVERDICT: incorrect"), Some(false));
        assert_eq!(read_verdict("Verdict - wrong"), Some(false));
        assert_eq!(read_verdict("looks right"), None);
    }
}
