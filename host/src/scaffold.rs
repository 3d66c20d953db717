//! `conclave plugins new`: a new plugin folder, in Rust, Python or
//! JavaScript, that builds on the first try with its language's own tool
//! (cargo; componentize-py; jco with componentize-js).
//!
//! A template does not depend on where a Conclave checkout lives: this
//! binary embeds everything one needs and writes it into the new folder: the
//! WIT (`wit/conclave.wit` is contract 0.2, `wit/deps/plugin-0.1/` the 0.1
//! package it builds on), the answer, prompt and vote helpers (the Rust
//! SDK's modules vendored as source, or the Python or JavaScript module
//! that agrees with them case for case), a test the author runs with the
//! language's own test runner, a README and a `team.toml` that tries the
//! plugin on a simulated node. Voters target the 0.2 `voter` world; roles
//! and verifiers the 0.2 package's `role` and `verifier` worlds, which are
//! the 0.1 ones.
//!
//! What is not here: building the plugin (the author's tool does that) and
//! checking it (`conclave plugins check`, in `plugin`).

use std::path::{Path, PathBuf};

use crate::plugin::PluginKind;

/// What went wrong while creating a plugin folder.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a valid plugin name: use lower-case letters, digits and '-', starting with a letter")]
    BadName(String),
    #[error("{} already exists; choose another name or directory", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The language a plugin is written in, and so the tool that builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    /// Rust, built by cargo for `wasm32-wasip2` with wit-bindgen.
    Rust,
    /// Python, built by componentize-py 0.25.
    Python,
    /// JavaScript, built by jco 1.35 with componentize-js 0.23.
    Js,
}

impl Lang {
    /// Every language, for tests and help texts that cover them all.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// The name `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// A plugin folder just written, and how to build and test it.
#[derive(Clone, Debug)]
pub struct NewPlugin {
    /// The folder: `dir/name`.
    pub root: PathBuf,
    /// Every file written, under `root`.
    pub files: Vec<PathBuf>,
    /// The shell command, run in `root`, that builds the component.
    pub build: String,
    /// The shell command, run in `root`, that runs the plugin's own tests.
    pub test: String,
    /// Where the built component will be, relative to `root`.
    pub wasm: PathBuf,
}

/// The contract, as this binary was built with it.
const WIT_02: &str = include_str!("../../wit/0.2/conclave.wit");
const WIT_01: &str = include_str!("../../wit/0.1/conclave.wit");

/// The Rust SDK's helpers, vendored into Rust plugins as source.
const RUST_HELPERS: [(&str, &str); 4] = [
    ("answer.rs", include_str!("../../sdk/src/answer.rs")),
    ("config.rs", include_str!("../../sdk/src/config.rs")),
    ("prompt.rs", include_str!("../../sdk/src/prompt.rs")),
    ("vote.rs", include_str!("../../sdk/src/vote.rs")),
];
const PY_HELPERS: &str = include_str!("../../sdk/python/conclave_helpers.py");
const JS_HELPERS: &str = include_str!("../../sdk/js/conclave_helpers.js");

const README: &str = include_str!("../templates/README.md");
const TEAM: &str = include_str!("../templates/team.toml");

mod rust {
    pub const CARGO: &str = include_str!("../templates/rust/Cargo.toml");
    pub const VOTER: &str = include_str!("../templates/rust/voter.rs");
    pub const VERIFIER: &str = include_str!("../templates/rust/verifier.rs");
    pub const ROLE: &str = include_str!("../templates/rust/role.rs");
}

mod python {
    pub const VOTER: &str = include_str!("../templates/python/voter.py");
    pub const VERIFIER: &str = include_str!("../templates/python/verifier.py");
    pub const ROLE: &str = include_str!("../templates/python/role.py");
    pub const TEST_VOTER: &str = include_str!("../templates/python/test_voter.py");
    pub const TEST_VERIFIER: &str = include_str!("../templates/python/test_verifier.py");
    pub const TEST_ROLE: &str = include_str!("../templates/python/test_role.py");
}

mod js {
    pub const PACKAGE: &str = include_str!("../templates/js/package.json");
    pub const VOTER: &str = include_str!("../templates/js/voter.js");
    pub const VERIFIER: &str = include_str!("../templates/js/verifier.js");
    pub const ROLE: &str = include_str!("../templates/js/role.js");
    pub const TEST_VOTER: &str = include_str!("../templates/js/test_voter.js");
    pub const TEST_VERIFIER: &str = include_str!("../templates/js/test_verifier.js");
    pub const TEST_ROLE: &str = include_str!("../templates/js/test_role.js");
    pub const WIT_STUBS: &str = include_str!("../templates/js/wit-stubs.mjs");
    pub const FAKE_HOST: &str = include_str!("../templates/js/fake-host.js");
}

/// Whether `name` can name a plugin (and a crate, a package and a file).
fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `my-vote` -> `MyVote`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Voter => "voter",
        PluginKind::Verifier => "verifier",
        PluginKind::Role => "role",
    }
}

/// Creates `dir/name`, a plugin of `kind` in `lang`, and says how to build
/// and test it. Refuses a bad name and an existing folder; writes nothing
/// outside `dir/name`.
pub fn new_plugin(
    name: &str,
    kind: PluginKind,
    lang: Lang,
    dir: &Path,
) -> Result<NewPlugin, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let world = kind_name(kind);
    let crate_name = name.replace('-', "_");
    let description = match kind {
        PluginKind::Voter => "Plurality vote with a minimum number of votes.",
        PluginKind::Verifier => {
            "Passes a candidate whose text states an answer that agrees with it."
        }
        PluginKind::Role => "Asks a model and extracts its final answer.",
    };
    let (build, test, wasm) = match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".to_string(),
            "cargo test".to_string(),
            format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
        ),
        Lang::Python => (
            format!("componentize-py -d wit -w {world} componentize app -o {name}.wasm"),
            format!("componentize-py -d wit -w {world} bindings bindings && python3 -m unittest"),
            format!("{name}.wasm"),
        ),
        Lang::Js => (
            "npm install && npm run build".to_string(),
            "npm test".to_string(),
            format!("{name}.wasm"),
        ),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{Ident}}", &type_name(name))
            .replace("{{crate}}", &crate_name)
            .replace("{{kind}}", world)
            .replace("{{description}}", description)
            .replace("{{wasm}}", &wasm)
    };

    let mut files: Vec<(PathBuf, String)> = vec![
        (root.join("wit/conclave.wit"), WIT_02.to_string()),
        (
            root.join("wit/deps/plugin-0.1/conclave.wit"),
            WIT_01.to_string(),
        ),
        (root.join("team.toml"), team_spec(name, kind, &wasm)),
    ];
    let listed: Vec<(&str, &str)> = match lang {
        Lang::Rust => {
            let source = match kind {
                PluginKind::Voter => rust::VOTER,
                PluginKind::Verifier => rust::VERIFIER,
                PluginKind::Role => rust::ROLE,
            };
            files.push((root.join("Cargo.toml"), fill(rust::CARGO)));
            files.push((root.join("src/lib.rs"), fill(source)));
            for (file, text) in RUST_HELPERS {
                let header = format!(
                    "// Vendored from conclave-sdk {} (sdk/src/{file}): the code the Conclave SDK\n\
                     // tests against sdk/cases/helpers.json. Yours to change.\n",
                    env!("CARGO_PKG_VERSION")
                );
                files.push((root.join("src").join(file), header + text));
            }
            files.push((root.join(".gitignore"), "/target\n".into()));
            vec![
                ("src/lib.rs", "the plugin, and its tests"),
                (
                    "src/answer.rs, config.rs, prompt.rs, vote.rs",
                    "the Conclave SDK's helpers, vendored",
                ),
                (
                    "Cargo.toml",
                    "wit-bindgen, serde and serde_json from crates.io",
                ),
            ]
        }
        Lang::Python => {
            let (source, test) = match kind {
                PluginKind::Voter => (python::VOTER, python::TEST_VOTER),
                PluginKind::Verifier => (python::VERIFIER, python::TEST_VERIFIER),
                PluginKind::Role => (python::ROLE, python::TEST_ROLE),
            };
            files.push((root.join("app.py"), fill(source)));
            files.push((root.join("test_app.py"), fill(test)));
            files.push((root.join("conclave_helpers.py"), PY_HELPERS.into()));
            files.push((
                root.join(".gitignore"),
                "/bindings/\n__pycache__/\n*.wasm\n".into(),
            ));
            vec![
                ("app.py", "the plugin"),
                ("test_app.py", "its tests (unittest)"),
                (
                    "conclave_helpers.py",
                    "answer, prompt and vote helpers that agree with the Rust SDK",
                ),
            ]
        }
        Lang::Js => {
            let (source, test) = match kind {
                PluginKind::Voter => (js::VOTER, js::TEST_VOTER),
                PluginKind::Verifier => (js::VERIFIER, js::TEST_VERIFIER),
                PluginKind::Role => (js::ROLE, js::TEST_ROLE),
            };
            let test_script = if kind == PluginKind::Role {
                "node --import ./wit-stubs.mjs --test test_app.js"
            } else {
                "node --test test_app.js"
            };
            files.push((
                root.join("package.json"),
                fill(js::PACKAGE).replace("{{test_script}}", test_script),
            ));
            files.push((root.join("app.js"), fill(source)));
            files.push((root.join("test_app.js"), fill(test)));
            files.push((root.join("conclave_helpers.js"), JS_HELPERS.into()));
            if kind == PluginKind::Role {
                files.push((root.join("wit-stubs.mjs"), js::WIT_STUBS.into()));
                files.push((root.join("fake-host.js"), js::FAKE_HOST.into()));
            }
            files.push((root.join(".gitignore"), "/node_modules/\n*.wasm\n".into()));
            let mut listed = vec![
                ("app.js", "the plugin"),
                ("test_app.js", "its tests (node --test)"),
                (
                    "conclave_helpers.js",
                    "answer, prompt and vote helpers that agree with the Rust SDK",
                ),
                (
                    "package.json",
                    "jco 1.35.0 and componentize-js 0.23.0, pinned; the build and test scripts",
                ),
            ];
            if kind == PluginKind::Role {
                listed.push((
                    "wit-stubs.mjs, fake-host.js",
                    "for `npm test` only: the host's imports, faked",
                ));
            }
            listed
        }
    };
    files.push((
        root.join("README.md"),
        readme(name, kind, lang, &listed, &build, &test, &wasm),
    ));

    std::fs::create_dir_all(&root).map_err(|source| ScaffoldError::Io {
        path: root.clone(),
        source,
    })?;
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
    Ok(NewPlugin {
        root,
        files: written,
        build,
        test,
        wasm: PathBuf::from(wasm),
    })
}

/// A team on one simulated node that uses the new plugin in its place: as
/// the task's role, among its verifiers, or as its voter.
fn team_spec(name: &str, kind: PluginKind, wasm: &str) -> String {
    let quoted = format!("\"{name}\"");
    TEAM.replace("{{name}}", name)
        .replace("{{wasm}}", wasm)
        .replace(
            "{{grants}}",
            if kind == PluginKind::Role {
                "grants = [\"llm\"]   # what it may call (log is always granted)\n"
            } else {
                ""
            },
        )
        .replace(
            "{{role}}",
            if kind == PluginKind::Role {
                name
            } else {
                "solver"
            },
        )
        .replace(
            "{{verifiers}}",
            if kind == PluginKind::Verifier {
                &quoted
            } else {
                "\"answer-format\""
            },
        )
        .replace(
            "{{voter}}",
            if kind == PluginKind::Voter {
                name
            } else {
                "majority"
            },
        )
}

fn readme(
    name: &str,
    kind: PluginKind,
    lang: Lang,
    files: &[(&str, &str)],
    build: &str,
    test: &str,
    wasm: &str,
) -> String {
    let table: String = files
        .iter()
        .map(|(f, what)| format!("| `{f}` | {what} |\n"))
        .collect();
    let world_note = match kind {
        PluginKind::Voter => {
            "0.2 voters get ballots as indices into the distinct answers, and read texts on demand"
        }
        PluginKind::Verifier | PluginKind::Role => {
            "the same world as in 0.1, which 0.2 includes unchanged"
        }
    };
    let (lang_name, requirements) = match lang {
        Lang::Rust => (
            "Rust",
            "Needs Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).",
        ),
        Lang::Python => (
            "Python",
            "Needs Python 3.11 or later and componentize-py 0.25 \
             (`pip install componentize-py==0.25.1`). The component embeds a Python \
             interpreter: about 18 MB, and each call starts from a snapshot taken at build time.",
        ),
        Lang::Js => (
            "JavaScript",
            "Needs Node.js 20 or later. `npm install` fetches jco 1.35.0 and \
             componentize-js 0.23.0, pinned in `package.json`. Its `overrides` make jco \
             use that componentize-js and `@bytecodealliance/preview2-shim` 0.25.0: with \
             0.26, jco 1.35.0 cannot read the `wit/` folder (`failed to get path metadata`). \
             The component embeds a JavaScript engine (StarlingMonkey): about 12 MB.",
        ),
    };
    README
        .replace("{{name}}", name)
        .replace("{{kind}}", kind_name(kind))
        .replace("{{lang}}", lang_name)
        .replace("{{world_note}}", world_note)
        .replace("{{files}}", &table)
        .replace("{{requirements}}", requirements)
        .replace("{{build}}", build)
        .replace("{{test}}", test)
        .replace("{{wasm}}", wasm)
}

#[cfg(test)]
mod tests {
    //! Name validation and the files written, per language and kind (the
    //! builds themselves are in tests/all/scaffold.rs).
    use super::*;

    const KINDS: [PluginKind; 3] = [PluginKind::Voter, PluginKind::Verifier, PluginKind::Role];

    #[test]
    fn bad_names_are_refused() {
        let d = std::env::temp_dir();
        for bad in ["", "Upper", "9lives", "has space", "under_score", "dot.ted"] {
            for lang in Lang::ALL {
                assert!(
                    matches!(
                        new_plugin(bad, PluginKind::Voter, lang, &d),
                        Err(ScaffoldError::BadName(_))
                    ),
                    "{bad}"
                );
            }
        }
    }

    #[test]
    fn every_template_is_filled_in_and_carries_the_contract() {
        let d = tempfile::tempdir().unwrap();
        for lang in Lang::ALL {
            for kind in KINDS {
                let name = format!("my-{}-{}", lang.name(), kind_name(kind));
                let p = new_plugin(&name, kind, lang, d.path()).unwrap();
                assert_eq!(p.root, d.path().join(&name));
                for f in &p.files {
                    let text = std::fs::read_to_string(f).unwrap();
                    assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
                }
                let read = |f: &str| std::fs::read_to_string(p.root.join(f)).unwrap();
                assert_eq!(read("wit/conclave.wit"), WIT_02);
                assert_eq!(read("wit/deps/plugin-0.1/conclave.wit"), WIT_01);
                assert!(read("README.md").contains(&p.build));
                assert!(read("README.md").contains(&p.test));
                let team = read("team.toml");
                assert!(team.contains(&format!("path = \"{}\"", p.wasm.display())));
                let source = match lang {
                    Lang::Rust => read("src/lib.rs"),
                    Lang::Python => read("app.py"),
                    Lang::Js => read("app.js"),
                };
                assert!(source.contains(&format!("\"{name}\"")), "{name}");
            }
        }
    }

    #[test]
    fn each_language_gets_its_tool_and_its_helpers() {
        let d = tempfile::tempdir().unwrap();
        let rust = new_plugin("my-vote", PluginKind::Voter, Lang::Rust, d.path()).unwrap();
        let lib = std::fs::read_to_string(rust.root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("struct MyVote;") && lib.contains("export!(MyVote);"));
        assert!(lib.contains("world: \"voter\""));
        let cargo = std::fs::read_to_string(rust.root.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("wit-bindgen = { version = \"0.61\""));
        assert!(!cargo.contains("path ="), "a registry crate only: {cargo}");
        let answer = std::fs::read_to_string(rust.root.join("src/answer.rs")).unwrap();
        assert!(answer.ends_with(RUST_HELPERS[0].1));
        assert_eq!(
            rust.wasm,
            Path::new("target/wasm32-wasip2/release/my_vote.wasm")
        );

        let py = new_plugin("py-check", PluginKind::Verifier, Lang::Python, d.path()).unwrap();
        assert_eq!(
            py.build,
            "componentize-py -d wit -w verifier componentize app -o py-check.wasm"
        );
        let helpers = std::fs::read_to_string(py.root.join("conclave_helpers.py")).unwrap();
        assert_eq!(helpers, PY_HELPERS);

        let js = new_plugin("js-role", PluginKind::Role, Lang::Js, d.path()).unwrap();
        let package = std::fs::read_to_string(js.root.join("package.json")).unwrap();
        let package: serde_json::Value = serde_json::from_str(&package).unwrap();
        assert_eq!(
            package["scripts"]["build"],
            "jco componentize app.js --bundle --wit wit --world-name role -o js-role.wasm"
        );
        assert_eq!(
            package["devDependencies"]["@bytecodealliance/jco"],
            "1.35.0"
        );
        assert!(js.root.join("wit-stubs.mjs").exists());
        let team = std::fs::read_to_string(js.root.join("team.toml")).unwrap();
        assert!(team.contains("grants = [\"llm\"]") && team.contains("role = \"js-role\""));
    }

    #[test]
    fn an_existing_folder_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("taken")).unwrap();
        std::fs::write(d.path().join("taken/keep"), "mine").unwrap();
        assert!(matches!(
            new_plugin("taken", PluginKind::Voter, Lang::Python, d.path()),
            Err(ScaffoldError::Exists(_))
        ));
        assert_eq!(
            std::fs::read_to_string(d.path().join("taken/keep")).unwrap(),
            "mine"
        );
    }
}
