//! `{{name}}`: a Conclave voter on contract 0.2 (`wit/conclave.wit`, world
//! `voter`). Build: `cargo build --release --target wasm32-wasip2`; the
//! component is `target/wasm32-wasip2/release/{{crate}}.wasm`. Test:
//! `cargo test`.

// The Conclave SDK's helpers, vendored as source: plain Rust with no host
// calls, so `cargo test` runs them natively. Not every plugin uses them all.
#[allow(dead_code)]
mod answer;
#[allow(dead_code)]
mod config;
#[allow(dead_code)]
mod prompt;
#[allow(dead_code)]
mod vote;

wit_bindgen::generate!({ path: "wit", world: "voter", generate_all });

// The world's own types (`Descriptor`, `Task`, `BallotBox`, `Decision`,
// `PluginError`) are in scope already; these are the rest it needs.
use conclave::plugin0_1_0::types::{Capability, Decided, PluginKind};

/// The plugin's configuration: `config = { min_votes = 2 }` in its
/// `[[plugin]]` table of the team spec.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fewest votes the winner needs (default 1).
    min_votes: u32,
}

struct {{Ident}};

impl Guest for {{Ident}} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Voter,
            capabilities: vec![Capability::Log],
            description: "{{description}}".into(),
        }
    }

    fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> {
        let config: Config = config::parse(&task.config).map_err(PluginError::InvalidConfig)?;
        Ok(decide(&ballots, config.min_votes.max(1)))
    }
}

/// Plurality over the ballots' answers; a vote's score (the first tie-break)
/// is the mean of the verifiers' scores of its ballot (1 with none). Ballots
/// carry answers as indices into `ballots.answers` and marks point at their
/// ballot; texts stay in the host unless read through
/// `conclave::plugin0_2_0::ballot_texts`.
fn decide(ballots: &BallotBox, min_votes: u32) -> Decision {
    let mut marks = vec![(0.0f64, 0u32); ballots.ballots.len()];
    for m in &ballots.marks {
        if let Some((sum, n)) = marks.get_mut(m.ballot as usize) {
            *sum += m.score;
            *n += 1;
        }
    }
    let votes: Vec<vote::Vote> = ballots
        .ballots
        .iter()
        .zip(&marks)
        .map(|(b, &(sum, n))| vote::Vote {
            answer: ballots
                .answers
                .get(b.answer as usize)
                .cloned()
                .unwrap_or_default(),
            weight: 1.0,
            score: if n == 0 { 1.0 } else { sum / n as f64 },
        })
        .collect();
    let counts = vote::tally(&votes);
    let total = votes.iter().filter(|v| !v.answer.is_empty()).count() as u32;
    match counts.first() {
        Some(best) if best.votes >= min_votes => Decision::Decided(Decided {
            answer: best.answer.clone(),
            support: best.votes,
            total,
            runner_up: counts.get(1).map(|c| c.answer.clone()),
        }),
        Some(best) => Decision::NoConsensus(format!(
            "the leader {:?} has {} of the {min_votes} votes it needs",
            best.answer, best.votes
        )),
        None => Decision::NoConsensus(format!(
            "none of {} ballots had a countable answer",
            ballots.ballots.len()
        )),
    }
}

export!({{Ident}});

#[cfg(test)]
mod tests {
    //! The policy on hand-made ballot boxes, natively.
    use super::*;
    use conclave::plugin0_2_0::voting::{Ballot, Mark};

    /// A box with `answers` as the distinct answers and one ballot per
    /// index in `votes`.
    fn ballot_box(answers: &[&str], votes: &[u32]) -> BallotBox {
        BallotBox {
            answers: answers.iter().map(|a| a.to_string()).collect(),
            verifiers: Vec::new(),
            ballots: votes
                .iter()
                .enumerate()
                .map(|(i, &answer)| Ballot {
                    replica: i as u32,
                    answer,
                    confidence: None,
                })
                .collect(),
            marks: Vec::new(),
            rankings: Vec::new(),
        }
    }

    #[test]
    fn plurality_wins_and_names_the_runner_up() {
        match decide(&ballot_box(&["5", "6"], &[0, 1, 0]), 1) {
            Decision::Decided(d) => {
                assert_eq!((d.answer.as_str(), d.support, d.total), ("5", 2, 3));
                assert_eq!(d.runner_up.as_deref(), Some("6"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tie_goes_to_the_better_verified_answer() {
        let mut b = ballot_box(&["5", "6"], &[0, 1]);
        b.verifiers = vec!["check".into()];
        b.marks = vec![
            Mark {
                ballot: 0,
                verifier: 0,
                pass: false,
                score: 0.2,
            },
            Mark {
                ballot: 1,
                verifier: 0,
                pass: true,
                score: 0.9,
            },
        ];
        match decide(&b, 1) {
            Decision::Decided(d) => assert_eq!(d.answer, "6"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_few_votes_is_no_consensus() {
        let d = decide(&ballot_box(&["5", "6"], &[0, 1]), 2);
        assert!(
            matches!(d, Decision::NoConsensus(ref why) if why.contains("1 of the 2")),
            "{d:?}"
        );
        let d = decide(&ballot_box(&[], &[]), 1);
        assert!(matches!(d, Decision::NoConsensus(_)), "{d:?}");
    }
}
