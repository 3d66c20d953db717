//! `conclave bench workers`: throughput with cluster workers, printed.

use std::path::PathBuf;

use super::exit;
use super::journal::StoreArgs;

/// `conclave bench workers`' arguments.
#[derive(clap::Args)]
pub(crate) struct WorkersArgs {
    /// Worker counts to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub(crate) workers: Vec<usize>,
    /// Requests sent at once.
    #[arg(long, default_value_t = 24)]
    pub(crate) requests: usize,
    /// The coordinator's `--lease-ttl`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) lease_ttl: std::time::Duration,
    /// Replicas each worker runs at once (`conclave worker
    /// --max-inflight`).
    #[arg(long, default_value_t = 2)]
    pub(crate) max_inflight: usize,
    /// Calls the simulated node (each process's copy) serves at once;
    /// 0: no limit, so that the workers, not the node, are what is
    /// measured (with `--max-inflight` in the thousands).
    #[arg(long, default_value_t = 2)]
    pub(crate) node_concurrency: usize,
    /// The paper's measured call latencies, which the simulated node
    /// replays (GPT-5.2's, scaled by 0.2).
    #[arg(long, default_value = conclave::bench::workers::LATENCIES)]
    pub(crate) latencies: PathBuf,
    #[arg(long)]
    pub(crate) json: bool,
    /// `--cluster URL` (required): the NATS server; the benchmark uses
    /// cluster names of its own on it.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

/// `conclave bench workers`.
pub(crate) async fn workers(args: WorkersArgs) -> u8 {
    let WorkersArgs {
        workers,
        requests,
        lease_ttl,
        max_inflight,
        node_concurrency,
        latencies,
        json,
        store,
    } = args;
    let Some(cluster) = store.cluster() else {
        eprintln!("error: bench workers needs --cluster URL (a NATS server with JetStream; scripts/nats.conf)");
        return exit::USAGE;
    };
    let Some(exe) = super::bench::this_program() else {
        return exit::FAILURE;
    };
    let shape = conclave::bench::workers::Shape {
        requests,
        lease_ttl,
        max_inflight,
        node_concurrency,
    };
    match conclave::bench::workers::run(&exe, &cluster, &workers, shape, &latencies).await {
        Ok(r) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("serialisable")
            );
            exit::OK
        }
        Ok(r) => {
            println!(
                "workers: {} requests at once (each asked again after a 503, up to 30 times), one task of 3 replicas on a sim node serving {} at a time (the paper's GPT-5.2 call latencies x 0.2), each worker running {} at once, lease TTL {}; {}",
                r.shape.requests,
                match r.shape.node_concurrency {
                    0 => "any number of calls".to_string(),
                    1 => "1 call".to_string(),
                    n => format!("{n} calls"),
                },
                r.shape.max_inflight,
                humantime::format_duration(r.shape.lease_ttl),
                r.cluster
            );
            println!(
                "  {:<34} {:>9} {:>9} {:>8} {:>9} {:>16}",
                "", "ok", "wall", "req/s", "vs alone", "peak RSS"
            );
            for row in &r.rows {
                let label = match row.workers {
                    None => "one process alone (baseline)".to_string(),
                    Some(n) => format!(
                        "coordinator + {n} worker process{}",
                        if n == 1 { "" } else { "es" }
                    ),
                };
                println!(
                    "  {label:<34} {:>9} {:>8.2?} {:>8.2} {:>8.2}x {:>16}",
                    format!("{}/{}", row.ok, row.requests),
                    row.wall,
                    row.per_second,
                    row.speedup,
                    format!(
                        "{} MiB{}",
                        row.peak_rss_bytes >> 20,
                        if row.workers.is_some() {
                            " a worker"
                        } else {
                            ""
                        }
                    )
                );
                if row.retried > 0 {
                    println!("    asked again after a 503: {} times", row.retried);
                }
                for (why, n) in &row.failed {
                    println!("    not answered: {n} × {why}");
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
