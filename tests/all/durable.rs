//! Durable re-execution: a role waiting on a model holds no plugin
//! instance, sees exactly what it saw when it runs again from the start,
//! and is named when it does not repeat itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave::plugin::bindings::{bus, llm};
use conclave::plugin::{CallInfo, Grants, Invocation, Outcome, Plugin, PluginError};
use conclave::{HostServices, PluginRuntime, RuntimeConfig};
use conclave_tests::{fixture, plugin, runtime_with, task};
use proptest::prelude::*;

use super::server::{ask, metric, slow_team, start_team, until_metric};

/// Model replies that differ with every call (so a model call made twice
/// would show in what the role saw), a bus inbox that is emptied when read
/// (so an inbox read again instead of replayed would show), and counts.
#[derive(Default)]
struct Recording {
    chats: AtomicU32,
    sends: AtomicU32,
    inbox: Mutex<VecDeque<bus::Envelope>>,
}

impl Recording {
    fn new() -> Arc<Self> {
        let r = Recording::default();
        for body in ["first", "second"] {
            r.inbox.lock().unwrap().push_back(envelope(body));
        }
        Arc::new(r)
    }
}

fn envelope(body: &str) -> bus::Envelope {
    bus::Envelope {
        sender: "other/0".into(),
        recipient: "t/0".into(),
        kind: "note".into(),
        body: body.into(),
        correlation_id: String::new(),
    }
}

#[async_trait::async_trait]
impl HostServices for Recording {
    async fn chat(
        &self,
        _call: &CallInfo,
        request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        let n = self.chats.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(llm::ChatResponse {
            text: format!("reply {n} to {}", request.messages[0].content),
            node: format!("node-{}", n % 3),
            prompt_tokens: 3,
            completion_tokens: 2,
        })
    }

    fn send(&self, _call: &CallInfo, message: bus::Envelope) -> Result<(), bus::BusError> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        self.inbox.lock().unwrap().push_back(message);
        Ok(())
    }

    fn inbox(&self, _call: &CallInfo) -> Vec<bus::Envelope> {
        self.inbox.lock().unwrap().drain(..).collect()
    }
}

fn role_call(services: Arc<dyn HostServices>) -> Invocation {
    let mut inv = Invocation::new(
        Grants {
            llm: true,
            bus: true,
            ..Grants::default()
        },
        Some(services),
    );
    inv.info = CallInfo {
        run_id: "run-test".into(),
        task_id: "t".into(),
        replica: 0,
        ..Default::default()
    };
    inv
}

/// What `steps` saw on `rt`: the candidate's answer (a digest of every
/// answer the host gave), its text, its node, and the model calls and
/// messages the host made for it.
async fn script(
    rt: &PluginRuntime,
    role: &Plugin,
    steps: &str,
) -> (String, String, String, u32, u32) {
    let services = Recording::new();
    let config = format!(r#"{{"do": "script", "steps": "{steps}"}}"#);
    let out = rt
        .run_role(role, &role_call(services.clone()), &task(&config))
        .await
        .unwrap_or_else(|e| panic!("script {steps:?}: {e}"));
    let Outcome::Candidate(c) = out else {
        panic!("script {steps:?} planned")
    };
    (
        c.answer,
        c.text,
        c.node,
        services.chats.load(Ordering::SeqCst),
        services.sends.load(Ordering::SeqCst),
    )
}

/// A solver replica's call: `llm` granted, on `services`.
fn solver_call(services: Arc<dyn HostServices>, replica: u32) -> Invocation {
    let mut inv = Invocation::new(
        Grants {
            llm: true,
            ..Grants::default()
        },
        Some(services),
    );
    inv.info.replica = replica;
    inv
}

fn runtime(reexecute: bool) -> Arc<PluginRuntime> {
    runtime_with(RuntimeConfig {
        reexecute,
        ..RuntimeConfig::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A role making model calls, random draws, inbox reads, sends and log
    /// lines in any order sees the same answers when it is run again from
    /// the start after each model call as when it runs straight through,
    /// and the host makes each model call and sends each message once.
    #[test]
    fn a_role_sees_the_same_whether_re_executed_or_run_straight_through(
        steps in proptest::collection::vec(prop::sample::select(vec!['c', 'r', 'i', 's', 'l']), 0..12)
    ) {
        let steps: String = steps.into_iter().collect();
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let (again, straight) = tokio.block_on(async {
            let (durable, held) = (runtime(true), runtime(false));
            let role = durable.load_file(&fixture("hostile-role")).await.unwrap();
            let held_role = held.load_file(&fixture("hostile-role")).await.unwrap();
            let before = durable.load().steps;
            let again = script(&durable, &role, &steps).await;
            let taken = durable.load().steps - before;
            let models = steps.matches('c').count() as u64;
            assert_eq!(taken, 1 + models, "one step, and one more per model call");
            (again, script(&held, &held_role, &steps).await)
        });
        prop_assert_eq!(&again, &straight);
        prop_assert_eq!(again.3 as usize, steps.matches('c').count());
        prop_assert_eq!(again.4 as usize, steps.matches('s').count());
    }
}

/// A role that draws differently when it runs again (here because each
/// step is given another random seed, the fault this injects) is stopped
/// at the first host call that differs, and the error names the plugin,
/// the call and what differed.
#[tokio::test]
async fn a_role_that_does_not_repeat_itself_is_named_with_the_call_where_it_diverged() {
    let rt = runtime_with(RuntimeConfig {
        reseed_each_step: true,
        ..RuntimeConfig::default()
    });
    let role = rt.load_file(&fixture("hostile-role")).await.unwrap();
    let services = Recording::new();
    // The draw comes first and goes into the model request.
    let e = rt
        .run_role(
            &role,
            &role_call(services.clone()),
            &task(r#"{"do": "script", "steps": "rc"}"#),
        )
        .await
        .unwrap_err();
    match &e {
        PluginError::Nondeterministic {
            plugin,
            call,
            reason,
        } => {
            assert_eq!(plugin, &role.id());
            assert_eq!(*call, 1);
            assert!(reason.contains("llm.chat with other arguments"), "{reason}");
        }
        other => panic!("expected Nondeterministic, got {other}"),
    }
    assert!(
        e.to_string()
            .contains("not deterministic under re-execution"),
        "{e}"
    );
    assert_eq!(
        services.chats.load(Ordering::SeqCst),
        1,
        "the first request was made once"
    );
    // Without draws before the model call the same role repeats itself.
    let fine = rt
        .run_role(
            &role,
            &role_call(Recording::new()),
            &task(r#"{"do": "script", "steps": "cr"}"#),
        )
        .await;
    assert!(fine.is_ok(), "{fine:?}");
}

/// Model replies held back until `n` calls wait at once: the calls can
/// only all arrive if waiting on a model holds no instance slot. A call
/// that waits `give_up` without the others arriving fails with a timeout.
struct Gathering {
    n: usize,
    /// Calls waiting now; a call that gives up leaves.
    waiting: std::sync::atomic::AtomicUsize,
    /// Set once `n` calls waited at once.
    all: std::sync::atomic::AtomicBool,
    came: tokio::sync::Notify,
    give_up: Duration,
}

/// Takes a waiting call off the count when it ends or gives up.
struct Leaves<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Leaves<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl HostServices for Gathering {
    async fn chat(
        &self,
        _call: &CallInfo,
        _request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        let _leaves = Leaves(&self.waiting);
        if now >= self.n {
            self.all.store(true, Ordering::SeqCst);
            self.came.notify_waiters();
        }
        let all_came = async {
            loop {
                let came = self.came.notified();
                if self.all.load(Ordering::SeqCst) {
                    return;
                }
                came.await;
            }
        };
        match tokio::time::timeout(self.give_up, all_came).await {
            Ok(()) => Ok(llm::ChatResponse {
                text: "6 * 7 = 42.\nAnswer: 42".into(),
                node: "gathering".into(),
                prompt_tokens: 5,
                completion_tokens: 5,
            }),
            Err(_) => Err(llm::LlmError::Timeout("the others never came".into())),
        }
    }
}

async fn replicas_at_once(
    rt: &Arc<PluginRuntime>,
    n: usize,
    give_up: Duration,
) -> Vec<Result<Outcome, PluginError>> {
    let solver = rt.load_file(&plugin("solver")).await.unwrap();
    let services: Arc<dyn HostServices> = Arc::new(Gathering {
        n,
        waiting: Default::default(),
        all: Default::default(),
        came: tokio::sync::Notify::new(),
        give_up,
    });
    let calls = (0..n).map(|replica| {
        let (rt, solver, services) = (rt.clone(), solver.clone(), services.clone());
        tokio::spawn(async move {
            rt.run_role(&solver, &solver_call(services, replica as u32), &task(""))
                .await
        })
    });
    let mut out = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        out.push(c.await.unwrap());
    }
    out
}

/// With the instance pool cut to 8 slots, 1,000 replicas wait on their
/// model at once and all answer; a runtime that holds the instance while
/// waiting (re-execution off) cannot get even 16 to wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_eight_instance_slots_a_thousand_replicas_wait_on_models_at_once() {
    let rt = runtime_with(RuntimeConfig {
        max_concurrent_calls: 8,
        ..RuntimeConfig::default()
    });
    let out = replicas_at_once(&rt, 1000, Duration::from_secs(300)).await;
    let answered = out
        .iter()
        .filter(
            |o| matches!(o, Ok(Outcome::Candidate(c)) if c.answer == "42" && c.node == "gathering"),
        )
        .count();
    assert_eq!(
        answered,
        1000,
        "first failure: {:?}",
        out.iter().find(|o| o.is_err())
    );
    let load = rt.load();
    assert_eq!(
        (load.running, load.waiting_on_model, load.replicas),
        (0, 0, 0)
    );

    let held = runtime_with(RuntimeConfig {
        max_concurrent_calls: 8,
        reexecute: false,
        ..RuntimeConfig::default()
    });
    let out = replicas_at_once(&held, 16, Duration::from_secs(2)).await;
    let answered = out
        .iter()
        .filter(|o| matches!(o, Ok(Outcome::Candidate(c)) if c.answer == "42"))
        .count();
    assert_eq!(
        answered, 0,
        "8 slots held while waiting: the 16 never all wait at once"
    );
}

/// Past `max_replicas` a replica waits for admission, holding nothing, and
/// goes on when one ends: 12 replicas through a bound of 4 all answer, and
/// no more than 4 ever wait on a model at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_past_the_bound_wait_for_admission_and_then_run() {
    let rt = runtime_with(RuntimeConfig {
        max_replicas: Some(4),
        ..RuntimeConfig::default()
    });
    assert_eq!(rt.load().max_replicas, 4);
    let solver = rt.load_file(&plugin("solver")).await.unwrap();
    let services =
        conclave_tests::ScriptedServices::with("Answer: 42", Duration::from_millis(200), vec![]);
    let peak = Arc::new(AtomicU32::new(0));
    let peak_on_model = Arc::new(AtomicU32::new(0));
    let watcher = {
        let (rt, peak, on_model) = (rt.clone(), peak.clone(), peak_on_model.clone());
        tokio::spawn(async move {
            loop {
                let l = rt.load();
                peak.fetch_max(l.replicas as u32, Ordering::SeqCst);
                on_model.fetch_max(l.waiting_on_model as u32, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let calls: Vec<_> = (0..12)
        .map(|replica| {
            let (rt, solver, services) = (rt.clone(), solver.clone(), services.clone());
            tokio::spawn(async move {
                rt.run_role(&solver, &solver_call(services, replica), &task(""))
                    .await
            })
        })
        .collect();
    let mut answered = 0;
    for c in calls {
        if let Ok(Outcome::Candidate(c)) = c.await.unwrap() {
            answered += (c.answer == "42") as u32;
        }
    }
    watcher.abort();
    assert_eq!(answered, 12);
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(peak_on_model.load(Ordering::SeqCst), 4);
    assert_eq!(services.calls.load(Ordering::SeqCst), 12);
}

/// The same seeded job journals the same records whether its replicas ran
/// in steps or straight through: a replayed host call writes nothing, and
/// no model call is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_execution_writes_no_record_a_straight_run_does_not() {
    use conclave::journal::sqlite::SqliteJournal;
    use conclave::journal::Journal;
    use conclave::team::events::{Event, Quiet};
    use conclave::team::job::PreparedTeam;
    use conclave::team::submit::Job;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.toml");
    let text = format!("{}\n[router]\nseed = 7\n", super::journal::TEAM);
    std::fs::write(&path, &text).unwrap();
    let mut kinds = Vec::new();
    for reexecute in [true, false] {
        let spec = conclave::spec::team::TeamSpec::parse(&text, &path).unwrap();
        let team = PreparedTeam::prepare(spec, runtime(reexecute), &conclave_tests::plugin_dir())
            .await
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(data.path()).unwrap();
        let done = team
            .submit(
                &Job::new("run-same", "What is 40 + 2?", Some("42")),
                journal.clone() as Arc<dyn Journal>,
                None,
                Arc::new(Quiet),
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
        assert!(done.journal_error.is_none(), "{:?}", done.journal_error);
        let log = journal.read("run-same").unwrap();
        let events: Vec<String> = log
            .events()
            .map(|(_, e)| match e {
                // What a replica's model call was, without its timing.
                Event::ModelCall {
                    task,
                    replica,
                    call,
                    text,
                    replayed,
                    ..
                } => format!("model-call {task}/{replica}#{call} {text:?} replayed={replayed}"),
                other => other.name().to_string(),
            })
            .collect();
        kinds.push((log.records.len(), events));
    }
    assert_eq!(kinds[0].0, kinds[1].0, "as many records either way");
    let (mut a, mut b) = (kinds[0].1.clone(), kinds[1].1.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let calls = a.iter().filter(|e| e.starts_with("model-call")).count();
    assert!(calls >= 9, "3 tasks of 3 replicas: {calls} model calls");
    assert!(a.iter().all(|e| !e.contains("replayed=true")));
}

/// What `serve` shows of it: `/metrics` and `/ui`'s `/v1/runs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_replicas_waiting_on_their_model_holding_no_instance() {
    let s = start_team(&slow_team("2s"), |_| {}).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let asked = tokio::spawn(c.post(&url).json(&ask("What is 1 + 1?")).send());
    // The three replicas wait on their node at once, none in an instance.
    until_metric(&c, &s.base, "conclave_replicas_waiting_on_model", 3.0).await;
    assert_eq!(
        metric(&c, &s.base, "conclave_replicas_in_flight").await,
        3.0
    );
    assert_eq!(
        metric(&c, &s.base, "conclave_plugin_instances_running").await,
        0.0
    );
    assert_eq!(
        metric(&c, &s.base, "conclave_plugin_instance_slots").await,
        128.0
    );
    assert!(metric(&c, &s.base, "conclave_replicas_max").await >= 1024.0);
    // `/ui` reads the same from `/v1/runs`.
    let runs: serde_json::Value = c
        .get(format!("{}/v1/runs", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs["load"]["waiting_on_model"], 3, "{runs}");
    assert_eq!(asked.await.unwrap().unwrap().status(), 200);
    until_metric(&c, &s.base, "conclave_replicas_in_flight", 0.0).await;
    // Each replica took a step up to its model call, and at least the two
    // that decided (a majority of 3) a second one after it.
    assert!(metric(&c, &s.base, "conclave_plugin_steps_total").await >= 5.0);
    s.shutdown.cancel();
}

/// The same through a team's vote: with 8 instance slots, 200 questions to
/// a team of 5 replicas (1,000 replicas) on a node that takes 3 s a call
/// all wait on their model at once, and every question is decided by its
/// 5 ballots, journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_eight_instance_slots_a_thousand_replicas_of_a_team_all_decide() {
    use conclave::journal::sqlite::SqliteJournal;
    use conclave::journal::Journal;
    use conclave::team::consensus::StopReason;
    use conclave::team::events::Quiet;
    use conclave::team::job::PreparedTeam;
    use conclave::team::submit::Job;

    let text = r#"
[team]
name = "many"
consensus = { decide = "all" }

[[node]]
name = "sim"
backend = "sim"
accuracy = 1.0
seed = 3
latency = { kind = "lognormal", median = "3s", sigma = 0.01 }

[[task]]
id = "answer"
role = "solver"
replicas = 5
voter = "majority"
answer_kind = "number"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, text).unwrap();
    let rt = runtime_with(RuntimeConfig {
        max_concurrent_calls: 8,
        ..RuntimeConfig::default()
    });
    let spec = conclave::spec::team::TeamSpec::parse(text, &path).unwrap();
    let team = Arc::new(
        PreparedTeam::prepare(spec, rt.clone(), &conclave_tests::plugin_dir())
            .await
            .unwrap(),
    );
    let journal: Arc<dyn Journal> = SqliteJournal::open(&dir.path().join("data")).unwrap();
    // The most replicas seen waiting on their model at once.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = {
        let (rt, peak) = (rt.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    rt.load().waiting_on_model,
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let runs = (0..200u32).map(|i| {
        let (team, journal) = (team.clone(), journal.clone());
        tokio::spawn(async move {
            let gold = (i + 2).to_string();
            let done = team
                .submit(
                    &Job::new(
                        &format!("run-{i}"),
                        &format!("What is {i} + 2?"),
                        Some(&gold),
                    ),
                    journal,
                    None,
                    Arc::new(Quiet),
                    tokio_util::sync::CancellationToken::new(),
                )
                .await;
            (gold, done)
        })
    });
    let mut decided = 0;
    for r in runs.collect::<Vec<_>>() {
        let (gold, done) = r.await.unwrap();
        assert!(done.journal_error.is_none(), "{:?}", done.journal_error);
        let r = done.result;
        assert!(
            matches!(r.stop, StopReason::Decided),
            "{}: {:?} ({:?})",
            r.run_id,
            r.stop,
            r.tasks
        );
        assert_eq!(r.answer.as_deref(), Some(gold.as_str()), "{}", r.run_id);
        assert_eq!((r.support, r.total), (5, 5), "{}", r.run_id);
        decided += 1;
    }
    probe.abort();
    assert_eq!(decided, 200);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak >= 900,
        "only {peak} replicas waited on their model at once"
    );
    assert_eq!(rt.load().running, 0);
}
