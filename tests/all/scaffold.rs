//! `conclave plugins new`: every template, in every language, builds on the
//! first try with its language's own tool, passes its own tests, loads in
//! the host as the kind it claims, and runs in a team on sim nodes.
//!
//! Python and JavaScript need componentize-py and jco (with node); without
//! them those tests print a notice and pass, unless
//! `CONCLAVE_REQUIRE_PLUGIN_TOOLS=1` (CI) makes a missing tool a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use conclave::plugin::PluginKind;
use conclave::scaffold::{new_plugin, Lang, NewPlugin};
use conclave_tests::{conclave_bin, runtime, workspace};

const KINDS: [(PluginKind, &str); 3] = [
    (PluginKind::Voter, "voter"),
    (PluginKind::Verifier, "verifier"),
    (PluginKind::Role, "role"),
];

/// Runs a template's shell `command` in `dir` and returns its output;
/// fails the test, showing that output, when the command fails.
fn sh(dir: &Path, command: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        // The crate's own `target` (which the Rust test links), not the suite's.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{command}` failed in {}:\n{text}",
        dir.display()
    );
    text
}

/// Whether `probe` runs. When it does not, the test that needs it is
/// skipped with a notice, or fails under CONCLAVE_REQUIRE_PLUGIN_TOOLS=1.
fn have(what: &str, probe: &str, install: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("{what} is not available (`{probe}` failed); install it with: {install}");
        if std::env::var("CONCLAVE_REQUIRE_PLUGIN_TOOLS").as_deref() == Ok("1") {
            panic!("CONCLAVE_REQUIRE_PLUGIN_TOOLS=1 and {why}");
        }
        eprintln!("skipped: {why}");
    }
    ok
}

/// Where the JavaScript build tools are installed: `CONCLAVE_JS_TOOLS`, else
/// `target/js-tools` (what `scripts/install-plugin-tools.sh` fills).
fn js_tools() -> PathBuf {
    std::env::var_os("CONCLAVE_JS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/js-tools"))
}

/// Whether the output of a template's test command shows tests that ran
/// and passed (not merely a runner that found nothing).
fn tests_passed(lang: Lang, output: &str) -> bool {
    match lang {
        Lang::Rust => output.contains("test result: ok.") && !output.contains("ok. 0 passed"),
        Lang::Python => output.contains("\nOK") && !output.contains("Ran 0 tests"),
        Lang::Js => output.contains("# fail 0") && !output.contains("# pass 0"),
    }
}

/// Generates a plugin of every kind in `lang` under `dir`, prepares its
/// folder with `prepare`, builds it with `build` (default: the template's
/// own command), and runs its own tests.
fn generate_build_and_test(
    lang: Lang,
    dir: &Path,
    prepare: impl Fn(&NewPlugin),
    build: Option<&str>,
) -> Vec<(PluginKind, NewPlugin)> {
    let mut built = Vec::new();
    for (kind, kind_name) in KINDS {
        let name = format!("new-{}-{kind_name}", lang.name());
        let p = new_plugin(&name, kind, lang, dir).unwrap();
        prepare(&p);
        let start = Instant::now();
        sh(&p.root, build.unwrap_or(&p.build));
        let size = std::fs::metadata(p.root.join(&p.wasm))
            .unwrap_or_else(|e| panic!("{name}: no {}: {e}", p.wasm.display()))
            .len();
        eprintln!("built {name} in {:.1?}: {size} bytes", start.elapsed());
        let output = sh(&p.root, &p.test);
        assert!(tests_passed(lang, &output), "{name}: {output}");
        built.push((kind, p));
    }
    built
}

/// Each component loads as the kind it was generated as, under its name,
/// and its team (`team.toml`, on a sim node) decides "What is 2 + 2?".
async fn loads_and_decides_in_a_team(built: &[(PluginKind, NewPlugin)]) {
    let rt = runtime();
    for (kind, p) in built {
        let wasm = p.root.join(&p.wasm);
        let loaded = rt
            .load_file(&wasm)
            .await
            .unwrap_or_else(|e| panic!("{} was refused: {e}", wasm.display()));
        let name = p.root.file_name().unwrap().to_str().unwrap();
        assert_eq!((loaded.name(), loaded.version()), (name, "0.1.0"));
        assert_eq!(loaded.kind(), *kind, "{name}");

        let data = tempfile::tempdir().unwrap();
        let out = Command::new(conclave_bin())
            .args(["run", "team.toml", "What is 2 + 2?"])
            .current_dir(&p.root)
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .env("CONCLAVE_DATA_DIR", data.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("stop:       decided"), "{name}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_templates_build_pass_their_tests_load_and_run_in_a_team() {
    let dir = tempfile::tempdir().unwrap();
    // One target folder for every generated crate (and every test run), so
    // wit-bindgen and serde are built once: each crate's `target` links to it.
    let target = workspace().join("target/scaffold");
    std::fs::create_dir_all(&target).unwrap();
    let share = |p: &NewPlugin| std::os::unix::fs::symlink(&target, p.root.join("target")).unwrap();
    let built = generate_build_and_test(Lang::Rust, dir.path(), share, None);
    // The crates name no path outside themselves: the template carries the
    // helpers and the WIT.
    for (_, p) in &built {
        let cargo = std::fs::read_to_string(p.root.join("Cargo.toml")).unwrap();
        assert!(!cargo.contains("path"), "{cargo}");
    }
    loads_and_decides_in_a_team(&built).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_templates_build_pass_their_tests_load_and_run_in_a_team() {
    if !have(
        "componentize-py",
        "componentize-py --version && python3 --version",
        "pip install componentize-py==0.25.1",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let built = generate_build_and_test(Lang::Python, dir.path(), |_| {}, None);
    loads_and_decides_in_a_team(&built).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_templates_build_pass_their_tests_load_and_run_in_a_team() {
    let tools = js_tools();
    let jco = tools.join("node_modules/.bin/jco");
    if !have(
        "jco",
        &format!("node --version && test -x '{}'", jco.display()),
        "bash scripts/install-plugin-tools.sh (npm packages into target/js-tools)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // `npm install` in each plugin would fetch the same pinned packages
    // again; the tests link the ones installed once and run the build script.
    let link = |p: &NewPlugin| {
        std::os::unix::fs::symlink(tools.join("node_modules"), p.root.join("node_modules")).unwrap()
    };
    let built = generate_build_and_test(Lang::Js, dir.path(), link, Some("npm run build"));
    loads_and_decides_in_a_team(&built).await;
}

#[test]
fn the_cli_writes_the_folder_and_says_how_to_build_test_check_and_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let new = |name: &str| {
        Command::new(conclave_bin())
            .args([
                "plugins", "new", name, "--kind", "verifier", "--lang", "python",
            ])
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = new("cli-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let root = dir.path().join("cli-check");
    for line in [
        format!("created {}", root.join("app.py").display()),
        "componentize-py -d wit -w verifier componentize app -o cli-check.wasm".into(),
        "python3 -m unittest".into(),
        format!("conclave plugins check {}/cli-check.wasm", root.display()),
        format!("conclave run {}/team.toml", root.display()),
    ] {
        assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
    }
    // A second time, the folder exists: refused, exit 1, nothing changed.
    std::fs::write(root.join("app.py"), "mine").unwrap();
    let again = new("cli-check");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(root.join("app.py")).unwrap(),
        "mine"
    );
}
