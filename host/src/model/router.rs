//! The router: every model call of a plugin goes through it.
//!
//! For each call it picks among the healthy nodes that match the call's
//! preferences (tags, a specific node), preferring nodes not already serving
//! the task's other replicas (anti-affinity), by power of two choices on
//! outstanding requests with an EWMA-latency tie-break, within each node's
//! `max_concurrency` and token rate. It retries failures with exponential
//! backoff and jitter on another node where one exists, honours
//! `Retry-After`, enforces a per-call deadline, optionally hedges a slow call
//! with a second request (the loser is cancelled, and the prompt it was sent
//! is charged), and keeps the accounts. A call larger than the token-rate
//! window of every node that could serve it is refused at once
//! ([`ModelError::TooLarge`]): it could never be admitted.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::{select, Either};
use rand::Rng;
use tokio::time::Instant;

use super::accounts::stats;
pub use super::accounts::{Accounts, Counts, Stats, StatsSummary};
use super::health::{Admission, Health};
use super::{ChatRequest, ChatResponse, ModelError};

pub use super::route::{
    Attempt, AttemptOutcome, CallTag, HedgeConfig, NodeCell, NodeHandle, Route, Routed,
    RouterConfig,
};

mod pick;
use pick::Pick;

type TokenLimiter = governor::DefaultDirectRateLimiter;

/// A node as the router keeps it: its load, health and token rate. Shared
/// by every router that routes to the node (see [`super::pool`]).
pub(super) struct Slot {
    node: NodeHandle,
    outstanding: AtomicU32,
    health: Mutex<Health>,
    limiter: Option<TokenLimiter>,
    freed: tokio::sync::Notify,
}

impl Slot {
    pub(super) fn new(node: NodeHandle, breaker: &super::health::BreakerConfig) -> Self {
        Slot {
            limiter: node
                .tokens_per_minute
                .and_then(NonZeroU32::new)
                .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n))),
            health: Mutex::new(Health::new(breaker.clone())),
            outstanding: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
            node,
        }
    }
}

/// Chooses nodes, retries, hedges and accounts. Share it behind an `Arc`.
pub struct Router {
    slots: Vec<Arc<Slot>>,
    /// The node choice's generator when `config.seed` is set.
    picks: Option<Mutex<rand::rngs::StdRng>>,
    config: RouterConfig,
    accounts: Mutex<Accounts>,
    calls: AtomicU64,
    hedges: AtomicU64,
}

/// Keeps a node's outstanding count up while an attempt runs; an attempt
/// dropped before it finished (a hedge loser, a cancelled call) frees a
/// half-open probe without judging the node.
struct InFlight<'a> {
    slot: &'a Slot,
    started: Instant,
    finished: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.slot
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cancelled(self.started.elapsed());
        }
        self.slot.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.slot.freed.notify_waiters();
    }
}

impl Router {
    /// A router over `nodes` (names must be unique; the team spec checks).
    pub fn new(nodes: Vec<NodeHandle>, config: RouterConfig) -> Self {
        let slots = nodes
            .into_iter()
            .map(|node| Arc::new(Slot::new(node, &config.breaker)))
            .collect();
        Router::with_slots(slots, config)
    }

    /// A router over nodes that other routers may share.
    pub(super) fn with_slots(slots: Vec<Arc<Slot>>, config: RouterConfig) -> Self {
        Router {
            slots,
            picks: config
                .seed
                .map(|s| Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(s))),
            config,
            accounts: Mutex::new(Accounts::default()),
            calls: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
        }
    }

    /// The router's settings.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Whether any node is the simulator.
    pub fn simulated(&self) -> bool {
        self.slots.iter().any(|s| s.node.backend.is_simulated())
    }

    /// Names of the nodes, in spec order.
    pub fn nodes(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.node.backend.name()).collect()
    }

    /// What `tokens_in` and `tokens_out` cost on `node` at its prices
    /// (0 for a node this router does not have).
    pub fn cost_of(&self, node: &str, tokens_in: u64, tokens_out: u64) -> f64 {
        self.slots
            .iter()
            .find(|s| s.node.backend.name() == node)
            .map(|s| {
                (tokens_in as f64 * s.node.price_in + tokens_out as f64 * s.node.price_out) / 1e6
            })
            .unwrap_or(0.0)
    }

    /// Removes and returns run `run`'s account: a job takes its own when
    /// it ends, so that a long-lived router (a server) does not keep one
    /// per run forever, and no job copies every other run's.
    pub fn take_run(&self, run: &str) -> Option<super::accounts::Stats> {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_run
            .remove(run)
    }

    /// The accounts, to count in calls made elsewhere (cluster workers).
    pub fn with_accounts<R>(&self, f: impl FnOnce(&mut Accounts) -> R) -> R {
        f(&mut self.accounts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A copy of the accounts.
    pub fn accounts(&self) -> Accounts {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a node that can take the call, until `deadline`.
    async fn acquire(
        &self,
        route: &Route,
        tried: &[usize],
        tokens: u32,
        deadline: Instant,
    ) -> Result<usize, ModelError> {
        loop {
            match self.pick(route, tried, tokens) {
                Pick::Node(i) => return Ok(i),
                Pick::None(reason) => {
                    return Err(ModelError::Unavailable {
                        node: route.node.clone().unwrap_or_else(|| "*".into()),
                        reason,
                    })
                }
                Pick::TooLarge(reason) => {
                    return Err(ModelError::TooLarge {
                        node: route.node.clone().unwrap_or_else(|| "*".into()),
                        reason,
                    })
                }
                Pick::Wait => {
                    let notified = futures::future::select_all(
                        self.slots.iter().map(|s| Box::pin(s.freed.notified())),
                    );
                    // Token buckets refill with time, not with notifications.
                    let tick = tokio::time::sleep(Duration::from_millis(50));
                    tokio::select! {
                        _ = notified => {}
                        _ = tick => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(ModelError::Timeout { node: "*".into(), after: self.config.deadline })
                        }
                    }
                }
            }
        }
    }

    /// One attempt on node `i`, with its bookkeeping.
    async fn attempt(
        &self,
        i: usize,
        request: &ChatRequest,
        deadline: Instant,
    ) -> (usize, Result<ChatResponse, ModelError>, Duration) {
        let slot = &self.slots[i];
        slot.outstanding.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let mut in_flight = InFlight {
            slot,
            started,
            finished: false,
        };
        let result = match tokio::time::timeout_at(deadline, slot.node.backend.chat(request)).await
        {
            Ok(r) => r,
            Err(_) => Err(ModelError::Timeout {
                node: slot.node.backend.name().into(),
                after: started.elapsed(),
            }),
        };
        let latency = started.elapsed();
        {
            let mut h = slot.health.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(_) => h.success(latency),
                Err(e) => {
                    if let ModelError::RateLimited {
                        retry_after: Some(d),
                        ..
                    } = e
                    {
                        h.not_before = Some(Instant::now() + *d);
                    }
                    h.failure(Instant::now());
                }
            }
        }
        in_flight.finished = true;
        (i, result, latency)
    }

    /// The largest of the nodes' latency quantile `q` over their recent
    /// successful calls, among the nodes with at least `min_samples` of
    /// them (`None` when none has): how long a call may run on any node
    /// before it is late. The consensus loop hedges a replica past its own
    /// node's quantile, and past this one while its node has too few calls
    /// to tell.
    pub fn latency_quantile(&self, q: f64, min_samples: usize) -> Option<Duration> {
        self.quantiles(q, min_samples).max()
    }

    /// Node `node`'s latency quantile `q` over its recent successful calls,
    /// once it has at least `min_samples` of them.
    pub fn node_latency_quantile(
        &self,
        node: &str,
        q: f64,
        min_samples: usize,
    ) -> Option<Duration> {
        self.slots
            .iter()
            .find(|s| s.node.backend.name() == node)?
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantile(q, min_samples)
    }

    fn quantiles(&self, q: f64, min_samples: usize) -> impl Iterator<Item = Duration> + '_ {
        self.slots.iter().filter_map(move |s| {
            s.health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .quantile(q, min_samples)
        })
    }

    fn hedge_delay(&self, i: usize) -> Option<Duration> {
        let h = &self.config.hedge;
        if !h.enabled {
            return None;
        }
        let calls = self.calls.load(Ordering::Relaxed);
        if self.hedges.load(Ordering::Relaxed) as f64 >= h.max_extra * calls as f64 {
            return None;
        }
        let slot = &self.slots[i];
        let idle = self.slots.iter().any(|s| {
            s.outstanding.load(Ordering::Acquire) == 0
                || s.node
                    .max_concurrency
                    .is_none_or(|m| s.outstanding.load(Ordering::Acquire) * 2 < m)
        });
        let q = if idle {
            h.idle_quantile.unwrap_or(h.quantile)
        } else {
            h.quantile
        };
        slot.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantile(q, h.min_samples)
    }

    /// One attempt, hedged by a second request if it runs past the node's
    /// hedging quantile. The first success wins; the other is cancelled,
    /// and its node is returned last (the loser, whose prompt was spent).
    /// Attempts that did not decide the call (a failed first of a pair,
    /// a cancelled loser) are added to `trail`; the caller adds the one
    /// returned.
    async fn hedged(
        &self,
        i: usize,
        route: &Route,
        request: &ChatRequest,
        tried: &[usize],
        deadline: Instant,
        trail: &mut Vec<Attempt>,
    ) -> (
        usize,
        Result<ChatResponse, ModelError>,
        Duration,
        bool,
        Option<usize>,
    ) {
        let first = Box::pin(self.attempt(i, request, deadline));
        let Some(delay) = self.hedge_delay(i) else {
            let (i, r, l) = first.await;
            return (i, r, l, false, None);
        };
        let started = Instant::now();
        let timer = Box::pin(tokio::time::sleep(delay));
        let first = match select(first, timer).await {
            Either::Left(((i, r, l), _)) => return (i, r, l, false, None),
            Either::Right((_, first)) => first,
        };
        let second_node = match self.pick(route, tried, 0) {
            Pick::Node(j) => j,
            _ => {
                let (i, r, l) = first.await;
                return (i, r, l, false, None);
            }
        };
        self.hedges.fetch_add(1, Ordering::Relaxed);
        let second = Box::pin(self.attempt(second_node, request, deadline));
        let hedge_started = Instant::now();
        let (done, other, loser) = match select(first, second).await {
            Either::Left((d, other)) => (d, Either::Right(other), second_node),
            Either::Right((d, other)) => (d, Either::Left(other), i),
        };
        if done.1.is_ok() {
            // Dropping `other` cancels the losing request.
            trail.push(Attempt {
                node: self.slots[loser].node.backend.name().to_string(),
                outcome: AttemptOutcome::Cancelled,
                // The first request had run `delay` before the timer.
                latency: if loser == i {
                    delay + started.elapsed()
                } else {
                    hedge_started.elapsed()
                },
            });
            return (done.0, done.1, started.elapsed() + delay, true, Some(loser));
        }
        if let Err(e) = &done.1 {
            trail.push(Attempt {
                node: self.slots[done.0].node.backend.name().to_string(),
                outcome: AttemptOutcome::Failed(e.clone()),
                latency: done.2,
            });
        }
        let (j, r, _) = match other {
            Either::Left(f) => f.await,
            Either::Right(s) => s.await,
        };
        (j, r, started.elapsed() + delay, true, None)
    }

    /// Routes one call: pick, attempt (hedged if configured), retry on
    /// failure with backoff, within the deadline; accounts everything.
    pub async fn chat(
        &self,
        route: &Route,
        tag: &CallTag,
        request: &ChatRequest,
    ) -> Result<Routed, ModelError> {
        self.chat_traced(route, tag, request, &mut Vec::new()).await
    }

    /// [`Router::chat`], adding every attempt it makes to `trail` as it
    /// ends (served, failed, or cancelled as a hedge's loser), in order, so
    /// that a caller can journal retries whether the call succeeds or not.
    ///
    /// Each call is a `chat {model}` span (see [`crate::otel`]) under the
    /// current span, when a subscriber enables it.
    pub async fn chat_traced(
        &self,
        route: &Route,
        tag: &CallTag,
        request: &ChatRequest,
        trail: &mut Vec<Attempt>,
    ) -> Result<Routed, ModelError> {
        let span = crate::otel::chat_span(request);
        // Not entered: its name (`chat {model}`) is known once a node is
        // picked, and an exported span's name is fixed when it is entered.
        let result = self.route_call(route, tag, request, trail, &span).await;
        if !span.is_disabled() {
            let served = result.as_ref().ok().and_then(|r| {
                self.slots
                    .iter()
                    .find(|s| s.node.backend.name() == r.response.node)
            });
            crate::otel::record_chat(&span, &result, served.map(|s| s.node.backend.model()));
        }
        result
    }

    /// [`Router::chat_traced`]'s work; the span is told each node picked.
    async fn route_call(
        &self,
        route: &Route,
        tag: &CallTag,
        request: &ChatRequest,
        trail: &mut Vec<Attempt>,
        span: &tracing::Span,
    ) -> Result<Routed, ModelError> {
        let start = Instant::now();
        let deadline = start + route.deadline.unwrap_or(self.config.deadline);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let prompt: u32 = request
            .messages
            .iter()
            .map(|m| super::estimate_tokens(&m.content))
            .fold(0, u32::saturating_add);
        let tokens = prompt.saturating_add(
            request
                .max_tokens
                .unwrap_or(256)
                .saturating_mul(request.samples()),
        );
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut tried = Vec::new();
        let mut last: Option<ModelError> = None;
        for attempt in 0..=self.config.retries {
            if Instant::now() >= deadline {
                break;
            }
            let i = match self.acquire(route, &tried, tokens, deadline).await {
                Ok(i) => i,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            };
            tried.push(i);
            if let Some(cell) = &route.picked {
                cell.set(self.slots[i].node.backend.name());
            }
            if !span.is_disabled() {
                crate::otel::record_pick(span, &*self.slots[i].node.backend, attempt == 0);
            }
            let (served, result, latency, hedged, loser) = self
                .hedged(i, route, request, &tried, deadline, trail)
                .await;
            let node = self.slots[served].node.backend.name().to_string();
            trail.push(Attempt {
                node: node.clone(),
                outcome: match &result {
                    Ok(_) => AttemptOutcome::Served,
                    Err(e) => AttemptOutcome::Failed(e.clone()),
                },
                latency,
            });
            match result {
                Ok(response) => {
                    let (lost_tokens, lost_cost) = match loser {
                        Some(j) => (prompt, self.account_lost(j, tag, prompt)),
                        None => (0, 0.0),
                    };
                    let routed = Routed {
                        attempts: attempt + 1,
                        hedged,
                        latency: start.elapsed(),
                        response,
                        lost_tokens,
                        lost_cost,
                    };
                    self.account(&node, tag, Some(&routed), attempt, hedged);
                    return Ok(routed);
                }
                Err(e) => {
                    self.account(&node, tag, None, 0, hedged);
                    tracing::debug!(target: "conclave::router", "attempt {} failed: {e}", attempt + 1);
                    last = Some(e);
                    if attempt < self.config.retries {
                        let delay = backoff.next().unwrap_or(self.config.max_backoff);
                        let until = (Instant::now() + delay).min(deadline);
                        tokio::time::sleep_until(until).await;
                    }
                }
            }
        }
        let after = start.elapsed();
        Err(match last {
            Some(ModelError::Timeout { node, .. }) => ModelError::Timeout { node, after },
            Some(e) => e,
            None => ModelError::Timeout {
                node: "*".into(),
                after,
            },
        })
    }

    /// Charges the prompt a cancelled hedge was sent (`tokens`, estimated)
    /// to its node `i`, the role and the run; what it cost.
    fn account_lost(&self, i: usize, tag: &CallTag, tokens: u32) -> f64 {
        let node = &self.slots[i].node;
        let cost = f64::from(tokens) * node.price_in / 1e6;
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let Accounts {
            by_node,
            by_role,
            by_run,
        } = &mut *a;
        for s in [
            stats(by_node, node.backend.name()),
            stats(by_role, &tag.role),
            stats(by_run, &tag.run),
        ] {
            s.counts.tokens_in += u64::from(tokens);
            s.counts.cost += cost;
        }
        cost
    }

    fn account(&self, node: &str, tag: &CallTag, ok: Option<&Routed>, retries: u32, hedged: bool) {
        let slot = self.slots.iter().find(|s| s.node.backend.name() == node);
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let Accounts {
            by_node,
            by_role,
            by_run,
        } = &mut *a;
        for s in [
            stats(by_node, node),
            stats(by_role, &tag.role),
            stats(by_run, &tag.run),
        ] {
            match ok {
                Some(r) => {
                    let latency = (r.latency.as_micros() as u64).max(1);
                    let _ = s.latency_us.record(latency);
                    let s = &mut s.counts;
                    let tin = r.response.prompt_tokens as u64;
                    let tout = r.response.completion_tokens() as u64;
                    s.calls += 1;
                    s.retries += retries as u64;
                    s.hedges += hedged as u64;
                    s.tokens_in += tin;
                    s.tokens_out += tout;
                    if let Some(slot) = slot {
                        s.cost += (tin as f64 * slot.node.price_in
                            + tout as f64 * slot.node.price_out)
                            / 1e6;
                    }
                }
                None => {
                    s.counts.failures += 1;
                    s.counts.hedges += hedged as u64;
                }
            }
        }
    }
}
