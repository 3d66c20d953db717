//! Reading a killed run back for resuming: the spec and question come
//! back from the journal, a damaged tail is cut back, and the model
//! replies already journaled are handed to the team's entry point
//! ([`PreparedTeam::submit`]), which reuses them (no node is called for
//! them) and does the rest of the run again. Seeds depend on the run id,
//! task and replica, so on seeded nodes the resumed run reaches the result
//! the uninterrupted one would have. This module reads; the team runs.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Journal, JournalError, RunLog};
use crate::plugin::PluginRuntime;
use crate::spec::team::TeamSpec;
use crate::team::consensus::{Recorded, RecordedCall};
use crate::team::events::{Event, Observer};
use crate::team::job::{JobError, PreparedTeam};
use crate::team::submit::{Job, Resume};

/// Why a run could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("run {0}: the journal has no submission record to resume from")]
    NoSubmission(String),
    #[error(
        "run {run}: its journal's hash chain is broken ({why}); it is not resumed from records \
         that may have been edited (`conclave verify {run}` says more; `--accept-broken-chain` \
         resumes anyway)"
    )]
    BrokenChain { run: String, why: String },
    #[error("run {run}: the team spec journaled with it no longer loads: {source}")]
    Team {
        run: String,
        #[source]
        source: JobError,
    },
}

pub use crate::team::submit::Journaled;

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
/// already ended is not run again: its recorded result comes back. With
/// `workers`, its replicas go to the cluster's workers. A run whose hash
/// chain is broken is refused unless `accept_broken_chain`.
#[allow(clippy::too_many_arguments)]
pub async fn resume(
    journal: Arc<dyn Journal>,
    run_id: &str,
    runtime: Arc<PluginRuntime>,
    builtin_dir: &Path,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    workers: Option<Arc<dyn crate::team::remote::RemoteReplicas>>,
    accept_broken_chain: bool,
) -> Result<Journaled, ResumeError> {
    let log = journal.read(run_id)?;
    if let (Some(why), false) = (&log.chain.broken, accept_broken_chain) {
        return Err(ResumeError::BrokenChain {
            run: run_id.to_string(),
            why: why.clone(),
        });
    }
    let repaired = log.damaged.clone();
    if repaired.is_some() {
        journal.truncate(run_id, log.records.len() as u64)?;
    }
    if let Some(result) = log.ended() {
        return Ok(Journaled {
            submitted: true,
            result: result.clone(),
            journal_error: None,
            repaired,
            digest: log.chain.digest.clone(),
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
    if let Some(w) = workers {
        team.use_workers(w);
    }
    let after = log.records.last().map(|r| r.seq).unwrap_or(0);
    // It goes on from what was read, and only if nothing was written since.
    journal.resume_at(run_id, after + 1)?;
    let job = Job::new(run_id, question, gold).with_sampling(log.sampling());
    let resume = Resume {
        after,
        replies: Arc::new(recorded(&log)),
        repaired,
    };
    Ok(team
        .submit(&job, journal, Some(resume), observer, cancel)
        .await)
}
