//! The embedded journal: one SQLite file, `journal.sqlite`, in the data
//! directory (WAL mode, full sync at each commit, so a commit survives
//! `kill -9` and power loss; several processes may write it at once).
//!
//! Records are stored in *chunks*: each transaction writes one row per run
//! holding that run's records of the transaction, consecutive, as a JSON
//! array. One row of a few dozen records costs the same SQLite work as one
//! row of one record did, which is most of what a record used to cost (see
//! BENCHMARKS.md, "The journal"). A view, `records`, shows one row per
//! record as format 1 stored them, for queries by hand.
//!
//! Schema (open it with `sqlite3` and query it):
//!
//! ```sql
//! CREATE TABLE chunks (
//!   run      TEXT NOT NULL,     -- run id
//!   first    INTEGER NOT NULL,  -- seq of its first record (0, 1, 2, ... per run, no gaps)
//!   count    INTEGER NOT NULL,  -- records in it
//!   version  INTEGER NOT NULL,  -- record format (journal::VERSION; 1: one format-1 record)
//!   at_ms    INTEGER NOT NULL,  -- Unix milliseconds when its first record was appended
//!   body     TEXT NOT NULL,     -- version 3: [[ms after at_ms, record, link], ...]; 2: [[ms, record], ...]; 1: the record
//!   checksum INTEGER NOT NULL,  -- first 8 bytes of SHA-256(body)
//!   PRIMARY KEY (run, first)) WITHOUT ROWID;
//! CREATE TABLE runs (
//!   run TEXT PRIMARY KEY, team TEXT, question TEXT, started_ms INTEGER,
//!   ended_ms INTEGER, stop TEXT, tokens INTEGER, cost REAL);
//! CREATE VIEW records (run, seq, at_ms, version, kind, body);
//!   -- one row per record; kind: job-submitted, event:model-call, job-ended, ...;
//!   -- body: the record (an `Entry`), JSON
//! ```
//!
//! For example, calls per node: `SELECT json_extract(body, '$.event.node'),
//! count(*) FROM records WHERE kind = 'event:model-call' GROUP BY 1;`
//!
//! A file written by format 1 (a `records` table, one row per record) is
//! converted when it is opened: each of its records becomes a chunk of one,
//! with its version (1), body and checksum as they were, and reads as
//! before.
//!
//! Each record of format 3 carries its link in the run's hash chain
//! ([`super::chain`]); `conclave verify RUN` checks them.
//!
//! Records are serialised by the thread that appends them; one writer
//! thread commits whatever is queued in one transaction (group commit) and
//! then answers every flush waiting on it. While flushes come in faster
//! than syncs (many runs or tasks deciding at once), a commit first waits
//! up to the last commit's time (`MAX_GATHER` at most) so that more of
//! them share its sync; a lone run's flush is never held back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use futures::future::BoxFuture;
use rusqlite::{params, Connection};
use sha2::Digest;

use super::chain::Verifier;
use super::{Entry, Journal, JournalError, Numbered, Numbering, Record, RunLog, RunRow, VERSION};
use crate::team::events::Event;

mod read;
mod schema;
use read::{decode, tail};
use schema::{connect, prepare_schema};

/// The file's name in the data directory.
pub const FILE: &str = "journal.sqlite";

/// Fault injection for crash tests: with this variable set to N, the
/// process aborts in the middle of the transaction that would write its
/// N-th record (that transaction is lost, as with `kill -9`).
pub const CRASH_ENV: &str = "CONCLAVE_JOURNAL_CRASH_AT";

/// The oldest record format this build reads (a chunk of one record).
const OLDEST: u32 = 1;

/// Longest a commit waits for more flushes to share its sync. It waits
/// only while several flushes are answered by each commit (concurrent
/// decisions), never for a lone run, and at most as long as the last
/// commit took.
const MAX_GATHER: std::time::Duration = std::time::Duration::from_millis(2);

enum Msg {
    Append(Box<Pending>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// A record on its way to the disk, already serialised.
struct Pending {
    run: Arc<str>,
    seq: u64,
    at_ms: u64,
    /// The entry's JSON (or why it could not be made).
    entry: Result<String, String>,
    /// Its link in the run's chain (none: the journal does not chain).
    link: Option<String>,
    /// What the record changes in the `runs` table.
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
        tokens: i64,
        cost: f64,
    },
}

/// A journal in one SQLite file.
pub struct SqliteJournal {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Numbers each run's records.
    next: Numbering,
    reader: Mutex<Connection>,
    /// Transactions committed (each one sync).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

/// The checksum of a chunk's (or a format-1 record's) body.
pub fn checksum(body: &str) -> i64 {
    let d = sha2::Sha256::digest(body.as_bytes());
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
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
            tokens: (result.tokens_in + result.tokens_out) as i64,
            cost: result.cost,
        }),
        Entry::Event { .. } => None,
    }
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        Self::open_with(dir, Numbering::default())
    }

    /// [`Self::open`], writing records without links (format 2) as builds
    /// before the chain did: the benchmark's baseline, never a product
    /// setting.
    #[doc(hidden)]
    pub fn open_unchained(dir: &Path) -> Result<Arc<Self>, JournalError> {
        Self::open_with(dir, Numbering::unchained())
    }

    fn open_with(dir: &Path, next: Numbering) -> Result<Arc<Self>, JournalError> {
        let path = dir.join(FILE);
        let open_err = |reason: String| JournalError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| JournalError::Open {
            path: dir.to_path_buf(),
            reason: format!("cannot create the data directory: {e}"),
        })?;
        let mut writer_conn = connect(&path).map_err(open_err)?;
        prepare_schema(&mut writer_conn).map_err(open_err)?;
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
            next,
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

    /// Queues a serialised record as the next of `run`.
    fn queue(&self, run: &str, entry: Result<String, String>, runs: Option<RunsUpdate>) -> u64 {
        let stored = || {
            let c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            tail(&c, run)
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
    // How long the last commit took, and whether several flushes waited on
    // it (runs deciding at once).
    let mut last_commit = std::time::Duration::ZERO;
    let mut concurrent = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        if concurrent {
            // Decisions are coming in faster than syncs: let the ones due
            // within one more commit's time share this sync (each sync
            // costs about as much CPU as a hundred records).
            std::thread::sleep(last_commit.min(MAX_GATHER));
        }
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        concurrent = batch.iter().filter(|m| matches!(m, Msg::Flush(_))).count() > 1;
        let t0 = std::time::Instant::now();
        let result = write_batch(&mut conn, &batch, &mut written, crash_at);
        last_commit = t0.elapsed();
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for m in batch {
            if let Msg::Flush(tx) = m {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// Consecutive records of one run, being built for one row.
struct Chunk {
    run: Arc<str>,
    first: u64,
    count: u64,
    at_ms: u64,
    /// 3 when its records carry links, else 2.
    version: u32,
    body: String,
}

impl Chunk {
    fn push(&mut self, p: &Pending, entry: &str) {
        use std::fmt::Write;
        self.body.push(if self.count == 0 { '[' } else { ',' });
        // Milliseconds after the chunk's first record (the clock may step
        // back: signed).
        let after = p.at_ms as i64 - self.at_ms as i64;
        let _ = match &p.link {
            Some(link) => write!(self.body, "[{after},{entry},\"{link}\"]"),
            None => write!(self.body, "[{after},{entry}]"),
        };
        self.count += 1;
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[Msg],
    written: &mut u64,
    crash_at: Option<u64>,
) -> Result<(), String> {
    let t = conn.transaction().map_err(|e| e.to_string())?;
    // The chunks of this transaction; a run's open one is the last of its.
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut open: HashMap<Arc<str>, usize> = HashMap::new();
    for m in batch {
        let Msg::Append(p) = m else { continue };
        *written += 1;
        if crash_at.is_some_and(|n| *written >= n) {
            // Fault injection: die mid-transaction.
            std::process::abort();
        }
        let entry = p
            .entry
            .as_deref()
            .map_err(|e| format!("record {} of {}: {e}", p.seq, p.run))?;
        let version = if p.link.is_some() {
            VERSION
        } else {
            super::UNCHAINED
        };
        let i = match open.get(&p.run) {
            Some(&i)
                if chunks[i].first + chunks[i].count == p.seq && chunks[i].version == version =>
            {
                i
            }
            _ => {
                chunks.push(Chunk {
                    run: p.run.clone(),
                    first: p.seq,
                    count: 0,
                    at_ms: p.at_ms,
                    version,
                    body: String::with_capacity(4096),
                });
                open.insert(p.run.clone(), chunks.len() - 1);
                chunks.len() - 1
            }
        };
        chunks[i].push(p, entry);
        match &p.runs {
            Some(RunsUpdate::Submitted { team, question }) => {
                t.execute(
                    "INSERT OR IGNORE INTO runs (run, team, question, started_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![&*p.run, team, question, p.at_ms as i64],
                )
                .map_err(|e| e.to_string())?;
            }
            Some(RunsUpdate::Resumed) => {
                t.execute(
                    "UPDATE runs SET ended_ms = NULL, stop = NULL WHERE run = ?1",
                    params![&*p.run],
                )
                .map_err(|e| e.to_string())?;
            }
            Some(RunsUpdate::Ended { stop, tokens, cost }) => {
                t.execute(
                    "UPDATE runs SET ended_ms = ?2, stop = ?3, tokens = ?4, cost = ?5 WHERE run = ?1",
                    params![&*p.run, p.at_ms as i64, stop, tokens, cost],
                )
                .map_err(|e| e.to_string())?;
            }
            None => {}
        }
    }
    {
        let mut insert = t
            .prepare_cached(
                "INSERT INTO chunks (run, first, count, version, at_ms, body, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(|e| e.to_string())?;
        for mut c in chunks {
            c.body.push(']');
            insert
                .execute(params![
                    &*c.run,
                    c.first as i64,
                    c.count as i64,
                    c.version,
                    c.at_ms as i64,
                    c.body,
                    checksum(&c.body)
                ])
                .map_err(|e| {
                    format!(
                        "records {} to {} of {}: {e}",
                        c.first,
                        c.first + c.count - 1,
                        c.run
                    )
                })?;
        }
    }
    t.commit().map_err(|e| e.to_string())
}

impl Journal for SqliteJournal {
    fn append(&self, run: &str, entry: Entry) -> u64 {
        let json = serde_json::to_string(&entry).map_err(|e| e.to_string());
        self.queue(run, json, runs_update(&entry))
    }

    fn append_event(&self, run: &str, event: &Event) -> u64 {
        let json = super::encode_event(event).map_err(|e| e.to_string());
        self.queue(run, json, None)
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), JournalError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.send(Msg::Flush(tx));
        super::flush_answer(sent, rx, self.path.clone())
    }

    fn digest(&self, run: &str) -> Option<String> {
        self.next.digest(run)
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
            .prepare_cached(
                "SELECT first, count, at_ms, version, body, checksum FROM chunks WHERE run = ?1 ORDER BY first",
            )
            .map_err(|e| self.read_err(e))?;
        type Row = (i64, i64, i64, i64, String, i64);
        let rows: Vec<Row> = q
            .query_map(params![run], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
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
        let mut chain = Verifier::new(run);
        for (first, count, at, version, body, sum) in rows {
            let next = records.len() as i64;
            let why = if first != next {
                Err(format!("record {next} is missing (the next is {first})"))
            } else if count < 1 {
                Err(format!(
                    "record {first} is stored as a chunk of {count} records"
                ))
            } else if !(i64::from(OLDEST)..=i64::from(VERSION)).contains(&version) {
                Err(format!(
                    "record {first} has format version {version}; this build reads versions {OLDEST} to {VERSION}"
                ))
            } else if checksum(&body) != sum {
                Err(if count == 1 {
                    format!("record {first} fails its checksum")
                } else {
                    format!(
                        "records {first} to {} fail their checksum (one chunk)",
                        first + count - 1
                    )
                })
            } else {
                decode(
                    version as u32,
                    first as u64,
                    count as u64,
                    at as u64,
                    &body,
                    &mut chain,
                )
            };
            match why {
                Ok(entries) => {
                    for (i, (at_ms, entry)) in entries.into_iter().enumerate() {
                        records.push(Record {
                            run: run.to_string(),
                            seq: first as u64 + i as u64,
                            at_ms,
                            entry,
                        });
                    }
                }
                Err(why) => {
                    damaged = Some(format!(
                        "{}: run {run}: {why}; kept the {} records before it",
                        self.path.display(),
                        records.len()
                    ));
                    break;
                }
            }
        }
        Ok(RunLog {
            records,
            chain: chain.finish(),
            damaged,
        })
    }

    fn truncate(&self, run: &str, keep: u64) -> Result<(), JournalError> {
        let mut c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let write_err = |e: String| JournalError::Write {
            path: self.path.clone(),
            reason: e,
        };
        let t = c.transaction().map_err(|e| write_err(e.to_string()))?;
        t.execute(
            "DELETE FROM chunks WHERE run = ?1 AND first >= ?2",
            params![run, keep as i64],
        )
        .map_err(|e| write_err(e.to_string()))?;
        // A chunk across the cut keeps its records before it.
        let across: Option<(i64, i64, String, i64)> = t
            .query_row(
                "SELECT first, version, body, checksum FROM chunks WHERE run = ?1 AND first < ?2 AND first + count > ?2",
                params![run, keep as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .ok();
        if let Some((first, version, body, sum)) = across {
            let kept = keep as i64 - first;
            let cut = match version {
                // Each record as stored, its link with it: the kept ones
                // verify as before.
                3.. if checksum(&body) == sum => serde_json::from_str::<
                    Vec<&serde_json::value::RawValue>,
                >(&body)
                .ok()
                .map(|v| {
                    let kept: Vec<&str> = v.iter().take(kept as usize).map(|r| r.get()).collect();
                    format!("[{}]", kept.join(","))
                }),
                2 if checksum(&body) == sum => {
                    serde_json::from_str::<Vec<serde_json::Value>>(&body)
                        .ok()
                        .and_then(|mut v| {
                            v.truncate(kept as usize);
                            serde_json::to_string(&v).ok()
                        })
                }
                _ => None,
            };
            match cut {
                Some(body) => t.execute(
                    "UPDATE chunks SET count = ?3, body = ?4, checksum = ?5 WHERE run = ?1 AND first = ?2",
                    params![run, first, kept, body, checksum(&body)],
                ),
                // Damaged or unreadable: reading stops before it anyway.
                None => t.execute(
                    "DELETE FROM chunks WHERE run = ?1 AND first = ?2",
                    params![run, first],
                ),
            }
            .map_err(|e| write_err(e.to_string()))?;
        }
        t.commit().map_err(|e| write_err(e.to_string()))?;
        // The reader's lock goes first: `queue` takes `next`, then `reader`.
        drop(c);
        // Its next record goes on after what is left, chained to it.
        self.next.forget(run);
        Ok(())
    }
}

/// The default data directory: `conclave` under the user's data directory.
pub fn default_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("conclave")
}

#[cfg(test)]
mod tests;
