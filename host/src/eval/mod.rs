//! Evaluation: teams scored on a dataset. Items are JSONL lines, either
//! `{"question", "answer"}` (numbers compared after normalisation, other
//! text after trimming and case-folding, or held as whole words by a
//! short answer; optional `aliases` and `abstain`, see [`Item`]) or
//! `{"question", "choices", "answer": "B"}` (multiple choice, letters
//! compared). Every
//! item is a journaled run whose id derives from the evaluation and a hash
//! of what decides its result (the team's spec text, the SHA-256 of every
//! plugin it loaded, and the item's content), so an interrupted evaluation
//! resumes: items whose run ended are read back, not asked again, while a
//! team that kept its name but changed its voter, nodes or plugins is
//! asked again.
//!
//! What lives elsewhere: the CLI prints the table and draws the progress
//! bar; [`chart`] writes the SVG.

pub mod chart;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_sdk::answer::{self, Kind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::team::consensus::StopReason;
use crate::team::events::Quiet;
use crate::team::job::{JobResult, PreparedTeam};
use crate::team::submit::Job;

/// One dataset item.
#[derive(Clone, Debug, Deserialize)]
pub struct Item {
    #[serde(default)]
    pub id: Option<String>,
    pub question: String,
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    pub answer: String,
    /// Other spellings of the answer that count as right.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The right response is to abstain: the documents do not answer it
    /// (also when `answer` itself says so).
    #[serde(default)]
    pub abstain: bool,
}

impl Item {
    /// How its answer is compared.
    pub fn kind(&self) -> Kind {
        if self.choices.is_some() {
            Kind::Choice
        } else if answer::normalize_number(&self.answer).is_some() {
            Kind::Number
        } else {
            Kind::Text
        }
    }

    /// Whether the right response is an abstention.
    pub fn gold_abstains(&self) -> bool {
        self.abstain || answer::abstains(&self.answer)
    }

    /// Whether `given` is its answer: the same as the answer or one of
    /// its aliases after normalisation, or, for free text, a short answer
    /// (at most eight words more) that holds one of them as whole words
    /// ("Rust 1.91.0" for "1.91.0"; a list of guesses is not short).
    pub fn answered_by(&self, given: &str) -> bool {
        let kind = self.kind();
        std::iter::once(&self.answer)
            .chain(&self.aliases)
            .filter(|g| !g.trim().is_empty())
            .any(|gold| {
                if answer::same(given, gold, kind) {
                    return true;
                }
                if kind != Kind::Text {
                    return false;
                }
                let (a, g) = (
                    answer::normalize(given, Kind::Text),
                    answer::normalize(gold, Kind::Text),
                );
                let (aw, gw): (Vec<&str>, Vec<&str>) = (
                    a.split_whitespace().collect(),
                    g.split_whitespace().collect(),
                );
                !gw.is_empty()
                    && aw.len() <= gw.len() + 8
                    && aw.windows(gw.len()).any(|w| w == gw.as_slice())
            })
    }

    /// The question as the team gets it (choices lettered).
    pub fn prompt(&self) -> String {
        match &self.choices {
            None => self.question.clone(),
            Some(cs) => {
                let mut p = format!("{}\n", self.question);
                for (i, c) in cs.iter().enumerate() {
                    p.push_str(&format!("{}. {c}\n", (b'A' + i as u8) as char));
                }
                p.push_str("Answer with the letter of the right choice.");
                p
            }
        }
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Item {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}: no items")]
    Empty(PathBuf),
    /// The team's answer kind cannot match the data's answers: every item
    /// would score wrong, whatever the team answered.
    #[error(transparent)]
    KindMismatch(Box<Misfit>),
}

/// A team whose answer kind cannot fit the data (see [`check_fit`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "team {team:?} ({spec}) answers task {task:?} as {kind}, but {count} of the {items} items of {data} \
     have {data_kind} answers: none of them could be scored right; give the task \
     answer_kind = \"{data_kind}\" (or evaluate a team made for this data)"
)]
pub struct Misfit {
    pub team: String,
    pub spec: String,
    pub task: String,
    pub kind: String,
    pub data: String,
    pub data_kind: String,
    pub count: usize,
    pub items: usize,
}

/// Whether a team answering as `team` can ever be scored right on items
/// whose answers are `data` (compared as [`Item::kind`] says): a number
/// extracted from a reply is never a choice letter, a letter never a
/// number. Text answers compare as text, which can match either.
pub fn kinds_fit(team: Kind, data: Kind) -> bool {
    !matches!(
        (team, data),
        (Kind::Number, Kind::Choice) | (Kind::Choice, Kind::Number) | (Kind::Choice, Kind::Text)
    )
}

/// Refuses a team whose answer task's kind cannot fit most of `items`
/// (see [`kinds_fit`]): an evaluation that would report a score of zero
/// for a reason that is no fault of the team's answers.
pub fn check_fit(team: &PreparedTeam, data: &Path, items: &[Item]) -> Result<(), EvalError> {
    let spec = team.spec();
    let task = spec
        .team
        .answer
        .as_deref()
        .and_then(|id| spec.tasks.iter().find(|t| t.id == id))
        .or_else(|| spec.tasks.last());
    let Some(task) = task else {
        return Ok(());
    };
    let kind = match task.answer_kind.as_str() {
        "number" => Kind::Number,
        "choice" => Kind::Choice,
        "text" => Kind::Text,
        _ => return Ok(()),
    };
    for data_kind in [Kind::Number, Kind::Choice, Kind::Text] {
        let count = items.iter().filter(|i| i.kind() == data_kind).count();
        if !kinds_fit(kind, data_kind) && count * 2 > items.len() {
            return Err(EvalError::KindMismatch(Box::new(Misfit {
                team: spec.team.name.clone(),
                spec: spec.path.display().to_string(),
                task: task.id.clone(),
                kind: kind.to_string(),
                data: data.display().to_string(),
                data_kind: data_kind.to_string(),
                count,
                items: items.len(),
            })));
        }
    }
    Ok(())
}

/// Reads a JSONL dataset; `limit` keeps the first items.
pub fn load(path: &Path, limit: Option<usize>) -> Result<Vec<Item>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.into(),
        source,
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Item = serde_json::from_str(line).map_err(|e| EvalError::Item {
            path: path.into(),
            line: i + 1,
            reason: format!("not a dataset item (question, answer, optional choices): {e}"),
        })?;
        items.push(item);
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    if items.is_empty() {
        return Err(EvalError::Empty(path.into()));
    }
    Ok(items)
}

/// One item's outcome for one team.
#[derive(Clone, Debug, Serialize)]
pub struct ItemResult {
    pub item: usize,
    pub id: Option<String>,
    pub gold: String,
    pub answer: Option<String>,
    pub correct: bool,
    /// It decided an abstention ("the documents do not say"): not an
    /// answer. Right when the gold is one too (a question the documents
    /// do not answer), else wrong, but not confidently wrong.
    #[serde(default)]
    pub abstained: bool,
    pub stop: String,
    pub no_consensus: bool,
    /// The run ended `failed` (every replica failed: a node that did not
    /// answer, a plugin that trapped, a program that never ran). Scored
    /// wrong like any run without an answer, but counted apart so that a
    /// broken node does not pass for a bad team.
    pub failed: bool,
    pub samples: u32,
    pub tokens: u64,
    pub cost: f64,
    pub wall_ms: f64,
    pub run_id: String,
    /// Read back from the journal (an earlier, interrupted evaluation).
    pub resumed: bool,
}

/// A team's scores.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub team: String,
    pub spec: String,
    pub items: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Share of items it decided an answer (not an abstention) for that
    /// was wrong: how often it is confidently wrong.
    pub wrong_rate: f64,
    /// Share of items it decided an abstention for.
    pub abstention_rate: f64,
    /// Wilson 95% interval.
    pub ci_low: f64,
    pub ci_high: f64,
    pub samples_per_item: f64,
    pub tokens_per_item: f64,
    pub cost: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub no_consensus_rate: f64,
    pub failed_rate: f64,
    pub results: Vec<ItemResult>,
}

/// The Wilson score interval at 95% for `k` of `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.96f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

/// Scores `results` (one per item).
pub fn score(team: &str, spec: &str, mut results: Vec<ItemResult>) -> Score {
    results.sort_by_key(|r| r.item);
    let n = results.len();
    let correct = results.iter().filter(|r| r.correct).count();
    let (ci_low, ci_high) = wilson(correct, n);
    let mut lat: Vec<f64> = results.iter().map(|r| r.wall_ms).collect();
    lat.sort_by(f64::total_cmp);
    let per = |f: &dyn Fn(&ItemResult) -> f64| results.iter().map(f).sum::<f64>() / n.max(1) as f64;
    Score {
        team: team.into(),
        spec: spec.into(),
        items: n,
        correct,
        accuracy: correct as f64 / n.max(1) as f64,
        wrong_rate: per(&|r| (r.stop == "decided" && !r.abstained && !r.correct) as u8 as f64),
        abstention_rate: per(&|r| r.abstained as u8 as f64),
        ci_low,
        ci_high,
        samples_per_item: per(&|r| f64::from(r.samples)),
        tokens_per_item: per(&|r| r.tokens as f64),
        cost: results.iter().map(|r| r.cost).sum(),
        p50_ms: percentile(&lat, 0.5),
        p95_ms: percentile(&lat, 0.95),
        no_consensus_rate: per(&|r| r.no_consensus as u8 as f64),
        failed_rate: per(&|r| r.failed as u8 as f64),
        results,
    }
}

/// Whether a run that `decided` on `answer` got `item` right, and
/// whether it abstained. A question whose gold is an abstention (the
/// documents do not answer it) is answered right only by abstaining.
fn judge(item: &Item, decided: bool, answer: Option<&str>) -> (bool, bool) {
    let abstained = decided && answer.is_some_and(answer::abstains);
    let correct = decided
        && if item.gold_abstains() {
            abstained
        } else {
            !abstained && answer.is_some_and(|a| item.answered_by(a))
        };
    (correct, abstained)
}

fn item_result(i: usize, item: &Item, r: &JobResult, resumed: bool) -> ItemResult {
    let decided = matches!(r.stop, StopReason::Decided);
    let (correct, abstained) = judge(item, decided, r.answer.as_deref());
    ItemResult {
        item: i,
        id: item.id.clone(),
        gold: item.answer.clone(),
        answer: r.answer.clone(),
        correct,
        abstained,
        stop: r.stop.to_string(),
        no_consensus: matches!(r.stop, StopReason::NoConsensus(_)),
        failed: matches!(r.stop, StopReason::Failed(_)),
        samples: r.samples,
        tokens: r.tokens_in + r.tokens_out,
        cost: r.cost,
        wall_ms: r.wall.as_secs_f64() * 1e3,
        run_id: r.run_id.clone(),
        resumed,
    }
}

/// What a team's results depend on, as a SHA-256 (hex): its spec's text
/// and each plugin it loaded, by the team's name for it and the hash of
/// its component. A team's name is not in it on purpose: two specs that
/// differ only there would score alike, and one name kept over a changed
/// voter must not reuse the old results.
pub fn team_key(team: &PreparedTeam) -> String {
    let mut h = Sha256::new();
    h.update(team.spec().source.as_bytes());
    let mut plugins: Vec<(String, String)> = team
        .plugins()
        .iter()
        .map(|(name, u)| (name.clone(), u.plugin.current().hash().to_string()))
        .collect();
    plugins.sort();
    for (name, hash) in plugins {
        h.update([0]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The run id of item `i` of evaluation `eval` for the team whose
/// [`team_key`] is `team_key`: the names are there for a reader, the hash
/// of the team key and the item's content decides what is reused.
pub fn run_id(eval: &str, team: &str, team_key: &str, i: usize, item: &Item) -> String {
    let mut h = Sha256::new();
    h.update(team_key.as_bytes());
    h.update([0]);
    h.update(item.question.as_bytes());
    h.update([0]);
    for c in item.choices.iter().flatten() {
        h.update(c.as_bytes());
        h.update([1]);
    }
    h.update([0]);
    h.update(item.answer.as_bytes());
    let digest = hex::encode(h.finalize());
    format!("{eval}-{team}-{i}-{}", &digest[..16])
}

/// Scores `team` on `items`, `parallel` items at once. Each item is a run
/// in `journal`; items whose run already ended there are read back.
/// `done` hears about each item as it finishes.
#[allow(clippy::too_many_arguments)]
pub async fn evaluate(
    team: &PreparedTeam,
    journal: Arc<dyn Journal>,
    eval: &str,
    items: &[Item],
    parallel: usize,
    cancel: CancellationToken,
    done: &(dyn Fn(&ItemResult) + Sync),
) -> Score {
    let name = team.spec().team.name.clone();
    let key = team_key(team);
    let results: Vec<ItemResult> = futures::stream::iter(items.iter().enumerate())
        .map(|(i, item)| {
            let journal = journal.clone();
            let id = run_id(eval, &name, &key, i, item);
            let cancel = cancel.clone();
            async move {
                if let Some(r) = journal.read(&id).ok().and_then(|l| l.ended().cloned()) {
                    return item_result(i, item, &r, true);
                }
                let q = item.prompt();
                let job = Job::new(&id, &q, Some(&item.answer));
                let res = team
                    .submit(&job, journal, None, Arc::new(Quiet), cancel)
                    .await;
                item_result(i, item, &res.result, false)
            }
        })
        .buffer_unordered(parallel.max(1))
        .inspect(|r| done(r))
        .collect()
        .await;
    score(&name, &team.spec().path.display().to_string(), results)
}

impl Score {
    /// Said when some of the team's runs failed: how many, and the reason
    /// most of them gave (with one item that gave it), so that a reader
    /// can tell a team that answers wrong from a node that did not answer.
    /// `None` when none failed.
    pub fn failures(&self) -> Option<String> {
        let failed: Vec<&ItemResult> = self.results.iter().filter(|r| r.failed).collect();
        // (cause, items, the first item with it), in order of first seen.
        let mut causes: Vec<(String, usize, &ItemResult)> = Vec::new();
        for r in &failed {
            let cause = failure_kind(&r.stop);
            match causes.iter_mut().find(|(c, _, _)| *c == cause) {
                Some(e) => e.1 += 1,
                None => causes.push((cause, 1, r)),
            }
        }
        // The most common cause; among equals, the one seen first.
        let (_, n, example) = causes.iter().rev().max_by_key(|(_, n, _)| *n)?;
        Some(format!(
            "{}: {} of {} items failed without an answer and are scored wrong; {} of them like item {}: {}",
            self.team,
            failed.len(),
            self.items,
            n,
            example.item,
            example.stop
        ))
    }
}

/// A failure's reason, its first 120 characters with each run of digits
/// replaced by `#`, so that failures of one cause group together ("all 5
/// replicas failed; last: node `qwen` unavailable: ..." and the same with
/// 3).
fn failure_kind(stop: &str) -> String {
    let mut out = String::with_capacity(stop.len());
    let mut last_digit = false;
    for c in stop.chars().take(120) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// An evaluation's id from what it evaluates: the dataset, the seed and
/// the item count, so the same command resumes the same evaluation.
pub fn eval_id(data: &Path, seed: u64, items: usize) -> String {
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    format!("eval-{stem}-s{seed}-n{items}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: usize, stop: &str) -> ItemResult {
        ItemResult {
            item: i,
            id: None,
            gold: "1".into(),
            answer: None,
            correct: false,
            abstained: false,
            stop: stop.into(),
            no_consensus: false,
            failed: stop.starts_with("failed"),
            samples: 1,
            tokens: 0,
            cost: 0.0,
            wall_ms: 1.0,
            run_id: format!("r{i}"),
            resumed: false,
        }
    }

    #[test]
    fn failures_are_told_by_their_most_common_cause() {
        let s = score(
            "t",
            "t.toml",
            vec![
                item(0, "decided"),
                item(1, "failed: all 5 replicas failed; last: program raised"),
                item(
                    2,
                    "failed: all 3 replicas failed; last: node `q` unavailable",
                ),
                item(
                    3,
                    "failed: all 5 replicas failed; last: node `q` unavailable",
                ),
                item(4, "no consensus: 1 of 2"),
            ],
        );
        assert!((s.failed_rate - 0.6).abs() < 1e-12);
        assert_eq!(
            s.failures().unwrap(),
            "t: 3 of 5 items failed without an answer and are scored wrong; 2 of them like item 2: failed: all 3 replicas failed; last: node `q` unavailable"
        );
        let none = score(
            "t",
            "t.toml",
            vec![item(0, "decided"), item(1, "no consensus: x")],
        );
        assert_eq!(none.failures(), None);
        assert_eq!(none.failed_rate, 0.0);
    }

    #[test]
    fn a_knowledge_item_is_answered_by_its_answer_an_alias_or_a_short_answer_holding_one() {
        let item: Item = serde_json::from_str(
            r#"{"id":"kb-1","question":"Which lint was added?","answer":"manual_is_multiple_of","aliases":["is_multiple_of"],"source":"docs/x.md","quote":"..."}"#,
        )
        .unwrap();
        assert!(item.answered_by("manual_is_multiple_of"));
        assert!(item.answered_by("is_multiple_of"));
        assert!(item.answered_by("The new lint is manual_is_multiple_of."));
        assert!(!item.answered_by("manual_div_ceil"));
        // Whole words: a longer name that holds it is another name.
        assert!(!item.answered_by("manual_is_multiple_of_two"));
        // A list of guesses is not an answer.
        assert!(!item.answered_by(
            "maybe manual_div_ceil or manual_abs_diff or manual_is_multiple_of or needless_pass_by_ref_mut or others"
        ));
        let version: Item =
            serde_json::from_str(r#"{"question":"Which version?","answer":"1.91.0"}"#).unwrap();
        assert!(version.answered_by("Rust 1.91.0"));
        assert!(!version.answered_by("Rust 1.91.1"));
        // An unanswerable item is answered right only by abstaining.
        let none: Item = serde_json::from_str(
            r#"{"question":"Which version of libcurl does Cargo 1.95 ship?","answer":"","abstain":true}"#,
        )
        .unwrap();
        assert!(none.gold_abstains());
        assert_eq!(
            judge(&none, true, Some("The documents do not say.")),
            (true, true)
        );
        assert_eq!(judge(&none, true, Some("8.19.0")), (false, false));
        assert_eq!(judge(&none, true, Some("")), (false, false));
    }

    #[test]
    fn an_abstention_is_not_an_answer_and_not_confidently_wrong() {
        let known = Item {
            id: None,
            question: "Which version added it?".into(),
            choices: None,
            answer: "2.15".into(),
            aliases: Vec::new(),
            abstain: false,
        };
        let unanswerable = Item {
            answer: "The documents do not say".into(),
            ..known.clone()
        };
        assert_eq!(judge(&known, true, Some("2.15")), (true, false));
        assert_eq!(judge(&known, true, Some("2.14")), (false, false));
        assert_eq!(
            judge(&known, true, Some("The documents do not say.")),
            (false, true)
        );
        assert_eq!(judge(&known, false, Some("2.15")), (false, false));
        assert_eq!(
            judge(&unanswerable, true, Some("not in the documents")),
            (true, true)
        );
        assert_eq!(judge(&unanswerable, true, Some("2.15")), (false, false));
        // Scored: one right, one confidently wrong, one abstained, one
        // without a decision.
        let mut results: Vec<ItemResult> = (0..4).map(|i| item(i, "decided")).collect();
        results[0].correct = true;
        results[2].abstained = true;
        results[3].stop = "no consensus: split".into();
        results[3].no_consensus = true;
        let s = score("t", "t.toml", results);
        assert_eq!(s.correct, 1);
        assert!((s.wrong_rate - 0.25).abs() < 1e-9, "{}", s.wrong_rate);
        assert!(
            (s.abstention_rate - 0.25).abs() < 1e-9,
            "{}",
            s.abstention_rate
        );
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // 8 of 10: 0.490 to 0.943 (Wilson, 95%).
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.490).abs() < 1e-3 && (hi - 0.943).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 0.0));
        let (lo, hi) = wilson(10, 10);
        assert!(lo > 0.72 && hi == 1.0);
    }

    #[test]
    fn items_know_how_to_compare_answers() {
        let n: Item = serde_json::from_str(r#"{"question":"q","answer":"-1,200"}"#).unwrap();
        assert_eq!(n.kind(), Kind::Number);
        let c: Item =
            serde_json::from_str(r#"{"question":"q","choices":["x","y"],"answer":"B"}"#).unwrap();
        assert_eq!(c.kind(), Kind::Choice);
        assert_eq!(
            c.prompt(),
            "q\nA. x\nB. y\nAnswer with the letter of the right choice."
        );
    }

    #[test]
    fn only_kinds_that_can_match_fit() {
        assert!(kinds_fit(Kind::Number, Kind::Number));
        assert!(kinds_fit(Kind::Choice, Kind::Choice));
        assert!(kinds_fit(Kind::Text, Kind::Choice));
        assert!(kinds_fit(Kind::Text, Kind::Number));
        assert!(!kinds_fit(Kind::Number, Kind::Choice));
        assert!(!kinds_fit(Kind::Choice, Kind::Number));
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"question\":\"a\",\"answer\":\"1\"}\n{\"question\":\"b\"}\n",
        )
        .unwrap();
        let e = load(&p, None).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2: not a dataset item"), "{e}");
    }
}
