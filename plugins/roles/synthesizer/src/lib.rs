//! `synthesizer`: merges the decided outputs of a task's dependencies (read
//! from the blackboard) into one final answer to the task.

use conclave_sdk::config::Sampling;
use conclave_sdk::prompt;
use conclave_sdk::role::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    sampling: Sampling,
}

struct Synthesizer;

impl Role for Synthesizer {
    fn describe() -> Descriptor {
        Descriptor {
            name: "synthesizer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![Capability::Llm, Capability::Blackboard, Capability::Log],
            description: "Merges the outputs of dependencies into one answer.".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        let c: Config = task.parse_config()?;
        let kind = task.kind();
        let mut parts = String::new();
        for key in blackboard::keys() {
            if let Some(v) = blackboard::read(&key) {
                parts.push_str(&format!("[{key}]\n{v}\n\n"));
            }
        }
        if parts.is_empty() {
            return Err(PluginError::InvalidInput(
                "nothing to synthesise: the task has no decided dependencies".into(),
            ));
        }
        let req = request_with(
            vec![
                (
                    "system".into(),
                    format!(
                        "You combine partial results into one answer to the original question. {}",
                        prompt::answer_format(kind)
                    ),
                ),
                (
                    "user".into(),
                    format!(
                        "Original question:\n{}\n\nPartial results:\n{parts}",
                        task.prompt
                    ),
                ),
            ],
            &c.sampling,
        );
        ask(&task, &req, None).map(Outcome::Candidate)
    }
}

export_role!(Synthesizer);
