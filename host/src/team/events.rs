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
    /// The passages a task with `context` was given, before its prompt.
    Retrieved {
        task: String,
        index: String,
        passages: Vec<crate::knowledge::Citation>,
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
        /// The role version that produced the candidate (unset in journals
        /// written before hashes were recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Served>,
        /// The verifier version behind each verdict, in the verdicts' order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        verifiers: Vec<Served>,
    },
    /// A model call failed (or, in journals written before
    /// [`Event::PluginFailure`], a replica or verifier); the task goes on.
    Failure {
        task: String,
        what: String,
        /// The node, when a model call failed.
        #[serde(default)]
        node: Option<String>,
    },
    /// A plugin call failed (a role's replica, a verifier, a voter): what
    /// happened, and which version of the plugin it was.
    PluginFailure {
        task: String,
        what: String,
        by: Served,
    },
    /// One attempt of a model call that did not answer it: the router
    /// retried after it failed, or cancelled it as a hedge's loser. The
    /// attempt that answered is the call's [`Event::ModelCall`]; a call
    /// that failed on every attempt ends in an [`Event::Failure`].
    Attempt {
        task: String,
        replica: u32,
        /// The replica's n-th call, from 0 (as in [`Event::ModelCall`]).
        call: u32,
        node: String,
        outcome: AttemptEnd,
        /// Why it failed (the node's error), when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
        latency_ms: f64,
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
        /// The replicas whose ballots were counted, in the order they
        /// arrived (the round's first `ballots` ballots in the journal);
        /// empty in journals written before early decisions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        counted: Vec<u32>,
        /// Replicas of the round still running when the voter was asked: 0
        /// once all have reported; more when the ballots so far already
        /// decided the vote (an early decision, see `consensus`).
        #[serde(default)]
        running: u32,
        /// The voter, as the team names it.
        voter: String,
        decision: String,
        /// SHA-256 of the voter component that counted (unset in journals
        /// written before hashes were recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
    },
    /// A replica was stopped before it answered: its plugin call and its
    /// model calls in flight were dropped. Either the vote was decided
    /// without it (an early decision) or a hedged copy of it answered
    /// first. What its finished model calls were charged stays charged:
    /// `tokens` and `cost` say how much that was.
    ReplicaCancelled {
        task: String,
        round: u32,
        replica: u32,
        reason: String,
        #[serde(default)]
        tokens: u64,
        #[serde(default)]
        cost: f64,
    },
    /// Replica `replica` ran on a cluster worker (`conclave worker`):
    /// which one, and which delivery of the work it answered (1: the
    /// first; more: the work was redelivered after an earlier worker died
    /// or stalled), in `ms` on the worker. Its model calls follow, as the
    /// worker made them.
    ReplicaWorked {
        task: String,
        round: u32,
        replica: u32,
        worker: String,
        attempt: u32,
        ms: f64,
    },
    /// A replica outlived the hedge delay (its nodes' observed latency
    /// quantile), so a copy of it, replica `copy`, was started on another
    /// node; the first of the two to answer is counted, the other is
    /// cancelled ([`Event::ReplicaCancelled`]).
    ReplicaHedged {
        task: String,
        round: u32,
        replica: u32,
        copy: u32,
        after_ms: f64,
    },
    /// An idle slot started another copy of a task that had run for
    /// `after_ms` (the scheduler's `hedge_tasks`).
    TaskHedged {
        task: String,
        copy: u32,
        after_ms: f64,
    },
    /// Another copy of the task finished first (`winner`), so this one was
    /// aborted; its model calls are dropped.
    TaskCopyCancelled {
        task: String,
        copy: u32,
        winner: u32,
    },
    /// A coordinator's plan added subtasks to the job.
    Planned {
        task: String,
        subtasks: Vec<String>,
        /// The role version that made the plan.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Served>,
    },
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
            role: None,
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["event"], e.name());
        let e = Event::PluginFailure {
            task: "t".into(),
            what: "trapped".into(),
            by: Served {
                plugin: "solver".into(),
                hash: "ab".into(),
            },
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["event"], e.name());
    }

    #[test]
    fn cancelled_and_hedged_replicas_are_named_by_their_tags_and_old_votes_count_nothing_early() {
        let e = Event::ReplicaCancelled {
            task: "t".into(),
            round: 0,
            replica: 4,
            reason: "the vote was decided 2 (3 of 3) without it".into(),
            tokens: 12,
            cost: 0.0,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["tokens"].as_u64()),
            (Some(e.name()), Some(12))
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        let e = Event::ReplicaHedged {
            task: "t".into(),
            round: 0,
            replica: 0,
            copy: 5,
            after_ms: 900.0,
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["event"], "replica-hedged");
        let vote = r#"{"event":"vote","task":"t","round":0,"ballots":3,"voter":"majority","decision":"decided 4 (3 of 3)"}"#;
        match serde_json::from_str::<Event>(vote).unwrap() {
            Event::Vote {
                counted, running, ..
            } => assert_eq!((counted, running), (vec![], 0)),
            other => panic!("read as {other:?}"),
        }
    }

    #[test]
    fn events_journaled_before_hashes_were_recorded_still_read() {
        let vote = r#"{"event":"vote","task":"t","round":0,"ballots":3,"voter":"majority","decision":"decided 4 (3 of 3)"}"#;
        match serde_json::from_str::<Event>(vote).unwrap() {
            Event::Vote { hash, ballots, .. } => assert_eq!((hash, ballots), (None, 3)),
            other => panic!("read as {other:?}"),
        }
        let ballot = r#"{"event":"ballot","task":"t","round":0,"ballot":{"replica":1,"node":"sim","answer":"4","text":"Answer: 4","confidence":null,"ranking":[],"verdicts":[]}}"#;
        match serde_json::from_str::<Event>(ballot).unwrap() {
            Event::Ballot {
                role,
                verifiers,
                ballot,
                ..
            } => assert_eq!(
                (role, verifiers.len(), ballot.answer.as_str()),
                (None, 0, "4")
            ),
            other => panic!("read as {other:?}"),
        }
    }

    #[test]
    fn a_ballot_names_the_versions_that_made_and_judged_it() {
        let by = |p: &str, h: &str| Served {
            plugin: p.into(),
            hash: h.into(),
        };
        let e = Event::Ballot {
            task: "t".into(),
            round: 0,
            ballot: BallotRecord {
                replica: 0,
                node: "sim".into(),
                answer: "4".into(),
                text: String::new(),
                confidence: None,
                ranking: vec![],
                verdicts: vec![("answer-format".into(), true, 1.0, String::new())],
            },
            role: Some(by("solver", "aa")),
            verifiers: vec![by("answer-format", "bb")],
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["role"]["hash"], "aa");
        assert_eq!(v["verifiers"][0]["plugin"], "answer-format");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}

impl Event {
    /// The event's kind, as in its JSON `event` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Event::TaskStarted { .. } => "task-started",
            Event::Retrieved { .. } => "retrieved",
            Event::ModelCall { .. } => "model-call",
            Event::Ballot { .. } => "ballot",
            Event::Failure { .. } => "failure",
            Event::PluginFailure { .. } => "plugin-failure",
            Event::Attempt { .. } => "attempt",
            Event::Retry { .. } => "retry",
            Event::Message { .. } => "message",
            Event::Vote { .. } => "vote",
            Event::ReplicaCancelled { .. } => "replica-cancelled",
            Event::ReplicaWorked { .. } => "replica-worked",
            Event::ReplicaHedged { .. } => "replica-hedged",
            Event::TaskHedged { .. } => "task-hedged",
            Event::TaskCopyCancelled { .. } => "task-copy-cancelled",
            Event::Planned { .. } => "planned",
            Event::TaskEnded { .. } => "task-ended",
        }
    }
}

/// How an [`Event::Attempt`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptEnd {
    Failed,
    Cancelled,
}

/// Which component served a plugin call: the team's name for the plugin,
/// and the SHA-256 of the component file that answered (what a replay or
/// an audit compares against the file on disk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub plugin: String,
    pub hash: String,
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
