//! The team runtime's one entry point for a job: [`PreparedTeam::submit`]
//! takes the job and its journal, records the submission (or the resume)
//! before any model is called, runs the job with the journal as a
//! recorder beside it (and, when resuming, with the replies the journal
//! already holds), and records how it ended.
//!
//! What lives elsewhere: reading a killed run back and repairing its tail
//! is [`crate::journal::resume`], which hands what it read to this entry
//! point; the journal never drives a job.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::consensus::Recorded;
use super::events::{Both, Observer};
use super::job::{JobResult, PreparedTeam};
use crate::journal::{Entry, Journal, Recorder};

/// One question for a team, under a run id (seeds derive from it, so on
/// seeded nodes the same id gives the same run).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub run_id: String,
    pub question: String,
    /// Passed to `sim` nodes only.
    pub gold: Option<String>,
    /// What the client asked of every model call (a served request's
    /// sampling fields); journaled with the submission.
    pub sampling: crate::model::Sampling,
}

impl Job {
    pub fn new(run_id: &str, question: &str, gold: Option<&str>) -> Self {
        Job {
            run_id: run_id.to_string(),
            question: question.to_string(),
            gold: gold.map(String::from),
            sampling: Default::default(),
        }
    }

    /// The job, with `sampling` asked of every model call.
    pub fn with_sampling(mut self, sampling: crate::model::Sampling) -> Self {
        self.sampling = sampling;
        self
    }
}

/// What a journal already holds of a job being resumed, as read by
/// [`crate::journal::resume`].
pub struct Resume {
    /// The sequence number of the last good record.
    pub after: u64,
    /// The model replies journaled before the job stopped: answered from
    /// here, not asked again.
    pub replies: Arc<Recorded>,
    /// What was wrong with the journal's tail (cut back), if anything.
    pub repaired: Option<String>,
}

/// A job run with its journal: what it came to, and the first error
/// writing the journal (the job itself goes on without it).
pub struct Journaled {
    pub result: JobResult,
    pub journal_error: Option<String>,
    /// Its first record (the submission, or `Resumed`) is stored: a
    /// process that takes the run over finds it.
    pub submitted: bool,
    /// What was wrong with the journal's tail when resuming, if anything.
    pub repaired: Option<String>,
    /// The run's digest: the link of its last record in the journal's hash
    /// chain (`conclave verify RUN --digest` checks it later); none when
    /// the journal does not chain or failed.
    pub digest: Option<String>,
}

impl PreparedTeam {
    /// Runs `job`, journaling every step in `journal`; with `resume`, goes
    /// on from what the journal holds (its replies are reused). The
    /// submission is durable before any model is called, so whatever
    /// happens next the job can be resumed; the result is recorded last.
    pub async fn submit(
        &self,
        job: &Job,
        journal: Arc<dyn Journal>,
        resume: Option<Resume>,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
    ) -> Journaled {
        let (replies, repaired) = match resume {
            None => {
                let spec = self.spec();
                journal.append(
                    &job.run_id,
                    Entry::JobSubmitted {
                        team: spec.team.name.clone(),
                        spec_path: spec.path.display().to_string(),
                        spec: spec.source.clone(),
                        question: job.question.clone(),
                        gold: job.gold.clone(),
                        sampling: job.sampling.clone(),
                        plugins: self
                            .plugins()
                            .iter()
                            .map(|(name, u)| (name.clone(), u.current().hash().to_string()))
                            .collect(),
                    },
                );
                (None, None)
            }
            Some(r) => {
                journal.append(&job.run_id, Entry::Resumed { after: r.after });
                (Some(r.replies), r.repaired)
            }
        };
        let started = journal
            .flush_run(&job.run_id)
            .await
            .err()
            .map(|e| e.to_string());
        // Taken over by another process (cluster journal): this one stops.
        let cancel = cancel.child_token();
        if started
            .as_deref()
            .is_some_and(|e| e.contains(crate::journal::TAKEN_OVER))
        {
            cancel.cancel();
        }
        let recorder = Recorder::stopping(journal.clone(), cancel.clone());
        let both: Arc<dyn Observer> = Arc::new(Both(recorder.clone(), observer));
        let result = self
            .run_with(
                &job.run_id,
                &job.question,
                job.gold.as_deref(),
                both,
                cancel,
                replies,
                &job.sampling,
            )
            .await;
        journal.append(
            &job.run_id,
            Entry::JobEnded {
                result: result.clone(),
            },
        );
        let ended = journal
            .flush_run(&job.run_id)
            .await
            .err()
            .map(|e| e.to_string());
        let journal_error = started.clone().or(recorder.error()).or(ended);
        Journaled {
            result,
            submitted: started.is_none(),
            digest: journal_error
                .is_none()
                .then(|| journal.digest(&job.run_id))
                .flatten(),
            journal_error,
            repaired,
        }
    }
}
