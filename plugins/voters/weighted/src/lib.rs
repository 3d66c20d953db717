//! `weighted`: each ballot counts with weight `confidence × verifier score`.
//!
//! A ballot without a confidence counts `default_confidence`; one without
//! verdicts has score 1; a ballot that a verifier failed is multiplied by
//! `fail_weight` (0 by default: failed ballots do not count). `support` is the
//! number of ballots behind the winner.

use conclave_sdk::vote::{tally, Vote};
use conclave_sdk::voter::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    default_confidence: f64,
    fail_weight: f64,
    /// Per node: how much its ballots count (0 or more).
    weights: std::collections::BTreeMap<String, f64>,
    /// The weight of a node that `weights` does not name.
    default_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_confidence: 1.0,
            fail_weight: 0.0,
            weights: Default::default(),
            default_weight: 1.0,
        }
    }
}

struct Weighted;

impl Voter for Weighted {
    fn describe() -> Descriptor {
        Descriptor {
            name: "weighted".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description: "Vote weighted by confidence and verifier scores.".into(),
        }
    }

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let c: Config = task.parse_config()?;
        if let Some((node, w)) = c
            .weights
            .iter()
            .map(|(n, w)| (n.as_str(), *w))
            .chain([("default_weight", c.default_weight)])
            .find(|(_, w)| !w.is_finite() || *w < 0.0)
        {
            return Err(PluginError::InvalidConfig(format!(
                "weight of `{node}` must be a finite number ≥ 0, not {w}"
            )));
        }
        let votes: Vec<Vote> = ballots
            .views()
            .iter()
            .map(|b| {
                let score = if b.marks.is_empty() {
                    1.0
                } else {
                    b.marks.iter().map(|m| m.score.clamp(0.0, 1.0)).sum::<f64>()
                        / b.marks.len() as f64
                };
                let failed = !b.passed();
                let confidence = b.confidence.unwrap_or(c.default_confidence).clamp(0.0, 1.0);
                // The node is read from the host only when weights need it.
                let node_weight = if c.weights.is_empty() {
                    c.default_weight
                } else {
                    c.weights
                        .get(&b.node())
                        .copied()
                        .unwrap_or(c.default_weight)
                };
                let weight =
                    confidence * score * node_weight * if failed { c.fail_weight } else { 1.0 };
                Vote {
                    answer: b.answer.to_string(),
                    weight,
                    score,
                }
            })
            .filter(|v| v.weight > 0.0)
            .collect();
        let counts = tally(&votes);
        let total = votes.iter().filter(|v| !v.answer.is_empty()).count() as u32;
        Ok(decide(&counts, total, || {
            format!("none of {} ballots carried any weight", ballots.len())
        }))
    }
}

export_voter!(Weighted);
