//! The journal: every event of every run, appended as typed, versioned
//! records with a run id and a sequence number, so that a run can be
//! resumed after a crash ([`resume`]), re-judged without a model call
//! ([`replay`]) and inspected ([`trace`]).
//!
//! [`Journal`] is the seam: the embedded store is one SQLite file
//! ([`sqlite`]); in cluster mode the same records go on a NATS JetStream
//! stream ([`jetstream`]). [`Recorder`] is the [`Observer`] that feeds a journal during a run,
//! and makes a decision wait until the records behind it are durable.

pub mod chain;
pub mod jetstream;
pub mod replay;
pub mod resume;
pub mod sqlite;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::team::events::{Event, Observer};
use crate::team::job::JobResult;

/// The version of the record format this build writes; it reads this one
/// and every one before it.
///
/// 1: one row per record. 2: records stored in chunks, several consecutive
/// records of a run in one row (see [`sqlite`]); each record as in 1.
/// 3: each record in a chunk carries its link in the run's hash chain
/// ([`chain`]): `[time, record, link]`.
pub const VERSION: u32 = 3;

/// The format of chunks without links, which a journal writes when it does
/// not chain (the benchmark's baseline).
pub const UNCHAINED: u32 = 2;

/// What a record says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "kebab-case")]
pub enum Entry {
    /// A job was submitted: everything needed to run it again.
    JobSubmitted {
        team: String,
        /// Where the spec was read from (relative paths in it are resolved
        /// against its folder).
        spec_path: String,
        /// The spec's text as it was run.
        spec: String,
        question: String,
        gold: Option<String>,
        /// What the client asked of every model call (unset: nothing).
        #[serde(default, skip_serializing_if = "crate::model::Sampling::is_default")]
        sampling: crate::model::Sampling,
        /// The SHA-256 of each plugin the team loaded, by its name in the
        /// spec: with the spec, what the run's hash chain starts from.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        plugins: std::collections::BTreeMap<String, String>,
    },
    /// A run was resumed after the record `after`.
    Resumed { after: u64 },
    /// Something happened in the run.
    Event { event: Event },
    /// The job ended.
    JobEnded { result: JobResult },
}

/// An [`Entry::Event`] as it borrows its event, for serialising without a
/// copy.
#[derive(Serialize)]
#[serde(tag = "entry", rename_all = "kebab-case")]
enum EntryRef<'a> {
    Event { event: &'a Event },
}

/// The JSON of `Entry::Event { event }`, made from a borrowed event.
pub fn encode_event(event: &Event) -> serde_json::Result<String> {
    serde_json::to_string(&EntryRef::Event { event })
}

/// One journaled record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub run: String,
    /// From 0, without gaps, per run.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub at_ms: u64,
    pub entry: Entry,
}

/// A run as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRow {
    pub run: String,
    pub team: String,
    pub question: String,
    pub started_ms: u64,
    /// Unset while the run is going on, or if it was killed.
    pub ended_ms: Option<u64>,
    pub stop: Option<String>,
    pub tokens: u64,
    pub cost: f64,
}

/// A run's records as read back, and what was wrong with its tail.
#[derive(Clone, Debug)]
pub struct RunLog {
    pub records: Vec<Record>,
    /// What the records' hash chain says ([`chain`]).
    pub chain: chain::ChainReport,
    /// A record that could not be read (bad checksum, unknown version,
    /// not JSON; the store may check several records as one, see
    /// [`sqlite`]): everything from it on is left out, and the reason is
    /// here.
    pub damaged: Option<String>,
}

impl RunLog {
    /// The submission record.
    pub fn submitted(&self) -> Option<(&str, &str, &str, &str, Option<&str>)> {
        self.records.iter().find_map(|r| match &r.entry {
            Entry::JobSubmitted {
                team,
                spec_path,
                spec,
                question,
                gold,
                ..
            } => Some((
                team.as_str(),
                spec_path.as_str(),
                spec.as_str(),
                question.as_str(),
                gold.as_deref(),
            )),
            _ => None,
        })
    }

    /// What the submission asked of every model call.
    pub fn sampling(&self) -> crate::model::Sampling {
        self.records
            .iter()
            .find_map(|r| match &r.entry {
                Entry::JobSubmitted { sampling, .. } => Some(sampling.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The result, if the run ended.
    pub fn ended(&self) -> Option<&JobResult> {
        self.records.iter().rev().find_map(|r| match &r.entry {
            Entry::JobEnded { result } => Some(result),
            _ => None,
        })
    }

    /// The events, in order, with their times.
    pub fn events(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.records.iter().filter_map(|r| match &r.entry {
            Entry::Event { event } => Some((r.at_ms, event)),
            _ => None,
        })
    }
}

/// Why the journal failed. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: cannot open: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("journal {path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("journal {path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("journal {path}: no run {run:?}")]
    NoRun { path: PathBuf, run: String },
}

/// Where runs are recorded.
pub trait Journal: Send + Sync {
    /// Queues `entry` as the next record of `run`; returns its sequence
    /// number. Never blocks on the disk.
    fn append(&self, run: &str, entry: Entry) -> u64;

    /// Queues `event` as the next record of `run` (an [`Entry::Event`]),
    /// without copying it first where the journal can help it.
    fn append_event(&self, run: &str, event: &Event) -> u64 {
        self.append(
            run,
            Entry::Event {
                event: event.clone(),
            },
        )
    }

    /// Resolves once every record queued so far is durable (one sync
    /// serves every record queued before it: group commit).
    fn flush(&self) -> BoxFuture<'static, Result<(), JournalError>>;

    /// [`Journal::flush`], answering for `run` only: a store that can fail
    /// one run's writes and not the others' (another process took that
    /// run over) fails only that run's flush.
    fn flush_run(&self, run: &str) -> BoxFuture<'static, Result<(), JournalError>> {
        let _ = run;
        self.flush()
    }

    /// Every run, newest first.
    fn runs(&self) -> Result<Vec<RunRow>, JournalError>;

    /// A run's records, checked.
    fn read(&self, run: &str) -> Result<RunLog, JournalError>;

    /// Cuts a run back to its first `keep` records (after damage).
    fn truncate(&self, run: &str, keep: u64) -> Result<(), JournalError>;

    /// Refuses every later write of this process, for the reason `why`
    /// (a coordinator that lost its lease: what it would still write is
    /// not the cluster's). The records already sent are kept. A store only
    /// one process writes has nothing to fence.
    fn fence(&self, why: &str) {
        let _ = why;
    }

    /// The digest of `run` as this process wrote it: the link of the last
    /// record it queued ([`chain`]); none for a run it did not write, or a
    /// store that does not chain. Read it after a flush.
    fn digest(&self, run: &str) -> Option<String> {
        let _ = run;
        None
    }

    /// Lifts [`Self::fence`], for a process that leads again (a new term,
    /// after its runs of the old one stopped): what it knew of each run's
    /// place in the store is forgotten, so that a run it writes again goes
    /// on after what the store holds now, whoever wrote it meanwhile. A
    /// run whose write failed for good is written again too (it is
    /// resumed from what the store holds).
    fn unfence(&self) {}

    /// Before a process resumes `run` from what it has just read (records
    /// up to `next` - 1): checks that the store still ends there, and
    /// makes the run's next record expect it, so that a record another
    /// process writes meanwhile (a coordinator deposed while paused, that
    /// woke up) refuses the resumed run's records instead of lying under
    /// them. What this process knew of the run before (a write that failed
    /// or was refused) no longer counts. `Err` when the run moved on since
    /// it was read: read it again. A store only one process writes has
    /// nothing to check.
    fn resume_at(&self, run: &str, next: u64) -> Result<(), JournalError> {
        let _ = (run, next);
        Ok(())
    }
}

/// The future a store's `flush` returns: its writer's answer on `rx`, as a
/// write error naming `path` (`sent`: whether the request reached the
/// writer).
pub(crate) fn flush_answer(
    sent: bool,
    rx: tokio::sync::oneshot::Receiver<Result<(), String>>,
    path: PathBuf,
) -> BoxFuture<'static, Result<(), JournalError>> {
    Box::pin(async move {
        let failed = |reason: String| JournalError::Write {
            path: path.clone(),
            reason,
        };
        if !sent {
            return Err(failed("the journal is closed".into()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(failed("the journal's writer stopped".into())),
        }
    })
}

/// What a journal error says when another process took a run over (it
/// resumed the run while this one was still writing it): this process's
/// records of the run are refused from then on.
pub const TAKEN_OVER: &str = "taken over by another process";

/// Where a run's records go on: its id as queued records share it, its
/// next seq and the link of its last record ([`chain`]).
struct Place {
    id: Arc<str>,
    next: u64,
    link: chain::Link,
}

/// How a store numbers and chains records: per run, its next seq and last
/// link. Both stores number under this lock and queue the record before
/// letting go of it, so that a run's records reach their writer in seq
/// order, each with the link that chains it to the one before.
pub(crate) struct Numbering {
    places: std::sync::Mutex<std::collections::HashMap<String, Place>>,
    /// Whether records are chained (format 3); off only for the
    /// benchmark's baseline.
    chained: bool,
}

impl Default for Numbering {
    fn default() -> Self {
        Numbering {
            places: Default::default(),
            chained: true,
        }
    }
}

/// A record numbered and chained, ready for its store's writer.
pub(crate) struct Numbered {
    pub(crate) run: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) at_ms: u64,
    /// Its JSON (or why it could not be made).
    pub(crate) entry: Result<String, String>,
    /// Its link, hex; none when the journal does not chain.
    pub(crate) link: Option<String>,
}

impl Numbering {
    /// A numbering that writes unchained records (format 2), as builds
    /// before the chain did: the benchmark's baseline.
    pub(crate) fn unchained() -> Self {
        Numbering {
            chained: false,
            ..Default::default()
        }
    }

    /// Sets where `run` goes on (its next seq, and the link of its last
    /// record), whatever was known of it.
    pub(crate) fn prime(&self, run: &str, next: u64, link: chain::Link) {
        self.places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                run.to_string(),
                Place {
                    id: Arc::from(run),
                    next,
                    link,
                },
            );
    }

    /// Numbers and chains the next record of `run` (its JSON `entry`) and
    /// hands it to `queue`, under the lock. `stored` says where a run this
    /// process has not written yet goes on: the store's next seq and the
    /// link of its last record ([`chain::genesis`] when it holds none, or
    /// only unchained ones).
    pub(crate) fn next(
        &self,
        run: &str,
        stored: impl FnOnce() -> (u64, chain::Link),
        entry: Result<String, String>,
        queue: impl FnOnce(Numbered),
    ) -> u64 {
        let at_ms = now_ms();
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if !places.contains_key(run) {
            let (next, link) = stored();
            places.insert(
                run.to_string(),
                Place {
                    id: Arc::from(run),
                    next,
                    link,
                },
            );
        }
        let place = places.get_mut(run).expect("inserted above");
        let seq = place.next;
        place.next += 1;
        let link = self.chained.then(|| {
            let text = entry.as_deref().unwrap_or("");
            place.link = chain::link(&place.link, seq, at_ms, text);
            chain::hex(&place.link)
        });
        queue(Numbered {
            run: place.id.clone(),
            seq,
            at_ms,
            entry,
            link,
        });
        seq
    }

    /// The link of the last record this process queued for `run`: the
    /// run's digest once its last record is durable.
    pub(crate) fn digest(&self, run: &str) -> Option<String> {
        if !self.chained {
            return None;
        }
        self.places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run)
            .filter(|p| p.next > 0)
            .map(|p| chain::hex(&p.link))
    }

    /// Forgets every run's place: each goes on after what the store holds.
    pub(crate) fn clear(&self) {
        self.places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// After a truncation: `run` goes on after what the store holds then.
    pub(crate) fn forget(&self, run: &str) {
        self.places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run);
    }
}

/// Feeds a journal from a run's events.
pub struct Recorder {
    journal: Arc<dyn Journal>,
    /// The run it records (the first it hears of): what its flushes
    /// answer for.
    run: std::sync::OnceLock<String>,
    /// The first write error (shared with the futures of `flushed`).
    error: Arc<std::sync::Mutex<Option<String>>>,
    /// Cancelled when the journal says another process took the run over
    /// ([`TAKEN_OVER`]): what this one would still do is not the run's.
    taken_over: Option<tokio_util::sync::CancellationToken>,
}

impl Recorder {
    pub fn new(journal: Arc<dyn Journal>) -> Arc<Self> {
        Arc::new(Recorder {
            journal,
            run: Default::default(),
            error: Default::default(),
            taken_over: None,
        })
    }

    /// A recorder that cancels `run` once the journal refuses its writes
    /// because another process took the run over.
    pub fn stopping(
        journal: Arc<dyn Journal>,
        run: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Recorder {
            journal,
            run: Default::default(),
            error: Default::default(),
            taken_over: Some(run),
        })
    }

    /// The first error writing the journal, if there was one.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Observer for Recorder {
    fn event(&self, run: &str, event: &Event) {
        self.run.get_or_init(|| run.to_string());
        self.journal.append_event(run, event);
    }

    fn flushed(&self) -> BoxFuture<'static, ()> {
        let flush = match self.run.get() {
            Some(run) => self.journal.flush_run(run),
            None => self.journal.flush(),
        };
        let this = self.error.clone();
        let taken_over = self.taken_over.clone();
        Box::pin(async move {
            if let Err(e) = flush.await {
                let e = e.to_string();
                if e.contains(TAKEN_OVER) {
                    if let Some(run) = taken_over {
                        run.cancel();
                    }
                }
                let mut slot = this.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
            }
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! The record encoding.
    use super::*;

    #[test]
    fn an_event_encoded_from_a_borrow_is_the_entry_it_stands_for() {
        let event = Event::Retry {
            task: "t \"quoted\"".into(),
            replica: 3,
        };
        let borrowed = encode_event(&event).unwrap();
        let owned = serde_json::to_string(&Entry::Event {
            event: event.clone(),
        })
        .unwrap();
        assert_eq!(borrowed, owned);
        assert_eq!(
            serde_json::from_str::<Entry>(&borrowed).unwrap(),
            Entry::Event { event }
        );
    }
}
