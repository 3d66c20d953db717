//! `coordinator`: splits a task into a plan of subtasks with dependencies.
//!
//! The model is asked for one subtask per line, `N. [after M, K] instruction`.
//! Lines that do not parse are skipped, dependencies on unknown or later
//! steps are dropped (so the plan is always a DAG), and when nothing usable
//! comes back the plan is the task itself as a single subtask. A fixed plan
//! can be given in the config (`plan`), in which case no model is called.

use conclave_sdk::config::Sampling;
use conclave_sdk::role::*;

#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct FixedSubtask {
    id: String,
    prompt: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    depends_on: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    max_subtasks: usize,
    /// Role for every subtask (empty: the team's default solver).
    role: String,
    /// Temperature, token limit and routing (`tags`, `node`).
    sampling: Sampling,
    plan: Option<Vec<FixedSubtask>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_subtasks: 5,
            role: String::new(),
            sampling: Sampling {
                temperature: Some(0.2),
                max_tokens: Some(400),
                ..Default::default()
            },
            plan: None,
        }
    }
}

/// Parses `N. [after M, K] text` lines into subtasks `s1..sN`.
fn parse_plan(text: &str, max: usize, role: &str) -> Vec<Subtask> {
    let mut subtasks: Vec<Subtask> = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches(['-', '*', ' ']);
        let digits: String = line.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            continue;
        }
        let rest = line[digits.len()..].trim_start_matches(['.', ')', ':', ' ']);
        let (deps, instruction) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((d, i)) => (d, i),
                None => ("", rest),
            },
            None => ("", rest),
        };
        let instruction = instruction.trim();
        if instruction.is_empty() {
            continue;
        }
        let id = format!("s{}", subtasks.len() + 1);
        let depends_on = deps
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|d| d.parse::<usize>().ok())
            .filter(|d| *d >= 1 && *d <= subtasks.len())
            .map(|d| format!("s{d}"))
            .collect();
        subtasks.push(Subtask {
            id,
            prompt: instruction.to_string(),
            role: role.to_string(),
            depends_on,
        });
        if subtasks.len() == max {
            break;
        }
    }
    subtasks
}

struct Coordinator;

impl Role for Coordinator {
    fn describe() -> Descriptor {
        Descriptor {
            name: "coordinator".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![Capability::Llm, Capability::Log],
            description: "Splits a task into a plan of subtasks with dependencies.".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        let c: Config = task.parse_config()?;
        if c.max_subtasks == 0 {
            return Err(PluginError::InvalidConfig(
                "max_subtasks must be at least 1".into(),
            ));
        }
        if let Some(plan) = c.plan {
            return Ok(Outcome::Plan(Plan {
                subtasks: plan
                    .into_iter()
                    .map(|s| Subtask {
                        id: s.id,
                        prompt: s.prompt,
                        role: s.role,
                        depends_on: s.depends_on,
                    })
                    .collect(),
            }));
        }
        let req = request_with(vec![
            (
                "system".into(),
                format!(
                    "You are a planner. Split the task into at most {} smaller steps. Write one step \
                     per line as `N. [after M] instruction`, where the bracket lists the steps it needs \
                     (write `[after]` when it needs none). Write nothing else.",
                    c.max_subtasks
                ),
            ),
            ("user".into(), task.prompt.clone()),
        ], &c.sampling);
        let reply = chat(&req).map_err(|e| PluginError::Model(format!("{e:?}")))?;
        let mut subtasks = parse_plan(&reply.text, c.max_subtasks, &c.role);
        if subtasks.is_empty() {
            subtasks.push(Subtask {
                id: "s1".into(),
                prompt: task.prompt.clone(),
                role: c.role.clone(),
                depends_on: vec![],
            });
        }
        Ok(Outcome::Plan(Plan { subtasks }))
    }
}

export_role!(Coordinator);

#[cfg(test)]
mod tests {
    //! Plan parsing: numbering, dependencies, junk lines.
    use super::*;

    #[test]
    fn parses_steps_and_drops_forward_dependencies() {
        let p = parse_plan(
            "Plan:\n1. [after] add\n2) [after 1] double it\n3. [after 1, 2, 7] report\n",
            5,
            "",
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].depends_on, vec!["s1"]);
        assert_eq!(p[2].depends_on, vec!["s1", "s2"]);
        assert_eq!(p[2].prompt, "report");
        assert_eq!(parse_plan("1. a\n2. b\n3. c", 2, "").len(), 2);
        assert!(parse_plan("no steps", 5, "").is_empty());
    }
}
