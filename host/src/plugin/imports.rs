//! The host side of a plugin's imports, and the per-call store state they
//! live in.
//!
//! Every import first checks the call's [`Grants`]; one that was not granted
//! stops the call with [`CapabilityDenied`], which the sandbox turns into
//! [`PluginError::CapabilityDenied`](super::PluginError::CapabilityDenied).
//! Time spent awaiting a model call is recorded so that the compute deadline
//! only counts the plugin's own running time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{blackboard, bus, llm, log, types};
use super::output::CappedPipe;
use super::tape::{Answer, Import, Tape};
use super::{CallInfo, Capability, Grants, HostServices, SandboxLimits};

/// The error an import raises to stop a call that used an ungranted import.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("capability `{0}` was not granted")]
pub struct CapabilityDenied(pub Capability);

/// The error the memory limiter raises when a plugin grows past its cap.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory cap of {0} bytes reached")]
pub struct MemoryCapReached(pub u64);

/// The error the epoch callback raises at the compute deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("compute deadline reached")]
pub struct DeadlineReached;

/// The error an import raises when a plugin hands it more bytes than
/// [`SandboxLimits::import_bytes`](super::SandboxLimits::import_bytes).
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{import}` was given {bytes} bytes, over the limit of {limit}")]
pub struct ImportTooLarge {
    pub import: &'static str,
    pub bytes: usize,
    pub limit: usize,
}

/// Enforces the memory, table and instance caps of one call. The memory
/// cap is on the sum over every memory the component creates, not on each
/// memory alone.
pub struct Limiter {
    pub memory_bytes: u64,
    pub table_elements: u64,
    pub instances: usize,
    /// Bytes of linear memory the call holds now, over all its memories.
    pub memory_used: u64,
}

impl Limiter {
    /// A limiter with nothing allocated yet.
    pub fn new(memory_bytes: u64, table_elements: u64, instances: usize) -> Self {
        Limiter {
            memory_bytes,
            table_elements,
            instances,
            memory_used: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let total = self.memory_used.saturating_add(grow);
        if total > self.memory_bytes {
            return Err(MemoryCapReached(self.memory_bytes).into());
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired as u64 <= self.table_elements)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

/// Compute time accounting for one call: wall time since the start minus
/// time spent waiting on the host's own imports. Shared with the call's
/// watchdog, which reads it while the guest is blocked (in a WASI `poll`,
/// say) and cannot reach an epoch check.
pub struct ComputeClock {
    pub budget: Duration,
    pub wall: Duration,
    pub started: Instant,
    /// Nanoseconds waited on host imports that have returned.
    waited: AtomicU64,
    /// Nanoseconds since `started` at which the import now waited on began,
    /// plus one; 0 when none is.
    waiting_since: AtomicU64,
}

impl ComputeClock {
    /// A clock started now.
    pub fn start(budget: Duration, wall: Duration) -> Arc<Self> {
        Arc::new(ComputeClock {
            budget,
            wall,
            started: Instant::now(),
            waited: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
        })
    }

    fn nanos(&self) -> u64 {
        self.started.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    /// Compute time used so far.
    pub fn used(&self) -> Duration {
        let now = self.nanos();
        let mut waited = self.waited.load(Ordering::Acquire);
        let since = self.waiting_since.load(Ordering::Acquire);
        if since > 0 {
            waited += now.saturating_sub(since - 1);
        }
        Duration::from_nanos(now.saturating_sub(waited))
    }

    /// Whether the call is waiting on a host import right now.
    pub fn waiting(&self) -> bool {
        self.waiting_since.load(Ordering::Acquire) > 0
    }

    /// Runs `f`, an await on a host import, without charging its time.
    pub async fn waiting_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let start = self.nanos();
        self.waiting_since.store(start + 1, Ordering::Release);
        let out = f.await;
        let end = self.nanos();
        self.waited
            .fetch_add(end.saturating_sub(start), Ordering::AcqRel);
        self.waiting_since.store(0, Ordering::Release);
        out
    }
}

/// What `log.write` has let through on one call.
#[derive(Default)]
pub struct LogQuota {
    pub lines: u32,
    pub bytes: usize,
    pub dropped: u32,
}

/// The data of one call's store.
pub struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub grants: Grants,
    pub services: Option<Arc<dyn HostServices>>,
    pub info: CallInfo,
    pub clock: Arc<ComputeClock>,
    pub limits: SandboxLimits,
    pub log: LogQuota,
    pub stdout: CappedPipe,
    pub stderr: CappedPipe,
    /// The node of the last completion this call received: the host's own
    /// record of where a role's candidate came from.
    pub last_node: Option<String>,
    /// The ballots of a 0.2 voter's `tally` call, whose texts the voter
    /// reads through `ballot-texts`.
    pub ballots: Option<Arc<Vec<super::Ballot>>>,
    /// The imports of a durable call (a role's, a verifier's) made in its
    /// earlier steps: replayed, then recorded as the guest goes on; `None`
    /// for a call that runs straight through, holding its instance while
    /// it waits.
    pub tape: Option<Tape>,
    pub http: super::wasi::DenyHttp,
    pub http_hooks: super::wasi::DenyHooks,
}

/// Who and what a call's store is for, besides its WASI context.
pub struct CallSetup {
    pub limits: SandboxLimits,
    /// The memory cap actually enforced (the limits', bounded by the
    /// runtime's ceiling).
    pub memory_cap: u64,
    pub grants: Grants,
    pub services: Option<Arc<dyn HostServices>>,
    pub info: CallInfo,
    /// The clock of a call that runs in several steps, shared by them; a
    /// new one when `None`.
    pub clock: Option<Arc<ComputeClock>>,
    /// What earlier steps' imports answered; `None`: no re-execution.
    pub tape: Option<Tape>,
    /// `log.write`'s quota as earlier steps left it.
    pub log: LogQuota,
}

impl StoreState {
    /// The state of a call that starts now; stdout and stderr are the pipes
    /// given to `wasi`.
    pub fn new(wasi: WasiCtx, setup: CallSetup, stdout: CappedPipe, stderr: CappedPipe) -> Self {
        let CallSetup {
            limits,
            memory_cap,
            grants,
            services,
            info,
            clock,
            tape,
            log,
        } = setup;
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.handles as usize);
        StoreState {
            wasi,
            table,
            limiter: Limiter::new(memory_cap, limits.table_elements, limits.instances as usize),
            grants,
            services,
            info,
            clock: clock.unwrap_or_else(|| ComputeClock::start(limits.deadline, limits.wall)),
            limits,
            log,
            stdout,
            stderr,
            last_node: None,
            ballots: None,
            tape,
            http: super::wasi::DenyHttp::default(),
            http_hooks: super::wasi::DenyHooks,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for StoreState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    fn check(&self, cap: Capability) -> wasmtime::Result<()> {
        if self.grants.allows(cap) {
            Ok(())
        } else {
            Err(CapabilityDenied(cap).into())
        }
    }

    /// Stops the call when an import is handed more than `import_bytes`.
    fn fits(&self, import: &'static str, bytes: usize) -> wasmtime::Result<()> {
        let limit = self.limits.import_bytes;
        if bytes > limit {
            return Err(ImportTooLarge {
                import,
                bytes,
                limit,
            }
            .into());
        }
        Ok(())
    }
}

fn request_bytes(r: &llm::ChatRequest) -> usize {
    r.messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .chain(r.stop.iter().map(String::len))
        .chain(r.route.tags.iter().map(String::len))
        .sum::<usize>()
        + r.route.node.len()
}

fn envelope_bytes(m: &bus::Envelope) -> usize {
    m.recipient.len() + m.kind.len() + m.body.len() + m.correlation_id.len()
}

impl types::Host for StoreState {}

impl log::Host for StoreState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.check(Capability::Log)?;
        // A re-executed step writes again what an earlier step wrote.
        if self.tape.as_ref().is_some_and(Tape::replaying) {
            return Ok(());
        }
        // A chatty plugin loses lines, not its call: past the quota lines
        // are counted, and the count is logged once when the call ends.
        let room = self.limits.log_bytes.saturating_sub(self.log.bytes);
        if self.log.lines >= self.limits.log_lines || room == 0 {
            self.log.dropped = self.log.dropped.saturating_add(1);
            return Ok(());
        }
        let mut end = message.len().min(room).min(4096);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        self.log.lines += 1;
        self.log.bytes += message.len().max(1);
        let plugin = &self.info.plugin;
        match level {
            log::Level::Debug => tracing::debug!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "conclave::plugin", %plugin, "{message}"),
        }
        Ok(())
    }
}

impl StoreState {
    /// The recorded answer to `import` when a durable call's earlier step
    /// made it; `None` when it is new (or the call is not durable).
    fn replayed(&mut self, import: Import) -> wasmtime::Result<Option<Answer>> {
        match &mut self.tape {
            Some(tape) => Ok(tape.replay(import)?),
            None => Ok(None),
        }
    }

    /// Records what a new import answered, on a durable call's tape; a
    /// tape past its bounds stops the call.
    fn recorded(&mut self, import: Import, answer: Answer) -> wasmtime::Result<Answer> {
        if let Some(tape) = &mut self.tape {
            tape.record(import, &answer)?;
        }
        Ok(answer)
    }
}

impl llm::Host for StoreState {
    async fn chat(
        &mut self,
        request: llm::ChatRequest,
    ) -> wasmtime::Result<Result<llm::ChatResponse, llm::LlmError>> {
        self.check(Capability::Llm)?;
        self.fits("llm.chat", request_bytes(&request))?;
        let import = Import::chat(&request);
        let result = match self.replayed(import)? {
            Some(Answer::Chat(reply)) => reply,
            Some(_) => unreachable!("the tape answers an import with its own kind"),
            None => {
                let Some(services) = self.services.clone() else {
                    let none = Err(llm::LlmError::Unavailable(
                        "no model nodes are attached to this call".into(),
                    ));
                    return Ok(match self.recorded(import, Answer::Chat(none))? {
                        Answer::Chat(r) => r,
                        _ => unreachable!(),
                    });
                };
                // A durable call ends its step here: the host makes the
                // call with no instance held, then runs the guest again.
                if let Some(tape) = &mut self.tape {
                    return Err(tape.suspend(request).into());
                }
                let clock = self.clock.clone();
                clock.waiting_on(services.chat(&self.info, request)).await
            }
        };
        if let Ok(r) = &result {
            self.last_node = Some(r.node.clone());
        }
        Ok(result)
    }
}

impl bus::Host for StoreState {
    fn send(&mut self, mut message: bus::Envelope) -> wasmtime::Result<Result<(), bus::BusError>> {
        self.check(Capability::Bus)?;
        self.fits("bus.send", envelope_bytes(&message))?;
        let import = Import::send(&message);
        if let Some(Answer::Send(r)) = self.replayed(import)? {
            return Ok(r);
        }
        message.sender = format!("{}/{}", self.info.task_id, self.info.replica);
        let result = match &self.services {
            Some(s) => s.send(&self.info, message),
            None => Err(bus::BusError::UnknownRecipient(
                "this call has no bus".into(),
            )),
        };
        Ok(match self.recorded(import, Answer::Send(result))? {
            Answer::Send(r) => r,
            _ => unreachable!(),
        })
    }

    fn inbox(&mut self) -> wasmtime::Result<Vec<bus::Envelope>> {
        self.check(Capability::Bus)?;
        if let Some(Answer::Inbox(m)) = self.replayed(Import::Inbox)? {
            return Ok(m);
        }
        let messages = self
            .services
            .as_ref()
            .map(|s| s.inbox(&self.info))
            .unwrap_or_default();
        Ok(
            match self.recorded(Import::Inbox, Answer::Inbox(messages))? {
                Answer::Inbox(m) => m,
                _ => unreachable!(),
            },
        )
    }
}

impl blackboard::Host for StoreState {
    fn read(&mut self, id: String) -> wasmtime::Result<Option<String>> {
        self.check(Capability::Blackboard)?;
        self.fits("blackboard.read", id.len())?;
        let import = Import::read(&id);
        if let Some(Answer::Read(v)) = self.replayed(import)? {
            return Ok(v);
        }
        let value = self.services.as_ref().and_then(|s| s.read(&self.info, &id));
        Ok(match self.recorded(import, Answer::Read(value))? {
            Answer::Read(v) => v,
            _ => unreachable!(),
        })
    }

    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        self.check(Capability::Blackboard)?;
        if let Some(Answer::Keys(k)) = self.replayed(Import::Keys)? {
            return Ok(k);
        }
        let keys = self
            .services
            .as_ref()
            .map(|s| s.keys(&self.info))
            .unwrap_or_default();
        Ok(match self.recorded(Import::Keys, Answer::Keys(keys))? {
            Answer::Keys(k) => k,
            _ => unreachable!(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The memory cap is on the sum over a call's memories.
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_call() {
        let mut l = Limiter::new(64 << 20, 100, 16);
        // Two memories of 40 MiB each: the second is over the sum.
        assert!(l.memory_growing(0, 40 << 20, None).unwrap());
        let e = l.memory_growing(0, 40 << 20, None).unwrap_err();
        assert!(e.downcast_ref::<MemoryCapReached>().is_some());
        // Growing the first within the cap still works.
        assert!(l.memory_growing(40 << 20, 60 << 20, None).unwrap());
        assert_eq!(l.memory_used, 60 << 20);
    }
}
