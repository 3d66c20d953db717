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

use super::{line_col, parse_nodes, table_position, SpecError};
use crate::model::node::{suggest, NodeSpec};
use crate::model::RouterConfig;
use crate::plugin::AnswerKind;

mod sections;
pub use sections::*;

/// A checked team spec.
#[derive(Clone, Debug)]
pub struct TeamSpec {
    pub path: PathBuf,
    /// The text it was parsed from (journaled with every run).
    pub source: String,
    pub team: TeamSection,
    pub nodes: Vec<NodeSpec>,
    pub plugins: Vec<PluginSection>,
    /// `[router]`: retries, backoff, per-call deadline, hedging, breaker.
    pub router: RouterConfig,
    /// In dependency order.
    pub tasks: Vec<TaskSection>,
    /// `[[index]]`: knowledge bases tasks take passages from.
    pub indexes: Vec<IndexSection>,
}

/// An answer kind's name in a spec.
pub fn kind_name(k: AnswerKind) -> &'static str {
    match k {
        AnswerKind::Number => "number",
        AnswerKind::Choice => "choice",
        AnswerKind::Text => "text",
    }
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

const DAG_KEYS: [&str; 7] = [
    "path",
    "role",
    "voter",
    "verifiers",
    "replicas",
    "answer_kind",
    "prompt",
];

const TOP_KEYS: [&str; 7] = ["team", "node", "plugin", "task", "dag", "router", "index"];
const INDEX_KEYS: [&str; 2] = ["name", "path"];
const PLUGIN_KEYS: [&str; 7] = [
    "name", "path", "builtin", "config", "grants", "limits", "weights",
];
const TASK_KEYS: [&str; 18] = [
    "context",
    "max_calls",
    "debate_rounds",
    "retries",
    "max_tokens",
    "max_cost",
    "max_wall",
    "subtasks",
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
];

fn unknown_key(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

impl TeamSpec {
    /// The tasks as a DAG (before any coordinator adds subtasks).
    pub fn dag(&self) -> crate::dag::Dag {
        crate::dag::Dag::new(
            self.tasks
                .iter()
                .map(|t| crate::dag::DagTask {
                    id: t.id.clone(),
                    title: t.role.clone(),
                    description: String::new(),
                    dependencies: t.depends_on.clone(),
                })
                .collect(),
        )
        .expect("checked at load: unique ids, known dependencies, no cycles")
    }

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
                let (l, c, key) = refused_value::<TeamProbe>(text).unwrap_or_else(|| {
                    let (l, c) = find_key(text, "team");
                    (l, c, None)
                });
                let message = about_key(key.as_deref(), e.message().trim());
                syntax(l, c, format!("[team]: {message}"))
            })?,
            None => TeamSection::default(),
        };
        let router: RouterConfig = match doc.get("router") {
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                let (l, c) = find_key(text, "router");
                syntax(l, c, format!("[router]: {}", e.message().trim()))
            })?,
            None => RouterConfig::default(),
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
        // `at`: where the refused value lies, read again from the text.
        let typed = |array_name: &str,
                     keys: &[&str],
                     i: usize,
                     e: toml::de::Error,
                     at: Option<(usize, usize, Option<String>)>| {
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
                None => match at {
                    Some((l, c, key)) => syntax(
                        l,
                        c,
                        format!(
                            "[[{array_name}]] #{}: {}",
                            i + 1,
                            about_key(key.as_deref(), &msg)
                        ),
                    ),
                    None => section_err(
                        array_name,
                        i,
                        "",
                        format!("[[{array_name}]] #{}: {msg}", i + 1),
                    ),
                },
            }
        };
        let mut plugins = Vec::new();
        for (i, v) in array("plugin").into_iter().enumerate() {
            let mut p: PluginSection = v.try_into().map_err(|e| {
                typed(
                    "plugin",
                    &PLUGIN_KEYS,
                    i,
                    e,
                    refused_value::<PluginProbe>(text),
                )
            })?;
            if let Some(file) = &p.weights {
                let file = path.parent().unwrap_or(Path::new(".")).join(file);
                let err = |m: String| section_err("plugin", i, "weights", m);
                let weights = crate::team::calibrate::Weights::read(&file)
                    .map_err(|e| err(format!("plugin `{}`: weights: {e}", p.name)))?;
                let config = p.config.get_or_insert_with(Default::default);
                if config.contains_key("weights") {
                    return Err(err(format!(
                        "plugin `{}`: give `weights` as a file or in `config`, not both",
                        p.name
                    )));
                }
                let table: toml::Table = weights
                    .by_node()
                    .into_iter()
                    .map(|(n, w)| (n, toml::Value::Float(w)))
                    .collect();
                config.insert("weights".into(), toml::Value::Table(table));
            }
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
        let mut indexes: Vec<IndexSection> = Vec::new();
        for (i, v) in array("index").into_iter().enumerate() {
            let x: IndexSection = v
                .try_into()
                .map_err(|e| typed("index", &INDEX_KEYS, i, e, None))?;
            if indexes.iter().any(|q| q.name == x.name) {
                return Err(section_err(
                    "index",
                    i,
                    "name",
                    format!("index `{}` is declared twice", x.name),
                ));
            }
            indexes.push(x);
        }
        let mut tasks: Vec<TaskSection> = Vec::new();
        for (i, v) in array("task").into_iter().enumerate() {
            let t: TaskSection = v
                .try_into()
                .map_err(|e| typed("task", &TASK_KEYS, i, e, refused_value::<TaskProbe>(text)))?;
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
            if let Some(e) = zero_budget(t.max_tokens, t.max_cost, t.max_wall)
                .or((t.max_calls == Some(0)).then_some("max_calls"))
            {
                return Err(err(
                    e,
                    format!("`{e}` must be above zero (a budget of zero can do nothing)"),
                ));
            }
            if let Some(sub) = &t.subtasks {
                if sub.replicas == 0 {
                    return Err(err(
                        "subtasks",
                        "`subtasks.replicas` must be at least 1".into(),
                    ));
                }
                if answer_kind(&sub.answer_kind).is_none() {
                    return Err(err(
                        "subtasks",
                        format!(
                            "subtasks.answer_kind {:?} is not number, choice or text",
                            sub.answer_kind
                        ),
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
            if let Some(c) = &t.context {
                if !indexes.iter().any(|x| x.name == c.index) {
                    let names: Vec<&str> = indexes.iter().map(|x| x.name.as_str()).collect();
                    let hint = suggest(&c.index, &names)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            if names.is_empty() {
                                "; declare it with [[index]] name and path".into()
                            } else {
                                format!("; the spec declares {}", names.join(", "))
                            }
                        });
                    return Err(err(
                        "context",
                        format!(
                            "`context` names index `{}`, which no [[index]] declares{hint}",
                            c.index
                        ),
                    ));
                }
                if !(1..=20).contains(&c.passages) {
                    return Err(err(
                        "context",
                        format!("`context.passages` must be 1 to 20, not {}", c.passages),
                    ));
                }
            }
            tasks.push(t);
        }
        if let Some(v) = doc.get("dag") {
            let (l, c) = find_key(text, "dag");
            let d: DagSection = v.clone().try_into().map_err(|e: toml::de::Error| {
                let msg = e.message().trim().to_string();
                let hint = unknown_key(&msg)
                    .and_then(|k| suggest(&k, &DAG_KEYS))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                syntax(l, c, format!("[dag]: {msg}{hint}"))
            })?;
            let file = path.parent().unwrap_or(Path::new(".")).join(&d.path);
            let dag =
                crate::dag::Dag::load(&file).map_err(|e| syntax(l, c, format!("[dag]: {e}")))?;
            if answer_kind(&d.answer_kind).is_none() || d.replicas == 0 {
                return Err(syntax(
                    l,
                    c,
                    "[dag]: `replicas` must be at least 1 and `answer_kind` number, choice or text"
                        .into(),
                ));
            }
            let template = d
                .prompt
                .clone()
                .unwrap_or_else(|| "{title}\n\n{description}".into());
            for dt in dag.tasks {
                if tasks.iter().any(|q| q.id == dt.id) {
                    return Err(syntax(
                        l,
                        c,
                        format!("[dag]: task `{}` is also a [[task]]", dt.id),
                    ));
                }
                tasks.push(TaskSection {
                    prompt: Some(
                        template
                            .replace("{title}", &dt.title)
                            .replace("{description}", &dt.description),
                    ),
                    id: dt.id,
                    role: d.role.clone(),
                    replicas: d.replicas,
                    verifiers: d.verifiers.clone(),
                    voter: d.voter.clone(),
                    answer_kind: d.answer_kind.clone(),
                    max_samples: None,
                    max_rounds: 1,
                    depends_on: dt.dependencies,
                    debate_rounds: 0,
                    retries: 1,
                    max_tokens: None,
                    max_cost: None,
                    max_wall: None,
                    max_calls: None,
                    subtasks: None,
                    context: None,
                });
            }
        }
        if tasks.is_empty() {
            return Err(syntax(
                1,
                1,
                "the spec has no [[task]] (nor a [dag])".into(),
            ));
        }
        if let Some(e) = zero_budget(team.max_tokens, team.max_cost, team.max_wall) {
            let (l, c) = find_key(text, e);
            return Err(syntax(
                l,
                c,
                format!("[team]: `{e}` must be above zero (a budget of zero can do nothing)"),
            ));
        }
        for k in &team.trusted_keys {
            if let Err(why) = crate::plugin::signature::PublicKey::parse(k) {
                let (l, c) = find_key(text, "trusted_keys");
                return Err(syntax(l, c, format!("[team]: `trusted_keys`: {why}")));
            }
        }
        if let Some((key, why)) = bad_cap(&team) {
            let (l, c) = find_key(text, key);
            return Err(syntax(l, c, format!("[team]: `{key}` {why}")));
        }
        if let Some(a) = &team.answer {
            if !tasks.iter().any(|t| &t.id == a) {
                let (l, c) = find_key(text, "answer");
                return Err(syntax(
                    l,
                    c,
                    format!("[team]: `answer` names unknown task `{a}`"),
                ));
            }
        }
        // References between tasks and to plugins.
        let builtin_kinds: BTreeMap<&str, &str> = [
            ("solver", "role"),
            ("programmer", "role"),
            ("critic", "role"),
            ("coordinator", "role"),
            ("synthesizer", "role"),
            ("answer-format", "verifier"),
            ("numeric-check", "verifier"),
            ("llm-judge", "verifier"),
            ("majority", "voter"),
            ("weighted", "voter"),
            ("quorum", "voter"),
            ("adaptive", "voter"),
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
        // The kind of a built-in, under its own name or an instance's.
        let mut kinds = builtin_kinds.clone();
        for (i, p) in plugins.iter().enumerate() {
            if let Some(b) = &p.builtin {
                if p.path.is_some() {
                    return Err(section_err(
                        "plugin",
                        i,
                        "builtin",
                        format!("plugin `{}`: give `path` or `builtin`, not both", p.name),
                    ));
                }
                match builtin_kinds.get(b.as_str()) {
                    Some(k) => {
                        kinds.insert(p.name.as_str(), *k);
                    }
                    None => {
                        let names: Vec<&str> = builtin_kinds.keys().copied().collect();
                        let hint = suggest(b, &names)
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_default();
                        return Err(section_err(
                            "plugin",
                            i,
                            "builtin",
                            format!("plugin `{}`: no built-in named `{b}`{hint}", p.name),
                        ));
                    }
                }
            }
        }
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
                if let Some(k) = kinds.get(name).filter(|_| !custom.contains(&name)) {
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
            if let Some(sub) = &t.subtasks {
                check("subtasks", &sub.role, "role")?;
                check("subtasks", &sub.voter, "voter")?;
                for v in &sub.verifiers {
                    check("subtasks", v, "verifier")?;
                }
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
        for (i, p) in plugins.iter().enumerate() {
            if let Some(m) = unroutable(p, &nodes) {
                return Err(section_err(
                    "plugin",
                    i,
                    "config",
                    format!("plugin `{}`: {m}", p.name),
                ));
            }
        }
        Ok(TeamSpec {
            path: path.into(),
            source: text.to_string(),
            team,
            nodes,
            plugins,
            router,
            tasks: ordered,
            indexes,
        })
    }
}

mod checks;
use checks::{
    about_key, bad_cap, find_key, refused_value, unroutable, zero_budget, PluginProbe, TaskProbe,
    TeamProbe,
};

#[cfg(test)]
mod tests;
