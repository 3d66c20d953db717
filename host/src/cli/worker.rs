//! `conclave worker`: replicas for the cluster's coordinator.

use std::sync::Arc;

use super::serve::{cancel_on_signal, load_teams};
use super::{exit, report, runtime, WorkerArgs};
use conclave::cluster::work::WorkSettings;
use conclave::cluster::worker::{self, WorkerConfig};

/// `conclave worker`.
pub async fn worker(args: WorkerArgs) -> u8 {
    let WorkerArgs {
        specs,
        max_inflight,
        tags,
        ack_wait,
        max_deliver,
        trusted_keys,
        store,
    } = args;
    let Some(cluster) = store.cluster() else {
        eprintln!(
            "error: conclave worker needs --cluster URL (or --nats URL, or $CONCLAVE_CLUSTER)"
        );
        return exit::USAGE;
    };
    if max_inflight == 0 || max_deliver < 1 || ack_wait.is_zero() {
        eprintln!("error: --max-inflight, --max-deliver and --ack-wait must be above zero");
        return exit::USAGE;
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    let teams = match load_teams(&specs, rt, &trusted_keys).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    cancel_on_signal(
        stop.clone(),
        "worker stopping: finishing the replicas in flight",
    );
    let config = WorkerConfig {
        cluster: cluster.clone(),
        max_inflight,
        tags,
        settings: WorkSettings {
            ack_wait,
            max_deliver,
        },
    };
    let prepared = teams.list().iter().map(|s| s.team.clone()).collect();
    match worker::run(config, prepared, stop, Arc::new(|line| eprintln!("{line}"))).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: cluster {}: {e}", cluster.url);
            exit::FAILURE
        }
    }
}
