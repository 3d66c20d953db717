//! `adaptive`: Adaptive-Consistency (Aggarwal et al., EMNLP 2023). After each
//! ballot it asks how likely it is that the leading answer really beats the
//! runner-up (the Beta criterion, [`leader_posterior`]); once that reaches
//! `threshold` it decides, otherwise it asks for the fewest samples that
//! could get there (one at a time near the threshold), up to `max_samples`,
//! and then decides the plurality.
//!
//! Why not `quorum`: a quorum stops on a fixed share or margin, so it is as
//! sure at 2–0 as it is at 10–8. The posterior is not, which is what lets
//! easy items stop at a few samples while contested ones keep sampling.
//! What does not live here: the arithmetic, which is in
//! `conclave_sdk::vote` and tested there.

use conclave_sdk::vote::{leader_posterior, samples_to_reach, tally, Vote};
use conclave_sdk::voter::*;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Posterior probability that the leader beats the runner-up at which
    /// the vote stops, in (0.5, 1). 0.95 is the paper's setting.
    threshold: f64,
    /// Most ballots to draw; at this cap the plurality is decided.
    max_samples: u32,
    /// Count ballots that a verifier failed.
    count_failed: bool,
    /// At the cap, give up with no-consensus instead of deciding the
    /// plurality.
    no_consensus_at_cap: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 0.95,
            max_samples: 10,
            count_failed: false,
            no_consensus_at_cap: false,
        }
    }
}

/// The decision for the answers counted so far (`drawn` ballots in all,
/// counted or not). Pure, so that it is tested natively.
fn decide(c: &Config, votes: &[Vote], drawn: u32) -> Result<Decision, PluginError> {
    if !(c.threshold > 0.5 && c.threshold < 1.0) {
        return Err(PluginError::InvalidConfig(format!(
            "threshold must be in (0.5, 1), got {}",
            c.threshold
        )));
    }
    if c.max_samples == 0 {
        return Err(PluginError::InvalidConfig(
            "max_samples must be at least 1".into(),
        ));
    }
    let counts = tally(votes);
    let total = votes.iter().filter(|v| !v.answer.is_empty()).count() as u32;
    let top = counts.first().map(|c| c.votes).unwrap_or(0);
    let second = counts.get(1).map(|c| c.votes).unwrap_or(0);
    let left = c.max_samples.saturating_sub(drawn);
    let sure = top > 0 && leader_posterior(top, second) >= c.threshold;
    if sure || (left == 0 && top > 0 && !c.no_consensus_at_cap) {
        let best = &counts[0];
        return Ok(Decision::Decided(Decided {
            answer: best.answer.clone(),
            support: best.votes,
            total,
            runner_up: counts.get(1).map(|c| c.answer.clone()),
        }));
    }
    if left == 0 {
        return Ok(Decision::NoConsensus(format!(
            "after {drawn} samples the leader {} ({top} votes against {second}) beats the runner-up with probability {:.3}, below {}",
            counts
                .first()
                .map(|c| format!("{:?}", c.answer))
                .unwrap_or_else(|| "(none)".into()),
            leader_posterior(top, second),
            c.threshold
        )));
    }
    Ok(Decision::NeedMore(samples_to_reach(
        top,
        second,
        c.threshold,
        left,
    )))
}

struct Adaptive;

impl Voter for Adaptive {
    fn describe() -> Descriptor {
        Descriptor {
            name: "adaptive".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description:
                "Stop once the leader beats the runner-up with a set posterior probability; else sample on."
                    .into(),
        }
    }

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let c: Config = task.parse_config()?;
        let votes: Vec<Vote> = ballots
            .views()
            .iter()
            .filter(|b| c.count_failed || b.passed())
            .map(|b| Vote {
                answer: b.answer.to_string(),
                weight: 1.0,
                score: 1.0,
            })
            .collect();
        decide(&c, &votes, ballots.len() as u32)
    }
}

export_voter!(Adaptive);

#[cfg(test)]
mod tests {
    //! The stopping rule: when it decides, how many more it asks for, the cap.
    use super::*;

    fn votes(answers: &[&str]) -> Vec<Vote> {
        answers
            .iter()
            .map(|a| Vote {
                answer: a.to_string(),
                weight: 1.0,
                score: 1.0,
            })
            .collect()
    }

    fn run(answers: &[&str]) -> Decision {
        decide(&Config::default(), &votes(answers), answers.len() as u32).unwrap()
    }

    #[test]
    fn four_agreeing_samples_decide_and_three_do_not() {
        // 4-0: P = 31/32 >= 0.95; 3-0: 15/16 < 0.95, one more could decide.
        match run(&["7", "7", "7", "7"]) {
            Decision::Decided(d) => {
                assert_eq!((d.answer.as_str(), d.support, d.total), ("7", 4, 4))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(run(&["7", "7", "7"]), Decision::NeedMore(1));
    }

    #[test]
    fn a_contested_vote_asks_for_just_enough_more() {
        // 1-1 at 0.95: the leader needs 6-1 (P = 0.965; 5-1 is 0.9375).
        assert_eq!(run(&["7", "8"]), Decision::NeedMore(5));
        // 5-3 stays below 0.95 (P = 0.746) and 2 draws are left: ask for both.
        assert_eq!(
            run(&["7", "7", "7", "7", "7", "8", "8", "8"]),
            Decision::NeedMore(2)
        );
    }

    #[test]
    fn at_the_cap_the_plurality_is_decided_or_given_up() {
        let ten = ["7", "7", "7", "7", "8", "8", "8", "9", "9", "6"];
        match run(&ten) {
            Decision::Decided(d) => {
                assert_eq!((d.answer.as_str(), d.support, d.total), ("7", 4, 10));
                assert_eq!(d.runner_up.as_deref(), Some("8"));
            }
            other => panic!("{other:?}"),
        }
        let strict = Config {
            no_consensus_at_cap: true,
            ..Config::default()
        };
        match decide(&strict, &votes(&ten), 10).unwrap() {
            Decision::NoConsensus(r) => assert!(r.contains("after 10 samples"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_threshold_outside_the_open_interval_is_refused() {
        for threshold in [0.5, 1.0, 1.5] {
            let c = Config {
                threshold,
                ..Config::default()
            };
            match decide(&c, &votes(&["7"]), 1) {
                Err(PluginError::InvalidConfig(m)) => assert!(m.contains("threshold"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
