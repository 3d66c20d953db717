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

pub mod bindings;
pub mod cache;
pub mod checks;
pub mod engine;
pub mod error;
pub mod imports;
pub mod output;
pub mod registry;
pub mod sandbox;

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
pub use sandbox::{Plugin, PluginRuntime};

/// The version of the `conclave:plugin` WIT package this host implements.
pub const WIT_VERSION: &str = "0.1.0";

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

/// Per-call limits of a plugin sandbox. One home for these numbers: the
/// defaults below, overridable per plugin in the team spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Compute time a call may use, not counting time spent waiting on host
    /// imports such as model calls. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Linear memory cap per instance. Default 64 MiB.
    pub memory_bytes: u64,
    /// Table elements cap per table. Default 100,000.
    pub table_elements: u64,
    /// Instances, tables and memories a component may create. Default 16.
    pub instances: u32,
    /// Bytes of a plugin's stdout and stderr kept per call for the host's
    /// log; the rest is dropped. Default 16 KiB.
    pub output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            instances: 16,
            output_bytes: 16 << 10,
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
    /// Default 128.
    pub max_concurrent_calls: u32,
    /// Epoch tick: the resolution of compute deadlines. Default 1 ms.
    pub epoch_tick: Duration,
    /// How often a long-running plugin yields its executor thread. Default 10 ms.
    pub yield_interval: Duration,
    /// Default limits of every call (overridable per call).
    pub limits: SandboxLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: dirs::cache_dir().map(|d| d.join("conclave").join("components")),
            pooling: true,
            max_concurrent_calls: 128,
            epoch_tick: Duration::from_millis(1),
            yield_interval: Duration::from_millis(10),
            limits: SandboxLimits::default(),
        }
    }
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
