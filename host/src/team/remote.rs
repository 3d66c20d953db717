//! Replicas run by other processes: what a coordinator hands a worker
//! ([`ReplicaJob`]), what comes back ([`ReplicaDone`]), and the seam the
//! consensus loop calls through ([`RemoteReplicas`]). The team runtime
//! stays the one that decides: a remote replica is one role call and the
//! verifiers' judgement of its candidate, made where the worker is, with
//! its model calls reported back as the events they were; the coordinator
//! journals them, charges them to the task, and counts the ballot as if
//! the replica had run in its own process. The cluster's work queue
//! ([`crate::cluster::work`]) is the implementation.
//!
//! A role granted the run's bus runs in the coordinator's process: its
//! messages live there.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::consensus::RecordedCall;
use super::events::{Event, Served};
use crate::model::Sampling;
use crate::plugin::{AnswerKind, Outcome, Verdict};

/// One replica to run elsewhere: the task as the role sees it, and the
/// team's names for the plugins to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaJob {
    /// The team's name (the model id it is served as), and the SHA-256 of
    /// its spec's text: a worker runs only a spec it has, byte for byte.
    pub team: String,
    pub digest: String,
    pub run: String,
    pub task: String,
    pub prompt: String,
    pub answer_kind: AnswerKind,
    pub gold: Option<String>,
    pub checker: Option<String>,
    /// The task's replicas per round (what the role is told).
    pub replicas: u32,
    /// Decided answers of the task's dependencies (the blackboard).
    pub inputs: Vec<(String, String)>,
    pub role: String,
    pub verifiers: Vec<String>,
    pub round: u32,
    pub replica: u32,
    pub feedback: Vec<String>,
    /// What the job's client asked of every model call.
    pub sampling: Sampling,
    /// This replica's model replies already in the journal (resume), by
    /// call number: answered from here, not from a node.
    pub recorded: Vec<(u32, RecordedCall)>,
}

impl ReplicaJob {
    /// What makes a result this job's: the run, the task and the replica
    /// (unique within a task over all its rounds).
    pub fn key(&self) -> (String, String, u32) {
        (self.run.clone(), self.task.clone(), self.replica)
    }
}

/// A remote replica's outcome, judged, with what it did on the way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDone {
    pub run: String,
    pub task: String,
    pub round: u32,
    pub replica: u32,
    /// Which delivery of the job this answers (1: the first; more: it was
    /// redelivered after an earlier worker died or stalled).
    pub attempt: u32,
    /// The worker that ran it (`host/pid`).
    pub worker: String,
    /// The role version that answered.
    pub by: Served,
    /// The role's candidate or plan, or why it failed.
    pub outcome: Result<Outcome, String>,
    /// The verifiers' verdicts on a candidate and who gave them, and the
    /// verifiers that failed.
    pub verdicts: Vec<Verdict>,
    pub judges: Vec<Served>,
    pub failures: Vec<(Served, String)>,
    /// The replica's model calls and their failed attempts, as events.
    pub events: Vec<Event>,
    /// How long the worker ran it.
    pub ms: f64,
    /// The ticket of the work item it answers (cluster work queue): what
    /// shows the result comes from a worker that was delivered the item.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ticket: String,
}

impl ReplicaDone {
    /// A job this worker cannot run, and why: the replica fails with it.
    pub fn refused(job: &ReplicaJob, worker: &str, attempt: u32, why: String) -> Self {
        ReplicaDone {
            run: job.run.clone(),
            task: job.task.clone(),
            round: job.round,
            replica: job.replica,
            attempt,
            worker: worker.to_string(),
            by: Served {
                plugin: job.role.clone(),
                hash: String::new(),
            },
            outcome: Err(why),
            verdicts: Vec::new(),
            judges: Vec::new(),
            failures: Vec::new(),
            events: Vec::new(),
            ms: 0.0,
            ticket: String::new(),
        }
    }
}

/// Where replicas run when not in this process.
pub trait RemoteReplicas: Send + Sync {
    /// Whether some live worker serves `team` now; when none does, the
    /// replica runs here.
    fn available(&self, team: &str) -> bool;

    /// Runs `job` on a worker and waits for its result. Dropping the
    /// future withdraws the job (a worker running it is told to stop). An
    /// error says why no worker answered (given up after its deliveries,
    /// no live worker left for the team).
    fn run(&self, job: ReplicaJob) -> BoxFuture<'static, Result<ReplicaDone, String>>;

    /// How long a replica has run on workers before it is late: quantile
    /// `q` of the recent round trips, once there are `min_samples` of them.
    fn late_after(&self, q: f64, min_samples: usize) -> Option<Duration>;
}

/// Workers for one team: where its replicas go, and the spec they must
/// have.
#[derive(Clone)]
pub struct Remote {
    pub replicas: std::sync::Arc<dyn RemoteReplicas>,
    pub team: String,
    pub digest: String,
}
