//! The 0.2 voter contract's ballot box: ballots by reference.
//!
//! A 0.1 voter receives every ballot whole: candidate text, node, verdict
//! names and reasons, each a string the canonical ABI copies into the guest
//! through its allocator. A 0.2 voter receives a [`BallotBox`]: each distinct
//! answer and verifier name once, and flat lists of numbers that refer to
//! them; the texts stay in the host and are read on demand through the
//! `ballot-texts` import ([`ballot_texts::Host`] below).

use std::collections::HashMap;

// Two versions of the package meet in the 0.2 world, so its modules are
// named by version.
use super::bindings::voter_v2::conclave::plugin0_2_0::{ballot_texts, voting};
use super::imports::StoreState;
use super::Ballot;

pub use voting::BallotBox;

/// Interns strings in order of first appearance. A linear scan is faster
/// than hashing for the handful of distinct answers a vote usually has; past
/// `SCAN` entries a map takes over, so that many distinct answers cost
/// linear time, not quadratic.
#[derive(Default)]
struct Interner {
    list: Vec<String>,
    map: Option<HashMap<String, u32>>,
}

const SCAN: usize = 16;

impl Interner {
    fn index(&mut self, s: &str) -> u32 {
        let found = match &self.map {
            None => self.list.iter().position(|x| x == s).map(|i| i as u32),
            Some(map) => map.get(s).copied(),
        };
        if let Some(i) = found {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(s.to_string());
        match &mut self.map {
            Some(map) => {
                map.insert(s.to_string(), i);
            }
            None if self.list.len() > SCAN => {
                self.map = Some(
                    self.list
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (x.clone(), i as u32))
                        .collect(),
                );
            }
            None => {}
        }
        i
    }
}

/// The ballot box for `ballots`, in their order.
pub fn ballot_box(ballots: &[Ballot]) -> BallotBox {
    let mut answers = Interner::default();
    let mut verifiers = Interner::default();
    let mut out = Vec::with_capacity(ballots.len());
    let mut marks = Vec::with_capacity(ballots.iter().map(|b| b.verdicts.len()).sum());
    let mut rankings = Vec::with_capacity(ballots.iter().map(|b| b.candidate.ranking.len()).sum());
    for (i, b) in ballots.iter().enumerate() {
        let c = &b.candidate;
        out.push(voting::Ballot {
            replica: c.replica,
            answer: answers.index(&c.answer),
            confidence: c.confidence,
        });
        for v in &b.verdicts {
            marks.push(voting::Mark {
                ballot: i as u32,
                verifier: verifiers.index(&v.verifier),
                pass: v.pass,
                score: v.score,
            });
        }
        for r in &c.ranking {
            rankings.push(voting::Preference {
                ballot: i as u32,
                answer: answers.index(r),
            });
        }
    }
    BallotBox {
        answers: answers.list,
        verifiers: verifiers.list,
        ballots: out,
        marks,
        rankings,
    }
}

impl StoreState {
    fn ballot(&self, i: u32) -> Option<&Ballot> {
        self.ballots.as_ref()?.get(i as usize)
    }
}

impl voting::Host for StoreState {}

impl ballot_texts::Host for StoreState {
    fn text(&mut self, ballot: u32) -> wasmtime::Result<String> {
        Ok(self
            .ballot(ballot)
            .map(|b| b.candidate.text.clone())
            .unwrap_or_default())
    }

    fn node(&mut self, ballot: u32) -> wasmtime::Result<String> {
        Ok(self
            .ballot(ballot)
            .map(|b| b.candidate.node.clone())
            .unwrap_or_default())
    }

    fn reason(&mut self, mark: u32) -> wasmtime::Result<String> {
        let mut left = mark as usize;
        for b in self.ballots.iter().flat_map(|v| v.iter()) {
            if left < b.verdicts.len() {
                return Ok(b.verdicts[left].reason.clone());
            }
            left -= b.verdicts.len();
        }
        Ok(String::new())
    }
}
