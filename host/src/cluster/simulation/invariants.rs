//! The invariants [`super::takeover`] checks after each schedule (its
//! module's notes say which).

use std::collections::BTreeMap;

use super::server::{Record, RecordKind};
use super::takeover::{Answer, Plan};

/// The invariants (see the module's notes): each broken one as `(which,
/// what happened)`.
pub(super) fn check(
    plan: &Plan,
    journal: &[Record],
    answers: &[(String, usize, Option<Answer>)],
    registered: &[(String, u64)],
) -> Vec<(&'static str, String)> {
    let mut broken = Vec::new();
    let after = plan.end.saturating_sub(plan.quiet_from());
    let mut runs: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in journal {
        runs.entry(r.run.as_str()).or_default().push(r);
    }
    for (run, records) in &runs {
        if !matches!(records[0].kind, RecordKind::Submitted { .. }) {
            broken.push((
                "a run's journal starts with its submission",
                format!("run {run}: its first record is {:?}", records[0].kind),
            ));
        }
        for w in records.windows(2) {
            if w[1].term < w[0].term {
                broken.push((
                    "a deposed writer writes nothing after its successor",
                    format!(
                        "run {run}: p{} wrote {:?} under term {} at {:.3?}, after term {} had written",
                        w[1].writer, w[1].kind, w[1].term, w[1].at, w[0].term
                    ),
                ));
            }
        }
        let ends: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.kind, RecordKind::Ended { .. }))
            .map(|(i, _)| i)
            .collect();
        if ends.len() > 1 {
            broken.push((
                "a run ends once",
                format!("run {run} ended {} times", ends.len()),
            ));
        }
        match ends.first() {
            Some(&first) if first + 1 < records.len() => broken.push((
                "nothing follows a run's end",
                format!(
                    "run {run}: {:?} was written after its end",
                    records[first + 1].kind
                ),
            )),
            Some(_) => {}
            None => {
                let last = records[records.len() - 1];
                broken.push((
                    "every journaled run ends",
                    format!(
                        "run {run} never ended ({} records, the last {:?} by p{} at {:.3?}), {after:.1?} after the last fault",
                        records.len(),
                        last.kind,
                        last.writer,
                        last.at,
                    ),
                ));
            }
        }
        let mut steps: BTreeMap<u32, usize> = BTreeMap::new();
        for r in records {
            if let RecordKind::Step { step } = r.kind {
                *steps.entry(step).or_default() += 1;
            }
        }
        for (step, n) in steps {
            if n > 1 {
                broken.push((
                    "a model reply is journaled once",
                    format!("run {run}: the reply of step {step} is in it {n} times"),
                ));
            }
        }
    }
    for (run, p, answer) in answers {
        let ended_decided = runs.get(run.as_str()).is_some_and(|rs| {
            rs.iter()
                .any(|r| r.kind == RecordKind::Ended { decided: true })
        });
        match answer {
            None => broken.push((
                "every accepted request is answered",
                format!("run {run}: its client at p{p} was never answered"),
            )),
            Some(Answer::Decided) if !ended_decided => broken.push((
                "a decision told is a decision journaled",
                format!("run {run}: p{p} told its client it decided, and the journal holds no decision"),
            )),
            Some(Answer::HandedOver | Answer::JournalUnavailable) if !ended_decided => {
                broken.push((
                    "a run its client was told goes on decides",
                    format!(
                        "run {run}: p{p} told its client ({answer:?}) that the cluster goes on with it, and it never decided"
                    ),
                ))
            }
            _ => {}
        }
    }
    for (run, term) in registered {
        broken.push((
            "the registry empties",
            format!("run {run} is still registered (term {term}) {after:.1?} after the last fault"),
        ));
    }
    broken
}
