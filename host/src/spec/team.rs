//! Whole team specs: `[team]`, `[[node]]`, `[[plugin]]` and `[[task]]`.
//!
//! ```toml
//! [team]
//! name = "self-consistency"
//!
//! [[node]]                 # see crate::model::node
//! name = "smol"
//! backend = "embedded"
//! path = "../models/SmolLM2-135M-Instruct.Q4_1.gguf"
//!
//! [[plugin]]
//! name = "solver"          # a built-in, or any name with `path = "x.wasm"`
//! grants = ["llm"]
//! config = { sampling = { temperature = 0.8 } }
//!
//! [[task]]
//! id = "answer"
//! role = "solver"
//! replicas = 5
//! verifiers = ["answer-format"]
//! voter = "majority"
//! answer_kind = "number"
//! ```
//!
//! Everything is checked at load, before any model is called: unknown keys
//! (with the nearest valid key), unknown plugins, voters that are not voters,
//! dependency cycles, zero budgets. Errors name the file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{line_col, parse_nodes, table_position, SpecError};
use crate::model::node::{suggest, NodeSpec};
use crate::plugin::{AnswerKind, Capability, SandboxLimits};

/// `[team]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where built-in plugins are looked up (default: the runtime's).
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
}

/// `[[plugin]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    pub name: String,
    /// A component file; absent means the built-in of this name.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Given to the plugin as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Host imports granted (`log` is always granted).
    #[serde(default)]
    pub grants: Vec<Capability>,
    #[serde(default)]
    pub limits: Option<SandboxLimits>,
}

/// `[[task]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    pub id: String,
    pub role: String,
    /// The prompt; `{question}` stands for the job's question. Default:
    /// the question itself.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub verifiers: Vec<String>,
    pub voter: String,
    #[serde(default = "default_kind")]
    pub answer_kind: String,
    /// Most samples over all rounds (default: `replicas`).
    #[serde(default)]
    pub max_samples: Option<u32>,
    #[serde(default = "one")]
    pub max_rounds: u32,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

fn one() -> u32 {
    1
}
fn default_kind() -> String {
    "text".into()
}

/// A checked team spec.
#[derive(Clone, Debug)]
pub struct TeamSpec {
    pub path: PathBuf,
    pub team: TeamSection,
    pub nodes: Vec<NodeSpec>,
    pub plugins: Vec<PluginSection>,
    /// In dependency order.
    pub tasks: Vec<TaskSection>,
}

/// Parses an answer kind name.
pub fn answer_kind(s: &str) -> Option<AnswerKind> {
    match s {
        "number" => Some(AnswerKind::Number),
        "choice" => Some(AnswerKind::Choice),
        "text" => Some(AnswerKind::Text),
        _ => None,
    }
}

const TOP_KEYS: [&str; 4] = ["team", "node", "plugin", "task"];
const PLUGIN_KEYS: [&str; 5] = ["name", "path", "config", "grants", "limits"];
const TASK_KEYS: [&str; 11] = [
    "id",
    "role",
    "prompt",
    "replicas",
    "verifiers",
    "voter",
    "answer_kind",
    "max_samples",
    "max_rounds",
    "depends_on",
    "__",
];

fn unknown_key(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

impl TeamSpec {
    /// Reads and checks the spec at `path`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks spec `text` (read from `path`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let syntax = |line: usize, column: usize, message: String| SpecError::Syntax {
            path: path.into(),
            line,
            column,
            message,
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (l, c) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            syntax(l, c, e.message().trim().to_string())
        })?;
        for key in doc.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                let hint = suggest(key, &TOP_KEYS)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                let (l, c) = find_key(text, key);
                return Err(syntax(l, c, format!("unknown section `{key}`{hint}")));
            }
        }
        let team: TeamSection = match doc.get("team") {
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                let (l, c) = find_key(text, "team");
                syntax(l, c, format!("[team]: {}", e.message().trim()))
            })?,
            None => TeamSection::default(),
        };
        let nodes = parse_nodes(text, path)?;
        let array = |name: &str| -> Vec<toml::Value> {
            doc.get(name)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let section_err = |array_name: &str, i: usize, field: &str, message: String| {
            let (l, c) = table_position(text, array_name, i, field);
            syntax(l, c, message)
        };
        let typed = |array_name: &str, keys: &[&str], i: usize, e: toml::de::Error| {
            let msg = e.message().trim().to_string();
            match unknown_key(&msg) {
                Some(k) => {
                    let hint = suggest(&k, keys)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    section_err(
                        array_name,
                        i,
                        &k,
                        format!("[[{array_name}]] #{}: unknown key `{k}`{hint}", i + 1),
                    )
                }
                None => section_err(
                    array_name,
                    i,
                    "",
                    format!("[[{array_name}]] #{}: {msg}", i + 1),
                ),
            }
        };
        let mut plugins = Vec::new();
        for (i, v) in array("plugin").into_iter().enumerate() {
            let p: PluginSection = v
                .try_into()
                .map_err(|e| typed("plugin", &PLUGIN_KEYS, i, e))?;
            if plugins.iter().any(|q: &PluginSection| q.name == p.name) {
                return Err(section_err(
                    "plugin",
                    i,
                    "name",
                    format!("plugin `{}` is declared twice", p.name),
                ));
            }
            plugins.push(p);
        }
        let mut tasks: Vec<TaskSection> = Vec::new();
        for (i, v) in array("task").into_iter().enumerate() {
            let t: TaskSection = v.try_into().map_err(|e| typed("task", &TASK_KEYS, i, e))?;
            let err = |field: &str, m: String| {
                section_err("task", i, field, format!("task `{}`: {m}", t.id))
            };
            if answer_kind(&t.answer_kind).is_none() {
                return Err(err(
                    "answer_kind",
                    format!(
                        "answer_kind {:?} is not number, choice or text",
                        t.answer_kind
                    ),
                ));
            }
            for (field, v) in [
                ("replicas", t.replicas),
                ("max_rounds", t.max_rounds),
                ("max_samples", t.max_samples.unwrap_or(1)),
            ] {
                if v == 0 {
                    return Err(err(
                        field,
                        format!("`{field}` must be at least 1 (a budget of zero can do nothing)"),
                    ));
                }
            }
            if t.max_samples.is_some_and(|m| m < t.replicas) {
                return Err(err(
                    "max_samples",
                    "`max_samples` is below `replicas`".into(),
                ));
            }
            if tasks.iter().any(|q| q.id == t.id) {
                return Err(err("id", "another task has this id".into()));
            }
            tasks.push(t);
        }
        if tasks.is_empty() {
            return Err(syntax(1, 1, "the spec has no [[task]]".into()));
        }
        // References between tasks and to plugins.
        let builtin_kinds: BTreeMap<&str, &str> = [
            ("solver", "role"),
            ("critic", "role"),
            ("coordinator", "role"),
            ("synthesizer", "role"),
            ("answer-format", "verifier"),
            ("numeric-check", "verifier"),
            ("llm-judge", "verifier"),
            ("majority", "voter"),
            ("weighted", "voter"),
            ("quorum", "voter"),
            ("borda", "voter"),
        ]
        .into_iter()
        .collect();
        let declared: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        // Plugins loaded from a file: their kind is checked when loaded.
        let custom: Vec<&str> = plugins
            .iter()
            .filter(|p| p.path.is_some())
            .map(|p| p.name.as_str())
            .collect();
        let known: Vec<&str> = declared
            .iter()
            .copied()
            .chain(builtin_kinds.keys().copied())
            .collect();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        for (i, t) in tasks.iter().enumerate() {
            let err = |field: &str, m: String| {
                section_err("task", i, field, format!("task `{}`: {m}", t.id))
            };
            let check = |field: &str, name: &str, kind: &str| -> Result<(), SpecError> {
                if !known.contains(&name) {
                    let hint = suggest(name, &known)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    return Err(err(field, format!("no plugin named `{name}`{hint}")));
                }
                if let Some(k) = builtin_kinds.get(name).filter(|_| !custom.contains(&name)) {
                    if *k != kind {
                        return Err(err(field, format!("`{name}` is a {k}, not a {kind}")));
                    }
                }
                Ok(())
            };
            check("role", &t.role, "role")?;
            check("voter", &t.voter, "voter")?;
            for v in &t.verifiers {
                check("verifiers", v, "verifier")?;
            }
            for d in &t.depends_on {
                if !ids.contains(&d.as_str()) {
                    return Err(err("depends_on", format!("depends on unknown task `{d}`")));
                }
            }
        }
        // Dependency order, refusing cycles.
        let mut ordered: Vec<TaskSection> = Vec::new();
        let mut left = tasks.clone();
        while !left.is_empty() {
            let before = left.len();
            let (ready, rest): (Vec<_>, Vec<_>) = left.into_iter().partition(|t| {
                t.depends_on
                    .iter()
                    .all(|d| ordered.iter().any(|o| &o.id == d))
            });
            ordered.extend(ready);
            left = rest;
            if left.len() == before {
                let i = tasks.iter().position(|t| t.id == left[0].id).unwrap_or(0);
                let cycle: Vec<&str> = left.iter().map(|t| t.id.as_str()).collect();
                return Err(section_err(
                    "task",
                    i,
                    "depends_on",
                    format!("the dependencies of tasks {cycle:?} form a cycle"),
                ));
            }
        }
        if nodes.is_empty() && tasks.iter().any(|_| true) {
            return Err(syntax(
                1,
                1,
                "the spec has no [[node]]: a role needs a model node to serve it".into(),
            ));
        }
        Ok(TeamSpec {
            path: path.into(),
            team,
            nodes,
            plugins,
            tasks: ordered,
        })
    }
}

/// Where `key` first appears as a table or a key.
fn find_key(text: &str, key: &str) -> (usize, usize) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let bare = t
            .trim_start_matches('[')
            .split([']', '=', ' '])
            .next()
            .unwrap_or("");
        if bare == key {
            return line_col(text, offset + line.len() - t.len());
        }
        offset += line.len();
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    //! Every validation error, with its message and position.
    use super::*;

    const OK: &str = "[team]\nname = \"t\"\n\n[[node]]\nname = \"s\"\nbackend = \"sim\"\n\n[[plugin]]\nname = \"solver\"\ngrants = [\"llm\"]\n\n[[task]]\nid = \"a\"\nrole = \"solver\"\nvoter = \"majority\"\nreplicas = 3\n";

    fn err(text: &str) -> String {
        TeamSpec::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_spec_loads() {
        let s = TeamSpec::parse(OK, Path::new("t.toml")).unwrap();
        assert_eq!(
            (
                s.team.name.as_str(),
                s.tasks.len(),
                s.plugins[0].grants.clone()
            ),
            ("t", 1, vec![Capability::Llm])
        );
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let e = err(&OK.replace("replicas = 3", "replica = 3"));
        assert!(
            e.starts_with(
                "t.toml:16:1: [[task]] #1: unknown key `replica`; did you mean `replicas`?"
            ),
            "{e}"
        );
        let e = err(&format!("{OK}\n[tasks]\n"));
        assert!(
            e.contains("unknown section `tasks` (did you mean `task`?)"),
            "{e}"
        );
    }

    #[test]
    fn references_are_checked() {
        let e = err(&OK.replace("voter = \"majority\"", "voter = \"majorty\""));
        assert!(
            e.starts_with(
                "t.toml:15:1: task `a`: no plugin named `majorty`; did you mean `majority`?"
            ),
            "{e}"
        );
        let e = err(&OK.replace("voter = \"majority\"", "voter = \"solver\""));
        assert!(e.contains("`solver` is a role, not a voter"), "{e}");
    }

    #[test]
    fn cycles_and_zero_budgets_are_caught() {
        let two = OK.replace("replicas = 3\n", "replicas = 3\ndepends_on = [\"b\"]\n")
            + "\n[[task]]\nid = \"b\"\nrole = \"solver\"\nvoter = \"majority\"\ndepends_on = [\"a\"]\n";
        assert!(err(&two).contains("form a cycle"), "{}", err(&two));
        let e = err(&OK.replace("replicas = 3", "replicas = 0"));
        assert!(
            e.starts_with("t.toml:16:1: task `a`: `replicas` must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn a_role_needs_a_node() {
        let e = err(&OK.replace("[[node]]\nname = \"s\"\nbackend = \"sim\"\n", ""));
        assert!(e.contains("no [[node]]"), "{e}");
    }
}
