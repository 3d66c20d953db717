//! Chunks: written, read back, cut, shown one row per record; and a
//! format-1 file converted when opened.
use super::*;
use crate::team::events::Event;

fn retry(replica: u32) -> Event {
    Event::Retry {
        task: "t".into(),
        replica,
    }
}

fn replicas(log: &RunLog) -> Vec<u32> {
    log.events()
        .map(|(_, e)| match e {
            Event::Retry { replica, .. } => *replica,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn records_queued_together_share_a_row_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let j = SqliteJournal::open(dir.path()).unwrap();
    for i in 0..5 {
        assert_eq!(j.append_event("a", &retry(i)), u64::from(i));
    }
    j.append_event("b", &retry(9));
    j.flush().await.unwrap();
    for i in 5..7 {
        j.append_event("a", &retry(i));
    }
    j.flush().await.unwrap();
    let log = j.read("a").unwrap();
    assert!(log.damaged.is_none());
    assert_eq!(replicas(&log), (0..7).collect::<Vec<_>>());
    assert!(log
        .records
        .iter()
        .enumerate()
        .all(|(i, r)| r.seq == i as u64));
    let rows: i64 = j.with_connection(|c| {
        c.query_row("SELECT count(*) FROM chunks WHERE run = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap()
    });
    assert!(rows < 7, "{rows} rows for 7 records");
    // The view: one row per record, with its kind and body.
    let (n, kind, seq6): (i64, String, i64) = j.with_connection(|c| {
        c.query_row(
            "SELECT count(*), min(kind), max(seq) FROM records WHERE run = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    });
    assert_eq!((n, kind.as_str(), seq6), (7, "event:retry", 6));
    let third: i64 = j.with_connection(|c| {
        c.query_row(
            "SELECT json_extract(body, '$.event.replica') FROM records WHERE run = 'a' AND seq = 3",
            [],
            |r| r.get(0),
        )
        .unwrap()
    });
    assert_eq!(third, 3);
}

#[tokio::test]
async fn a_cut_inside_a_row_keeps_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = SqliteJournal::open(dir.path()).unwrap();
    for i in 0..6 {
        j.append_event("a", &retry(i));
    }
    j.flush().await.unwrap();
    j.truncate("a", 4).unwrap();
    assert_eq!(replicas(&j.read("a").unwrap()), vec![0, 1, 2, 3]);
    assert_eq!(j.append_event("a", &retry(7)), 4);
    j.flush().await.unwrap();
    assert_eq!(replicas(&j.read("a").unwrap()), vec![0, 1, 2, 3, 7]);
    j.truncate("a", 0).unwrap();
    assert!(matches!(j.read("a"), Err(JournalError::NoRun { .. })));
}

#[tokio::test]
async fn a_format_1_file_is_converted_and_reads_as_before() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join(FILE)).unwrap();
        c.execute_batch(
            "CREATE TABLE records (
               run TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
               version INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
               checksum INTEGER NOT NULL, PRIMARY KEY (run, seq)) WITHOUT ROWID;",
        )
        .unwrap();
        for i in 0..3u32 {
            let body = serde_json::to_string(&Entry::Event { event: retry(i) }).unwrap();
            c.execute(
                "INSERT INTO records VALUES ('old', ?1, ?2, 1, 'event:retry', ?3, ?4)",
                params![i, 1000 + i, body, checksum(&body)],
            )
            .unwrap();
        }
    }
    let j = SqliteJournal::open(dir.path()).unwrap();
    let log = j.read("old").unwrap();
    assert!(log.damaged.is_none(), "{:?}", log.damaged);
    assert_eq!(replicas(&log), vec![0, 1, 2]);
    assert_eq!(log.records[2].at_ms, 1002);
    // It goes on in the new format.
    assert_eq!(j.append_event("old", &retry(3)), 3);
    j.flush().await.unwrap();
    assert_eq!(replicas(&j.read("old").unwrap()), vec![0, 1, 2, 3]);
    let kinds: Vec<(i64, String)> = j.with_connection(|c| {
        c.prepare("SELECT version, kind FROM records WHERE run = 'old' ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    });
    assert_eq!(
        kinds,
        [
            (1, "event:retry"),
            (1, "event:retry"),
            (1, "event:retry"),
            (3, "event:retry")
        ]
        .map(|(v, k)| (v, k.to_string()))
    );
    // The old records read as unchained; the new one chains on after them.
    let chain = j.read("old").unwrap().chain;
    assert_eq!((chain.unchained, chain.verified), (3, 1), "{chain:?}");
    assert!(chain.broken.is_none() && !chain.intact());
    drop(j);
    // Opening it again finds nothing left to convert.
    let j = SqliteJournal::open(dir.path()).unwrap();
    assert_eq!(j.read("old").unwrap().records.len(), 4);
}
