//! `majority`: plurality vote over the candidates' normalised answers.
//!
//! Ballots with an empty answer, and (unless `count_failed` is set) ballots
//! that a verifier failed, are not counted. Ties go to the answer with the
//! higher mean verifier score, then to the smaller answer text, so the result
//! never depends on the order the ballots arrived in.

use conclave_sdk::vote::{tally, Vote};
use conclave_sdk::voter::*;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Count ballots that a verifier failed (default: no).
    count_failed: bool,
    /// When no ballot passed its verifiers, ask for another round with the
    /// verifiers' reasons as feedback (generate and criticise) instead of
    /// giving up (default: no).
    revise_on_fail: bool,
}

struct Majority;

/// Mean score of a ballot's verdicts (1 when it has none).
pub(crate) fn mean_score(b: &Ballot) -> f64 {
    if b.verdicts.is_empty() {
        1.0
    } else {
        b.verdicts.iter().map(|v| v.score).sum::<f64>() / b.verdicts.len() as f64
    }
}

impl Voter for Majority {
    fn describe() -> Descriptor {
        Descriptor {
            name: "majority".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description: "Plurality vote; ties broken by verifier score, then by answer.".into(),
        }
    }

    fn tally(task: Task, ballots: Vec<Ballot>) -> Result<Decision, PluginError> {
        let config: Config = task.parse_config()?;
        let votes: Vec<Vote> = ballots
            .iter()
            .filter(|b| config.count_failed || b.verdicts.iter().all(|v| v.pass))
            .map(|b| Vote {
                answer: b.candidate.answer.clone(),
                weight: 1.0,
                score: mean_score(b),
            })
            .collect();
        if config.revise_on_fail && votes.is_empty() && !ballots.is_empty() {
            let reasons: Vec<String> = ballots
                .iter()
                .flat_map(|b| b.verdicts.iter().filter(|v| !v.pass))
                .map(|v| format!("{}: {}", v.verifier, v.reason))
                .collect();
            return Ok(Decision::Revise(format!(
                "Every answer failed verification. {}",
                reasons.join(" ")
            )));
        }
        let counts = tally(&votes);
        let total = votes.iter().filter(|v| !v.answer.is_empty()).count() as u32;
        Ok(decide(&counts, total, || {
            format!("none of {} ballots had a countable answer", ballots.len())
        }))
    }
}

export_voter!(Majority);
