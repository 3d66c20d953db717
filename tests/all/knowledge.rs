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
