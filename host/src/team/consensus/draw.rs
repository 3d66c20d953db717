//! One draw of replicas: what its replicas share while they run, and the
//! hedge of a straggler (a copy on another node once it has run past its
//! node's latency quantile; the first of the two to answer counts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{select, Either};

use super::{Arrival, TaskContext, TaskSpec, Team};
use crate::team::events::Event;
use crate::team::services::RoutedServices;

/// What one draw of replicas shares while they run.
pub(super) struct Draw<'a> {
    pub(super) run: &'a str,
    pub(super) spec: &'a TaskSpec,
    pub(super) ctx: &'a TaskContext,
    pub(super) services: &'a Arc<RoutedServices>,
    pub(super) round: u32,
    pub(super) feedback: &'a [String],
    /// Replicas running, with the slot (position in the round) each fills:
    /// a hedged replica and its copy fill one slot.
    pub(super) live: Mutex<BTreeMap<u32, u32>>,
    /// The next replica number to give out.
    pub(super) next: AtomicU32,
    /// Copies started so far, and at most.
    pub(super) hedges: AtomicU32,
    pub(super) max_hedges: u32,
    /// How long a replica runs before it is hedged when its node's own
    /// quantile is not known yet (the slowest node's); `None`: never.
    pub(super) hedge_after: Option<Duration>,
    /// The quantile of its node's latencies past which a replica is hedged,
    /// and the successful calls a node needs before its quantile counts.
    pub(super) quantile: f64,
    pub(super) min_samples: usize,
    /// The task's span: each replica's is a child of it.
    pub(super) span: tracing::Span,
}

impl Draw<'_> {
    pub(super) fn lock_live(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u32>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn start(&self, replica: u32, slot: u32) {
        self.lock_live().insert(replica, slot);
    }

    /// Slots of the draw still waiting for a ballot.
    pub(super) fn slots_out(&self) -> u32 {
        self.lock_live().values().collect::<BTreeSet<_>>().len() as u32
    }
}

impl Team {
    /// One replica, with a copy started on another node if it runs past
    /// the hedge delay; the first of the two to answer is returned (a
    /// failure waits for the other), the other cancelled.
    pub(super) async fn hedged(&self, d: &Draw<'_>, slot: u32, replica: u32) -> Arrival {
        let mut first = Box::pin(self.replica(d, slot, replica, None));
        let Some(fallback) = d.hedge_after else {
            return first.await;
        };
        let started = tokio::time::Instant::now();
        // The delay is the quantile of the node the replica is waiting on,
        // which the router tells once it picks one (and again on a retry
        // or the role's next call): until then, and while that node has
        // too few calls to tell, the slowest node's quantile.
        let late_node = loop {
            let node = d.services.node_of(replica);
            let after = node
                .as_deref()
                .and_then(|n| {
                    self.router
                        .node_latency_quantile(n, d.quantile, d.min_samples)
                })
                .unwrap_or(fallback);
            let Some(wait) = after
                .checked_sub(started.elapsed())
                .filter(|w| !w.is_zero())
            else {
                break node;
            };
            tokio::select! {
                // An answer and the hedge delay at the same instant: the answer.
                biased;
                a = &mut first => return a,
                _ = tokio::time::sleep(wait) => {}
            }
            // Past the delay of the node it was on: hedge, unless it has
            // since moved to a node whose delay is longer.
            if d.services.node_of(replica) == node {
                break node;
            }
        };
        let granted = d
            .hedges
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < d.max_hedges).then_some(n + 1)
            })
            .is_ok();
        if !granted {
            return first.await;
        }
        let copy = d.next.fetch_add(1, Ordering::Relaxed);
        if let Some(node) = &late_node {
            d.services.avoid(node);
        }
        d.ctx.bus.open(&format!("{}/{copy}", d.spec.id));
        d.ctx.observer.event(
            d.run,
            &Event::ReplicaHedged {
                task: d.spec.id.clone(),
                round: d.round,
                replica,
                copy,
                after_ms: started.elapsed().as_secs_f64() * 1e3,
            },
        );
        d.start(copy, slot);
        let second = Box::pin(self.replica(d, slot, copy, Some(replica)));
        let (won, other, loser) = match select(first, second).await {
            Either::Left((a, other)) => (a, Either::Right(other), copy),
            Either::Right((a, other)) => (a, Either::Left(other), replica),
        };
        if let Err(e) = &won.outcome {
            // The first to end failed: the other may still answer.
            d.lock_live().remove(&won.replica);
            d.ctx.observer.event(
                d.run,
                &Event::PluginFailure {
                    task: d.spec.id.clone(),
                    what: format!("replica {}: {e}", won.replica),
                    by: won.by.clone(),
                },
            );
            return match other {
                Either::Left(f) | Either::Right(f) => f.await,
            };
        }
        drop(other);
        let why = format!("hedged: replica {} answered first", won.replica);
        self.cancelled(d, loser, why);
        won
    }
}
