//! `conclave plugins new`: a new plugin crate that builds on the first try.

use std::path::{Path, PathBuf};

use crate::plugin::PluginKind;

/// What went wrong while creating a plugin crate.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a valid plugin name: use lower-case letters, digits and '-', starting with a letter")]
    BadName(String),
    #[error("{} already exists; choose another name or directory", .0.display())]
    Exists(PathBuf),
    #[error("cannot find the conclave-sdk crate at {}; pass --sdk PATH to the sdk/ folder of a Conclave checkout", .0.display())]
    NoSdk(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The SDK folder of the checkout this binary was built from, if it is
/// still there.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
}

/// Creates `dir/name`, a plugin crate of `kind` depending on the SDK at
/// `sdk`, and returns the files written.
pub fn new_plugin(
    name: &str,
    kind: PluginKind,
    dir: &Path,
    sdk: &Path,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let sdk = sdk
        .canonicalize()
        .map_err(|_| ScaffoldError::NoSdk(sdk.to_path_buf()))?;
    if !sdk.join("Cargo.toml").exists() {
        return Err(ScaffoldError::NoSdk(sdk));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let (feature, source) = match kind {
        PluginKind::Voter => ("voter", VOTER),
        PluginKind::Verifier => ("verifier", VERIFIER),
        PluginKind::Role => ("role", ROLE),
    };
    let ident: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        (
            root.join("Cargo.toml"),
            CARGO
                .replace("{name}", name)
                .replace("{sdk}", &sdk.display().to_string().replace('\\', "/"))
                .replace("{feature}", feature),
        ),
        (
            root.join(".cargo").join("config.toml"),
            "[build]\ntarget = \"wasm32-wasip2\"\n".to_string(),
        ),
        (
            root.join("src").join("lib.rs"),
            source.replace("{name}", name).replace("{Ident}", &ident),
        ),
        (root.join(".gitignore"), "/target\n".to_string()),
    ];
    let mut written = Vec::new();
    for (path, text) in files {
        let parent = path.parent().expect("files have parents");
        std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

const CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
conclave-sdk = { path = "{sdk}", features = ["{feature}"] }
serde = { version = "1", features = ["derive"] }

[profile.release]
opt-level = "s"
lto = true
strip = true
panic = "abort"

# A plugin is its own workspace, wherever it lives.
[workspace]
"#;

const VOTER: &str = r#"//! `{name}`: a Conclave voter. Build with `cargo build --release`; the
//! component is `target/wasm32-wasip2/release/*.wasm`.

use conclave_sdk::vote::{tally, Vote};
use conclave_sdk::voter::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fewest votes the winner needs.
    min_votes: u32,
}

struct {Ident};

impl Voter for {Ident} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description: "Plurality vote with a minimum number of votes.".into(),
        }
    }

    fn tally(task: Task, ballots: Vec<Ballot>) -> Result<Decision, PluginError> {
        let config: Config = task.parse_config()?;
        let votes: Vec<Vote> = ballots
            .iter()
            .map(|b| Vote { answer: b.candidate.answer.clone(), weight: 1.0, score: 1.0 })
            .collect();
        let counts = tally(&votes);
        match counts.first() {
            Some(best) if best.votes >= config.min_votes => Ok(Decision::Decided(Decided {
                answer: best.answer.clone(),
                support: best.votes,
                total: counts.iter().map(|c| c.votes).sum(),
                runner_up: counts.get(1).map(|c| c.answer.clone()),
            })),
            _ => Ok(Decision::NoConsensus(format!("no answer has {} votes", config.min_votes))),
        }
    }
}

export_voter!({Ident});
"#;

const VERIFIER: &str = r#"//! `{name}`: a Conclave verifier. Build with `cargo build --release`; the
//! component is `target/wasm32-wasip2/release/*.wasm`.

use conclave_sdk::answer::extract;
use conclave_sdk::verifier::*;

struct {Ident};

impl Verifier for {Ident} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Verifier,
            capabilities: vec![Capability::Log],
            description: "Passes candidates whose text contains an answer of the expected kind.".into(),
        }
    }

    fn verify(task: Task, candidate: Candidate) -> Result<Verdict, PluginError> {
        let found = extract(&candidate.text, task.kind());
        Ok(Verdict {
            verifier: "{name}".into(),
            pass: found.is_some(),
            score: if found.is_some() { 1.0 } else { 0.0 },
            reason: match found {
                Some(a) => format!("found {a:?}"),
                None => "no answer found".into(),
            },
        })
    }
}

export_verifier!({Ident});
"#;

const ROLE: &str = r#"//! `{name}`: a Conclave role. Build with `cargo build --release`; the
//! component is `target/wasm32-wasip2/release/*.wasm`. Grant it `llm` in
//! the team spec.

use conclave_sdk::answer::extract;
use conclave_sdk::prompt;
use conclave_sdk::role::*;

struct {Ident};

impl Role for {Ident} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![Capability::Llm, Capability::Log],
            description: "Asks a model and extracts its final answer.".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        let reply = chat(&request(prompt::solve(&task.prompt, task.kind())))
            .map_err(|e| PluginError::Model(format!("{e:?}")))?;
        Ok(Outcome::Candidate(Candidate {
            replica: task.replica,
            node: reply.node,
            answer: extract(&reply.text, task.kind()).unwrap_or_default(),
            text: reply.text,
            confidence: None,
            ranking: Vec::new(),
        }))
    }
}

export_role!({Ident});
"#;

#[cfg(test)]
mod tests {
    //! Name validation and the files written.
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        let d = std::env::temp_dir();
        for bad in ["", "Upper", "9lives", "has space", "under_score"] {
            assert!(
                matches!(
                    new_plugin(bad, PluginKind::Voter, &d, &default_sdk_path()),
                    Err(ScaffoldError::BadName(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn writes_a_crate_for_each_kind_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("my-vote", PluginKind::Voter),
            ("my-check", PluginKind::Verifier),
            ("my-role", PluginKind::Role),
        ] {
            let files = new_plugin(name, kind, d.path(), &default_sdk_path()).unwrap();
            assert_eq!(files.len(), 4);
            let lib = std::fs::read_to_string(d.path().join(name).join("src/lib.rs")).unwrap();
            assert!(lib.contains(&format!("name: \"{name}\".into()")));
            assert!(!lib.contains("{Ident}") && !lib.contains("{name}"));
        }
        let lib = std::fs::read_to_string(d.path().join("my-vote/src/lib.rs")).unwrap();
        assert!(lib.contains("struct MyVote;") && lib.contains("export_voter!(MyVote);"));
        let cargo = std::fs::read_to_string(d.path().join("my-check/Cargo.toml")).unwrap();
        assert!(cargo.contains("features = [\"verifier\"]"));
        assert!(matches!(
            new_plugin("my-vote", PluginKind::Voter, d.path(), &default_sdk_path()),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_plugin(
                "x",
                PluginKind::Voter,
                d.path(),
                Path::new("/nonexistent/sdk")
            ),
            Err(ScaffoldError::NoSdk(_))
        ));
    }
}
