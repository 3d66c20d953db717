//! The `sim` backend: a seeded, deterministic **simulator** of a model node,
//! for tests and benchmarks. It is not a model and says so: every response
//! is marked `simulated`, and its text begins with `[sim ...]`.
//!
//! Per node it draws: whether the answer is right (probability `accuracy`,
//! when the request carries the gold answer), which wrong answer otherwise
//! (one of a few plausible distractors, so wrong samples sometimes agree as
//! real ones do), a latency (constant, log-normal or empirical), and faults
//! (errors, hangs, malformed replies, rate-limit replies). Sleeping uses
//! tokio's clock, so under a paused clock a simulated hour takes
//! milliseconds.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::latency::{Latency, LatencySpec};
use super::node::NodeError;
use super::{Backend, ChatRequest, ChatResponse, Completion, ModelError};
use rand_distr::{Distribution, StandardNormal};

/// A sim node's settings (the `[[node]]` table with `backend = "sim"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Probability that a sample is right when the gold answer is known.
    pub accuracy: f64,
    /// How many distinct wrong answers wrong samples choose among.
    pub distractors: u32,
    /// Latency of one call.
    pub latency: LatencySpec,
    /// Generated tokens per sample.
    pub completion_tokens: u32,
    /// Probability that a call fails with an error.
    pub error_rate: f64,
    /// Probability that a call hangs for `hang`.
    pub hang_rate: f64,
    /// How long a hang lasts (default one hour: past any sane deadline).
    #[serde(with = "humantime_serde")]
    pub hang: Duration,
    /// Probability of a reply that is not a completion.
    pub malformed_rate: f64,
    /// Probability of a rate-limit reply (with `Retry-After: 1s`).
    pub rate_limit_rate: f64,
    /// Seed of this node's randomness.
    pub seed: u64,
    /// How alike the latencies of calls of the same request are, 0..1
    /// (default 0: independent). Calls with the same messages and seed (a
    /// retry, a hedge, or an unseeded replica of the same prompt) share a
    /// size factor: their latencies are the distribution's quantiles at
    /// `Φ(√ρ·Z + √(1−ρ)·E)`, `Z` per request and `E` per call, so a
    /// request that was slow is likely slow again when sent again, as on a
    /// real node. Constant latencies are not affected.
    pub latency_correlation: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            accuracy: 0.6,
            distractors: 3,
            latency: LatencySpec::default(),
            completion_tokens: 40,
            error_rate: 0.0,
            hang_rate: 0.0,
            hang: Duration::from_secs(3600),
            malformed_rate: 0.0,
            rate_limit_rate: 0.0,
            seed: 0,
            latency_correlation: 0.0,
        }
    }
}

/// A simulated node.
pub struct SimBackend {
    name: String,
    config: SimConfig,
    latency: Latency,
    /// Calls seen per prompt and seed, so repeated identical requests draw
    /// new samples in a reproducible sequence.
    counters: Mutex<HashMap<u64, u64>>,
    /// An empirical latency set, sorted, when `latency_correlation` needs
    /// quantiles of it.
    sorted: Option<Vec<Duration>>,
}

fn check_rate(node: &str, field: &str, v: f64) -> Result<(), NodeError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(NodeError::new(
            node,
            field,
            format!("must be between 0 and 1, got {v}"),
        ))
    }
}

impl SimBackend {
    /// A sim node; `base` resolves relative CSV paths.
    pub fn new(name: &str, config: SimConfig, base: &Path) -> Result<Self, NodeError> {
        check_rate(name, "accuracy", config.accuracy)?;
        check_rate(name, "error_rate", config.error_rate)?;
        check_rate(name, "hang_rate", config.hang_rate)?;
        check_rate(name, "malformed_rate", config.malformed_rate)?;
        check_rate(name, "rate_limit_rate", config.rate_limit_rate)?;
        check_rate(name, "latency_correlation", config.latency_correlation)?;
        let faults =
            config.error_rate + config.hang_rate + config.malformed_rate + config.rate_limit_rate;
        if faults > 1.0 {
            return Err(NodeError::new(
                name,
                "error_rate",
                format!("the fault rates add up to {faults}, above 1"),
            ));
        }
        let latency = Latency::from_spec(&config.latency, base)
            .map_err(|e| NodeError::new(name, "latency", e))?;
        let sorted = match &latency {
            Latency::Empirical(v) if config.latency_correlation > 0.0 => {
                let mut v = v.to_vec();
                v.sort();
                Some(v)
            }
            _ => None,
        };
        Ok(SimBackend {
            name: name.into(),
            config,
            latency,
            counters: Mutex::new(HashMap::new()),
            sorted,
        })
    }

    /// The latency of one call of the request keyed `prompt`, correlated
    /// with the request's other calls by `latency_correlation`.
    fn latency_for(&self, prompt: u64, rng: &mut ChaCha8Rng) -> Duration {
        let rho = self.config.latency_correlation;
        if rho == 0.0 {
            return self.latency.sample(rng);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.config.seed, prompt, "size").hash(&mut h);
        let shared: f64 = StandardNormal.sample(&mut ChaCha8Rng::seed_from_u64(h.finish()));
        let own: f64 = StandardNormal.sample(rng);
        let z = rho.sqrt() * shared + (1.0 - rho).sqrt() * own;
        match (&self.latency, &self.sorted) {
            (Latency::LogNormal { mu, sigma }, _) => {
                Duration::from_secs_f64((mu + sigma * z).exp().min(1e6))
            }
            (_, Some(sorted)) if !sorted.is_empty() => {
                let u = crate::team::simulate::normal_cdf(z);
                sorted[((u * sorted.len() as f64) as usize).min(sorted.len() - 1)]
            }
            _ => self.latency.sample(rng),
        }
    }

    /// The key of a request (its messages and seed) and a fresh draw for
    /// this call of it.
    fn rng_for(&self, request: &ChatRequest) -> (u64, ChaCha8Rng) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for m in &request.messages {
            m.role.hash(&mut h);
            m.content.hash(&mut h);
        }
        request.seed.hash(&mut h);
        let prompt = h.finish();
        // Each call of the same prompt (and seed) is a new draw: a retry or a
        // hedge is a new sample, as it would be on a real node.
        let draw = {
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let n = c.entry(prompt).or_insert(0);
            *n += 1;
            *n
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.config.seed, prompt, draw).hash(&mut h);
        (prompt, ChaCha8Rng::seed_from_u64(h.finish()))
    }

    /// A wrong answer close to `gold`: nearby numbers for numbers, other
    /// letters for letters, a changed phrase for text.
    fn distractor(gold: &str, i: u32) -> String {
        if let Ok(n) = gold.trim().parse::<i64>() {
            let offsets = [1, -1, 10, 2, -2, -10, 5, 100];
            return (n + offsets[i as usize % offsets.len()]
                * (1 + i as i64 / offsets.len() as i64))
                .to_string();
        }
        if let Ok(x) = gold.trim().parse::<f64>() {
            return format!("{}", x + (i + 1) as f64 * 0.5);
        }
        let g = gold.trim();
        if g.len() == 1 && g.chars().all(|c| c.is_ascii_uppercase()) {
            let c = g.as_bytes()[0] - b'A';
            return ((b'A' + (c + 1 + i as u8 % 3) % 4) as char).to_string();
        }
        format!("not {g} ({})", i + 1)
    }
}

#[async_trait::async_trait]
impl Backend for SimBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "sim"
    }

    fn is_simulated(&self) -> bool {
        true
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let (prompt, mut rng) = self.rng_for(request);
        let c = &self.config;
        let delay = self.latency_for(prompt, &mut rng);
        let fault: f64 = rng.random();
        let node = self.name.clone();
        if fault < c.hang_rate {
            tokio::time::sleep(c.hang).await;
            return Err(ModelError::Timeout {
                node,
                after: c.hang,
            });
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut f = fault - c.hang_rate;
        if f < c.error_rate {
            return Err(ModelError::Unavailable {
                node,
                reason: "simulated server error (HTTP 500)".into(),
            });
        }
        f -= c.error_rate;
        if f < c.rate_limit_rate {
            return Err(ModelError::RateLimited {
                node,
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        f -= c.rate_limit_rate;
        if f < c.malformed_rate {
            return Err(ModelError::Protocol {
                node,
                reason: "simulated malformed reply".into(),
            });
        }
        let choices = (0..request.samples())
            .map(|_| {
                let answer = match &request.gold {
                    Some(gold) if rng.random::<f64>() < c.accuracy => gold.clone(),
                    Some(gold) => Self::distractor(gold, rng.random_range(0..c.distractors.max(1))),
                    None => format!("{}", rng.random_range(0..c.distractors.max(1) + 1)),
                };
                Completion {
                    text: format!(
                        "[sim {}] Simulated reasoning, not a model's.\nAnswer: {answer}",
                        self.name
                    ),
                    completion_tokens: c.completion_tokens,
                    finish_reason: Some("stop".into()),
                }
            })
            .collect();
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| super::estimate_tokens(&m.content))
            .sum();
        Ok(ChatResponse {
            choices,
            prompt_tokens,
            node: self.name.clone(),
            simulated: true,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The simulator: determinism, accuracy, distractors, faults, paused time.
    use super::*;
    use crate::model::Message;

    fn req(gold: &str, seed: Option<u64>) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::new("user", "q")],
            gold: Some(gold.into()),
            seed,
            n: 1,
            ..Default::default()
        }
    }

    fn answer(r: &ChatResponse) -> String {
        r.choices[0]
            .text
            .rsplit("Answer: ")
            .next()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn same_seed_same_answers() {
        let a = SimBackend::new("s", SimConfig::default(), Path::new(".")).unwrap();
        let b = SimBackend::new("s", SimConfig::default(), Path::new(".")).unwrap();
        for i in (0..20).chain(0..20) {
            let ra = a.chat(&req("42", Some(i))).await.unwrap();
            let rb = b.chat(&req("42", Some(i))).await.unwrap();
            assert_eq!(ra, rb);
            assert!(ra.simulated && ra.choices[0].text.starts_with("[sim s]"));
        }
        // Without a request seed, a per-prompt counter gives a reproducible sequence.
        let c = SimBackend::new("s", SimConfig::default(), Path::new(".")).unwrap();
        let d = SimBackend::new("s", SimConfig::default(), Path::new(".")).unwrap();
        let r = req("42", None);
        let mut answers = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let x = c.chat(&r).await.unwrap();
            assert_eq!(x, d.chat(&r).await.unwrap());
            answers.insert(answer(&x));
        }
        assert!(answers.len() > 1, "each call is a new draw");
    }

    #[tokio::test]
    async fn accuracy_and_distractors() {
        let cfg = SimConfig {
            accuracy: 0.6,
            distractors: 2,
            ..Default::default()
        };
        let s = SimBackend::new("s", cfg, Path::new(".")).unwrap();
        let mut right = 0;
        let mut wrong = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let a = answer(&s.chat(&req("42", Some(i))).await.unwrap());
            if a == "42" {
                right += 1;
            } else {
                wrong.insert(a);
            }
        }
        assert!((1100..1300).contains(&right), "{right}");
        assert_eq!(wrong, ["41", "43"].iter().map(|s| s.to_string()).collect());
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_latency_runs_in_paused_time() {
        let cfg = SimConfig {
            latency: LatencySpec::Constant {
                value: Duration::from_secs(3600),
            },
            ..Default::default()
        };
        let s = SimBackend::new("s", cfg, Path::new(".")).unwrap();
        let wall = std::time::Instant::now();
        let start = tokio::time::Instant::now();
        s.chat(&req("1", Some(1))).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        assert!(wall.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn faults_are_typed() {
        let all = |f: fn(&mut SimConfig)| {
            let mut c = SimConfig::default();
            f(&mut c);
            SimBackend::new("s", c, Path::new(".")).unwrap()
        };
        let e = all(|c| c.error_rate = 1.0)
            .chat(&req("1", Some(1)))
            .await
            .unwrap_err();
        assert!(matches!(e, ModelError::Unavailable { .. }));
        let e = all(|c| c.rate_limit_rate = 1.0)
            .chat(&req("1", Some(1)))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ModelError::RateLimited {
                node: "s".into(),
                retry_after: Some(Duration::from_secs(1))
            }
        );
        let e = all(|c| c.malformed_rate = 1.0)
            .chat(&req("1", Some(1)))
            .await
            .unwrap_err();
        assert!(matches!(e, ModelError::Protocol { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_of_one_request_share_a_size_factor() {
        let lognormal = LatencySpec::Lognormal {
            median: Duration::from_secs(2),
            sigma: 1.0,
        };
        // Correlation of log latency between two calls of each of 300
        // requests (distinct seeds), the first and second call.
        let corr = |rho: f64| {
            let latency = lognormal.clone();
            async move {
                let cfg = SimConfig {
                    latency,
                    latency_correlation: rho,
                    ..Default::default()
                };
                let s = SimBackend::new("s", cfg, Path::new(".")).unwrap();
                let mut pairs = Vec::new();
                for i in 0..300 {
                    let mut t = [0.0; 2];
                    for x in t.iter_mut() {
                        let start = tokio::time::Instant::now();
                        s.chat(&req("1", Some(i))).await.unwrap();
                        *x = start.elapsed().as_secs_f64().ln();
                    }
                    pairs.push((t[0], t[1]));
                }
                let n = pairs.len() as f64;
                let (ma, mb) = pairs
                    .iter()
                    .fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
                let cov: f64 = pairs.iter().map(|p| (p.0 - ma) * (p.1 - mb)).sum();
                let va: f64 = pairs.iter().map(|p| (p.0 - ma).powi(2)).sum();
                let vb: f64 = pairs.iter().map(|p| (p.1 - mb).powi(2)).sum();
                cov / (va * vb).sqrt()
            }
        };
        let (c0, c5) = (corr(0.0).await, corr(0.5).await);
        assert!(c0.abs() < 0.15, "{c0}");
        assert!((c5 - 0.5).abs() < 0.15, "{c5}");
    }

    #[test]
    fn bad_rates_name_the_field() {
        let e = SimBackend::new(
            "s",
            SimConfig {
                accuracy: 1.5,
                ..Default::default()
            },
            Path::new("."),
        )
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "node \"s\": `accuracy`: must be between 0 and 1, got 1.5"
        );
    }
}
