//! Checks of a team spec that look past one table: budgets of zero, plugins
//! pinned to nodes that do not exist, and where a key sits in the text.

use std::time::Duration;

use super::super::line_col;
use super::PluginSection;
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
