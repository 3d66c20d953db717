//! A replica run by a worker process: the coordinator's side (hand the
//! job over, then journal and charge what comes back as if it had run
//! here) and the worker's (run the role and the verifiers on its own
//! nodes, and gather its events).

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::draw::Draw;
use super::{served, Arrival, Judged, TaskContext, TaskSpec, Team};
use crate::plugin::PluginError;
use crate::team::budget::{Limits, Meter};
use crate::team::bus::Bus;
use crate::team::caps::Caps;
use crate::team::events::{Event, Observer};
use crate::team::remote::{Remote, ReplicaDone, ReplicaJob};

/// Gathers a worker's replica's events.
#[derive(Default)]
struct Gather(Mutex<Vec<Event>>);

impl Observer for Gather {
    fn event(&self, _run: &str, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
}

impl Team {
    /// The workers replicas go to now: none when the team has none, when
    /// none serving it is alive, or when the role may use the run's bus
    /// (which lives in this process).
    pub(super) fn remote_now(&self) -> Option<&Remote> {
        self.remote
            .as_ref()
            .filter(|r| !self.role.grants.bus && r.replicas.available(&r.team))
    }

    /// Hands replica `replica` to a worker and takes what it did as if it
    /// had run here: its model calls journaled and charged to the task,
    /// its ballot judged by the verifiers there.
    pub(super) async fn remote_replica(
        &self,
        d: &Draw<'_>,
        slot: u32,
        replica: u32,
        remote: &Remote,
    ) -> Arrival {
        let spec = d.spec;
        let recorded = d
            .ctx
            .recorded
            .as_ref()
            .map(|m| {
                let mut calls: Vec<_> = m
                    .iter()
                    .filter(|((t, r, _), _)| *t == spec.id && *r == replica)
                    .map(|((_, _, n), c)| (*n, c.clone()))
                    .collect();
                calls.sort_by_key(|(n, _)| *n);
                calls
            })
            .unwrap_or_default();
        let job = ReplicaJob {
            team: remote.team.clone(),
            digest: remote.digest.clone(),
            run: d.run.to_string(),
            task: spec.id.clone(),
            prompt: spec.prompt.clone(),
            answer_kind: spec.answer_kind,
            gold: spec.gold.clone(),
            checker: spec.checker.clone(),
            replicas: spec.replicas,
            inputs: spec.inputs.clone(),
            role: self.role.name.clone(),
            verifiers: self.verifiers.iter().map(|v| v.name.clone()).collect(),
            round: d.round,
            replica,
            feedback: d.feedback.to_vec(),
            sampling: d.ctx.caps.sampling.clone(),
            recorded,
        };
        let here = served(&self.role, &self.role.current());
        let done = match remote.replicas.run(job).await {
            Ok(done) => done,
            Err(why) => {
                return Arrival {
                    slot,
                    replica,
                    by: here,
                    outcome: Err(PluginError::Remote {
                        plugin: self.role.name.clone(),
                        message: why,
                    }),
                    judged: Judged::default(),
                }
            }
        };
        d.ctx.observer.event(
            d.run,
            &Event::ReplicaWorked {
                task: spec.id.clone(),
                round: d.round,
                replica,
                worker: done.worker.clone(),
                attempt: done.attempt,
                ms: done.ms,
            },
        );
        for e in &done.events {
            if let Event::ModelCall {
                tokens_in,
                tokens_out,
                cost,
                node,
                latency_ms,
                ..
            } = e
            {
                let tag = &d.services.tag;
                self.router.with_accounts(|a| {
                    a.add_call(
                        node,
                        &tag.role,
                        &tag.run,
                        u64::from(*tokens_in),
                        u64::from(*tokens_out),
                        *cost,
                        Duration::from_secs_f64(latency_ms.max(0.0) / 1e3),
                    )
                });
                d.services.charge(
                    replica,
                    u64::from(*tokens_in) + u64::from(*tokens_out),
                    *cost,
                );
            }
            d.ctx.observer.event(d.run, e);
        }
        let worker = done.worker;
        Arrival {
            slot,
            replica,
            by: done.by,
            outcome: done.outcome.map_err(|message| PluginError::Remote {
                plugin: format!("{} on worker {worker}", self.role.name),
                message,
            }),
            judged: Judged {
                verdicts: done.verdicts,
                judges: done.judges,
                failures: done.failures,
            },
        }
    }

    /// Runs `job` here, for a coordinator elsewhere (`conclave worker`):
    /// the role on this team's nodes, the verifiers on its candidate, each
    /// under the team's sandbox limits and caps; the model calls are
    /// capped per task as a coordinator caps them.
    pub async fn work(
        &self,
        job: &ReplicaJob,
        caps: &Caps,
        worker: &str,
        attempt: u32,
    ) -> ReplicaDone {
        let started = Instant::now();
        let gather = Arc::new(Gather::default());
        let caps = Caps {
            sampling: job.sampling.clone(),
            ..caps.clone()
        };
        let recorded = job
            .recorded
            .iter()
            .map(|(n, c)| ((job.task.clone(), job.replica, *n), c.clone()))
            .collect();
        let ctx = TaskContext {
            bus: Arc::new(Bus::with_limits(caps.bus)),
            meter: Meter::job(Limits {
                max_calls: Some(caps.model.calls_per_task),
                ..Limits::default()
            }),
            observer: gather.clone(),
            recorded: Some(Arc::new(recorded)),
            caps: Arc::new(caps),
            roles: Arc::new([]),
        };
        let spec = TaskSpec {
            id: job.task.clone(),
            prompt: job.prompt.clone(),
            answer_kind: job.answer_kind,
            gold: job.gold.clone(),
            checker: job.checker.clone(),
            replicas: job.replicas,
            max_samples: job.replicas,
            max_rounds: 1,
            debate_rounds: 0,
            retries: 0,
            inputs: job.inputs.clone(),
        };
        let services = self.services(&job.run, &spec, &ctx);
        let d = Draw {
            run: &job.run,
            spec: &spec,
            ctx: &ctx,
            services: &services,
            round: job.round,
            feedback: &job.feedback,
            live: Mutex::default(),
            next: AtomicU32::new(job.replica + 1),
            hedges: AtomicU32::new(0),
            max_hedges: 0,
            hedge_after: None,
            quantile: 1.0,
            min_samples: usize::MAX,
            span: tracing::Span::current(),
        };
        let a = self.replica_in(&d, 0, job.replica).await;
        let events = std::mem::take(&mut *gather.0.lock().unwrap_or_else(|p| p.into_inner()));
        ReplicaDone {
            run: job.run.clone(),
            task: job.task.clone(),
            round: job.round,
            replica: job.replica,
            attempt,
            worker: worker.to_string(),
            by: a.by,
            outcome: a.outcome.map_err(|e| e.to_string()),
            verdicts: a.judged.verdicts,
            judges: a.judged.judges,
            failures: a.judged.failures,
            events,
            ms: started.elapsed().as_secs_f64() * 1e3,
            // The worker sets its item's.
            ticket: String::new(),
        }
    }
}
