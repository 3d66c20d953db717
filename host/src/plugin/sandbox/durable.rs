//! Durable plugin calls: a role's or a judging verifier's call runs in
//! steps, each on a fresh instance, and gives its instance back while the
//! host makes a model call for it (see [`tape`](crate::plugin::tape) for
//! the record the steps replay from); the admission of replicas, and the
//! counters `/metrics` and `/ui` show.

use std::sync::atomic::{AtomicU64, Ordering};

use super::super::guard::{guard, WallReached};
use super::super::imports::{ComputeClock, LogQuota};
use super::super::tape::{Suspended, Tape, TapeFull};
use super::super::{checks::check_plan, sizes};
use super::super::{Candidate, Invocation, Outcome, PluginError, PluginKind, Task, Verdict};
use super::{closed, wrong_kind, Plugin, PluginRuntime, Pre};

/// Counters of the runtime's durable calls, for `/metrics`.
#[derive(Default)]
pub struct DurableStats {
    /// Steps run (guest calls begun), over every durable call.
    steps: AtomicU64,
    /// Calls waiting now on a model call the host makes for them, holding
    /// no instance.
    waiting: AtomicU64,
    /// Role calls waiting now for admission (`max_replicas` in flight).
    admitting: AtomicU64,
}

/// Counts a call as waiting on a model until dropped (also when the call's
/// future is dropped mid-wait).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the plugin runtime is doing now: instance slots in use, calls
/// waiting on a model with no instance, steps run so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeLoad {
    /// Instance slots held by running plugin calls.
    pub running: u64,
    /// The slots there are.
    pub slots: u64,
    /// Durable calls waiting on a model, holding no instance.
    pub waiting_on_model: u64,
    /// Guest steps begun since the runtime started (a durable call takes
    /// one more step per model call).
    pub steps: u64,
    /// Role calls (replicas) in flight: admitted and not yet returned.
    pub replicas: u64,
    /// The most replicas in flight at once ([`RuntimeConfig::max_replicas`]).
    pub max_replicas: u64,
    /// Role calls waiting for admission.
    pub waiting_for_admission: u64,
}

impl PluginRuntime {
    /// What the runtime is doing now.
    pub fn load(&self) -> RuntimeLoad {
        let slots = u64::from(self.config.max_concurrent_calls.max(1));
        RuntimeLoad {
            running: slots.saturating_sub(self.slots.available_permits() as u64),
            slots,
            waiting_on_model: self.durable_stats.waiting.load(Ordering::Relaxed),
            steps: self.durable_stats.steps.load(Ordering::Relaxed),
            replicas: (self.max_replicas - self.replicas.available_permits()) as u64,
            max_replicas: self.max_replicas as u64,
            waiting_for_admission: self.durable_stats.admitting.load(Ordering::Relaxed),
        }
    }

    /// Asks a verifier to judge `candidate`. A verifier that calls a model
    /// (a judge) waits for it holding no instance, like a role.
    pub async fn verify(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
        candidate: &Candidate,
    ) -> Result<Verdict, PluginError> {
        if !matches!(plugin.0.pre, Pre::Verifier(_)) {
            return Err(wrong_kind(plugin, PluginKind::Verifier));
        }
        let (out, _) = self
            .durable(plugin, inv, Durable::Verify(task, candidate))
            .await?;
        let DurableOut::Verdict(verdict) = out else {
            unreachable!("a verifier's step returns a verdict")
        };
        let verdict = verdict.map_err(|error| self.guest_error(plugin, inv, error))?;
        self.fits(plugin, inv, "its verdict", sizes::verdict(&verdict))?;
        if !(verdict.score.is_finite() && (0.0..=1.0).contains(&verdict.score)) {
            return Err(PluginError::BadOutput {
                plugin: plugin.id(),
                reason: format!("verdict score {} is outside 0..1", verdict.score),
            });
        }
        Ok(verdict)
    }

    /// Runs a role on `task`. The candidate's `node` and `replica` are the
    /// host's to vouch for: `node` is set from the host's own record of the
    /// completions this call received (empty when it made none), `replica`
    /// from the call; its confidence must lie in 0..1.
    ///
    /// While the role waits on a model it holds no instance slot (see
    /// [`tape`](super::tape)), unless the runtime runs calls straight
    /// through ([`RuntimeConfig::reexecute`](super::RuntimeConfig) off).
    pub async fn run_role(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
    ) -> Result<Outcome, PluginError> {
        if !matches!(plugin.0.pre, Pre::Role(_)) {
            return Err(wrong_kind(plugin, PluginKind::Role));
        }
        // Past `max_replicas` a replica waits here, holding nothing.
        let admitted = match self.replicas.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = Waiting::new(&self.durable_stats.admitting);
                self.replicas.acquire().await.map_err(|_| closed())?
            }
        };
        let result = self.durable(plugin, inv, Durable::Role(task)).await;
        drop(admitted);
        let (out, last_node) = result?;
        let DurableOut::Outcome(outcome) = out else {
            unreachable!("a role's step returns an outcome")
        };
        let mut outcome = outcome.map_err(|error| self.guest_error(plugin, inv, error))?;
        self.fits(plugin, inv, "its outcome", sizes::outcome(&outcome))?;
        match &mut outcome {
            Outcome::Candidate(c) => {
                check_candidate(plugin, c)?;
                c.node = last_node.unwrap_or_default();
                c.replica = inv.info.replica;
            }
            Outcome::Plan(plan) => {
                check_plan(plan).map_err(|reason| PluginError::BadOutput {
                    plugin: plugin.id(),
                    reason,
                })?;
            }
        }
        Ok(outcome)
    }

    /// Runs a role's or a verifier's call in steps (durable re-execution):
    /// each step runs the guest from the start on a fresh instance, with
    /// the imports of earlier steps answered from the call's tape, until it
    /// reaches a model call it has not made yet; the instance is then
    /// given back, the host makes the model call, and the next step
    /// begins. One clock bounds all the steps (compute and wall time), and
    /// every step runs on the same version of the plugin. Returns the
    /// guest's result and the node of its last model reply.
    async fn durable(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        call: Durable<'_>,
    ) -> Result<(DurableOut, Option<String>), PluginError> {
        let limits = self.limits_of(inv);
        let clock = ComputeClock::start(limits.deadline, limits.wall);
        let mut tape = self
            .config
            .reexecute
            .then(|| Tape::bounded(limits.host_calls as usize, limits.memory_bytes as usize));
        let mut log = LogQuota::default();
        let stats = &self.durable_stats;
        loop {
            // Waiting for a slot is not the plugin's compute.
            let slot = clock.waiting_on(self.slot(plugin)).await?;
            if let Some(t) = &mut tape {
                t.rewind();
            }
            stats.steps.fetch_add(1, Ordering::Relaxed);
            let mut store = self.new_step(inv, plugin, Some(clock.clone()), tape.take(), log);
            let store_ref = &mut store;
            let result = guard(&clock, async move {
                match (call, &plugin.0.pre) {
                    (Durable::Role(task), Pre::Role(pre)) => instantiate!(self, pre, store_ref)?
                        .call_run(&mut *store_ref, task)
                        .await
                        .map(DurableOut::Outcome),
                    (Durable::Verify(task, c), Pre::Verifier(pre)) => {
                        instantiate!(self, pre, store_ref)?
                            .call_verify(&mut *store_ref, task, c)
                            .await
                            .map(DurableOut::Verdict)
                    }
                    _ => unreachable!("the caller checked the plugin's kind"),
                }
            })
            .await;
            let state = store.data_mut();
            log = std::mem::take(&mut state.log);
            tape = state.tape.take();
            let suspended = matches!(&result, Err(e) if e.downcast_ref::<Suspended>().is_some());
            if !suspended {
                let last_node = store.data().last_node.clone();
                let out = self.finish(plugin, &store, result)?;
                if let Some(d) = tape.as_ref().and_then(Tape::unfinished) {
                    return Err(self
                        .finish::<()>(plugin, &store, Err(d.into()))
                        .unwrap_err());
                }
                return Ok((out, last_node));
            }
            // The step ended at a new model call: give the instance back,
            // make the call, record its reply, run the guest again.
            drop(store);
            drop(slot);
            let t = tape.as_mut().expect("only a durable call suspends");
            let request = t
                .take_pending()
                .expect("a suspended step names its request");
            let services = inv
                .services
                .clone()
                .expect("a call without services does not suspend");
            let mut info = inv.info.clone();
            if info.plugin.is_empty() {
                info.plugin = plugin.id();
            }
            // Bounded by the call's wall-clock limit, as when the guest
            // waited inside its own call.
            let waiting = Waiting::new(&stats.waiting);
            let reply = guard(&clock, async {
                Ok(clock
                    .waiting_on(services.chat(&info, request.clone()))
                    .await)
            })
            .await;
            drop(waiting);
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) if e.downcast_ref::<WallReached>().is_some() => {
                    return Err(PluginError::WallTimeout {
                        plugin: plugin.label(),
                        wall: clock.wall,
                    })
                }
                // The watchdog's other stop; waiting is not compute, so
                // only a clock that was already spent gets here.
                Err(_) => {
                    return Err(PluginError::Timeout {
                        plugin: plugin.label(),
                        deadline: clock.budget,
                    })
                }
            };
            if let Err(full) = t.answer(&request, reply) {
                return Err(tape_full(plugin, full));
            }
        }
    }
}

/// The call a durable plugin call makes at each step.
#[derive(Clone, Copy)]
enum Durable<'a> {
    Role(&'a Task),
    Verify(&'a Task, &'a Candidate),
}

/// What one step of a durable call returned.
enum DurableOut {
    Outcome(Result<Outcome, super::super::GuestError>),
    Verdict(Result<Verdict, super::super::GuestError>),
}

/// The numbers of a candidate must lie in the WIT's stated ranges.
fn check_candidate(plugin: &Plugin, c: &Candidate) -> Result<(), PluginError> {
    if let Some(x) = c.confidence {
        if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
            return Err(PluginError::BadOutput {
                plugin: plugin.id(),
                reason: format!("candidate confidence {x} is outside 0..1"),
            });
        }
    }
    Ok(())
}

/// A call whose record of host calls passed its bounds.
pub(super) fn tape_full(plugin: &Plugin, full: TapeFull) -> PluginError {
    PluginError::TooLarge {
        plugin: plugin.label(),
        what: "its record of host calls (kept to run it again after each model call; \
               `host_calls` and `memory_bytes` in its limits)"
            .into(),
        bytes: full.bytes,
        limit: full.limit,
    }
}
