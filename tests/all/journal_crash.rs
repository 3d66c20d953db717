//! Crash-resume: a run killed at every record boundary, and runs killed by
//! SIGKILL at seeded times mid-call, resume to the same result, reusing
//! every journaled model call and making none twice.

use std::process::Command;

use conclave::journal::sqlite::{SqliteJournal, CRASH_ENV};
use conclave::journal::Journal;
use conclave::team::events::Event;
use conclave_tests::{conclave_bin, workspace};

use crate::journal::{calls, conclave, result, run, team_file, TEAM};

#[test]
fn a_run_killed_at_every_record_boundary_resumes_reusing_exactly_what_it_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), TEAM);
    let reference_dir = dir.path().join("reference");
    let reference = result(&run(&spec, &reference_dir, "crash", &[]));
    let j = SqliteJournal::open(&reference_dir).unwrap();
    let records = j.read("crash").unwrap().records.len() as u64;
    let (uninterrupted_calls, _) = calls(&j, "crash");
    drop(j);
    // Every boundary: the process dies writing record `at` (from 1), with
    // the records before it written (or not yet committed) and none after;
    // from the first event to the run's end (at 1, the submission itself
    // dies and there is nothing to resume).
    for at in 2..=records {
        let data = dir.path().join(format!("crash-{at}"));
        let killed = run(&spec, &data, "crash", &[(CRASH_ENV, at.to_string())]);
        assert!(
            !killed.status.success(),
            "the process was killed at record {at}"
        );
        let journaled = {
            let j = SqliteJournal::open(&data).unwrap();
            calls(&j, "crash").0
        };
        let resumed = conclave(&["resume", "crash", "--json"], &data, &[]);
        assert!(
            resumed.status.success(),
            "resume after record {at}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let r = result(&resumed);
        for k in ["answer", "support", "total", "samples", "stop"] {
            assert_eq!(r[k], reference[k], "{k} after a crash at record {at}");
        }
        let j = SqliteJournal::open(&data).unwrap();
        let (real, reused) = calls(&j, "crash");
        // Every call of the uninterrupted run made once, none twice, and
        // every call journaled before the kill reused on resume.
        assert_eq!(
            (real, reused),
            (uninterrupted_calls, journaled),
            "crash at record {at}: (real calls, reused calls)"
        );
        let log = j.read("crash").unwrap();
        assert!(log.damaged.is_none());
    }
}

/// Three tasks of three replicas on a sim node that takes about 80 ms a
/// call: a run long enough to be killed in the middle of concurrent calls.
pub(crate) const SLOW_TEAM: &str = r#"
[team]
name = "slow"

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.7
seed = 9
latency = { kind = "lognormal", median = "80ms", sigma = 0.5 }

[[task]]
id = "left"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"

[[task]]
id = "right"
role = "solver"
replicas = 3
voter = "majority"
answer_kind = "number"

[[task]]
id = "both"
role = "solver"
prompt = "Check: {question}"
replicas = 3
voter = "majority"
answer_kind = "number"
depends_on = ["left", "right"]
"#;

/// Model calls in `run`'s journal, by (task, replica, call): how many times
/// each was made, and how many times answered from the journal.
fn calls_by_key(
    j: &SqliteJournal,
    run: &str,
) -> std::collections::BTreeMap<(String, u32, u32), (u32, u32)> {
    let mut m = std::collections::BTreeMap::new();
    for (_, e) in j.read(run).unwrap().events() {
        if let Event::ModelCall {
            task,
            replica,
            call,
            replayed,
            ..
        } = e
        {
            let n: &mut (u32, u32) = m.entry((task.clone(), *replica, *call)).or_default();
            if *replayed {
                n.1 += 1
            } else {
                n.0 += 1
            }
        }
    }
    m
}

#[test]
fn a_run_killed_by_sigkill_mid_call_resumes_reusing_every_journaled_call() {
    let dir = tempfile::tempdir().unwrap();
    let spec = team_file(dir.path(), SLOW_TEAM);
    // Kill times (seeded) within the model time of an uninterrupted run,
    // counted from the moment the submission is on disk.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut killed_mid_run = 0;
    for point in 0..4 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = std::time::Duration::from_millis(20 + state % 300);
        let data = dir.path().join(format!("kill-{point}"));
        let mut child = Command::new(conclave_bin())
            .args(["run", &spec, "What is 40 + 2?", "--gold", "42", "--json"])
            .args(["--run-id", "killed", "--data-dir"])
            .arg(&data)
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the submission record: a kill before it leaves nothing
        // to resume, which is not what this test is about.
        let file = data.join("journal.sqlite");
        let t0 = std::time::Instant::now();
        loop {
            let submitted = file.exists()
                && SqliteJournal::open(&data)
                    .ok()
                    .and_then(|j| j.read("killed").ok())
                    .is_some_and(|l| l.submitted().is_some());
            if submitted {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "no submission journaled"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(after);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        killed_mid_run += !status.success() as u32;
        let before = calls_by_key(&SqliteJournal::open(&data).unwrap(), "killed");
        let resumed = conclave(&["resume", "killed", "--json"], &data, &[]);
        assert!(
            resumed.status.success(),
            "resume after a kill at +{after:?}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let r = result(&resumed);
        assert!(r["stop"]["stop"].is_string(), "{r}");
        let after_resume = calls_by_key(&SqliteJournal::open(&data).unwrap(), "killed");
        let journaled: Vec<_> = before.keys().cloned().collect();
        if status.success() {
            continue;
        }
        // Every call journaled before the kill was reused, and only those,
        // save the calls of replicas the resumed run no longer needed (an
        // early decision from the replies it reused cancelled them).
        let log = SqliteJournal::open(&data).unwrap().read("killed").unwrap();
        let cancelled: std::collections::BTreeSet<(String, u32)> = log
            .events()
            .filter_map(|(_, e)| match e {
                Event::ReplicaCancelled { task, replica, .. } => Some((task.clone(), *replica)),
                _ => None,
            })
            .collect();
        let reused: Vec<_> = after_resume
            .iter()
            .filter(|(_, n)| n.1 > 0)
            .map(|(k, _)| k.clone())
            .collect();
        let expected: Vec<_> = journaled
            .iter()
            .filter(|k| reused.contains(k) || !cancelled.contains(&(k.0.clone(), k.1)))
            .cloned()
            .collect();
        assert_eq!(reused, expected, "kill at +{after:?}");
        // No call was made twice.
        for (k, (made, replayed)) in &after_resume {
            assert_eq!((*made, *replayed <= 1), (1, true), "{k:?}");
        }
    }
    assert!(killed_mid_run > 0, "every run ended before its kill");
}
