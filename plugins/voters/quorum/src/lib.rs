//! `quorum`: decides only when at least `share` of the counted ballots (and at
//! least `min_votes` of them) agree; otherwise asks for more samples, up to
//! `max_samples` ballots in all, and then gives up with no-consensus.
//!
//! This is adaptive consistency: with a decisive first few samples the task
//! stops early, and only contested tasks pay for the full sample budget.

use conclave_sdk::vote::{meets_share, tally, Vote};
use conclave_sdk::voter::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Share of counted ballots that must agree, in (0, 1].
    share: f64,
    /// Fewest agreeing ballots that can decide.
    min_votes: u32,
    /// Most ballots to draw before giving up.
    max_samples: u32,
    /// Count ballots that a verifier failed.
    count_failed: bool,
    /// Votes the leader must have over the runner-up (default 0).
    margin: u32,
    /// At the sample cap, decide the plurality instead of giving up
    /// (default: give up). With it, the quorum is a stopping rule for
    /// adaptive consistency rather than a guarantee.
    plurality_at_cap: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            share: 0.6,
            min_votes: 2,
            max_samples: 10,
            count_failed: false,
            margin: 0,
            plurality_at_cap: false,
        }
    }
}

struct Quorum;

impl Voter for Quorum {
    fn describe() -> Descriptor {
        Descriptor {
            name: "quorum".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description:
                "Decide once a configured share agrees; else ask for more samples up to a cap."
                    .into(),
        }
    }

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let c: Config = task.parse_config()?;
        if !(c.share > 0.0 && c.share <= 1.0) {
            return Err(PluginError::InvalidConfig(format!(
                "share must be in (0, 1], got {}",
                c.share
            )));
        }
        if c.max_samples == 0 {
            return Err(PluginError::InvalidConfig(
                "max_samples must be at least 1".into(),
            ));
        }
        let drawn = ballots.len() as u32;
        let votes: Vec<Vote> = ballots
            .views()
            .iter()
            .filter(|b| c.count_failed || b.passed())
            .map(|b| Vote {
                answer: b.answer.to_string(),
                weight: 1.0,
                score: 1.0,
            })
            .filter(|v| !v.answer.is_empty())
            .collect();
        let total = votes.len() as u32;
        let counts = tally(&votes);
        let top = counts.first().map(|c| c.votes).unwrap_or(0);
        let second = counts.get(1).map(|c| c.votes).unwrap_or(0);
        let decisive =
            top >= c.min_votes && meets_share(top, total, c.share) && top - second >= c.margin;
        let left = c.max_samples.saturating_sub(drawn);
        if decisive || (left == 0 && c.plurality_at_cap && top > 0) {
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
                "quorum of {:.0}% not reached after {drawn} samples: best answer {} had {top} of {total} votes",
                c.share * 100.0,
                counts.first().map(|c| format!("{:?}", c.answer)).unwrap_or_else(|| "(none)".into()),
            )));
        }
        // The fewest extra samples that could decide if all of them agreed
        // with the current leader.
        let mut extra = 1;
        while extra < left
            && !(top + extra >= c.min_votes
                && meets_share(top + extra, total + extra, c.share)
                && top + extra - second >= c.margin)
        {
            extra += 1;
        }
        Ok(Decision::NeedMore(extra))
    }
}

export_voter!(Quorum);
