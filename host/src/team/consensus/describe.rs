//! A task's outcomes and decisions in a few words: the kinds its spans
//! carry, and the line a vote is journaled with (and replay compares).

use crate::plugin::{Decision, Outcome};

/// A role's outcome's kind, for its span (not its text: answers can be
/// private).
pub(super) fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Candidate(_) => "candidate",
        Outcome::Plan(_) => "plan",
    }
}

/// A decision's kind, for the voter's span (not its answer).
pub(super) fn decision_kind(d: &Decision) -> &'static str {
    match d {
        Decision::Decided(_) => "decided",
        Decision::NeedMore(_) => "need-more",
        Decision::Revise(_) => "revise",
        Decision::NoConsensus(_) => "no-consensus",
    }
}

/// A decision in a few words, for events (and for replay to compare).
pub fn describe(d: &Decision) -> String {
    describe_as(d, false)
}

/// [`describe`], saying when the decided answer was synthesised (none of
/// the ballots gave it): `decided X (synthesised from N ballots)`.
pub fn describe_as(d: &Decision, synthesised: bool) -> String {
    match d {
        Decision::Decided(d) if synthesised => {
            format!(
                "decided {} (synthesised from {} ballots)",
                d.answer, d.total
            )
        }
        Decision::Decided(d) => format!("decided {} ({} of {})", d.answer, d.support, d.total),
        Decision::NeedMore(k) => format!("need {k} more"),
        Decision::Revise(r) => format!("revise: {r}"),
        Decision::NoConsensus(r) => format!("no consensus: {r}"),
    }
}
