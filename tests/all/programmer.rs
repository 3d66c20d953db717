//! The `programmer` role (plugins/roles/programmer, Python built with
//! componentize-py): the model's program runs inside the plugin's sandbox,
//! and programs that loop, allocate, import `os`, reach for the interpreter
//! or spend their time in one C call are stopped, each with its reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use conclave::plugin::{GuestError, Outcome, PluginError};
use conclave::{Grants, Invocation, SandboxLimits};
use conclave_tests::http::{Behaviour, FakeServer};
use conclave_tests::{plugin, prepare_team, run_job, runtime, task, ScriptedServices};

fn program(source: &str) -> String {
    format!("Here is the program:\n```python\n{source}\n```\n")
}

fn with_model(s: std::sync::Arc<ScriptedServices>) -> Invocation {
    Invocation::new(
        Grants {
            llm: true,
            ..Grants::default()
        },
        Some(s),
    )
}

/// Runs the role once against a model that always answers `reply`.
async fn role(
    reply: &str,
    config: &str,
    limits: Option<SandboxLimits>,
) -> (Result<Outcome, PluginError>, u32, String) {
    let rt = runtime();
    let p = rt.load_file(&plugin("programmer")).await.unwrap();
    let s = ScriptedServices::new(reply);
    let mut inv = with_model(s.clone());
    inv.limits = limits;
    let out = rt.run_role(&p, &inv, &task(config)).await;
    let prompt = s.last_prompt.lock().unwrap().clone();
    (out, s.calls.load(Ordering::SeqCst), prompt)
}

#[tokio::test]
async fn the_programs_output_is_the_answer_and_the_program_its_reasoning() {
    let (out, calls, prompt) = role(&program("x = 6\ny = 7\nprint(x * y)"), "", None).await;
    match out.unwrap() {
        Outcome::Candidate(c) => {
            assert_eq!(c.answer, "42");
            assert!(c.text.contains("x = 6\ny = 7\nprint(x * y)"), "{}", c.text);
            assert!(
                c.text.contains("Output:\n42") && c.text.ends_with("Answer: 42"),
                "{}",
                c.text
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 1);
    assert!(
        prompt.contains("```python") && prompt.contains("user: What is 6 * 7?"),
        "{prompt}"
    );
    // A float that is a whole number, and an `answer` variable with no print.
    let (out, ..) = role(&program("answer = 84 / 2"), "", None).await;
    assert!(matches!(out.unwrap(), Outcome::Candidate(c) if c.answer == "42"));
    // Every allowed module is in the component.
    let every = "import bisect, cmath, collections, datetime, decimal, fractions, functools, heapq, itertools, math, re, statistics\n\
                 from fractions import Fraction\n\
                 print(int(Fraction(84, 2)) + math.floor(statistics.mean([0, 0])) + int(decimal.Decimal('0')))";
    let (out, ..) = role(&program(every), "", None).await;
    match out.unwrap() {
        Outcome::Candidate(c) => assert_eq!(c.answer, "42", "{}", c.text),
        other => panic!("{other:?}"),
    }
}

/// Each hostile program fails with its reason; the role asks again once
/// (attempts = 2 by default) with the reason, then gives an empty ballot,
/// which no voter counts.
#[tokio::test]
async fn hostile_programs_are_stopped_each_with_its_reason() {
    let cases = [
        ("while True:\n    pass", "ran past 100000 steps"),
        (
            "n = 0\nwhile True:\n    try:\n        while True:\n            n += 1\n    except:\n        pass",
            "ran past 100000 steps",
        ),
        (
            "f = lambda n: f(n - 1) + f(n - 1) if n else 1\nprint(f(80))",
            "ran past 100000 steps",
        ),
        ("x = [0] * (10 ** 9)\nprint(len(x))", "ran out of memory"),
        (
            "import os\nprint(os.listdir('/'))",
            "import of `os` is not allowed",
        ),
        (
            "from wit_world.imports import llm\nprint(llm)",
            "import from `wit_world.imports` is not allowed",
        ),
        (
            "print(().__class__.__base__.__subclasses__())",
            "attribute `__subclasses__` is not allowed",
        ),
        (
            "g = (i for i in [1])\nprint(g.gi_frame.f_back.f_globals)",
            "attribute `f_globals` is not allowed",
        ),
        (
            "import fractions\nprint(fractions.sys.modules)",
            "AttributeError",
        ),
        ("print(open('/etc/passwd').read())", "name 'open' is not defined"),
        (
            "for i in range(10 ** 5):\n    print(i)",
            "printed more than 4000 characters",
        ),
    ];
    for (source, reason) in cases {
        let (out, calls, prompt) = role(&program(source), "", None).await;
        match out {
            Ok(Outcome::Candidate(c)) => {
                assert_eq!(c.answer, "", "{source}: {}", c.text);
                assert!(
                    c.text.contains("attempt 1: ")
                        && c.text.contains("attempt 2: ")
                        && c.text.contains(reason),
                    "{source}: {}",
                    c.text
                );
            }
            other => panic!("{source}: {other:?}"),
        }
        assert_eq!(calls, 2, "{source}");
        assert!(prompt.contains("That did not work: "), "{source}: {prompt}");
    }
}

/// Work inside one C call is not counted in steps: the host's compute
/// deadline stops the plugin, and the replica fails with a timeout.
#[tokio::test]
async fn a_program_stuck_in_one_c_call_is_stopped_by_the_hosts_deadline() {
    let limits = SandboxLimits {
        deadline: Duration::from_millis(500),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let (out, calls, _) = role(&program("print(sum(range(10 ** 14)))"), "", Some(limits)).await;
    match out {
        Err(PluginError::Timeout { deadline, .. }) => {
            assert_eq!(deadline, Duration::from_millis(500))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 1);
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A program that grows its memory a piece at a time reaches the host's
/// memory cap, which stops the plugin like any other: the replica fails
/// with the cap named.
#[tokio::test]
async fn a_program_that_grows_past_the_memory_cap_is_stopped_by_the_host() {
    let (out, calls, _) = role(
        &program("chunks = []\nfor i in range(10 ** 6):\n    chunks.append('x' * 10 ** 6)\nprint(len(chunks))"),
        "",
        None,
    )
    .await;
    match out {
        Err(PluginError::OutOfMemory { limit_bytes, .. }) => assert_eq!(limit_bytes, 64 << 20),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn bad_config_is_refused_by_name() {
    for (config, field) in [
        (r#"{"attempts": 0}"#, "`attempts`"),
        (r#"{"max_steps": -1}"#, "`max_steps`"),
        (r#"{"max_step": 10}"#, "unknown field `max_step`"),
    ] {
        match role("Answer: 1", config, None).await.0 {
            Err(PluginError::Guest {
                error: GuestError::InvalidConfig(m),
                ..
            }) => assert!(m.contains(field), "{config}: {m}"),
            other => panic!("{config}: {other:?}"),
        }
    }
    // A tighter step bound applies.
    let (out, ..) = role(
        &program("for i in range(50):\n    pass\nprint(i)"),
        r#"{"max_steps": 10, "attempts": 1}"#,
        None,
    )
    .await;
    assert!(matches!(out.unwrap(), Outcome::Candidate(c) if c.text.contains("ran past 10 steps")));
}

/// In a team, over real HTTP: three replicas of a model that writes a
/// looping program each end with an empty ballot; the vote finds nothing to
/// count, and the model was called exactly twice per replica.
#[tokio::test]
async fn a_team_of_programmers_survives_a_model_that_writes_hostile_programs() {
    let looping = FakeServer::always(Behaviour::Reply(program("while True:\n    x = 1"))).await;
    let spec = |url: String| {
        format!(
            r#"
[team]
name = "programs"
consensus = {{ decide = "all" }}

[[node]]
name = "fake"
backend = "openai"
base_url = "{url}"
model = "m"

[[plugin]]
name = "programmer"
grants = ["llm"]

[[task]]
id = "answer"
role = "programmer"
replicas = 3
voter = "majority"
answer_kind = "number"
"#
        )
    };
    let (_dir, team) = prepare_team(&spec(looping.base_url())).await;
    let (r, events) = run_job(&team, "run-programs-1", "What is 6 * 7?", None).await;
    assert!(r.answer.is_none(), "{r:?}");
    assert_eq!(looping.count(), 6, "{r:?}");
    let ballots: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            conclave::team::events::Event::Ballot { ballot, .. } => Some(ballot.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ballots.len(), 3);
    assert!(ballots.iter().all(|t| t.contains("ran past 100000 steps")));

    let good = FakeServer::always(Behaviour::Reply(program("print(6 * 7)"))).await;
    let (_dir, team) = prepare_team(&spec(good.base_url())).await;
    let (r, _) = run_job(&team, "run-programs-2", "What is 6 * 7?", Some("42")).await;
    assert_eq!(r.answer.as_deref(), Some("42"));
    assert_eq!((r.support, good.count()), (3, 3));
}
