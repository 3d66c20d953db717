//! `majority`: plurality vote over the candidates' normalised answers.
//!
//! Ballots with an empty answer, and (unless `count_failed` is set) ballots
//! that a verifier failed, are not counted. Ties go to the answer with the
//! higher mean verifier score, then to the smaller answer text, so the result
//! never depends on the order the ballots arrived in.

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
        Ok(decide(&counts, total, || {
            format!("none of {} ballots had a countable answer", ballots.len())
        }))
    }
}

export_voter!(Majority);
