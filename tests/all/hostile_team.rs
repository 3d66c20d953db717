//! Hostile roles against the team runtime (plans, the bus, model calls):
//! every attack ends in a typed refusal on that call or task alone, within
//! seconds, the rest of the job goes on, and what the host keeps stays
//! bounded.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave::model::router::{CallTag, HedgeConfig, NodeHandle, Route};
use conclave::model::{Backend, ChatRequest, ChatResponse, Completion, Message, ModelError};
use conclave::model::{Router, RouterConfig};
use conclave::team::consensus::{StopReason, TaskResult};
use conclave::team::events::Event;
use conclave::team::job::JobResult;
use conclave_tests::{fixture, prepare_team, run_job};

/// A team of two sim nodes; the hostile role as plugin `attacker` with
/// `config`, run by task `attack` with `task_extra`; a `bystander` solver
/// task that does not depend on it; `after`, which does.
fn team(team_extra: &str, config: &str, task_extra: &str) -> String {
    format!(
        r#"
[team]
name = "hostile"
answer = "after"
{team_extra}

[[node]]
name = "a"
backend = "sim"
accuracy = 1.0
seed = 1

[[node]]
name = "b"
backend = "sim"
accuracy = 1.0
seed = 2

[[plugin]]
name = "attacker"
path = {path:?}
grants = ["llm", "bus"]
config = {config}

[[plugin]]
name = "solver"
grants = ["llm"]

[[task]]
id = "attack"
role = "attacker"
voter = "majority"
{task_extra}

[[task]]
id = "bystander"
role = "solver"
voter = "majority"
answer_kind = "number"

[[task]]
id = "after"
role = "solver"
voter = "majority"
answer_kind = "number"
depends_on = ["attack"]
"#,
        path = fixture("hostile-role").display().to_string(),
    )
}

/// Runs `spec` once on "What is 6 * 7?", and how long it took; a job
/// that is not over within a minute fails the test (an attack the host did
/// not stop).
async fn attack(spec: &str) -> (JobResult, Vec<Event>, Duration) {
    let (_dir, team) = prepare_team(spec).await;
    let start = Instant::now();
    let job = run_job(&team, "run-hostile", "What is 6 * 7?", Some("42"));
    let (r, events) = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the host stopped the attack within a minute");
    (r, events, start.elapsed())
}

fn task<'a>(r: &'a JobResult, id: &str) -> &'a TaskResult {
    &r.tasks
        .iter()
        .find(|(t, _)| t == id)
        .unwrap_or_else(|| panic!("no task {id} in {:?}", r.tasks))
        .1
}

fn failed(t: &TaskResult) -> &str {
    match &t.stop {
        StopReason::Failed(w) => w,
        other => panic!("expected a failed task, got {other:?}"),
    }
}

/// The bystander decided and the attack's dependent was stopped by it.
fn contained(r: &JobResult) {
    assert_eq!(task(r, "bystander").stop, StopReason::Decided, "{r:?}");
    assert_eq!(task(r, "bystander").answer.as_deref(), Some("42"));
    assert!(
        matches!(&r.stop, StopReason::Failed(w) | StopReason::BudgetExhausted(w)
            if w.contains("did not decide") || w.contains("budget")),
        "{:?}",
        r.stop
    );
}

#[tokio::test]
async fn a_20000_subtask_chain_is_refused_in_seconds() {
    let spec = team("", r#"{ do = "plan", n = 20000, shape = "chain" }"#, "");
    let (r, _, took) = attack(&spec).await;
    let why = failed(task(&r, "attack"));
    // Refused whole: at the sandbox boundary (too many bytes) or by the
    // host's ceiling on subtasks, whichever comes first.
    assert!(
        why.contains("over the limit of") || why.contains("max_plan_subtasks"),
        "{why}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(r.tasks.len(), 3, "no subtask joined the job");
    contained(&r);
}

#[tokio::test]
async fn a_100000_subtask_plan_is_refused_in_seconds() {
    let spec = team("", r#"{ do = "plan", n = 100000 }"#, "");
    let (r, _, took) = attack(&spec).await;
    let why = failed(task(&r, "attack"));
    assert!(
        why.contains("over the limit of") || why.contains("max_plan_subtasks"),
        "{why}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(r.tasks.len(), 3);
    contained(&r);
}

#[tokio::test]
async fn a_plan_past_the_host_ceiling_is_refused_before_it_is_walked() {
    // 10,001 tiny subtasks fit the sandbox's result limit; the host's
    // ceiling refuses them.
    let spec = team("", r#"{ do = "plan", n = 10001, shape = "chain" }"#, "");
    let (r, _, took) = attack(&spec).await;
    let why = failed(task(&r, "attack"));
    assert!(
        why.contains("the plan has 10001 subtasks; no team takes more than 10000"),
        "{why}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    contained(&r);
}

#[tokio::test]
async fn plans_past_the_teams_limits_fail_their_task_naming_the_key() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "",
            r#"{ do = "plan", n = 65 }"#,
            "the plan has 65 subtasks, more than the 64 a plan may have; raise `max_plan_subtasks`",
        ),
        (
            "max_plan_subtasks = 10",
            r#"{ do = "plan", n = 11 }"#,
            "more than the 10 a plan may have",
        ),
        (
            "",
            r#"{ do = "plan-one", id = "t.s" }"#,
            "subtask id \"t.s\" has a character other than",
        ),
        (
            "",
            r#"{ do = "plan-one", id = "after/0" }"#,
            "subtask id \"after/0\" has a character other than",
        ),
        (
            "",
            r#"{ do = "plan-one", role = "majority" }"#,
            "names role \"majority\", which is not a role of this team",
        ),
        (
            "",
            r#"{ do = "plan-one", bytes = 20000 }"#,
            "has a prompt of 20000 bytes, more than the 16384",
        ),
    ];
    for (team_extra, config, want) in cases {
        let (r, _, _) = attack(&team(team_extra, config, "")).await;
        let why = failed(task(&r, "attack"));
        assert!(why.contains(want), "{config}: {why}");
        assert_eq!(r.tasks.len(), 3, "{config}: nothing joined the job");
        contained(&r);
    }
}

#[tokio::test]
async fn a_role_that_always_plans_stops_at_the_depth_cap() {
    // No `subtasks` section: every subtask runs the attacker again.
    let spec = team("", r#"{ do = "always-plan" }"#, "");
    let (r, _, took) = attack(&spec).await;
    let ids: Vec<&str> = r.tasks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        ids,
        [
            "attack",
            "bystander",
            "after",
            "attack.s0",
            "attack.s0.s0",
            "attack.s0.s0.s0"
        ]
    );
    let why = failed(task(&r, "attack.s0.s0.s0"));
    assert!(
        why.starts_with("plan refused: the plan would nest 4 deep, past the 3 plans may nest")
            && why.contains("max_plan_depth"),
        "{why}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    contained(&r);
}

#[tokio::test]
async fn no_task_may_plan_at_depth_zero() {
    let spec = team("max_plan_depth = 0", r#"{ do = "always-plan" }"#, "");
    let (r, _, _) = attack(&spec).await;
    assert!(
        failed(task(&r, "attack")).contains("the plan would nest 1 deep, past the 0"),
        "{r:?}"
    );
    assert_eq!(r.tasks.len(), 3);
}

#[tokio::test]
async fn a_fanning_planner_stops_at_the_jobs_task_cap() {
    let spec = team(
        "max_job_tasks = 60",
        r#"{ do = "always-plan", n = 10 }"#,
        "",
    );
    let (r, _, took) = attack(&spec).await;
    // 3 + 10 from the first plan, then four second-level plans of 10:
    // a fifth would take the job past 60.
    assert_eq!(r.tasks.len(), 53, "{:?}", r.tasks.len());
    let refused: Vec<&str> = r
        .tasks
        .iter()
        .filter_map(|(_, t)| match &t.stop {
            StopReason::Failed(w) if w.starts_with("plan refused") => Some(w.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        refused.iter().any(|w| w.contains("max_job_tasks")),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    contained(&r);
}

#[tokio::test]
async fn the_coordinator_without_subtasks_stops_at_the_depth_cap() {
    let spec = r#"
[team]
name = "coordinator alone"

[[node]]
name = "a"
backend = "sim"

[[task]]
id = "plan"
role = "coordinator"
voter = "majority"

[[task]]
id = "after"
role = "solver"
voter = "majority"
depends_on = ["plan"]
"#;
    let (r, _, took) = attack(spec).await;
    let ids: Vec<&str> = r.tasks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        ids,
        ["plan", "after", "plan.s1", "plan.s1.s1", "plan.s1.s1.s1"]
    );
    let why = failed(task(&r, "plan.s1.s1.s1"));
    assert!(why.contains("max_plan_depth"), "{why}");
    assert!(
        matches!(&r.stop, StopReason::Failed(w) if w.starts_with("dependency plan.s1.s1.s1 did not decide: plan refused")),
        "{:?}",
        r.stop
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// The answers the attack's replicas gave, one per ballot.
fn seen(events: &[Event], task: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ballot {
                task: t, ballot, ..
            } if t == task => Some(ballot.answer.clone()),
            _ => None,
        })
        .collect()
}

/// The number in "VARIANT after N ...".
fn after(s: &str) -> u64 {
    s.split(" after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {s:?}"))
}

fn messages(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { from, to, kind } => Some((from.clone(), to.clone(), kind.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_broadcast_flood_is_bounded_in_bytes_not_copied_per_mailbox() {
    // Four replicas broadcast 60 KB messages to each other as fast as they
    // can: each mailbox takes 1 MiB, and the run 16 MiB in all.
    let spec = team("", r#"{ do = "bus-flood", bytes = 60000 }"#, "replicas = 4");
    let (r, events, took) = attack(&spec).await;
    let answers = seen(&events, "attack");
    assert_eq!(answers.len(), 4, "{r:?}");
    for a in &answers {
        assert!(a.starts_with("full after "), "{a}");
        assert!(after(a) <= 17, "{a}: 17 messages of 60 KB fill a mailbox");
    }
    let total: u64 = answers.iter().map(|a| after(a)).sum();
    assert_eq!(r.messages, total, "every message sent is counted");
    assert!(r.messages * 60_000 <= 16 << 20, "{}", r.messages);
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_as_full_naming_the_key() {
    let spec = team(
        "",
        r#"{ do = "bus-flood", bytes = 70000, to = "self" }"#,
        "",
    );
    let (_, events, _) = attack(&spec).await;
    assert_eq!(seen(&events, "attack"), ["full after 0 messages"]);
    let spec = team(
        "max_message_bytes = 100",
        r#"{ do = "bus-flood", bytes = 200, to = "self" }"#,
        "",
    );
    let (r, events, _) = attack(&spec).await;
    assert_eq!(seen(&events, "attack"), ["full after 0 messages"]);
    assert_eq!(r.messages, 0);
}

#[tokio::test]
async fn a_send_loop_is_stopped_per_call_and_per_run_and_journaled_once_past_the_cap() {
    // Each replica sends to itself and reads its inbox, forever if let.
    let spec = team(
        "max_bus_messages = 300\nmax_journaled_messages = 100",
        r#"{ do = "bus-flood", to = "self", drain = true, bytes = 10 }"#,
        "replicas = 2",
    );
    let (r, events, took) = attack(&spec).await;
    let answers = seen(&events, "attack");
    assert_eq!(answers.len(), 2);
    assert!(
        answers.iter().all(|a| a.starts_with("full after ")),
        "{answers:?}"
    );
    // 256 a call at most; 300 in the run.
    assert!(answers.iter().all(|a| after(a) <= 256), "{answers:?}");
    assert_eq!(answers.iter().map(|a| after(a)).sum::<u64>(), 300);
    assert_eq!(r.messages, 300);
    let journaled = messages(&events);
    assert_eq!(journaled.len(), 101, "100 messages and one summary");
    assert!(
        journaled[100]
            .2
            .starts_with("not journaled: the messages of this run after the first 100"),
        "{:?}",
        journaled[100]
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn a_single_replicas_send_loop_stops_at_the_per_call_cap() {
    let spec = team(
        "",
        r#"{ do = "bus-flood", to = "self", drain = true, bytes = 1 }"#,
        "",
    );
    let (r, events, _) = attack(&spec).await;
    assert_eq!(seen(&events, "attack"), ["full after 256 messages"]);
    assert_eq!(r.messages, 256);
}

fn model_calls(events: &[Event], task: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ModelCall { task: t, .. } if t == task))
        .count()
}

#[tokio::test]
async fn an_llm_loop_is_stopped_at_the_per_call_cap_with_budget_exhausted() {
    let spec = team("", r#"{ do = "llm-loop" }"#, "");
    let (r, events, took) = attack(&spec).await;
    assert_eq!(seen(&events, "attack"), ["budget-exhausted after 16 calls"]);
    assert_eq!(model_calls(&events, "attack"), 16);
    // The role handled the refusal and answered: its task decided.
    assert_eq!(task(&r, "attack").stop, StopReason::Decided);
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn a_replica_that_gives_up_at_the_per_call_cap_ends_its_task_as_budget_exhausted() {
    let spec = team("", r#"{ do = "llm-loop", then = "fail" }"#, "retries = 0");
    let (r, events, _) = attack(&spec).await;
    assert_eq!(model_calls(&events, "attack"), 16);
    match &task(&r, "attack").stop {
        StopReason::BudgetExhausted(w) => {
            assert!(w.contains("a plugin call may make 16 model calls"), "{w}");
            assert!(w.contains("max_calls_per_plugin_call"), "{w}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&r.stop, StopReason::BudgetExhausted(w) if w.contains("max_calls_per_plugin_call")),
        "{:?}",
        r.stop
    );
}

#[tokio::test]
async fn an_llm_loop_over_replicas_stops_at_the_tasks_call_budget() {
    let spec = team(
        "max_calls_per_plugin_call = 1000",
        r#"{ do = "llm-loop", then = "fail" }"#,
        "replicas = 3\nmax_calls = 40",
    );
    let (r, events, took) = attack(&spec).await;
    assert_eq!(model_calls(&events, "attack"), 40);
    assert_eq!(
        task(&r, "attack").stop,
        StopReason::BudgetExhausted("task attack: call budget of 40 spent (40 model calls)".into())
    );
    let failures: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::PluginFailure { task, what, .. } if task == "attack" => Some(what.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.contains("budget-exhausted after") && f.contains("call budget of 40")),
        "{failures:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn every_task_has_a_default_call_budget() {
    // Twenty replicas of sixteen calls would be 320: the default cap of a
    // task is 256. Every replica is waited for, so none is cancelled early.
    let spec = team(
        r#"consensus = { decide = "all" }"#,
        r#"{ do = "llm-loop" }"#,
        "replicas = 20",
    );
    let (r, events, _) = attack(&spec).await;
    assert_eq!(model_calls(&events, "attack"), 256);
    let answers = seen(&events, "attack");
    assert_eq!(answers.len(), 20);
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("budget-exhausted after ")),
        "{answers:?}"
    );
    assert_eq!(answers.iter().map(|a| after(a)).sum::<u64>(), 256);
    assert!(task(&r, "attack").samples >= 20);
}

#[tokio::test]
async fn oversized_model_requests_are_refused_as_protocol_errors() {
    let cases = [
        (
            "",
            r#"{ do = "llm-request", messages = 300 }"#,
            "request too large: 300 messages, at most 256 (`max_request_messages` in [team])",
        ),
        (
            "",
            r#"{ do = "llm-request", stops = 17 }"#,
            "request too large: 17 stop sequences, at most 16",
        ),
        (
            "max_request_bytes = 4096",
            r#"{ do = "llm-request", bytes = 5000 }"#,
            "request too large: 5004 bytes of messages, stop sequences and route, at most 4096",
        ),
    ];
    for (team_extra, config, want) in cases {
        let (r, events, _) = attack(&team(team_extra, config, "")).await;
        let texts: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Ballot { task, ballot, .. } if task == "attack" => Some(ballot.text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(seen(&events, "attack"), ["protocol"], "{config}");
        assert!(texts[0].contains(want), "{config}: {}", texts[0]);
        assert_eq!(model_calls(&events, "attack"), 0, "nothing reached a node");
        assert_eq!(task(&r, "bystander").stop, StopReason::Decided);
    }
}

#[tokio::test]
async fn a_call_larger_than_every_token_window_is_refused_not_waited_on() {
    let spec = team("", r#"{ do = "llm-request", max_tokens = 5000 }"#, "")
        .replace("seed = 1\n", "seed = 1\ntokens_per_minute = 1000\n")
        .replace("seed = 2\n", "seed = 2\ntokens_per_minute = 2000\n");
    let (_, events, took) = attack(&spec).await;
    let texts: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Ballot { task, ballot, .. } if task == "attack" => Some(ballot.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(seen(&events, "attack"), ["unavailable"]);
    assert!(
        texts[0].contains("more than any node that could serve it ever admits")
            && texts[0].contains("a takes 1000 tokens per minute")
            && texts[0].contains("b takes 2000 tokens per minute"),
        "{}",
        texts[0]
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A node that answers at once, except its `hang`-th call, which never
/// answers.
struct Stalls {
    name: String,
    calls: AtomicU32,
    hang: u32,
}

#[async_trait::async_trait]
impl Backend for Stalls {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "test"
    }

    async fn chat(&self, _request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n == self.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(ChatResponse {
            choices: vec![Completion {
                text: "42".into(),
                completion_tokens: 1,
                finish_reason: None,
            }],
            prompt_tokens: 100,
            node: self.name.clone(),
            simulated: false,
        })
    }
}

#[tokio::test]
async fn a_hedge_that_loses_is_charged_for_its_prompt() {
    let mut a = NodeHandle::new(Arc::new(Stalls {
        name: "a".into(),
        calls: AtomicU32::new(0),
        hang: 30,
    }));
    a.price_in = 1.0;
    let config = RouterConfig {
        hedge: HedgeConfig {
            enabled: true,
            quantile: 0.5,
            max_extra: 1.0,
            min_samples: 5,
            idle_quantile: None,
        },
        ..RouterConfig::default()
    };
    let router = Router::new(vec![a], config);
    let tag = CallTag {
        run: "r".into(),
        role: "solver".into(),
    };
    // 400 characters: about 100 prompt tokens by the host's estimate.
    let req = ChatRequest::new(vec![Message::new("user", &"word ".repeat(80))]);
    for _ in 0..30 {
        let r = router.chat(&Route::default(), &tag, &req).await.unwrap();
        assert_eq!(r.lost_tokens, 0, "nothing lost without a hedge");
    }
    let r = router.chat(&Route::default(), &tag, &req).await.unwrap();
    assert!(r.hedged);
    assert_eq!(r.lost_tokens, 100, "the cancelled attempt read the prompt");
    assert!((r.lost_cost - 100.0 / 1e6).abs() < 1e-12, "{}", r.lost_cost);
    let run = router.take_run("r").unwrap();
    // 31 answered calls of 100 prompt tokens, plus the loser's 100.
    assert_eq!(run.counts.tokens_in, 31 * 100 + 100);
}
