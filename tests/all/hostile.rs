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

/// Runs `f`, failing the test if it has not finished within `secs`: a
/// bound on a hang, not a claim about speed.
async fn bounded<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("the host did not stop the plugin")
}

#[tokio::test]
async fn sleeping_in_wasi_counts_against_the_compute_deadline() {
    let rt = runtime();
    let p = hostile(&rt).await;
    for what in ["sleep", "sleep-forever"] {
        match bounded(30, run(&rt, &p, what)).await.unwrap_err() {
            PluginError::Timeout { plugin, deadline } => {
                assert_eq!(plugin, "hostile@0.1.0");
                assert_eq!(deadline, Duration::from_millis(300));
            }
            other => panic!("{what}: expected Timeout, got {other:?}"),
        }
    }
    assert_eq!(answer(run(&rt, &p, "clock").await.unwrap()), "clock: 0");
}

fn role_inv(services: Arc<conclave_tests::ScriptedServices>, limits: SandboxLimits) -> Invocation {
    Invocation {
        grants: conclave::Grants::of(&[conclave::Capability::Llm]),
        limits: Some(limits),
        services: Some(services),
        info: conclave::plugin::CallInfo {
            run_id: "run-test".into(),
            task_id: "t".into(),
            replica: 3,
            ..Default::default()
        },
    }
}

async fn forge(
    rt: &PluginRuntime,
    what: &str,
    services: Arc<conclave_tests::ScriptedServices>,
    limits: SandboxLimits,
) -> Result<conclave::plugin::Outcome, PluginError> {
    let p = rt.load_file(&fixture("forger")).await.unwrap();
    let inv = role_inv(services, limits);
    rt.run_role(&p, &inv, &task(&format!("{{\"do\":\"{what}\"}}")))
        .await
}

#[tokio::test]
async fn a_sleeping_role_is_stopped_and_a_slow_model_is_bounded_by_the_wall_limit() {
    let rt = runtime();
    let quick = conclave_tests::ScriptedServices::new("Answer: 42");
    let limits = SandboxLimits {
        deadline: Duration::from_millis(300),
        ..Default::default()
    };
    match bounded(30, forge(&rt, "sleep", quick, limits)).await {
        Err(PluginError::Timeout { deadline, .. }) => {
            assert_eq!(deadline, Duration::from_millis(300))
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // Waiting on a model is not compute, but it is wall time.
    let slow =
        conclave_tests::ScriptedServices::with("Answer: 42", Duration::from_secs(3600), vec![]);
    let limits = SandboxLimits {
        deadline: Duration::from_millis(300),
        wall: Duration::from_millis(800),
        ..Default::default()
    };
    match bounded(30, forge(&rt, "claim-node", slow, limits)).await {
        Err(PluginError::WallTimeout { wall, .. }) => assert_eq!(wall, Duration::from_millis(800)),
        other => panic!("expected WallTimeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_describe_that_sleeps_is_stopped_and_named_by_its_file() {
    let rt = runtime();
    let path = fixture("describe-sleep");
    let e = bounded(30, rt.load_file(&path)).await.unwrap_err();
    match &e {
        PluginError::Timeout { plugin, .. } => {
            assert!(plugin.contains("describe-sleep.wasm"), "{plugin}")
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("describe-sleep.wasm"), "{e}");
}

#[tokio::test]
async fn oversized_results_are_refused_with_their_size() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let inv = Invocation::default();
    for (what, field) in [
        ("huge-answer", "its decision"),
        ("huge-runner-up", "its decision"),
        ("huge-reason", "its decision"),
        ("huge-error", "its error"),
    ] {
        let e = rt
            .tally(
                &p,
                &inv,
                &task(&format!("{{\"do\":\"{what}\"}}")),
                &[ballot("1")],
            )
            .await
            .unwrap_err();
        match e {
            PluginError::TooLarge {
                what, bytes, limit, ..
            } => {
                assert_eq!(what, field);
                assert!(bytes >= 50 << 20, "{bytes}");
                assert_eq!(limit, 1 << 20);
            }
            other => panic!("{what}: expected TooLarge, got {other:?}"),
        }
    }
    let e = rt.load_file(&fixture("describe-huge")).await.unwrap_err();
    match e {
        PluginError::TooLarge { what, bytes, .. } => {
            assert!(what.contains("description"), "{what}");
            assert_eq!(bytes, 40 << 20);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let services = conclave_tests::ScriptedServices::new("Answer: 42");
    match forge(&rt, "huge-text", services.clone(), SandboxLimits::default()).await {
        Err(PluginError::TooLarge { what, .. }) => assert_eq!(what, "its outcome"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match forge(
        &rt,
        "huge-message",
        services.clone(),
        SandboxLimits::default(),
    )
    .await
    {
        Err(PluginError::TooLarge { what, bytes, .. }) => {
            assert!(what.contains("llm.chat"), "{what}");
            assert!(bytes >= 50 << 20);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The oversized message never reached the model.
    assert_eq!(
        services.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only huge-text's call"
    );
}

#[tokio::test]
async fn candidate_fields_are_the_hosts_to_vouch_for() {
    let rt = runtime();
    let services = conclave_tests::ScriptedServices::new("Answer: 42");
    match forge(
        &rt,
        "claim-node",
        services.clone(),
        SandboxLimits::default(),
    )
    .await
    {
        Ok(conclave::plugin::Outcome::Candidate(c)) => {
            assert_eq!(c.node, "scripted", "the node the host routed to");
            assert_eq!(c.replica, 3, "the replica the host called");
        }
        other => panic!("expected a candidate, got {other:?}"),
    }
    for what in ["nan", "inf", "huge-negative"] {
        match forge(&rt, what, services.clone(), SandboxLimits::default()).await {
            Err(PluginError::BadOutput { reason, .. }) => {
                assert!(reason.contains("confidence"), "{what}: {reason}")
            }
            other => panic!("{what}: expected BadOutput, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn exit_and_traps_carry_what_the_plugin_printed() {
    let rt = runtime();
    let p = hostile(&rt).await;
    // WASI 0.2's `exit` carries success or failure only: exit(3) is 1.
    match run(&rt, &p, "exit").await.unwrap_err() {
        e @ PluginError::Exit { code: 1, .. } => {
            assert!(e.to_string().contains("called exit(1)"), "{e}")
        }
        other => panic!("expected Exit, got {other:?}"),
    }
    match run(&rt, &p, "stderr-then-abort").await.unwrap_err() {
        PluginError::Trap { message, .. } => {
            assert!(
                message.contains("ValueError: the hostile plugin gave up"),
                "{message}"
            );
            assert!(message.contains("Traceback"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn randomness_is_the_same_for_the_same_call_and_differs_between_calls() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let draw = |run_id: &str| {
        let (rt, p) = (rt.clone(), p.clone());
        let mut t = task("{\"do\":\"random\"}");
        t.run_id = run_id.into();
        let inv = Invocation {
            info: conclave::plugin::CallInfo {
                run_id: run_id.into(),
                task_id: "t".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        async move { answer(rt.tally(&p, &inv, &t, &[]).await.unwrap()) }
    };
    let a = draw("run-a").await;
    assert!(a.starts_with("random: "), "{a}");
    assert_eq!(a, draw("run-a").await);
    assert_ne!(a, draw("run-b").await);
}

#[tokio::test]
async fn a_component_that_imports_wasi_http_loads_and_every_request_is_denied() {
    let rt = runtime();
    let p = rt.load_file(&fixture("http-voter")).await.unwrap();
    let said = answer(
        rt.tally(&p, &Invocation::default(), &task(""), &[])
            .await
            .unwrap(),
    );
    assert!(said.starts_with("denied: "), "{said}");
    assert!(said.contains("HttpRequestDenied"), "{said}");
}

#[tokio::test]
async fn a_log_flood_keeps_only_the_calls_quota() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if e.metadata().target() == "conclave::plugin" {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    use tracing_subscriber::layer::SubscriberExt;
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(Count(seen.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = runtime();
    let p = hostile(&rt).await;
    let inv = Invocation {
        limits: Some(SandboxLimits {
            deadline: Duration::from_secs(30),
            ..Default::default()
        }),
        ..Default::default()
    };
    let d = rt
        .tally(&p, &inv, &task("{\"do\":\"log-flood\"}"), &[])
        .await
        .unwrap();
    assert_eq!(answer(d), "flooded");
    let n = seen.load(Ordering::SeqCst);
    // 16 KiB of 4 KiB lines is 4 lines, plus one note of what was dropped.
    assert_eq!(n, 5, "log events kept");
}

#[tokio::test]
async fn a_device_or_a_directory_is_refused_before_it_is_read() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    match bounded(30, rt.load_file(&link)).await.unwrap_err() {
        PluginError::NotAComponent { reason, .. } => {
            assert!(reason.contains("not a regular file"), "{reason}")
        }
        other => panic!("expected NotAComponent, got {other:?}"),
    }
    std::fs::create_dir(dir.path().join("dir.wasm")).unwrap();
    std::fs::copy(plugin("majority"), dir.path().join("majority.wasm")).unwrap();
    let registry = bounded(30, conclave::Registry::open(rt.clone(), dir.path()))
        .await
        .unwrap();
    assert_eq!(registry.list().len(), 1);
    let failures = registry.failures();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().any(|(_, why)| why.contains("a directory")));
}

#[tokio::test]
async fn holding_host_resources_without_end_is_stopped_at_the_handle_limit() {
    let rt = runtime();
    let p = hostile(&rt).await;
    let inv = Invocation {
        limits: Some(SandboxLimits {
            deadline: Duration::from_secs(20),
            ..Default::default()
        }),
        ..Default::default()
    };
    match bounded(60, rt.tally(&p, &inv, &task("{\"do\":\"handles\"}"), &[]))
        .await
        .unwrap_err()
    {
        PluginError::TooManyHandles { limit, .. } => assert_eq!(limit, 10_000),
        other => panic!("expected TooManyHandles, got {other:?}"),
    }
}

/// The built-in `majority` voter with `extra` more memories of `pages`.
async fn many_memories(rt: &PluginRuntime, extra: u32, pages: u64) -> Result<Plugin, PluginError> {
    let bytes = std::fs::read(plugin("majority")).unwrap();
    let grown = conclave_tests::with_extra_memories(&bytes, extra, pages);
    rt.load_bytes(grown, std::path::Path::new("many-memories.wasm"))
        .await
}

#[tokio::test]
async fn the_memory_cap_is_on_the_sum_of_a_components_memories() {
    let rt = runtime();
    // Two more memories of 40 MiB each: each fits the 64 MiB cap, the
    // sum does not, and the first instance (at load) already fails.
    match many_memories(&rt, 2, 640).await.unwrap_err() {
        PluginError::OutOfMemory { limit_bytes, .. } => assert_eq!(limit_bytes, 64 << 20),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // One more fits, and serves.
    let p = many_memories(&rt, 1, 640).await.unwrap();
    let d = rt
        .tally(&p, &Invocation::default(), &task(""), &[ballot("7")])
        .await
        .unwrap();
    assert_eq!(answer(d), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_pool_slots_instead_of_failing() {
    // Two call slots, so the pool holds four memories; each call of this
    // component needs three, so two calls at once cannot both have theirs:
    // the second waits for the first to finish instead of failing.
    let rt = runtime_with(RuntimeConfig {
        max_concurrent_calls: 2,
        ..Default::default()
    });
    assert!(rt.is_pooling(), "this machine gives no pooling allocator");
    let bytes = std::fs::read(fixture("hostile")).unwrap();
    let grown = conclave_tests::with_extra_memories(&bytes, 2, 1);
    let p = rt
        .load_bytes(grown, std::path::Path::new("hostile-memories.wasm"))
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (rt, p) = (rt.clone(), p.clone());
        calls.push(tokio::spawn(async move {
            // Each holds its instance until its deadline.
            run(&rt, &p, "loop").await
        }));
    }
    for c in calls {
        match c.await.unwrap().unwrap_err() {
            PluginError::Timeout { .. } => {}
            other => panic!("expected each call to run to its deadline, got {other:?}"),
        }
    }
}
