//! `conclave plugins new`: the generated crate builds for wasm32-wasip2 on the
//! first try and the host accepts the component it produces.

use std::process::Command;

use conclave::plugin::{Decision, PluginKind};
use conclave::Invocation;
use conclave_tests::{ballot, runtime, task, workspace};

#[tokio::test]
async fn a_new_voter_builds_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    conclave::scaffold::new_plugin(
        "first-vote",
        PluginKind::Voter,
        dir.path(),
        &workspace().join("sdk"),
    )
    .unwrap();
    let crate_dir = dir.path().join("first-vote");
    // Share the workspace's target folder so dependencies are built once.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&crate_dir)
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("scaffold"),
        )
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the generated plugin did not build");
    let wasm = workspace().join("target/scaffold/wasm32-wasip2/release/first_vote.wasm");
    let rt = runtime();
    let p = rt.load_file(&wasm).await.unwrap();
    assert_eq!((p.name(), p.version()), ("first-vote", "0.1.0"));
    let d = rt
        .tally(
            &p,
            &Invocation::default(),
            &task(r#"{"min_votes":2}"#),
            &[ballot("5"), ballot("5"), ballot("6")],
        )
        .await
        .unwrap();
    match d {
        Decision::Decided(d) => assert_eq!((d.answer.as_str(), d.support, d.total), ("5", 2, 3)),
        other => panic!("{other:?}"),
    }
}
