//! What happens in a run, as events: tasks starting and ending, model
//! calls, ballots, failures, bus messages, votes and plans. The scheduler
//! and the consensus loop emit them to an [`Observer`]: the CLI's progress
//! display listens, and so does the journal, which is why an event carries
//! everything needed to resume a run (model replies) and to re-judge it
//! (ballots, and which voter counted them).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::consensus::TaskResult;
use crate::plugin::{Ballot, Candidate, Verdict};

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A task's dependencies are decided and it has been started.
    TaskStarted {
        task: String,
        role: String,
        voter: String,
        answer_kind: String,
        prompt: String,
        depends_on: Vec<String>,
    },
    /// A model call answered (or, on resume, was answered from the
    /// journal: `replayed`).
    ModelCall {
        task: String,
        replica: u32,
        /// The replica's n-th call, from 0.
        call: u32,
        node: String,
        tokens_in: u32,
        tokens_out: u32,
        cost: f64,
        latency_ms: f64,
        attempts: u32,
        hedged: bool,
        text: String,
        #[serde(default)]
        replayed: bool,
    },
    /// A replica's candidate with its verdicts: what the voter counts.
    Ballot {
        task: String,
        round: u32,
        ballot: BallotRecord,
    },
    /// A replica, verifier or model call failed; the task goes on.
    Failure {
        task: String,
        what: String,
        /// The node, when a model call failed.
        #[serde(default)]
        node: Option<String>,
    },
    /// A failed replica is drawn again.
    Retry { task: String, replica: u32 },
    /// A message went over the bus.
    Message {
        from: String,
        to: String,
        kind: String,
    },
    /// The voter's decision on the first `ballots` ballots of the round.
    Vote {
        task: String,
        round: u32,
        ballots: u32,
        /// The voter, as the team names it.
        voter: String,
        decision: String,
    },
    /// A coordinator's plan added subtasks to the job.
    Planned { task: String, subtasks: Vec<String> },
    /// A task stopped.
    TaskEnded { task: String, result: TaskResult },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_json_tags() {
        let e = Event::Retry {
            task: "t".into(),
            replica: 1,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], e.name());
        let e = Event::Planned {
            task: "t".into(),
            subtasks: vec![],
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["event"], e.name());
    }
}

impl Event {
    /// The event's kind, as in its JSON `event` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Event::TaskStarted { .. } => "task-started",
            Event::ModelCall { .. } => "model-call",
            Event::Ballot { .. } => "ballot",
            Event::Failure { .. } => "failure",
            Event::Retry { .. } => "retry",
            Event::Message { .. } => "message",
            Event::Vote { .. } => "vote",
            Event::Planned { .. } => "planned",
            Event::TaskEnded { .. } => "task-ended",
        }
    }
}

/// A ballot as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BallotRecord {
    pub replica: u32,
    pub node: String,
    pub answer: String,
    pub text: String,
    pub confidence: Option<f64>,
    pub ranking: Vec<String>,
    /// (verifier, pass, score, reason)
    pub verdicts: Vec<(String, bool, f64, String)>,
}

impl From<&Ballot> for BallotRecord {
    fn from(b: &Ballot) -> Self {
        let c = &b.candidate;
        BallotRecord {
            replica: c.replica,
            node: c.node.clone(),
            answer: c.answer.clone(),
            text: c.text.clone(),
            confidence: c.confidence,
            ranking: c.ranking.clone(),
            verdicts: b
                .verdicts
                .iter()
                .map(|v| (v.verifier.clone(), v.pass, v.score, v.reason.clone()))
                .collect(),
        }
    }
}

impl From<&BallotRecord> for Ballot {
    fn from(b: &BallotRecord) -> Self {
        Ballot {
            candidate: Candidate {
                replica: b.replica,
                node: b.node.clone(),
                answer: b.answer.clone(),
                text: b.text.clone(),
                confidence: b.confidence,
                ranking: b.ranking.clone(),
            },
            verdicts: b
                .verdicts
                .iter()
                .map(|(verifier, pass, score, reason)| Verdict {
                    verifier: verifier.clone(),
                    pass: *pass,
                    score: *score,
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

/// Hears every event of a run. Called on the runtime's threads: keep it
/// quick, hand slow work to a channel.
pub trait Observer: Send + Sync {
    fn event(&self, run: &str, event: &Event);

    /// Resolves once every event heard so far is safe (for the journal:
    /// durable). A decision is reported only after this.
    fn flushed(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
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

/// Several observers as one.
pub struct Both(
    pub std::sync::Arc<dyn Observer>,
    pub std::sync::Arc<dyn Observer>,
);

impl Observer for Both {
    fn event(&self, run: &str, event: &Event) {
        self.0.event(run, event);
        self.1.event(run, event);
    }

    fn flushed(&self) -> BoxFuture<'static, ()> {
        let (a, b) = (self.0.flushed(), self.1.flushed());
        Box::pin(async move {
            a.await;
            b.await;
        })
    }
}
