//! Cluster mode: many `conclave serve --cluster URL` processes on any
//! hosts, one elected coordinator among them, and failover with nothing
//! lost.
//!
//! - [`lease`]: the election. One process holds the coordinator lease, a
//!   key in a JetStream key-value bucket whose entries expire after the
//!   lease's time to live; the holder renews it with revision-checked
//!   updates, and the revision it acquired it at is its *term*. The others
//!   are standbys: they try to take the key every quarter of the time to
//!   live, so a coordinator that stops renewing is replaced within about
//!   1.25 × the time to live.
//! - [`coordinator`]: what the holder does. It serves the requests and
//!   registers each run it starts (bucket `conclave-NAME-coordinated`,
//!   one key per run, with the term); when it takes over, it resumes from
//!   the journal every run registered by an earlier term that has not
//!   ended. A coordinator that cannot renew its lease before its own
//!   deadline (three quarters of the time to live after its last renewal
//!   was sent) fences its journal, so nothing more of its runs is written,
//!   and stops: a deposed coordinator never writes beside its successor.
//!
//! - [`kv`] and [`simulation`]: the seam between the cluster's logic and
//!   the NATS server's buckets, and the deterministic simulations that run
//!   the election and the takeover against a model of that server
//!   (`conclave bench dst`).
//! - [`work`] and [`worker`]: replicas run by `conclave worker` processes
//!   on any hosts, from a JetStream work queue, with heartbeats,
//!   redelivery of the work of a dead or stalled worker, and each result
//!   counted once. [`wire`] is their seam to NATS, which the simulation
//!   of the work queue stands in.
//!
//! The journal is the cluster's stream ([`crate::journal::jetstream`]):
//! a resumed run's first record (`Resumed`) expects the run's last stream
//! sequence, so a write from a coordinator that was stopped (not dead)
//! when it was replaced is refused by the server when it comes back.

pub mod coordinator;
pub mod kv;
pub mod lease;
pub mod owner;
pub mod permissions;
pub mod simulation;
pub mod wire;
pub mod work;
pub mod worker;

use std::time::Duration;

use crate::journal::jetstream::ClusterConfig;

/// A client of the cluster's NATS server, for the election and the
/// coordinator's registry (the journal has a connection of its own).
pub(crate) async fn connect(
    config: &ClusterConfig,
    what: &str,
) -> Result<async_nats::jetstream::Context, String> {
    let client = config.connect(what).await?;
    Ok(async_nats::jetstream::new(client))
}

/// Opens the key-value bucket `name`, creating it with `config` when it is
/// not there.
pub(crate) async fn bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(kv) => Ok(kv),
        Err(_) => match js.create_key_value(config).await {
            Ok(kv) => Ok(kv),
            // Another process created it meanwhile.
            Err(e) => js
                .get_key_value(&name)
                .await
                .map_err(|_| format!("cannot open the bucket {name}: {e}")),
        },
    }
}

/// What `conclave cluster` reports: who coordinates, and the runs in
/// progress under a coordinator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// The coordinator lease's holder now, if any.
    pub coordinator: Option<lease::Holder>,
    /// Its term (the revision it took the lease at), if known.
    pub term: Option<u64>,
    /// The lease's time to live (the bucket's), once a server made it.
    pub lease_ttl: Option<Duration>,
    /// Runs registered by a coordinator and not ended: `(run, term)`.
    pub runs: Vec<(String, u64)>,
    /// The live workers (`conclave worker`), by their last heartbeat.
    pub workers: Vec<work::Beat>,
}

/// Reads the cluster's lease and registry.
pub async fn status(config: &ClusterConfig) -> Result<Status, String> {
    let js = connect(config, "status").await?;
    let mut status = Status {
        coordinator: None,
        term: None,
        lease_ttl: None,
        runs: Vec::new(),
        workers: Vec::new(),
    };
    if let Ok(kv) = js
        .get_key_value(format!("conclave-{}-lease", config.name))
        .await
    {
        status.lease_ttl = kv.status().await.ok().map(|s| s.max_age());
        if let Ok(Some(e)) = kv.entry(lease::KEY).await {
            if e.operation == async_nats::jetstream::kv::Operation::Put {
                let holder: Option<lease::Holder> = serde_json::from_slice(&e.value).ok();
                status.term = holder.as_ref().and_then(|h| h.term);
                status.coordinator = holder;
            }
        }
    }
    if let Ok(kv) = js
        .get_key_value(format!("conclave-{}-coordinated", config.name))
        .await
    {
        status.runs = coordinator::registered(&kv).await?;
    }
    if let Ok(kv) = js
        .get_key_value(format!("conclave-{}-workers", config.name))
        .await
    {
        status.workers = work::workers(&kv).await;
    }
    Ok(status)
}
