//! What a plugin's WASI world holds: nothing it was not granted, and the
//! same answers for the same inputs.
//!
//! - `wasi:random` (secure and insecure) is a ChaCha stream seeded from the
//!   call's run, task, replica, plugin and call number: a plugin's output
//!   depends only on its inputs, which replay relies on. It is not secret:
//!   a plugin must not use it for keys.
//! - `wasi:http` is linked so that components whose toolchain imports it
//!   (componentize-js does by default) load; every request is refused with
//!   `HTTP-request-denied`.
//! - Clocks are frozen, and files, sockets, environment and arguments are
//!   absent (see [`super::sandbox`]).

use std::convert::Infallible;
use std::future::Future;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_core_wasi::TryRng;
use sha2::{Digest, Sha256};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpHooks};

use super::CallInfo;

/// A clock that always says the same time: plugins get no wall clock, and
/// the same inputs give the same outputs (which replay relies on).
pub struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The seed of one call's random streams: SHA-256 over the call's
/// identity, computed once per call; the streams differ by ChaCha stream
/// number ([`SeededRandom::SECURE`] and the others).
pub fn seed(info: &CallInfo) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        info.run_id.as_str(),
        info.task_id.as_str(),
        info.plugin.as_str(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(info.replica.to_le_bytes());
    h.update(info.call.to_le_bytes());
    h.finalize().into()
}

/// A deterministic random stream for `wasi:random`, started on first use
/// (most calls draw nothing, and a fresh store is made for every call).
pub struct SeededRandom {
    seed: [u8; 32],
    stream: u64,
    rng: Option<rand_chacha::ChaCha12Rng>,
}

impl SeededRandom {
    /// The stream behind `wasi:random/random`.
    pub const SECURE: u64 = 1;
    /// The stream behind `wasi:random/insecure`.
    pub const INSECURE: u64 = 2;
    /// The stream `wasi:random/insecure-seed` is drawn from.
    pub const INSECURE_SEED: u64 = 3;

    /// Stream `stream` of the call whose [`seed`] is `seed`.
    pub fn new(seed: [u8; 32], stream: u64) -> Self {
        SeededRandom {
            seed,
            stream,
            rng: None,
        }
    }

    fn rng(&mut self) -> &mut rand_chacha::ChaCha12Rng {
        let (seed, stream) = (self.seed, self.stream);
        self.rng.get_or_insert_with(|| {
            let mut r = rand_chacha::ChaCha12Rng::from_seed(seed);
            r.set_stream(stream);
            r
        })
    }

    /// The value of `wasi:random/insecure-seed` for the call `seed`.
    pub fn insecure_seed(seed: [u8; 32]) -> u128 {
        let mut r = SeededRandom::new(seed, Self::INSECURE_SEED);
        let r = r.rng();
        u128::from(r.next_u64()) | (u128::from(r.next_u64()) << 64)
    }
}

impl TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.rng().next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.rng().next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.rng().fill_bytes(dst);
        Ok(())
    }
}

/// `wasi:http` that refuses every request.
#[derive(Default)]
pub struct DenyHttp {
    pub ctx: WasiHttpCtx,
}

/// The hooks of [`DenyHttp`]: `send_request` always fails.
#[derive(Default)]
pub struct DenyHooks;

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for DenyHooks {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

#[cfg(test)]
mod tests {
    //! Seeds: the same call gives the same stream, another call another.
    use super::*;
    use rand_core_wasi::Rng;

    fn info(call: u32) -> CallInfo {
        CallInfo {
            run_id: "r".into(),
            task_id: "t".into(),
            replica: 1,
            plugin: "p@0.1.0".into(),
            call,
        }
    }

    fn draw(call: u32, stream: u64) -> Vec<u64> {
        let mut r = SeededRandom::new(seed(&info(call)), stream);
        (0..4).map(|_| r.next_u64()).collect()
    }

    #[test]
    fn the_same_call_draws_the_same_numbers_and_another_call_others() {
        let a = draw(0, SeededRandom::SECURE);
        assert_eq!(a, draw(0, SeededRandom::SECURE));
        assert_ne!(a, draw(1, SeededRandom::SECURE));
        assert_ne!(a, draw(0, SeededRandom::INSECURE));
        assert_ne!(
            SeededRandom::insecure_seed(seed(&info(0))),
            SeededRandom::insecure_seed(seed(&info(1)))
        );
    }
}
