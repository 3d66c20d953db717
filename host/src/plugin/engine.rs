//! The one wasmtime engine of a process, and the epoch ticker that drives
//! compute deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{PluginError, RuntimeConfig};

/// Builds the engine: epoch interruption on, fuel off, and the pooling
/// allocator with copy-on-write memory images when `config.pooling` is set
/// and the machine can reserve the address space (else on-demand
/// allocation). Returns whether pooling is in use.
pub fn build(config: &RuntimeConfig) -> Result<(Engine, bool), PluginError> {
    let base = || {
        let mut c = Config::new();
        c.epoch_interruption(true);
        c.wasm_component_model(true);
        c.memory_init_cow(true);
        c.max_wasm_stack(512 << 10);
        c.async_stack_size(2 << 20);
        c
    };
    if config.pooling {
        let mut c = base();
        let slots = config.max_concurrent_calls.max(1);
        let limits = &config.limits;
        let mut pool = PoolingAllocationConfig::default();
        // Room for every slot's component at its largest (`instances`
        // core instances, memories and tables each): the runtime's slot
        // semaphore is then the only bound, and an instantiation never
        // fails half-way for want of pool space. (It used to be sized for
        // small Rust components; a Python one, several core instances and
        // memories, ran the pool dry at 128 calls while slots were free.)
        let per = limits.instances.max(1);
        pool.total_component_instances(slots)
            .total_core_instances(slots * per)
            .total_memories(slots * per)
            .total_tables(slots * per)
            .total_stacks(slots)
            .max_memories_per_component(limits.instances)
            // Multi-memory modules are fine: the memory cap is on the sum.
            .max_memories_per_module(limits.instances)
            .max_tables_per_component(limits.instances)
            .max_core_instances_per_component(limits.instances)
            .max_memory_size(config.max_memory_bytes.max(limits.memory_bytes) as usize)
            // Keep a little of each memory resident between uses: resetting
            // it with memset is cheaper than faulting fresh pages back in.
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(64 << 10);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&c) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => tracing::warn!(
                "pooling allocator unavailable ({e:#}); falling back to on-demand allocation"
            ),
        }
    }
    Engine::new(&base())
        .map(|e| (e, false))
        .map_err(|e| PluginError::Engine(format!("{e:#}")))
}

/// A thread that advances the engine's epoch every tick; stopped and joined
/// when dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts ticking `engine` every `tick`.
    pub fn start(engine: Engine, tick: Duration) -> Result<Self, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("conclave-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Ticker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
