//! Conclave runs teams of language models as a distributed system: work is
//! replicated over several model calls and models, candidates are
//! cross-verified, a voting policy reaches consensus, failed or slow nodes are
//! routed around, and every step is journaled.
//!
//! Roles, verifiers and voters are sandboxed WebAssembly components; the
//! [`plugin`] module loads, checks, hot-swaps and calls them.

pub mod bench;
pub mod cluster;
pub mod dag;
pub mod eval;
pub mod journal;
pub mod knowledge;
pub mod model;
pub mod otel;
pub mod plugin;
pub mod scaffold;
pub mod server;
pub mod spec;
pub mod team;

pub use plugin::{
    Capability, Grants, HostServices, Invocation, Plugin, PluginError, PluginRuntime, Registry,
    RuntimeConfig, SandboxLimits,
};
