//! Bytes of text in what a plugin hands back, measured before the host
//! keeps any of it (the call's `result_bytes` limit is on these sums).

use super::{Decision, GuestError, Outcome, Verdict};

/// A decision's text: answer, runner-up, reasons.
pub fn decision(d: &Decision) -> usize {
    match d {
        Decision::Decided(x) => x.answer.len() + x.runner_up.as_ref().map_or(0, String::len),
        Decision::NeedMore(_) => 0,
        Decision::Revise(r) | Decision::NoConsensus(r) => r.len(),
    }
}

/// A verdict's text.
pub fn verdict(v: &Verdict) -> usize {
    v.verifier.len() + v.reason.len()
}

/// A role's outcome: the candidate's texts, or every field of a plan.
pub fn outcome(o: &Outcome) -> usize {
    match o {
        Outcome::Candidate(c) => {
            c.node.len()
                + c.answer.len()
                + c.text.len()
                + c.ranking.iter().map(String::len).sum::<usize>()
                // Each entry of a list costs the host a string header too.
                + 16 * c.ranking.len()
        }
        Outcome::Plan(p) => p
            .subtasks
            .iter()
            .map(|s| {
                64 + s.id.len()
                    + s.prompt.len()
                    + s.role.len()
                    + s.depends_on.iter().map(|d| 16 + d.len()).sum::<usize>()
            })
            .sum(),
    }
}

/// A plugin's own error message.
pub fn guest_error(e: &GuestError) -> usize {
    match e {
        GuestError::InvalidInput(s)
        | GuestError::InvalidConfig(s)
        | GuestError::Model(s)
        | GuestError::Internal(s) => s.len(),
    }
}
