//! The work queue simulation's invariants (listed in [`super`]).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Delivered, Ended, Log, Plan};

pub(super) fn check(
    plan: &Plan,
    log: &Log,
    deliveries: &[Delivered],
    left: &[u64],
    lost: &[(Duration, usize)],
    killed: &[(usize, Duration)],
) -> Vec<(&'static str, String)> {
    let mut broken = Vec::new();
    for (i, r) in plan.replicas.iter().enumerate() {
        let i = i as u32;
        match log.ended.get(&i) {
            None => broken.push((
                "answered",
                format!("replica {i} (queued at {:?}) never ended", r.at),
            )),
            Some((_, Ended::Result(worker, attempt))) => {
                let ran = log.executions.iter().any(|e| {
                    e.replica == i
                        && format!("w{}", e.worker) == *worker
                        && e.attempt == *attempt
                        && e.finished.is_some()
                });
                if !ran {
                    broken.push((
                        "from a delivery",
                        format!("replica {i}'s result names {worker} delivery {attempt}, which did not finish it"),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let overlaps = |spans: &[(usize, Duration, Duration)], p: usize, a: Duration, b: Duration| {
        spans.iter().any(|s| s.0 == p && s.1 < b && a < s.2)
    };
    let down = |a: Duration, b: Duration| plan.server_down.iter().any(|s| s.0 < b && a < s.1);
    let mut by_replica: BTreeMap<u32, Vec<&Delivered>> = BTreeMap::new();
    for d in deliveries {
        by_replica.entry(d.replica).or_default().push(d);
    }
    for (replica, given) in &by_replica {
        for pair in given.windows(2) {
            let (first, again) = (pair[0], pair[1]);
            let (a, b) = (first.at, again.at);
            let w = first.worker;
            let disturbed = killed.iter().any(|(k, t)| *k == w && *t <= b)
                || overlaps(&plan.pauses, w, a, b)
                || overlaps(&plan.cuts, w, a, b)
                || down(a, b)
                || lost.iter().any(|(t, p)| *p == w && a <= *t && *t <= b)
                || log.said.iter().any(|(t, p, words)| {
                    *p == w
                        && a <= *t
                        && *t <= b
                        && words.contains(&format!("replica {replica} "))
                        && words.contains("will be redelivered")
                });
            if !disturbed {
                broken.push((
                    "no needless rerun",
                    format!(
                        "replica {replica} was delivered again at {b:?} to worker {} (delivery {}) though its delivery {} to worker {w}, at {a:?}, was not disturbed",
                        again.worker, again.delivery, first.delivery
                    ),
                ));
            }
        }
    }
    // A replica the coordinator stopped waiting for is not given to a
    // worker afterwards, unless the coordinator or the server could not
    // act meanwhile (its removal is retried).
    for e in &log.executions {
        let Some((ended, how)) = log.ended.get(&e.replica) else {
            continue;
        };
        if matches!(how, Ended::Result(..)) {
            continue;
        }
        let (a, b) = (*ended, e.started);
        // A request sent while the server was down or the coordinator
        // cut off is answered only by its timeout, and then tried again.
        let since = a.saturating_sub(super::super::REQUEST_TIMEOUT + Duration::from_secs(2));
        // A worker stopped or cut off while it held the delivery hears
        // of its withdrawal late, or not at all.
        let held = deliveries
            .iter()
            .find(|d| d.replica == e.replica && d.delivery == e.attempt && d.worker == e.worker)
            .map_or(a, |d| d.at);
        let hindered = down(since, b)
            || overlaps(&plan.pauses, 0, since, b)
            || overlaps(&plan.cuts, 0, since, b)
            || overlaps(&plan.pauses, e.worker, held, b)
            || overlaps(&plan.cuts, e.worker, held, b);
        if b > a + Duration::from_secs(1) && !hindered {
            broken.push((
                "no unwanted work",
                format!(
                    "replica {} started its model call on worker {} at {b:?} (delivery {}) though the coordinator stopped waiting for it at {a:?} ({how:?})",
                    e.replica, e.worker, e.attempt
                ),
            ));
        }
    }
    if !left.is_empty() {
        broken.push((
            "nothing left",
            format!("items {left:?} are still on the work stream at the end"),
        ));
    }
    let dead: Vec<usize> = killed.iter().map(|k| k.0).collect();
    for e in &log.executions {
        if e.finished.is_none() && e.stopped.is_none() && !dead.contains(&e.worker) {
            broken.push((
                "nothing left",
                format!(
                    "replica {} delivery {} on worker {} never finished nor stopped",
                    e.replica, e.attempt, e.worker
                ),
            ));
        }
    }
    broken
}
