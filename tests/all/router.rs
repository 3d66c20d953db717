//! Model nodes and the router against real HTTP servers on loopback that
//! misbehave on purpose: every fault ends in success through another node or
//! in a typed `ModelError` naming the node, never a hang or a panic.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave::model::openai::{OpenAiBackend, OpenAiConfig};
use conclave::model::router::{CallTag, HedgeConfig, NodeHandle, Route};
use conclave::model::{Backend, ChatRequest, Message, ModelError, NodeSpec, Router, RouterConfig};
use conclave_tests::http::{Behaviour, FakeServer};
use futures::StreamExt;

fn node(name: &str, server: &FakeServer, extra: &str) -> NodeHandle {
    let timeout = if extra.contains("request_timeout") {
        ""
    } else {
        "request_timeout = \"2s\"\n"
    };
    let t: toml::Table = format!(
        "name = \"{name}\"\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n{timeout}{extra}",
        server.base_url()
    )
    .parse()
    .unwrap();
    NodeSpec::from_table(&t, 0)
        .unwrap()
        .build(Path::new("."))
        .unwrap()
}

fn quick(retries: u32) -> RouterConfig {
    RouterConfig {
        retries,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        deadline: Duration::from_secs(10),
        ..Default::default()
    }
}

fn req() -> ChatRequest {
    ChatRequest::new(vec![Message::new("user", "What is 6 * 7?")])
}

async fn call(router: &Router) -> Result<conclave::model::router::Routed, ModelError> {
    router
        .chat(
            &Route::default(),
            &CallTag {
                run: "r".into(),
                role: "solver".into(),
            },
            &req(),
        )
        .await
}

async fn alone(b: Behaviour, extra: &str) -> ModelError {
    let s = FakeServer::always(b).await;
    let router = Router::new(vec![node("solo", &s, extra)], quick(0));
    let e = call(&router).await.unwrap_err();
    assert_eq!(e.node(), "solo", "{e}");
    e
}

#[tokio::test]
async fn a_completion_is_parsed_with_usage_and_sampling_fields_are_sent() {
    let s = FakeServer::always(Behaviour::Reply("Answer: 42".into())).await;
    let router = Router::new(
        vec![node(
            "a",
            &s,
            "temperature = 0.3\nmax_tokens = 64\nseed = 7",
        )],
        quick(0),
    );
    let r = call(&router).await.unwrap();
    assert_eq!(r.response.choices[0].text, "Answer: 42");
    assert_eq!(
        (r.response.prompt_tokens, r.response.completion_tokens()),
        (11, 7)
    );
    assert!(!r.response.simulated);
    let body = s.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["model"], "m");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["messages"][0]["content"], "What is 6 * 7?");
    assert!((body["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
}

#[tokio::test]
async fn tokens_are_counted_when_the_server_sends_no_usage() {
    let s = FakeServer::always(Behaviour::ReplyNoUsage("one two three four".into())).await;
    let router = Router::new(vec![node("a", &s, "")], quick(0));
    let r = call(&router).await.unwrap();
    assert_eq!(r.response.choices[0].completion_tokens, 5);
    assert!(r.response.prompt_tokens >= 4);
}

#[tokio::test]
async fn a_500_is_retried_on_another_node() {
    let bad = FakeServer::always(Behaviour::Status(500, None)).await;
    let good = FakeServer::always(Behaviour::Reply("Answer: 1".into())).await;
    let router = Router::new(
        vec![node("bad", &bad, ""), node("good", &good, "")],
        quick(3),
    );
    for _ in 0..10 {
        let r = call(&router).await.unwrap();
        assert_eq!(r.response.node, "good");
    }
    let acc = router.accounts();
    assert_eq!(acc.by_node["good"].calls, 10);
    assert_eq!(acc.by_run["r"].calls, 10);
    assert_eq!(acc.by_role["solver"].tokens_in, 110);
}

#[tokio::test]
async fn a_node_that_keeps_failing_is_cut_off_by_the_breaker() {
    let bad = FakeServer::always(Behaviour::Status(502, None)).await;
    let good = FakeServer::always(Behaviour::Reply("ok".into())).await;
    let router = Router::new(
        vec![node("bad", &bad, ""), node("good", &good, "")],
        quick(3),
    );
    for _ in 0..60 {
        call(&router).await.unwrap();
    }
    // Five failures open the breaker; it stays open for seconds after that.
    assert!(bad.count() <= 6, "bad node got {} calls", bad.count());
    assert_eq!(
        router.accounts().by_node["bad"].failures as usize,
        bad.count()
    );
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let s = FakeServer::start(
        vec![Behaviour::Status(429, Some(1))],
        Behaviour::Reply("ok".into()),
    )
    .await;
    let router = Router::new(vec![node("a", &s, "")], quick(2));
    let t = Instant::now();
    let r = call(&router).await.unwrap();
    assert_eq!(r.attempts, 2);
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_lone_node_that_rate_limits_gives_rate_limited() {
    let e = alone(Behaviour::Status(429, Some(7)), "").await;
    assert_eq!(
        e,
        ModelError::RateLimited {
            node: "solo".into(),
            retry_after: Some(Duration::from_secs(7))
        }
    );
    let e = alone(Behaviour::Status(503, None), "").await;
    assert!(matches!(e, ModelError::Unavailable { .. }), "{e}");
}

#[tokio::test]
async fn a_hang_past_the_deadline_is_a_timeout() {
    let e = alone(Behaviour::Hang, "request_timeout = \"300ms\"").await;
    assert!(matches!(e, ModelError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn a_slow_trickle_is_a_timeout() {
    let e = alone(
        Behaviour::Trickle(Duration::from_millis(20)),
        "request_timeout = \"400ms\"",
    )
    .await;
    assert!(matches!(e, ModelError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_unavailable() {
    let e = alone(Behaviour::ResetMidBody, "").await;
    assert!(matches!(e, ModelError::Unavailable { .. }), "{e}");
}

#[tokio::test]
async fn malformed_replies_are_protocol_errors() {
    let e = alone(Behaviour::MalformedJson, "").await;
    assert!(
        matches!(&e, ModelError::Protocol { reason, .. } if reason.starts_with("reply is not JSON")),
        "{e}"
    );
    let e = alone(Behaviour::NoChoices, "").await;
    assert!(
        matches!(&e, ModelError::Protocol { reason, .. } if reason == "reply has no `choices`"),
        "{e}"
    );
    let e = alone(Behaviour::Huge(100_000), "max_response_bytes = 10000").await;
    assert!(
        matches!(&e, ModelError::Protocol { reason, .. } if reason.contains("larger than 10000 bytes")),
        "{e}"
    );
}

#[tokio::test]
async fn faults_on_one_node_end_in_success_through_another() {
    for b in [
        Behaviour::Status(500, None),
        Behaviour::Status(429, Some(30)),
        Behaviour::Hang,
        Behaviour::ResetMidBody,
        Behaviour::MalformedJson,
        Behaviour::NoChoices,
        Behaviour::Huge(100_000),
        Behaviour::Trickle(Duration::from_millis(50)),
    ] {
        let bad = FakeServer::always(b.clone()).await;
        let good = FakeServer::always(Behaviour::Reply("ok".into())).await;
        let extra = "request_timeout = \"500ms\"\nmax_response_bytes = 10000";
        let router = Router::new(
            vec![node("bad", &bad, extra), node("good", &good, extra)],
            quick(3),
        );
        for _ in 0..4 {
            let r = call(&router).await.unwrap_or_else(|e| panic!("{b:?}: {e}"));
            assert_eq!(r.response.node, "good", "{b:?}");
        }
    }
}

#[tokio::test]
async fn replicas_spread_over_distinct_nodes() {
    let servers = [
        FakeServer::always(Behaviour::Reply("x".into())).await,
        FakeServer::always(Behaviour::Reply("x".into())).await,
        FakeServer::always(Behaviour::Reply("x".into())).await,
    ];
    let nodes = servers
        .iter()
        .enumerate()
        .map(|(i, s)| node(&format!("n{i}"), s, ""))
        .collect();
    let router = Router::new(nodes, quick(0));
    for _ in 0..20 {
        let mut used: Vec<String> = Vec::new();
        for _ in 0..3 {
            let route = Route {
                avoid: used.clone(),
                ..Default::default()
            };
            let r = router
                .chat(&route, &CallTag::default(), &req())
                .await
                .unwrap();
            used.push(r.response.node);
        }
        used.sort();
        assert_eq!(used, ["n0", "n1", "n2"]);
    }
}

#[tokio::test]
async fn tags_and_node_preferences_restrict_the_choice() {
    let a = FakeServer::always(Behaviour::Reply("a".into())).await;
    let b = FakeServer::always(Behaviour::Reply("b".into())).await;
    let router = Router::new(
        vec![node("a", &a, "tags = [\"big\"]"), node("b", &b, "")],
        quick(0),
    );
    let tagged = Route {
        tags: vec!["big".into()],
        ..Default::default()
    };
    for _ in 0..5 {
        assert_eq!(
            router
                .chat(&tagged, &CallTag::default(), &req())
                .await
                .unwrap()
                .response
                .node,
            "a"
        );
    }
    let pinned = Route {
        node: Some("b".into()),
        ..Default::default()
    };
    assert_eq!(
        router
            .chat(&pinned, &CallTag::default(), &req())
            .await
            .unwrap()
            .response
            .node,
        "b"
    );
    let none = Route {
        tags: vec!["gpu".into()],
        ..Default::default()
    };
    let e = router
        .chat(&none, &CallTag::default(), &req())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ModelError::Unavailable { reason, .. } if reason.contains("no node matches tags [\"gpu\"]")),
        "{e}"
    );
}

#[tokio::test]
async fn max_concurrency_queues_instead_of_failing() {
    let s = FakeServer::always(Behaviour::Trickle(Duration::from_millis(1))).await;
    let router = Arc::new(Router::new(
        vec![node("a", &s, "max_concurrency = 2")],
        quick(0),
    ));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let r = router.clone();
            tokio::spawn(async move { call(&r).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().response.choices[0].text, "slow");
    }
    assert_eq!(s.count(), 6);
}

#[tokio::test]
async fn a_slow_call_is_hedged_and_the_loser_cancelled() {
    // 30 quick replies teach the router the node's latency; then the next
    // request hangs and the one after it answers "hedge". The hang is queued
    // only once every learning request has reached the server: a learning
    // call slowed by a busy machine may itself be hedged, and its extra
    // request must not take the hang.
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let s = FakeServer::always(Behaviour::Queue(
        queue.clone(),
        Box::new(Behaviour::Reply("quick".into())),
    ))
    .await;
    let mut config = quick(0);
    config.hedge = HedgeConfig {
        enabled: true,
        quantile: 0.95,
        max_extra: 0.5,
        min_samples: 20,
        idle_quantile: None,
    };
    let router = Router::new(vec![node("a", &s, "request_timeout = \"30s\"")], config);
    for _ in 0..30 {
        assert_eq!(
            call(&router).await.unwrap().response.choices[0].text,
            "quick"
        );
    }
    let learning_hedges = router.accounts().by_node["a"].hedges;
    assert!(
        learning_hedges < 15,
        "{learning_hedges} of 30 learning calls hedged"
    );
    let sent = 30 + learning_hedges as usize;
    let waited = Instant::now();
    while s.count() < sent {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "{} of {sent} requests arrived",
            s.count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    queue
        .lock()
        .unwrap()
        .extend([Behaviour::Hang, Behaviour::Reply("hedge".into())]);
    let t = Instant::now();
    let r = call(&router).await.unwrap();
    assert!(r.hedged);
    assert_eq!(r.response.choices[0].text, "hedge");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the hedge answered, not the hung call"
    );
    assert_eq!(s.count(), sent + 2);
    assert_eq!(router.accounts().by_node["a"].hedges, learning_hedges + 1);
}

#[tokio::test]
async fn streaming_yields_the_deltas_in_order() {
    let s = FakeServer::always(Behaviour::Stream("six times seven is 42".into())).await;
    let cfg = OpenAiConfig {
        base_url: s.base_url(),
        model: "m".into(),
        api_key_env: None,
        headers: Default::default(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_response_bytes: 1 << 20,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: vec![],
        seed: None,
    };
    let b = OpenAiBackend::new("a", cfg).unwrap();
    let parts: Vec<String> = b
        .chat_stream(&req())
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(parts.concat(), "six times seven is 42");
    assert!(parts.len() >= 2, "{parts:?}");
    assert_eq!(s.bodies.lock().unwrap()[0]["stream"], true);
    assert_eq!(b.kind(), "openai");
}

#[tokio::test]
async fn the_api_key_comes_from_the_named_variable() {
    // SAFETY: this test alone sets this variable; no other thread reads it.
    unsafe { std::env::set_var("CONCLAVE_TEST_KEY_FOR_ROUTER", "sk-test") };
    let s = FakeServer::always(Behaviour::Reply("ok".into())).await;
    let router = Router::new(
        vec![node(
            "a",
            &s,
            "api_key_env = \"CONCLAVE_TEST_KEY_FOR_ROUTER\"",
        )],
        quick(0),
    );
    call(&router).await.unwrap();
}

#[tokio::test]
async fn a_token_rate_limit_makes_calls_wait_instead_of_failing() {
    let s = FakeServer::always(Behaviour::Reply("ok".into())).await;
    // 600 tokens a minute: a burst of 600, then 10 a second. Each call
    // reserves its prompt plus 100 tokens, so the sixth must wait ~3 s.
    let router = Router::new(vec![node("a", &s, "tokens_per_minute = 600")], quick(0));
    let request = ChatRequest {
        max_tokens: Some(100),
        ..req()
    };
    let t = Instant::now();
    for _ in 0..6 {
        router
            .chat(&Route::default(), &CallTag::default(), &request)
            .await
            .unwrap();
    }
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the limit did not hold: {:?}",
        t.elapsed()
    );
    assert_eq!(s.count(), 6);
}

#[tokio::test]
async fn a_run_takes_its_account_and_the_router_forgets_it() {
    let s = FakeServer::always(Behaviour::Reply("Answer: 42".into())).await;
    let router = Router::new(vec![node("a", &s, "")], quick(0));
    call(&router).await.unwrap();
    call(&router).await.unwrap();
    let account = router.take_run("r").expect("the run's account");
    assert_eq!(account.calls, 2);
    assert!(router.take_run("r").is_none());
    let all = router.accounts();
    assert!(all.by_run.is_empty(), "no account kept per finished run");
    assert_eq!(all.by_node["a"].calls, 2, "node accounts stay");
}

#[tokio::test]
async fn the_router_tells_which_node_each_attempt_went_to_and_keeps_each_nodes_quantile() {
    let bad = FakeServer::always(Behaviour::Status(500, None)).await;
    let good = FakeServer::always(Behaviour::Reply("Answer: 1".into())).await;
    let router = Router::new(
        vec![node("bad", &bad, ""), node("good", &good, "")],
        quick(3),
    );
    let cell = conclave::model::router::NodeCell::default();
    assert_eq!(cell.get(), None);
    let route = Route {
        node: Some("bad".into()),
        picked: Some(cell.clone()),
        ..Default::default()
    };
    assert!(router
        .chat(&route, &CallTag::default(), &req())
        .await
        .is_err());
    assert_eq!(cell.get().as_deref(), Some("bad"));
    // A call that fails on `bad` and is retried on `good` ends on `good`.
    let route = Route {
        picked: Some(cell.clone()),
        ..Default::default()
    };
    let mut served = Vec::new();
    for _ in 0..6 {
        let r = router
            .chat(&route, &CallTag::default(), &req())
            .await
            .unwrap();
        assert_eq!(cell.get(), Some(r.response.node.clone()));
        served.push(r.response.node);
    }
    assert!(served.iter().all(|n| n == "good"), "{served:?}");
    // Only `good` has successful calls, so only it has a quantile.
    assert!(router.node_latency_quantile("good", 0.9, 5).is_some());
    assert_eq!(router.node_latency_quantile("bad", 0.9, 1), None);
    assert_eq!(router.node_latency_quantile("nobody", 0.9, 1), None);
    assert_eq!(
        router.latency_quantile(0.9, 5),
        router.node_latency_quantile("good", 0.9, 5)
    );
}

/// The nodes a seeded router picks for 40 calls in a row on four equal sim
/// nodes, in virtual time.
async fn picks(seed: u64) -> Vec<String> {
    let nodes = (0..4)
        .map(|i| {
            let t: toml::Table = format!(
                "name = \"s{i}\"\nbackend = \"sim\"\nlatency = {{ kind = \"constant\", value = \"10ms\" }}"
            )
            .parse()
            .unwrap();
            NodeSpec::from_table(&t, 0)
                .unwrap()
                .build(Path::new("."))
                .unwrap()
        })
        .collect();
    let router = Router::new(
        nodes,
        RouterConfig {
            seed: Some(seed),
            ..quick(0)
        },
    );
    let mut out = Vec::new();
    for _ in 0..40 {
        let r = router
            .chat(&Route::default(), &CallTag::default(), &req())
            .await
            .unwrap();
        out.push(r.response.node);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_seeded_router_picks_the_same_nodes_every_run() {
    let a = picks(7).await;
    assert_eq!(a, picks(7).await);
    assert_ne!(a, picks(8).await);
    // Equal nodes, so the choice is spread, not stuck on one.
    let distinct: std::collections::BTreeSet<&String> = a.iter().collect();
    assert!(distinct.len() >= 3, "{a:?}");
}
