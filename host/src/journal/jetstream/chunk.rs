//! A chunk: consecutive records of one run in one message, as written and
//! as read back.

use async_nats::jetstream;
use std::sync::Arc;

use super::Pending;
use crate::journal::{Entry, VERSION};

/// Headers of a chunk: its first record's seq, its records, the format.
pub(super) const SEQ: &str = "Conclave-Seq";
pub(super) const COUNT: &str = "Conclave-Count";
pub(super) const FORMAT: &str = "Conclave-Version";

/// The largest chunk body: well under nats-server's default 1 MB payload.
pub(super) const MAX_CHUNK: usize = 512 * 1024;

/// Why a chunk was not stored.
#[derive(Debug)]
pub(super) enum Failed {
    /// Another writer appended to the run since this one last did.
    Fenced,
    Other(String),
}

/// Consecutive records of one run, being built for one message: its body
/// is `[[at_ms, record], ...]`.
pub(super) struct Chunk {
    pub(super) run: Arc<str>,
    /// The stream sequence of the run's last message when it is published
    /// (none: a truncation's rewrite, which expects nothing).
    pub(super) expected: Option<u64>,
    pub(super) first: u64,
    pub(super) records: Vec<Pending>,
    pub(super) body: String,
}

impl Chunk {
    pub(super) fn push(&mut self, p: Pending) {
        use std::fmt::Write;
        self.body
            .push(if self.records.is_empty() { '[' } else { ',' });
        if let Ok(entry) = &p.entry {
            let _ = write!(self.body, "[{},{entry}]", p.at_ms);
        }
        self.records.push(p);
    }

    pub(super) fn describe(&self) -> String {
        match self.records.len() {
            1 => format!("record {} of {}", self.first, self.run),
            n => format!(
                "records {} to {} of {}",
                self.first,
                self.first + n as u64 - 1,
                self.run
            ),
        }
    }
}

/// A chunk as read back.
pub(super) struct Stored {
    /// Its message's sequence in the stream.
    pub(super) sequence: u64,
    pub(super) first: u64,
    pub(super) records: Vec<(u64, Entry)>,
}

impl Stored {
    pub(super) fn decode(m: &jetstream::message::StreamMessage) -> Result<Stored, String> {
        let first = header_u64(m, SEQ)
            .ok_or_else(|| format!("message {} has no {SEQ} header", m.sequence))?;
        let count = header_u64(m, COUNT).unwrap_or(1);
        let version = header_u64(m, FORMAT).unwrap_or(0);
        let what = if count == 1 {
            format!("record {first}")
        } else {
            format!("records {first} to {}", first + count - 1)
        };
        if !(2..=u64::from(VERSION)).contains(&version) {
            return Err(format!(
                "{what} have format version {version}; this build reads version {VERSION} on a stream"
            ));
        }
        let records: Vec<(u64, Entry)> = serde_json::from_slice(&m.payload)
            .map_err(|e| format!("{what} cannot be read: {e}"))?;
        if records.len() as u64 != count {
            return Err(format!(
                "{what}: the message holds {} records, not {count}",
                records.len()
            ));
        }
        Ok(Stored {
            sequence: m.sequence,
            first,
            records,
        })
    }
}

pub(super) fn header_u64(m: &jetstream::message::StreamMessage, name: &str) -> Option<u64> {
    m.headers.get(name).and_then(|v| v.as_str().parse().ok())
}
