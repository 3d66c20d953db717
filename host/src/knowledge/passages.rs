//! Documents split into passages: by headings first (Markdown `#`
//! headings, HTML `<h1>`–`<h6>`), then by a budget of words with an
//! overlap, so that a passage is small enough to hand a verifier and still
//! says where it came from (its file, heading path and byte range).

use std::path::Path;

/// How passages are cut.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    /// Most words in a passage.
    pub words: usize,
    /// Words a passage repeats from the end of the one before it (in the
    /// same section).
    pub overlap: usize,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            words: 200,
            overlap: 40,
        }
    }
}

/// One passage of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    /// Headings above it, outermost first, joined with ` > `.
    pub heading: String,
    pub text: String,
    /// Where it is in its file: bytes `start..end`.
    pub start: usize,
    pub end: usize,
}

/// The kinds of file an index reads, by extension.
pub fn readable(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("txt" | "md" | "markdown" | "html" | "htm" | "jsonl")
    )
}

/// The passages of a file's `text`, read by its extension. A JSONL line
/// without a string `text` field is an error naming the line.
pub fn passages(path: &Path, text: &str, split: Split) -> Result<Vec<Passage>, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let mut out = Vec::new();
    match ext.as_str() {
        "md" | "markdown" => {
            for s in markdown_sections(text) {
                windows(&s.heading, text, s.start, s.end, split, &mut out);
            }
        }
        "html" | "htm" => {
            for s in html_sections(text) {
                let plain = strip_tags(&text[s.start..s.end]);
                window_plain(&s.heading, &plain, s.start, s.end, split, &mut out);
            }
        }
        "jsonl" => {
            let mut at = 0;
            for (i, line) in text.split_inclusive('\n').enumerate() {
                let (start, end) = (at, at + line.len());
                at = end;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
                let body = v["text"]
                    .as_str()
                    .ok_or_else(|| format!("line {}: no string field `text`", i + 1))?;
                let title = v["title"].as_str().or(v["id"].as_str()).unwrap_or("");
                window_plain(title, body, start, end, split, &mut out);
            }
        }
        _ => windows("", text, 0, text.len(), split, &mut out),
    }
    Ok(out)
}

/// A section: its heading path and byte range in the file.
struct Section {
    heading: String,
    start: usize,
    end: usize,
}

fn markdown_sections(text: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let (mut start, mut heading) = (0, String::new());
    let mut at = 0;
    let mut fenced = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        let is_heading =
            !fenced && (1..=6).contains(&level) && trimmed[level..].starts_with([' ', '\t']);
        if is_heading {
            if at > start {
                sections.push(Section {
                    heading: heading.clone(),
                    start,
                    end: at,
                });
            }
            let title = trimmed[level..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_string();
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            heading = path
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" > ");
            start = at;
        }
        at += line.len();
    }
    if at > start {
        sections.push(Section {
            heading,
            start,
            end: at,
        });
    }
    sections
}

fn html_sections(text: &str) -> Vec<Section> {
    let lower = text.to_ascii_lowercase();
    let mut sections = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let (mut start, mut heading) = (0, String::new());
    let mut from = 0;
    while let Some(pos) = lower[from..].find("<h").map(|p| p + from) {
        let level = lower[pos + 2..]
            .chars()
            .next()
            .and_then(|c| c.to_digit(10))
            .filter(|d| (1..=6).contains(d));
        let Some(level) = level else {
            from = pos + 2;
            continue;
        };
        let close = format!("</h{level}>");
        let Some(end) = lower[pos..].find(&close).map(|e| e + pos) else {
            from = pos + 2;
            continue;
        };
        if pos > start {
            sections.push(Section {
                heading: heading.clone(),
                start,
                end: pos,
            });
        }
        let title = strip_tags(&text[pos..end]);
        path.retain(|(l, _)| *l < level as usize);
        path.push((level as usize, title.trim().to_string()));
        heading = path
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(" > ");
        start = pos;
        from = end + close.len();
    }
    if text.len() > start {
        sections.push(Section {
            heading,
            start,
            end: text.len(),
        });
    }
    sections
}

/// The text of HTML without its tags, scripts and styles, with the common
/// entities decoded.
fn strip_tags(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut i = 0;
    while i < html.len() {
        if html[i..].starts_with('<') {
            for skip in ["script", "style"] {
                if lower[i + 1..].starts_with(skip) {
                    let close = format!("</{skip}>");
                    if let Some(e) = lower[i..].find(&close) {
                        i += e + close.len();
                        out.push(' ');
                        break;
                    }
                }
            }
            if i >= html.len() || !html[i..].starts_with('<') {
                continue;
            }
            match html[i..].find('>') {
                Some(e) => {
                    i += e + 1;
                    out.push(' ');
                }
                None => break,
            }
        } else {
            let next = html[i..].find('<').map_or(html.len(), |n| n + i);
            out.push_str(&html[i..next]);
            i = next;
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Word windows over `text[start..end]`, each with its own byte range.
fn windows(
    heading: &str,
    text: &str,
    start: usize,
    end: usize,
    split: Split,
    out: &mut Vec<Passage>,
) {
    let section = &text[start..end];
    let words: Vec<(usize, usize)> = word_spans(section);
    let step = split.words.saturating_sub(split.overlap).max(1);
    let mut i = 0;
    while i < words.len() {
        let last = (i + split.words).min(words.len()) - 1;
        let (s, e) = (words[i].0, words[last].1);
        out.push(Passage {
            heading: heading.to_string(),
            text: section[s..e]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            start: start + s,
            end: start + e,
        });
        if last + 1 == words.len() {
            break;
        }
        i += step;
    }
}

/// Word windows over text that is not a slice of the file (HTML's text, a
/// JSONL field): each passage carries the section's byte range.
fn window_plain(
    heading: &str,
    plain: &str,
    start: usize,
    end: usize,
    split: Split,
    out: &mut Vec<Passage>,
) {
    let words: Vec<&str> = plain.split_whitespace().collect();
    let step = split.words.saturating_sub(split.overlap).max(1);
    let mut i = 0;
    while i < words.len() {
        let last = (i + split.words).min(words.len());
        out.push(Passage {
            heading: heading.to_string(),
            text: words[i..last].join(" "),
            start,
            end,
        });
        if last == words.len() {
            break;
        }
        i += step;
    }
}

fn word_spans(s: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(st)) => {
                spans.push((st, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        spans.push((st, s.len()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_split_by_headings_then_by_words_with_overlap() {
        let md = "# Birds\nintro words here\n## Owls\none two three four five six\n```\n# not a heading\n```\n";
        let p = passages(
            Path::new("a.md"),
            md,
            Split {
                words: 4,
                overlap: 1,
            },
        )
        .unwrap();
        assert_eq!(p[0].heading, "Birds");
        assert_eq!(p[0].text, "# Birds intro words");
        let owls: Vec<&Passage> = p.iter().filter(|x| x.heading == "Birds > Owls").collect();
        assert_eq!(owls[0].text, "## Owls one two");
        assert_eq!(owls[1].text, "two three four five", "one word of overlap");
        assert!(owls.iter().any(|x| x.text.contains("# not a heading")));
        for x in &p {
            assert!(md[x.start..x.end].starts_with(x.text.split(' ').next().unwrap()));
        }
    }

    #[test]
    fn html_and_jsonl_are_read() {
        let html = "<html><style>p{}</style><h1>Moons</h1><p>Io &amp; Europa</p><h2>Io</h2><p>volcanic</p></html>";
        let p = passages(Path::new("a.html"), html, Split::default()).unwrap();
        let io = p.iter().find(|x| x.heading == "Moons > Io").unwrap();
        assert_eq!(io.text, "Io volcanic");
        assert!(p.iter().any(|x| x.text == "Moons Io & Europa"));
        assert!(!p.iter().any(|x| x.text.contains("p{}")));
        let jl = "{\"title\":\"t1\",\"text\":\"alpha beta\"}\n\n{\"text\":\"gamma\"}\n";
        let p = passages(Path::new("a.jsonl"), jl, Split::default()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].heading.as_str(), p[0].text.as_str()),
            ("t1", "alpha beta")
        );
        assert_eq!(&jl[p[1].start..p[1].end], "{\"text\":\"gamma\"}\n");
        let e = passages(Path::new("a.jsonl"), "{\"body\":1}\n", Split::default()).unwrap_err();
        assert!(e.contains("line 1: no string field `text`"), "{e}");
    }
}
