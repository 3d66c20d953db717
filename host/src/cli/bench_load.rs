//! `conclave bench load` and `conclave bench reexecute`: what a team costs
//! the host under load, printed.

use std::path::PathBuf;

use super::{default_plugin_dir, exit};

/// `conclave bench load`'s arguments.
#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// Questions in flight, one level each.
    #[arg(long, value_delimiter = ',', default_value = "20,80,400,2000")]
    in_flight: Vec<usize>,
    /// Questions per team and level (at least 3 × the level); with
    /// fewer, the p50 ratios at 20 and 80 in flight are too noisy to
    /// judge the goal by.
    #[arg(long, default_value_t = 600)]
    items: usize,
    /// Each sample's chance of the right answer.
    #[arg(long, default_value_t = 0.7)]
    accuracy: f64,
    /// Sim nodes the team spreads over.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// The model whose measured latencies the nodes replay (a substring
    /// of the CSV's `model` column).
    #[arg(long, default_value = "gpt-5.2")]
    model: String,
    /// `model,latency_s` CSV of measured latencies.
    #[arg(long, default_value = "data/paper-amdahl/llm_call_latencies.csv")]
    latencies: PathBuf,
    /// Instance slots of the plugin runtime.
    #[arg(long, default_value_t = 128)]
    slots: u32,
    /// Hold an instance while a replica waits on its model (the
    /// runtime before durable re-execution), for comparison.
    #[arg(long)]
    no_reexecute: bool,
    /// Journal each question as a run in a SQLite journal (a temporary
    /// folder), durable at each decision as `serve` and `eval` are;
    /// reports records and commits per second and the flush wait.
    #[arg(long)]
    journal: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The early team's hedge quantile.
    #[arg(long, default_value_t = 0.9)]
    hedge_quantile: f64,
    #[arg(long)]
    json: bool,
}

/// `conclave bench reexecute`'s arguments.
#[derive(clap::Args)]
pub(crate) struct ReexecuteArgs {
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    /// Rust `solver` replicas left waiting at once for the memory row.
    #[arg(long, default_value_t = 10_000)]
    waiting_rust: usize,
    /// Python `programmer` replicas left waiting at once.
    #[arg(long, default_value_t = 1_000)]
    waiting_python: usize,
    /// Where the test fixtures are (`scripts/build-plugins.sh` builds
    /// them).
    #[arg(long, default_value = "target/fixtures")]
    fixtures: PathBuf,
    #[arg(long)]
    json: bool,
}

/// Runs `bench load` and prints its table.
pub(super) fn load(args: LoadArgs) -> u8 {
    let LoadArgs {
        in_flight,
        items,
        accuracy,
        nodes,
        model,
        latencies,
        slots,
        no_reexecute,
        journal,
        seed,
        hedge_quantile,
        json,
    } = args;
    let b = conclave::bench::load::LoadBench {
        base: conclave::bench::consensus::ConsensusBench {
            plugins: default_plugin_dir(),
            latencies,
            models: vec![model],
            items,
            accuracy,
            nodes,
            seed,
            hedge_quantile,
        },
        levels: in_flight,
        items,
        slots,
        reexecute: !no_reexecute,
        journal,
    };
    let report = match to_print(conclave::bench::load::run(b), json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!(
        "{} latencies on {} sim nodes, real time, {} cores; {} instance slots, \
         re-execution {}, at most {} replicas in flight{}:",
        report.model,
        report.nodes,
        report.cores,
        report.slots,
        if report.reexecute { "on" } else { "off" },
        report.max_replicas,
        if report.journal {
            ", SQLite journal"
        } else {
            ""
        }
    );
    for l in &report.levels {
        println!("{} questions in flight:", l.in_flight);
        for r in &l.rows {
            println!(
                "  {:<38} {:>5} items  p50 {:>6.2} s  p95 {:>6.2} s  accuracy {:.3}  \
                 {:>6.1}/s  slots<= {:>4}  on-model<= {:>5}  replicas<= {:>5}  \
                 admission<= {:>4}  steps/replica {:.2}  rss<= {:>5} MiB  cpu {:>3.0}%  \
                 failures {}",
                r.team,
                r.items,
                r.p50.secs,
                r.p95.secs,
                r.accuracy,
                r.per_sec,
                r.peak_running,
                r.peak_waiting_on_model,
                r.peak_replicas,
                r.peak_waiting_for_admission,
                r.steps_per_replica,
                r.peak_rss_bytes >> 20,
                r.cpu_share * 100.0,
                r.plugin_failures
            );
            if let Some(j) = &r.journal {
                println!(
                    "  {:<38} journal: {} records, {:.0}/s; {} commits, {:.0}/s; \
                     a decision waited p50 {:.1} ms, p95 {:.1} ms for its records",
                    "",
                    j.records,
                    j.records_per_sec,
                    j.commits,
                    j.commits_per_sec,
                    j.flush_p50 * 1e3,
                    j.flush_p95 * 1e3
                );
            }
        }
        println!(
            "  early / single: p50 {:.2}x (goal <= 1.7), p95 {:.2}x (goal <= 1); \
             accuracy early - all: {:+.1} points (goal within 1)",
            l.p50_ratio, l.p95_ratio, l.accuracy_gap_points
        );
    }
    exit::OK
}

/// Runs `bench reexecute` and prints its tables.
pub(super) fn reexecute(args: ReexecuteArgs) -> u8 {
    let ReexecuteArgs {
        iterations,
        waiting_rust,
        waiting_python,
        fixtures,
        json,
    } = args;
    let b = conclave::bench::reexecute::ReexecuteBench {
        plugins: default_plugin_dir(),
        fixtures,
        iterations,
        waiting_rust,
        waiting_python,
    };
    let report = match to_print(conclave::bench::reexecute::run(b), json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!(
        "compute of a role call on a model that answers at once ({} calls each):",
        report.iterations
    );
    for r in &report.compute {
        println!(
            "  {:<36} instance held {:>9.1} us  in steps {:>9.1} us  \
             re-execution {:>+8.1} us per model call",
            r.role, r.straight_us, r.durable_us, r.extra_us_per_model_call
        );
    }
    println!("memory of replicas waiting on a model at once:");
    for m in &report.memory {
        println!(
            "  {:<36} {:>6} waiting  rss {:>5} -> {:>5} MiB  {:>7.0} bytes each  \
             instance slots in use {}",
            m.role,
            m.waiting,
            m.rss_before >> 20,
            m.rss_waiting >> 20,
            m.bytes_per_waiting_replica,
            m.running
        );
    }
    exit::OK
}

/// A benchmark's report to print as a table, or the exit code once it
/// failed (said on stderr) or was printed as JSON.
fn to_print<T: serde::Serialize>(report: Result<T, String>, json: bool) -> Result<T, u8> {
    match report {
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::FAILURE)
        }
        Ok(r) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("serialisable")
            );
            Err(exit::OK)
        }
        Ok(r) => Ok(r),
    }
}
