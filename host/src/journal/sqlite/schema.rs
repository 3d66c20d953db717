//! The journal file's schema: the connection settings (WAL, full sync), the
//! tables (`chunks`, `runs`), the `records` view for queries by hand, and
//! the conversion of a format-1 file.

use std::path::Path;

use backon::BlockingRetryable;
use rusqlite::{Connection, TransactionBehavior};

pub(super) fn connect(path: &Path) -> Result<Connection, String> {
    let c = Connection::open(path).map_err(|e| e.to_string())?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    // Switching a new file to WAL can answer "database is locked" at once,
    // without the busy handler, while another process does the same: try
    // again, briefly, for as long as the busy timeout.
    let wal = || c.pragma_update(None, "journal_mode", "WAL");
    wal.retry(
        backon::ConstantBuilder::default()
            .with_delay(std::time::Duration::from_millis(20))
            .with_max_times(1500),
    )
    .sleep(std::thread::sleep)
    .when(|e| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    .call()
    .map_err(|e| e.to_string())?;
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    Ok(c)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
  run TEXT NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
  version INTEGER NOT NULL, at_ms INTEGER NOT NULL, body TEXT NOT NULL,
  checksum INTEGER NOT NULL, PRIMARY KEY (run, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
  run TEXT PRIMARY KEY, team TEXT NOT NULL, question TEXT NOT NULL,
  started_ms INTEGER NOT NULL, ended_ms INTEGER, stop TEXT,
  tokens INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0);
";

/// Format 1's table, converted to chunks of one record.
const FROM_VERSION_1: &str = "
INSERT INTO chunks (run, first, count, version, at_ms, body, checksum)
  SELECT run, seq, 1, version, at_ms, body, checksum FROM records;
DROP TABLE records;
";

/// One row per record, for queries by hand (nothing in Conclave reads it).
const VIEW: &str = "
CREATE VIEW IF NOT EXISTS records (run, seq, at_ms, version, kind, body) AS
  SELECT c.run, c.first + e.key, c.at_ms + json_extract(e.value, '$[0]'), c.version,
         CASE json_extract(e.value, '$[1].entry')
           WHEN 'event' THEN 'event:' || json_extract(e.value, '$[1].event.event')
           ELSE json_extract(e.value, '$[1].entry') END,
         json_extract(e.value, '$[1]')
    FROM chunks AS c, json_each(c.body) AS e
   WHERE c.version >= 2 AND json_valid(c.body)
  UNION ALL
  SELECT run, first, at_ms, version,
         CASE json_extract(body, '$.entry')
           WHEN 'event' THEN 'event:' || json_extract(body, '$.event.event')
           ELSE json_extract(body, '$.entry') END,
         body
    FROM chunks WHERE version < 2;
";

/// Creates the tables and the view, converting a format-1 file first.
pub(super) fn prepare_schema(conn: &mut Connection) -> Result<(), String> {
    let t = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    t.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    let old: Option<String> = t
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = 'records'",
            [],
            |r| r.get(0),
        )
        .ok();
    if old.as_deref() == Some("table") {
        t.execute_batch(FROM_VERSION_1)
            .map_err(|e| format!("converting a format-1 journal: {e}"))?;
    }
    t.execute_batch(VIEW).map_err(|e| e.to_string())?;
    t.commit().map_err(|e| e.to_string())
}
