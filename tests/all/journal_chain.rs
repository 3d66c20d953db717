//! The journal's hash chain, attacked as someone with the database file
//! would: a vote's answer edited in place, a record dropped, two records
//! swapped (each with the chunk's checksum computed again, which anyone
//! can do), and a whole chain computed again. `conclave verify` names the
//! first record that does not match; `trace` warns; `replay` and `resume`
//! refuse; a digest kept from the run's reply catches even the rewrite
//! that leaves the chain consistent.

use std::path::Path;

use conclave::journal::chain;
use conclave::journal::sqlite::{checksum, SqliteJournal};
use serde_json::value::RawValue;

use crate::journal::{conclave, result, run, team_file, TEAM};

/// A chunk as stored: (first, at_ms, [(ms after at_ms, record JSON, link)]).
type Chunk = (i64, i64, Vec<(i64, String, String)>);

fn chunks(data: &Path, run: &str) -> Vec<Chunk> {
    let j = SqliteJournal::open(data).unwrap();
    j.with_connection(|c| {
        let mut q = c
            .prepare("SELECT first, at_ms, version, body FROM chunks WHERE run = ?1 ORDER BY first")
            .unwrap();
        q.query_map([run], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .unwrap()
        .map(|row| {
            let (first, at, version, body) = row.unwrap();
            assert_eq!(version, 3, "this build writes chained chunks");
            let records: Vec<(i64, Box<RawValue>, String)> = serde_json::from_str(&body).unwrap();
            let records = records
                .into_iter()
                .map(|(after, raw, link)| (after, raw.get().to_string(), link))
                .collect();
            (first, at, records)
        })
        .collect()
    })
}

/// Writes `chunks` back in place of the run's, each with its checksum
/// computed again, as an editor with `sqlite3` would.
fn write_back(data: &Path, run: &str, chunks: &[Chunk]) {
    let j = SqliteJournal::open(data).unwrap();
    j.with_connection(|c| {
        c.execute("DELETE FROM chunks WHERE run = ?1", [run])
            .unwrap();
        for (first, at, records) in chunks {
            let body = format!(
                "[{}]",
                records
                    .iter()
                    .map(|(after, raw, link)| format!("[{after},{raw},\"{link}\"]"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            c.execute(
                "INSERT INTO chunks (run, first, count, version, at_ms, body, checksum) VALUES (?1, ?2, ?3, 3, ?4, ?5, ?6)",
                rusqlite::params![run, first, records.len() as i64, at, body, checksum(&body)],
            )
            .unwrap();
        }
    });
}

/// Every record as (seq, chunk index, index in the chunk).
fn places(chunks: &[Chunk]) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    for (ci, (first, _, records)) in chunks.iter().enumerate() {
        for ri in 0..records.len() {
            out.push((*first as u64 + ri as u64, ci, ri));
        }
    }
    out
}

/// The seq of the first record whose JSON contains `needle`.
fn find(chunks: &[Chunk], needle: &str) -> (u64, usize, usize) {
    places(chunks)
        .into_iter()
        .find(|&(_, ci, ri)| chunks[ci].2[ri].1.contains(needle))
        .unwrap_or_else(|| panic!("no record holds {needle}"))
}

/// A journaled run of the three-task sim team, its digest, and its
/// decided answer.
fn journaled(dir: &Path, id: &str) -> (String, String) {
    let spec = team_file(dir, TEAM);
    let out = run(&spec, dir, id, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = result(&out);
    let digest = r["digest"].as_str().expect("a digest").to_string();
    let answer = r["answer"].as_str().expect("decided").to_string();
    (digest, answer)
}

fn verify(dir: &Path, id: &str, digest: Option<&str>) -> (bool, serde_json::Value) {
    let mut args = vec!["verify", id, "--json"];
    if let Some(d) = digest {
        args.extend(["--digest", d]);
    }
    let out = conclave(&args, dir, &[]);
    (out.status.success(), result(&out))
}

#[test]
fn an_untouched_run_verifies_and_its_reply_digest_is_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, _) = journaled(dir.path(), "chain-ok");
    let (ok, v) = verify(dir.path(), "chain-ok", Some(&digest));
    assert!(ok, "{v}");
    assert_eq!(v["chain"]["digest"], digest.as_str());
    assert_eq!(v["chain"]["unchained"], 0);
    let records = v["records"].as_u64().unwrap();
    assert_eq!(v["chain"]["verified"], records);
    assert_eq!(v["digest_record"], records - 1);
    // The chain starts from the run id, the spec and the plugins' hashes.
    let cs = chunks(dir.path(), "chain-ok");
    let submitted = &cs[0].2[0].1;
    assert!(
        submitted.contains("\"plugins\":{\"majority\":\""),
        "{submitted}"
    );
    let trace = conclave(&["trace", "chain-ok"], dir.path(), &[]);
    let text = String::from_utf8_lossy(&trace.stdout);
    assert!(
        text.contains(&format!(
            "journal chain: intact ({records} records); digest {digest}"
        )),
        "{text}"
    );
}

#[test]
fn a_vote_edited_in_place_is_named_and_replay_and_resume_refuse_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, answer) = journaled(dir.path(), "chain-edit");
    let mut cs = chunks(dir.path(), "chain-edit");
    // The final task's vote, and the end: the answer becomes 999.
    let (vote, ci, ri) = find(&cs, "\"task\":\"both\",\"round\":0,\"ballots\"");
    let edited = cs[ci].2[ri]
        .1
        .replace(&format!("decided {answer} "), "decided 999 ");
    assert_ne!(edited, cs[ci].2[ri].1);
    cs[ci].2[ri].1 = edited;
    let (_, ce, re) = find(&cs, "\"entry\":\"job-ended\"");
    cs[ce].2[re].1 = cs[ce].2[re]
        .1
        .replace(&format!("\"answer\":\"{answer}\""), "\"answer\":\"999\"");
    write_back(dir.path(), "chain-edit", &cs);

    let (ok, v) = verify(dir.path(), "chain-edit", None);
    assert!(!ok);
    let broken = v["chain"]["broken"].as_str().unwrap();
    assert!(
        broken.starts_with(&format!("record {vote} does not match its link")),
        "{broken}"
    );
    assert_eq!(v["chain"]["verified"], vote);
    let (ok, v) = verify(dir.path(), "chain-edit", Some(&digest));
    assert!(!ok);
    assert_eq!(v["digest_record"], serde_json::Value::Null);

    let trace = conclave(&["trace", "chain-edit"], dir.path(), &[]);
    let err = String::from_utf8_lossy(&trace.stderr);
    assert!(err.contains("hash chain is broken"), "{err}");
    assert!(String::from_utf8_lossy(&trace.stdout).contains("journal chain: BROKEN: record"));

    let replay = conclave(&["replay", "chain-edit"], dir.path(), &[]);
    assert!(!replay.status.success());
    let err = String::from_utf8_lossy(&replay.stderr);
    assert!(
        err.contains("not replayed from records that may have been edited"),
        "{err}"
    );
    let anyway = conclave(
        &["replay", "chain-edit", "--accept-broken-chain"],
        dir.path(),
        &[],
    );
    let err = String::from_utf8_lossy(&anyway.stderr);
    assert!(
        err.contains("warning: run chain-edit: its journal's hash chain is broken"),
        "{err}"
    );

    let resume = conclave(&["resume", "chain-edit"], dir.path(), &[]);
    assert!(!resume.status.success());
    let err = String::from_utf8_lossy(&resume.stderr);
    assert!(err.contains("hash chain is broken"), "{err}");
    assert!(err.contains("--accept-broken-chain"), "{err}");
}

#[test]
fn a_dropped_record_and_a_swapped_pair_are_named() {
    let dir = tempfile::tempdir().unwrap();
    journaled(dir.path(), "chain-drop");
    let mut cs = chunks(dir.path(), "chain-drop");
    // Drop a ballot and number the rest again, so that no seq is missing.
    let (dropped, ci, ri) = find(&cs, "{\"event\":\"ballot\"");
    cs[ci].2.remove(ri);
    for c in cs.iter_mut().skip(ci + 1) {
        c.0 -= 1;
    }
    cs.retain(|c| !c.2.is_empty());
    write_back(dir.path(), "chain-drop", &cs);
    let (ok, v) = verify(dir.path(), "chain-drop", None);
    assert!(!ok);
    assert!(
        v["chain"]["broken"]
            .as_str()
            .unwrap()
            .starts_with(&format!("record {dropped} does not match")),
        "{v}"
    );

    journaled(dir.path(), "chain-swap");
    let mut cs = chunks(dir.path(), "chain-swap");
    // Two neighbouring records trade places, each keeping its link.
    let (first, ci) = cs
        .iter()
        .enumerate()
        .find(|(_, c)| c.2.len() >= 2)
        .map(|(ci, c)| (c.0 as u64, ci))
        .expect("a chunk of two records");
    cs[ci].2.swap(0, 1);
    write_back(dir.path(), "chain-swap", &cs);
    let (ok, v) = verify(dir.path(), "chain-swap", None);
    assert!(!ok);
    assert!(
        v["chain"]["broken"]
            .as_str()
            .unwrap()
            .starts_with(&format!("record {first} does not match")),
        "{v}"
    );
}

#[test]
fn a_whole_chain_computed_again_verifies_but_not_against_the_kept_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, answer) = journaled(dir.path(), "chain-forged");
    let mut cs = chunks(dir.path(), "chain-forged");
    let (_, ce, re) = find(&cs, "\"entry\":\"job-ended\"");
    cs[ce].2[re].1 = cs[ce].2[re]
        .1
        .replace(&format!("\"answer\":\"{answer}\""), "\"answer\":\"999\"");
    // The forger knows the algorithm and computes every link again.
    let mut prev = chain::genesis("chain-forged");
    for (first, at, records) in cs.iter_mut() {
        for (i, (after, raw, link)) in records.iter_mut().enumerate() {
            let seq = *first as u64 + i as u64;
            prev = chain::link(&prev, seq, (*at + *after) as u64, raw);
            *link = chain::hex(&prev);
        }
    }
    write_back(dir.path(), "chain-forged", &cs);
    let (ok, v) = verify(dir.path(), "chain-forged", None);
    assert!(
        ok,
        "a consistent rewrite is not caught without a kept digest: {v}"
    );
    assert_ne!(v["chain"]["digest"], digest.as_str());
    let (ok, v) = verify(dir.path(), "chain-forged", Some(&digest));
    assert!(!ok, "{v}");
    assert_eq!(v["digest_record"], serde_json::Value::Null);
}
