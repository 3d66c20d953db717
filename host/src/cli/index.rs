//! `conclave index ...`: build and query a knowledge base.

use std::path::PathBuf;

use clap::Subcommand;

use super::exit;
use conclave::knowledge::{self, Split};

#[derive(Subcommand)]
pub(super) enum IndexCmd {
    /// Read text, Markdown, HTML and JSONL (a `text` field per line) files
    /// under each DIR, split them into passages (by headings, then by a
    /// budget of words with an overlap) and write a BM25 index to INDEX.
    /// Run again after files change: only the changed files are read.
    Build {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The index folder (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Most words in a passage.
        #[arg(long, default_value_t = 200)]
        words: usize,
        /// Words a passage repeats from the one before it.
        #[arg(long, default_value_t = 40)]
        overlap: usize,
        #[arg(long)]
        json: bool,
    },
    /// The passages of INDEX that best match the words, with their BM25
    /// scores, files, headings and byte ranges.
    Query {
        index: PathBuf,
        words: String,
        /// How many passages.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
}

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
