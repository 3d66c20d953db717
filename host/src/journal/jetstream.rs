//! The journal on NATS JetStream: the same records as the embedded SQLite
//! store ([`super::sqlite`]), on a stream that every host of a cluster
//! reaches, so that a run recorded on one host is listed, traced, replayed
//! and resumed from any other.
//!
//! Layout, for a cluster named `NAME` (`--cluster-name`, default
//! `conclave`):
//!
//! - stream `CONCLAVE_NAME_JOURNAL`, file storage, subjects
//!   `conclave.NAME.journal.>`: a run's records on the subject
//!   `conclave.NAME.journal.RUN`, in *chunks* as in the SQLite store: the
//!   records a run queued while the last message was being written go in
//!   one message, `[[at_ms, record, link], ...]` (each record an
//!   [`Entry`], JSON; its link in the run's hash chain, [`super::chain`]),
//!   so that the server syncs once for all of them. The headers
//!   `Conclave-Seq` (the first record's number: 0, 1, 2, ... per run),
//!   `Conclave-Count` and `Conclave-Version` ([`super::VERSION`]) say where
//!   they go. `Nats-Msg-Id` is `RUN/FIRST/COUNT/WRITER`, so a chunk
//!   published again after a lost acknowledgement is stored once (the
//!   stream's two-minute duplicate window).
//! - key-value bucket `conclave-NAME-runs`: per run, its row of
//!   `conclave runs` (team, question, start, end, stop, tokens, cost).
//!
//! **Durability.** JetStream acknowledges a write once it is in the
//! server's memory and syncs its files to disk on a timer (`sync_interval`,
//! two minutes by default), so under the defaults an acknowledged record
//! can be lost when the machine goes down. This store refuses a server that
//! does not sync every write: it reads the server's monitoring endpoint
//! (`/varz`, `jetstream.config.sync_always`) at connect and stops with an
//! error naming the setting (`jetstream { sync_interval: always }`) unless
//! it is on. Servers before 2.10 have no such setting and are refused by
//! version. Every write then costs one `fsync` on the server; the journal
//! puts a run's queued records in one message and waits for
//! acknowledgements only when a flush asks (before a decision is released)
//! or the run's next message is due, as the SQLite store's group commit
//! does.
//!
//! **Fencing.** Each chunk expects the run's last stream sequence as this
//! writer knows it (`Nats-Expected-Last-Subject-Sequence`), and one chunk
//! of a run is in flight at a time: a writer that another process has
//! overtaken on the run (it resumed the run) is refused, and reports the
//! run as [`super::TAKEN_OVER`].
//!
//! **Order.** Chunks of different runs are in flight at once. A chunk lost
//! in transit (the server restarted) is published again, with the same
//! message id, before its run's next; a reader orders a run's chunks by
//! `Conclave-Seq` all the same, and reports a gap as damage, as a bad
//! checksum is in SQLite.
//!
//! All network work happens on one thread of the journal's own, with its
//! own runtime; the [`Journal`] methods hand it requests. Reads first wait
//! for the records already queued, so a process reads its own writes.

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{chain, Entry, Journal, JournalError, Numbered, Numbering, RunLog, RunRow};
use crate::team::events::Event;

mod auth;
mod chunk;
mod writer;

pub use auth::ClusterAuth;
use writer::Writer;

/// How a journal finds its cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The NATS server, `nats://HOST:PORT` (several, comma-separated).
    pub url: String,
    /// Names the stream, subjects and bucket, so that clusters can share
    /// one NATS server.
    pub name: String,
    /// The server's monitoring endpoint, read to check its sync setting
    /// (default: `http://HOST:8222` of the first server).
    pub monitor: Option<String>,
    /// Copies of each record JetStream keeps (a NATS cluster of at least
    /// that many servers is needed above 1).
    pub replicas: usize,
    /// Credentials and TLS for the server.
    pub auth: ClusterAuth,
}

impl ClusterConfig {
    /// A cluster at `url` with the default name and settings.
    pub fn new(url: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            name: DEFAULT_NAME.into(),
            monitor: None,
            replicas: 1,
            auth: ClusterAuth::default(),
        }
    }

    fn stream(&self) -> String {
        format!("CONCLAVE_{}_JOURNAL", self.name.to_uppercase())
    }

    fn subject(&self, run: &str) -> String {
        format!("conclave.{}.journal.{}", self.name, token(run))
    }

    fn bucket(&self) -> String {
        format!("conclave-{}-runs", self.name)
    }

    /// `http://HOST:8222` of the first server in `url`.
    fn monitor_url(&self) -> String {
        if let Some(m) = &self.monitor {
            return m.trim_end_matches('/').to_string();
        }
        let first = self.url.split(',').next().unwrap_or("").trim();
        let rest = first.split_once("://").map_or(first, |(_, r)| r);
        let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => hostport,
        };
        format!("http://{host}:8222")
    }
}

/// The cluster name when none is given.
pub const DEFAULT_NAME: &str = "conclave";

/// A run id as one subject token and key: itself when it is made of
/// letters, digits, `-` and `_` (as Conclave's run ids are), else `x` and
/// its hex.
pub fn token(run: &str) -> String {
    if !run.is_empty()
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        run.to_string()
    } else {
        let mut s = String::from("x");
        for b in run.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Checks a cluster name: it is part of subjects and bucket names.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "cluster name {name:?}: use letters, digits, `-` and `_` only"
        ));
    }
    Ok(())
}

/// A record on its way to the stream.
struct Pending {
    run: Arc<str>,
    seq: u64,
    at_ms: u64,
    entry: Result<String, String>,
    /// Its link in the run's chain (none: the journal does not chain).
    link: Option<String>,
    runs: Option<RunsUpdate>,
}

enum RunsUpdate {
    Submitted {
        team: String,
        question: String,
    },
    Resumed,
    Ended {
        stop: String,
        tokens: u64,
        cost: f64,
    },
}

fn runs_update(entry: &Entry) -> Option<RunsUpdate> {
    match entry {
        Entry::JobSubmitted { team, question, .. } => Some(RunsUpdate::Submitted {
            team: team.clone(),
            question: question.clone(),
        }),
        Entry::Resumed { .. } => Some(RunsUpdate::Resumed),
        Entry::JobEnded { result } => Some(RunsUpdate::Ended {
            stop: result.stop.to_string(),
            tokens: result.tokens_in + result.tokens_out,
            cost: result.cost,
        }),
        Entry::Event { .. } => None,
    }
}

type Reply<T> = std_mpsc::SyncSender<Result<T, String>>;

enum Msg {
    Append(Box<Pending>),
    Flush(oneshot::Sender<Result<(), String>>),
    /// A flush that answers for one run only.
    FlushRun(String, oneshot::Sender<Result<(), String>>),
    /// Where a run goes on: its next seq and its last record's link.
    NextSeq(String, Reply<(u64, chain::Link)>),
    Runs(Reply<Vec<RunRow>>),
    Read(String, Reply<Option<RunLog>>),
    Truncate(String, u64, Reply<()>),
    /// Every later write is refused, for this reason.
    Fence(String),
    /// Lifts the fence, forgetting what the writer knew of each run.
    Unfence,
    /// Forgets what the writer knew of one run (it is read again to be
    /// resumed): its last sequence, and why it was fenced or failed.
    Forget(String),
}

/// A journal on a JetStream stream.
pub struct JetStreamJournal {
    /// What errors name: the server and the stream.
    label: PathBuf,
    tx: Mutex<Option<mpsc::UnboundedSender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Numbers each run's records.
    next: Numbering,
}

impl JetStreamJournal {
    /// Connects to the cluster's NATS server, checks that it syncs every
    /// write to disk, and creates the stream and bucket if they are not
    /// there. Blocks until that is done (a few milliseconds on a
    /// reachable server; `CONNECT_TIMEOUT` at most to connect).
    pub fn connect(config: &ClusterConfig) -> Result<Arc<Self>, JournalError> {
        let label = PathBuf::from(format!("{} (stream {})", config.url, config.stream()));
        let open_err = |reason: String| JournalError::Open {
            path: label.clone(),
            reason,
        };
        check_name(&config.name).map_err(open_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let cfg = config.clone();
        let writer = std::thread::Builder::new()
            .name("conclave-journal-nats".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Writer::start(cfg).await {
                        Ok(w) => {
                            let _ = ready_tx.send(Ok(()));
                            w.run(rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| open_err(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = writer.join();
                return Err(open_err(e));
            }
            Err(_) => {
                let _ = writer.join();
                return Err(open_err("the journal's thread stopped".into()));
            }
        }
        Ok(Arc::new(JetStreamJournal {
            label,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            next: Numbering::default(),
        }))
    }

    fn send(&self, m: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(m).is_ok())
    }

    /// Sends a request to the writer and waits for its answer.
    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, String> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        if !self.send(make(tx)) {
            return Err("the journal is closed".into());
        }
        rx.recv()
            .map_err(|_| "the journal's writer stopped".to_string())?
    }

    fn read_err(&self, reason: String) -> JournalError {
        JournalError::Read {
            path: self.label.clone(),
            reason,
        }
    }

    fn queue(&self, run: &str, entry: Result<String, String>, runs: Option<RunsUpdate>) -> u64 {
        // A run this process has not written goes on after what the stream
        // holds (a resumed run). On a read error it starts at 0, and the
        // records land over the stored ones; the reader keeps the later.
        let stored = || {
            self.ask(|r| Msg::NextSeq(run.to_string(), r))
                .unwrap_or_else(|e| {
                    tracing::warn!("journal {}: {e}", self.label.display());
                    (0, chain::genesis(run))
                })
        };
        self.next.next(run, stored, entry, |n: Numbered| {
            self.send(Msg::Append(Box::new(Pending {
                run: n.run,
                seq: n.seq,
                at_ms: n.at_ms,
                entry: n.entry,
                link: n.link,
                runs,
            })));
        })
    }
}

impl Drop for JetStreamJournal {
    fn drop(&mut self) {
        // Close the queue; the writer stores what it holds, then stops.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Journal for JetStreamJournal {
    fn append(&self, run: &str, entry: Entry) -> u64 {
        let json = serde_json::to_string(&entry).map_err(|e| e.to_string());
        self.queue(run, json, runs_update(&entry))
    }

    fn append_event(&self, run: &str, event: &Event) -> u64 {
        let json = super::encode_event(event).map_err(|e| e.to_string());
        self.queue(run, json, None)
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), JournalError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Msg::Flush(tx));
        super::flush_answer(sent, rx, self.label.clone())
    }

    fn flush_run(&self, run: &str) -> BoxFuture<'static, Result<(), JournalError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Msg::FlushRun(run.to_string(), tx));
        super::flush_answer(sent, rx, self.label.clone())
    }

    fn runs(&self) -> Result<Vec<RunRow>, JournalError> {
        self.ask(Msg::Runs).map_err(|e| self.read_err(e))
    }

    fn read(&self, run: &str) -> Result<RunLog, JournalError> {
        match self.ask(|r| Msg::Read(run.to_string(), r)) {
            Ok(Some(log)) => Ok(log),
            Ok(None) => Err(JournalError::NoRun {
                path: self.label.clone(),
                run: run.to_string(),
            }),
            Err(e) => Err(self.read_err(e)),
        }
    }

    fn fence(&self, why: &str) {
        self.send(Msg::Fence(format!(
            "{why}: the runs of this process were {}, and nothing more of them is written",
            super::TAKEN_OVER
        )));
    }

    fn digest(&self, run: &str) -> Option<String> {
        self.next.digest(run)
    }

    fn unfence(&self) {
        self.next.clear();
        self.send(Msg::Unfence);
    }

    fn resume_at(&self, run: &str, next: u64) -> Result<(), JournalError> {
        let write_err = |reason: String| JournalError::Write {
            path: self.label.clone(),
            reason,
        };
        self.next.forget(run);
        self.send(Msg::Forget(run.to_string()));
        // Read again, and from this read on the writer expects the run's
        // last stream sequence as it is now.
        let (stored, link) = self
            .ask(|r| Msg::NextSeq(run.to_string(), r))
            .map_err(write_err)?;
        if stored != next {
            return Err(write_err(format!(
                "run {run} holds {stored} records now, not the {next} read to resume it: it was written meanwhile ({})",
                super::TAKEN_OVER
            )));
        }
        self.next.prime(run, stored, link);
        Ok(())
    }

    fn truncate(&self, run: &str, keep: u64) -> Result<(), JournalError> {
        self.ask(|r| Msg::Truncate(run.to_string(), keep, r))
            .map_err(|reason| JournalError::Write {
                path: self.label.clone(),
                reason,
            })?;
        self.next.forget(run);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::writer::version_ok;
    use super::*;

    #[test]
    fn names_and_subjects() {
        let c = ClusterConfig::new("nats://user:pw@10.0.0.5:4222,nats://10.0.0.6:4222");
        assert_eq!(c.monitor_url(), "http://10.0.0.5:8222");
        assert_eq!(c.stream(), "CONCLAVE_CONCLAVE_JOURNAL");
        assert_eq!(
            c.subject("run-17-ab-0"),
            "conclave.conclave.journal.run-17-ab-0"
        );
        assert_eq!(c.subject("a.b"), "conclave.conclave.journal.x612e62");
        assert_eq!(
            ClusterConfig::new("127.0.0.1:4222").monitor_url(),
            "http://127.0.0.1:8222"
        );
        assert!(check_name("team-a_1").is_ok());
        assert!(check_name("a.b").unwrap_err().contains("a.b"));
        assert!(version_ok("2.10.0") && version_ok("2.15.1") && version_ok("3.0.0"));
        assert!(!version_ok("2.9.10") && !version_ok("1.4.1") && !version_ok(""));
    }
}
