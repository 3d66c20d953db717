//! Checks of what crosses the sandbox boundary: a file before it is
//! compiled, a plugin's description at load, and each call's output
//! (decisions, plans) before the host acts on it; plus reading a guest's
//! panic message out of its stderr.

use std::path::Path;

use super::sandbox::Plugin;
use super::{Decision, Descriptor, PluginError};

/// Refuses files that are not components before compiling them, with a
/// message that says what the file is instead.
pub(crate) fn check_header(bytes: &[u8], origin: &Path) -> Result<(), PluginError> {
    let not = |reason: &str| PluginError::NotAComponent {
        path: origin.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(not("it is not a WebAssembly file (no `\\0asm` header)"));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(not(
            "it is a core WebAssembly module; build the plugin with `--target wasm32-wasip2` \
             so that it is a component",
        )),
        [_, _, 1, 0] => Ok(()),
        _ => Err(not("unknown WebAssembly version or layer")),
    }
}

pub(crate) fn check_descriptor(d: &Descriptor, origin: &Path) -> Result<(), PluginError> {
    let bad = |reason: String| PluginError::BadOutput {
        plugin: origin.display().to_string(),
        reason,
    };
    if d.name.is_empty()
        || !d
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad(format!(
            "describe() gave the name {:?}; names are kebab-case",
            d.name
        )));
    }
    if semver::Version::parse(&d.version).is_err() {
        return Err(bad(format!(
            "describe() gave the version {:?}, which is not semver",
            d.version
        )));
    }
    Ok(())
}

pub(crate) fn check_decision(
    plugin: &Plugin,
    d: &Decision,
    ballots: usize,
) -> Result<(), PluginError> {
    let bad = |reason: String| {
        Err(PluginError::BadOutput {
            plugin: plugin.id(),
            reason,
        })
    };
    match d {
        Decision::Decided(x) if x.answer.is_empty() => bad("decided an empty answer".into()),
        Decision::Decided(x) if x.support > x.total || x.total as usize > ballots => bad(format!(
            "decided with support {} of {} on {ballots} ballots",
            x.support, x.total
        )),
        Decision::NeedMore(0) => bad("asked for zero more samples".into()),
        _ => Ok(()),
    }
}

/// A plan must be a DAG of uniquely named subtasks whose dependencies exist.
pub fn check_plan(plan: &super::Plan) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    if plan.subtasks.is_empty() {
        return Err("the plan has no subtasks".into());
    }
    let mut ids = BTreeSet::new();
    for s in &plan.subtasks {
        if s.id.is_empty() || !ids.insert(s.id.as_str()) {
            return Err(format!("subtask id {:?} is empty or repeated", s.id));
        }
    }
    let deps: BTreeMap<&str, &Vec<String>> = plan
        .subtasks
        .iter()
        .map(|s| (s.id.as_str(), &s.depends_on))
        .collect();
    for (id, ds) in &deps {
        if let Some(d) = ds.iter().find(|d| !ids.contains(d.as_str())) {
            return Err(format!("subtask {id:?} depends on unknown subtask {d:?}"));
        }
    }
    // Kahn's algorithm: every subtask must become ready.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < deps.len() {
        let ready: Vec<&str> = deps
            .iter()
            .filter(|(id, ds)| !done.contains(*id) && ds.iter().all(|d| done.contains(d.as_str())))
            .map(|(id, _)| *id)
            .collect();
        if ready.is_empty() {
            return Err("the plan's dependencies form a cycle".into());
        }
        done.extend(ready);
    }
    Ok(())
}

/// The panic message a Rust guest printed to stderr (`panicked at FILE:L:C:
/// MESSAGE`), or the last lines of stderr when it is not a panic.
pub(crate) fn panic_message(stderr: &str) -> String {
    if let Some(pos) = stderr.find("panicked at ") {
        let rest = &stderr[pos..];
        let lines: Vec<&str> = rest
            .lines()
            .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        return lines.join(" ").trim().to_string();
    }
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    tail.into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    //! Header checks, plan checks and panic-message extraction.
    use super::*;
    use crate::plugin::{Plan, Subtask};

    #[test]
    fn header_check_names_what_the_file_is() {
        let p = Path::new("x.wasm");
        let e = check_header(b"garbage!", p).unwrap_err().to_string();
        assert!(e.contains("not a WebAssembly file"), "{e}");
        let e = check_header(b"\0asm\x01\0\0\0", p).unwrap_err().to_string();
        assert!(e.contains("core WebAssembly module"), "{e}");
        assert!(check_header(b"\0asm\x0d\0\x01\0", p).is_ok());
    }

    fn st(id: &str, deps: &[&str]) -> Subtask {
        Subtask {
            id: id.into(),
            prompt: "p".into(),
            role: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn plans_must_be_dags_of_known_ids() {
        assert!(check_plan(&Plan {
            subtasks: vec![st("a", &[]), st("b", &["a"])]
        })
        .is_ok());
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &["b"]), st("b", &["a"])],
        })
        .unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &["z"])],
        })
        .unwrap_err();
        assert!(e.contains("unknown subtask \"z\""), "{e}");
        assert!(check_plan(&Plan {
            subtasks: vec![st("a", &[]), st("a", &[])]
        })
        .is_err());
        assert!(check_plan(&Plan { subtasks: vec![] }).is_err());
    }

    #[test]
    fn panic_message_is_extracted() {
        let s = "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom here\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(panic_message(s), "panicked at src/lib.rs:9:5: boom here");
        assert_eq!(panic_message("a\nb"), "a b");
    }
}
