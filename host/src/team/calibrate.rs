//! Node weights learned without gold labels: how reliable each node is,
//! estimated from how its ballots agree with other nodes' over past votes
//! (the one-coin model of Dawid and Skene, 1979: each node has one
//! probability of answering right; see [`estimate`] for how it is fitted),
//! and the weights an optimal weighted vote gives such nodes (Nitzan and
//! Paroush, 1982: log odds).
//!
//! The model assumes nodes err independently of each other. Two things
//! break that, and the estimate guards against both:
//!
//! - **A node agreeing with itself.** Replicas on one node share its model
//!   and prompt and often repeat the same wrong answer; counted as votes,
//!   that self-agreement looks like reliability. So only agreement between
//!   ballots of different nodes counts.
//! - **Too few nodes.** With two nodes, agreement says how often they agree,
//!   not which of them is right: the estimate is symmetric in the two. It
//!   takes three nodes answering the same items (Dawid and Skene's model is
//!   identifiable from three conditionally independent raters), so fewer is
//!   refused ([`CalibrateError::TooFewNodes`]).
//!
//! `conclave calibrate` gathers the items from the journal (each task's
//! round of each run: the ballots it counted), [`estimate`] turns them into
//! [`Weights`], and [`Weights::write`] stores them as TOML, a file a team
//! spec names with `weights = "FILE"` on a `weighted` voter. Gold answers,
//! where a run has one, are never used to estimate; they are only counted
//! beside the estimate ([`NodeWeight::gold_accuracy`]) so that a user can
//! see how close it came.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One vote to learn from: who answered what.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Item {
    /// (node, normalised answer) per ballot with an answer.
    pub ballots: Vec<(String, String)>,
    /// The right answer, normalised, when the run had one (for the report
    /// only).
    pub gold: Option<String>,
}

/// What was learned about one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeWeight {
    /// The weight its ballots carry in a `weighted` vote (0 or more).
    pub weight: f64,
    /// The estimated chance that its answer is right, from agreement alone.
    pub accuracy: f64,
    /// Ballots it cast in the items learned from.
    pub ballots: u32,
    /// Its share of right answers on the items that had a gold answer
    /// (not used to estimate), when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold_accuracy: Option<f64>,
}

/// A weights file: per node, its weight and what it rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// How they were learned.
    pub method: String,
    /// Items (votes answered by at least two nodes) learned from.
    pub items: u32,
    /// Wrong answers an item has to choose among, on average: the `K - 1`
    /// of the log-odds weight.
    pub alternatives: f64,
    pub nodes: BTreeMap<String, NodeWeight>,
}

/// Why weights could not be learned, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("no vote had answers from two different nodes to compare: nothing to learn from (run a team whose replicas go to several nodes on more questions first)")]
    NoItems,
    #[error("the ballots come from {} node(s) ({}): learning weights from agreement takes at least 3 nodes answering the same questions; with fewer, agreement cannot tell which node is right", .0.len(), .0.join(", "))]
    TooFewNodes(Vec<String>),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// The items of one journaled run: per task and round, the ballots that
/// carry an answer, by node. A ballot whose verifiers failed it still
/// counts: it is what its node answered. The gold answer (normalised for
/// the task's kind) goes with the task that gave the run's answer, the
/// last to end.
pub fn items(log: &crate::journal::RunLog) -> Vec<Item> {
    use crate::team::events::Event;
    use conclave_sdk::answer::{normalize, Kind};
    let mut order: Vec<(String, u32)> = Vec::new();
    let mut by: BTreeMap<(String, u32), Vec<(String, String)>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    let mut last_task = None;
    for (_, e) in log.events() {
        match e {
            Event::TaskStarted {
                task, answer_kind, ..
            } => {
                let kind = match answer_kind.as_str() {
                    "number" => Kind::Number,
                    "choice" => Kind::Choice,
                    _ => Kind::Text,
                };
                kinds.insert(task.clone(), kind);
            }
            Event::Ballot {
                task,
                round,
                ballot,
                ..
            } if !ballot.answer.is_empty() => {
                let key = (task.clone(), *round);
                if !by.contains_key(&key) {
                    order.push(key.clone());
                }
                let node = if ballot.node.is_empty() {
                    "(unknown)".to_string()
                } else {
                    ballot.node.clone()
                };
                by.entry(key)
                    .or_default()
                    .push((node, ballot.answer.clone()));
            }
            Event::TaskEnded { task, .. } => last_task = Some(task.clone()),
            _ => {}
        }
    }
    let gold = log.submitted().and_then(|(.., gold)| gold);
    order
        .into_iter()
        .map(|key| {
            let gold = gold
                .filter(|_| last_task.as_ref() == Some(&key.0))
                .map(|g| normalize(g, kinds.get(&key.0).copied().unwrap_or(Kind::Text)));
            Item {
                ballots: by.remove(&key).unwrap_or_default(),
                gold,
            }
        })
        .collect()
}

const METHOD: &str = "one-coin Dawid-Skene by agreement between nodes: accuracy_i = sqrt(A_ij * A_ik / A_jk) over node triplets; weight = ln(accuracy * alternatives / (1 - accuracy))";

/// Learns each node's accuracy from how often its ballots agree with other
/// nodes' ballots on the same items.
///
/// In the one-coin model, two nodes `i` and `j` that err independently,
/// and whose wrong answers seldom coincide, agree with probability
/// `A_ij = p_i · p_j`. Three nodes give three such equations, so
/// `p_i = sqrt(A_ij · A_ik / A_jk)`; with more nodes, every pair `(j, k)`
/// of others gives an estimate and they are averaged, weighted by how many
/// items the three share. Agreement is counted between ballots of
/// *different* nodes only (each pair of ballots, so a node with several
/// replicas on an item is one voice there): a node's replicas repeating
/// one another's wrong answer earn it nothing.
///
/// This is the method of moments, not expectation–maximisation: EM on this
/// model over open answers (the wrong answers of an item are the few other
/// answers it got) has an optimum in which one node is an oracle that is
/// always right, and it settled there from a plain-majority start on three
/// simulated nodes (`a_node_agreeing_with_itself_gains_nothing`).
/// Coincident wrong answers (two nodes making the same slip) raise `A`
/// and bias the estimates up.
pub fn estimate(items: &[Item]) -> Result<Weights, CalibrateError> {
    // Per item: node index -> its answers there.
    let all_nodes: BTreeSet<&str> = items
        .iter()
        .flat_map(|i| i.ballots.iter().map(|(n, _)| n.as_str()))
        .collect();
    let nodes: Vec<&str> = all_nodes.into_iter().collect();
    let index = |n: &str| nodes.binary_search(&n).expect("every node is listed");
    let grouped: Vec<(&Item, BTreeMap<usize, Vec<&str>>)> = items
        .iter()
        .map(|i| {
            let mut by: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
            for (n, a) in &i.ballots {
                by.entry(index(n)).or_default().push(a.as_str());
            }
            (i, by)
        })
        .filter(|(_, by)| by.len() >= 2)
        .collect();
    if grouped.is_empty() {
        return Err(CalibrateError::NoItems);
    }
    let used: BTreeSet<usize> = grouped
        .iter()
        .flat_map(|(_, by)| by.keys().copied())
        .collect();
    if used.len() < 3 {
        return Err(CalibrateError::TooFewNodes(
            used.iter().map(|&n| nodes[n].to_string()).collect(),
        ));
    }
    // Agreement between each pair of nodes: summed over the items they
    // share, the share of their ballot pairs that name the same answer.
    let n = nodes.len();
    let mut agree = vec![vec![0.0f64; n]; n];
    let mut shared = vec![vec![0u32; n]; n];
    for (_, by) in &grouped {
        let voters: Vec<(&usize, &Vec<&str>)> = by.iter().collect();
        for (x, (&i, ai)) in voters.iter().enumerate() {
            for &(&j, aj) in &voters[x + 1..] {
                let same = ai
                    .iter()
                    .map(|a| aj.iter().filter(|b| *b == a).count())
                    .sum::<usize>();
                let rate = same as f64 / (ai.len() * aj.len()) as f64;
                agree[i][j] += rate;
                agree[j][i] += rate;
                shared[i][j] += 1;
                shared[j][i] += 1;
            }
        }
    }
    // A_ij, pulled a little towards 1/4 (two nodes at even odds) so that a
    // pair seen on few items does not swing the estimate.
    let rate = |i: usize, j: usize| (agree[i][j] + 0.25) / (f64::from(shared[i][j]) + 1.0);
    let mut accuracy = vec![0.5; n];
    for (i, acc) in accuracy.iter_mut().enumerate() {
        let (mut sum, mut weight) = (0.0, 0.0);
        for j in 0..n {
            for k in j + 1..n {
                if j == i || k == i {
                    continue;
                }
                let w = shared[i][j].min(shared[i][k]).min(shared[j][k]);
                if w == 0 {
                    continue;
                }
                let p = (rate(i, j) * rate(i, k) / rate(j, k)).sqrt();
                sum += f64::from(w) * p;
                weight += f64::from(w);
            }
        }
        if weight > 0.0 {
            *acc = sum / weight;
        }
    }
    let alternatives = grouped
        .iter()
        .map(|(i, _)| {
            let distinct = i
                .ballots
                .iter()
                .map(|(_, a)| a.as_str())
                .collect::<BTreeSet<_>>()
                .len();
            (distinct.max(2) - 1) as f64
        })
        .sum::<f64>()
        / grouped.len() as f64;
    let mut out = BTreeMap::new();
    for &i in &used {
        let name = nodes[i];
        let p = accuracy[i].clamp(0.01, 0.99);
        let mut ballots = 0u32;
        let (mut judged, mut right) = (0u32, 0u32);
        for (item, _) in &grouped {
            for (node, answer) in &item.ballots {
                if node == name {
                    ballots += 1;
                    if let Some(g) = &item.gold {
                        judged += 1;
                        right += u32::from(g == answer);
                    }
                }
            }
        }
        out.insert(
            name.to_string(),
            NodeWeight {
                weight: round((p * alternatives / (1.0 - p)).ln().max(0.0)),
                accuracy: round(p),
                ballots,
                gold_accuracy: (judged > 0).then(|| round(f64::from(right) / f64::from(judged))),
            },
        );
    }
    Ok(Weights {
        method: METHOD.into(),
        items: grouped.len() as u32,
        alternatives: round(alternatives),
        nodes: out,
    })
}

/// Four decimals: enough for a vote, and a file that reads well.
fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl Weights {
    /// The weights alone, node → weight, as a `weighted` voter's config
    /// takes them.
    pub fn by_node(&self) -> BTreeMap<String, f64> {
        self.nodes
            .iter()
            .map(|(n, w)| (n.clone(), w.weight))
            .collect()
    }

    /// Reads a weights file, checking every weight.
    pub fn read(path: &Path) -> Result<Weights, CalibrateError> {
        let err = |reason: String| CalibrateError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let w: Weights = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some((n, bad)) = w
            .nodes
            .iter()
            .find(|(_, v)| !v.weight.is_finite() || v.weight < 0.0)
        {
            return Err(err(format!(
                "node `{n}`: weight must be a finite number ≥ 0, not {}",
                bad.weight
            )));
        }
        Ok(w)
    }

    /// Writes the file, with a header saying what it is and how to use it.
    pub fn write(&self, path: &Path, note: &str) -> Result<(), CalibrateError> {
        let body = toml::to_string(self).map_err(|e| CalibrateError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let header = format!(
            "# Node weights learned by `conclave calibrate` from agreement between ballots,\n\
             # without gold labels. {note}\n\
             # Use them in a team spec: [[plugin]] name = \"weighted\" weights = \"{}\"\n\n",
            path.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("weights.toml")
        );
        std::fs::write(path, header + &body).map_err(|e| CalibrateError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(ballots: &[(&str, &str)], gold: Option<&str>) -> Item {
        Item {
            ballots: ballots
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
            gold: gold.map(String::from),
        }
    }

    /// 400 items answered by three nodes of known accuracy, two ballots
    /// each; a wrong answer is one of `wrong` numbers.
    fn three_nodes(wrong: u32) -> Vec<Item> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..400)
            .map(|i| {
                let gold = format!("{i}");
                let ballots = TRUTH
                    .iter()
                    .flat_map(|&(n, p)| {
                        (0..2)
                            .map(|_| {
                                let a = if rng.random_bool(p) {
                                    gold.clone()
                                } else {
                                    format!("w{}", rng.random_range(0..wrong))
                                };
                                (n.to_string(), a)
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                Item {
                    ballots,
                    gold: Some(gold),
                }
            })
            .collect()
    }

    const TRUTH: [(&str, f64); 3] = [("good", 0.8), ("fair", 0.55), ("poor", 0.2)];

    /// Three nodes of known accuracy whose wrong answers seldom coincide:
    /// the estimate, made without the gold answers, lands near their true
    /// accuracies, and the weakest one's weight is the smallest.
    #[test]
    fn agreement_alone_recovers_each_nodes_accuracy() {
        let w = estimate(&three_nodes(1000)).unwrap();
        assert_eq!(w.items, 400);
        for (name, p) in TRUTH {
            let got = &w.nodes[name];
            assert!(
                (got.accuracy - p).abs() < 0.06,
                "{name}: estimated {} for a true {p}",
                got.accuracy
            );
            assert!((got.gold_accuracy.unwrap() - p).abs() < 0.06);
            assert_eq!(got.ballots, 800);
        }
        let weight = |n: &str| w.nodes[n].weight;
        assert!(weight("good") > weight("fair") && weight("fair") > weight("poor"));
    }

    /// When wrong answers often coincide (four possible slips), agreement
    /// overstates the weak nodes, but the order of the three holds.
    #[test]
    fn coincident_slips_keep_the_order() {
        let w = estimate(&three_nodes(4)).unwrap();
        let acc = |n: &str| w.nodes[n].accuracy;
        assert!(
            acc("good") > acc("fair") && acc("fair") > acc("poor"),
            "{:?}",
            w.nodes
        );
        assert!(w.nodes["good"].weight > w.nodes["poor"].weight);
    }

    /// A node that always agrees with the others' consensus outweighs one
    /// that never does, and items with fewer than two answers are skipped.
    #[test]
    fn lone_ballots_teach_nothing_and_dissent_costs_weight() {
        let items = vec![
            item(&[("a", "1"), ("b", "1"), ("c", "9")], None),
            item(&[("a", "2"), ("b", "2"), ("c", "8")], None),
            item(&[("a", "3"), ("b", "3"), ("c", "7")], None),
            item(&[("c", "5")], None),
        ];
        let w = estimate(&items).unwrap();
        assert_eq!(w.items, 3);
        assert_eq!(w.nodes["c"].ballots, 3);
        assert!(w.nodes["a"].accuracy > 0.6, "{:?}", w.nodes["a"]);
        assert!(w.nodes["c"].accuracy < 0.4, "{:?}", w.nodes["c"]);
        assert_eq!(w.nodes["c"].weight, 0.0);
        assert!(w.nodes["a"].gold_accuracy.is_none());
        assert!(matches!(
            estimate(&[item(&[("a", "1")], None)]),
            Err(CalibrateError::NoItems)
        ));
        // Two ballots of one node are not agreement between nodes.
        assert!(matches!(
            estimate(&[item(&[("a", "1"), ("a", "1")], None)]),
            Err(CalibrateError::NoItems)
        ));
    }

    /// With two nodes, agreement cannot say which one is right: refused,
    /// naming both.
    #[test]
    fn two_nodes_are_refused() {
        let e = estimate(&[
            item(&[("qwen", "1"), ("smol", "1")], None),
            item(&[("qwen", "2"), ("smol", "3")], None),
        ])
        .unwrap_err();
        assert!(matches!(e, CalibrateError::TooFewNodes(ref n) if n.len() == 2));
        let e = e.to_string();
        assert!(
            e.contains("qwen, smol") && e.contains("at least 3 nodes"),
            "{e}"
        );
    }

    /// A node whose replicas repeat one wrong answer among themselves is
    /// not made reliable by agreeing with itself: with each of its ballots
    /// counted as a vote it would be rated above the two right nodes; with
    /// one vote per node per item it is rated below them.
    #[test]
    fn a_node_agreeing_with_itself_gains_nothing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let items: Vec<Item> = (0..300)
            .map(|i| {
                let gold = format!("{i}");
                let mut ballots = Vec::new();
                // Two nodes right 60% of the time, one ballot each, wrong
                // answers scattered.
                for n in ["a", "b"] {
                    let a = if rng.random_bool(0.6) {
                        gold.clone()
                    } else {
                        format!("w{}", rng.random_range(0..6))
                    };
                    ballots.push((n.to_string(), a));
                }
                // One node right 10% of the time that answers the same thing
                // with all of its four replicas.
                let echo = if rng.random_bool(0.1) {
                    gold.clone()
                } else {
                    format!("e{}", rng.random_range(0..2))
                };
                for _ in 0..4 {
                    ballots.push(("echo".to_string(), echo.clone()));
                }
                Item {
                    ballots,
                    gold: Some(gold),
                }
            })
            .collect();
        let w = estimate(&items).unwrap();
        let acc = |n: &str| w.nodes[n].accuracy;
        assert!(acc("echo") < 0.25, "echo estimated {}", acc("echo"));
        assert!(acc("a") > 0.45 && acc("b") > 0.45, "{:?}", w.nodes);
        assert!(w.nodes["echo"].weight < w.nodes["a"].weight);
        assert_eq!(w.nodes["echo"].ballots, 1200);
    }

    #[test]
    fn a_weights_file_round_trips_and_bad_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        let w = estimate(&[
            item(&[("a", "1"), ("b", "1"), ("c", "1")], Some("1")),
            item(&[("a", "2"), ("b", "3"), ("c", "2")], Some("2")),
        ])
        .unwrap();
        w.write(&path, "2 items.").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Node weights learned"), "{text}");
        assert_eq!(Weights::read(&path).unwrap(), w);
        std::fs::write(&path, text.replacen("\nweight = ", "\nweight = -", 1)).unwrap();
        let e = Weights::read(&path).unwrap_err().to_string();
        assert!(e.contains("w.toml") && e.contains("weight must be"), "{e}");
    }
}
