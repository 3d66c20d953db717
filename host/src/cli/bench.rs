//! `conclave bench ...`: run a benchmark and print its numbers.

use super::bench_args::BenchCmd;
use super::{blocking, default_plugin_dir, exit, report};

pub async fn run(cmd: BenchCmd) -> u8 {
    match cmd {
        BenchCmd::Plugins {
            voter,
            v1_voter,
            iterations,
            ballots,
            concurrency,
            json,
        } => {
            let voter = voter.unwrap_or_else(|| default_plugin_dir().join("majority.wasm"));
            let v1_voter = v1_voter.unwrap_or_else(|| {
                default_plugin_dir()
                    .join("..")
                    .join("fixtures")
                    .join("majority-v1.wasm")
            });
            match conclave::bench::voter_calls(&v1_voter, &voter, iterations, ballots, concurrency)
                .await
            {
                Ok(r) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r).expect("serialisable")
                    );
                    exit::OK
                }
                Ok(r) => {
                    println!(
                        "voter call, {} ballots, fresh instance per call, {} calls each:",
                        r.ballots, r.runtime.calls
                    );
                    println!(
                        "  naive (new store, no pooling, fuel):  p50 {:>8.1?}  p99 {:>8.1?}",
                        r.naive.p50, r.naive.p99
                    );
                    println!(
                        "  conclave runtime, contract 0.1:        p50 {:>8.1?}  p99 {:>8.1?}  (pooling: {})",
                        r.runtime.p50, r.runtime.p99, r.pooling
                    );
                    println!(
                        "  conclave runtime, contract 0.2:        p50 {:>8.1?}  p99 {:>8.1?}",
                        r.runtime_v2.p50, r.runtime_v2.p99
                    );
                    let ratio = |a: std::time::Duration, b: std::time::Duration| {
                        a.as_secs_f64() / b.as_secs_f64().max(1e-12)
                    };
                    println!(
                        "  p50 speed-up: runtime 0.1 over naive {:.2}x, 0.2 over 0.1 {:.2}x",
                        ratio(r.naive.p50, r.runtime.p50),
                        ratio(r.runtime.p50, r.runtime_v2.p50)
                    );
                    for (name, p) in [("0.1", r.phases), ("0.2", r.phases_v2)] {
                        println!(
                            "  where the time goes, {name} (mean): store {:.1?}, instantiate {:.1?}, call {:.1?}, drop {:.1?}",
                            p[0], p[1], p[2], p[3]
                        );
                    }
                    println!(
                        "  decisions per second, contract 0.2, {} in flight: {:.0}",
                        r.concurrency, r.concurrent_per_sec
                    );
                    exit::OK
                }
                Err(e) => {
                    report(&e);
                    exit::FAILURE
                }
            }
        }
        BenchCmd::Languages {
            voters,
            iterations,
            ballots,
            json,
        } => {
            let voters: Vec<(String, std::path::PathBuf)> = if voters.is_empty() {
                let dir = default_plugin_dir().join("..").join("languages");
                ["rust", "python", "js"]
                    .iter()
                    .map(|l| (l.to_string(), dir.join(format!("voter-{l}.wasm"))))
                    .collect()
            } else {
                let mut out = Vec::new();
                for v in voters {
                    match v.split_once('=') {
                        Some((l, p)) if !l.is_empty() && !p.is_empty() => {
                            out.push((l.to_string(), p.into()))
                        }
                        _ => {
                            eprintln!("error: --voter {v:?}: expected LABEL=PATH, for example python=majority.wasm");
                            return exit::USAGE;
                        }
                    }
                }
                out
            };
            match conclave::bench::languages::costs(&voters, iterations, ballots).await {
                Ok(r) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r).expect("serialisable")
                    );
                    exit::OK
                }
                Ok(r) => {
                    println!(
                        "the same voter per language, {ballots} ballots, fresh instance per call, no compile cache:"
                    );
                    println!(
                        "  {:<8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>9}  decision",
                        "language", "file", "contract", "load", "first call", "p50 call", "memory"
                    );
                    for c in r {
                        println!(
                            "  {:<8} {:>7}KB {:>8} {:>10.1?} {:>10.1?} {:>10.1?} {:>7}KB  {}",
                            c.language,
                            c.file_bytes / 1024,
                            c.contract,
                            c.load,
                            c.first_call,
                            c.calls.p50,
                            c.memory_bytes / 1024,
                            c.decision
                        );
                    }
                    exit::OK
                }
                Err(e) => {
                    report(&e);
                    exit::FAILURE
                }
            }
        }
        BenchCmd::Router {
            calls,
            tail_calls,
            latencies,
            json,
        } => {
            let overhead = match conclave::bench::router::overhead(calls).await {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            };
            let models = ["gpt-5.2", "claude-sonnet-4-6", "gemini-3-flash"];
            let tail = match blocking(move || {
                conclave::bench::router::tail(&latencies, &models, tail_calls)
            })
            .await
            {
                Some(v) => v,
                None => return exit::FAILURE,
            };
            if json {
                let out = serde_json::json!({"overhead": overhead, "tail": tail});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serialisable")
                );
                return exit::OK;
            }
            println!(
                "router overhead, zero-latency sim node, {} calls each:",
                overhead.routed.calls
            );
            println!(
                "  sim called directly: p50 {:>8.2?}  p99 {:>8.2?}",
                overhead.direct.p50, overhead.direct.p99
            );
            println!(
                "  through the router:  p50 {:>8.2?}  p99 {:>8.2?}",
                overhead.routed.p50, overhead.routed.p99
            );
            println!("  overhead at p50: {:.2?}", overhead.overhead_p50);
            println!();
            println!("tail latency, measured latencies replayed through a sim node, {tail_calls} calls each (virtual time):");
            println!(
                "  {:<20} {:<36} {:>9} {:>9} {:>7} {:>8}",
                "model", "policy", "p50", "p99", "extra", "p99 cut"
            );
            for r in tail {
                println!(
                    "  {:<20} {:<36} {:>8.2}s {:>8.2}s {:>6.1}% {:>7.2}x",
                    r.model,
                    r.policy,
                    r.p50.as_secs_f64(),
                    r.p99.as_secs_f64(),
                    r.extra_calls * 100.0,
                    r.p99_cut
                );
            }
            exit::OK
        }
        BenchCmd::Amdahl {
            tasks,
            latencies,
            runs,
            correlation,
            live,
            json,
        } => {
            let models = ["gpt-5.2", "claude-sonnet-4-6", "gemini-3-flash"];
            let cells = match blocking(move || {
                conclave::bench::amdahl::table(&tasks, &latencies, &models, runs, correlation, live)
            })
            .await
            {
                Some(v) => v,
                None => return exit::FAILURE,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cells).expect("serialisable")
                );
                return exit::OK;
            }
            println!(
                "speed-up over n = 1: ratio of mean makespans / median of per-run speed-ups (ratio's share of Amdahl's bound), calls per run at n=5; {runs} seeds per DAG, virtual time, copies correlated {correlation}"
            );
            println!(
                "{:<18} {:>4} {:<26} {:>21} {:>21} {:>21} {:>21} {:>6}",
                "latencies", "p", "policy", "n=2", "n=3", "n=4", "n=5", "calls"
            );
            for row in cells.chunks(5) {
                let r = &row[0];
                let cols: Vec<String> = row[1..]
                    .iter()
                    .map(|c| {
                        format!(
                            "{:.2}x/{:.2}x ({:>3.0}%)",
                            c.speedup,
                            c.median_speedup,
                            100.0 * c.speedup / c.bound
                        )
                    })
                    .collect();
                println!(
                    "{:<18} {:>4.1} {:<26} {:>21} {:>21} {:>21} {:>21} {:>6.1}",
                    r.model, r.p, r.policy, cols[0], cols[1], cols[2], cols[3], row[4].calls
                );
            }
            exit::OK
        }
        BenchCmd::Team {
            data,
            accuracy,
            cap,
            quorum,
            adaptive: adaptive_config,
            accuracies,
            items,
            tasks,
            concurrency,
            json,
        } => {
            let dir = default_plugin_dir();
            let policies = [
                (
                    "fixed vote of the cap (majority)",
                    "majority",
                    String::new(),
                    cap,
                ),
                ("quorum (margin 2)", "quorum", quorum.clone(), 2),
                ("adaptive (Beta posterior)", "adaptive", adaptive_config, 1),
            ]
            .map(
                |(label, voter, config, first)| conclave::bench::team::SweepPolicy {
                    label: label.into(),
                    voter: voter.into(),
                    config,
                    first,
                },
            );
            let sweep = if items == 0 {
                Ok(vec![])
            } else {
                conclave::bench::team::sweep(&dir, &data, &accuracies, items, cap, &policies).await
            };
            let sweep = match sweep {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            };
            if !json {
                print_sweep(&sweep, items, cap, &data);
            }
            let adaptive =
                conclave::bench::team::adaptive(&dir, &data, accuracy, cap, usize::MAX, &quorum)
                    .await;
            let throughput = conclave::bench::team::throughput(&dir, tasks, concurrency).await;
            let (adaptive, throughput) = match (adaptive, throughput) {
                (Ok(a), Ok(t)) => (a, t),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            };
            if json {
                let out = serde_json::json!({"adaptive": adaptive, "sweep": sweep, "throughput": throughput});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serialisable")
                );
                return exit::OK;
            }
            println!(
                "adaptive consistency, {} items of {}, sim node of accuracy {accuracy}:",
                adaptive.fixed.items,
                data.display()
            );
            for s in [&adaptive.fixed, &adaptive.adaptive] {
                println!(
                    "  {:<40} accuracy {:>5.1}%  samples/item {:>5.2}  undecided {}",
                    s.policy,
                    s.accuracy * 100.0,
                    s.samples_per_item,
                    s.no_decision
                );
            }
            println!("  samples saved: {:.2}x", adaptive.samples_saved);
            println!(
                "pipeline throughput (5 replicas, 1 verifier, 1 voter; zero-latency sim node; {} in flight): {:.0} tasks/s ({} tasks in {:.2?}, {} plugin calls each)",
                throughput.concurrency, throughput.tasks_per_second, throughput.tasks, throughput.wall, throughput.plugin_calls_per_task
            );
            println!(
                "  the same tasks as one job on the scheduler (events observed): {:.0} tasks/s in {:.2?} ({:.2}x of direct)",
                throughput.scheduled_tasks_per_second, throughput.scheduled_wall, throughput.scheduled_ratio
            );
            exit::OK
        }
        BenchCmd::Consensus {
            items,
            accuracy,
            nodes,
            models,
            latencies,
            seed,
            hedge_quantile,
            json,
        } => {
            let b = conclave::bench::consensus::ConsensusBench {
                plugins: default_plugin_dir(),
                latencies,
                models,
                items,
                accuracy,
                nodes,
                seed,
                hedge_quantile,
            };
            let reports = match conclave::bench::consensus::run(b) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("serialisable")
                );
                return exit::OK;
            }
            for m in &reports {
                println!("{} ({items} items, virtual time):", m.model);
                for r in &m.rows {
                    println!(
                        "  {:<38} p50 {:>6.2} s [{:.2}, {:.2}]  p95 {:>6.2} s [{:.2}, {:.2}]  \
                         accuracy {:.3} [{:.3}, {:.3}]  samples {:.2}  votes {:.2}  \
                         cancelled {:.2}  hedges {:.2}  tokens {:.0}",
                        r.team,
                        r.p50.secs,
                        r.p50.low,
                        r.p50.high,
                        r.p95.secs,
                        r.p95.low,
                        r.p95.high,
                        r.accuracy,
                        r.accuracy_low,
                        r.accuracy_high,
                        r.samples_per_item,
                        r.votes_per_item,
                        r.cancelled_per_item,
                        r.hedges_per_item,
                        r.tokens_per_item
                    );
                }
                println!(
                    "  early / single: p50 {:.2}x (goal <= 1.7), p95 {:.2}x (goal <= 1); \
                     accuracy early - all: {:+.1} points (goal within 1)",
                    m.p50_ratio, m.p95_ratio, m.accuracy_gap_points
                );
            }
            exit::OK
        }
        BenchCmd::Load(args) => super::bench_load::load(args),
        BenchCmd::Reexecute(args) => super::bench_load::reexecute(args),
        BenchCmd::Journal {
            tasks,
            latency,
            json,
            store,
        } => match conclave::bench::journal::run(
            &default_plugin_dir(),
            tasks,
            latency,
            store.cluster().as_ref(),
        )
        .await
        {
            Ok(r) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("serialisable")
                );
                exit::OK
            }
            Ok(r) => {
                println!(
                    "journal: {}; job of {} tasks (5 replicas, 1 verifier, 1 voter; {}; 64 at once):",
                    r.store,
                    r.tasks,
                    r.latency
                        .map(|l| format!("sim node answering in {}", humantime::format_duration(l)))
                        .unwrap_or_else(|| "zero-latency sim node".into())
                );
                println!("  without a journal: {:.2?}", r.without);
                println!(
                    "  events serialised and discarded: {:.2?}  ({:+.1}%)",
                    r.discarding,
                    100.0 * (r.discarding.as_secs_f64() / r.without.as_secs_f64() - 1.0)
                );
                println!(
                        "  with the journal (durable at each decision, {} records{}): {:.2?}  overhead {:+.1}%",
                        r.records,
                        r.commits.map(|c| format!(" in {c} commits")).unwrap_or_default(),
                        r.with,
                        100.0 * r.overhead
                    );
                if let (Some(u), Some(c)) = (r.unchained, r.chain_cost) {
                    println!(
                        "  into a journal without the hash chain (format 2): {u:.2?}; the chain costs {:+.1}% (goal <= 5%)",
                        100.0 * c
                    );
                }
                let pct = |d: std::time::Duration| {
                    100.0 * (d.as_secs_f64() / r.cpu_without.as_secs_f64() - 1.0)
                };
                println!(
                    "  CPU time, all threads: without {:.2?}; discarded {:.2?} ({:+.1}%); with the journal {:.2?} ({:+.1}%), of which its writer thread {:.2?}",
                    r.cpu_without,
                    r.cpu_discarding,
                    pct(r.cpu_discarding),
                    r.cpu_with,
                    pct(r.cpu_with),
                    r.cpu_writer
                );
                println!(
                    "appends: {:.0} records/s, durable every {}",
                    r.appends_per_second, r.flush_every
                );
                println!(
                    "read and verify a run of {} records: {:.2?} (goal < 1 s for 10,000)",
                    r.verify_records, r.verify
                );
                println!(
                    "replay of the journaled job with another voter: {} votes in {:.2?}",
                    r.replay_votes, r.replay
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        },
        BenchCmd::Workers(args) => super::bench_workers::workers(args).await,
        BenchCmd::Chaos(args) => super::bench_chaos::chaos(args).await,
        BenchCmd::Dst(args) => super::bench_chaos::dst(args).await,
        BenchCmd::Index(args) => super::bench_index::index(args).await,
        BenchCmd::Failover {
            kills,
            lease_ttl,
            json,
            store,
        } => {
            let Some(cluster) = store.cluster() else {
                eprintln!("error: bench failover needs --cluster URL (a NATS server that syncs every write; scripts/nats.conf)");
                return exit::USAGE;
            };
            let Some(exe) = this_program() else {
                return exit::FAILURE;
            };
            match conclave::bench::failover::run(&exe, &cluster, kills, lease_ttl).await {
                Ok(r) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r).expect("serialisable")
                    );
                    exit::OK
                }
                Ok(r) => {
                    use conclave::bench::failover::quantile;
                    let row = |label: &str, xs: &[std::time::Duration]| {
                        println!(
                            "  {label:<36} p50 {:>8.2?}  p95 {:>8.2?}  max {:>8.2?}",
                            quantile(xs, 0.5),
                            quantile(xs, 0.95),
                            quantile(xs, 1.0)
                        )
                    };
                    println!(
                        "failover: {} coordinators killed (SIGKILL) mid-run; lease TTL {:?}; {}",
                        r.kills, r.lease_ttl, r.cluster
                    );
                    row("kill -> standby coordinates", &r.takeover);
                    row("kill -> the killed run ends", &r.completion_after_kill);
                    row("uninterrupted run (baseline)", &r.uninterrupted);
                    let p50 = |xs: &[std::time::Duration]| quantile(xs, 0.5).as_secs_f64();
                    println!(
                        "  takeover p50 / lease TTL: {:.2}; killed run's end after the kill / uninterrupted run, p50: {:.2}x",
                        p50(&r.takeover) / r.lease_ttl.as_secs_f64().max(1e-9),
                        p50(&r.completion_after_kill) / p50(&r.uninterrupted).max(1e-9)
                    );
                    println!(
                        "  killed runs that ended decided: {} of {}; model calls made twice: {}",
                        r.decided, r.kills, r.calls_made_twice
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILURE
                }
            }
        }
        BenchCmd::Serve { requests, json } => {
            match conclave::bench::serve::run(&default_plugin_dir(), requests).await {
                Ok(rows) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).expect("serialisable")
                    );
                    exit::OK
                }
                Ok(rows) => {
                    println!(
                        "{:<34} {:>8} {:>12} {:>10}",
                        "way", "clients", "requests/s", "mean ms"
                    );
                    for r in rows {
                        println!(
                            "{:<34} {:>8} {:>12.0} {:>10.3}",
                            r.way, r.clients, r.per_second, r.mean_ms
                        );
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILURE
                }
            }
        }
        BenchCmd::Embedded {
            model,
            max_tokens,
            json,
        } => match conclave::bench::embedded::batching(&model, max_tokens).await {
            Ok(r) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("serialisable")
                );
                exit::OK
            }
            Ok(r) => {
                println!("embedded model {} on {} threads, prompt {} tokens, up to {} new tokens per sample:", r.model, r.threads, r.prompt_tokens, r.max_tokens);
                for (label, run) in [("1 sample ", &r.one), ("5 samples", &r.five)] {
                    println!(
                        "  {label}: {:>8.2?} wall, {:>5} tokens, {:>7.1} tokens/s",
                        run.wall, run.completion_tokens, run.tokens_per_second
                    );
                }
                println!(
                    "  5 samples take {:.2}x the time of 1 (goal: at most 2x)",
                    r.ratio
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        },
    }
}

/// Prints the adaptive-consistency sweep: each policy's accuracy and
/// samples per item with 95% intervals, and samples saved against the
/// first policy (the fixed vote) at the same accuracy.
fn print_sweep(
    sweep: &[conclave::bench::team::SweepScore],
    items: usize,
    cap: u32,
    data: &std::path::Path,
) {
    if !sweep.is_empty() {
        println!(
            "sweep: {items} items per accuracy (cycled from {}), cap {cap}, 95% intervals:",
            data.display()
        );
    }
    for row in sweep {
        let s = &row.score;
        let fixed = sweep
            .iter()
            .find(|r| r.accuracy_of_node == row.accuracy_of_node)
            .map(|r| r.score.samples_per_item)
            .unwrap_or(f64::NAN);
        println!(
            "  node {:.1}  {:<34} accuracy {:>5.1}% ({:.1}-{:.1})  samples/item {:>5.2} ({:.2}-{:.2})  {:.2}x fewer  undecided {}",
            row.accuracy_of_node,
            s.policy,
            s.accuracy * 100.0,
            row.accuracy_interval.0 * 100.0,
            row.accuracy_interval.1 * 100.0,
            s.samples_per_item,
            row.samples_interval.0,
            row.samples_interval.1,
            fixed / s.samples_per_item.max(1e-9),
            s.no_decision
        );
    }
}

/// This program, which the cluster benchmarks start as their servers and
/// workers; `None` (said on standard error) if it cannot be found.
pub(super) fn this_program() -> Option<std::path::PathBuf> {
    std::env::current_exe()
        .map_err(|e| eprintln!("error: cannot find this program to start its processes: {e}"))
        .ok()
}
