//! The sandbox as a team spec sets it: per-plugin `limits` are honoured,
//! grants come from the spec alone (not from what a plugin asks for), and a
//! plugin used as the wrong kind is refused at load.

use conclave::team::consensus::StopReason;
use conclave::team::job::PreparedTeam;
use conclave_tests::{fixture, plugin, plugin_dir, run_job, runtime};

fn spec(voter_config: &str, limits: &str) -> String {
    format!(
        r#"
[team]
name = "limits"

[[node]]
name = "sim"
backend = "sim"

[[plugin]]
name = "hostile"
path = "{}"
config = {voter_config}
{limits}

[[task]]
id = "a"
role = "solver"
voter = "hostile"
answer_kind = "number"
"#,
        fixture("hostile").display()
    )
}

async fn prepare(text: &str) -> (tempfile::TempDir, Result<PreparedTeam, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, text).unwrap();
    let spec = conclave::spec::team::TeamSpec::load(&path).unwrap();
    let team = PreparedTeam::prepare(spec, runtime(), &plugin_dir())
        .await
        .map_err(|e| e.to_string());
    (dir, team)
}

async fn failure(text: &str) -> String {
    let (_dir, team) = prepare(text).await;
    let (r, _) = run_job(&team.unwrap(), "run-limits", "What is 6 * 7?", Some("42")).await;
    match r.stop {
        StopReason::Failed(why) => why,
        other => panic!("expected the task to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plugins_deadline_from_the_spec_is_the_one_enforced() {
    let why = failure(&spec(
        r#"{ do = "loop" }"#,
        r#"limits = { deadline = "250ms" }"#,
    ))
    .await;
    assert!(why.contains("compute deadline of 250ms"), "{why}");
}

#[tokio::test]
async fn a_plugins_memory_cap_from_the_spec_is_the_one_enforced() {
    let why = failure(&spec(
        r#"{ do = "oom" }"#,
        "limits = { memory_bytes = 8388608 }",
    ))
    .await;
    assert!(why.contains("more than 8388608 bytes"), "{why}");
}

#[tokio::test]
async fn a_plugins_result_limit_from_the_spec_is_the_one_enforced() {
    // Its answer is its own: declared so, or the host refuses it.
    let (_dir, team) = prepare(&spec(r#"{ do = "answer-2k" }"#, "synthesises = true")).await;
    let (r, _) = run_job(&team.unwrap(), "run-limits", "What is 6 * 7?", Some("42")).await;
    assert_eq!(r.answer.as_deref(), Some("4".repeat(2000).as_str()));
    let why = failure(&spec(
        r#"{ do = "answer-2k" }"#,
        "synthesises = true\nlimits = { result_bytes = 1000 }",
    ))
    .await;
    assert!(why.contains("2000 bytes, over the limit of 1000"), "{why}");
}

#[tokio::test]
async fn memory_above_the_runtimes_ceiling_is_refused_at_load() {
    let (_dir, team) = prepare(&spec(
        r#"{ do = "loop" }"#,
        "limits = { memory_bytes = 1099511627776 }",
    ))
    .await;
    let e = team.err().expect("refused");
    assert!(e.contains("above the runtime's ceiling"), "{e}");
}

/// A plugin directory where `solver.wasm` is a role that asks for every
/// capability and uses each.
fn greedy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(fixture("greedy"), plugins.join("solver.wasm")).unwrap();
    std::fs::copy(plugin("majority"), plugins.join("majority.wasm")).unwrap();
    dir
}

async fn greedy_run(dir: &tempfile::TempDir, declared: &str) -> conclave::team::job::JobResult {
    let text = format!(
        r#"
[team]
name = "greedy"
plugin_dir = "plugins"

[[node]]
name = "sim"
backend = "sim"
{declared}

[[task]]
id = "a"
role = "solver"
voter = "majority"
answer_kind = "number"
"#
    );
    let path = dir.path().join("team.toml");
    std::fs::write(&path, text).unwrap();
    let spec = conclave::spec::team::TeamSpec::load(&path).unwrap();
    let team = PreparedTeam::prepare(spec, runtime(), &plugin_dir())
        .await
        .unwrap();
    run_job(&team, "run-greedy", "What is 6 * 7?", Some("42"))
        .await
        .0
}

#[tokio::test]
async fn a_plugin_gets_what_the_spec_grants_not_what_it_asks_for() {
    let dir = greedy_dir();
    // Undeclared, from a plugin directory: nothing but `log`.
    let r = greedy_run(&dir, "").await;
    match &r.stop {
        StopReason::Failed(why) => assert!(why.contains("`blackboard` capability"), "{why}"),
        other => panic!("expected a capability failure, got {other:?}"),
    }
    // Granted `llm` only: the blackboard is still out of reach.
    let r = greedy_run(&dir, "[[plugin]]\nname = \"solver\"\ngrants = [\"llm\"]\n").await;
    match &r.stop {
        StopReason::Failed(why) => assert!(why.contains("`blackboard` capability"), "{why}"),
        other => panic!("expected a capability failure, got {other:?}"),
    }
    // Granted all it uses: it runs.
    let r = greedy_run(
        &dir,
        "[[plugin]]\nname = \"solver\"\ngrants = [\"llm\", \"bus\", \"blackboard\"]\n",
    )
    .await;
    assert_eq!(r.stop, StopReason::Decided);
    assert_eq!(r.answer.as_deref(), Some("42"));
}

#[tokio::test]
async fn a_voter_used_as_a_role_is_refused_at_load() {
    let text = format!(
        r#"
[team]
name = "kinds"

[[node]]
name = "sim"
backend = "sim"

[[plugin]]
name = "v"
path = "{}"

[[task]]
id = "a"
role = "v"
voter = "majority"
answer_kind = "number"
"#,
        plugin("majority").display()
    );
    let (_dir, team) = prepare(&text).await;
    let e = team.err().expect("refused");
    assert!(
        e.contains("it is a voter, and task `a` uses it as a role"),
        "{e}"
    );
}
