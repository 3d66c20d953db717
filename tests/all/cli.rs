//! The command line end to end (assert_cmd) on sim teams: the output,
//! `--json`, the documented exit codes, and bad arguments.

use assert_cmd::Command;
use conclave_tests::{conclave_bin, workspace};

const TEAM: &str = r#"
[team]
name = "cli"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.9
seed = 3

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"
"#;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new(team: &str) -> Self {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("team.toml"), team).unwrap();
        Dir(d)
    }

    fn conclave(&self, args: &[&str]) -> std::process::Output {
        Command::new(conclave_bin())
            .args(args)
            .current_dir(self.0.path())
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .env("CONCLAVE_DATA_DIR", self.0.path().join("data"))
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_prints_the_answer_and_its_support_and_exits_zero() {
    let d = Dir::new(TEAM);
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?", "--gold", "42"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("note: this team uses a simulated node"),
        "{out}"
    );
    assert!(out.contains("stop:       decided"), "{out}");
    // Three replicas of a majority (plurality) vote: decided on 2 agreeing
    // ballots (the third cancelled), or on all 3, a plurality of one
    // included (three different answers from a 0.9-accurate node).
    let support = out
        .lines()
        .find_map(|l| l.strip_prefix("support:    "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        [
            "2 of 2 ballots",
            "1 of 3 ballots",
            "2 of 3 ballots",
            "3 of 3 ballots"
        ]
        .iter()
        .any(|s| support.starts_with(s)),
        "{out}"
    );
    let o = d.conclave(&[
        "run",
        "team.toml",
        "What is 40 + 2?",
        "--gold",
        "42",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["stop"]["stop"], "decided");
    let samples = r["samples"].as_u64().unwrap();
    assert!((2..=3).contains(&samples), "{r}");
    assert_eq!(r["simulated"], true);
}

#[test]
fn exit_codes_tell_the_stop_reasons_apart() {
    // No consensus: a quorum that three samples can never meet.
    let d = Dir::new(&format!(
        "{TEAM}\n[[plugin]]\nname = \"quorum\"\nconfig = {{ share = 1.0, min_votes = 4, max_samples = 3 }}\n"
    )
    .replace("voter = \"majority\"", "voter = \"quorum\""));
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?", "--gold", "42"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("stop:       no consensus:"));
    // A budget: fewer tokens than one round of samples takes, and a voter
    // that wants more.
    let d = Dir::new(
        &format!(
            "{TEAM}max_samples = 10\n\n[[plugin]]\nname = \"quorum\"\nconfig = {{ share = 1.0, min_votes = 10, max_samples = 10 }}\n"
        )
        .replace("voter = \"majority\"", "voter = \"quorum\"")
        .replace("name = \"cli\"", "name = \"cli\"\nmax_tokens = 10"),
    );
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?", "--gold", "42"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("budget exhausted: job: token budget of 10 spent"));
    // Every node failing: the task failed.
    let d = Dir::new(&TEAM.replace("seed = 3", "error_rate = 1.0"));
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stdout));
}

#[test]
fn a_bad_spec_is_refused_with_its_position_and_exit_three() {
    let d = Dir::new(&TEAM.replace("replicas = 3", "replica = 3"));
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?"]);
    assert_eq!(o.status.code(), Some(3));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("error: team.toml:")
            && err.contains("unknown key `replica`; did you mean `replicas`?"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn bad_arguments_exit_two_with_usage() {
    let d = Dir::new(TEAM);
    let o = d.conclave(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("Usage: conclave run"));
    let o = d.conclave(&["run", "team.toml", "   "]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("the question is empty"));
    let o = d.conclave(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.conclave(&["run", "missing.toml", "q"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stderr).contains("missing.toml"));
}

#[test]
fn the_question_can_come_from_standard_input() {
    let d = Dir::new(TEAM);
    let o = Command::new(conclave_bin())
        .args(["run", "team.toml", "--json", "--gold", "42"])
        .current_dir(d.0.path())
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
        .env("CONCLAVE_DATA_DIR", d.0.path().join("data"))
        .write_stdin("What is 40 + 2?\n")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["question"], "What is 40 + 2?");
}

#[test]
fn plan_prints_the_critical_path_and_the_bound() {
    let o = Command::new(conclave_bin())
        .args(["plan", "examples/paper-dag.toml", "--workers", "5"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.contains("critical path:     16 tasks"), "{out}");
    assert!(out.contains("parallel fraction: p = 0.20"), "{out}");
    assert!(out.contains("n=5: 1.19x"), "{out}");
}

#[test]
fn a_refused_plugin_is_reported_once_naming_its_file() {
    let team = format!(
        "{TEAM}\n[[plugin]]\nname = \"v\"\npath = \"{}\"\n",
        conclave_tests::plugin("majority").display()
    )
    .replace("role = \"solver\"", "role = \"v\"");
    let d = Dir::new(&team);
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("majority.wasm") && err.contains("task `answer` uses it as a role"),
        "{err}"
    );
    // The cause is not printed again under the error that embeds it.
    assert_eq!(err.matches("uses it as a role").count(), 1, "{err}");
}

#[test]
fn plugins_check_stops_a_sleeping_describe_and_says_what_is_not_granted() {
    let d = Dir::new(TEAM);
    let sleepy = conclave_tests::fixture("describe-sleep");
    let o = d.conclave(&["plugins", "check", sleepy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5));
    let err = text(&o.stderr);
    assert!(
        err.contains("describe-sleep.wasm") && err.contains("compute deadline"),
        "{err}"
    );
    let greedy = conclave_tests::fixture("greedy");
    let o = d.conclave(&["plugins", "check", greedy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("on contract 0.1"), "{out}");
    assert!(out.contains("asks for: llm, bus, blackboard, log"), "{out}");
    assert!(out.contains("not granted by asking"), "{out}");
}

#[test]
fn a_reader_that_stops_early_ends_the_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;
    let d = Dir::new(TEAM);
    let o = d.conclave(&["run", "team.toml", "What is 40 + 2?", "--run-id", "piped"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for args in [&["trace", "piped"][..], &["runs"], &["completions", "bash"]] {
        let mut child = std::process::Command::new(conclave_bin())
            .args(args)
            .current_dir(d.0.path())
            .env("CONCLAVE_DATA_DIR", d.0.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command has printed a line, as
        // `| head` does after its first lines.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Ended by SIGPIPE (13), as `cat` or `grep` would be.
        assert_eq!(
            o.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

#[test]
fn serve_names_a_spec_it_cannot_load_once_with_its_line() {
    let d = Dir::new(TEAM);
    std::fs::write(
        d.0.path().join("bad.toml"),
        "[team]\nname = \"x\"\n\n[[task]]\nid = \"answer\"\nrole = \"solver\"\nreplicas = \"three\"\n",
    )
    .unwrap();
    for (spec, cause) in [
        ("missing.toml", "missing.toml: "),
        (
            "bad.toml",
            "bad.toml:7:12: [[task]] #1: `replicas`: invalid type",
        ),
    ] {
        let o = d.conclave(&["serve", spec, "--listen", "127.0.0.1:0"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.starts_with(&format!("error: {cause}")), "{err}");
        assert_eq!(err.matches(spec).count(), 1, "{err}");
    }
}
