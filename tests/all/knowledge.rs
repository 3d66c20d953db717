//! The knowledge base from the command line: `conclave index build` over
//! Markdown, HTML, JSONL and text files, `index query` finding the passage
//! that answers with its file, heading path and byte range, and a rebuild
//! that reads again only the files that changed.

use std::path::Path;

use conclave_tests::conclave_bin;
use serde_json::Value;

fn conclave(dir: &Path, args: &[&str]) -> Value {
    let out = std::process::Command::new(conclave_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("conclave runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const BIRDS: &str = "# Birds\n\nNotes on birds of cold places.\n\n## Owls\n\nThe snowy owl nests on the open tundra, in a scrape on a mound.\n\n## Herons\n\nGrey herons wade in shallow water and stab at fish.\n";

#[test]
fn an_index_is_built_queried_and_rebuilt_touching_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "notes/birds.md", BIRDS);
    write(
        d,
        "notes/moons.html",
        "<html><body><h1>Moons</h1><h2>Io</h2><p>Io has hundreds of active volcanoes.</p></body></html>",
    );
    write(
        d,
        "notes/facts.jsonl",
        "{\"title\":\"Kelp\",\"text\":\"Giant kelp grows up to half a metre a day.\"}\n",
    );
    write(d, "notes/plain.txt", "Basalt is a volcanic rock.\n");
    write(d, "notes/ignored.bin", "snowy owl tundra");

    let built = conclave(d, &["index", "build", "notes", "--out", "kb", "--json"]);
    assert_eq!(built["added"].as_array().unwrap().len(), 4, "{built}");
    let passages = built["passages"].as_u64().unwrap();
    assert!(passages >= 5, "{built}");

    let hits = conclave(
        d,
        &[
            "index",
            "query",
            "kb",
            "where does the snowy owl nest?",
            "--json",
        ],
    );
    let top = &hits[0];
    assert_eq!(top["source"], "notes/birds.md", "{hits}");
    assert_eq!(top["heading"], "Birds > Owls");
    assert!(top["text"].as_str().unwrap().contains("tundra"));
    let (s, e) = (
        top["start"].as_u64().unwrap() as usize,
        top["end"].as_u64().unwrap() as usize,
    );
    assert!(
        BIRDS[s..e].contains("The snowy owl nests on the open tundra"),
        "{}",
        &BIRDS[s..e]
    );
    assert!(top["score"].as_f64().unwrap() > 0.0);
    let hits = conclave(d, &["index", "query", "kb", "volcanoes Io", "--json"]);
    assert_eq!(hits[0]["source"], "notes/moons.html", "{hits}");
    assert_eq!(hits[0]["heading"], "Moons > Io");
    let hits = conclave(d, &["index", "query", "kb", "kelp growth", "--json"]);
    assert_eq!(
        (hits[0]["source"].as_str(), hits[0]["heading"].as_str()),
        (Some("notes/facts.jsonl"), Some("Kelp"))
    );

    // One file changes, one goes: only those are read again.
    write(d, "notes/birds.md", &BIRDS.replace("tundra", "taiga"));
    std::fs::remove_file(d.join("notes/plain.txt")).unwrap();
    let again = conclave(d, &["index", "build", "notes", "--out", "kb", "--json"]);
    assert_eq!(
        again["changed"],
        serde_json::json!(["notes/birds.md"]),
        "{again}"
    );
    assert_eq!(again["removed"], serde_json::json!(["notes/plain.txt"]));
    assert_eq!(again["added"], serde_json::json!([]));
    assert_eq!(again["unchanged"], 2);
    let hits = conclave(d, &["index", "query", "kb", "tundra", "--json"]);
    assert_eq!(hits, serde_json::json!([]), "the old text is gone");
    let hits = conclave(d, &["index", "query", "kb", "basalt", "--json"]);
    assert_eq!(
        hits,
        serde_json::json!([]),
        "the removed file's passages are gone"
    );
    let hits = conclave(d, &["index", "query", "kb", "taiga", "--json"]);
    assert_eq!(hits[0]["heading"], "Birds > Owls");
    assert_eq!(
        again["passages"].as_u64().unwrap(),
        passages - 1,
        "the text file was one passage"
    );
}

/// A team over an index: `[[index]]` and a task's `context`.
const CONTEXT_TEAM: &str = r#"
[team]
name = "docs"

[[index]]
name = "notes"
path = "idx"

[[node]]
name = "sim"
backend = "sim"

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "text"
context = { index = "notes", passages = 1 }
"#;

#[test]
fn a_task_with_context_is_given_the_passages_that_match_and_cites_them() {
    use conclave::journal::{sqlite::SqliteJournal, Entry, Journal};
    use conclave::team::events::Event;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "notes/birds.md", BIRDS);
    write(
        d,
        "notes/tools.md",
        "# Tools\n\nA spade digs; a rake gathers leaves.\n",
    );
    conclave(d, &["index", "build", "notes", "--out", "idx", "--json"]);
    write(d, "team.toml", CONTEXT_TEAM);
    let data = d.join("data");
    let out = crate::journal::command(
        &[
            "run",
            "team.toml",
            "Where does the snowy owl nest?",
            "--json",
        ],
        &data,
        &[],
    )
    .current_dir(d)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cited = v["citations"].as_array().expect("citations in the result");
    assert_eq!(cited.len(), 1, "{v}");
    assert_eq!(cited[0]["source"], "notes/birds.md");
    assert_eq!(cited[0]["heading"], "Birds > Owls");
    assert_eq!(cited[0]["index"], "notes");
    // The byte range is the passage's, in the file.
    let (start, end) = (
        cited[0]["start"].as_u64().unwrap() as usize,
        cited[0]["end"].as_u64().unwrap() as usize,
    );
    assert!(
        BIRDS[start..end].contains("snowy owl nests"),
        "{start}..{end}"
    );
    // The journal records what the task was given: the passage in its
    // prompt, the passage's place in a `retrieved` event.
    let log = SqliteJournal::open(&data)
        .unwrap()
        .read(v["run_id"].as_str().unwrap())
        .unwrap();
    let events: Vec<&Event> = log
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Event { event } => Some(event),
            _ => None,
        })
        .collect();
    let retrieved = events
        .iter()
        .find_map(|e| match e {
            Event::Retrieved {
                task,
                index,
                passages,
            } => Some((task.clone(), index.clone(), passages.clone())),
            _ => None,
        })
        .expect("a retrieved event");
    assert_eq!(
        (retrieved.0.as_str(), retrieved.1.as_str()),
        ("answer", "notes")
    );
    assert_eq!(retrieved.2[0].source, "notes/birds.md");
    let prompt = events
        .iter()
        .find_map(|e| match e {
            Event::TaskStarted { prompt, .. } => Some(prompt.clone()),
            _ => None,
        })
        .unwrap();
    assert!(prompt.contains("in a scrape on a mound"), "{prompt}");
    assert!(!prompt.contains("rake"), "{prompt}");
    assert!(
        prompt.ends_with("Question: Where does the snowy owl nest?"),
        "{prompt}"
    );
}

#[test]
fn a_context_naming_no_index_or_an_index_not_built_is_refused_with_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |spec: &str| {
        write(d, "team.toml", spec);
        let out = crate::journal::command(&["run", "team.toml", "q"], &d.join("data"), &[])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "a bad spec");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err =
        run(&CONTEXT_TEAM.replace("index = \"notes\", passages", "index = \"note\", passages"));
    assert!(
        err.contains("team.toml:19:")
            && err.contains("task `answer`")
            && err.contains("`note`")
            && err.contains("did you mean `notes`"),
        "{err}"
    );
    // Declared, but never built.
    let err = run(CONTEXT_TEAM);
    assert!(
        err.contains("index `notes`")
            && err.contains("no index here")
            && err.contains("conclave index build"),
        "{err}"
    );
}
