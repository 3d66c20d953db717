//! The knowledge base: documents a team can consult, split into passages
//! ([`passages`]) and kept in a BM25 index (tantivy) in a folder of its
//! own. `conclave index build DIR... --out INDEX` writes it, reading
//! again only the files whose bytes changed; `conclave index query INDEX
//! "words"` prints the best passages with their scores.
//!
//! Each passage keeps its source file, heading path and byte range, so a
//! verdict that cites one says where the claim was checked.

pub mod passages;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Schema, Value, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexWriter, TantivyDocument, Term};

pub use passages::{Passage, Split};

/// What the index keeps of each file it read: the file's SHA-256 and its
/// passages, so that a rebuild reads again only what changed.
const MANIFEST: &str = "conclave-index.json";

/// The index's own description, beside tantivy's files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Manifest {
    /// The split the passages were cut with: another split rebuilds all.
    words: usize,
    overlap: usize,
    /// Per source file (as given, relative to its folder argument): its
    /// SHA-256 and passages.
    files: BTreeMap<String, (String, usize)>,
}

/// What a build did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Built {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    pub removed: Vec<String>,
    /// Passages in the index now.
    pub passages: usize,
}

/// A passage a task was given, as the run records it: where it comes
/// from, not its text (the text is in the task's prompt).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Citation {
    /// The team's name for the index (`[[index]] name`).
    pub index: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub heading: String,
    /// Byte range of the passage in its source file.
    pub start: u64,
    pub end: u64,
    pub score: f32,
}

impl Hit {
    /// This passage as a citation from the index the team calls `index`.
    pub fn citation(&self, index: &str) -> Citation {
        Citation {
            index: index.to_string(),
            source: self.source.clone(),
            heading: self.heading.clone(),
            start: self.start,
            end: self.end,
            score: self.score,
        }
    }
}

/// `prompt` with `hits` before it, numbered, each with where it comes
/// from: what a task with `context` asks its role.
pub fn with_passages(prompt: &str, index: &str, hits: &[Hit]) -> String {
    use std::fmt::Write;
    let mut s = format!("Passages from the documents (index `{index}`), best match first:\n");
    for (i, h) in hits.iter().enumerate() {
        let _ = write!(s, "\n[{}] {}", i + 1, h.source);
        if !h.heading.is_empty() {
            let _ = write!(s, " ({})", h.heading);
        }
        let _ = write!(s, ", bytes {}-{}\n{}\n", h.start, h.end, h.text.trim());
    }
    if hits.is_empty() {
        s.push_str("\n(no passage matched)\n");
    }
    let _ = write!(
        s,
        "\nAnswer from these passages. If they do not say, say that the documents do not say.\n\nQuestion: {prompt}"
    );
    s
}

/// A passage found by a query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub score: f32,
    pub source: String,
    pub heading: String,
    pub start: u64,
    pub end: u64,
    pub text: String,
}

struct Fields {
    text: tantivy::schema::Field,
    heading: tantivy::schema::Field,
    source: tantivy::schema::Field,
    start: tantivy::schema::Field,
    end: tantivy::schema::Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = b.add_text_field("text", TEXT | STORED);
    let heading = b.add_text_field("heading", TEXT | STORED);
    let source = b.add_text_field("source", STRING | STORED);
    let start = b.add_u64_field("start", STORED);
    let end = b.add_u64_field("end", STORED);
    (
        b.build(),
        Fields {
            text,
            heading,
            source,
            start,
            end,
        },
    )
}

fn fields(index: &Index) -> Result<Fields, String> {
    let s = index.schema();
    let get = |n: &str| {
        s.get_field(n)
            .map_err(|_| format!("not an index of `conclave index build` (no field {n})"))
    };
    Ok(Fields {
        text: get("text")?,
        heading: get("heading")?,
        source: get("source")?,
        start: get("start")?,
        end: get("end")?,
    })
}

/// The files under `dirs` an index reads, by a name relative to their
/// folder argument (the folder's own name first, so that two folders do
/// not collide), sorted.
fn sources(dirs: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for d in dirs {
        let label = d
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| d.display().to_string());
        if d.is_file() {
            out.push((label, d.clone()));
            continue;
        }
        let mut stack = vec![d.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for e in entries {
                let p = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if passages::readable(&p) {
                    let rel = p
                        .strip_prefix(d)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .to_string();
                    out.push((format!("{label}/{rel}"), p));
                }
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Builds or updates the index in `out` from the files under `dirs`:
/// files whose bytes did not change are not read again; files gone are
/// taken out.
pub fn build(dirs: &[PathBuf], out: &Path, split: Split) -> Result<Built, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", out.display());
    std::fs::create_dir_all(out).map_err(|e| at(&e))?;
    let manifest_path = out.join(MANIFEST);
    let mut manifest: Manifest = match std::fs::read(&manifest_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| at(&format!("{MANIFEST}: {e}")))?,
        Err(_) => Manifest::default(),
    };
    let resplit = manifest.words != split.words || manifest.overlap != split.overlap;
    let index = if out.join("meta.json").exists() && !resplit {
        Index::open_in_dir(out).map_err(|e| at(&e))?
    } else {
        // A new index, or passages cut another way: start again.
        for e in std::fs::read_dir(out).map_err(|e| at(&e))? {
            let p = e.map_err(|e| at(&e))?.path();
            if p.is_file() {
                let _ = std::fs::remove_file(&p);
            }
        }
        manifest = Manifest::default();
        Index::create_in_dir(out, schema().0).map_err(|e| at(&e))?
    };
    manifest.words = split.words;
    manifest.overlap = split.overlap;
    let f = fields(&index)?;
    let mut writer: IndexWriter = index.writer(50_000_000).map_err(|e| at(&e))?;
    let mut built = Built::default();
    let found = sources(dirs)?;
    let names: std::collections::BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    for gone in manifest
        .files
        .keys()
        .filter(|k| !names.contains(String::as_str(k)))
        .cloned()
        .collect::<Vec<_>>()
    {
        writer.delete_term(Term::from_field_text(f.source, &gone));
        manifest.files.remove(&gone);
        built.removed.push(gone);
    }
    for (name, path) in &found {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let hash = crate::plugin::cache::content_hash(&bytes);
        let before = manifest.files.get(name).map(|(h, _)| h.clone());
        if before.as_deref() == Some(hash.as_str()) {
            built.unchanged += 1;
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let ps = passages::passages(path, &text, split)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writer.delete_term(Term::from_field_text(f.source, name));
        for p in &ps {
            writer
                .add_document(doc!(
                    f.text => p.text.as_str(),
                    f.heading => p.heading.as_str(),
                    f.source => name.as_str(),
                    f.start => p.start as u64,
                    f.end => p.end as u64,
                ))
                .map_err(|e| at(&e))?;
        }
        manifest.files.insert(name.clone(), (hash, ps.len()));
        match before {
            Some(_) => built.changed.push(name.clone()),
            None => built.added.push(name.clone()),
        }
    }
    writer.commit().map_err(|e| at(&e))?;
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).expect("serialisable"),
    )
    .map_err(|e| at(&e))?;
    built.passages = manifest.files.values().map(|(_, n)| n).sum();
    Ok(built)
}

/// Whether `dir` holds an index this build can search; why not.
pub fn check(dir: &Path) -> Result<(), String> {
    if !dir.join(MANIFEST).exists() {
        return Err(format!(
            "no index here (build one with `conclave index build DIR --out {}`)",
            dir.display()
        ));
    }
    Index::open_in_dir(dir)
        .map(|_| ())
        .map_err(|e| format!("cannot open the index: {e}"))
}

/// An index opened for searching, kept open between queries: opening one
/// (tantivy's files, a reader, the query parser) costs far more than a
/// query. It follows rebuilds: a `conclave index build` into its folder is
/// searched once committed.
pub struct Searcher {
    dir: PathBuf,
    reader: tantivy::IndexReader,
    /// Over the passages' text and headings.
    parser: QueryParser,
    fields: Fields,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher").field("dir", &self.dir).finish()
    }
}

/// The searchers open in this process, by folder: teams that name the
/// same index share one (`serve` with many teams).
fn open_searchers() -> &'static std::sync::Mutex<BTreeMap<PathBuf, std::sync::Weak<Searcher>>> {
    static OPEN: std::sync::OnceLock<
        std::sync::Mutex<BTreeMap<PathBuf, std::sync::Weak<Searcher>>>,
    > = std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
}

impl Searcher {
    /// Opens the index in `dir`.
    pub fn open(dir: &Path) -> Result<Searcher, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
        if !dir.join(MANIFEST).exists() {
            return Err(format!(
                "{}: no index here (build one with `conclave index build DIR --out {}`)",
                dir.display(),
                dir.display()
            ));
        }
        let index = Index::open_in_dir(dir).map_err(|e| at(&e))?;
        let fields = fields(&index)?;
        let reader = index.reader().map_err(|e| at(&e))?;
        let parser = QueryParser::for_index(&index, vec![fields.text, fields.heading]);
        Ok(Searcher {
            dir: dir.to_path_buf(),
            reader,
            parser,
            fields,
        })
    }

    /// The searcher of `dir` this process has open, opened if none is.
    pub fn shared(dir: &Path) -> Result<std::sync::Arc<Searcher>, String> {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut open = open_searchers().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = open.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(s);
        }
        let s = std::sync::Arc::new(Searcher::open(dir)?);
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, std::sync::Arc::downgrade(&s));
        Ok(s)
    }

    /// The `top` passages that best match `words` (BM25 over their text
    /// and headings), best first.
    pub fn search(&self, words: &str, top: usize) -> Result<Vec<Hit>, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", self.dir.display());
        let f = &self.fields;
        let searcher = self.reader.searcher();
        // Words as a user types them: query syntax in them is taken as words.
        let (q, _) = self.parser.parse_query_lenient(words);
        let found = searcher
            .search(&q, &TopDocs::with_limit(top.max(1)))
            .map_err(|e| at(&e))?;
        let mut hits = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let d: TantivyDocument = searcher.doc(addr).map_err(|e| at(&e))?;
            let s = |field| {
                d.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let n = |field| d.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
            hits.push(Hit {
                score,
                source: s(f.source),
                heading: s(f.heading),
                start: n(f.start),
                end: n(f.end),
                text: s(f.text),
            });
        }
        Ok(hits)
    }
}

/// The `top` passages of the index in `dir` that best match `words`
/// (BM25 over their text and headings), best first; opens the index for
/// this one query ([`Searcher`] keeps it open).
pub fn query(dir: &Path, words: &str, top: usize) -> Result<Vec<Hit>, String> {
    Searcher::open(dir)?.search(words, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("conclave-knowledge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("docs")).unwrap();
        d
    }

    #[test]
    fn teams_naming_one_folder_share_its_searcher_and_it_follows_a_rebuild() {
        let d = folder("shared");
        let (docs, out) = (d.join("docs"), d.join("index"));
        std::fs::write(
            docs.join("owls.md"),
            "# Owls\n\nThe snowy owl nests on tundra.\n",
        )
        .unwrap();
        build(std::slice::from_ref(&docs), &out, Split::default()).unwrap();
        let a = Searcher::shared(&out).unwrap();
        // Another spelling of the same folder.
        let b = Searcher::shared(&d.join("docs/../index")).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b), "one searcher per folder");
        assert!(a.search("penguin colony", 5).unwrap().is_empty());
        std::fs::write(
            docs.join("penguins.md"),
            "# Penguins\n\nThe emperor penguin colony breeds in winter.\n",
        )
        .unwrap();
        build(std::slice::from_ref(&docs), &out, Split::default()).unwrap();
        // The reader reloads once tantivy sees the commit.
        let mut found = Vec::new();
        for _ in 0..200 {
            found = a.search("penguin colony", 5).unwrap();
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(found.len(), 1, "the rebuilt index is searched");
        assert!(found[0].source.ends_with("penguins.md"), "{:?}", found[0]);
        drop((a, b));
        // Nobody holds it: the next team opens it again.
        let c = Searcher::shared(&out).unwrap();
        assert_eq!(c.search("snowy owl", 5).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
