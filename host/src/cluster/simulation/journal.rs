//! The model of the cluster journal's writer (`journal::jetstream::writer`)
//! that [`super::takeover`]'s processes write through: one message of a run
//! in flight at a time; each append expects the run's last sequence as this
//! writer knows it (read from the server the first time, and read again
//! until the server answers), so a writer another has overtaken is refused
//! (fenced); a publish not acknowledged is sent again, with the same
//! message id, for [`RETRY_FOR`], then the run has failed (that run only);
//! a fenced process writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::server::{AppendError, Proc, Record, RecordKind, Server};
use crate::journal::TAKEN_OVER;

/// How long the journal's writer publishes a record again before it fails
/// (`journal::jetstream::writer::RETRY_FOR`).
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// The journal's writer of one process (see the module's notes).
pub struct SimJournal {
    server: Arc<Server>,
    pub(super) proc: Arc<Proc>,
    inner: Mutex<Writer>,
    /// One message of a run in flight at a time, as the writer publishes
    /// (other runs' go meanwhile).
    publishing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
pub(super) struct Writer {
    pending: Vec<(String, RecordKind, u64)>,
    /// The last sequence of each run as this writer knows it.
    pub(super) last: HashMap<String, u64>,
    fenced: HashMap<String, String>,
    fenced_all: Option<String>,
    /// Set with the fence.
    failed: Option<String>,
    /// Runs a write of which failed for good.
    failed_runs: HashMap<String, String>,
    /// Numbers this writer's messages, for their ids.
    sent: u64,
}

impl SimJournal {
    pub(super) fn new(server: Arc<Server>, proc: Arc<Proc>) -> Arc<SimJournal> {
        Arc::new(SimJournal {
            server,
            proc,
            inner: Mutex::default(),
            publishing: Mutex::default(),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn append(&self, run: &str, kind: RecordKind, term: u64) {
        self.lock().pending.push((run.to_string(), kind, term));
    }

    /// Publishes what is queued of `run`; whether it is stored.
    pub(super) async fn flush_run(&self, run: &str) -> Result<(), String> {
        let one = self
            .publishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run.to_string())
            .or_default()
            .clone();
        let _one = one.lock().await;
        let records: Vec<(RecordKind, usize, u64)> = {
            let mut w = self.lock();
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut w.pending)
                .into_iter()
                .partition(|p| p.0 == run);
            w.pending = others;
            mine.into_iter()
                .map(|(_, kind, term)| (kind, self.proc.id, term))
                .collect()
        };
        // The run's queued records go in one message.
        if !records.is_empty() {
            self.store(run, records).await;
        }
        let w = self.lock();
        let mine = w.fenced.get(run).or(w.failed_runs.get(run));
        match mine.or(w.failed.as_ref()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Stores one message of `run`'s records, unless the writer is
    /// fenced or the run failed; records what came of it.
    async fn store(&self, run: &str, records: Vec<(RecordKind, usize, u64)>) {
        {
            let w = self.lock();
            if w.fenced_all.is_some()
                || w.fenced.contains_key(run)
                || w.failed_runs.contains_key(run)
            {
                return;
            }
        }
        let known = self.lock().last.get(run).copied();
        let expected = match known {
            Some(l) => l,
            None => match self.last_of(run).await {
                Ok(l) => l,
                Err(e) => {
                    self.lock().failed_runs.insert(run.to_string(), e);
                    return;
                }
            },
        };
        let msg_id = {
            let mut w = self.lock();
            w.sent += 1;
            format!("p{}/{}", self.proc.id, w.sent)
        };
        let stored = self.publish(run, expected, records, msg_id).await;
        let mut w = self.lock();
        match stored {
            Ok(seq) => {
                w.last.insert(run.to_string(), seq);
            }
            Err(None) => {
                let why = format!(
                    "run {run} was {TAKEN_OVER}: another process wrote to it after this one last did"
                );
                w.fenced.insert(run.to_string(), why);
            }
            Err(Some(e)) => {
                w.failed_runs.entry(run.to_string()).or_insert(e);
            }
        }
    }

    /// The last sequence of `run`, read until the server answers or
    /// [`RETRY_FOR`] passes.
    pub(super) async fn last_of(&self, run: &str) -> Result<u64, String> {
        let began = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let id = run.to_string();
            let read = self
                .server
                .request(&self.proc, format!("last of {run}"), move |s, _| {
                    s.last_seq(&id)
                })
                .await;
            match read {
                Ok(l) => return Ok(l),
                Err(e) if began.elapsed() >= RETRY_FOR => {
                    return Err(format!("the last record of {run} not read: {e}"))
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes one message until it is stored: its last sequence;
    /// `Err(None)`: fenced; `Err(Some(_))`: failed for good.
    async fn publish(
        &self,
        run: &str,
        expected: u64,
        records: Vec<(RecordKind, usize, u64)>,
        msg_id: String,
    ) -> Result<u64, Option<String>> {
        let began = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let (id, r, recs) = (msg_id.clone(), run.to_string(), records.clone());
            let what = format!(
                "append {} to {run} expecting {expected} ({msg_id})",
                recs.len()
            );
            let start = self.server.start;
            let sent = self
                .server
                .request(&self.proc, what, move |s, now| {
                    if let Some(seq) = s.dedup.get(&id) {
                        return Ok(*seq);
                    }
                    let stored = s.append(&r, expected, recs, now - start);
                    if let Ok(seq) = stored {
                        s.dedup.insert(id, seq);
                    }
                    stored
                })
                .await;
            match sent {
                Ok(Ok(seq)) => return Ok(seq),
                Ok(Err(AppendError::WrongLastSequence)) => return Err(None),
                Err(e) if began.elapsed() >= RETRY_FOR => {
                    return Err(Some(format!(
                        "{} records of {run} not stored after {}s of retries: {e}",
                        records.len(),
                        RETRY_FOR.as_secs()
                    )))
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub(super) fn fence(&self, why: &str) {
        // As the real journal words it (`JetStreamJournal::fence`).
        let why = format!("{why}: the runs of this process were {TAKEN_OVER}");
        let mut w = self.lock();
        w.failed = Some(why.clone());
        w.fenced_all = Some(why);
    }

    pub(super) fn unfence(&self) {
        let mut w = self.lock();
        if let Some(why) = w.fenced_all.take() {
            if w.failed.as_ref() == Some(&why) {
                w.failed = None;
            }
        }
        w.fenced.clear();
        w.failed_runs.clear();
        w.last.clear();
    }

    pub(super) fn forget(&self, run: &str) {
        let mut w = self.lock();
        w.fenced.remove(run);
        w.failed_runs.remove(run);
        w.last.remove(run);
    }

    pub(super) async fn read(&self, run: &str) -> Result<Vec<Record>, String> {
        let id = run.to_string();
        self.server
            .request(&self.proc, format!("read {run}"), move |s, _| {
                s.records(&id)
            })
            .await
            .map_err(|e| format!("cannot read the journal of {run}: {e}"))
    }
}
