//! `conclave bench chaos`: the cluster under a seeded schedule of faults,
//! on real processes and a real nats-server, printed.

use std::path::PathBuf;

use super::exit;

/// `conclave bench chaos`' arguments.
#[derive(clap::Args)]
pub(crate) struct ChaosArgs {
    /// The schedule's seed: 0 is the schedule an operator first reported
    /// (a worker killed, another paused, the coordinator killed twice, the
    /// NATS server killed); any other seed draws 5 to 9 faults.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Seeds to run, from `--seed` on, each on fresh processes.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u64,
    /// The servers' `--lease-ttl`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lease_ttl: std::time::Duration,
    /// Clients asking at once, one question after another.
    #[arg(long, default_value_t = 40)]
    pub(crate) clients: usize,
    /// How long after the last fault every journaled run has to end.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub(crate) settle: std::time::Duration,
    /// The nats-server program; the benchmark starts its own server (on a
    /// free port, its store in a temporary folder) so that it can kill and
    /// restart it. Default: target/nats/nats-server (from
    /// scripts/install-nats.sh) if it is there, else nats-server on PATH.
    #[arg(long)]
    pub(crate) nats_server: Option<PathBuf>,
    /// The paper's measured call latencies, which the simulated node
    /// replays (GPT-5.2's, scaled by 0.25).
    #[arg(long, default_value = conclave::bench::workers::LATENCIES)]
    pub(crate) latencies: PathBuf,
    /// Keep the processes' logs (a temporary folder, named at the end)
    /// even when every invariant held.
    #[arg(long)]
    pub(crate) keep_logs: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

/// `conclave bench chaos`: exits 1 if an invariant broke on any seed.
pub(crate) async fn chaos(args: ChaosArgs) -> u8 {
    let Some(exe) = super::bench::this_program() else {
        return exit::FAILURE;
    };
    let nats_server = args.nats_server.clone().unwrap_or_else(|| {
        let local = PathBuf::from("target/nats/nats-server");
        if local.exists() {
            local
        } else {
            PathBuf::from("nats-server")
        }
    });
    let mut code = exit::OK;
    let mut reports = Vec::new();
    for seed in args.seed..args.seed + args.count {
        let config = conclave::bench::chaos::ChaosConfig {
            seed,
            lease_ttl: args.lease_ttl,
            clients: args.clients,
            settle: args.settle,
            nats_server: nats_server.clone(),
            latencies: args.latencies.clone(),
            keep_logs: args.keep_logs,
        };
        let r = match conclave::bench::chaos::run(&exe, &config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: seed {seed}: {e}");
                return exit::FAILURE;
            }
        };
        if !r.broken.is_empty() {
            code = exit::FAILURE;
        }
        if !args.json {
            print(&r);
        }
        reports.push(r);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serialisable")
        );
    }
    code
}

fn print(r: &conclave::bench::chaos::ChaosReport) {
    println!(
        "chaos, seed {}: {} clients, lease TTL {}, two servers, {} workers, a team of 2 tasks x 3 replicas on a sim node (GPT-5.2 latencies x 0.25)",
        r.seed,
        r.clients,
        humantime::format_duration(r.lease_ttl),
        conclave::bench::chaos::WORKERS
    );
    for f in &r.faults {
        let fault = serde_json::to_value(&f.step).expect("serialisable");
        let mut what = fault["fault"].as_str().unwrap_or("?").to_string();
        for key in ["for_ms", "restart_after_ms"] {
            if let Some(ms) = fault[key].as_u64() {
                what.push_str(&format!(
                    " ({} {:.1} s)",
                    if key == "for_ms" { "for" } else { "back after" },
                    ms as f64 / 1000.0
                ));
            }
        }
        println!(
            "  {:>6.1} s  {what:<36} {:<28} answers again after {}",
            f.step.at_ms as f64 / 1000.0,
            f.target,
            f.recovered_after
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        );
    }
    println!(
        "  requests: {} answered of {} (first try to answer: p50 {:.2} s, max {:.2} s); {} times asked again after a 503 or a dropped connection",
        r.answered,
        r.requests,
        r.answer_p50.as_secs_f64(),
        r.answer_max.as_secs_f64(),
        r.retried
    );
    if !r.retried_because.is_empty() {
        println!(
            "    asked again because: {}",
            r.retried_because
                .iter()
                .map(|(k, n)| format!("{n} × {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  runs: {} ended of {} journaled ({} decided){}",
        r.runs_ended,
        r.runs,
        r.runs_decided,
        r.all_ended_after
            .map(|d| format!(", all ended {:.1} s after the last fault", d.as_secs_f64()))
            .unwrap_or_default()
    );
    if !r.exited_by_themselves.is_empty() {
        println!(
            "  exited by themselves (started again): {}",
            r.exited_by_themselves.join(", ")
        );
    }
    if r.broken.is_empty() {
        println!("  invariants: all held");
    } else {
        println!("  invariants broken:");
        for b in r.broken.iter().take(20) {
            println!("    {b}");
        }
        if r.broken.len() > 20 {
            println!("    … and {} more", r.broken.len() - 20);
        }
    }
    if let Some(dir) = &r.logs {
        println!("  the processes' logs: {}", dir.display());
    }
}

/// `conclave bench dst`' arguments.
#[derive(clap::Args)]
pub(crate) struct DstArgs {
    /// Seeds to run, of each simulation.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) seeds: u64,
    /// The first seed (a failure names its seed: `--from SEED --seeds 1`
    /// replays it, with its role log and the server's operations).
    #[arg(long, default_value_t = 0)]
    pub(crate) from: u64,
    /// Failures shown in full.
    #[arg(long, default_value_t = 3)]
    pub(crate) show: usize,
    /// Only this simulation: `election` (the lease alone), `takeover`
    /// (coordinators serving clients, registry, takeover and journal) or
    /// `work` (the work queue: a coordinator's replicas run by workers).
    #[arg(long, value_parser = ["election", "takeover", "work"])]
    pub(crate) only: Option<String>,
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs the cluster's deterministic simulations over many seeds.
pub(crate) async fn dst(args: DstArgs) -> u8 {
    use conclave::cluster::simulation::{self, takeover, work};
    let (from, seeds, show) = (args.from, args.seeds, args.show);
    let run = |what: &str| args.only.as_deref().is_none_or(|o| o == what);
    let (election, taking_over, working) = (run("election"), run("takeover"), run("work"));
    let swept = tokio::task::spawn_blocking(move || {
        (
            election.then(|| simulation::sweep(from, seeds, show)),
            taking_over.then(|| takeover::sweep(from, seeds, show)),
            working.then(|| work::sweep(from, seeds, show)),
        )
    })
    .await;
    let (election, taking_over, working) = match swept {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the simulation stopped: {e}");
            return exit::FAILURE;
        }
    };
    let failures = election.as_ref().map_or(0, |s| s.failures)
        + taking_over.as_ref().map_or(0, |s| s.failures)
        + working.as_ref().map_or(0, |s| s.failures);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "election": election,
                "takeover": taking_over,
                "work": working,
            }))
            .expect("serialisable")
        );
        return if failures == 0 {
            exit::OK
        } else {
            exit::FAILURE
        };
    }
    let replay = |seed: u64, only: &str| {
        println!("  replay: conclave bench dst --only {only} --from {seed} --seeds 1");
    };
    if let Some(sweep) = &election {
        println!(
            "election: {} seeds ({}..{}) in {:.2?}, {:.0?} of virtual time simulated; {} broke an invariant",
            sweep.seeds,
            sweep.first,
            sweep.first + sweep.seeds,
            sweep.wall,
            sweep.simulated,
            sweep.failures
        );
        for o in &sweep.failed {
            println!();
            print!("{}", o.schedule);
            for b in &o.broken {
                println!("  broken: {b}");
            }
            if seeds == 1 {
                for (t, p, r) in &o.roles {
                    println!("  {t:>10.3?} p{p} {r}");
                }
                for (t, what) in &o.server {
                    println!("  {t:>10.3?} server: {what}");
                }
            } else {
                replay(o.schedule.seed, "election");
            }
        }
    }
    if let Some(sweep) = &taking_over {
        println!(
            "takeover: {} seeds ({}..{}) in {:.2?}, {:.0?} of virtual time simulated, {} requests, {} runs journaled ({} by owners, {} of them taken over); {} broke an invariant",
            sweep.seeds,
            sweep.first,
            sweep.first + sweep.seeds,
            sweep.wall,
            sweep.simulated,
            sweep.requests,
            sweep.runs,
            sweep.owned,
            sweep.taken_from_owners,
            sweep.failures
        );
        for (invariant, n) in &sweep.by_invariant {
            println!("  {n} seeds broke: {invariant}");
        }
        for o in &sweep.failed {
            println!();
            print!("{}", o.plan);
            for (invariant, what) in &o.broken {
                println!("  broken ({invariant}): {what}");
            }
            if seeds == 1 {
                for (t, p, r) in &o.roles {
                    println!("  {t:>10.3?} p{p} {r}");
                }
                for (run, p, answer) in &o.answers {
                    println!("  client of {run} at p{p}: {answer:?}");
                }
                for r in &o.journal {
                    println!(
                        "  {:>10.3?} journal #{} {}: {:?} by p{} in term {}",
                        r.at, r.seq, r.run, r.kind, r.writer, r.term
                    );
                }
                for (t, what) in &o.server {
                    println!("  {t:>10.3?} server: {what}");
                }
            } else {
                replay(o.plan.faults.seed, "takeover");
            }
        }
    }
    if let Some(sweep) = &working {
        print_work(sweep, seeds);
    }
    if failures == 0 {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn print_work(sweep: &conclave::cluster::simulation::work::Sweep, seeds: u64) {
    println!(
        "work: {} seeds ({}..{}) in {:.2?}, {:.0?} of virtual time simulated, {} replicas queued, {} model calls made; {} broke an invariant",
        sweep.seeds,
        sweep.first,
        sweep.first + sweep.seeds,
        sweep.wall,
        sweep.simulated,
        sweep.replicas,
        sweep.executions,
        sweep.failures
    );
    for (invariant, n) in &sweep.by_invariant {
        println!("  {n} seeds broke: {invariant}");
    }
    for o in &sweep.failed {
        println!();
        print!("{}", o.plan);
        for (invariant, what) in &o.broken {
            println!("  broken ({invariant}): {what}");
        }
        if seeds == 1 {
            for e in &o.executions {
                println!(
                    "  {:>10.3?} p{} runs replica {} (delivery {}), finished {:?}",
                    e.started, e.worker, e.replica, e.attempt, e.finished
                );
            }
            for (r, t, how) in &o.ended {
                println!("  {t:>10.3?} replica {r} ended: {how:?}");
            }
            for (t, p, words) in &o.said {
                println!("  {t:>10.3?} p{p}: {words}");
            }
        } else {
            println!(
                "  replay: conclave bench dst --only work --from {} --seeds 1",
                o.plan.seed
            );
        }
    }
}
