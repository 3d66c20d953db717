//! Reading chunks back: a chunk's records (their links checked on the
//! way), and where a run goes on (its next seq and last link).

use rusqlite::{params, Connection};

use super::super::chain::{self, Verifier};
use super::super::Entry;

/// Where a run goes on in the file: its next seq, and the link of its last
/// record (the genesis when it has none, or its last chunk is unchained or
/// cannot be read: a verify names that).
pub(super) fn tail(c: &Connection, run: &str) -> (u64, chain::Link) {
    let last: Option<(i64, i64, i64, String)> = c
        .query_row(
            "SELECT first, count, version, body FROM chunks WHERE run = ?1 ORDER BY first DESC LIMIT 1",
            params![run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .ok();
    let Some((first, count, version, body)) = last else {
        return (0, chain::genesis(run));
    };
    let next = (first + count) as u64;
    let link = (version >= 3)
        .then(|| serde_json::from_str::<Vec<(i64, &serde_json::value::RawValue, &str)>>(&body).ok())
        .flatten()
        .and_then(|records| records.last().and_then(|(_, _, l)| chain::parse(l)));
    (next, link.unwrap_or_else(|| chain::genesis(run)))
}

/// The records of one chunk, or why they cannot be read; each record's
/// link is checked by `chain` as it is read.
pub(super) fn decode(
    version: u32,
    first: u64,
    count: u64,
    at_ms: u64,
    body: &str,
    chain: &mut Verifier,
) -> Result<Vec<(u64, Entry)>, String> {
    let unreadable = |e: String| {
        if count == 1 {
            format!("record {first} cannot be read: {e}")
        } else {
            format!(
                "records {first} to {} cannot be read: {e}",
                first + count - 1
            )
        }
    };
    match version {
        1 => {
            if count != 1 {
                return Err(unreadable(format!(
                    "a format-1 row holds one record, not {count}"
                )));
            }
            let entry =
                serde_json::from_str::<Entry>(body).map_err(|e| unreadable(e.to_string()))?;
            chain.next(first, at_ms, body, None);
            Ok(vec![(at_ms, entry)])
        }
        3.. => {
            // [[ms after the chunk's at_ms, entry, link], ...]
            type Linked<'a> = (i64, &'a serde_json::value::RawValue, &'a str);
            let stored: Vec<Linked> =
                serde_json::from_str(body).map_err(|e| unreadable(e.to_string()))?;
            if stored.len() as u64 != count {
                return Err(unreadable(format!(
                    "it holds {} records, not {count}",
                    stored.len()
                )));
            }
            let mut out = Vec::with_capacity(stored.len());
            for (i, (after, raw, link)) in stored.into_iter().enumerate() {
                let at = at_ms.saturating_add_signed(after);
                chain.next(first + i as u64, at, raw.get(), Some(link));
                let entry = serde_json::from_str::<Entry>(raw.get())
                    .map_err(|e| unreadable(e.to_string()))?;
                out.push((at, entry));
            }
            Ok(out)
        }
        _ => {
            // [[ms after the chunk's at_ms, entry], ...]
            let stored: Vec<(i64, Entry)> =
                serde_json::from_str(body).map_err(|e| unreadable(e.to_string()))?;
            if stored.len() as u64 != count {
                return Err(unreadable(format!(
                    "it holds {} records, not {count}",
                    stored.len()
                )));
            }
            for (i, _) in stored.iter().enumerate() {
                chain.next(first + i as u64, 0, "", None);
            }
            Ok(stored
                .into_iter()
                .map(|(after, entry)| (at_ms.saturating_add_signed(after), entry))
                .collect())
        }
    }
}
