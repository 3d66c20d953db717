//! Hot swap: a watched directory replaces plugins atomically under load,
//! refuses broken replacements, and lets calls in flight finish on the
//! version they started with.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave::plugin::Decision;
use conclave::{Invocation, Registry};
use conclave_tests::{ballot, fixture, runtime, task};

/// Writes `bytes` to `path` the way a deploy should: a temporary file, then a
/// rename, so a reader never sees half a file.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn answer(d: &Decision) -> &str {
    match d {
        Decision::Decided(d) => &d.answer,
        other => panic!("expected a decision, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap.wasm");
    std::fs::copy(fixture("swap-v1"), &file).unwrap();
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    let v1 = reg.get("swap").unwrap();
    assert_eq!(v1.version(), "1.0.0");

    std::fs::write(&file, b"\0asm\x0d\0\x01\0 but then garbage").unwrap();
    let e = reg.reload(&file).await.unwrap_err();
    assert!(matches!(e, conclave::PluginError::Compile { .. }), "{e:?}");
    assert_eq!(reg.get("swap").unwrap().hash(), v1.hash());
    assert_eq!(reg.failures().len(), 1);

    replace(&file, &std::fs::read(fixture("swap-v2")).unwrap());
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Loaded(_)
    ));
    assert_eq!(reg.get("swap").unwrap().version(), "2.0.0");
    assert_eq!(reg.failures(), vec![]);
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Unchanged
    ));

    // A handle taken before the swap still runs version 1.
    let rt = reg.runtime();
    let d = rt
        .tally(&v1, &Invocation::default(), &task(""), &[ballot("1")])
        .await
        .unwrap();
    assert_eq!(answer(&d), "1.0.0:1");

    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        reg.reload(&file).await.unwrap(),
        conclave::plugin::registry::Reload::Removed
    ));
    assert!(reg.get("swap").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_survive_ten_swaps_including_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap.wasm");
    let v1 = std::fs::read(fixture("swap-v1")).unwrap();
    let v2 = std::fs::read(fixture("swap-v2")).unwrap();
    replace(&file, &v1);
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    let _watch = reg.watch(Duration::from_millis(20)).unwrap();

    let swapping = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for worker in 0..8 {
        let (reg, swapping, calls) = (reg.clone(), swapping.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let ballots = vec![ballot("x"); 3];
            while swapping.load(Ordering::SeqCst) || calls.load(Ordering::SeqCst) < 1000 {
                let p = reg.get("swap").expect("a version is always loaded");
                let d = reg
                    .runtime()
                    .tally(&p, &Invocation::default(), &task(""), &ballots)
                    .await
                    .unwrap_or_else(|e| panic!("worker {worker}: call failed: {e}"));
                let got = answer(&d).to_string();
                // The answer must come from one whole version: the version
                // of the handle used, and nothing else.
                assert_eq!(got, format!("{}:3", p.version()));
                seen.push(got);
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            seen
        }));
    }

    let mut changes = reg.subscribe();
    let mut refused = 0;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        if i == 4 {
            replace(&file, b"definitely not a component");
            // Wait until the watcher has seen and refused it.
            for _ in 0..500 {
                if !reg.failures().is_empty() {
                    refused += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(reg.get("swap").is_ok(), "the old version keeps serving");
        } else {
            // Alternate versions, so every good write is a real change.
            let next = if (i < 4 && i % 2 == 0) || (i > 4 && i % 2 == 1) {
                &v2
            } else {
                &v1
            };
            replace(&file, next);
            tokio::time::timeout(Duration::from_secs(30), changes.changed())
                .await
                .expect("the watcher swapped the new version in")
                .unwrap();
        }
    }
    swapping.store(false, Ordering::SeqCst);
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    assert!(all.len() >= 1000, "only {} calls", all.len());
    assert_eq!(refused, 1, "the broken file was refused");
    assert!(
        all.iter().any(|a| a == "1.0.0:3") && all.iter().any(|a| a == "2.0.0:3"),
        "both versions served"
    );
    // The last write (i = 9) was v2.
    assert_eq!(reg.get("swap").unwrap().version(), "2.0.0");
    assert_eq!(reg.failures(), vec![]);
}
