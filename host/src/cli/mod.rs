//! Argument parsing and output for the `conclave` command. No decisions are
//! made here: each subcommand calls the library and prints what it returns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod bench;
mod bench_args;
mod bench_chaos;
mod bench_index;
mod bench_load;
mod bench_workers;
mod eval;
mod index;
use index::IndexCmd;
mod journal;
mod plugins;
mod serve;
mod team;
mod worker;

use bench_args::BenchCmd;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use journal::StoreArgs;

use conclave::plugin::{PluginRuntime, RuntimeConfig};

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
    /// Interrupted (Ctrl-C); the conventional 128 + SIGINT.
    pub const CANCELLED: u8 = 130;
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
    /// Export a span per run, task, replica, plugin call and model call to
    /// this OpenTelemetry collector, over OTLP/HTTP (protobuf). A base URL
    /// (`http://localhost:4318`) gets `/v1/traces` appended; a URL with a
    /// path is used as given. Exports are batched off the run's path: a
    /// collector that is down loses spans, with a warning, never a run.
    #[arg(
        long,
        global = true,
        env = "CONCLAVE_OTLP_ENDPOINT",
        value_name = "URL",
        value_parser = otlp_endpoint
    )]
    otlp_endpoint: Option<String>,
    /// Replicas (role calls) this process keeps in flight at once, running
    /// or waiting on a model; one more waits for admission. A replica
    /// waiting on a model holds no plugin instance. Default: one per MiB
    /// of the machine's memory, at least 1,024.
    #[arg(long, global = true, env = "CONCLAVE_MAX_REPLICAS", value_name = "N")]
    max_replicas: Option<usize>,
}

/// `--max-replicas`, read by [`runtime`].
static MAX_REPLICAS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// `--otlp-endpoint`: an http(s) URL, made the traces URL.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    conclave::otel::traces_url(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, check and create plugins.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Ask a team a question.
    Run(RunArgs),
    /// Show a team's task DAG: order, critical path, p, Amdahl's bound.
    Plan {
        spec: PathBuf,
        /// Bounds for teams of 1 to this many workers (default: the
        /// spec's `max_parallel_tasks`, at most 8).
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Serve teams as OpenAI-compatible models (the request's `model`
    /// picks the team).
    Serve(ServeArgs),
    /// Score teams on a dataset, side by side.
    Eval(EvalArgs),
    /// Continue a run that was killed, from its journal.
    Resume {
        run: String,
        #[arg(long)]
        json: bool,
        /// Resume even though the run's hash chain is broken (its records
        /// may have been edited since they were written).
        #[arg(long)]
        accept_broken_chain: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Count a run's votes again from its journal, with no model call;
    /// `--voter` re-judges them with another voter.
    Replay {
        /// The run (or none with --all).
        #[arg(required_unless_present = "all")]
        run: Option<String>,
        /// Every run in the data directory.
        #[arg(long, conflicts_with = "run")]
        all: bool,
        /// With --all: only the runs of this team (by its `[team] name`).
        #[arg(long, requires = "all")]
        team: Option<String>,
        /// A built-in voter's name or a component file.
        #[arg(long)]
        voter: Option<String>,
        /// The voter's config, JSON.
        #[arg(long, default_value = "{}")]
        voter_config: String,
        /// Let the `--voter` decide answers none of the ballots gave (a
        /// summary, a merge), marked synthesised; without it such a
        /// decision is refused, as in a team whose [[plugin]] does not say
        /// `synthesises = true`.
        #[arg(long, requires = "voter")]
        synthesises: bool,
        /// A weights file from `conclave calibrate`, given to the voter as
        /// `weights` in its config (for `--voter weighted`).
        #[arg(long, requires = "voter")]
        weights: Option<PathBuf>,
        /// Judge the recorded candidates again with this verifier (a
        /// built-in's name or a component file; no model calls).
        #[arg(long)]
        verifier: Option<String>,
        /// The verifier's config, JSON.
        #[arg(long, default_value = "{}")]
        verifier_config: String,
        /// Replay a run even though its hash chain is broken (its records
        /// may have been edited since they were written).
        #[arg(long)]
        accept_broken_chain: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Learn each node's weight from how its ballots agreed with the
    /// others' in past runs (no gold labels), for a `weighted` voter.
    Calibrate {
        /// Only the runs of this team (by its `[team] name`).
        #[arg(long)]
        team: Option<String>,
        /// Where the weights go (TOML; a spec names it with `weights = "FILE"`).
        #[arg(long, default_value = "weights.toml")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Cluster mode: who coordinates (the lease's holder, its term and
    /// address) and the runs in progress under a coordinator.
    Cluster {
        #[arg(long)]
        json: bool,
        /// Print, instead, nats-server configuration that gives
        /// coordinators and workers of the cluster `--cluster-name` only
        /// what each needs (a worker may take work and send results, and
        /// nothing else); connects to nothing.
        #[arg(long)]
        nats_permissions: bool,
        /// `--cluster URL` (required, except with --nats-permissions).
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Cluster mode: run replicas of the given teams for whichever server
    /// coordinates the cluster (`serve --cluster URL`), from its JetStream
    /// work queue. Start any number, on any hosts that have the team specs
    /// (byte for byte) and their plugins and nodes.
    Worker(WorkerArgs),
    /// List journaled runs.
    Runs {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check a run's journal against its hash chain, and a digest kept
    /// from its reply: names the first record that does not match.
    Verify {
        run: String,
        /// A digest the run's reply (or `conclave run`) gave: say whether
        /// the journal still holds the records it was the end of.
        #[arg(long)]
        digest: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// What a run did: timeline, nodes, tasks, critical path.
    Trace {
        run: String,
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML page with a Gantt chart.
        #[arg(long)]
        html: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check model nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// A knowledge base: documents split into passages in a BM25 index.
    #[command(subcommand)]
    Index(IndexCmd),
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
    /// Create a new plugin (Rust, Python or JavaScript) that builds on the
    /// first try with its language's own tool.
    New {
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// The language: rust (cargo), python (componentize-py) or js (jco).
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Make an Ed25519 key pair for signing components: KEY (secret,
    /// readable by you alone) and KEY.pub (`ed25519:...`, for
    /// `trusted_keys`).
    Keygen {
        /// The secret key file to write (KEY.pub is written beside it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign components: writes FILE.sig beside each.
    Sign {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The secret key file `plugins keygen` wrote.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check components' signatures (FILE.sig beside each): who signed,
    /// and with --trusted-key, whether a team trusting those keys would
    /// run them.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A trusted public key (`ed25519:...`) or a file holding one;
        /// repeat for several.
        #[arg(long = "trusted-key")]
        trusted: Vec<String>,
    },
}

/// `conclave run`'s arguments.
#[derive(clap::Args)]
struct RunArgs {
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
    #[command(flatten)]
    store: StoreArgs,
    /// The run's id (default: a new one). Seeds derive from it, so the
    /// same id on seeded nodes gives the same run.
    #[arg(long)]
    run_id: Option<String>,
}

/// `conclave eval`'s arguments.
#[derive(clap::Args)]
struct EvalArgs {
    /// The team spec.
    spec: PathBuf,
    /// JSONL items: question and answer, or question, choices and a
    /// letter answer.
    #[arg(long)]
    data: PathBuf,
    /// More team specs to score on the same items.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// Seeds the runs (the same seed resumes the same evaluation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Items at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Where eval.json and chart.svg go (default: evals/ID in the data
    /// directory).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// `conclave serve`'s arguments.
#[derive(clap::Args)]
struct ServeArgs {
    /// Team specs, or folders of them (each `*.toml` in a folder): the
    /// request's `model` picks the team by its `[team] name`.
    #[arg(required = true, value_name = "TEAM")]
    specs: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The environment variable holding the bearer token clients must send
    /// (required on a non-loopback address).
    #[arg(long)]
    token_env: Option<String>,
    /// Team runs at once; more requests wait for a slot.
    #[arg(long, default_value_t = 16)]
    max_concurrency: usize,
    /// Requests that may wait for a slot; one more gets 503 with
    /// Retry-After (default: 4 × --max-concurrency).
    #[arg(long)]
    max_queue: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Longest a request may take, waiting for a slot included.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    deadline: std::time::Duration,
    /// Finished runs the `/ui` page and `/v1/runs` keep (runs in progress
    /// are always shown).
    #[arg(long, default_value_t = 100)]
    keep_runs: usize,
    /// Do not watch the team specs and their plugin files: a changed spec
    /// or a replaced plugin is not taken up until the server restarts.
    #[arg(long)]
    no_watch: bool,
    /// With --cluster: the coordinator lease's time to live. Servers of a
    /// cluster elect one coordinator, which serves requests; the others
    /// are standbys, and one takes over within about 1.25 × this once the
    /// coordinator stops renewing. Set by the first server of a cluster.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// With --cluster: where clients reach this server, which standbys name
    /// while it coordinates (default: http:// and --listen).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// A public key (`ed25519:...`) or a file holding one, trusted to sign
    /// the teams' components; repeat for several. With any, every team
    /// runs (and hot-swaps in) only components signed by one of these or
    /// of its own `[team] trusted_keys`.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Team spec files (or folders of them) whose replicas this worker runs.
    #[arg(required = true)]
    specs: Vec<PathBuf>,
    /// Replicas run at once.
    #[arg(long, default_value_t = 4)]
    max_inflight: usize,
    /// Labels shown with this worker in `conclave cluster` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// How long a replica may go without a progress ack before its work is
    /// redelivered to another worker; this worker acks progress every
    /// third of it. Set by the first worker of a team.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: std::time::Duration,
    /// Deliveries of one replica's work at most, the first included; then
    /// the replica fails. Set by the first worker of a team.
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// A public key (`ed25519:...`) or a file holding one, trusted to sign
    /// the teams' components, as `serve --trusted-key`.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    /// `--cluster URL` (or `--nats URL`, required).
    #[command(flatten)]
    store: StoreArgs,
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

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Role,
    Verifier,
    Voter,
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
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
/// Prints an error and the causes its own message does not already say
/// (many errors here embed their source's text), so nothing shows twice.
fn report(e: &dyn std::error::Error) {
    let mut said = e.to_string();
    eprintln!("error: {said}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !said.contains(&text) {
            eprintln!("  caused by: {text}");
            said.push_str(&text);
        }
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
    Ok(Arc::new(PluginRuntime::new(RuntimeConfig {
        max_replicas: MAX_REPLICAS.get().copied().flatten(),
        ..RuntimeConfig::default()
    })?))
}

pub fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let cli = Cli::parse();
    let _ = MAX_REPLICAS.set(cli.max_replicas);
    if prints_and_exits(&cli.command) {
        end_quietly_on_a_closed_pipe();
    }
    // Log lines: events at `CONCLAVE_LOG` (default warn), never the spans
    // kept for OpenTelemetry.
    let log = tracing_subscriber::EnvFilter::try_from_env("CONCLAVE_LOG")
        .unwrap_or_else(|_| "warn".into())
        .add_directive(
            format!("{}=off", conclave::otel::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let exporter = match cli
        .otlp_endpoint
        .as_deref()
        .map(conclave::otel::Exporter::start)
    {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => {
            eprintln!("error: --otlp-endpoint: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log),
        )
        .with(exporter.as_ref().map(|e| e.layer()))
        .init();
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
    let code = rt.block_on(run(cli));
    // The work is over (its spans ended) before the last spans are sent.
    drop(rt);
    if let Some(e) = exporter {
        e.shutdown();
    }
    ExitCode::from(code)
}

/// The commands that print a report and exit with no socket open. Read
/// through a pipe that closes early (`conclave trace RUN | head`), they end
/// as any Unix tool does, not with a panic on the closed stdout. The others
/// keep Rust's default (SIGPIPE ignored): a server, a worker or a journal
/// on a cluster must see a closed connection as an error, not die of it.
fn prints_and_exits(command: &Command) -> bool {
    match command {
        Command::Runs { store, .. }
        | Command::Trace { store, .. }
        | Command::Verify { store, .. } => store.cluster().is_none(),
        Command::Plan { .. } | Command::Completions { .. } => true,
        _ => false,
    }
}

#[cfg(unix)]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: `signal` only sets this process's disposition for SIGPIPE to
    // the default, a valid handler; these commands read a local journal or
    // a spec and write to stdout and files, with no pipe or socket that
    // relies on SIGPIPE being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_a_closed_pipe() {}

async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Plugins(cmd) => plugins::run(cmd).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Nodes(cmd) => team::nodes(cmd).await,
        Command::Index(cmd) => index::run(cmd),
        Command::Run(args) => team::ask(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Eval(args) => eval::eval(args).await,
        Command::Resume {
            run,
            json,
            accept_broken_chain,
            store,
        } => journal::resume(&run, json, accept_broken_chain, &store).await,
        Command::Replay {
            run,
            all,
            team,
            voter,
            voter_config,
            synthesises,
            weights,
            verifier,
            verifier_config,
            accept_broken_chain,
            json,
            store,
        } => {
            let voter_config = match journal::with_weights(&voter_config, weights.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            journal::replay(
                run.as_deref(),
                (all, team.as_deref()),
                (voter.as_deref(), &voter_config, synthesises),
                (verifier.as_deref(), &verifier_config),
                (json, accept_broken_chain),
                &store,
            )
            .await
        }
        Command::Runs { json, store } => journal::runs(json, &store),
        Command::Worker(args) => worker::worker(args).await,
        Command::Cluster {
            json,
            nats_permissions,
            store,
        } => serve::cluster(json, nats_permissions, &store).await,
        Command::Calibrate {
            team,
            out,
            json,
            store,
        } => journal::calibrate(team.as_deref(), &out, json, &store),
        Command::Trace {
            run,
            json,
            html,
            store,
        } => journal::trace(&run, json, html.as_deref(), &store),
        Command::Verify {
            run,
            digest,
            json,
            store,
        } => journal::verify(&run, digest.as_deref(), json, &store),
        Command::Plan {
            spec,
            workers,
            json,
        } => team::plan(&spec, workers, json),
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
