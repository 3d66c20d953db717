//! Team spec files (TOML): parsing and validation with errors that name the
//! file, line and column.
//!
//! The `[[node]]` tables are parsed here (see [`crate::model::node`] for each
//! backend's fields); [`team`] reads whole team specs: nodes, plugins and
//! tasks; [`config`] holds the typed settings a spec gives the runtime
//! (consensus, task hedging), so that nothing here needs the runtime.

pub mod config;
pub mod team;

use std::path::{Path, PathBuf};

use crate::model::node::{NodeError, NodeSpec};
use crate::model::router::NodeHandle;

/// Why a spec file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a value of the wrong shape.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A node is misconfigured.
    #[error("{}:{line}:{column}: {source}", path.display())]
    Node {
        path: PathBuf,
        line: usize,
        column: usize,
        #[source]
        source: NodeError,
    },
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map(|p| before.len() - p)
        .unwrap_or(before.len() + 1);
    (line, column)
}

/// Where `[[node]]` table number `index` (0-based) starts, and where its
/// `field = ` line is when it has one.
fn node_position(text: &str, index: usize, field: &str) -> (usize, usize) {
    table_position(text, "node", index, field)
}

/// Where `[[array]]` table number `index` (0-based) starts, and where its
/// `field = ` line is when it has one.
pub fn table_position(text: &str, array: &str, index: usize, field: &str) -> (usize, usize) {
    let header = format!("[[{array}]]");
    let mut seen = 0;
    let mut offset = 0;
    let mut table_start = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with(&header) {
            if seen == index {
                table_start = Some(offset);
            } else if table_start.is_some() {
                break;
            }
            seen += 1;
        } else if t.starts_with('[') && table_start.is_some() {
            break;
        } else if let Some(start) = table_start {
            let key = t.split('=').next().unwrap_or("").trim();
            if key == field {
                let indent = line.len() - t.len();
                return line_col(text, offset + indent).max(line_col(text, start));
            }
        }
        offset += line.len();
    }
    table_start.map(|s| line_col(text, s)).unwrap_or((1, 1))
}

/// Reads the `[[node]]` tables of the spec at `path`.
pub fn load_nodes(path: &Path) -> Result<Vec<NodeSpec>, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.into(),
        source,
    })?;
    parse_nodes(&text, path)
}

/// Parses the `[[node]]` tables of spec `text` (read from `path`).
pub fn parse_nodes(text: &str, path: &Path) -> Result<Vec<NodeSpec>, SpecError> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        SpecError::Syntax {
            path: path.into(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    let nodes = match doc.get("node") {
        None => return Ok(vec![]),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(SpecError::Syntax {
                path: path.into(),
                line: 1,
                column: 1,
                message: "`node` must be an array of tables: write each node as [[node]]".into(),
            })
        }
    };
    let mut out: Vec<NodeSpec> = Vec::new();
    for (i, v) in nodes.iter().enumerate() {
        let fail = |source: NodeError| {
            let (line, column) = node_position(text, i, &source.field);
            SpecError::Node {
                path: path.into(),
                line,
                column,
                source,
            }
        };
        let toml::Value::Table(t) = v else {
            return Err(fail(NodeError::new(
                &format!("#{}", i + 1),
                "node",
                "must be a table",
            )));
        };
        let spec = NodeSpec::from_table(t, i).map_err(fail)?;
        if out.iter().any(|n| n.name == spec.name) {
            return Err(fail(NodeError::new(
                &spec.name,
                "name",
                "another node has the same name",
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Builds every node of the spec at `path`, checking what needs the machine
/// (environment variables, model files).
pub fn build_nodes(path: &Path) -> Result<Vec<NodeHandle>, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.into(),
        source,
    })?;
    build_nodes_from(&text, path)
}

/// [`build_nodes`] from spec `text` that was read from `path` (relative
/// paths in it are resolved against `path`'s folder).
pub fn build_nodes_from(text: &str, path: &Path) -> Result<Vec<NodeHandle>, SpecError> {
    let text = text.to_string();
    let base = path.parent().unwrap_or(Path::new("."));
    let specs = parse_nodes(&text, path)?;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.build(base).map_err(|source| {
                let (line, column) = node_position(&text, i, &source.field);
                SpecError::Node {
                    path: path.into(),
                    line,
                    column,
                    source,
                }
            })
        })
        .collect()
}

/// A router over the nodes of spec `text` (read from `path`), built in
/// `pool`: nodes another team of the pool defined the same way are shared,
/// not built again.
pub fn build_router_in(
    text: &str,
    path: &Path,
    config: crate::model::RouterConfig,
    pool: &crate::model::NodePool,
) -> Result<crate::model::Router, SpecError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let specs = parse_nodes(text, path)?;
    let nodes = specs.into_iter().map(|s| (s, base.clone())).collect();
    pool.router(nodes, config, |i, s, base| {
        s.build(base).map_err(|source| {
            let (line, column) = node_position(text, i, &source.field);
            SpecError::Node {
                path: path.into(),
                line,
                column,
                source,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    //! Positions in errors.
    use super::*;

    #[test]
    fn node_errors_point_at_the_field() {
        let text = "# team\n[[node]]\nname = \"a\"\nbackend = \"sim\"\n\n[[node]]\nname = \"b\"\n  backend = \"opneai\"\n";
        let e = parse_nodes(text, Path::new("team.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("team.toml:8:3: node \"b\": `backend`: unknown backend"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_nodes("[[node]]\nname = \n", Path::new("t.toml")).unwrap_err();
        assert!(matches!(e, SpecError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = "[[node]]\nname = \"a\"\nbackend = \"sim\"\n[[node]]\nname = \"a\"\nbackend = \"sim\"\n";
        let msg = parse_nodes(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("t.toml:5:1: node \"a\": `name`: another node has the same name"),
            "{msg}"
        );
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
