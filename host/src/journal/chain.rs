//! The hash chain that makes a run's records tamper-evident.
//!
//! Each record written in format 3 carries a link: SHA-256 of the run's
//! previous link, the record's sequence number, its time and its JSON,
//! exactly as stored. The chain of a run starts from a hash of the run id;
//! its first record, the submission, holds the team spec as it was run and
//! the SHA-256 of every plugin the team loaded, so the start of the chain
//! binds the run id, the spec and the plugins. The last link is the run's
//! *digest*: the API reply and `conclave trace` show it.
//!
//! What it proves: a record edited, dropped, inserted or moved without
//! every later link being computed again is named by `conclave verify`
//! (the first record whose link does not match). What it does not prove:
//! whoever can write the database can compute a whole new chain; only a
//! digest kept elsewhere (by the client that got the reply) shows that.
//! Records written before format 3 carry no link: they are read as
//! *unchained*, and a run of them verifies as such, never as intact.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One link of a chain.
pub type Link = [u8; 32];

/// The link a run's chain starts from.
pub fn genesis(run: &str) -> Link {
    let mut h = Sha256::new();
    h.update(b"conclave journal chain 1\0");
    h.update(run.as_bytes());
    h.finalize().into()
}

/// The link of record `seq` of a run, appended at `at_ms`, whose JSON is
/// `entry`, after the link `prev`.
pub fn link(prev: &Link, seq: u64, at_ms: u64, entry: &str) -> Link {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    h.update(entry.as_bytes());
    h.finalize().into()
}

/// A link as stored and shown: 64 lowercase hex digits.
pub fn hex(l: &Link) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    for b in l {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What the chain of a run's records says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChainReport {
    /// Records checked against their links, up to the first that broke.
    pub verified: u64,
    /// Records written before the journal was chained (formats 1 and 2):
    /// read, not verifiable.
    pub unchained: u64,
    /// The first record whose link does not match, and how.
    pub broken: Option<String>,
    /// The link of the last record verified: the run's digest (none when
    /// no record is chained).
    pub digest: Option<String>,
    /// Every verified record's link, by sequence number, so that a digest
    /// a client kept can be found (`conclave verify --digest`).
    #[serde(skip)]
    pub links: Vec<(u64, Link)>,
}

impl ChainReport {
    /// Whether every record is chained and every link matched.
    pub fn intact(&self) -> bool {
        self.broken.is_none() && self.unchained == 0 && self.verified > 0
    }

    /// The record whose link is `digest`, if any.
    pub fn record_of(&self, digest: &str) -> Option<u64> {
        let d = parse(&digest.trim().to_ascii_lowercase())?;
        self.links.iter().find(|(_, l)| *l == d).map(|(s, _)| *s)
    }

    /// One line: intact, unchained or broken, and the digest.
    pub fn summary(&self) -> String {
        match (&self.broken, &self.digest) {
            (Some(why), _) => format!("BROKEN: {why}"),
            (None, _) if self.verified == 0 => format!(
                "not chained: its {} records were written before the journal was chained (format 1 or 2), so they cannot be verified",
                self.unchained
            ),
            (None, Some(d)) if self.unchained > 0 => format!(
                "{} records verified after {} unchained ones; digest {d}",
                self.verified, self.unchained
            ),
            (None, Some(d)) => format!("intact ({} records); digest {d}", self.verified),
            (None, None) => "no records".into(),
        }
    }
}

/// Checks a run's records in order (what the store reads; damage it finds,
/// a missing record or a bad checksum, is reported beside the chain, as
/// [`super::RunLog::damaged`]): each given as its sequence number,
/// time, JSON as stored and stored link (none: unchained). A chained
/// record after an unchained one starts again from the genesis (a run a
/// newer build resumed); an unchained record after a chained one is
/// broken (a format downgrade is an edit).
pub struct Verifier {
    prev: Link,
    report: ChainReport,
    chained: bool,
}

impl Verifier {
    pub fn new(run: &str) -> Self {
        Verifier {
            prev: genesis(run),
            report: ChainReport::default(),
            chained: false,
        }
    }

    /// Checks the next record; false once the chain is broken.
    pub fn next(&mut self, seq: u64, at_ms: u64, entry: &str, stored: Option<&str>) -> bool {
        if self.report.broken.is_some() {
            return false;
        }
        let Some(stored) = stored else {
            if self.chained {
                self.report.broken = Some(format!(
                    "record {seq} carries no link, after chained records (it was rewritten in an older format)"
                ));
                return false;
            }
            self.report.unchained += 1;
            return true;
        };
        self.chained = true;
        let l = link(&self.prev, seq, at_ms, entry);
        let h = hex(&l);
        if h != stored {
            self.report.broken = Some(format!(
                "record {seq} does not match its link: it, or a record before it, was changed, dropped, added or moved after it was written (stored {}, computed {})",
                &stored.get(..16).unwrap_or(stored),
                &h[..16]
            ));
            return false;
        }
        self.prev = l;
        self.report.verified += 1;
        self.report.links.push((seq, l));
        true
    }

    pub fn finish(mut self) -> ChainReport {
        self.report.digest = self.report.links.last().map(|(_, l)| hex(l));
        self.report
    }
}

/// Parses a stored link.
pub fn parse(s: &str) -> Option<Link> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(run: &str, entries: &[&str]) -> Vec<String> {
        let mut prev = genesis(run);
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                prev = link(&prev, i as u64, 1000 + i as u64, e);
                hex(&prev)
            })
            .collect()
    }

    fn verify(run: &str, entries: &[&str], links: &[String]) -> ChainReport {
        let mut v = Verifier::new(run);
        for (i, (e, l)) in entries.iter().zip(links).enumerate() {
            v.next(i as u64, 1000 + i as u64, e, Some(l));
        }
        v.finish()
    }

    #[test]
    fn an_intact_chain_verifies_and_ends_in_its_digest() {
        let e = ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"];
        let links = chain("r", &e);
        let r = verify("r", &e, &links);
        assert!(r.intact(), "{r:?}");
        assert_eq!(r.digest.as_deref(), Some(links[2].as_str()));
        assert_eq!(r.record_of(&links[1].to_uppercase()), Some(1));
        assert_eq!(parse(&links[0]).map(|l| hex(&l)), Some(links[0].clone()));
    }

    #[test]
    fn an_edit_a_swap_or_another_run_id_breaks_it_at_the_first_record_changed() {
        let e = ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"];
        let links = chain("r", &e);
        let r = verify("r", &["{\"a\":1}", "{\"b\":9}", "{\"c\":3}"], &links);
        assert!(
            r.broken.as_deref().unwrap().starts_with("record 1 "),
            "{r:?}"
        );
        assert_eq!(r.verified, 1);
        let r = verify(
            "r",
            &[e[0], e[2], e[1]],
            &[links[0].clone(), links[2].clone(), links[1].clone()],
        );
        assert!(
            r.broken.as_deref().unwrap().starts_with("record 1 "),
            "{r:?}"
        );
        let r = verify("other", &e, &links);
        assert!(
            r.broken.as_deref().unwrap().starts_with("record 0 "),
            "{r:?}"
        );
    }

    #[test]
    fn unchained_records_before_the_chain_are_counted_and_after_it_break_it() {
        let mut v = Verifier::new("r");
        assert!(v.next(0, 0, "{}", None));
        let l = hex(&link(&genesis("r"), 1, 5, "{}"));
        assert!(v.next(1, 5, "{}", Some(&l)));
        assert!(!v.next(2, 6, "{}", None));
        let r = v.finish();
        assert_eq!((r.unchained, r.verified), (1, 1));
        assert!(r.broken.unwrap().contains("carries no link"));
    }
}
