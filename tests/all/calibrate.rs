//! `conclave calibrate` end to end: a team of a reliable, a middling and an
//! unreliable simulated node answers evaluation items; calibrate learns,
//! without the gold answers, which is which; `replay --voter weighted --weights`
//! counts the same ballots with the learned weights; a spec names the file.

use std::path::Path;
use std::process::{Command, Output};

use conclave_tests::{conclave_bin, workspace};
use serde_json::Value;

fn conclave(args: &[&str], data_dir: &Path) -> Output {
    Command::new(conclave_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .current_dir(workspace())
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// Twelve plausible wrong answers per item: two nodes seldom make the same
// slip. (Agreement overstates nodes that often do; calibrate's unit tests
// show the order still holds then.)
const TEAM: &str = r#"
[team]
name = "three-sims"
consensus = { decide = "all" }

[[node]]
name = "steady"
backend = "sim"
accuracy = 0.85
distractors = 12
seed = 1

[[node]]
name = "fair"
backend = "sim"
accuracy = 0.55
distractors = 12
seed = 3

[[node]]
name = "flaky"
backend = "sim"
accuracy = 0.3
distractors = 12
seed = 2

[[plugin]]
name = "solver"
grants = ["llm"]

[[task]]
id = "answer"
role = "solver"
replicas = 6
voter = "VOTER"
answer_kind = "number"
"#;

#[test]
fn calibrate_learns_who_is_reliable_and_the_weighted_voter_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = dir.path().join("team.toml");
    std::fs::write(&spec, TEAM.replace("VOTER", "majority")).unwrap();
    ok(&conclave(
        &[
            "eval",
            spec.to_str().unwrap(),
            "--data",
            "data/eval/arithmetic_dev.jsonl",
            "--limit",
            "100",
            "--parallel",
            "8",
            "--json",
        ],
        &data,
    ));

    let weights = dir.path().join("weights.toml");
    let out = ok(&conclave(
        &[
            "calibrate",
            "--team",
            "three-sims",
            "--out",
            weights.to_str().unwrap(),
            "--json",
        ],
        &data,
    ));
    let w: Value = serde_json::from_str(&out).unwrap();
    let node = |n: &str, k: &str| w["nodes"][n][k].as_f64().unwrap();
    assert_eq!(w["items"], 100, "{w}");
    // Learned from agreement alone: in the right order, and close to what
    // gold says (the sim's wrong answers sometimes coincide, which pulls
    // the best node's estimate down by up to about 0.15).
    assert!(
        node("steady", "accuracy") > node("fair", "accuracy")
            && node("fair", "accuracy") > node("flaky", "accuracy"),
        "{w}"
    );
    for n in ["steady", "fair", "flaky"] {
        assert!(
            (node(n, "accuracy") - node(n, "gold_accuracy")).abs() < 0.2,
            "{n}: {w}"
        );
    }
    assert!(node("steady", "weight") > node("fair", "weight"), "{w}");
    assert!(node("fair", "weight") > node("flaky", "weight"), "{w}");
    assert_eq!(
        node("steady", "ballots") + node("fair", "ballots") + node("flaky", "ballots"),
        600.0,
        "6 ballots per item"
    );
    let file = std::fs::read_to_string(&weights).unwrap();
    assert!(
        file.starts_with("# Node weights learned by `conclave calibrate`"),
        "{file}"
    );

    // The same ballots, counted again with the learned weights.
    let replayed = ok(&conclave(
        &[
            "replay",
            "--all",
            "--team",
            "three-sims",
            "--voter",
            "weighted",
            "--weights",
            weights.to_str().unwrap(),
            "--json",
        ],
        &data,
    ));
    let reports: Vec<Value> = serde_json::from_str(&replayed).unwrap();
    assert_eq!(reports.len(), 100);
    let right = |k: &str| reports.iter().filter(|r| r[k] == true).count();
    // Weights learned from 100 items are estimates: counted with them the
    // votes come out about as right as majority's or better (89–90 against
    // 90–95 in trials by hand), never far worse. Which
    // replica lands on which node varies from run to run, hence the margin.
    assert!(
        right("right_now") + 5 >= right("right_before"),
        "weighted {} < majority {} - 5",
        right("right_now"),
        right("right_before")
    );
    assert!(right("right_now") >= 85, "{}", right("right_now"));
    let text = ok(&conclave(
        &[
            "replay",
            "--all",
            "--voter",
            "weighted",
            "--weights",
            weights.to_str().unwrap(),
        ],
        &data,
    ));
    assert!(
        text.contains(&format!(
            "100 runs with a gold answer: right as recorded {}",
            right("right_before")
        )),
        "{text}"
    );

    // A spec names the file; its weights reach the voter.
    let weighted = dir.path().join("weighted.toml");
    std::fs::write(
        &weighted,
        TEAM.replace("VOTER", "weighted")
            + "\n[[plugin]]\nname = \"weighted\"\nweights = \"weights.toml\"\n",
    )
    .unwrap();
    let run = ok(&conclave(
        &[
            "run",
            weighted.to_str().unwrap(),
            "What is 2 + 2?",
            "--gold",
            "4",
            "--json",
        ],
        &data,
    ));
    let r: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(r["stop"]["stop"], "decided", "{r}");
}

#[test]
fn a_bad_weights_file_is_refused_at_load_naming_plugin_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("team.toml");
    let with = |extra: &str| {
        TEAM.replace("VOTER", "weighted") + "\n[[plugin]]\nname = \"weighted\"\n" + extra
    };
    std::fs::write(&spec, with("weights = \"missing.toml\"\n")).unwrap();
    let o = conclave(&["run", spec.to_str().unwrap(), "1 + 1?"], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("team.toml")
            && err.contains("plugin `weighted`")
            && err.contains("missing.toml"),
        "{err}"
    );
    std::fs::write(dir.path().join("w.toml"), "nodes = 3\n").unwrap();
    std::fs::write(
        &spec,
        with("weights = \"w.toml\"\nconfig = { weights = { a = 1.0 } }\n"),
    )
    .unwrap();
    let o = conclave(&["run", spec.to_str().unwrap(), "1 + 1?"], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("w.toml"), "{err}");
    let o = conclave(&["calibrate", "--team", "nobody"], dir.path());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no journaled run of team `nobody`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Two nodes cannot be told apart by agreement: refused, naming them.
    let (start, end) = (
        TEAM.find("[[node]]\nname = \"fair\"").unwrap(),
        TEAM.find("[[node]]\nname = \"flaky\"").unwrap(),
    );
    let two = TEAM
        .replace(&TEAM[start..end], "")
        .replace("three-sims", "two-sims")
        .replace("VOTER", "majority");
    std::fs::write(&spec, two).unwrap();
    ok(&conclave(
        &[
            "eval",
            spec.to_str().unwrap(),
            "--data",
            "data/eval/arithmetic_dev.jsonl",
            "--limit",
            "3",
        ],
        dir.path(),
    ));
    let o = conclave(
        &[
            "calibrate",
            "--team",
            "two-sims",
            "--out",
            dir.path().join("x.toml").to_str().unwrap(),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 node(s) (flaky, steady)") && err.contains("at least 3 nodes"),
        "{err}"
    );
    assert!(!dir.path().join("x.toml").exists());
}
