//! Many seeds of the takeover simulation, summed up.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{run, Outcome, Plan};
use crate::cluster::simulation::RecordKind;

/// The summary of many seeds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sweep {
    pub seeds: u64,
    pub first: u64,
    pub failures: u64,
    /// Per invariant, the seeds that broke it.
    pub by_invariant: BTreeMap<&'static str, u64>,
    /// Requests the clients sent, over all seeds, and runs journaled.
    pub requests: u64,
    pub runs: u64,
    /// Owners' runs journaled, and how many of them a coordinator resumed
    /// (their owner died or stalled).
    pub owned: u64,
    pub taken_from_owners: u64,
    pub failed: Vec<Outcome>,
    pub wall: Duration,
    pub simulated: Duration,
}

/// Runs seeds `first .. first + seeds`, keeping the failures (at most
/// `keep`; a single seed is kept whatever happened).
pub fn sweep(first: u64, seeds: u64, keep: usize) -> Sweep {
    let began = std::time::Instant::now();
    let mut s = Sweep {
        seeds,
        first,
        ..Sweep::default()
    };
    for seed in first..first + seeds {
        let plan = Plan::from_seed(seed);
        s.simulated += plan.end;
        s.requests += plan.requests.len() as u64;
        let o = run(&plan);
        let mut journaled: Vec<&str> = o.journal.iter().map(|r| r.run.as_str()).collect();
        journaled.sort();
        journaled.dedup();
        s.runs += journaled.len() as u64;
        let owned: Vec<&str> = journaled
            .iter()
            .copied()
            .filter(|r| r.starts_with('o'))
            .collect();
        s.owned += owned.len() as u64;
        s.taken_from_owners += owned
            .iter()
            .filter(|run| {
                o.journal
                    .iter()
                    .any(|r| r.run == **run && r.kind == RecordKind::Resumed)
            })
            .count() as u64;
        if !o.held() {
            s.failures += 1;
            crate::cluster::simulation::count_broken(&mut s.by_invariant, &o.broken);
        }
        if (!o.held() || seeds == 1) && s.failed.len() < keep {
            s.failed.push(o);
        }
    }
    s.wall = began.elapsed();
    s
}
