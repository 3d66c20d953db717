//! Running a job with its journal, and resuming one that was killed: the
//! spec and question come back from the journal, the model replies already
//! journaled are reused (no node is called for them), and the rest of the
//! run is done again. Seeds depend on the run id, task and replica, so on
//! seeded nodes the resumed run reaches the result the uninterrupted one
//! would have.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Entry, Journal, JournalError, Recorder, RunLog};
use crate::plugin::PluginRuntime;
use crate::spec::team::TeamSpec;
use crate::team::consensus::{Recorded, RecordedCall};
use crate::team::events::{Both, Event, Observer};
use crate::team::job::{JobError, JobResult, PreparedTeam};

/// Why a run could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("run {0}: the journal has no submission record to resume from")]
    NoSubmission(String),
    #[error("run {run}: the team spec journaled with it no longer loads: {source}")]
    Team {
        run: String,
        #[source]
        source: JobError,
    },
}

/// A job run with its journal: what it came to, and the first error
/// writing the journal (the run itself goes on without it).
pub struct Journaled {
    pub result: JobResult,
    pub journal_error: Option<String>,
    /// What was wrong with the journal's tail when resuming, if anything.
    pub repaired: Option<String>,
}

/// Runs `question` on `team`, journaling every step under `run_id`.
pub async fn run(
    team: &PreparedTeam,
    journal: Arc<dyn Journal>,
    run_id: &str,
    question: &str,
    gold: Option<&str>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Journaled {
    let spec = team.spec();
    journal.append(
        run_id,
        Entry::JobSubmitted {
            team: spec.team.name.clone(),
            spec_path: spec.path.display().to_string(),
            spec: spec.source.clone(),
            question: question.to_string(),
            gold: gold.map(String::from),
        },
    );
    // The submission is durable before any model is called: whatever
    // happens next, the run can be resumed.
    let submitted = journal.flush().await.err().map(|e| e.to_string());
    let mut done = finish(
        team, journal, run_id, question, gold, observer, cancel, None, None,
    )
    .await;
    done.journal_error = submitted.or(done.journal_error);
    done
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    team: &PreparedTeam,
    journal: Arc<dyn Journal>,
    run_id: &str,
    question: &str,
    gold: Option<&str>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    recorded: Option<Arc<Recorded>>,
    repaired: Option<String>,
) -> Journaled {
    let recorder = Recorder::new(journal.clone());
    let both: Arc<dyn Observer> = Arc::new(Both(recorder.clone(), observer));
    let result = team
        .run_with(run_id, question, gold, both, cancel, recorded)
        .await;
    journal.append(
        run_id,
        Entry::JobEnded {
            result: result.clone(),
        },
    );
    let flushed = journal.flush().await.err().map(|e| e.to_string());
    Journaled {
        result,
        journal_error: recorder.error().or(flushed),
        repaired,
    }
}

/// The model replies in a run's journal, for [`resume`].
pub fn recorded(log: &RunLog) -> Recorded {
    let mut m = Recorded::new();
    for (_, e) in log.events() {
        if let Event::ModelCall {
            task,
            replica,
            call,
            node,
            tokens_in,
            tokens_out,
            cost,
            text,
            ..
        } = e
        {
            m.insert(
                (task.clone(), *replica, *call),
                RecordedCall {
                    node: node.clone(),
                    text: text.clone(),
                    tokens_in: *tokens_in,
                    tokens_out: *tokens_out,
                    cost: *cost,
                },
            );
        }
    }
    m
}

/// Continues run `run_id` from its journal. A damaged tail is cut back to
/// the last good record first (and reported in `repaired`). A run that
/// already ended is not run again: its recorded result comes back.
pub async fn resume(
    journal: Arc<dyn Journal>,
    run_id: &str,
    runtime: Arc<PluginRuntime>,
    builtin_dir: &Path,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Result<Journaled, ResumeError> {
    let log = journal.read(run_id)?;
    let repaired = log.damaged.clone();
    if repaired.is_some() {
        journal.truncate(run_id, log.records.len() as u64)?;
    }
    if let Some(result) = log.ended() {
        return Ok(Journaled {
            result: result.clone(),
            journal_error: None,
            repaired,
        });
    }
    let (_, spec_path, text, question, gold) = log
        .submitted()
        .ok_or_else(|| ResumeError::NoSubmission(run_id.to_string()))?;
    let team_err = |source: JobError| ResumeError::Team {
        run: run_id.to_string(),
        source,
    };
    let spec =
        TeamSpec::parse(text, Path::new(spec_path)).map_err(|e| team_err(JobError::Spec(e)))?;
    let team = PreparedTeam::prepare(spec, runtime, builtin_dir)
        .await
        .map_err(team_err)?;
    let after = log.records.last().map(|r| r.seq).unwrap_or(0);
    journal.append(run_id, Entry::Resumed { after });
    let replies = Arc::new(recorded(&log));
    let (question, gold) = (question.to_string(), gold.map(String::from));
    Ok(finish(
        &team,
        journal,
        run_id,
        &question,
        gold.as_deref(),
        observer,
        cancel,
        Some(replies),
        repaired,
    )
    .await)
}
