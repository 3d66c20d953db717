//! The host side of a plugin's imports, and the per-call store state they
//! live in.
//!
//! Every import first checks the call's [`Grants`]; one that was not granted
//! stops the call with [`CapabilityDenied`], which the sandbox turns into
//! [`PluginError::CapabilityDenied`](super::PluginError::CapabilityDenied).
//! Time spent awaiting a model call is recorded so that the compute deadline
//! only counts the plugin's own running time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{blackboard, bus, llm, log, types};
use super::output::CappedPipe;
use super::{CallInfo, Capability, Grants, HostServices};

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

/// Enforces the memory, table and instance caps of one call.
pub struct Limiter {
    pub memory_bytes: u64,
    pub table_elements: u64,
    pub instances: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            return Err(MemoryCapReached(self.memory_bytes).into());
        }
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
/// time spent waiting on host imports.
pub struct ComputeClock {
    pub budget: Duration,
    pub started: Instant,
    pub waited: Duration,
}

impl ComputeClock {
    /// Compute time used so far.
    pub fn used(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.waited)
    }
}

/// The data of one call's store.
pub struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub grants: Grants,
    pub services: Option<Arc<dyn HostServices>>,
    pub info: CallInfo,
    pub clock: ComputeClock,
    pub stdout: CappedPipe,
    pub stderr: CappedPipe,
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
}

impl types::Host for StoreState {}

impl log::Host for StoreState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.check(Capability::Log)?;
        let plugin = &self.info.plugin;
        let message: String = message.chars().take(4096).collect();
        match level {
            log::Level::Debug => tracing::debug!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "conclave::plugin", %plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "conclave::plugin", %plugin, "{message}"),
        }
        Ok(())
    }
}

impl llm::Host for StoreState {
    async fn chat(
        &mut self,
        request: llm::ChatRequest,
    ) -> wasmtime::Result<Result<llm::ChatResponse, llm::LlmError>> {
        self.check(Capability::Llm)?;
        let Some(services) = self.services.clone() else {
            return Ok(Err(llm::LlmError::Unavailable(
                "no model nodes are attached to this call".into(),
            )));
        };
        let start = Instant::now();
        let result = services.chat(&self.info, request).await;
        self.clock.waited += start.elapsed();
        Ok(result)
    }
}

impl bus::Host for StoreState {
    fn send(&mut self, mut message: bus::Envelope) -> wasmtime::Result<Result<(), bus::BusError>> {
        self.check(Capability::Bus)?;
        message.sender = format!("{}/{}", self.info.task_id, self.info.replica);
        Ok(match &self.services {
            Some(s) => s.send(&self.info, message),
            None => Err(bus::BusError::UnknownRecipient(
                "this call has no bus".into(),
            )),
        })
    }

    fn inbox(&mut self) -> wasmtime::Result<Vec<bus::Envelope>> {
        self.check(Capability::Bus)?;
        Ok(self
            .services
            .as_ref()
            .map(|s| s.inbox(&self.info))
            .unwrap_or_default())
    }
}

impl blackboard::Host for StoreState {
    fn read(&mut self, id: String) -> wasmtime::Result<Option<String>> {
        self.check(Capability::Blackboard)?;
        Ok(self.services.as_ref().and_then(|s| s.read(&self.info, &id)))
    }

    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        self.check(Capability::Blackboard)?;
        Ok(self
            .services
            .as_ref()
            .map(|s| s.keys(&self.info))
            .unwrap_or_default())
    }
}
