//! Checks of a team spec that look past one table: budgets of zero, plugins
//! pinned to nodes that do not exist, and where a key sits in the text.

use std::time::Duration;

use super::super::line_col;
use super::{PluginSection, TeamSection};
use crate::model::node::{suggest, NodeSpec};

/// The first budget of zero among a scope's limits.
pub(super) fn zero_budget(
    tokens: Option<u64>,
    cost: Option<f64>,
    wall: Option<Duration>,
) -> Option<&'static str> {
    if tokens == Some(0) {
        Some("max_tokens")
    } else if cost.is_some_and(|c| c <= 0.0) {
        Some("max_cost")
    } else if wall.is_some_and(|w| w.is_zero()) {
        Some("max_wall")
    } else {
        None
    }
}

/// The first cap of `[team]` that cannot work, with why: zero where zero
/// would stop everything, or past its ceiling.
pub(super) fn bad_cap(t: &TeamSection) -> Option<(&'static str, String)> {
    let zero = "must be at least 1 (a cap of zero can do nothing)".to_string();
    let must_be_positive: [(&'static str, Option<u64>); 14] = [
        ("bus_capacity", t.bus_capacity.map(|v| v as u64)),
        ("max_calls", t.max_calls),
        ("max_plan_subtasks", t.max_plan_subtasks.map(|v| v as u64)),
        ("max_job_tasks", t.max_job_tasks.map(|v| v as u64)),
        (
            "max_plan_prompt_bytes",
            t.max_plan_prompt_bytes.map(|v| v as u64),
        ),
        ("max_message_bytes", t.max_message_bytes.map(|v| v as u64)),
        ("max_mailbox_bytes", t.max_mailbox_bytes.map(|v| v as u64)),
        ("max_bus_bytes", t.max_bus_bytes),
        ("max_bus_messages", t.max_bus_messages),
        (
            "max_messages_per_call",
            t.max_messages_per_call.map(u64::from),
        ),
        (
            "max_calls_per_plugin_call",
            t.max_calls_per_plugin_call.map(u64::from),
        ),
        ("max_task_calls", t.max_task_calls),
        ("max_request_bytes", t.max_request_bytes.map(|v| v as u64)),
        (
            "max_request_messages",
            t.max_request_messages.map(|v| v as u64),
        ),
    ];
    if let Some((key, _)) = must_be_positive.iter().find(|(_, v)| *v == Some(0)) {
        return Some((key, zero));
    }
    let ceiling = crate::plugin::checks::PLAN_SUBTASKS_CEILING;
    if let Some(n) = t.max_plan_subtasks.filter(|n| *n > ceiling) {
        return Some((
            "max_plan_subtasks",
            format!("is {n}; no team takes more than {ceiling} subtasks in one plan"),
        ));
    }
    None
}

/// Why no node can serve a plugin's pinned node or tags, if none can.
pub(super) fn unroutable(p: &PluginSection, nodes: &[NodeSpec]) -> Option<String> {
    let sampling = p.config.as_ref()?.get("sampling")?.as_table()?;
    if let Some(n) = sampling
        .get("node")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty())
    {
        if !nodes.iter().any(|x| x.name == n) {
            let names: Vec<&str> = nodes.iter().map(|x| x.name.as_str()).collect();
            let hint = suggest(n, &names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Some(format!("no node named `{n}` can serve it{hint}"));
        }
    }
    let tags: Vec<&str> = sampling
        .get("tags")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_default();
    if !tags.is_empty()
        && !nodes
            .iter()
            .any(|x| tags.iter().all(|t| x.tags.iter().any(|y| y == t)))
    {
        return Some(format!("no node has all the tags {tags:?} it asks for"));
    }
    None
}

/// Where `key` first appears as a table or a key.
pub(super) fn find_key(text: &str, key: &str) -> (usize, usize) {
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

/// The spec's sections as they are read from its text, one probe per
/// section: deserialized from the text, not from a `toml::Value`, an error
/// keeps the span of the value (or unknown key) it is about.
#[derive(serde::Deserialize)]
pub(super) struct TeamProbe {
    #[serde(default)]
    #[allow(dead_code)] // read only for its errors
    team: Option<TeamSection>,
}

#[derive(serde::Deserialize)]
pub(super) struct PluginProbe {
    #[serde(default)]
    #[allow(dead_code)] // read only for its errors
    plugin: Vec<PluginSection>,
}

#[derive(serde::Deserialize)]
pub(super) struct TaskProbe {
    #[serde(default)]
    #[allow(dead_code)] // read only for its errors
    task: Vec<super::TaskSection>,
}

/// Where the value that deserializing probe `P` from `text` refuses lies:
/// line, column and the key on that line. The sections are converted from
/// a parsed `toml::Value`, which keeps no spans, so a refused value is
/// looked up again here, from the text, to name its line and key.
pub(super) fn refused_value<P: serde::de::DeserializeOwned>(
    text: &str,
) -> Option<(usize, usize, Option<String>)> {
    let start = toml::from_str::<P>(text).err()?.span()?.start;
    let (line, column) = line_col(text, start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let key = text[line_start..]
        .lines()
        .next()
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    Some((line, column, key))
}

/// `message`, led by the key it is about unless it names the key already.
pub(super) fn about_key(key: Option<&str>, message: &str) -> String {
    match key {
        Some(k) if !message.contains(&format!("`{k}`")) => format!("`{k}`: {message}"),
        _ => message.to_string(),
    }
}
