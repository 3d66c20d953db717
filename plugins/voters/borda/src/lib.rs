//! `borda`: Borda count over ranked ballots.
//!
//! A candidate's `ranking` (best first) is its ballot; a candidate without a
//! ranking ranks only its own answer. Ballots a verifier failed are dropped
//! unless `count_failed` is set.

use conclave_sdk::vote::borda;
use conclave_sdk::voter::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    count_failed: bool,
}

struct Borda;

impl Voter for Borda {
    fn describe() -> Descriptor {
        Descriptor {
            name: "borda".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description: "Borda count over ranked ballots.".into(),
        }
    }

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let c: Config = task.parse_config()?;
        let rankings: Vec<Vec<String>> = ballots
            .views()
            .iter()
            .filter(|b| c.count_failed || b.passed())
            .map(|b| b.ranked())
            .filter(|r| r.iter().any(|a| !a.is_empty()))
            .collect();
        let counts = borda(&rankings);
        let Some(best) = counts.first() else {
            return Ok(Decision::NoConsensus(format!(
                "none of {} ballots ranked any answer",
                ballots.len()
            )));
        };
        Ok(Decision::Decided(Decided {
            answer: best.answer.clone(),
            support: best.votes,
            total: rankings.len() as u32,
            runner_up: counts.get(1).map(|c| c.answer.clone()),
        }))
    }
}

export_voter!(Borda);
