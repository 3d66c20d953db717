//! A chunk: consecutive records of one run in one message, as written and
//! as read back.

use async_nats::jetstream;
use std::sync::Arc;

use super::Pending;
use crate::journal::{Entry, UNCHAINED, VERSION};

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
/// is `[[at_ms, record, link], ...]` (format 3) or `[[at_ms, record], ...]`
/// (2, unchained).
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
            let _ = match &p.link {
                Some(link) => write!(self.body, "[{},{entry},\"{link}\"]", p.at_ms),
                None => write!(self.body, "[{},{entry}]", p.at_ms),
            };
        }
        self.records.push(p);
    }

    /// Its format: 3 when its records carry links.
    pub(super) fn version(&self) -> u32 {
        if self.records.first().is_some_and(|p| p.link.is_some()) {
            VERSION
        } else {
            UNCHAINED
        }
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

/// A record as read back: its time, entry, and (format 3) its JSON as
/// stored with its link, for the chain's check.
pub(super) struct StoredRecord {
    pub(super) at_ms: u64,
    pub(super) entry: Entry,
    pub(super) linked: Option<(String, String)>,
}

/// A chunk as read back.
pub(super) struct Stored {
    /// Its message's sequence in the stream.
    pub(super) sequence: u64,
    pub(super) first: u64,
    pub(super) records: Vec<StoredRecord>,
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
        let unreadable = |e: String| format!("{what} cannot be read: {e}");
        let records: Vec<StoredRecord> = if version >= 3 {
            let text = std::str::from_utf8(&m.payload).map_err(|e| unreadable(e.to_string()))?;
            type Linked<'a> = (u64, &'a serde_json::value::RawValue, &'a str);
            let linked: Vec<Linked> =
                serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
            linked
                .into_iter()
                .map(|(at_ms, raw, link)| {
                    Ok(StoredRecord {
                        at_ms,
                        entry: serde_json::from_str(raw.get())
                            .map_err(|e: serde_json::Error| unreadable(e.to_string()))?,
                        linked: Some((raw.get().to_string(), link.to_string())),
                    })
                })
                .collect::<Result<_, String>>()?
        } else {
            let plain: Vec<(u64, Entry)> =
                serde_json::from_slice(&m.payload).map_err(|e| unreadable(e.to_string()))?;
            plain
                .into_iter()
                .map(|(at_ms, entry)| StoredRecord {
                    at_ms,
                    entry,
                    linked: None,
                })
                .collect()
        };
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
