//! The watchdog of one plugin call: it stops a call that has used its
//! compute deadline or its wall-clock limit even while the guest is blocked
//! where no epoch check can reach it (a WASI `sleep` or `poll`), and the
//! epoch callback stops one that computes. Dropping the call's future
//! drops its fiber; the store is dropped right after.

use std::future::Future;
use std::time::Duration;

use super::imports::{ComputeClock, DeadlineReached};

/// The error the watchdog raises at the wall-clock limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("wall-clock limit reached")]
pub struct WallReached;

/// Runs `call` until it finishes or `clock` runs out, whichever is first.
pub async fn guard<R>(
    clock: &ComputeClock,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    tokio::select! {
        biased;
        r = call => r,
        stop = watchdog(clock) => Err(stop),
    }
}

/// Resolves when the call has used its compute budget (time blocked in
/// WASI counts; time waiting on the host's own imports does not) or its
/// wall-clock limit. It wakes only when one of them could have run out.
async fn watchdog(clock: &ComputeClock) -> wasmtime::Error {
    loop {
        let elapsed = clock.started.elapsed();
        if elapsed >= clock.wall {
            return WallReached.into();
        }
        let used = clock.used();
        if used >= clock.budget {
            return DeadlineReached.into();
        }
        let next = (clock.budget - used).min(clock.wall - elapsed);
        tokio::time::sleep(next.max(Duration::from_millis(1))).await;
    }
}
