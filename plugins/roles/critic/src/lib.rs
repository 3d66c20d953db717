//! `critic`: finds the flaw in a candidate answer and proposes a fix.
//!
//! The candidate to criticise is the last item of `task.feedback` (the host
//! puts the previous round's answer there), or the blackboard entry named by
//! `candidate_key`. The critic's output is itself a candidate: its text is the
//! critique and its answer the corrected final answer (the same answer when
//! the critic finds no flaw).

use conclave_sdk::answer::extract;
use conclave_sdk::prompt;
use conclave_sdk::role::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    tags: Vec<String>,
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
        let mut req = request(vec![
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
        ]);
        req.temperature = c.temperature;
        req.max_tokens = c.max_tokens;
        req.route.tags = c.tags.clone();
        let reply = chat(&req).map_err(|e| PluginError::Model(format!("{e:?}")))?;
        let answer = extract(&reply.text, kind)
            .or_else(|| extract(&proposal, kind))
            .unwrap_or_default();
        Ok(Outcome::Candidate(Candidate {
            replica: task.replica,
            node: reply.node,
            answer,
            text: reply.text,
            confidence: None,
            ranking: Vec::new(),
        }))
    }
}

export_role!(Critic);
