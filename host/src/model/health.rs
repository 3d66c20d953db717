//! Per-node health: a circuit breaker (closed → open → half-open probe →
//! closed) driven by consecutive failures and the recent error rate, an EWMA
//! of latency for tie-breaks, recent latencies for the hedging quantile, and
//! the `Retry-After` a node asked for.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// When to stop sending calls to a node, and for how long.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5.
    pub failures: u32,
    /// Error rate over the last `window` calls that opens it. Default 0.5.
    pub error_rate: f64,
    /// Calls the error rate is measured over (and the fewest it needs).
    /// Default 20.
    pub window: u32,
    /// How long it stays open the first time; doubles on each failed probe.
    /// Default 2 s.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// The longest it stays open. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            error_rate: 0.5,
            window: 20,
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(60),
        }
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// Calls flow.
    Closed,
    /// No calls until `until`; `strikes` counts consecutive openings.
    Open { until: Instant, strikes: u32 },
    /// One probe call may go through; its result closes or re-opens.
    HalfOpen { probing: bool, strikes: u32 },
}

/// Whether a node can take a call now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    /// No, and why.
    No(String),
}

const LATENCIES_KEPT: usize = 512;

/// Everything the router knows about one node's health.
#[derive(Debug)]
pub struct Health {
    config: BreakerConfig,
    pub breaker: Breaker,
    pub consecutive_failures: u32,
    recent: VecDeque<bool>,
    /// Exponentially weighted mean latency, in seconds.
    pub ewma: Option<f64>,
    latencies: VecDeque<Duration>,
    sorted: Vec<Duration>,
    stale: u32,
    /// Do not call before this (a `Retry-After`).
    pub not_before: Option<Instant>,
}

impl Health {
    /// A healthy node.
    pub fn new(config: BreakerConfig) -> Self {
        Health {
            config,
            breaker: Breaker::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            ewma: None,
            latencies: VecDeque::new(),
            sorted: Vec::new(),
            stale: 0,
            not_before: None,
        }
    }

    /// Whether a call may go to this node at `now`; moves an expired open
    /// breaker to half-open and hands out the single probe.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let Some(t) = self.not_before {
            if now < t {
                return Admission::No(format!("asked to retry after {:?}", t - now));
            }
            self.not_before = None;
        }
        match self.breaker {
            Breaker::Closed => Admission::Yes,
            Breaker::Open { until, strikes } => {
                if now >= until {
                    self.breaker = Breaker::HalfOpen {
                        probing: true,
                        strikes,
                    };
                    Admission::Probe
                } else {
                    Admission::No(format!(
                        "circuit open for another {:?} after {} consecutive failures",
                        until - now,
                        self.consecutive_failures
                    ))
                }
            }
            Breaker::HalfOpen {
                probing: false,
                strikes,
            } => {
                self.breaker = Breaker::HalfOpen {
                    probing: true,
                    strikes,
                };
                Admission::Probe
            }
            Breaker::HalfOpen { probing: true, .. } => {
                Admission::No("circuit half-open, probe in flight".into())
            }
        }
    }

    /// Whether the node is only waiting out a `Retry-After` (it will take
    /// calls again soon, so callers should wait rather than give up).
    pub fn cooling_down(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| now < t) && matches!(self.breaker, Breaker::Closed)
    }

    /// Whether `admit` would say yes, without changing anything.
    pub fn looks_available(&self, now: Instant) -> bool {
        if self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        match self.breaker {
            Breaker::Closed => true,
            Breaker::Open { until, .. } => now >= until,
            Breaker::HalfOpen { probing, .. } => !probing,
        }
    }

    fn push_outcome(&mut self, ok: bool) {
        self.recent.push_back(ok);
        while self.recent.len() > self.config.window.max(1) as usize {
            self.recent.pop_front();
        }
    }

    /// Records a successful call that took `latency`.
    pub fn success(&mut self, latency: Duration) {
        self.consecutive_failures = 0;
        self.breaker = Breaker::Closed;
        self.push_outcome(true);
        let s = latency.as_secs_f64();
        self.ewma = Some(match self.ewma {
            Some(e) => 0.8 * e + 0.2 * s,
            None => s,
        });
        self.latencies.push_back(latency);
        if self.latencies.len() > LATENCIES_KEPT {
            self.latencies.pop_front();
        }
        self.stale += 1;
    }

    /// Records a failed call at `now`; may open the breaker.
    pub fn failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        self.push_outcome(false);
        let errors = self.recent.iter().filter(|ok| !**ok).count();
        let rate_tripped = self.recent.len() >= self.config.window as usize
            && errors as f64 / self.recent.len() as f64 >= self.config.error_rate;
        let open = |strikes: u32| {
            let factor = 2u32.saturating_pow(strikes.min(16));
            Breaker::Open {
                until: now
                    + self
                        .config
                        .open_for
                        .saturating_mul(factor)
                        .min(self.config.max_open_for),
                strikes: strikes + 1,
            }
        };
        self.breaker = match self.breaker {
            Breaker::HalfOpen { strikes, .. } => open(strikes),
            Breaker::Closed
                if self.consecutive_failures >= self.config.failures || rate_tripped =>
            {
                self.recent.clear();
                open(0)
            }
            other => other,
        };
    }

    /// A call that was cancelled after `elapsed` (a hedge loser, a dropped
    /// request): frees a half-open probe without judging the node. Its
    /// latency was at least `elapsed`; keeping that lower bound stops the
    /// latency quantiles from forgetting the slow calls that hedging cut
    /// short (which would make hedges fire ever earlier).
    pub fn cancelled(&mut self, elapsed: Duration) {
        self.latencies.push_back(elapsed);
        if self.latencies.len() > LATENCIES_KEPT {
            self.latencies.pop_front();
        }
        self.stale += 1;
        if let Breaker::HalfOpen { strikes, .. } = self.breaker {
            self.breaker = Breaker::HalfOpen {
                probing: false,
                strikes,
            };
        }
    }

    /// Latency quantile `q` of recent successful calls, once at least
    /// `min_samples` are known.
    pub fn quantile(&mut self, q: f64, min_samples: usize) -> Option<Duration> {
        if self.latencies.len() < min_samples.max(1) {
            return None;
        }
        if self.stale > 0 && (self.sorted.is_empty() || self.stale >= 16) {
            self.sorted = self.latencies.iter().copied().collect();
            self.sorted.sort_unstable();
            self.stale = 0;
        }
        let i = ((self.sorted.len() as f64 * q) as usize).min(self.sorted.len() - 1);
        Some(self.sorted[i])
    }
}

#[cfg(test)]
mod tests {
    //! The breaker's transitions and the latency quantile.
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_then_closes() {
        let mut h = Health::new(BreakerConfig::default());
        let now = Instant::now();
        for _ in 0..4 {
            h.failure(now);
        }
        assert_eq!(h.admit(now), Admission::Yes);
        h.failure(now);
        assert!(matches!(h.admit(now), Admission::No(ref r) if r.contains("circuit open")));
        let later = now + Duration::from_secs(2);
        assert_eq!(h.admit(later), Admission::Probe);
        assert!(
            matches!(h.admit(later), Admission::No(_)),
            "one probe at a time"
        );
        h.failure(later);
        // Second opening lasts twice as long.
        assert!(matches!(
            h.admit(later + Duration::from_secs(3)),
            Admission::No(_)
        ));
        assert_eq!(h.admit(later + Duration::from_secs(4)), Admission::Probe);
        h.success(Duration::from_millis(5));
        assert_eq!(h.breaker, Breaker::Closed);
        assert_eq!(h.admit(later + Duration::from_secs(4)), Admission::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_error_rate_opens_without_a_failure_streak() {
        let mut h = Health::new(BreakerConfig {
            window: 10,
            error_rate: 0.5,
            ..Default::default()
        });
        let now = Instant::now();
        for _ in 0..5 {
            h.success(Duration::from_millis(1));
            h.failure(now);
        }
        assert!(matches!(h.admit(now), Admission::No(_)));
    }

    #[test]
    fn quantiles_need_samples() {
        let mut h = Health::new(BreakerConfig::default());
        assert_eq!(h.quantile(0.95, 10), None);
        for ms in 1..=100 {
            h.success(Duration::from_millis(ms));
        }
        assert_eq!(h.quantile(0.95, 10), Some(Duration::from_millis(96)));
        assert_eq!(h.quantile(0.5, 10), Some(Duration::from_millis(51)));
    }
}
