//! `conclave bench load` and `conclave bench reexecute`: what a team costs
//! the host under load, printed.

use super::exit;

/// Runs `bench load` and prints its table.
pub(super) fn load(b: conclave::bench::load::LoadBench, json: bool) -> u8 {
    let report = match conclave::bench::load::run(b) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
        return exit::OK;
    }
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
pub(super) fn reexecute(b: conclave::bench::reexecute::ReexecuteBench, json: bool) -> u8 {
    let report = match conclave::bench::reexecute::run(b) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
        return exit::OK;
    }
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
