//! Typed errors of the plugin runtime.
//!
//! Every way a plugin call or a plugin load can fail has its own variant, so
//! a caller matches on what happened instead of comparing messages. Each
//! message says what happened to which plugin and, where there is one, what
//! to do about it.

use std::path::PathBuf;
use std::time::Duration;

use super::bindings::types::PluginError as GuestError;
use super::Capability;

/// Why a trap stopped a plugin, independent of wasmtime's own enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest ran out of wasm stack (usually unbounded recursion).
    StackOverflow,
    /// The guest executed `unreachable`: a Rust panic or abort lands here.
    Unreachable,
    /// An out-of-bounds memory access.
    MemoryOutOfBounds,
    /// Integer division by zero or overflow.
    Arithmetic,
    /// Any other trap, with wasmtime's description.
    Other(String),
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapKind::StackOverflow => f.write_str("stack overflow"),
            TrapKind::Unreachable => f.write_str("unreachable executed (panic or abort)"),
            TrapKind::MemoryOutOfBounds => f.write_str("out-of-bounds memory access"),
            TrapKind::Arithmetic => f.write_str("integer division by zero or overflow"),
            TrapKind::Other(s) => f.write_str(s),
        }
    }
}

/// What went wrong with a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The call ran on a cluster worker and failed there, or no worker
    /// answered it.
    #[error("plugin {plugin}: {message}")]
    Remote { plugin: String, message: String },

    /// The plugin computed past its deadline and was interrupted. Time spent
    /// waiting on host imports (model calls) does not count.
    #[error("plugin {plugin} ran past its compute deadline of {deadline:?} and was stopped")]
    Timeout { plugin: String, deadline: Duration },

    /// The call ran past its wall-clock limit, waits on model calls
    /// included.
    #[error(
        "plugin {plugin} ran past its wall-clock limit of {wall:?} (waiting on model calls \
         included) and was stopped; raise `wall` in the plugin's limits if its calls are slow"
    )]
    WallTimeout { plugin: String, wall: Duration },

    /// The plugin called `exit` (WASI `exit`, `std::process::exit`,
    /// `sys.exit`) instead of returning.
    #[error(
        "plugin {plugin} called exit({code}) instead of returning a result{}",
        tail(stderr)
    )]
    Exit {
        plugin: String,
        code: i32,
        stderr: String,
    },

    /// The plugin handed the host more than a limit allows: a result larger
    /// than `result_bytes`, an import argument larger than `import_bytes`,
    /// a description over its fixed caps.
    #[error("plugin {plugin}: {what} is {bytes} bytes, over the limit of {limit}")]
    TooLarge {
        plugin: String,
        what: String,
        bytes: usize,
        limit: usize,
    },

    /// The plugin held more host resources (WASI streams, pollables) at
    /// once than its `handles` limit.
    #[error(
        "plugin {plugin} held more than {limit} host resources (WASI streams, pollables) at once \
         and was stopped; raise `handles` in the plugin's limits if it really needs more"
    )]
    TooManyHandles { plugin: String, limit: u32 },

    /// Every instance slot of the runtime stayed busy for the whole wait.
    #[error(
        "plugin {plugin} could not start: every instance slot stayed busy for {waited:?}; \
         raise the runtime's max_concurrent_calls or run fewer calls at once"
    )]
    Busy { plugin: String, waited: Duration },

    /// The plugin tried to grow its memory past the cap.
    #[error(
        "plugin {plugin} tried to use more than {limit_bytes} bytes of memory and was stopped \
         (raise `memory_bytes` in the plugin's limits if it really needs more)"
    )]
    OutOfMemory { plugin: String, limit_bytes: u64 },

    /// The plugin trapped. For a Rust panic, `message` carries the panic
    /// message the guest printed.
    #[error("plugin {plugin} trapped: {trap}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Trap {
        plugin: String,
        trap: TrapKind,
        message: String,
    },

    /// A plugin run again from the start (durable re-execution, after a
    /// model call the host made for it) did not repeat what it did before:
    /// it made another host import, another request, or returned early.
    /// Its imports must depend only on its task and on what the host
    /// answered.
    #[error(
        "plugin {plugin} is not deterministic under re-execution: at host call #{call}, {reason}; \
         a plugin's host calls must depend only on its task and the host's answers"
    )]
    Nondeterministic {
        plugin: String,
        call: usize,
        reason: String,
    },

    /// The plugin called a host import that its grant does not include.
    #[error(
        "plugin {plugin} called `{capability}` without the `{capability}` capability; \
         grant it in the team spec if the plugin should have it"
    )]
    CapabilityDenied {
        plugin: String,
        capability: Capability,
    },

    /// The plugin ran and reported an error of its own.
    #[error("plugin {plugin} failed: {}", describe_guest(error))]
    Guest { plugin: String, error: GuestError },

    /// The plugin returned a value that breaks the contract (a decision with
    /// more support than ballots, a score outside 0..1, ...).
    #[error("plugin {plugin} returned malformed output: {reason}")]
    BadOutput { plugin: String, reason: String },

    /// No plugin of that name is loaded.
    #[error("no plugin named {name:?} is loaded{}", if available.is_empty() { String::new() } else { format!(" (loaded: {})", available.join(", ")) })]
    NotFound {
        name: String,
        available: Vec<String>,
    },

    /// The file is not a WebAssembly component.
    #[error("{}: not a WebAssembly component: {reason}", path.display())]
    NotAComponent { path: PathBuf, reason: String },

    /// The team trusts only signed components, and this one's signature is
    /// missing, does not verify, or is by a key it does not trust.
    #[error("{path}: refused: {reason}")]
    Untrusted { path: PathBuf, reason: String },

    /// The component does not fit the world it claims or that was asked for.
    #[error("{}: does not fit the `{world}` world: {reason}", path.display())]
    WorldMismatch {
        path: PathBuf,
        world: String,
        reason: String,
    },

    /// The component was built against a contract version the host lacks.
    #[error(
        "{}: built against conclave:plugin@{found}, but this host supports conclave:plugin@{supported}; \
         rebuild the plugin against this host's wit/",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// The component failed to compile.
    #[error("{}: could not be compiled: {reason}", path.display())]
    Compile { path: PathBuf, reason: String },

    /// Reading the file or the compilation cache failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The engine could not be set up.
    #[error("plugin runtime could not start: {0}")]
    Engine(String),
}

fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; it printed: {stderr}")
    }
}

fn describe_guest(e: &GuestError) -> String {
    match e {
        GuestError::InvalidInput(s) => format!("invalid input: {s}"),
        GuestError::InvalidConfig(s) => format!("invalid config: {s}"),
        GuestError::Model(s) => format!("model call failed: {s}"),
        GuestError::Internal(s) => format!("internal error: {s}"),
    }
}

impl PluginError {
    /// Whether retrying the same call could succeed (a timeout or a model
    /// failure) as opposed to a defect that will repeat (a trap, bad output).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PluginError::Timeout { .. }
                | PluginError::WallTimeout { .. }
                | PluginError::Busy { .. }
                | PluginError::Guest {
                    error: GuestError::Model(_),
                    ..
                }
        )
    }
}
