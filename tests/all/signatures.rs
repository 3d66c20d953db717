//! Plugins the operator allowed: components signed with `conclave plugins
//! sign`, a team (or server) that trusts a key, and `run`, `worker` and a
//! hot swap in `serve` refusing a component that is unsigned, signed by
//! another key, or carries a signature of another file, while the version
//! serving keeps serving.

use std::path::Path;
use std::time::Duration;

use conclave_tests::{conclave_bin, fixture, plugin, replace_atomically, workspace};
use serde_json::{json, Value};

use crate::hot_swap_serve::Serving;

fn conclave(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(conclave_bin())
        .args(args)
        .current_dir(dir)
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
        .output()
        .expect("conclave runs")
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A folder with two key pairs (`op.key`, `other.key`), the built-ins a
/// sim team needs in `plugins/` and the swap voter as `voter.wasm`, all
/// signed by `op`; `team.toml` trusts `op` when `in_spec`.
fn signed_team(in_spec: bool, latency: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&conclave(d, &["plugins", "keygen", "--out", "op.key"]));
    ok(&conclave(d, &["plugins", "keygen", "--out", "other.key"]));
    let public = std::fs::read_to_string(d.join("op.key.pub"))
        .unwrap()
        .trim()
        .to_string();
    std::fs::create_dir(d.join("plugins")).unwrap();
    std::fs::copy(plugin("solver"), d.join("plugins/solver.wasm")).unwrap();
    std::fs::copy(fixture("swap-v1"), d.join("voter.wasm")).unwrap();
    ok(&conclave(
        d,
        &[
            "plugins",
            "sign",
            "plugins/solver.wasm",
            "voter.wasm",
            "--key",
            "op.key",
        ],
    ));
    let trusted = if in_spec {
        format!("trusted_keys = [\"{public}\"]")
    } else {
        String::new()
    };
    std::fs::write(
        d.join("team.toml"),
        format!(
            r#"
[team]
name = "signed"
plugin_dir = "plugins"
{trusted}

[[node]]
name = "sim"
backend = "sim"
accuracy = 0.9
{latency}

[[plugin]]
name = "solver"
grants = ["llm"]

[[plugin]]
name = "vote"
path = "voter.wasm"
synthesises = true

[[task]]
id = "answer"
role = "solver"
replicas = 3
voter = "vote"
answer_kind = "number"
"#
        ),
    )
    .unwrap();
    (dir, public)
}

#[test]
fn run_takes_components_signed_by_a_trusted_key_and_refuses_the_others() {
    let (dir, public) = signed_team(true, "");
    let d = dir.path();
    let out = ok(&conclave(
        d,
        &[
            "run",
            "team.toml",
            "What is 2 + 2?",
            "--json",
            "--data-dir",
            "data",
        ],
    ));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["answer"], "1.0.0:3", "{r}");
    let verify = ok(&conclave(
        d,
        &[
            "plugins",
            "verify",
            "voter.wasm",
            "--trusted-key",
            "op.key.pub",
        ],
    ));
    assert!(verify.contains(&format!("signed by {public}")), "{verify}");

    let refused = |why: &str| {
        let o = conclave(
            d,
            &["run", "team.toml", "What is 2 + 2?", "--data-dir", "data"],
        );
        assert_eq!(o.status.code(), Some(5), "a refused plugin exits 5");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains("plugin `vote`"), "{err}");
        assert!(err.contains(why), "{err}");
    };
    // Signed by a key the team does not trust.
    ok(&conclave(
        d,
        &["plugins", "sign", "voter.wasm", "--key", "other.key"],
    ));
    refused("which is not a trusted key of this team");
    let o = conclave(
        d,
        &[
            "plugins",
            "verify",
            "voter.wasm",
            "--trusted-key",
            "op.key.pub",
        ],
    );
    assert_eq!(o.status.code(), Some(5));
    // A signature of another component.
    std::fs::copy(d.join("plugins/solver.wasm.sig"), d.join("voter.wasm.sig")).unwrap();
    refused("it signs another component");
    // A signature whose key line was changed to a trusted key.
    ok(&conclave(
        d,
        &["plugins", "sign", "voter.wasm", "--key", "other.key"],
    ));
    let other = std::fs::read_to_string(d.join("other.key.pub")).unwrap();
    let text = std::fs::read_to_string(d.join("voter.wasm.sig")).unwrap();
    std::fs::write(
        d.join("voter.wasm.sig"),
        text.replace(other.trim(), &public),
    )
    .unwrap();
    refused("does not verify with the key it names");
    // Unsigned.
    std::fs::remove_file(d.join("voter.wasm.sig")).unwrap();
    refused("it is unsigned");
}

#[test]
fn a_worker_refuses_a_team_whose_components_its_key_did_not_sign() {
    let (dir, _) = signed_team(false, "");
    let d = dir.path();
    std::fs::remove_file(d.join("voter.wasm.sig")).unwrap();
    // It is refused at load, before the worker reaches for its cluster.
    let o = conclave(
        d,
        &[
            "worker",
            "team.toml",
            "--cluster",
            "nats://127.0.0.1:9",
            "--trusted-key",
            "op.key.pub",
        ],
    );
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("voter.wasm: refused: it is unsigned"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_unsigned_or_wrongly_signed_swap_and_keeps_the_old_version_serving() {
    // The key comes from the server's setting, not the spec.
    let (dir, _) = signed_team(false, "latency = { kind = \"constant\", value = \"5ms\" }");
    let d = dir.path();
    let server = Serving::start_specs(
        d,
        &d.join("data"),
        &["team.toml"],
        &["--trusted-key", "op.key.pub"],
    );
    let c = reqwest::Client::new();
    let ask = || async {
        let r: Value = c
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&json!({"messages": [{"role": "user", "content": "What is 2 + 2?"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(ask().await, "1.0.0:3");
    let v1 = server.plugin(&c, "vote").await["sha256"].clone();
    let voter = d.join("voter.wasm");
    let v2 = std::fs::read(fixture("swap-v2")).unwrap();

    // Unsigned: the new file with no signature beside it.
    std::fs::remove_file(d.join("voter.wasm.sig")).unwrap();
    replace_atomically(&voter, &v2);
    let row = server
        .wait_for(&c, "vote", "an unsigned swap refused", |r| {
            r["refused"]["reason"]
                .as_str()
                .is_some_and(|w| w.contains("it is unsigned"))
        })
        .await;
    assert_eq!(row["sha256"], v1, "the old version keeps serving");
    assert_eq!(ask().await, "1.0.0:3");

    // Signed, by a key the server does not trust.
    ok(&conclave(
        d,
        &["plugins", "sign", "voter.wasm", "--key", "other.key"],
    ));
    let row = server
        .wait_for(&c, "vote", "a swap signed by another key refused", |r| {
            r["refused"]["reason"]
                .as_str()
                .is_some_and(|w| w.contains("not a trusted key"))
        })
        .await;
    assert_eq!(row["sha256"], v1);
    assert_eq!(ask().await, "1.0.0:3");

    // Signed by the operator's key: the new signature alone brings it in.
    ok(&conclave(
        d,
        &["plugins", "sign", "voter.wasm", "--key", "op.key"],
    ));
    let row = server
        .wait_for(&c, "vote", "the signed swap", |r| r["version"] == "2.0.0")
        .await;
    assert_eq!(row["refused"], Value::Null);
    assert_ne!(row["sha256"], v1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask().await, "2.0.0:3");
}
