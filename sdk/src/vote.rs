//! The arithmetic of voting, shared by the built-in voters and property-tested
//! natively.
//!
//! Every function here is independent of the order of its input: inputs are
//! put in a canonical order before anything is summed, and ties are broken by
//! score and then by the answer text, never by position.

use std::collections::BTreeMap;

/// One counted vote.
#[derive(Clone, Debug, PartialEq)]
pub struct Vote {
    /// Normalised answer.
    pub answer: String,
    /// How much the vote counts (1 for a plain majority).
    pub weight: f64,
    /// Verifier score in 0..1, the first tie-break.
    pub score: f64,
}

/// The total for one answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Count {
    pub answer: String,
    /// Number of votes for this answer.
    pub votes: u32,
    /// Sum of their weights.
    pub weight: f64,
    /// Mean verifier score of those votes.
    pub score: f64,
}

/// Totals per answer, best first: by weight, then mean score, then answer text.
pub fn tally(votes: &[Vote]) -> Vec<Count> {
    let mut sorted: Vec<&Vote> = votes.iter().filter(|v| !v.answer.is_empty()).collect();
    sorted.sort_by(|a, b| {
        a.answer
            .cmp(&b.answer)
            .then(a.weight.total_cmp(&b.weight))
            .then(a.score.total_cmp(&b.score))
    });
    let mut by_answer: BTreeMap<&str, (u32, f64, f64)> = BTreeMap::new();
    for v in sorted {
        let e = by_answer.entry(&v.answer).or_insert((0, 0.0, 0.0));
        e.0 += 1;
        e.1 += v.weight;
        e.2 += v.score;
    }
    let mut counts: Vec<Count> = by_answer
        .into_iter()
        .map(|(answer, (votes, weight, score))| Count {
            answer: answer.to_string(),
            votes,
            weight,
            score: score / votes as f64,
        })
        .collect();
    counts.sort_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then(b.score.total_cmp(&a.score))
            .then(a.answer.cmp(&b.answer))
    });
    counts
}

/// Borda count: with `m` distinct answers, rank `r` (0-based) of a ballot earns
/// `m - 1 - r` points; answers a ballot does not rank earn nothing. `votes` of
/// each result is how many ballots ranked it first. Best first, ties by
/// first-place votes, then answer text.
pub fn borda(rankings: &[Vec<String>]) -> Vec<Count> {
    let mut distinct: Vec<&str> = rankings.iter().flatten().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.retain(|a| !a.is_empty());
    let m = distinct.len() as f64;
    let mut points: BTreeMap<&str, (u32, f64)> = distinct.iter().map(|a| (*a, (0, 0.0))).collect();
    for ranking in rankings {
        let mut seen = Vec::new();
        let mut rank = 0.0;
        for answer in ranking.iter().filter(|a| !a.is_empty()) {
            if seen.contains(&answer) {
                continue;
            }
            seen.push(answer);
            let e = points.get_mut(answer.as_str()).expect("collected above");
            if rank == 0.0 {
                e.0 += 1;
            }
            e.1 += m - 1.0 - rank;
            rank += 1.0;
        }
    }
    let mut counts: Vec<Count> = points
        .into_iter()
        .map(|(answer, (first, pts))| Count {
            answer: answer.to_string(),
            votes: first,
            weight: pts,
            score: 0.0,
        })
        .collect();
    counts.sort_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then(b.votes.cmp(&a.votes))
            .then(a.answer.cmp(&b.answer))
    });
    counts
}

/// Whether `votes` agreeing out of `total` meet a quorum of `share` (0..1].
/// Exact integer arithmetic at a resolution of 1e-6, so `2/3 >= 0.666667`
/// is decided the same way on every platform.
pub fn meets_share(votes: u32, total: u32, share: f64) -> bool {
    if total == 0 {
        return false;
    }
    let need = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
    (votes as u64) * 1_000_000 >= need * total as u64
}

#[cfg(test)]
mod tests {
    //! Voting arithmetic: plurality, ties, Borda, quorum shares.
    use super::*;

    fn v(a: &str) -> Vote {
        Vote {
            answer: a.into(),
            weight: 1.0,
            score: 0.5,
        }
    }

    #[test]
    fn plurality_counts_and_orders() {
        let c = tally(&[v("3"), v("4"), v("3"), v("")]);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].answer.as_str(), c[0].votes), ("3", 2));
        assert_eq!((c[1].answer.as_str(), c[1].votes), ("4", 1));
    }

    #[test]
    fn ties_go_to_higher_score_then_smaller_answer() {
        let mut hi = v("9");
        hi.score = 0.9;
        let c = tally(&[v("1"), hi]);
        assert_eq!(c[0].answer, "9");
        let c = tally(&[v("b"), v("a")]);
        assert_eq!(c[0].answer, "a");
    }

    #[test]
    fn borda_prefers_broad_support() {
        let r = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // a: 2+0+1 = 3 ; b: 1+2+2 = 5 ; c: 0+1+0 = 1
        let c = borda(&[
            r(&["a", "b", "c"]),
            r(&["b", "c", "a"]),
            r(&["b", "a", "c"]),
        ]);
        assert_eq!(c[0].answer, "b");
        assert_eq!(c[0].weight, 5.0);
        assert_eq!(c[0].votes, 2);
        assert_eq!(c[1].answer, "a");
    }

    #[test]
    fn share_boundaries() {
        assert!(meets_share(2, 3, 0.66));
        assert!(!meets_share(2, 3, 0.67));
        assert!(meets_share(3, 5, 0.6));
        assert!(!meets_share(0, 0, 0.0));
    }
}
