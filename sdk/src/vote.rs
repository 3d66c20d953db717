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

/// The probability, under a uniform prior, that the leading answer really is
/// more likely than the runner-up, given `leader` and `runner_up` votes: the
/// Beta stopping criterion of Adaptive-Consistency (Aggarwal et al., EMNLP
/// 2023), `P(x > 1/2)` for `x ~ Beta(leader + 1, runner_up + 1)`.
///
/// Why this and not a vote margin: a margin of 2 is as sure at 2–0 as at
/// 10–8, while the posterior knows that 4–0 is decisive and 10–8 is not, so
/// easy items stop early and contested ones keep sampling.
///
/// Exact for integer counts: `P(x > 1/2) = P(Binomial(n, 1/2) <= leader)`
/// with `n = leader + runner_up + 1`, summed in log space so that large
/// counts neither overflow nor lose precision.
pub fn leader_posterior(leader: u32, runner_up: u32) -> f64 {
    let n = leader as u64 + runner_up as u64 + 1;
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    // ln C(n, k), built up term by term.
    let mut ln_c = 0.0f64;
    let mut sum = 0.0f64;
    for k in 0..=leader as u64 {
        if k > 0 {
            ln_c += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        sum += (ln_c - ln_half_n).exp();
    }
    sum.min(1.0)
}

/// The fewest extra samples that, if every one of them agreed with the
/// leader, would lift [`leader_posterior`] to `threshold`; at most `left`.
/// A voter asks for this many at once: fewer could not decide, and more
/// might be wasted.
pub fn samples_to_reach(leader: u32, runner_up: u32, threshold: f64, left: u32) -> u32 {
    let mut extra = 1;
    while extra < left && leader_posterior(leader + extra, runner_up) < threshold {
        extra += 1;
    }
    extra.min(left.max(1))
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
    #[test]
    fn leader_posterior_matches_the_beta_tail() {
        // Beta(1, 1) is uniform: no evidence, an even chance.
        assert!((leader_posterior(0, 0) - 0.5).abs() < 1e-12);
        // Beta(2, 1): P(x > 1/2) = 1 - 1/4.
        assert!((leader_posterior(1, 0) - 0.75).abs() < 1e-12);
        // 4-0: 31/32; 3-0: 15/16; 4-1: 57/64.
        assert!((leader_posterior(4, 0) - 31.0 / 32.0).abs() < 1e-12);
        assert!((leader_posterior(3, 0) - 15.0 / 16.0).abs() < 1e-12);
        assert!((leader_posterior(4, 1) - 57.0 / 64.0).abs() < 1e-12);
        // A tie is an even chance, whatever the counts.
        assert!((leader_posterior(7, 7) - 0.5).abs() < 1e-12);
        // Large counts stay finite and ordered.
        let big = leader_posterior(600, 500);
        assert!(big > 0.99 && big <= 1.0, "{big}");
    }

    #[test]
    fn samples_to_reach_counts_only_what_could_decide() {
        // 1-0 at 0.95 needs three more agreeing samples (4-0 = 31/32).
        assert_eq!(samples_to_reach(1, 0, 0.95, 10), 3);
        // 3-0 is one short.
        assert_eq!(samples_to_reach(3, 0, 0.95, 10), 1);
        // Never more than what is left.
        assert_eq!(samples_to_reach(1, 1, 0.95, 2), 2);
    }
}
