//! Runs started by `conclave run --cluster` (or `resume --cluster`): the
//! process that runs one is its owner, not the cluster's coordinator. It
//! registers the run in the coordinator's registry (term 0, with itself as
//! the owner) before the run's submission is journaled, and beats in
//! bucket `conclave-NAME-owners` every second while the run goes on. If the
//! owner dies, its beat expires ([`OWNER_TTL`]) and the coordinator
//! (`serve --cluster`) takes the run over and resumes it from the journal,
//! as it does the runs of an earlier coordinator; an owner that was only
//! paused finds its next journal write refused (the successor's `Resumed`
//! record fences it).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use super::coordinator::Registered;
use super::kv::Kv;
use crate::journal::jetstream::{token, ClusterConfig};
use crate::journal::now_ms;

/// How often an owner beats, and how long its beat is kept.
pub const OWNER_EVERY: Duration = Duration::from_secs(1);
pub const OWNER_TTL: Duration = Duration::from_secs(5);

/// The owners' bucket.
pub(crate) fn bucket_name(config: &ClusterConfig) -> String {
    format!("conclave-{}-owners", config.name)
}

pub(crate) async fn owners(
    js: &async_nats::jetstream::Context,
    config: &ClusterConfig,
) -> Result<kv::Store, String> {
    super::bucket(
        js,
        kv::Config {
            bucket: bucket_name(config),
            max_age: OWNER_TTL,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await
}

/// A run this process owns: registered, and beating until released.
pub struct Owner {
    registry: Arc<dyn Kv>,
    owners: Arc<dyn Kv>,
    run: String,
    id: String,
    beating: CancellationToken,
}

impl Owner {
    /// Registers `run`, about to be journaled, as this process's.
    pub async fn claim(config: &ClusterConfig, run: &str) -> Result<Owner, String> {
        let js = super::connect(config, "run").await?;
        let registry = super::coordinator::registry(&js, config).await?;
        let owners = owners(&js, config).await?;
        let id = super::lease::Holder::this_process(None).id;
        Owner::claim_with(
            Arc::new(registry),
            Arc::new(owners),
            &bucket_name(config),
            id,
            run,
        )
        .await
    }

    /// Registers `run` as `id`'s in `registry`, beating in `owners` (named
    /// `bucket`): the server's buckets, or the simulation's.
    pub(crate) async fn claim_with(
        registry: Arc<dyn Kv>,
        owners: Arc<dyn Kv>,
        bucket: &str,
        id: String,
        run: &str,
    ) -> Result<Owner, String> {
        owners
            .put(
                &token(&id.replace('/', "-")),
                id.clone().into_bytes().into(),
            )
            .await
            .map_err(|e| format!("cannot beat in {bucket}: {e}"))?;
        let value = serde_json::to_vec(&Registered {
            run: run.to_string(),
            term: 0,
            at_ms: now_ms(),
            owner: Some(id.clone()),
        })
        .unwrap_or_default();
        registry
            .put(&token(run), value.into())
            .await
            .map_err(|e| format!("cannot register run {run} with the cluster: {e}"))?;
        let beating = CancellationToken::new();
        let (kv, key, stop) = (
            owners.clone(),
            token(&id.replace('/', "-")),
            beating.clone(),
        );
        let value = id.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(OWNER_EVERY) => {}
                }
                let _ = kv.put(&key, value.clone().into_bytes().into()).await;
            }
        });
        Ok(Owner {
            registry,
            owners,
            run: run.to_string(),
            id,
            beating,
        })
    }

    /// The run ended here. `durable`: its end is in the journal, so it
    /// leaves the registry; otherwise it stays for the coordinator.
    pub async fn release(self, durable: bool) {
        self.beating.cancel();
        if durable {
            let _ = self.registry.delete(&token(&self.run)).await;
        }
        let _ = self.owners.delete(&token(&self.id.replace('/', "-"))).await;
    }
}

/// Whether `owner` still beats.
pub(crate) async fn alive(owners: &dyn super::kv::Kv, owner: &str) -> bool {
    matches!(
        owners.get(&token(&owner.replace('/', "-"))).await,
        Ok(Some(_))
    )
}
