//! Debate and revision: a new round's replicas get the others' previous
//! answers, over the run's bus when the role may read it, else as
//! feedback.

use super::{Gathered, TaskContext, TaskSpec, Team};
use crate::plugin::Ballot;
use crate::team::bus::Envelope;

impl Team {
    /// Starts the next round: every replica of it gets the others'
    /// previous answers, over the bus when the role may read it, and as
    /// feedback otherwise (the returned feedback).
    pub(super) fn exchange(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        next: u32,
        g: &Gathered,
    ) -> Vec<String> {
        let said = |b: &Ballot| format!("answered {}: {}", b.candidate.answer, b.candidate.text);
        if !self.role.grants.bus {
            return g
                .ballots
                .iter()
                .map(|b| format!("Another solver {}", said(b)))
                .collect();
        }
        for slot in 0..spec.replicas.max(1) {
            let to = format!("{}/{}", spec.id, next + slot);
            ctx.bus.open(&to);
            for (b, s) in g.ballots.iter().zip(&g.slots) {
                if *s == slot {
                    continue;
                }
                let from = format!("{}/{}", spec.id, b.candidate.replica);
                let m = Envelope::new(&from, &to, "answer", &said(b))
                    .fit(ctx.bus.limits().message_bytes);
                if let Ok(n) = ctx.bus.send(m) {
                    crate::team::services::journal_message(ctx, run, n, &from, &to, "answer");
                }
            }
        }
        Vec::new()
    }
}
