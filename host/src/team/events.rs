//! What happens in a run, as events: tasks starting and ending, model
//! calls, candidates, failures, bus messages, votes and plans. The
//! scheduler and the consensus loop emit them to an [`Observer`]: the CLI's
//! progress display listens, and so does the journal.

use serde::Serialize;

use super::consensus::TaskResult;

/// One thing that happened in a run.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A task's dependencies are decided and it has been started.
    TaskStarted { task: String },
    /// A model call answered.
    ModelCall {
        task: String,
        replica: u32,
        node: String,
        tokens_in: u32,
        tokens_out: u32,
        latency_ms: f64,
        attempts: u32,
        hedged: bool,
    },
    /// A replica produced a candidate.
    Candidate {
        task: String,
        replica: u32,
        round: u32,
        node: String,
        answer: String,
    },
    /// A replica, verifier or model call failed; the task goes on.
    Failure { task: String, what: String },
    /// A failed replica is drawn again.
    Retry { task: String, replica: u32 },
    /// A message went over the bus.
    Message {
        from: String,
        to: String,
        kind: String,
    },
    /// The voter's decision on the ballots so far.
    Vote {
        task: String,
        round: u32,
        ballots: u32,
        decision: String,
    },
    /// A coordinator's plan added subtasks to the job.
    Planned { task: String, subtasks: Vec<String> },
    /// A task stopped.
    TaskEnded { task: String, result: TaskResult },
}

/// Hears every event of a run. Called on the runtime's threads: keep it
/// quick, hand slow work to a channel.
pub trait Observer: Send + Sync {
    fn event(&self, run: &str, event: &Event);
}

/// Hears nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _run: &str, _event: &Event) {}
}

impl<F: Fn(&str, &Event) + Send + Sync> Observer for F {
    fn event(&self, run: &str, event: &Event) {
        self(run, event)
    }
}
