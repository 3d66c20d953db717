//! The owners of `conclave run --cluster` runs in the takeover
//! simulation: each claims its run (registers it with the owner's name,
//! and beats) with [`Owner`]'s own code, runs it with the same model as a
//! coordinator's run, and releases it; some are killed or paused, and
//! their runs taken over.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::journal::SimJournal;
use super::super::server::{Proc, Server};
use super::super::Paused;
use super::{run_model, World};
use crate::cluster::kv::Kv;
use crate::cluster::owner::{Owner, OWNER_TTL};

/// The owners' processes are numbered from here.
const OWNER_IDS: usize = 1000;

/// A run its owner process runs (`conclave run --cluster`): registered
/// with the owner's name, beating while it goes on, taken over by the
/// coordinator when the beat stops.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OwnerRun {
    /// When the owner starts it.
    pub at: Duration,
    /// When the owner is killed, if it is.
    pub killed: Option<Duration>,
    /// When the owner is paused (`SIGSTOP`), if it is.
    pub paused: Option<(Duration, Duration)>,
}

impl OwnerRun {
    /// Draws 0–3 owners' runs (from their own generator, so that a seed's
    /// other draws are what they were before owners were simulated).
    pub(super) fn from_seed(seed: u64, busy: Duration, ttl: Duration) -> Vec<OwnerRun> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6f77_6e65_7273);
        let ms = |rng: &mut ChaCha8Rng, d: Duration| {
            Duration::from_millis(rng.random_range(0..d.as_millis().max(1) as u64))
        };
        (0..rng.random_range(0..=3))
            .map(|_| {
                let at = ms(&mut rng, busy);
                let killed = rng
                    .random_bool(0.3)
                    .then(|| at + ms(&mut rng, Duration::from_secs(10)));
                let paused = rng.random_bool(0.3).then(|| {
                    let a = at + ms(&mut rng, Duration::from_secs(5));
                    (a, a + ms(&mut rng, ttl * 3))
                });
                OwnerRun { at, killed, paused }
            })
            .collect()
    }
}

/// Starts the owners' runs of `plan`; their tasks (and their killers).
pub(super) fn start(
    plan: &[OwnerRun],
    server: &Arc<Server>,
    world: &Arc<World>,
    start: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut owned = Vec::new();
    for (i, o) in plan.iter().enumerate() {
        let paused: Vec<(Instant, Instant)> = o
            .paused
            .iter()
            .map(|(a, b)| (start + *a, start + *b))
            .collect();
        let proc = Proc::new(OWNER_IDS + i, paused.clone(), Vec::new());
        let registry: Arc<dyn Kv> = Arc::new(server.bucket("registry", None, proc.clone()));
        let owners: Arc<dyn Kv> = Arc::new(server.bucket("owners", Some(OWNER_TTL), proc.clone()));
        let journal = SimJournal::new(server.clone(), proc.clone());
        let (world, at, run) = (world.clone(), o.at, format!("o{i}"));
        let steps = world.draw(1, 3) as u32;
        let owning = async move {
            tokio::time::sleep_until(start + at).await;
            let Ok(owner) =
                Owner::claim_with(registry, owners, "owners", format!("o{i}"), &run).await
            else {
                return;
            };
            let cancel = CancellationToken::new();
            let done = run_model(&journal, &world, &run, 0, steps, None, cancel).await;
            owner.release(done.journal_error.is_none()).await;
        };
        let task = tokio::spawn(Paused {
            inner: Box::pin(owning),
            spans: paused,
            wake: Box::pin(tokio::time::sleep(Duration::ZERO)),
        });
        if let Some(k) = o.killed {
            owned.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + k).await;
                proc.kill();
                task.abort();
            }));
        } else {
            owned.push(task);
        }
    }
    owned
}
