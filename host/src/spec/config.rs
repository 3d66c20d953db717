//! The settings a team spec gives the runtime for how it runs, as typed
//! configs with their documented defaults: when each task's voter is asked
//! and whether late replicas are copied ([`ConsensusConfig`], from `[team]
//! consensus = { ... }`), and whether straggling tasks are copied
//! ([`HedgeTasks`], from `[team] hedge_tasks = { ... }`).
//!
//! They live here, not beside the code that acts on them (the consensus
//! loop and the scheduler in `team`), so that a spec is read and checked
//! without the runtime; the runtime re-exports them where it uses them.
//! What they mean at run time is that code's business.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the consensus loop asks its voter and chases slow replicas; one home
/// for these numbers, set for a team in `[team] consensus = { ... }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusConfig {
    /// When the voter may decide before every replica has reported.
    /// Default `early`.
    pub decide: Decide,
    /// Copies of replicas that run late. Off by default.
    pub hedge: ReplicaHedge,
}

/// When the voter is asked.
///
/// `early` (the default): also while replicas are still running, as soon
/// as the ballots so far make a decision possible: the leading answer
/// (among ballots that passed their verifiers) has more ballots than any
/// other answer (counting every ballot) could reach if every replica still
/// running voted for it. A count that can no longer be overtaken is what
/// `majority` and `quorum` would decide on all the ballots, so the team's
/// semantics hold and a 5-replica majority decides once 3 agree. The voter
/// still makes the decision: the host only takes it early if the voter
/// decides for that same leader; any other answer (`need-more`, `revise`,
/// another leader, as a `weighted` voter may give) waits for more ballots.
/// Replicas still running are then cancelled.
///
/// `all`: the voter is asked once every replica of the draw has reported
/// (the behaviour before early decisions, and the baseline of `conclave
/// bench consensus`). Use it for a voter whose decision is not a count
/// (`weighted`, `borda`) when every ballot must weigh in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decide {
    #[default]
    Early,
    All,
}

/// Hedged replicas: a replica (a whole role call, with its model calls)
/// that has run longer than `quantile` of its nodes' observed latencies
/// gets a copy, a new replica started on a node the router finds healthy
/// and less loaded; the first of the two to answer is counted and the
/// other is cancelled. Off by default, as the router's per-call hedge is: a
/// copy spends tokens, and a team on a node with a steady tail gains
/// little from it. The router's `[router] hedge` copies one model call; this
/// copies the replica, so it also rescues a replica stuck between calls or
/// on a node that stalls without failing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaHedge {
    /// Off by default.
    pub enabled: bool,
    /// A replica is late once it has run past this quantile of the
    /// nodes' recent model-call latencies (the largest over the nodes
    /// that have enough of them). Default 0.9.
    pub quantile: f64,
    /// Most copies per draw of a task's replicas. Default 2.
    pub max_extra: u32,
    /// Latencies a node needs before its quantile is trusted. Default 20.
    pub min_samples: usize,
}

impl Default for ReplicaHedge {
    fn default() -> Self {
        ReplicaHedge {
            enabled: false,
            quantile: 0.9,
            max_extra: 2,
            min_samples: 20,
        }
    }
}

/// When a task counts as a straggler worth a copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeAfter {
    /// After a fixed time.
    Fixed(Duration),
    /// After this quantile (0..1) of the run times of the job's tasks
    /// finished so far; no copies until [`HedgeTasks::MIN_OBSERVED`] have
    /// finished, since a quantile of fewer says little.
    Quantile(f64),
}

impl std::str::FromStr for HedgeAfter {
    type Err = String;

    /// `"p90"` (a quantile of finished tasks' run times) or a duration
    /// (`"20s"`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(q) = s.strip_prefix('p') {
            let q: f64 = q
                .parse()
                .map_err(|_| format!("`{s}`: expected p1..p99 or a duration"))?;
            if !(q > 0.0 && q < 100.0) {
                return Err(format!("`{s}`: the quantile must be in p1..p99"));
            }
            return Ok(HedgeAfter::Quantile(q / 100.0));
        }
        humantime::parse_duration(s)
            .map(HedgeAfter::Fixed)
            .map_err(|e| format!("`{s}`: expected p1..p99 or a duration ({e})"))
    }
}

impl<'de> serde::Deserialize<'de> for HedgeAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hedging of whole tasks (`[team] hedge_tasks = { after = "p90",
/// max_copies = 2 }`). Off unless a spec asks: every copy is a full task's
/// model calls, about a quarter more calls on the paper's DAGs for the
/// makespans in BENCHMARKS.md, a trade a team author should choose.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeTasks {
    /// How long a task runs before a copy of it may start.
    pub after: HedgeAfter,
    /// Copies of one task running at once, the first included (default 2:
    /// one hedge).
    #[serde(default = "HedgeTasks::default_max_copies")]
    pub max_copies: usize,
}

impl HedgeTasks {
    /// Finished tasks needed before a quantile is trusted.
    pub const MIN_OBSERVED: usize = 3;

    fn default_max_copies() -> usize {
        2
    }
}
