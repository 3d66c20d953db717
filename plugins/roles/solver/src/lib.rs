//! `solver`: reasons step by step and ends with a final answer.
//!
//! Round 0 asks the question; later rounds (debate, critique) add the
//! feedback the host passes in `task.feedback` and, with `use_bus`, the
//! messages waiting in the replica's inbox. Outputs of dependencies (read from
//! the blackboard when `use_blackboard` is set) are given as context.

use conclave_sdk::config::Sampling;
use conclave_sdk::prompt;
use conclave_sdk::role::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Temperature, token limit and routing (`tags`, `node`).
    sampling: Sampling,
    /// Replace the default system prompt.
    system: Option<String>,
    /// Read the inbox for other replicas' answers (needs the `bus` grant).
    use_bus: bool,
    /// Read the dependencies' answers (needs the `blackboard` grant).
    use_blackboard: bool,
}

struct Solver;

impl Role for Solver {
    fn describe() -> Descriptor {
        Descriptor {
            name: "solver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![
                Capability::Llm,
                Capability::Bus,
                Capability::Blackboard,
                Capability::Log,
            ],
            description: "Reasons step by step and ends with a final answer.".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        let c: Config = task.parse_config()?;
        let kind = task.kind();
        let mut question = task.prompt.clone();
        if c.use_blackboard {
            let mut context = String::new();
            for key in blackboard::keys() {
                if let Some(v) = blackboard::read(&key) {
                    context.push_str(&format!("- {key}: {v}\n"));
                }
            }
            if !context.is_empty() {
                question = format!("Results of earlier steps:\n{context}\n{question}");
            }
        }
        let mut feedback = task.feedback.clone();
        if c.use_bus {
            feedback.extend(
                bus::inbox()
                    .into_iter()
                    .map(|m| format!("{}: {}", m.sender, m.body)),
            );
        }
        let mut pairs = prompt::revise(&question, kind, &feedback);
        if let Some(system) = &c.system {
            pairs[0].1 = format!("{system} {}", prompt::answer_format(kind));
        }
        ask(&task, &request_with(pairs, &c.sampling), None).map(Outcome::Candidate)
    }
}

export_role!(Solver);
