//! `conclave index ...`: build and query a knowledge base.

use super::{exit, IndexCmd};
use conclave::knowledge::{self, Split};

pub fn run(cmd: IndexCmd) -> u8 {
    match cmd {
        IndexCmd::Build {
            dirs,
            out,
            words,
            overlap,
            json,
        } => {
            if words == 0 || overlap >= words {
                eprintln!("error: --words must be above zero and --overlap below it");
                return exit::USAGE;
            }
            match knowledge::build(&dirs, &out, Split { words, overlap }) {
                Ok(b) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&b).expect("serialisable")
                    );
                    exit::OK
                }
                Ok(b) => {
                    println!(
                        "{}: {} passages; files: {} added, {} changed, {} unchanged, {} removed",
                        out.display(),
                        b.passages,
                        b.added.len(),
                        b.changed.len(),
                        b.unchanged,
                        b.removed.len()
                    );
                    for (what, files) in [
                        ("added", &b.added),
                        ("changed", &b.changed),
                        ("removed", &b.removed),
                    ] {
                        for f in files {
                            println!("  {what}: {f}");
                        }
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILURE
                }
            }
        }
        IndexCmd::Query {
            index,
            words,
            top,
            json,
        } => match knowledge::query(&index, &words, top) {
            Ok(hits) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&hits).expect("serialisable")
                );
                exit::OK
            }
            Ok(hits) => {
                if hits.is_empty() {
                    println!("no passage matches");
                }
                for h in hits {
                    let heading = if h.heading.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", h.heading)
                    };
                    println!(
                        "{:>7.3}  {}{heading} [bytes {}..{}]",
                        h.score, h.source, h.start, h.end
                    );
                    let mut text = h.text.clone();
                    if text.len() > 300 {
                        let mut end = 300;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.truncate(end);
                        text.push_str("...");
                    }
                    println!("         {text}");
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        },
    }
}
