//! `conclave bench chaos` as CI runs a slice of it: the reported schedule
//! of compound faults (a worker killed, another paused, the coordinator
//! killed twice, the NATS server killed) on real processes and a real
//! nats-server, with a 2 s lease; every invariant must hold.

use crate::cluster::nats_binary;
use conclave_tests::conclave_bin;
use conclave_tests::workspace;

#[test]
fn the_reported_schedule_of_compound_faults_breaks_no_invariant() {
    let nats = nats_binary().display().to_string();
    let latencies = workspace()
        .join("data/paper-amdahl/llm_call_latencies.csv")
        .display()
        .to_string();
    // The benchmark's processes run from the workspace, where the team's
    // plugins are.
    let out = std::process::Command::new(conclave_bin())
        .current_dir(workspace())
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
        .args([
            "bench",
            "chaos",
            "--seed",
            "0",
            "--lease-ttl",
            "2s",
            "--clients",
            "12",
            "--nats-server",
            &nats,
            "--latencies",
            &latencies,
            "--json",
        ])
        .output()
        .expect("conclave runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_str(&text).unwrap();
    let r = &reports[0];
    assert_eq!(r["broken"], serde_json::json!([]), "{text}");
    // The faults struck what they name.
    let targets: Vec<&str> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 6, "{text}");
    assert_eq!(targets[0], "worker 0", "{text}");
    assert_eq!(targets[3], "nats-server", "{text}");
    // Work was done, and every request and run came to an end.
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests >= 12, "{text}");
    assert_eq!(r["answered"].as_u64(), Some(requests), "{text}");
    assert!(r["runs"].as_u64().unwrap() >= 12, "{text}");
    assert_eq!(r["runs_ended"], r["runs"], "{text}");
}
