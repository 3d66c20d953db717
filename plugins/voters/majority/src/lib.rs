//! `majority`: plurality vote over the candidates' normalised answers.
//!
//! Ballots with an empty answer, and (unless `count_failed` is set) ballots
//! that a verifier failed, are not counted. Ties go to the answer with the
//! higher mean verifier score, then to the smaller answer text, so the result
//! never depends on the order the ballots arrived in.
//!
//! A plurality of one: by default the plurality decides however thin it is,
//! and its support says so (`decided 42, 1 of 4`: no two ballots agree).
//! With `min_support = 2`, when several ballots were counted and no answer
//! has that many, the vote is `no-consensus`, naming how many distinct
//! answers there were, instead of picking one by the tie-break. A lone
//! counted ballot (a single-sample team, or one answer among abstentions)
//! decides either way.

use conclave_sdk::voter::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Ballots the winner needs when more than one was counted (default 1:
    /// any plurality decides).
    min_support: u32,
    /// Count ballots that a verifier failed (default: no).
    count_failed: bool,
    /// When no ballot passed its verifiers, ask for another round with the
    /// verifiers' reasons as feedback (generate and criticise) instead of
    /// giving up (default: no).
    revise_on_fail: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_support: 1,
            count_failed: false,
            revise_on_fail: false,
        }
    }
}

struct Majority;

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

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let config: Config = task.parse_config()?;
        let (counts, total) = ballots.plurality(config.count_failed);
        let views = (config.revise_on_fail && total == 0).then(|| ballots.views());
        if let Some(views) =
            views.filter(|v| !v.is_empty() && !v.iter().any(|b| config.count_failed || b.passed()))
        {
            // Only the failed marks' reasons are read from the host.
            let reasons: Vec<String> = views
                .iter()
                .flat_map(|b| b.marks.iter().filter(|m| !m.pass))
                .map(|m| format!("{}: {}", m.verifier, m.reason()))
                .collect();
            return Ok(Decision::Revise(format!(
                "Every answer failed verification. {}",
                reasons.join(" ")
            )));
        }
        if let Some(best) = counts.first() {
            if total > 1 && best.votes < config.min_support {
                return Ok(Decision::NoConsensus(format!(
                    "no answer has {} of the {} ballots counted ({} distinct answers)",
                    config.min_support,
                    total,
                    counts.len()
                )));
            }
        }
        Ok(decide(&counts, total, || {
            format!("none of {} ballots had a countable answer", ballots.len())
        }))
    }
}

export_voter!(Majority);
