//! What the knowledge base costs (`conclave bench index`): building an
//! index (passages per second), rebuilding it after one file changed, and
//! searching it, with the index kept open as a team keeps it
//! ([`Searcher`]) and opened for each query as `conclave index query` and
//! teams before the shared searcher did. The corpus is generated: Markdown
//! files of sections whose words follow a Zipf law over a made-up
//! vocabulary, seeded, so that every run indexes the same text.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::Latency;
use crate::knowledge::{self, Searcher, Split};

/// Sections (one passage each) per generated file.
const SECTIONS_PER_FILE: usize = 100;

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct IndexBench {
    /// Passages in the index, and the files they came from.
    pub passages: usize,
    pub files: usize,
    /// Words in the corpus.
    pub words: usize,
    /// The first build: wall time and passages per second.
    pub build: Duration,
    pub passages_per_s: f64,
    /// A rebuild after one file changed (the others are not read again).
    pub rebuild_one: Duration,
    /// The index's size on disk.
    pub index_bytes: u64,
    /// Queries searched, and passages asked of each.
    pub queries: usize,
    pub top: usize,
    /// Per query, one at a time, with the index kept open.
    pub search: Latency,
    /// Per query, one at a time, opening the index for it.
    pub open_and_search: Latency,
}

/// A made-up word for rank `r`: syllables from its digits.
fn word(r: usize) -> String {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "ba", "de", "fu", "go", "hi", "ju",
        "pe", "qua", "ri", "so", "tu", "wa", "xe", "yo", "zu",
    ];
    let mut n = r + SYLLABLES.len();
    let mut w = String::new();
    while n > 0 {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    w
}

/// Ranks of a Zipf law (exponent 1.07) over `VOCABULARY` words, from 0.
struct Zipf(rand_distr::Zipf<f64>);

/// Words of the made-up vocabulary.
const VOCABULARY: usize = 30_000;

impl Zipf {
    fn new() -> Zipf {
        Zipf(rand_distr::Zipf::new(VOCABULARY as f64, 1.07).expect("a valid Zipf law"))
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> usize {
        use rand_distr::Distribution;
        self.0.sample(rng) as usize - 1
    }
}

/// Writes `files` Markdown files of [`SECTIONS_PER_FILE`] sections each
/// under `dir`; the words written.
fn corpus(dir: &Path, files: usize, rng: &mut ChaCha8Rng, zipf: &Zipf) -> Result<usize, String> {
    let mut words = 0;
    for f in 0..files {
        let mut text = format!("# Document {f}\n\n");
        for s in 0..SECTIONS_PER_FILE {
            let h: Vec<String> = (0..2).map(|_| word(zipf.draw(rng))).collect();
            text.push_str(&format!("## Section {s} {}\n\n", h.join(" ")));
            let n = rng.random_range(60..=120);
            let body: Vec<String> = (0..n).map(|_| word(zipf.draw(rng))).collect();
            words += n + 2;
            text.push_str(&body.join(" "));
            text.push_str(".\n\n");
        }
        let p = dir.join(format!("doc-{f:05}.md"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(words)
}

fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A folder of this process's own under the system's temporary folder,
/// removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("conclave-bench-index-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds an index of about `passages` passages in a temporary folder and
/// searches it `queries` times for the `top` best.
pub fn run(passages: usize, queries: usize, top: usize) -> Result<IndexBench, String> {
    let tmp = Scratch::new()?;
    let (docs, out) = (tmp.0.join("docs"), tmp.0.join("index"));
    std::fs::create_dir_all(&docs).map_err(|e| format!("{}: {e}", docs.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let zipf = Zipf::new();
    let files = passages.div_ceil(SECTIONS_PER_FILE).max(1);
    let words = corpus(&docs, files, &mut rng, &zipf)?;
    let began = Instant::now();
    let built = knowledge::build(std::slice::from_ref(&docs), &out, Split::default())?;
    let build = began.elapsed();
    // One file changed: only it is read and indexed again.
    let one = docs.join("doc-00000.md");
    let mut text = std::fs::read_to_string(&one).map_err(|e| e.to_string())?;
    text.push_str("## A section added\n\nkalo mine rusa.\n");
    std::fs::write(&one, text).map_err(|e| e.to_string())?;
    let began = Instant::now();
    let rebuilt = knowledge::build(std::slice::from_ref(&docs), &out, Split::default())?;
    let rebuild_one = began.elapsed();
    if rebuilt.changed.len() != 1 || rebuilt.unchanged + 1 != files {
        return Err(format!(
            "the rebuild read {} files again, not 1",
            rebuilt.changed.len() + rebuilt.added.len()
        ));
    }
    // Queries of 2–5 words, the commonest 50 left out (as a question's
    // words mostly are not the corpus's commonest).
    let asked: Vec<String> = (0..queries)
        .map(|_| {
            let n = rng.random_range(2..=5);
            (0..n)
                .map(|_| word(50 + zipf.draw(&mut rng) % (VOCABULARY - 50)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let searcher = Searcher::open(&out)?;
    let mut kept = Vec::with_capacity(queries);
    for q in &asked {
        let t = Instant::now();
        let hits = searcher.search(q, top)?;
        kept.push(t.elapsed());
        std::hint::black_box(hits);
    }
    // Opening per query is slow: a tenth of the queries tell its cost.
    let mut opened = Vec::new();
    for q in asked.iter().take((queries / 10).max(1)) {
        let t = Instant::now();
        let hits = knowledge::query(&out, q, top)?;
        opened.push(t.elapsed());
        std::hint::black_box(hits);
    }
    Ok(IndexBench {
        passages: rebuilt.passages,
        files,
        words,
        build,
        passages_per_s: built.passages as f64 / build.as_secs_f64(),
        rebuild_one,
        index_bytes: size_of(&out),
        queries,
        top,
        search: Latency::of(kept),
        open_and_search: Latency::of(opened),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_corpus_is_built_rebuilt_and_searched() {
        let b = run(300, 20, 5).unwrap();
        assert_eq!(b.files, 3);
        // One passage per section (each under the split's word budget),
        // plus the section added to one file.
        assert!((300..=306).contains(&b.passages), "{} passages", b.passages);
        assert!(b.words > 300 * 60);
        assert_eq!(b.search.calls, 20);
        assert!(b.search.p50 > Duration::ZERO && b.search.p50 <= b.search.p99);
        assert!(b.index_bytes > 0);
    }

    #[test]
    fn words_are_distinct_per_rank() {
        let ws: std::collections::HashSet<String> = (0..5_000).map(word).collect();
        assert_eq!(ws.len(), 5_000);
    }
}
