//! Hostile plugins: every misbehaviour becomes a typed error on that call
//! alone, the sandbox grants nothing by default, and the host keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave::plugin::{Decision, PluginError, TrapKind};
use conclave::{Invocation, Plugin, PluginRuntime, RuntimeConfig, SandboxLimits};
use conclave_tests::{ballot, fixture, plugin, runtime, runtime_with, task};

async fn hostile(rt: &PluginRuntime) -> Plugin {
    rt.load_file(&fixture("hostile")).await.unwrap()
}

fn with_deadline(ms: u64) -> Invocation {
    Invocation {
        limits: Some(SandboxLimits {
            deadline: Duration::from_millis(ms),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(rt: &PluginRuntime, p: &Plugin, what: &str) -> Result<Decision, PluginError> {
    rt.tally(
        p,
        &with_deadline(300),
        &task(&format!("{{\"do\":\"{what}\"}}")),
        &[ballot("1")],
    )
    .await
}

fn answer(d: Decision) -> String {
    match d {
        Decision::Decided(d) => d.answer,
        other => panic!("expected a decided answer, got {other:?}"),
    }
}

#[tokio::test]
async fn endless_loop_is_interrupted_at_its_deadline_and_the_next_call_is_served() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let start = Instant::now();
    let e = run(&rt, &p, "loop").await.unwrap_err();
    let took = start.elapsed();
    match e {
        PluginError::Timeout { plugin, deadline } => {
            assert_eq!(plugin, "hostile@0.1.0");
            assert_eq!(deadline, Duration::from_millis(300));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300),
        "stopped before its deadline: {took:?}"
    );
    assert_eq!(answer(run(&rt, &p, "clock").await.unwrap()), "clock: 0");
}

#[tokio::test]
async fn allocating_past_the_memory_cap_is_out_of_memory() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let inv = Invocation {
        limits: Some(SandboxLimits {
            memory_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = rt
        .tally(&p, &inv, &task("{\"do\":\"oom\"}"), &[])
        .await
        .unwrap_err();
    match e {
        PluginError::OutOfMemory { limit_bytes, .. } => assert_eq!(limit_bytes, 16 << 20),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(answer(run(&rt, &p, "clock").await.unwrap()), "clock: 0");
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let rt = runtime();
    let p = hostile(&rt).await;
    match run(&rt, &p, "recurse").await.unwrap_err() {
        PluginError::Trap { trap, .. } => assert_eq!(trap, TrapKind::StackOverflow),
        other => panic!("expected a trap, got {other:?}"),
    }
    // A Rust guest keeps large locals on its shadow stack in linear memory;
    // running that out is an out-of-bounds access, also typed.
    match run(&rt, &p, "recurse-big").await.unwrap_err() {
        PluginError::Trap { trap, .. } => assert_eq!(trap, TrapKind::MemoryOutOfBounds),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(answer(run(&rt, &p, "clock").await.unwrap()), "clock: 0");
}

#[tokio::test]
async fn a_guest_panic_is_a_trap_carrying_the_panic_message() {
    let rt = runtime();
    let p = hostile(&rt).await;
    match run(&rt, &p, "panic").await.unwrap_err() {
        PluginError::Trap { trap, message, .. } => {
            assert_eq!(trap, TrapKind::Unreachable);
            assert!(
                message.contains("hostile plugin panicked on purpose"),
                "{message}"
            );
            assert!(message.starts_with("panicked at "), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn files_environment_sockets_and_clocks_are_not_granted() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let file = answer(run(&rt, &p, "read-file").await.unwrap());
    assert!(file.starts_with("denied file:"), "{file}");
    assert_eq!(
        answer(run(&rt, &p, "env").await.unwrap()),
        "env vars seen: 0"
    );
    let socket = answer(run(&rt, &p, "socket").await.unwrap());
    assert!(socket.starts_with("denied socket:"), "{socket}");
    assert_eq!(answer(run(&rt, &p, "clock").await.unwrap()), "clock: 0");
}

#[tokio::test]
async fn flooding_stdout_is_capped_not_fatal() {
    let rt = runtime();
    let p = hostile(&rt).await;
    assert_eq!(answer(run(&rt, &p, "print").await.unwrap()), "printed");
}

#[tokio::test]
async fn log_needs_its_grant() {
    let rt = runtime();
    let p = hostile(&rt).await;
    assert_eq!(answer(run(&rt, &p, "log").await.unwrap()), "logged");
    let inv = Invocation {
        grants: conclave::Grants::none(),
        ..Default::default()
    };
    match rt
        .tally(&p, &inv, &task("{\"do\":\"log\"}"), &[])
        .await
        .unwrap_err()
    {
        PluginError::CapabilityDenied { capability, .. } => {
            assert_eq!(capability, conclave::Capability::Log)
        }
        other => panic!("expected CapabilityDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn calling_llm_without_the_grant_is_a_capability_error() {
    let rt = runtime();
    let judge = rt.load_file(&plugin("llm-judge")).await.unwrap();
    let e = rt
        .verify(
            &judge,
            &Invocation::default(),
            &task(""),
            &conclave_tests::candidate("42", 0),
        )
        .await
        .unwrap_err();
    match &e {
        PluginError::CapabilityDenied { plugin, capability } => {
            assert_eq!(plugin, "llm-judge@0.1.0");
            assert_eq!(*capability, conclave::Capability::Llm);
        }
        other => panic!("expected CapabilityDenied, got {other:?}"),
    }
    assert!(
        e.to_string().contains("without the `llm` capability"),
        "{e}"
    );
}

#[tokio::test]
async fn malformed_output_and_guest_errors_are_typed() {
    let rt = runtime();
    let p = hostile(&rt).await;
    match run(&rt, &p, "bad-output").await.unwrap_err() {
        PluginError::BadOutput { reason, .. } => {
            assert!(reason.contains("support 99 of 1"), "{reason}")
        }
        other => panic!("expected BadOutput, got {other:?}"),
    }
    match run(&rt, &p, "fail").await.unwrap_err() {
        PluginError::Guest { error, .. } => {
            assert_eq!(
                error,
                conclave::plugin::GuestError::Internal("failing on purpose".into())
            )
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
    match run(&rt, &p, "nonsense").await.unwrap_err() {
        PluginError::Guest {
            error: conclave::plugin::GuestError::InvalidConfig(m),
            ..
        } => {
            assert!(m.contains("nonsense"), "{m}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_serving_while_plugins_misbehave() {
    let rt = runtime_with(RuntimeConfig::default());
    let bad = hostile(&rt).await;
    let good = rt.load_file(&plugin("majority")).await.unwrap();
    let mut misbehaving = Vec::new();
    for what in ["loop", "panic", "recurse", "oom", "loop"] {
        let (rt, bad) = (Arc::clone(&rt), bad.clone());
        misbehaving.push(tokio::spawn(async move {
            let inv = Invocation {
                limits: Some(SandboxLimits {
                    deadline: Duration::from_millis(500),
                    memory_bytes: 8 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            };
            rt.tally(&bad, &inv, &task(&format!("{{\"do\":\"{what}\"}}")), &[])
                .await
        }));
    }
    let ballots = [ballot("7"), ballot("7"), ballot("8")];
    for _ in 0..200 {
        let d = rt
            .tally(&good, &Invocation::default(), &task(""), &ballots)
            .await
            .unwrap();
        assert_eq!(answer(d), "7");
    }
    for h in misbehaving {
        assert!(h.await.unwrap().is_err());
    }
}
