//! Per-call sandboxes: a fresh store and instance for every call, made from a
//! pre-instantiated component, with the call's grants and limits.
//!
//! A call cannot hurt the host or another call: its compute deadline is
//! enforced with epoch interruption (time awaiting host imports excluded),
//! its memory through a resource limiter, its WASI context grants nothing
//! (no files, sockets, environment, arguments; clocks frozen; stdout and
//! stderr captured with a cap), and every failure becomes a typed
//! [`PluginError`] on that call alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use super::bindings::{role, verifier, voter, voter_v2};
use super::checks::{check_decision, panic_message};
use super::engine::{self, Ticker};
use super::guard::{guard, WallReached};
use super::imports::{
    CallSetup, CapabilityDenied, ComputeClock, DeadlineReached, ImportTooLarge, LogQuota,
    MemoryCapReached, StoreState,
};
use super::output::CappedPipe;
use super::sizes;
use super::tape::{Diverged, Tape, TapeFull};
use super::wasi::{FrozenClock, SeededRandom};
use super::{
    Ballot, Decision, Descriptor, Invocation, PluginError, PluginKind, RuntimeConfig,
    SandboxLimits, Task, TrapKind,
};

/// Instantiates a pre-instantiated component, waiting (bounded by the
/// runtime's `slot_wait`) while the pooling allocator has no free slot for
/// it instead of failing the call.
macro_rules! instantiate {
    ($rt:expr, $pre:expr, $store:expr) => {{
        let give_up = std::time::Instant::now() + $rt.config.slot_wait;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match $pre.instantiate_async(&mut *$store).await {
                Err(e)
                    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some()
                        && std::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        }
    }};
}

mod durable;

use durable::tape_full;
pub use durable::{DurableStats, RuntimeLoad};

pub(super) enum Pre {
    Role(role::RolePre<StoreState>),
    Verifier(verifier::VerifierPre<StoreState>),
    Voter(voter::VoterPre<StoreState>),
    VoterV2(voter_v2::VoterPre<StoreState>),
}

pub(super) struct PluginInner {
    pub(super) descriptor: Descriptor,
    pub(super) hash: String,
    pub(super) path: PathBuf,
    pub(super) pre: Pre,
}

/// A loaded, checked plugin. Cheap to clone; a call holds a clone for its
/// whole duration, which is what lets hot swap replace a plugin while calls
/// on the old version finish.
#[derive(Clone)]
pub struct Plugin(pub(super) Arc<PluginInner>);

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({} from {})", self.id(), self.0.path.display())
    }
}

impl Plugin {
    /// The plugin's own description.
    pub fn descriptor(&self) -> &Descriptor {
        &self.0.descriptor
    }
    /// Its name (`majority`).
    pub fn name(&self) -> &str {
        &self.0.descriptor.name
    }
    /// Its version (`0.1.0`).
    pub fn version(&self) -> &str {
        &self.0.descriptor.version
    }
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name(), self.version())
    }
    /// How errors name it: `name@version`, or its file while it is being
    /// loaded and has not described itself yet.
    pub fn label(&self) -> String {
        if self.name().is_empty() {
            format!("from {}", self.0.path.display())
        } else {
            self.id()
        }
    }
    /// Which world it implements.
    pub fn kind(&self) -> PluginKind {
        self.0.descriptor.kind
    }
    /// The version of the `conclave:plugin` contract it was built against
    /// (`0.1`, `0.2`). 0.2 changes only voters, so a 0.2 role or verifier
    /// is indistinguishable from a 0.1 one and shows as `0.1`.
    pub fn contract(&self) -> &'static str {
        match self.0.pre {
            Pre::VoterV2(_) => "0.2",
            _ => "0.1",
        }
    }
    /// SHA-256 of the component file.
    pub fn hash(&self) -> &str {
        &self.0.hash
    }
    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

/// The name of a plugin kind as the WIT world calls it.
pub fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Role => "role",
        PluginKind::Verifier => "verifier",
        PluginKind::Voter => "voter",
    }
}

/// Compiles, checks and calls plugins. One per process is enough; share it
/// behind an `Arc`.
pub struct PluginRuntime {
    pub(super) engine: Engine,
    pub(super) pooling: bool,
    pub(super) config: RuntimeConfig,
    pub(super) role_linker: Linker<StoreState>,
    pub(super) verifier_linker: Linker<StoreState>,
    pub(super) voter_linker: Linker<StoreState>,
    pub(super) voter_v2_linker: Linker<StoreState>,
    pub(super) slots: tokio::sync::Semaphore,
    pub(super) durable_stats: DurableStats,
    /// Admission of role calls (replicas): at most `max_replicas` in
    /// flight, running or waiting on a model.
    pub(super) replicas: tokio::sync::Semaphore,
    pub(super) max_replicas: usize,
    pub(super) _ticker: Ticker,
}

impl PluginRuntime {
    /// Starts the engine and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, PluginError> {
        let (engine, pooling) = engine::build(&config)?;
        let mk = |which: &str| -> Result<Linker<StoreState>, PluginError> {
            let mut linker = Linker::new(&engine);
            let e = |e: wasmtime::Error| PluginError::Engine(format!("linking {which}: {e:#}"));
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(e)?;
            // Deny-all `wasi:http`, for toolchains that import it whether or
            // not the plugin uses it.
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(e)?;
            type Me = wasmtime::component::HasSelf<StoreState>;
            match which {
                "role" => role::Role::add_to_linker::<StoreState, Me>(&mut linker, |s| s),
                "verifier" => {
                    verifier::Verifier::add_to_linker::<StoreState, Me>(&mut linker, |s| s)
                }
                "voter" => voter::Voter::add_to_linker::<StoreState, Me>(&mut linker, |s| s),
                _ => voter_v2::Voter::add_to_linker::<StoreState, Me>(&mut linker, |s| s),
            }
            .map_err(e)?;
            Ok(linker)
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(PluginRuntime {
            role_linker: mk("role")?,
            verifier_linker: mk("verifier")?,
            voter_linker: mk("voter")?,
            voter_v2_linker: mk("voter 0.2")?,
            slots: tokio::sync::Semaphore::new(config.max_concurrent_calls.max(1) as usize),
            durable_stats: DurableStats::default(),
            replicas: tokio::sync::Semaphore::new(config.replicas_limit()),
            max_replicas: config.replicas_limit(),
            engine,
            pooling,
            config,
            _ticker: ticker,
        })
    }

    /// The engine (for tools that compile or inspect components).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the pooling allocator is in use.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The limits of a call: the invocation's, else the runtime's defaults.
    fn limits_of<'a>(&'a self, inv: &'a Invocation) -> &'a SandboxLimits {
        inv.limits.as_ref().unwrap_or(&self.config.limits)
    }

    /// Waits for a call slot, at most `slot_wait`.
    async fn slot(&self, plugin: &Plugin) -> Result<tokio::sync::SemaphorePermit<'_>, PluginError> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(self.config.slot_wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(PluginError::Busy {
                plugin: plugin.label(),
                waited: self.config.slot_wait,
            }),
        }
    }

    fn new_store(&self, inv: &Invocation, plugin: &Plugin) -> Store<StoreState> {
        self.new_step(inv, plugin, None, None, Default::default())
    }

    /// A store for one step of a durable call: its clock and log quota go
    /// on from the steps before, its imports replay from `tape`.
    fn new_step(
        &self,
        inv: &Invocation,
        plugin: &Plugin,
        clock: Option<Arc<ComputeClock>>,
        tape: Option<Tape>,
        log: LogQuota,
    ) -> Store<StoreState> {
        let limits = self.limits_of(inv).clone();
        let stdout = CappedPipe::new(limits.output_bytes);
        let stderr = CappedPipe::new(limits.output_bytes);
        let mut info = inv.info.clone();
        if info.plugin.is_empty() {
            info.plugin = plugin.id();
        }
        let mut seed = super::wasi::seed(&info);
        if self.config.reseed_each_step {
            seed[0] = seed[0].wrapping_add(tape.as_ref().map_or(0, Tape::steps) as u8);
        }
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(SeededRandom::new(seed, SeededRandom::SECURE))
            .insecure_random(SeededRandom::new(seed, SeededRandom::INSECURE))
            .insecure_random_seed(SeededRandom::insecure_seed(seed))
            .max_random_size(limits.import_bytes as u64);
        let memory_cap = limits.memory_bytes.min(self.config.max_memory_bytes);
        let setup = CallSetup {
            limits,
            memory_cap,
            grants: inv.grants,
            services: inv.services.clone(),
            info,
            clock,
            tape,
            log,
        };
        let state = StoreState::new(wasi.build(), setup, stdout, stderr);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let tick = self.config.epoch_tick.max(Duration::from_micros(100));
        let ticks = move |d: Duration| (d.as_nanos() / tick.as_nanos()).max(1) as u64;
        let yield_ticks = ticks(self.config.yield_interval);
        let budget = store.data().clock.budget;
        store.set_epoch_deadline(ticks(budget).min(yield_ticks));
        store.epoch_deadline_callback(move |ctx| {
            let clock = &ctx.data().clock;
            let used = clock.used();
            if used >= clock.budget {
                return Err(DeadlineReached.into());
            }
            if clock.started.elapsed() >= clock.wall {
                return Err(WallReached.into());
            }
            Ok(UpdateDeadline::Yield(
                ticks(clock.budget - used).min(yield_ticks),
            ))
        });
        store
    }

    /// Maps a failed call to a typed error and logs what the plugin printed.
    fn finish<R>(
        &self,
        plugin: &Plugin,
        store: &Store<StoreState>,
        result: wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let state = store.data();
        let name = plugin.label();
        if !state.stdout.is_empty() {
            tracing::debug!(target: "conclave::plugin", plugin = %name, "stdout: {}", state.stdout.text());
        }
        if !state.stderr.is_empty() {
            tracing::debug!(target: "conclave::plugin", plugin = %name, "stderr: {}", state.stderr.text());
        }
        if state.log.dropped > 0 {
            tracing::warn!(
                target: "conclave::plugin",
                plugin = %name,
                "{} log lines over the call's quota ({} lines, {} bytes) were dropped",
                state.log.dropped,
                state.limits.log_lines,
                state.limits.log_bytes
            );
        }
        let e = match result {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if let Some(full) = e.downcast_ref::<TapeFull>() {
            return Err(tape_full(plugin, full.clone()));
        }
        if let Some(d) = e.downcast_ref::<Diverged>() {
            return Err(PluginError::Nondeterministic {
                plugin: name,
                call: d.call,
                reason: format!("it made {} where it made {} before", d.got, d.expected),
            });
        }
        if let Some(c) = e.downcast_ref::<CapabilityDenied>() {
            return Err(PluginError::CapabilityDenied {
                plugin: name,
                capability: c.0,
            });
        }
        if let Some(m) = e.downcast_ref::<MemoryCapReached>() {
            return Err(PluginError::OutOfMemory {
                plugin: name,
                limit_bytes: m.0,
            });
        }
        if e.downcast_ref::<DeadlineReached>().is_some()
            || matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt))
        {
            return Err(PluginError::Timeout {
                plugin: name,
                deadline: state.clock.budget,
            });
        }
        if e.downcast_ref::<WallReached>().is_some() {
            return Err(PluginError::WallTimeout {
                plugin: name,
                wall: state.clock.wall,
            });
        }
        if let Some(t) = e.downcast_ref::<ImportTooLarge>() {
            return Err(PluginError::TooLarge {
                plugin: name,
                what: format!("what it passed to `{}`", t.import),
                bytes: t.bytes,
                limit: t.limit,
            });
        }
        if matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) {
            return Err(PluginError::TooManyHandles {
                plugin: name,
                limit: state.limits.handles,
            });
        }
        if let Some(x) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Err(PluginError::Exit {
                plugin: name,
                code: x.0,
                stderr: panic_message(&state.stderr.text()),
            });
        }
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return Err(PluginError::Busy {
                plugin: name,
                waited: self.config.slot_wait,
            });
        }
        let trap = match e.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => TrapKind::StackOverflow,
            Some(Trap::UnreachableCodeReached) => TrapKind::Unreachable,
            Some(Trap::MemoryOutOfBounds) => TrapKind::MemoryOutOfBounds,
            Some(Trap::IntegerDivisionByZero | Trap::IntegerOverflow) => TrapKind::Arithmetic,
            Some(other) => TrapKind::Other(other.to_string()),
            None => TrapKind::Other(format!("{e:#}")),
        };
        Err(PluginError::Trap {
            plugin: name,
            trap,
            message: panic_message(&state.stderr.text()),
        })
    }

    /// A guest's own error, refused when it is larger than the call's
    /// `result_bytes`.
    fn guest_error(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        error: super::GuestError,
    ) -> PluginError {
        let limit = self.limits_of(inv).result_bytes;
        let bytes = sizes::guest_error(&error);
        if bytes > limit {
            return PluginError::TooLarge {
                plugin: plugin.id(),
                what: "its error".into(),
                bytes,
                limit,
            };
        }
        PluginError::Guest {
            plugin: plugin.id(),
            error,
        }
    }

    /// Refuses a result larger than the call's `result_bytes`.
    fn fits(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        what: &str,
        bytes: usize,
    ) -> Result<(), PluginError> {
        let limit = self.limits_of(inv).result_bytes;
        if bytes > limit {
            return Err(PluginError::TooLarge {
                plugin: plugin.id(),
                what: what.into(),
                bytes,
                limit,
            });
        }
        Ok(())
    }

    pub(super) async fn describe(&self, plugin: &Plugin) -> Result<Descriptor, PluginError> {
        let inv = Invocation {
            grants: super::Grants::none(),
            ..Default::default()
        };
        let _slot = self.slot(plugin).await?;
        let mut store = self.new_store(&inv, plugin);
        let clock = store.data().clock.clone();
        let store_ref = &mut store;
        let result = guard(&clock, async move {
            match &plugin.0.pre {
                Pre::Role(pre) => {
                    instantiate!(self, pre, store_ref)?
                        .call_describe(&mut *store_ref)
                        .await
                }
                Pre::Verifier(pre) => {
                    instantiate!(self, pre, store_ref)?
                        .call_describe(&mut *store_ref)
                        .await
                }
                Pre::Voter(pre) => {
                    instantiate!(self, pre, store_ref)?
                        .call_describe(&mut *store_ref)
                        .await
                }
                Pre::VoterV2(pre) => {
                    instantiate!(self, pre, store_ref)?
                        .call_describe(&mut *store_ref)
                        .await
                }
            }
        })
        .await;
        self.finish(plugin, &store, result)
    }

    /// Asks a voter for a decision on `ballots`.
    pub async fn tally(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
        ballots: &[Ballot],
    ) -> Result<Decision, PluginError> {
        match &plugin.0.pre {
            Pre::Voter(_) => self.tally_v1(plugin, inv, task, ballots).await,
            Pre::VoterV2(_) => {
                let shared = Arc::new(ballots.to_vec());
                self.tally_shared(plugin, inv, task, &shared).await
            }
            _ => Err(wrong_kind(plugin, PluginKind::Voter)),
        }
    }

    /// [`tally`](Self::tally) on ballots the caller already shares: a 0.2
    /// voter reads their texts from the `Arc` on demand, without the host
    /// copying them first. Once the call returns the runtime holds no clone,
    /// so a caller that moved its `Vec` in gets it back with
    /// `Arc::try_unwrap`.
    pub async fn tally_shared(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
        ballots: &Arc<Vec<Ballot>>,
    ) -> Result<Decision, PluginError> {
        let pre = match &plugin.0.pre {
            Pre::VoterV2(pre) => pre,
            Pre::Voter(_) => return self.tally_v1(plugin, inv, task, ballots).await,
            _ => return Err(wrong_kind(plugin, PluginKind::Voter)),
        };
        let _slot = self.slot(plugin).await?;
        let boxed = super::ballot_box::ballot_box(ballots);
        let mut store = self.new_store(inv, plugin);
        store.data_mut().ballots = Some(ballots.clone());
        let clock = store.data().clock.clone();
        let store_ref = &mut store;
        let result = guard(&clock, async move {
            instantiate!(self, pre, store_ref)?
                .call_tally(&mut *store_ref, task, &boxed)
                .await
        })
        .await;
        let finished = self.finish(plugin, &store, result);
        drop(store);
        let decision = finished?.map_err(|error| self.guest_error(plugin, inv, error))?;
        self.fits(plugin, inv, "its decision", sizes::decision(&decision))?;
        check_decision(plugin, &decision, ballots.len())?;
        Ok(decision)
    }

    async fn tally_v1(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
        ballots: &[Ballot],
    ) -> Result<Decision, PluginError> {
        let Pre::Voter(pre) = &plugin.0.pre else {
            return Err(wrong_kind(plugin, PluginKind::Voter));
        };
        let _slot = self.slot(plugin).await?;
        let mut store = self.new_store(inv, plugin);
        let clock = store.data().clock.clone();
        let store_ref = &mut store;
        let result = guard(&clock, async move {
            instantiate!(self, pre, store_ref)?
                .call_tally(&mut *store_ref, task, ballots)
                .await
        })
        .await;
        let decision = self
            .finish(plugin, &store, result)?
            .map_err(|error| self.guest_error(plugin, inv, error))?;
        self.fits(plugin, inv, "its decision", sizes::decision(&decision))?;
        check_decision(plugin, &decision, ballots.len())?;
        Ok(decision)
    }

    /// Times the phases of one voter call (store, instantiate, call, drop),
    /// for the benchmark's "where the time goes", and says how many bytes of
    /// linear memory the instance held at the end of the call.
    #[doc(hidden)]
    pub async fn tally_phases(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        task: &Task,
        ballots: &Arc<Vec<Ballot>>,
    ) -> Result<([Duration; 4], u64), PluginError> {
        let t0 = Instant::now();
        let mut store = self.new_store(inv, plugin);
        let t1;
        let t2;
        let result = match &plugin.0.pre {
            Pre::Voter(pre) => {
                t1 = Instant::now();
                let i = pre.instantiate_async(&mut store).await;
                t2 = Instant::now();
                match i {
                    Ok(i) => i.call_tally(&mut store, task, ballots).await,
                    Err(e) => Err(e),
                }
            }
            Pre::VoterV2(pre) => {
                let boxed = super::ballot_box::ballot_box(ballots);
                store.data_mut().ballots = Some(ballots.clone());
                t1 = Instant::now();
                let i = pre.instantiate_async(&mut store).await;
                t2 = Instant::now();
                match i {
                    Ok(i) => i.call_tally(&mut store, task, &boxed).await,
                    Err(e) => Err(e),
                }
            }
            _ => return Err(wrong_kind(plugin, PluginKind::Voter)),
        };
        let t3 = Instant::now();
        self.finish(plugin, &store, result)?
            .map_err(|error| self.guest_error(plugin, inv, error))?;
        let memory = store.data().limiter.memory_used;
        drop(store);
        let t4 = Instant::now();
        Ok(([t1 - t0, t2 - t1, t3 - t2, t4 - t3], memory))
    }
}

fn closed() -> PluginError {
    PluginError::Engine("the plugin runtime is shutting down".into())
}

fn wrong_kind(plugin: &Plugin, wanted: PluginKind) -> PluginError {
    PluginError::WorldMismatch {
        path: plugin.path().to_path_buf(),
        world: kind_name(wanted).into(),
        reason: format!(
            "plugin {} is a {}, not a {}",
            plugin.id(),
            kind_name(plugin.kind()),
            kind_name(wanted)
        ),
    }
}
