//! One task to a decision: k replicas of a role on model nodes, each
//! candidate judged by the verifiers, the ballots counted by a voter, and the
//! voter's answer acted on: `need-more` draws more samples (adaptive
//! consistency), `revise` runs another round with the feedback (debate,
//! critique), `no-consensus` ends the task with its reason. Debate rounds
//! deliver each replica the others' previous answers over the bus. A
//! failing replica is drawn again on another node up to `retries` times; a
//! failing replica or verifier fails that ballot only; the task goes on with
//! the rest and ends with exactly one stop reason. A role may answer with a
//! plan instead: the task is then decided by that plan, and the scheduler
//! runs its subtasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use super::events::{Event, Served};
use super::services::RoutedServices;
use crate::model::router::CallTag;
use crate::model::Router;
use crate::plugin::checks::vouch;
use crate::plugin::{
    Ballot, CallInfo, Decided, Decision, Invocation, Outcome, Plugin, PluginError, PluginRuntime,
    Task,
};

mod debate;
mod describe;
mod draw;
pub(crate) mod judge;
mod remote;
mod types;

use describe::{decision_kind, outcome_kind};
pub use describe::{describe, describe_as};
use draw::Draw;
use judge::Judged;
pub use types::*;

/// A role, its verifiers and its voter, over a router.
pub struct Team {
    pub runtime: Arc<PluginRuntime>,
    pub router: Arc<Router>,
    pub role: PluginUse,
    pub verifiers: Vec<PluginUse>,
    pub voter: PluginUse,
    /// Where replicas run when workers serve the team (cluster mode);
    /// `None`: in this process.
    pub remote: Option<super::remote::Remote>,
}

/// The task as a plugin sees it.
fn wit_task(
    run: &str,
    spec: &TaskSpec,
    config: &str,
    round: u32,
    replica: u32,
    replicas: u32,
    feedback: &[String],
) -> Task {
    Task {
        id: spec.id.clone(),
        run_id: run.to_string(),
        prompt: spec.prompt.clone(),
        answer_kind: spec.answer_kind,
        round,
        replica,
        replicas,
        feedback: feedback.to_vec(),
        config: config.to_string(),
        checker: spec.checker.clone(),
    }
}

/// What a task has gathered so far.
#[derive(Default)]
struct Gathered {
    ballots: Vec<Ballot>,
    /// The slot (position in its round) of each ballot's replica.
    slots: Vec<u32>,
    plans: Vec<Vec<PlannedSubtask>>,
    /// The role version behind the first plan.
    plan_by: Option<Served>,
    failures: Vec<String>,
    /// Replicas that reported (a candidate, a plan or a failure); a
    /// replica cancelled before it reported is not a sample.
    samples: u32,
    /// Replica numbers given out so far (cancelled replicas included), so
    /// that no two replicas of a task share a number, and so a seed.
    drawn: u32,
    /// Replica copies started against stragglers.
    hedges: u32,
    /// The last vote decided an answer none of the ballots gave, which
    /// the team's voter is declared to do.
    synthesised: bool,
}

impl Team {
    /// Runs one task to a stop reason on a bus of its own, without limits.
    pub async fn run_task(&self, run: &str, spec: &TaskSpec) -> TaskResult {
        self.run_task_in(run, spec, &TaskContext::standalone())
            .await
    }

    /// Runs one task to a stop reason within its job's `ctx`. Dropping the
    /// future cancels the model calls in flight.
    pub async fn run_task_in(&self, run: &str, spec: &TaskSpec, ctx: &TaskContext) -> TaskResult {
        let services = self.services(run, spec, ctx);
        let used = services.used.clone();
        let mut g = Gathered::default();
        let mut feedback: Vec<String> = Vec::new();
        let (mut round, mut want) = (0u32, spec.replicas.max(1));
        let finish = |stop: StopReason, decided: Option<&Decided>, round: u32, g: Gathered| {
            ctx.bus.close_task(&spec.id);
            // On the caller's task span, if it has one (see `crate::otel`).
            tracing::Span::current().record("conclave.hedges", i64::from(g.hedges));
            let (tokens, cost) = ctx.meter.used();
            let plan = g.plans.into_iter().next();
            TaskResult {
                answer: decided.map(|d| d.answer.clone()),
                support: decided.map(|d| d.support).unwrap_or(0),
                synthesised: decided.is_some() && g.synthesised,
                total: decided.map(|d| d.total).unwrap_or(g.ballots.len() as u32),
                runner_up: decided.and_then(|d| d.runner_up.clone()),
                samples: g.samples,
                rounds: round + 1,
                nodes: g.ballots.iter().map(|b| b.candidate.node.clone()).collect(),
                failures: g.failures,
                plan: if stop == StopReason::Decided {
                    plan
                } else {
                    None
                },
                stop,
                tokens,
                cost,
            }
        };
        loop {
            if let Some(why) = ctx.meter.exhausted() {
                return finish(StopReason::BudgetExhausted(why), None, round, g);
            }
            // No more samples than the budgets still have room for.
            if let Some(room) = ctx.meter.room() {
                want = want.min(room.clamp(1, u64::from(u32::MAX)) as u32);
            }
            let early = self
                .draw(run, spec, ctx, &services, round, want, &feedback, &mut g)
                .await;
            if g.ballots.is_empty() && !g.plans.is_empty() {
                let plan = &g.plans[0];
                let text = plan
                    .iter()
                    .map(|s| format!("{}: {}", s.id, s.prompt))
                    .collect::<Vec<_>>()
                    .join("\n");
                let d = Decided {
                    answer: text,
                    support: 1,
                    total: g.plans.len() as u32,
                    runner_up: None,
                };
                ctx.observer.event(
                    run,
                    &Event::Planned {
                        task: spec.id.clone(),
                        subtasks: plan.iter().map(|s| s.id.clone()).collect(),
                        role: g.plan_by.clone(),
                    },
                );
                return finish(StopReason::Decided, Some(&d), round, g);
            }
            let left = spec.max_samples.saturating_sub(g.samples);
            if g.ballots.is_empty() && (left == 0 || ctx.meter.exhausted().is_some()) {
                let stop = match ctx.meter.exhausted().or_else(|| services.capped()) {
                    Some(why) => StopReason::BudgetExhausted(why),
                    None => StopReason::Failed(format!(
                        "all {} replicas failed; last: {}",
                        g.samples,
                        g.failures.last().cloned().unwrap_or_default()
                    )),
                };
                return finish(stop, None, round, g);
            }
            if round < spec.debate_rounds && !g.ballots.is_empty() {
                round += 1;
                feedback = self.exchange(run, spec, ctx, g.drawn, &g);
                g.ballots.clear();
                g.slots.clear();
                used.lock().unwrap_or_else(|p| p.into_inner()).clear();
                want = spec.replicas.max(1);
                continue;
            }
            let decision = match early {
                Some(voted) => voted,
                None => {
                    let (voted, vote) =
                        self.vote(run, spec, ctx, round, &mut g, 0, &feedback).await;
                    if let Some(vote) = vote {
                        ctx.observer.event(run, &vote);
                    }
                    voted
                }
            };
            let decision = match decision {
                Ok(d) => d,
                Err(what) => return finish(StopReason::Failed(what), None, round, g),
            };
            let spent = ctx.meter.exhausted();
            let stop = match decision {
                Decision::Decided(d) => Some((StopReason::Decided, Some(d))),
                Decision::NoConsensus(r) => Some((StopReason::NoConsensus(r), None)),
                Decision::NeedMore(_) | Decision::Revise(_) if spent.is_some() => {
                    Some((StopReason::BudgetExhausted(spent.unwrap_or_default()), None))
                }
                Decision::NeedMore(_) | Decision::Revise(_) if left == 0 => {
                    let why = format!(
                        "task {}: sample budget of {} spent",
                        spec.id, spec.max_samples
                    );
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::Revise(_) if round + 1 >= spec.max_rounds.max(1) + spec.debate_rounds => {
                    let why = format!(
                        "task {}: round budget of {} spent",
                        spec.id,
                        spec.max_rounds.max(1)
                    );
                    Some((StopReason::BudgetExhausted(why), None))
                }
                Decision::NeedMore(k) => {
                    want = k.min(left).max(1);
                    None
                }
                Decision::Revise(reason) => {
                    round += 1;
                    feedback = self.exchange(run, spec, ctx, g.drawn, &g);
                    feedback.push(reason);
                    g.ballots.clear();
                    g.slots.clear();
                    used.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    want = spec.replicas.max(1).min(left);
                    None
                }
            };
            if let Some((stop, decided)) = stop {
                return finish(stop, decided.as_ref(), round, g);
            }
        }
    }

    /// The host services of one task's replicas.
    fn services(&self, run: &str, spec: &TaskSpec, ctx: &TaskContext) -> Arc<RoutedServices> {
        Arc::new(RoutedServices {
            router: self.router.clone(),
            tag: CallTag {
                run: run.to_string(),
                role: self.role.current().name().to_string(),
            },
            run: run.to_string(),
            gold: spec.gold.clone(),
            used: Arc::new(Mutex::new(Default::default())),
            board: spec.inputs.clone(),
            ctx: ctx.clone(),
            calls: Mutex::default(),
            capped: Mutex::default(),
            spent: Mutex::default(),
            nodes: Mutex::default(),
        })
    }

    /// Asks the voter for a decision on the round's ballots so far, with
    /// `running` replicas of the round still out: the decision and the
    /// vote's event, for the caller to journal if it acts on it; or the
    /// voter's failure (journaled here), as the `Err` the task fails with.
    #[allow(clippy::too_many_arguments)]
    async fn vote(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        round: u32,
        g: &mut Gathered,
        running: u32,
        feedback: &[String],
    ) -> (Result<Decision, String>, Option<Event>) {
        let vt = wit_task(run, spec, &self.voter.config, round, 0, g.samples, feedback);
        let inv = Invocation {
            grants: self.voter.grants,
            limits: self.voter.limits.clone(),
            services: None,
            info: CallInfo {
                run_id: run.into(),
                task_id: spec.id.clone(),
                call: g.ballots.len() as u32,
                ..Default::default()
            },
        };
        let voter = self.voter.current();
        // The ballots move into an `Arc` for the call (a 0.2 voter reads
        // their texts from it on demand) and move back after: no copy.
        let shared = std::sync::Arc::new(std::mem::take(&mut g.ballots));
        let span =
            crate::otel::plugin_span("voter", &self.voter.name, voter.hash(), voter.version());
        let result = self
            .runtime
            .tally_shared(&voter, &inv, &vt, &shared)
            .instrument(span.clone())
            .await;
        crate::otel::record_plugin(&span, &result, |d| decision_kind(d).to_string());
        g.ballots = std::sync::Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
        // The host vouches for the decision: an answer the ballots gave,
        // with the host's counts (see `checks::vouch`).
        let result = result.and_then(|d| {
            let who = format!(
                "voter `{}` ({}, sha256 {})",
                self.voter.name,
                voter.id(),
                &voter.hash()[..voter.hash().len().min(12)]
            );
            vouch(&who, d, &g.ballots, self.voter.synthesises)
        });
        let decision = match result {
            Ok(v) => {
                g.synthesised = v.synthesised;
                v.decision
            }
            Err(e) => {
                let what = format!("voter: {e}");
                let failure = Event::PluginFailure {
                    task: spec.id.clone(),
                    what: what.clone(),
                    by: served(&self.voter, &voter),
                };
                ctx.observer.event(run, &failure);
                return (Err(what), None);
            }
        };
        let vote = Event::Vote {
            task: spec.id.clone(),
            round,
            ballots: g.ballots.len() as u32,
            counted: g.ballots.iter().map(|b| b.candidate.replica).collect(),
            running,
            voter: self.voter.name.clone(),
            decision: describe_as(&decision, g.synthesised),
            hash: Some(voter.hash().to_string()),
        };
        (Ok(decision), Some(vote))
    }

    /// Draws `want` samples at once, as concurrent replicas: each
    /// candidate is judged the moment it arrives and its ballot counted in
    /// arrival order; a failed replica is drawn again at once (a new
    /// replica number, so a new seed and another node) up to
    /// `spec.retries` times; a late one may be hedged
    /// ([`ReplicaHedge`]). With [`Decide::Early`], the voter is asked as
    /// soon as the ballots make a decision possible; when it decides, the
    /// replicas still running are cancelled and the decision (or the
    /// voter's failure) is returned. `None`: every replica has reported
    /// and the caller votes.
    #[allow(clippy::too_many_arguments)]
    async fn draw(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        services: &Arc<RoutedServices>,
        round: u32,
        want: u32,
        feedback: &[String],
        g: &mut Gathered,
    ) -> Option<Result<Decision, String>> {
        let config = ctx.caps.consensus;
        let hedge = config.hedge;
        let d = Draw {
            run,
            spec,
            ctx,
            services,
            round,
            feedback,
            live: Mutex::default(),
            next: AtomicU32::new(g.drawn + want),
            hedges: AtomicU32::new(0),
            hedge_after: match self.remote_now() {
                _ if !hedge.enabled => None,
                Some(r) => r
                    .replicas
                    .late_after(hedge.quantile.clamp(0.0, 1.0), hedge.min_samples),
                None => self
                    .router
                    .latency_quantile(hedge.quantile.clamp(0.0, 1.0), hedge.min_samples),
            },
            quantile: hedge.quantile.clamp(0.0, 1.0),
            min_samples: hedge.min_samples,
            max_hedges: hedge.max_extra,
            span: tracing::Span::current(),
        };
        let early = config.decide == Decide::Early && round >= spec.debate_rounds;
        let mut running = FuturesUnordered::new();
        let mut tries: HashMap<u32, u32> = HashMap::new();
        for slot in 0..want {
            let replica = g.drawn + slot;
            ctx.bus.open(&format!("{}/{replica}", spec.id));
            d.start(replica, slot);
            running.push(self.hedged(&d, slot, replica));
        }
        while let Some(a) = running.next().await {
            d.lock_live().remove(&a.replica);
            g.samples += 1;
            let fail = |why: String| format!("replica {}: {why}", a.replica);
            let mut failed = false;
            for (by, what) in a.judged.failures {
                self.failed(run, spec, ctx, g, by, what);
            }
            match a.outcome {
                Ok(Outcome::Candidate(c)) => {
                    let ballot = Ballot {
                        candidate: c,
                        verdicts: a.judged.verdicts,
                    };
                    ctx.observer.event(
                        run,
                        &Event::Ballot {
                            task: spec.id.clone(),
                            round,
                            ballot: (&ballot).into(),
                            role: Some(a.by),
                            verifiers: a.judged.judges,
                        },
                    );
                    g.ballots.push(ballot);
                    g.slots.push(a.slot);
                }
                Ok(Outcome::Plan(p)) => match ctx.caps.plan.check(&p, &ctx.roles) {
                    Ok(plan) => {
                        g.plan_by.get_or_insert(a.by);
                        g.plans.push(plan)
                    }
                    Err(e) => {
                        let what = fail(format!("invalid plan: {e}"));
                        self.failed(run, spec, ctx, g, a.by, what);
                        failed = true;
                    }
                },
                Err(e) => {
                    self.failed(run, spec, ctx, g, a.by, fail(e.to_string()));
                    failed = true;
                }
            }
            let tried = tries.entry(a.slot).or_insert(0);
            if failed && *tried < spec.retries && ctx.meter.exhausted().is_none() {
                *tried += 1;
                let replica = d.next.fetch_add(1, Ordering::Relaxed);
                ctx.bus.open(&format!("{}/{replica}", spec.id));
                ctx.observer.event(
                    run,
                    &Event::Retry {
                        task: spec.id.clone(),
                        replica,
                    },
                );
                d.start(replica, a.slot);
                running.push(self.hedged(&d, a.slot, replica));
            }
            let out = d.slots_out();
            if !early || out == 0 || !g.plans.is_empty() || !decidable(&g.ballots, out) {
                continue;
            }
            let leader = leader(&g.ballots);
            let (voted, vote) = self.vote(run, spec, ctx, round, g, out, feedback).await;
            let take = match &voted {
                Ok(Decision::Decided(dd)) => Some(dd.answer.as_str()) == leader.as_deref(),
                Ok(_) => false,
                Err(_) => true,
            };
            if take {
                // Only a vote acted on is journaled: one that leaves the
                // task waiting for more ballots changes nothing.
                if let Some(vote) = vote {
                    ctx.observer.event(run, &vote);
                }
                // Dropping the futures drops the plugin calls and their
                // model calls in flight; then each is journaled with what
                // it had been charged.
                drop(running);
                let why = match &voted {
                    Ok(d) => format!("the vote was {} without it", describe(d)),
                    Err(e) => format!("the task failed without it: {e}"),
                };
                let out: Vec<u32> = d.lock_live().keys().copied().collect();
                for replica in out {
                    self.cancelled(&d, replica, why.clone());
                }
                g.drawn = d.next.load(Ordering::Relaxed);
                g.hedges += d.hedges.load(Ordering::Relaxed);
                return Some(voted);
            }
        }
        g.drawn = d.next.load(Ordering::Relaxed);
        g.hedges += d.hedges.load(Ordering::Relaxed);
        None
    }

    /// One replica's role call and, when it answers with a candidate, the
    /// verifiers' judgement of it (all of them at once), in a span of its
    /// own under the task's; `copy_of`: the replica this one is a hedge of.
    async fn replica(
        &self,
        d: &Draw<'_>,
        slot: u32,
        replica: u32,
        copy_of: Option<u32>,
    ) -> Arrival {
        let span = crate::otel::replica_span(&d.span, replica, d.round, slot, copy_of);
        // Marks the span cancelled if this future is dropped before the end.
        let open = crate::otel::Unfinished::new(&span);
        let arrival = self
            .replica_in(d, slot, replica)
            .instrument(span.clone())
            .await;
        open.finish();
        if !span.is_disabled() {
            crate::otel::record_replica(
                &span,
                d.services.node_of(replica).as_deref(),
                d.services.spent_by(replica).0,
                &arrival.outcome,
            );
        }
        arrival
    }

    async fn replica_in(&self, d: &Draw<'_>, slot: u32, replica: u32) -> Arrival {
        if let Some(remote) = self.remote_now() {
            return self.remote_replica(d, slot, replica, remote).await;
        }
        let spec = d.spec;
        let task = wit_task(
            d.run,
            spec,
            &self.role.config,
            d.round,
            replica,
            spec.replicas,
            d.feedback,
        );
        let inv = Invocation {
            grants: self.role.grants,
            limits: self.role.limits.clone(),
            services: Some(d.services.for_call()),
            info: CallInfo {
                run_id: d.run.into(),
                task_id: spec.id.clone(),
                replica,
                ..Default::default()
            },
        };
        // This call's version, to its end, whatever is swapped in meanwhile.
        let role = self.role.current();
        let span = crate::otel::plugin_span("role", &self.role.name, role.hash(), role.version());
        let outcome = self
            .runtime
            .run_role(&role, &inv, &task)
            .instrument(span.clone())
            .await;
        crate::otel::record_plugin(&span, &outcome, |o| outcome_kind(o).to_string());
        let judged = match &outcome {
            Ok(Outcome::Candidate(c)) => self.judge(d.run, spec, d.round, c, d.services).await,
            _ => Judged::default(),
        };
        Arrival {
            slot,
            replica,
            by: served(&self.role, &role),
            outcome,
            judged,
        }
    }

    /// Journals `replica` as cancelled for `reason`, with what its model
    /// calls were charged (which stays charged).
    fn cancelled(&self, d: &Draw<'_>, replica: u32, reason: String) {
        d.lock_live().remove(&replica);
        let (tokens, cost) = d.services.spent_by(replica);
        d.ctx.observer.event(
            d.run,
            &Event::ReplicaCancelled {
                task: d.spec.id.clone(),
                round: d.round,
                replica,
                reason,
                tokens,
                cost,
            },
        );
    }

    /// A plugin call `by` failed with `what`; the task goes on.
    fn failed(
        &self,
        run: &str,
        spec: &TaskSpec,
        ctx: &TaskContext,
        g: &mut Gathered,
        by: Served,
        what: String,
    ) {
        ctx.observer.event(
            run,
            &Event::PluginFailure {
                task: spec.id.clone(),
                what: what.clone(),
                by,
            },
        );
        g.failures.push(what);
    }
}

/// One replica's outcome as it arrives, judged.
struct Arrival {
    slot: u32,
    replica: u32,
    by: Served,
    outcome: Result<Outcome, PluginError>,
    judged: Judged,
}

/// The leading answer among the ballots that passed every verifier: most
/// ballots, then the smaller answer.
fn leader(ballots: &[Ballot]) -> Option<String> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for b in ballots {
        if !b.candidate.answer.is_empty() && b.verdicts.iter().all(|v| v.pass) {
            *counts.entry(&b.candidate.answer).or_insert(0) += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(a, _)| a.to_string())
}

/// Whether the ballots so far settle a count-based vote whatever the `out`
/// replicas still running answer: the leader's passing ballots outnumber
/// every other answer's ballots (passing or not, so whether a voter counts
/// failed ballots does not matter) plus `out`.
fn decidable(ballots: &[Ballot], out: u32) -> bool {
    let Some(lead) = leader(ballots) else {
        return false;
    };
    let mut lead_n = 0u32;
    let mut others: BTreeMap<&str, u32> = BTreeMap::new();
    for b in ballots {
        let a = b.candidate.answer.as_str();
        if a == lead {
            lead_n += b.verdicts.iter().all(|v| v.pass) as u32;
        } else if !a.is_empty() {
            *others.entry(a).or_insert(0) += 1;
        }
    }
    let rival = others.values().copied().max().unwrap_or(0);
    lead_n > rival + out
}

/// Which component served a call of `u`: `plugin`, the version it took.
fn served(u: &PluginUse, plugin: &Plugin) -> Served {
    Served {
        plugin: u.name.clone(),
        hash: plugin.hash().to_string(),
    }
}
