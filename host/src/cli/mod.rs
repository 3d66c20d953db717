//! Argument parsing and output for the `conclave` command. No decisions are
//! made here: each subcommand calls the library and prints what it returns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use conclave::plugin::{PluginKind, PluginRuntime, Registry, RuntimeConfig};

/// Exit codes, documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A generic failure (I/O, engine start-up).
    pub const FAILURE: u8 = 1;
    /// Bad command-line arguments (also clap's own code).
    pub const USAGE: u8 = 2;
    /// A plugin file was refused.
    pub const BAD_PLUGIN: u8 = 5;
    /// The team spec is invalid.
    pub const BAD_SPEC: u8 = 3;
    /// A model node failed.
    pub const NODE_FAILURE: u8 = 6;
    /// The team reached no consensus.
    pub const NO_CONSENSUS: u8 = 4;
    /// A budget ran out before a decision.
    pub const BUDGET_EXHAUSTED: u8 = 7;
}

#[derive(Parser)]
#[command(
    name = "conclave",
    version,
    about = "Run teams of language models as a distributed system."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, check and create plugins.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Ask a team a question.
    Run {
        /// The team spec.
        spec: PathBuf,
        /// The question (default: --input, else standard input).
        question: Option<String>,
        /// Read the question from this file.
        #[arg(long, conflicts_with = "question")]
        input: Option<PathBuf>,
        /// The right answer, for `sim` nodes (evaluation only).
        #[arg(long)]
        gold: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check model nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Run a benchmark and print its numbers.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// List the plugins in a directory (default: the built-in plugins).
    List {
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load component files and say whether the host accepts them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Create a new plugin crate that builds on the first try.
    New {
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The sdk/ folder of a Conclave checkout (default: this build's).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Reach every `[[node]]` of a team spec once; report latency and reply.
    Check {
        spec: PathBuf,
        /// How long each node may take.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Cost of one voter call on fresh instances, naive and ours.
    Plugins {
        /// The voter component to call (default: the built-in majority).
        #[arg(long)]
        voter: Option<PathBuf>,
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
        #[arg(long, default_value_t = 16)]
        ballots: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
    },
    /// Router overhead, and tail latency with and without hedging on the
    /// paper's measured latencies (virtual time).
    Router {
        /// Calls for the overhead measurement.
        #[arg(long, default_value_t = 50_000)]
        calls: usize,
        /// Calls per model and policy for the tail measurement.
        #[arg(long, default_value_t = 20_000)]
        tail_calls: usize,
        /// `model,latency_s` CSV of measured latencies.
        #[arg(long, default_value = "data/paper-amdahl/llm_call_latencies.csv")]
        latencies: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Scheduling policies on the paper's task DAGs, in virtual time.
    Amdahl {
        #[arg(long, default_value = "data/paper-amdahl/tasks")]
        tasks: PathBuf,
        #[arg(long, default_value = "data/paper-amdahl/llm_call_latencies.csv")]
        latencies: PathBuf,
        /// Seeds per DAG and cell.
        #[arg(long, default_value_t = 200)]
        runs: u64,
        #[arg(long)]
        json: bool,
    },
    /// Adaptive consistency against a fixed vote, and pipeline throughput,
    /// on sim nodes.
    Team {
        #[arg(long, default_value = "data/eval/gsm_symbolic_dev.jsonl")]
        data: PathBuf,
        /// Accuracy of the sim node.
        #[arg(long, default_value_t = 0.6)]
        accuracy: f64,
        /// The sample cap (and the fixed vote's size).
        #[arg(long, default_value_t = 10)]
        cap: u32,
        /// The adaptive voter's (`quorum`) config; `{cap}` stands for --cap.
        #[arg(
            long,
            default_value = r#"{"share":0.5,"min_votes":3,"margin":2,"max_samples":{cap},"plurality_at_cap":true}"#
        )]
        quorum: String,
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
    },
    /// Embedded model: 5 samples of one prompt against 1 sample.
    Embedded {
        /// The GGUF file (default: the one `scripts/fetch-model.sh` fetches).
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Role,
    Verifier,
    Voter,
}

/// The built-in plugins: `CONCLAVE_PLUGIN_DIR`, else `plugins/` next to the
/// folder holding this executable (`target/plugins` for a cargo build).
fn default_plugin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CONCLAVE_PLUGIN_DIR") {
        return d.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|p| p.join("plugins")))
        .unwrap_or_else(|| PathBuf::from("plugins"))
}

/// Prints an error as one sentence plus its cause chain.
fn report(e: &dyn std::error::Error) {
    eprintln!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

/// Runs CPU-bound library work off the async threads; prints its error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            None
        }
        Err(e) => {
            report(&e);
            None
        }
    }
}

fn runtime() -> Result<Arc<PluginRuntime>, conclave::PluginError> {
    Ok(Arc::new(PluginRuntime::new(RuntimeConfig::default())?))
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONCLAVE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(rt.block_on(run(cli)))
}

async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Plugins(PluginsCmd::List { dir, json }) => {
            let dir = dir.unwrap_or_else(default_plugin_dir);
            let reg = match runtime() {
                Ok(rt) => Registry::open(rt, &dir).await,
                Err(e) => Err(e),
            };
            let reg = match reg {
                Ok(r) => r,
                Err(e) => {
                    report(&e);
                    return exit::FAILURE;
                }
            };
            if json {
                let out = serde_json::json!({
                    "plugins": reg.list(),
                    "refused": reg.failures().into_iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serialisable")
                );
            } else {
                println!(
                    "{:<16} {:<9} {:<8} {:<28} DESCRIPTION",
                    "NAME", "KIND", "VERSION", "CAPABILITIES"
                );
                for p in reg.list() {
                    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
                    println!(
                        "{:<16} {:<9} {:<8} {:<28} {}",
                        p.name,
                        p.kind,
                        p.version,
                        caps.join(","),
                        p.description
                    );
                }
                for (path, e) in reg.failures() {
                    eprintln!("refused {}: {e}", path.display());
                }
            }
            if reg.failures().is_empty() {
                exit::OK
            } else {
                exit::BAD_PLUGIN
            }
        }
        Command::Plugins(PluginsCmd::Check { files }) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    report(&e);
                    return exit::FAILURE;
                }
            };
            let mut code = exit::OK;
            for f in files {
                match rt.load_file(&f).await {
                    Ok(p) => {
                        let caps: Vec<String> = p
                            .descriptor()
                            .capabilities
                            .iter()
                            .map(|c| conclave::Capability::from(*c).to_string())
                            .collect();
                        println!(
                            "ok {}: {} {} {} (asks for: {}) sha256 {}",
                            f.display(),
                            conclave::plugin::sandbox::kind_name(p.kind()),
                            p.name(),
                            p.version(),
                            if caps.is_empty() {
                                "nothing".into()
                            } else {
                                caps.join(", ")
                            },
                            &p.hash()[..12]
                        );
                    }
                    Err(e) => {
                        report(&e);
                        code = exit::BAD_PLUGIN;
                    }
                }
            }
            code
        }
        Command::Plugins(PluginsCmd::New {
            name,
            kind,
            dir,
            sdk,
        }) => {
            let kind = match kind {
                Kind::Role => PluginKind::Role,
                Kind::Verifier => PluginKind::Verifier,
                Kind::Voter => PluginKind::Voter,
            };
            let sdk = sdk.unwrap_or_else(conclave::scaffold::default_sdk_path);
            match conclave::scaffold::new_plugin(&name, kind, &dir, &sdk) {
                Ok(files) => {
                    for f in &files {
                        println!("created {}", f.display());
                    }
                    println!(
                        "build it with: cd {} && cargo build --release\nthe component: target/wasm32-wasip2/release/{}.wasm",
                        dir.join(&name).display(),
                        name.replace('-', "_")
                    );
                    exit::OK
                }
                Err(e) => {
                    report(&e);
                    exit::FAILURE
                }
            }
        }
        Command::Bench(BenchCmd::Plugins {
            voter,
            iterations,
            ballots,
            concurrency,
            json,
        }) => {
            let voter = voter.unwrap_or_else(|| default_plugin_dir().join("majority.wasm"));
            match conclave::bench::voter_calls(&voter, iterations, ballots, concurrency).await {
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
                        "  conclave runtime (pooling: {}):    p50 {:>8.1?}  p99 {:>8.1?}",
                        r.pooling, r.runtime.p50, r.runtime.p99
                    );
                    println!(
                        "  speed-up at p50: {:.2}x",
                        r.naive.p50.as_secs_f64() / r.runtime.p50.as_secs_f64().max(1e-12)
                    );
                    println!(
                        "  where the time goes (mean): store {:.1?}, instantiate {:.1?}, call {:.1?}, drop {:.1?}",
                        r.phases[0], r.phases[1], r.phases[2], r.phases[3]
                    );
                    println!(
                        "  decisions per second, {} in flight: {:.0}",
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
        Command::Run {
            spec,
            question,
            input,
            gold,
            json,
        } => {
            let question = match (question, input) {
                (Some(q), _) => q,
                (None, Some(f)) => match std::fs::read_to_string(&f) {
                    Ok(q) => q,
                    Err(e) => {
                        eprintln!("error: {}: {e}", f.display());
                        return exit::FAILURE;
                    }
                },
                (None, None) => {
                    let mut q = String::new();
                    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut q) {
                        report(&e);
                        return exit::FAILURE;
                    }
                    q
                }
            };
            let question = question.trim().to_string();
            if question.is_empty() {
                eprintln!("error: the question is empty");
                return exit::USAGE;
            }
            let team = match conclave::spec::team::TeamSpec::load(&spec) {
                Ok(t) => t,
                Err(e) => {
                    report(&e);
                    return exit::BAD_SPEC;
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    report(&e);
                    return exit::FAILURE;
                }
            };
            let team =
                match conclave::team::job::PreparedTeam::prepare(team, rt, &default_plugin_dir())
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        report(&e);
                        return match e {
                            conclave::team::job::JobError::Spec(_) => exit::BAD_SPEC,
                            conclave::team::job::JobError::Plugin { .. } => exit::BAD_PLUGIN,
                        };
                    }
                };
            let run_id = conclave::team::job::new_run_id();
            let r = team
                .run(&run_id, &question, gold.as_deref(), |id, t| {
                    if !json {
                        eprintln!(
                            "task {id}: {:?} after {} samples, {} rounds",
                            t.stop, t.samples, t.rounds
                        );
                    }
                })
                .await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("serialisable")
                );
            } else {
                if r.simulated {
                    println!(
                        "note: this team uses a simulated node; its answers are not a model's"
                    );
                }
                println!("answer:     {}", r.answer.as_deref().unwrap_or("(none)"));
                let mut nodes = r.nodes.clone();
                nodes.sort();
                nodes.dedup();
                println!(
                    "support:    {} of {} ballots (nodes: {})",
                    r.support,
                    r.total,
                    nodes.join(", ")
                );
                println!("runner-up:  {}", r.runner_up.as_deref().unwrap_or("(none)"));
                println!("samples:    {}", r.samples);
                println!(
                    "tokens:     {} in, {} out; cost {:.6}",
                    r.tokens_in, r.tokens_out, r.cost
                );
                println!("time:       {:.2?}", r.wall);
                println!(
                    "stop:       {}",
                    match &r.stop {
                        conclave::team::consensus::StopReason::Decided => "decided".to_string(),
                        conclave::team::consensus::StopReason::NoConsensus(w) =>
                            format!("no consensus: {w}"),
                        conclave::team::consensus::StopReason::BudgetExhausted(w) =>
                            format!("budget exhausted: {w}"),
                        conclave::team::consensus::StopReason::Failed(w) => format!("failed: {w}"),
                    }
                );
                println!("run:        {}", r.run_id);
            }
            match r.stop {
                conclave::team::consensus::StopReason::Decided => exit::OK,
                conclave::team::consensus::StopReason::NoConsensus(_) => exit::NO_CONSENSUS,
                conclave::team::consensus::StopReason::BudgetExhausted(_) => exit::BUDGET_EXHAUSTED,
                conclave::team::consensus::StopReason::Failed(_) => exit::NODE_FAILURE,
            }
        }
        Command::Nodes(NodesCmd::Check {
            spec,
            timeout,
            json,
        }) => {
            let nodes = match conclave::spec::build_nodes(&spec) {
                Ok(n) => n,
                Err(e) => {
                    report(&e);
                    return exit::BAD_SPEC;
                }
            };
            if nodes.is_empty() {
                eprintln!("error: {} has no [[node]] tables", spec.display());
                return exit::BAD_SPEC;
            }
            let checks = conclave::model::check::check(&nodes, timeout).await;
            let failed = checks.iter().any(|c| c.outcome.is_err());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks).expect("serialisable")
                );
            } else {
                for c in &checks {
                    let kind = if c.simulated {
                        format!("{} (simulator, not a model)", c.kind)
                    } else {
                        c.kind.clone()
                    };
                    match &c.outcome {
                        Ok(reply) => println!(
                            "ok   {:<16} {:<30} {:>9.1?}  {:?}",
                            c.node, kind, c.latency, reply
                        ),
                        Err(e) => {
                            println!("FAIL {:<16} {:<30} {:>9.1?}  {e}", c.node, kind, c.latency)
                        }
                    }
                }
            }
            if failed {
                exit::NODE_FAILURE
            } else {
                exit::OK
            }
        }
        Command::Bench(BenchCmd::Router {
            calls,
            tail_calls,
            latencies,
            json,
        }) => {
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
        Command::Bench(BenchCmd::Amdahl {
            tasks,
            latencies,
            runs,
            json,
        }) => {
            let models = ["gpt-5.2", "claude-sonnet-4-6", "gemini-3-flash"];
            let cells = match blocking(move || {
                conclave::bench::amdahl::table(&tasks, &latencies, &models, runs)
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
                "speed-up over n = 1 (share of Amdahl's bound), {runs} seeds per DAG, virtual time"
            );
            println!(
                "{:<18} {:>4} {:<26} {:>14} {:>14} {:>14} {:>14}",
                "latencies", "p", "policy", "n=2", "n=3", "n=4", "n=5"
            );
            for row in cells.chunks(5) {
                let r = &row[0];
                let cols: Vec<String> = row[1..]
                    .iter()
                    .map(|c| format!("{:.2}x ({:>3.0}%)", c.speedup, 100.0 * c.speedup / c.bound))
                    .collect();
                println!(
                    "{:<18} {:>4.1} {:<26} {:>14} {:>14} {:>14} {:>14}",
                    r.model, r.p, r.policy, cols[0], cols[1], cols[2], cols[3]
                );
            }
            exit::OK
        }
        Command::Bench(BenchCmd::Team {
            data,
            accuracy,
            cap,
            quorum,
            tasks,
            concurrency,
            json,
        }) => {
            let dir = default_plugin_dir();
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
                let out = serde_json::json!({"adaptive": adaptive, "throughput": throughput});
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
            exit::OK
        }
        Command::Bench(BenchCmd::Embedded {
            model,
            max_tokens,
            json,
        }) => match conclave::bench::embedded::batching(&model, max_tokens).await {
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
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "conclave",
                &mut std::io::stdout(),
            );
            exit::OK
        }
    }
}
