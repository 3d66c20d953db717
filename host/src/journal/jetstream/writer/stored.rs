//! What the writer reads of the stream: a run's messages and records, a
//! run as the journal's readers see it, truncation after damage, and the
//! runs' rows.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;

use super::super::chunk::{header_u64, Chunk, Stored, COUNT, SEQ};
use super::super::Pending;
use super::Writer;
use crate::journal::chain::Verifier;
use crate::journal::{Record, RunLog, RunRow};

impl Writer {
    /// Every message of a run, in stream order.
    pub(super) async fn messages(
        &self,
        run: &str,
    ) -> Result<Vec<jetstream::message::StreamMessage>, String> {
        use jetstream::stream::RawMessageErrorKind;
        let subject = self.config.subject(run);
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let got = self
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match got {
                Ok(m) => {
                    from = m.sequence + 1;
                    out.push(m);
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(out),
                Err(e) => return Err(format!("reading run {run}: {e}")),
            }
        }
    }

    /// A run's chunks as stored, decoded, ordered by their first record;
    /// of two with the same first record (one published again, or cut by
    /// a truncation) the later one. A message that cannot be decoded ends
    /// the list there, with why.
    pub(super) async fn chunks(&self, run: &str) -> Result<Vec<Stored>, String> {
        Ok(self.decoded(run).await?.0)
    }

    async fn decoded(&self, run: &str) -> Result<(Vec<Stored>, Option<String>), String> {
        let mut stored = Vec::new();
        let mut bad: Option<(u64, String)> = None;
        for m in self.messages(run).await? {
            match Stored::decode(&m) {
                Ok(c) => stored.push(c),
                Err(why) => {
                    let first = header_u64(&m, SEQ).unwrap_or(0);
                    if bad.as_ref().is_none_or(|(f, _)| first < *f) {
                        bad = Some((first, why));
                    }
                }
            }
        }
        stored.sort_by_key(|c| (c.first, std::cmp::Reverse(c.sequence)));
        stored.dedup_by_key(|c| c.first);
        // A damaged message: what comes from it on is not read.
        if let Some((first, _)) = &bad {
            stored.retain(|c| c.first < *first);
        }
        Ok((stored, bad.map(|(_, why)| why)))
    }

    pub(super) async fn read(&self, run: &str) -> Result<Option<RunLog>, String> {
        let (stored, bad) = self.decoded(run).await?;
        if stored.is_empty() && bad.is_none() {
            return Ok(None);
        }
        let mut records = Vec::new();
        let mut damaged = None;
        let mut chain = Verifier::new(run);
        for c in stored {
            let next = records.len() as u64;
            if c.first > next {
                damaged = Some(format!(
                    "record {next} is missing (the next is {})",
                    c.first
                ));
                break;
            }
            // A chunk starting before `next` overlaps a longer one kept:
            // take its records from `next` on.
            for (i, r) in c.records.into_iter().enumerate() {
                let seq = c.first + i as u64;
                if seq >= next {
                    match &r.linked {
                        Some((raw, link)) => chain.next(seq, r.at_ms, raw, Some(link)),
                        None => chain.next(seq, r.at_ms, "", None),
                    };
                    records.push(Record {
                        run: run.to_string(),
                        seq,
                        at_ms: r.at_ms,
                        entry: r.entry,
                    });
                }
            }
        }
        let damaged = damaged.or(bad).map(|why| {
            format!(
                "{} (stream {}): run {run}: {why}; kept the {} records before it",
                self.config.url,
                self.config.stream(),
                records.len()
            )
        });
        Ok(Some(RunLog {
            records,
            chain: chain.finish(),
            damaged,
        }))
    }

    /// Deletes a run's records from `keep` on: the chunks after the cut,
    /// and a chunk across it is published again with its records before
    /// the cut (then the old one is deleted).
    pub(super) async fn truncate(&mut self, run: &str, keep: u64) -> Result<(), String> {
        // The run's last message changes: the next chunk looks it up.
        self.last.remove(run);
        for m in self.messages(run).await? {
            let first = header_u64(&m, SEQ);
            let count = header_u64(&m, COUNT).unwrap_or(1);
            match first {
                Some(f) if f + count <= keep => continue,
                Some(f) if f < keep => {
                    let c = Stored::decode(&m)?;
                    let mut cut = Chunk {
                        run: Arc::from(run),
                        expected: None,
                        first: f,
                        records: Vec::new(),
                        body: String::new(),
                    };
                    for r in c.records.into_iter().take((keep - f) as usize) {
                        // A chained record keeps its JSON and link as they
                        // were, so that it verifies as before.
                        let (entry, link) = match r.linked {
                            Some((raw, link)) => (raw, Some(link)),
                            None => (
                                serde_json::to_string(&r.entry).map_err(|e| e.to_string())?,
                                None,
                            ),
                        };
                        cut.push(Pending {
                            run: Arc::from(run),
                            seq: f + cut.records.len() as u64,
                            at_ms: r.at_ms,
                            entry: Ok(entry),
                            link,
                            runs: None,
                        });
                    }
                    cut.body.push(']');
                    self.store_again(&cut)
                        .await
                        .map_err(|e| format!("{}: {e:?}", cut.describe()))?;
                }
                _ => {}
            }
            self.stream
                .delete_message(m.sequence)
                .await
                .map_err(|e| format!("deleting message {}: {e}", m.sequence))?;
        }
        Ok(())
    }

    pub(super) async fn list_runs(&self) -> Result<Vec<RunRow>, String> {
        let mut keys = self
            .runs
            .keys()
            .await
            .map_err(|e| format!("listing {}: {e}", self.config.bucket()))?;
        let mut rows = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(b) = self
                .runs
                .get(key.clone())
                .await
                .map_err(|e| e.to_string())?
            {
                let row: RunRow = serde_json::from_slice(&b)
                    .map_err(|e| format!("{}: key {key}: {e}", self.config.bucket()))?;
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| {
            b.started_ms
                .cmp(&a.started_ms)
                .then_with(|| b.run.cmp(&a.run))
        });
        Ok(rows)
    }
}
