//! OpenTelemetry export (`--otlp-endpoint`): the spans `conclave run` and
//! `conclave serve` send to an OTLP/HTTP receiver started here, their tree
//! (run > task > replica > role > model call; verifiers under the replica,
//! the voter under the task) and their attributes against the CLI's result
//! and the journal's trace; replicas cancelled by an early decision marked
//! so; failures as error statuses with their type; the last spans flushed
//! on SIGTERM; a collector that is down never failing a run; a bad URL
//! refused as a usage error.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_tests::{conclave_bin, workspace};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

mod receiver;
use receiver::{attr, flag, int, text, Receiver};

/// Two sim nodes, two tasks (the second reads the first), three and two
/// replicas, a verifier on each candidate; every replica reports before
/// the vote (`decide = "all"`), so the spans to expect are known.
const TEAM: &str = r#"
[team]
name = "traced"
consensus = { decide = "all" }

[[node]]
name = "left"
backend = "sim"
accuracy = 1.0
seed = 1

[[node]]
name = "right"
backend = "sim"
accuracy = 1.0
seed = 2

[[task]]
id = "first"
role = "solver"
replicas = 3
verifiers = ["answer-format"]
voter = "majority"
answer_kind = "number"

[[task]]
id = "answer"
role = "solver"
prompt = "Check the earlier result for: {question}"
replicas = 2
verifiers = ["answer-format"]
voter = "majority"
answer_kind = "number"
depends_on = ["first"]
"#;

/// The team spec in a fresh folder, with a data directory beside it.
fn team_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("team.toml"), TEAM).unwrap();
    d
}

/// `conclave ARGS` in `dir`, journaling in `dir/data`; run off the async
/// threads (the receiver answers on them meanwhile).
async fn conclave(dir: &Path, args: &[&str]) -> std::process::Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(conclave_bin())
            .args(&args)
            .current_dir(&dir)
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .env("CONCLAVE_DATA_DIR", dir.join("data"))
            .env_remove("CONCLAVE_LOG")
            .env_remove("CONCLAVE_OTLP_ENDPOINT")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn out(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_the_span_tree_with_the_results_and_the_journals_tokens() {
    let receiver = Receiver::start().await;
    let dir = team_dir();
    let o = conclave(
        dir.path(),
        &[
            "run",
            "team.toml",
            "What is 40 + 2?",
            "--gold",
            "42",
            "--json",
            "--otlp-endpoint",
            &receiver.url,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o.stderr));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    let run_id = result["run_id"].as_str().unwrap().to_string();
    // 1 run, 2 tasks, 5 replicas, 5 role calls, 5 verifier calls, 2 votes,
    // 5 model calls (the solver asks once).
    let spans = receiver.run(&run_id, 25).await;
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (&s.span_id[..], s)).collect();
    let parent = |s: &Span| -> &Span {
        by_id
            .get(&s.parent_span_id[..])
            .unwrap_or_else(|| panic!("the parent of {} was not received", s.name))
    };

    // Exactly one run span across everything received, with the CLI's result.
    let runs: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|(_, s)| s.name == "run")
        .collect();
    assert_eq!(runs.len(), 1, "one run span");
    let run = named("run")[0];
    assert!(run.parent_span_id.is_empty(), "the run span is a root");
    assert_eq!(text(run, "conclave.run_id"), Some(run_id.as_str()));
    assert_eq!(text(run, "conclave.team"), Some("traced"));
    assert_eq!(text(run, "conclave.stop"), result["stop"]["stop"].as_str());
    assert_eq!(text(run, "conclave.stop"), Some("decided"));
    assert_eq!(int(run, "conclave.support"), result["support"].as_i64());
    assert_eq!(int(run, "conclave.total"), result["total"].as_i64());
    assert_eq!(int(run, "conclave.samples"), result["samples"].as_i64());
    assert_eq!(int(run, "conclave.tokens_in"), result["tokens_in"].as_i64());
    assert_eq!(
        int(run, "conclave.tokens_out"),
        result["tokens_out"].as_i64()
    );
    assert_eq!(int(run, "conclave.hedges"), Some(0));
    assert_eq!(flag(run, "conclave.simulated"), Some(true));
    assert!(
        attr(run, "conclave.answer").is_none(),
        "answers stay out of spans"
    );

    // Tasks under the run, with their own results.
    let tasks = named("task");
    let mut task_ids: Vec<&str> = tasks
        .iter()
        .map(|t| text(t, "conclave.task").unwrap())
        .collect();
    task_ids.sort();
    assert_eq!(task_ids, ["answer", "first"]);
    for t in &tasks {
        assert_eq!(parent(t).span_id, run.span_id, "a task's parent is the run");
        assert_eq!(text(t, "conclave.stop"), Some("decided"));
        let id = text(t, "conclave.task").unwrap();
        let want = if id == "first" { 3 } else { 2 };
        assert_eq!(int(t, "conclave.samples"), Some(want), "{id}");
        assert_eq!(int(t, "conclave.support"), Some(want), "{id}");
    }
    let task_of = |s: &Span| text(parent(s), "conclave.task").unwrap().to_string();

    // Replicas under their task, each on a node of the spec.
    let replicas = named("replica");
    assert_eq!(replicas.len(), 5);
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for r in &replicas {
        assert_eq!(parent(r).name, "task", "a replica's parent is its task");
        *per_task.entry(task_of(r)).or_default() += 1;
        let node = text(r, "conclave.node").expect("a replica names its node");
        assert!(["left", "right"].contains(&node), "{node}");
        assert_eq!(text(r, "conclave.outcome"), Some("candidate"));
        assert!(flag(r, "conclave.cancelled").is_none());
    }
    assert_eq!(
        per_task,
        BTreeMap::from([("answer".into(), 2), ("first".into(), 3)])
    );

    // Plugin calls: the role and the verifier under the replica, the voter
    // under the task; each names the plugin and the component's hash.
    let calls = named("role")
        .into_iter()
        .chain(named("verifier"))
        .chain(named("voter"));
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in calls {
        let kind = text(c, "conclave.plugin.kind").unwrap();
        *kinds.entry(kind).or_default() += 1;
        assert_eq!(kind, c.name);
        let (plugin, under) = match kind {
            "role" => ("solver", "replica"),
            "verifier" => ("answer-format", "replica"),
            _ => ("majority", "task"),
        };
        assert_eq!(text(c, "conclave.plugin"), Some(plugin));
        assert_eq!(parent(c).name, under, "a {kind} call's parent");
        assert_eq!(text(c, "conclave.plugin.sha256").map(str::len), Some(64));
        assert!(text(c, "error.type").is_none(), "{kind} failed");
    }
    assert_eq!(kinds["role"], 5);
    assert_eq!(kinds["verifier"], 5);
    assert!(kinds["voter"] >= 2, "{kinds:?}");
    for v in named("voter") {
        assert_eq!(text(v, "conclave.outcome"), Some("decided"));
    }

    // Model calls under the role call, with GenAI attributes whose usage is
    // what the journal recorded, node by node, and adds up to the run's.
    let chats: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat"))
        .collect();
    let trace: Value = serde_json::from_slice(
        &conclave(dir.path(), &["trace", &run_id, "--json"])
            .await
            .stdout,
    )
    .unwrap();
    let journaled_calls: i64 = trace["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(chats.len() as i64, journaled_calls);
    let mut tokens: BTreeMap<String, i64> = BTreeMap::new();
    let (mut tin, mut tout) = (0, 0);
    for c in &chats {
        assert_eq!(c.name, "chat sim");
        assert_eq!(c.kind, 3, "a model call is a client span");
        assert_eq!(parent(c).name, "role", "a model call's parent");
        assert_eq!(text(c, "gen_ai.operation.name"), Some("chat"));
        assert_eq!(text(c, "gen_ai.provider.name"), Some("conclave.sim"));
        assert_eq!(text(c, "gen_ai.request.model"), Some("sim"));
        assert_eq!(text(c, "gen_ai.response.model"), Some("sim"));
        assert_eq!(int(c, "conclave.attempts"), Some(1));
        assert_eq!(flag(c, "conclave.hedged"), Some(false));
        let i = int(c, "gen_ai.usage.input_tokens").expect("input tokens");
        let o = int(c, "gen_ai.usage.output_tokens").expect("output tokens");
        assert!(i > 0 && o > 0);
        let node = text(c, "conclave.node").unwrap().to_string();
        *tokens.entry(node).or_default() += i + o;
        tin += i;
        tout += o;
    }
    let journaled: BTreeMap<String, i64> = trace["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["tokens"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tokens, journaled, "tokens per node: spans and the journal");
    assert_eq!(Some(tin), result["tokens_in"].as_i64());
    assert_eq!(Some(tout), result["tokens_out"].as_i64());
}

/// `conclave serve` in a process of its own, the address it serves read
/// from its standard error; killed when dropped.
struct Serving {
    child: std::process::Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn start(dir: &Path, otlp: &str) -> Self {
        let mut child = std::process::Command::new(conclave_bin())
            .args([
                "serve",
                "team.toml",
                "--listen",
                "127.0.0.1:0",
                "--no-watch",
            ])
            .args(["--otlp-endpoint", otlp])
            .current_dir(dir)
            .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
            .env("CONCLAVE_DATA_DIR", dir.join("data"))
            // Nothing is sent before shutdown (a batch waits ten minutes):
            // what arrives was flushed on SIGTERM.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env_remove("CONCLAVE_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("conclave starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.split(" at http://").nth(1) {
                    let _ = tx.send(at.split("/v1").next().unwrap_or_default().to_string());
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Serving {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flushes_its_spans_when_terminated() {
    let receiver = Receiver::start().await;
    let dir = team_dir();
    let mut server = Serving::start(dir.path(), &receiver.url);
    let reply: Value = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&serde_json::json!({
            "model": "traced",
            "messages": [{"role": "user", "content": "What is 40 + 2?"}],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = reply["conclave"]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    assert!(
        receiver.spans().is_empty(),
        "nothing is exported before the batch is due"
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < until,
            "serve did not stop on SIGTERM: {}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", server.log.lock().unwrap());
    let spans = receiver.run(&run_id, 25).await;
    let run = spans.iter().find(|s| s.name == "run").unwrap();
    assert_eq!(text(run, "conclave.team"), Some("traced"));
    assert_eq!(
        text(run, "conclave.stop"),
        reply["conclave"]["stop"]["stop"].as_str(),
        "{reply}"
    );
    assert_eq!(
        spans.iter().filter(|s| s.name == "task").count(),
        2,
        "both tasks"
    );
    assert!(spans
        .iter()
        .any(|s| s.name == "chat sim" && int(s, "gen_ai.usage.output_tokens").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_does_not_fail_the_run() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = team_dir();
    let o = conclave(
        dir.path(),
        &[
            "run",
            "team.toml",
            "What is 40 + 2?",
            "--gold",
            "42",
            "--json",
            "--otlp-endpoint",
            &url,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o.stderr));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["stop"]["stop"], "decided");
    assert_eq!(result["answer"], "42");
    let err = out(&o.stderr);
    assert!(
        err.contains("OpenTelemetry export to") && err.contains("failed"),
        "the lost spans are reported: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_a_usage_error_naming_the_flag() {
    let dir = team_dir();
    for bad in ["ftp://127.0.0.1:4318", "not a url"] {
        let o = conclave(
            dir.path(),
            &[
                "run",
                "team.toml",
                "What is 40 + 2?",
                "--otlp-endpoint",
                bad,
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = out(&o.stderr);
        assert!(err.contains("--otlp-endpoint"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_the_vote_no_longer_needs_is_exported_as_cancelled() {
    // Two replicas wait an hour on the slow node (it takes two at once);
    // the three on the fast one decide, and the two are cancelled.
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("team.toml"),
        r#"
[team]
name = "early"

[[node]]
name = "fast"
backend = "sim"
accuracy = 1.0
latency = { kind = "constant", value = "10ms" }

[[node]]
name = "slow"
backend = "sim"
accuracy = 1.0
max_concurrency = 2
latency = { kind = "constant", value = "1h" }

[[task]]
id = "answer"
role = "solver"
replicas = 5
verifiers = ["answer-format"]
voter = "majority"
answer_kind = "number"
"#,
    )
    .unwrap();
    let o = conclave(
        dir.path(),
        &[
            "run",
            "team.toml",
            "What is 40 + 2?",
            "--gold",
            "42",
            "--json",
            "--otlp-endpoint",
            &receiver.url,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o.stderr));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    let spans = receiver
        .run(result["run_id"].as_str().unwrap(), 1 + 1 + 5 + 5 + 5)
        .await;
    let replicas: Vec<&Span> = spans.iter().filter(|s| s.name == "replica").collect();
    assert_eq!(replicas.len(), 5);
    let (cancelled, counted): (Vec<&Span>, Vec<&Span>) = replicas
        .into_iter()
        .partition(|r| flag(r, "conclave.cancelled") == Some(true));
    assert_eq!(cancelled.len(), 2, "the two replicas on the slow node");
    for r in &counted {
        assert_eq!(text(r, "conclave.node"), Some("fast"));
        assert_eq!(text(r, "conclave.outcome"), Some("candidate"));
    }
    // Each cancelled replica's model call was on the slow node, cut off
    // with no usage reported.
    for r in &cancelled {
        let role = spans
            .iter()
            .find(|s| s.name == "role" && s.parent_span_id == r.span_id)
            .expect("the cancelled replica's role call");
        let chat = spans
            .iter()
            .find(|s| s.name == "chat sim" && s.parent_span_id == role.span_id)
            .expect("its model call");
        assert_eq!(text(chat, "conclave.node"), Some("slow"));
        assert!(int(chat, "gen_ai.usage.output_tokens").is_none());
    }
    let task = spans.iter().find(|s| s.name == "task").unwrap();
    assert_eq!(text(task, "conclave.stop"), Some("decided"));
    assert!(flag(task, "conclave.cancelled").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_exported_as_errors_with_their_type() {
    // Every call to the only node fails: the router retries, the replica
    // fails, and so do its task and the run.
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("team.toml"),
        r#"
[team]
name = "failing"

[[node]]
name = "broken"
backend = "sim"
error_rate = 1.0

[[task]]
id = "answer"
role = "solver"
replicas = 1
retries = 0
voter = "majority"
answer_kind = "number"
"#,
    )
    .unwrap();
    let o = conclave(
        dir.path(),
        &[
            "run",
            "team.toml",
            "What is 40 + 2?",
            "--json",
            "--otlp-endpoint",
            &receiver.url,
        ],
    )
    .await;
    let result: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", out(&o.stderr)));
    assert_eq!(result["stop"]["stop"], "failed", "{result}");
    let spans = receiver.run(result["run_id"].as_str().unwrap(), 5).await;
    let error = |s: &Span| {
        s.status
            .as_ref()
            .filter(|st| st.code == 2)
            .map(|st| st.message.clone())
    };
    let run = spans.iter().find(|s| s.name == "run").unwrap();
    assert_eq!(text(run, "conclave.stop"), Some("failed"));
    assert!(error(run).is_some_and(|m| !m.is_empty()), "{run:?}");
    let chat = spans
        .iter()
        .find(|s| s.name == "chat sim")
        .expect("the model call");
    assert_eq!(text(chat, "error.type"), Some("unavailable"), "{chat:?}");
    assert!(
        error(chat).is_some_and(|m| m.contains("broken")),
        "{chat:?}"
    );
    assert!(int(chat, "gen_ai.usage.input_tokens").is_none());
    let replica = spans.iter().find(|s| s.name == "replica").unwrap();
    assert!(error(replica).is_some(), "{replica:?}");
}
