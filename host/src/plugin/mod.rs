//! The plugin runtime: roles, verifiers and voters as sandboxed WebAssembly
//! components.
//!
//! What lives here: one wasmtime [`Engine`](wasmtime::Engine) with epoch
//! interruption and (where the machine allows) the pooling allocator
//! ([`engine`]); components compiled once and cached on disk ([`cache`]);
//! per-call sandboxes with a compute deadline, a memory cap and no WASI
//! capabilities ([`sandbox`]); the host imports a plugin reaches only through
//! its grant ([`imports`]); and a directory registry with hot swap
//! ([`registry`]).
//!
//! What does not: deciding which plugin runs when (the team runtime) and
//! reaching models (the model nodes). Model calls and messages arrive through
//! the [`HostServices`] a caller passes with each call.

pub mod ballot_box;
pub mod bindings;
pub mod cache;
pub mod checks;
pub mod engine;
pub mod error;
pub mod guard;
pub mod imports;
mod load;
pub mod output;
pub mod registry;
pub mod sandbox;
pub mod signature;
pub mod sizes;
pub mod tape;
pub mod wasi;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bindings::types::{
    AnswerKind, Ballot, Candidate, Decided, Decision, Descriptor, Message, Outcome, Plan,
    PluginError as GuestError, PluginKind, Subtask, Task, Verdict,
};
pub use error::{PluginError, TrapKind};
pub use registry::{PluginInfo, Registry};
pub use sandbox::{Plugin, PluginRuntime, RuntimeLoad};

/// The newest version of the `conclave:plugin` WIT package this host
/// implements; the built-ins and `conclave plugins new` target it.
pub const WIT_VERSION: &str = "0.2.0";

/// Every version of the `conclave:plugin` WIT package this host loads.
/// 0.2 changes only the voter world (`wit/0.2/conclave.wit`); its role and
/// verifier worlds are 0.1's.
pub const WIT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// A host import a plugin can be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `llm.chat`.
    Llm,
    /// `bus.send`, `bus.inbox`.
    Bus,
    /// `blackboard.read`, `blackboard.keys`.
    Blackboard,
    /// `log.write`.
    Log,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Llm => "llm",
            Capability::Bus => "bus",
            Capability::Blackboard => "blackboard",
            Capability::Log => "log",
        })
    }
}

impl From<bindings::types::Capability> for Capability {
    fn from(c: bindings::types::Capability) -> Self {
        use bindings::types::Capability as W;
        match c {
            W::Llm => Capability::Llm,
            W::Bus => Capability::Bus,
            W::Blackboard => Capability::Blackboard,
            W::Log => Capability::Log,
        }
    }
}

/// The host imports a plugin may use on one call. The team spec grants them;
/// by default only `log` is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    pub llm: bool,
    pub bus: bool,
    pub blackboard: bool,
    pub log: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            llm: false,
            bus: false,
            blackboard: false,
            log: true,
        }
    }
}

impl Grants {
    /// Nothing at all, not even `log`.
    pub fn none() -> Self {
        Grants {
            llm: false,
            bus: false,
            blackboard: false,
            log: false,
        }
    }

    /// Exactly the listed capabilities.
    pub fn of(caps: &[Capability]) -> Self {
        let mut g = Grants::none();
        for c in caps {
            match c {
                Capability::Llm => g.llm = true,
                Capability::Bus => g.bus = true,
                Capability::Blackboard => g.blackboard = true,
                Capability::Log => g.log = true,
            }
        }
        g
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::Llm => self.llm,
            Capability::Bus => self.bus,
            Capability::Blackboard => self.blackboard,
            Capability::Log => self.log,
        }
    }
}

/// The grants a built-in plugin gets when a team uses it without a
/// `[[plugin]]` table of its own (or with one that gives no `grants`):
/// roles may call models, the synthesizer may also read its dependencies'
/// answers, `llm-judge` may call models; voters and the other verifiers get
/// nothing but `log`. Any other plugin gets only what the spec grants.
pub fn builtin_grants(name: &str) -> Option<&'static [Capability]> {
    Some(match name {
        "solver" | "critic" | "coordinator" | "programmer" | "llm-judge" => &[Capability::Llm],
        "synthesizer" => &[Capability::Llm, Capability::Blackboard],
        "answer-format" | "numeric-check" | "majority" | "weighted" | "quorum" | "borda" => &[],
        "adaptive" => &[],
        _ => return None,
    })
}

/// Per-call limits of a plugin sandbox. One home for these numbers: the
/// defaults below, overridable per plugin in the team spec
/// (`[[plugin]] limits = { deadline = "500ms", memory_bytes = 33554432 }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Compute time a call may use, not counting time spent waiting on the
    /// host's own imports (model calls, the bus). Time a plugin spends
    /// blocked in WASI (`sleep`, `poll`) counts. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Wall-clock time a call may take, waits on model calls included: the
    /// bound on a call whatever it waits for. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub wall: Duration,
    /// Linear memory cap per call, summed over every memory of the
    /// component. Default 64 MiB; at most the runtime's
    /// [`RuntimeConfig::max_memory_bytes`].
    pub memory_bytes: u64,
    /// Table elements cap per table. Default 100,000.
    pub table_elements: u64,
    /// Instances, tables and memories a component may create. Default 16.
    pub instances: u32,
    /// Bytes of a plugin's stdout and stderr kept per call for the host's
    /// log; the rest is dropped. Default 16 KiB.
    pub output_bytes: usize,
    /// Bytes of text a call may return in all (answer, reasoning, reasons,
    /// plan, errors): a larger result is refused with
    /// [`PluginError::TooLarge`]. Default 1 MiB.
    pub result_bytes: usize,
    /// Bytes a plugin may pass to one host import (a model request, a bus
    /// message, a blackboard key, a log line). Default 1 MiB.
    pub import_bytes: usize,
    /// `log.write` lines kept per call; the rest are counted and dropped.
    /// Default 100.
    pub log_lines: u32,
    /// `log.write` bytes kept per call; the rest are dropped. Default 16 KiB.
    pub log_bytes: usize,
    /// Host resources (WASI streams, pollables, ...) a call may hold at
    /// once: each costs host memory. Default 10,000.
    pub handles: u32,
    /// Host calls (model calls, bus and blackboard calls; not `log`) a
    /// role's or verifier's call may make in all: each is kept in the
    /// call's record, from which it is run again after each model call.
    /// The record's text is bounded by `memory_bytes`. Default 100,000.
    pub host_calls: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            deadline: Duration::from_secs(2),
            wall: Duration::from_secs(300),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            instances: 16,
            output_bytes: 16 << 10,
            result_bytes: 1 << 20,
            import_bytes: 1 << 20,
            log_lines: 100,
            log_bytes: 16 << 10,
            handles: 10_000,
            host_calls: 100_000,
        }
    }
}

/// Settings of the plugin runtime as a whole.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    /// Default: `conclave/components` under the user's cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator when the machine allows it (default yes).
    pub pooling: bool,
    /// Instances that may run at once; further calls wait for a slot.
    /// A role or verifier waiting on a model holds none (with `reexecute`),
    /// so this bounds plugin calls computing at once, not replicas in
    /// flight. Default 128.
    pub max_concurrent_calls: u32,
    /// Durable re-execution (default on): a role or verifier that calls a
    /// model gives its instance back while the host makes the call, and
    /// runs again from the start with its earlier host calls answered from
    /// a record ([`tape`]). Off: a call holds its instance until it
    /// returns, so at most `max_concurrent_calls` replicas are in flight.
    pub reexecute: bool,
    /// Role calls (replicas) in flight at once in this process, running or
    /// waiting on a model; one more waits for admission. `None`: one per
    /// MiB of the machine's memory ([`default_max_replicas`]).
    pub max_replicas: Option<usize>,
    /// Fault injection for tests: each step of a durable call gets another
    /// `wasi:random` seed, so a plugin that draws before a host call does
    /// not repeat itself when run again. Off by default; never useful
    /// outside a test of the divergence check.
    #[doc(hidden)]
    pub reseed_each_step: bool,
    /// Epoch tick: the resolution of compute deadlines. Default 1 ms.
    pub epoch_tick: Duration,
    /// How often a long-running plugin yields its executor thread. Default 10 ms.
    pub yield_interval: Duration,
    /// Default limits of every call (overridable per call).
    pub limits: SandboxLimits,
    /// The most linear memory any one call may be given (a plugin's
    /// `memory_bytes` above it is refused at load): what the pooling
    /// allocator reserves per slot. Default 256 MiB.
    pub max_memory_bytes: u64,
    /// Largest component file the host reads. Default 256 MiB.
    pub max_file_bytes: u64,
    /// How long a call waits for a free instance slot of the pooling
    /// allocator before it fails. Default 30 s.
    pub slot_wait: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: dirs::cache_dir().map(|d| d.join("conclave").join("components")),
            pooling: true,
            max_concurrent_calls: 128,
            reexecute: true,
            max_replicas: None,
            reseed_each_step: false,
            epoch_tick: Duration::from_millis(1),
            yield_interval: Duration::from_millis(10),
            limits: SandboxLimits::default(),
            max_memory_bytes: 256 << 20,
            max_file_bytes: 256 << 20,
            slot_wait: Duration::from_secs(30),
        }
    }
}

impl RuntimeConfig {
    /// The replicas in flight this runtime admits: `max_replicas`, else
    /// the default derived from memory; at least 1.
    pub fn replicas_limit(&self) -> usize {
        self.max_replicas
            .unwrap_or_else(default_max_replicas)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
    }
}

/// The default bound on replicas in flight: one per MiB of the machine's
/// memory (24,576 on a 24 GiB machine), at least 1,024. A replica waiting
/// on a model holds no instance, only its task and the record of its host
/// calls (a few KiB with short prompts, its prompts and replies with long
/// ones), so this leaves room for prompts hundreds of times larger than
/// the built-in roles'. Measured: `conclave bench load` (BENCHMARKS.md).
pub fn default_max_replicas() -> usize {
    (total_memory_bytes() >> 20).max(1024) as usize
}

/// The machine's memory in bytes (4 GiB where it cannot be read).
fn total_memory_bytes() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system settings.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return pages as u64 * size as u64;
        }
    }
    4 << 30
}

/// Who is calling: passed to [`HostServices`] so that model calls and
/// messages are attributed to the right run, task and replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallInfo {
    pub run_id: String,
    pub task_id: String,
    pub replica: u32,
    /// `name@version` of the plugin making the call.
    pub plugin: String,
    /// Which call this is among the plugin's calls for this task and
    /// replica (the n-th vote, say): with the fields above, the seed of the
    /// call's `wasi:random` stream.
    pub call: u32,
}

/// What the host imports reach: model nodes, the bus, the blackboard. The
/// team runtime implements it; a plugin call without services sees every
/// such import fail as unavailable (it still needs the grant to call it).
#[async_trait::async_trait]
pub trait HostServices: Send + Sync + 'static {
    /// One model completion.
    async fn chat(
        &self,
        call: &CallInfo,
        request: bindings::llm::ChatRequest,
    ) -> Result<bindings::llm::ChatResponse, bindings::llm::LlmError>;

    /// Send a message on the run's bus.
    fn send(
        &self,
        call: &CallInfo,
        message: bindings::bus::Envelope,
    ) -> Result<(), bindings::bus::BusError> {
        let _ = (call, message);
        Err(bindings::bus::BusError::UnknownRecipient(
            "this call has no bus".into(),
        ))
    }

    /// Take the messages waiting for the calling replica.
    fn inbox(&self, call: &CallInfo) -> Vec<bindings::bus::Envelope> {
        let _ = call;
        Vec::new()
    }

    /// A decided dependency output.
    fn read(&self, call: &CallInfo, id: &str) -> Option<String> {
        let _ = (call, id);
        None
    }

    /// The ids of readable dependency outputs.
    fn keys(&self, call: &CallInfo) -> Vec<String> {
        let _ = call;
        Vec::new()
    }
}

/// Everything a single plugin call needs besides its arguments.
#[derive(Clone, Default)]
pub struct Invocation {
    pub grants: Grants,
    /// Limits for this call; the runtime's defaults when `None`.
    pub limits: Option<SandboxLimits>,
    pub services: Option<Arc<dyn HostServices>>,
    pub info: CallInfo,
}

impl Invocation {
    /// An invocation with these grants and services.
    pub fn new(grants: Grants, services: Option<Arc<dyn HostServices>>) -> Self {
        Invocation {
            grants,
            services,
            ..Default::default()
        }
    }
}
