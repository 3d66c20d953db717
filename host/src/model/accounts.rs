//! The router's accounts: calls, failures, retries, hedges, tokens, cost
//! and a latency histogram, per node, per role and per run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Counters of one node, role or run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub retries: u64,
    pub hedges: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: f64,
}

/// Counters plus a latency histogram.
#[derive(Clone, Debug)]
pub struct Stats {
    pub counts: Counts,
    pub(crate) latency_us: hdrhistogram::Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counts: Counts::default(),
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 24 * 3_600_000_000, 2)
                .expect("valid bounds"),
        }
    }
}

impl std::ops::Deref for Stats {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.counts
    }
}

/// A printable summary of [`Stats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsSummary {
    #[serde(flatten)]
    pub counts: Counts,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

impl Stats {
    /// Percentiles and counters.
    pub fn summary(&self) -> StatsSummary {
        let q = |q: f64| Duration::from_micros(self.latency_us.value_at_quantile(q));
        StatsSummary {
            counts: self.counts.clone(),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// Accounts per node, role and run.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    pub by_node: BTreeMap<String, Stats>,
    pub by_role: BTreeMap<String, Stats>,
    pub by_run: BTreeMap<String, Stats>,
}

impl Accounts {
    /// Counts a call another process made (a cluster worker) and
    /// reported: on `node`, for `role` in `run`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_call(
        &mut self,
        node: &str,
        role: &str,
        run: &str,
        tokens_in: u64,
        tokens_out: u64,
        cost: f64,
        latency: Duration,
    ) {
        let Accounts {
            by_node,
            by_role,
            by_run,
        } = self;
        for s in [
            stats(by_node, node),
            stats(by_role, role),
            stats(by_run, run),
        ] {
            let _ = s.latency_us.record((latency.as_micros() as u64).max(1));
            s.counts.calls += 1;
            s.counts.tokens_in += tokens_in;
            s.counts.tokens_out += tokens_out;
            s.counts.cost += cost;
        }
    }
}

pub(crate) fn stats<'a>(map: &'a mut BTreeMap<String, Stats>, key: &str) -> &'a mut Stats {
    if !map.contains_key(key) {
        map.insert(key.to_string(), Stats::default());
    }
    map.get_mut(key).expect("inserted above")
}
