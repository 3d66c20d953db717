//! The `embedded` backend on the real default model (SmolLM2-135M-Instruct,
//! fetched by `scripts/fetch-model.sh`): samples, seeds, limits, stop
//! strings, config errors and queueing for a slot.

use std::path::PathBuf;
use std::sync::Arc;

use conclave::model::embedded::{EmbeddedBackend, EmbeddedConfig, DEFAULT_MODEL_FILE};
use conclave::model::{Backend, ChatRequest, Message};
use conclave_tests::workspace;

/// The default model file; fails with what to do when it is missing.
fn model_path() -> PathBuf {
    let path = workspace().join(DEFAULT_MODEL_FILE);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh smollm2-135m first",
        path.display()
    );
    path
}

fn backend(config: impl FnOnce(&mut EmbeddedConfig)) -> EmbeddedBackend {
    let mut c = EmbeddedConfig::new(model_path());
    // One thread per backend: tests run side by side.
    c.threads = Some(1);
    config(&mut c);
    EmbeddedBackend::load("tiny", &c).expect("the default model loads")
}

fn ask(prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        max_tokens: Some(max_tokens),
        ..ChatRequest::new(vec![Message::new("user", prompt)])
    }
}

#[tokio::test]
async fn embedded_one_sample_answers() {
    let b = backend(|_| {});
    assert_eq!(
        (b.name(), b.kind(), b.is_simulated()),
        ("tiny", "embedded", false)
    );
    let r = b
        .chat(&ask("What is the capital of France?", 24))
        .await
        .unwrap();
    assert_eq!(r.choices.len(), 1);
    assert!(!r.simulated);
    assert_eq!(r.node, "tiny");
    assert!(r.prompt_tokens > 0);
    let c = &r.choices[0];
    assert!(c.completion_tokens > 0, "{r:?}");
    assert!(!c.text.trim().is_empty(), "{r:?}");
    assert!(
        matches!(c.finish_reason.as_deref(), Some("stop" | "length")),
        "{r:?}"
    );
}

#[tokio::test]
async fn embedded_samples_share_a_prompt_and_a_seed_repeats() {
    let b = backend(|_| {});
    let req = ChatRequest {
        n: 3,
        seed: Some(42),
        temperature: Some(1.0),
        ..ask("Write one sentence about the sea.", 24)
    };
    let first = b.chat(&req).await.unwrap();
    assert_eq!(first.choices.len(), 3);
    assert!(
        first.choices.iter().all(|c| c.completion_tokens > 0),
        "{first:?}"
    );
    // Prompt tokens are counted once for all samples.
    let single = b
        .chat(&ChatRequest {
            n: 1,
            ..req.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.prompt_tokens, single.prompt_tokens);

    let again = b.chat(&req).await.unwrap();
    let texts = |r: &conclave::model::ChatResponse| {
        r.choices.iter().map(|c| c.text.clone()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&first), texts(&again), "same seed, same samples");
    // Different seeds per sample: at temperature 1 three samples are not
    // all the same text.
    let t = texts(&first);
    assert!(!(t[0] == t[1] && t[1] == t[2]), "{t:?}");
}

#[tokio::test]
async fn embedded_max_tokens_is_respected() {
    let b = backend(|_| {});
    let req = ChatRequest {
        n: 2,
        ..ask("Count from one to one hundred in words.", 16)
    };
    let r = b.chat(&req).await.unwrap();
    for c in &r.choices {
        assert!(c.completion_tokens <= 16, "{c:?}");
        if c.completion_tokens == 16 {
            assert_eq!(c.finish_reason.as_deref(), Some("length"));
        }
    }
    assert!(r.completion_tokens() <= 32);
}

#[tokio::test]
async fn embedded_stop_string_truncates() {
    let b = backend(|_| {});
    let prompt = "List the numbers 1 to 10, separated by commas.";
    let req = ChatRequest {
        temperature: Some(0.0),
        ..ask(prompt, 48)
    };
    let free = b.chat(&req).await.unwrap().choices.remove(0);
    // Stop at the first comma the model writes (greedy: same text twice).
    let comma = free
        .text
        .find(',')
        .unwrap_or_else(|| panic!("no comma in {free:?}"));
    let stopped = b
        .chat(&ChatRequest {
            stop: vec![",".into()],
            ..req
        })
        .await
        .unwrap()
        .choices
        .remove(0);
    assert_eq!(stopped.text, free.text[..comma], "{stopped:?} vs {free:?}");
    assert_eq!(stopped.finish_reason.as_deref(), Some("stop"));
    assert!(stopped.completion_tokens < free.completion_tokens);
}

#[tokio::test]
async fn embedded_missing_model_names_node_and_path() {
    let config = EmbeddedConfig::new(workspace().join("models/no-such-model.gguf"));
    let err = EmbeddedBackend::load("ghost", &config)
        .err()
        .expect("a missing file is refused");
    assert_eq!(err.node, "ghost");
    assert_eq!(err.field, "path");
    assert!(err.reason.contains("no-such-model.gguf"), "{err}");
    assert!(
        err.to_string().contains("ghost") && err.to_string().contains("path"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_one_slot_queues_a_second_call() {
    let b = Arc::new(backend(|c| c.slots = 1));
    let call = |prompt: &'static str| {
        let b = b.clone();
        tokio::spawn(async move { b.chat(&ask(prompt, 16)).await })
    };
    let (x, y) = (call("Say hello."), call("Say goodbye."));
    let (x, y) = (x.await.unwrap().unwrap(), y.await.unwrap().unwrap());
    assert!(x.choices[0].completion_tokens > 0 && y.choices[0].completion_tokens > 0);
}

#[tokio::test]
async fn embedded_dropped_call_frees_its_slot() {
    let b = backend(|c| c.slots = 1);
    // Start a long call and drop it after half a second (mid-generation
    // here; still in the prefill on a slow machine): generation stops and
    // the next call gets the slot instead of waiting for 8 × 512 tokens
    // (about a minute on one thread).
    let long = ChatRequest {
        n: 8,
        ..ask("Tell me a very long story.", 512)
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), b.chat(&long)).await;
    let started = std::time::Instant::now();
    let r = b.chat(&ask("Say hi.", 8)).await.unwrap();
    assert!(r.choices[0].completion_tokens > 0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn embedded_prompt_too_long_for_the_context_is_refused() {
    let b = backend(|c| c.context = 64);
    let long = "word ".repeat(200);
    let err = b.chat(&ask(&long, 8)).await.unwrap_err();
    assert!(
        matches!(err, conclave::model::ModelError::Protocol { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("context"), "{err}");
}
