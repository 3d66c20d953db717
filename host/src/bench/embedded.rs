//! Benchmark of the embedded backend's sample batching: what drawing 5
//! samples of one prompt costs next to drawing 1.
//!
//! The 5 samples share one prefill and are decoded together, one batch per
//! step, so on a CPU their cost is well below 5 separate calls: the weights
//! are read once per step for all of them. The goal is 5 samples in at most
//! twice the wall time of 1.
//!
//! Measured with SmolLM2-135M Q4_1 on 2 AVX2 cores (November 2026): about
//! 2.3× at 32 new tokens and 3× at 128, i.e. 1.6 to 2.1 times the
//! tokens per second of one sample. The goal is not reached there: past the
//! shared prefill, each sample still pays its own Q4_1 matrix-vector work,
//! its output layer and its attention, and on two cores that arithmetic,
//! not memory traffic, is what the step costs (profile: ~55 % in
//! `ggml_vec_dot_q4_1_q8_1`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::model::embedded::{EmbeddedBackend, EmbeddedConfig};
use crate::model::{Backend, ChatRequest, Message};

/// A grade-school word problem (GSM8K style) that invites a long answer.
const PROMPT: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half \
    as many clips in May. How many clips did Natalia sell altogether in April and May? \
    Think step by step, then give the final answer on its own line.";

/// Times each measurement is repeated; the median run is reported.
const RUNS: usize = 3;

/// One way of calling: `samples` samples of the prompt in one call.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BatchingRun {
    pub samples: u32,
    /// Wall time of the call (median of the runs).
    pub wall: Duration,
    /// Tokens generated over all samples in that run.
    pub completion_tokens: u32,
    /// `completion_tokens` per second of wall time.
    pub tokens_per_second: f64,
}

/// Result of [`batching`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct BatchingReport {
    pub model: String,
    pub threads: u32,
    pub prompt_tokens: u32,
    /// Cap on generated tokens per sample.
    pub max_tokens: u32,
    /// Runs per measurement (the median is reported).
    pub runs: usize,
    pub one: BatchingRun,
    pub five: BatchingRun,
    /// `five.wall / one.wall`; the goal is at most 2.
    pub ratio: f64,
}

/// Measures 1 sample against 5 samples of one GSM-style prompt on the GGUF
/// model at `path`, each sample generating up to `max_tokens` tokens.
///
/// One warm-up call first (page the weights in); then each measurement
/// runs [`RUNS`] times with fixed seeds and the median wall time is kept.
/// Samples may end early at end-of-text, so the report gives the tokens
/// actually generated next to the times.
pub async fn batching(path: &Path, max_tokens: u32) -> Result<BatchingReport, String> {
    let config = EmbeddedConfig {
        max_tokens,
        ..EmbeddedConfig::new(path)
    };
    let backend = EmbeddedBackend::load("bench", &config).map_err(|e| e.to_string())?;
    let warm = backend
        .chat(&request(1, 0, max_tokens))
        .await
        .map_err(|e| e.to_string())?;
    let one = measure(&backend, 1, max_tokens).await?;
    let five = measure(&backend, 5, max_tokens).await?;
    Ok(BatchingReport {
        model: path.display().to_string(),
        threads: backend.threads(),
        prompt_tokens: warm.prompt_tokens,
        max_tokens,
        runs: RUNS,
        ratio: five.wall.as_secs_f64() / one.wall.as_secs_f64().max(1e-9),
        one,
        five,
    })
}

/// `n` samples of [`PROMPT`], seeded.
fn request(n: u32, seed: u64, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        n,
        seed: Some(seed),
        max_tokens: Some(max_tokens),
        ..ChatRequest::new(vec![Message::new("user", PROMPT)])
    }
}

/// [`RUNS`] calls of `n` samples (seeds 1, 2, ...); the median by wall time.
async fn measure(
    backend: &EmbeddedBackend,
    n: u32,
    max_tokens: u32,
) -> Result<BatchingRun, String> {
    let mut runs = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let started = Instant::now();
        let response = backend
            .chat(&request(n, 1 + run as u64, max_tokens))
            .await
            .map_err(|e| e.to_string())?;
        runs.push((started.elapsed(), response.completion_tokens()));
    }
    runs.sort();
    let (wall, completion_tokens) = runs[RUNS / 2];
    Ok(BatchingRun {
        samples: n,
        wall,
        completion_tokens,
        tokens_per_second: f64::from(completion_tokens) / wall.as_secs_f64().max(1e-9),
    })
}
