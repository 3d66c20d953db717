//! The embedded journal: one SQLite file, `journal.sqlite`, in the data
//! directory (WAL mode, full sync at each commit, so a commit survives
//! `kill -9` and power loss; several processes may write it at once).
//!
//! Schema (open it with `sqlite3` and query it):
//!
//! ```sql
//! CREATE TABLE records (
//!   run      TEXT NOT NULL,     -- run id
//!   seq      INTEGER NOT NULL,  -- 0, 1, 2, ... per run, no gaps
//!   at_ms    INTEGER NOT NULL,  -- Unix milliseconds when appended
//!   version  INTEGER NOT NULL,  -- record format (journal::VERSION)
//!   kind     TEXT NOT NULL,     -- job-submitted, event:model-call, job-ended, ...
//!   body     TEXT NOT NULL,     -- the record, JSON
//!   checksum INTEGER NOT NULL,  -- first 8 bytes of SHA-256(body)
//!   PRIMARY KEY (run, seq)) WITHOUT ROWID;
//! CREATE TABLE runs (
//!   run TEXT PRIMARY KEY, team TEXT, question TEXT, started_ms INTEGER,
//!   ended_ms INTEGER, stop TEXT, tokens INTEGER, cost REAL);
//! ```
//!
//! For example, calls per node: `SELECT json_extract(body, '$.event.node'),
//! count(*) FROM records WHERE kind = 'event:model-call' GROUP BY 1;`
//!
//! Writes go through one writer thread that commits whatever is queued in
//! one transaction (group commit) and then answers every flush waiting on
//! it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use futures::future::BoxFuture;
use rusqlite::{params, Connection};
use sha2::Digest;

use super::{now_ms, Entry, Journal, JournalError, Record, RunLog, RunRow, VERSION};

/// The file's name in the data directory.
pub const FILE: &str = "journal.sqlite";

/// Fault injection for crash tests: with this variable set to N, the
/// process aborts in the middle of the transaction that would write its
/// N-th record (that transaction is lost, as with `kill -9`).
pub const CRASH_ENV: &str = "CONCLAVE_JOURNAL_CRASH_AT";

enum Msg {
    Append(Box<Record>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// A journal in one SQLite file.
pub struct SqliteJournal {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    next: Mutex<HashMap<String, u64>>,
    reader: Mutex<Connection>,
    /// Transactions committed (each one sync).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

fn connect(path: &Path) -> Result<Connection, String> {
    let c = Connection::open(path).map_err(|e| e.to_string())?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| e.to_string())?;
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    Ok(c)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
  run TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
  version INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
  checksum INTEGER NOT NULL, PRIMARY KEY (run, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
  run TEXT PRIMARY KEY, team TEXT NOT NULL, question TEXT NOT NULL,
  started_ms INTEGER NOT NULL, ended_ms INTEGER, stop TEXT,
  tokens INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0);
";

/// The checksum of a record's body.
pub fn checksum(body: &str) -> i64 {
    let d = sha2::Sha256::digest(body.as_bytes());
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn kind(entry: &Entry) -> String {
    match entry {
        Entry::JobSubmitted { .. } => "job-submitted".into(),
        Entry::Resumed { .. } => "resumed".into(),
        Entry::JobEnded { .. } => "job-ended".into(),
        Entry::Event { event } => format!("event:{}", event.name()),
    }
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        let path = dir.join(FILE);
        let open_err = |reason: String| JournalError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| JournalError::Open {
            path: dir.to_path_buf(),
            reason: format!("cannot create the data directory: {e}"),
        })?;
        let writer_conn = connect(&path).map_err(open_err)?;
        writer_conn
            .execute_batch(SCHEMA)
            .map_err(|e| open_err(e.to_string()))?;
        let reader = connect(&path).map_err(open_err)?;
        let (tx, rx) = mpsc::channel();
        let crash_at: Option<u64> = std::env::var(CRASH_ENV).ok().and_then(|v| v.parse().ok());
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        let writer = std::thread::Builder::new()
            .name("conclave-journal".into())
            .spawn(move || write_loop(writer_conn, rx, crash_at, &counter))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Arc::new(SqliteJournal {
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            next: Mutex::default(),
            reader: Mutex::new(reader),
            commits,
        }))
    }

    fn send(&self, m: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(m).is_ok())
    }

    fn read_err(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Read {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Transactions committed so far by this process (each is one sync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with a connection of its own (for tests and tools that
    /// inspect or damage the file on purpose).
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.reader.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for SqliteJournal {
    fn drop(&mut self) {
        // Close the queue, then let the writer finish what it holds.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

fn write_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Msg>,
    crash_at: Option<u64>,
    commits: &std::sync::atomic::AtomicU64,
) {
    let mut written = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let result = write_batch(&mut conn, &batch, &mut written, crash_at);
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for m in batch {
            if let Msg::Flush(tx) = m {
                let _ = tx.send(result.clone());
            }
        }
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[Msg],
    written: &mut u64,
    crash_at: Option<u64>,
) -> Result<(), String> {
    let t = conn.transaction().map_err(|e| e.to_string())?;
    for m in batch {
        let Msg::Append(r) = m else { continue };
        *written += 1;
        if crash_at.is_some_and(|n| *written >= n) {
            // Fault injection: die mid-transaction.
            std::process::abort();
        }
        let body = serde_json::to_string(&r.entry).map_err(|e| e.to_string())?;
        t.prepare_cached(
            "INSERT INTO records (run, seq, at_ms, version, kind, body, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut q| {
            q.execute(params![r.run, r.seq as i64, r.at_ms as i64, VERSION, kind(&r.entry), body, checksum(&body)])
        })
        .map_err(|e| format!("record {} of {}: {e}", r.seq, r.run))?;
        match &r.entry {
            Entry::JobSubmitted { team, question, .. } => {
                t.execute(
                    "INSERT OR IGNORE INTO runs (run, team, question, started_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![r.run, team, question, r.at_ms as i64],
                )
                .map_err(|e| e.to_string())?;
            }
            Entry::Resumed { .. } => {
                t.execute(
                    "UPDATE runs SET ended_ms = NULL, stop = NULL WHERE run = ?1",
                    params![r.run],
                )
                .map_err(|e| e.to_string())?;
            }
            Entry::JobEnded { result } => {
                t.execute(
                    "UPDATE runs SET ended_ms = ?2, stop = ?3, tokens = ?4, cost = ?5 WHERE run = ?1",
                    params![
                        r.run,
                        r.at_ms as i64,
                        result.stop.to_string(),
                        (result.tokens_in + result.tokens_out) as i64,
                        result.cost
                    ],
                )
                .map_err(|e| e.to_string())?;
            }
            Entry::Event { .. } => {}
        }
    }
    t.commit().map_err(|e| e.to_string())
}

impl Journal for SqliteJournal {
    fn append(&self, run: &str, entry: Entry) -> u64 {
        let seq = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let n = match next.get(run) {
                Some(n) => *n,
                None => self
                    .reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .query_row(
                        "SELECT max(seq) FROM records WHERE run = ?1",
                        params![run],
                        |row| row.get::<_, Option<i64>>(0),
                    )
                    .ok()
                    .flatten()
                    .map_or(0, |m| m as u64 + 1),
            };
            next.insert(run.to_string(), n + 1);
            n
        };
        self.send(Msg::Append(Box::new(Record {
            run: run.to_string(),
            seq,
            at_ms: now_ms(),
            entry,
        })));
        seq
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), JournalError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.send(Msg::Flush(tx));
        let path = self.path.clone();
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

    fn runs(&self) -> Result<Vec<RunRow>, JournalError> {
        let c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut q = c
            .prepare(
                "SELECT run, team, question, started_ms, ended_ms, stop, tokens, cost FROM runs ORDER BY started_ms DESC, run DESC",
            )
            .map_err(|e| self.read_err(e))?;
        let rows = q
            .query_map([], |r| {
                Ok(RunRow {
                    run: r.get(0)?,
                    team: r.get(1)?,
                    question: r.get(2)?,
                    started_ms: r.get::<_, i64>(3)? as u64,
                    ended_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    stop: r.get(5)?,
                    tokens: r.get::<_, i64>(6)? as u64,
                    cost: r.get(7)?,
                })
            })
            .map_err(|e| self.read_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.read_err(e))
    }

    fn read(&self, run: &str) -> Result<RunLog, JournalError> {
        let c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut q = c
            .prepare("SELECT seq, at_ms, version, body, checksum FROM records WHERE run = ?1 ORDER BY seq")
            .map_err(|e| self.read_err(e))?;
        let rows: Vec<(i64, i64, i64, String, i64)> = q
            .query_map(params![run], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(|e| self.read_err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.read_err(e))?;
        if rows.is_empty() {
            return Err(JournalError::NoRun {
                path: self.path.clone(),
                run: run.to_string(),
            });
        }
        let mut records = Vec::new();
        let mut damaged = None;
        for (i, (seq, at, version, body, sum)) in rows.into_iter().enumerate() {
            let why = if seq != i as i64 {
                Some(format!("record {i} is missing (the next is {seq})"))
            } else if version != i64::from(VERSION) {
                Some(format!(
                    "record {seq} has format version {version}; this build reads version {VERSION}"
                ))
            } else if checksum(&body) != sum {
                Some(format!("record {seq} fails its checksum"))
            } else {
                match serde_json::from_str::<Entry>(&body) {
                    Ok(entry) => {
                        records.push(Record {
                            run: run.to_string(),
                            seq: seq as u64,
                            at_ms: at as u64,
                            entry,
                        });
                        None
                    }
                    Err(e) => Some(format!("record {seq} cannot be read: {e}")),
                }
            };
            if let Some(why) = why {
                damaged = Some(format!(
                    "{}: run {run}: {why}; kept the {} records before it",
                    self.path.display(),
                    records.len()
                ));
                break;
            }
        }
        Ok(RunLog { records, damaged })
    }

    fn truncate(&self, run: &str, keep: u64) -> Result<(), JournalError> {
        let c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        c.execute(
            "DELETE FROM records WHERE run = ?1 AND seq >= ?2",
            params![run, keep as i64],
        )
        .map_err(|e| JournalError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.to_string(), keep);
        Ok(())
    }
}

/// The default data directory: `conclave` under the user's data directory.
pub fn default_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("conclave")
}
