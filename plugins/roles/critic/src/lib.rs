//! `critic`: finds the flaw in a candidate answer and proposes a fix.
//!
//! The candidate to criticise is the last item of `task.feedback` (the host
//! puts the previous round's answer there), or the blackboard entry named by
//! `candidate_key`. The critic's output is itself a candidate: its text is the
//! critique and its answer the corrected final answer (the same answer when
//! the critic finds no flaw).

use conclave_sdk::config::Sampling;
use conclave_sdk::prompt;
use conclave_sdk::role::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    sampling: Sampling,
    /// Read the candidate from this blackboard key instead of the feedback.
    candidate_key: Option<String>,
}

struct Critic;

impl Role for Critic {
    fn describe() -> Descriptor {
        Descriptor {
            name: "critic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![Capability::Llm, Capability::Blackboard, Capability::Log],
            description: "Finds the flaw in a candidate answer and proposes a fix.".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        let c: Config = task.parse_config()?;
        let kind = task.kind();
        let proposal = match &c.candidate_key {
            Some(key) => blackboard::read(key).ok_or_else(|| {
                PluginError::InvalidInput(format!("blackboard has no entry {key:?} to criticise"))
            })?,
            None => task.feedback.last().cloned().ok_or_else(|| {
                PluginError::InvalidInput("no candidate to criticise: feedback is empty".into())
            })?,
        };
        let req = request_with(
            vec![
                (
                    "system".into(),
                    format!(
                    "You are a critical reviewer. Find the first flaw in the proposed solution, \
                     if any, and explain how to fix it. {}",
                    prompt::answer_format(kind)
                ),
                ),
                (
                    "user".into(),
                    format!(
                        "Question:\n{}\n\nProposed solution:\n{proposal}",
                        task.prompt
                    ),
                ),
            ],
            &c.sampling,
        );
        ask(&task, &req, Some(&proposal)).map(Outcome::Candidate)
    }
}

export_role!(Critic);
