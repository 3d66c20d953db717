//! `conclave bench`'s subcommands and their arguments.

use std::path::PathBuf;

use clap::Subcommand;

use super::journal::StoreArgs;

/// `conclave bench`'s subcommands.
#[derive(Subcommand)]
pub(super) enum BenchCmd {
    /// What a plugin's language costs: the same voter from Rust, Python and
    /// JavaScript (file size, load, first call, p50 per call, memory).
    Languages {
        /// `LABEL=PATH` of a voter component, once per language
        /// (default: the `plugins new --kind voter` template built in Rust,
        /// Python and JavaScript, target/languages/voter-LANG.wasm, from
        /// `scripts/build-language-voters.sh`).
        #[arg(long = "voter", value_name = "LABEL=PATH")]
        voters: Vec<String>,
        #[arg(long, default_value_t = 2_000)]
        iterations: usize,
        #[arg(long, default_value_t = 16)]
        ballots: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cost of one voter call on fresh instances, naive and ours.
    Plugins {
        /// The contract 0.2 voter to call (default: the built-in majority).
        #[arg(long)]
        voter: Option<PathBuf>,
        /// The contract 0.1 voter measured beside it (default: the
        /// `majority-v1` test fixture, the same policy on the 0.1 contract).
        #[arg(long)]
        v1_voter: Option<PathBuf>,
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
        /// How alike a task's copies' latencies are, 0..1 (0: independent).
        #[arg(long, default_value_t = 0.0)]
        correlation: f64,
        /// Also run the live scheduler in virtual time beside the model.
        #[arg(long)]
        live: bool,
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
        /// The `adaptive` voter's config in the sweep; `{cap}` stands for --cap.
        #[arg(long, default_value = r#"{"threshold":0.95,"max_samples":{cap}}"#)]
        adaptive: String,
        /// Node accuracies of the sweep (fixed vote, quorum, adaptive).
        #[arg(long, value_delimiter = ',', default_value = "0.4,0.6,0.8")]
        accuracies: Vec<f64>,
        /// Items per accuracy in the sweep (the data set's questions, cycled);
        /// 0 skips the sweep.
        #[arg(long, default_value_t = 1000)]
        items: usize,
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
    },
    /// The live consensus loop in virtual time on the paper's latencies:
    /// 5 replicas deciding early (with hedging), the same waiting for all,
    /// and one sample.
    Consensus {
        #[arg(long, default_value_t = 2000)]
        items: usize,
        /// Each sample's chance of the right answer.
        #[arg(long, default_value_t = 0.7)]
        accuracy: f64,
        /// Sim nodes the team spreads over.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Models: substrings of the CSV's `model` column.
        #[arg(long, value_delimiter = ',', default_value = "gpt-5.2,claude,gemini")]
        models: Vec<String>,
        /// `model,latency_s` CSV of measured latencies.
        #[arg(long, default_value = "data/paper-amdahl/llm_call_latencies.csv")]
        latencies: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The early team's hedge quantile: a replica past this quantile of
        /// its node's latencies gets a copy.
        #[arg(long, default_value_t = 0.9)]
        hedge_quantile: f64,
        #[arg(long)]
        json: bool,
    },
    /// A team under load in real time: questions in flight at each level
    /// to 5 replicas deciding early with hedging, 5 waiting for all, and
    /// one sample, on sim nodes replaying the paper's latencies; p50/p95,
    /// accuracy, instance slots, replicas waiting, memory and CPU.
    Load(super::bench_load::LoadArgs),
    /// What durable re-execution costs: compute per model call (roles of
    /// 1, 4 and 16 calls, the built-in solver and programmer; held
    /// instance against steps) and the memory of replicas waiting on a
    /// model.
    Reexecute(super::bench_load::ReexecuteArgs),
    /// The deterministic simulations of the cluster: its election, and its
    /// coordinators serving clients with their registry, takeover and
    /// journal; many seeded schedules of faults (server down, lost
    /// replies, processes paused, killed or cut off), each checked for its
    /// invariants. No server needed.
    Dst(super::bench_chaos::DstArgs),
    /// What the knowledge base costs: building an index of a generated
    /// corpus (passages per second), rebuilding it after one file changed,
    /// and searching it (with the index kept open, and opened per query).
    Index(super::bench_index::IndexArgs),
    /// The journal's cost on a job of many tasks, its append rate, and
    /// replay speed.
    Journal {
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// The sim node's latency per call (default: none).
        #[arg(long, value_parser = humantime::parse_duration)]
        latency: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
        /// `--cluster URL`: measure the cluster's JetStream journal instead
        /// of a SQLite file in a temporary folder.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// How fast a standby takes over: two `serve --cluster` processes, the
    /// coordinator killed (SIGKILL) mid-run, again and again; the time to
    /// a new coordinator and to the run's end, beside uninterrupted runs.
    Failover {
        /// Coordinators killed.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        lease_ttl: std::time::Duration,
        #[arg(long)]
        json: bool,
        /// `--cluster URL` (required): the NATS server; the benchmark uses
        /// a cluster name of its own on it.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Throughput with cluster workers: many requests at once to a team on
    /// a simulated node serving two calls at a time, by one `serve`
    /// process alone (the baseline) and by a `serve --cluster` coordinator
    /// with 1, 2, 4 ... `conclave worker` processes.
    Workers(super::bench_workers::WorkersArgs),
    /// The cluster under compound faults: a nats-server of its own, two
    /// `serve --cluster` and three `worker` processes, clients asking
    /// without pause, and a seeded schedule of kills, pauses and restarts;
    /// checks that every request is answered and every run ends.
    Chaos(super::bench_chaos::ChaosArgs),
    /// What serving costs: a sim node directly, a team in-process, a team
    /// over HTTP; at 1 and 64 clients.
    Serve {
        #[arg(long, default_value_t = 2048)]
        requests: usize,
        #[arg(long)]
        json: bool,
    },
    /// Embedded model: 5 samples of one prompt against 1 sample.
    Embedded {
        /// The GGUF file (default: SmolLM2-135M, from
        /// `scripts/fetch-model.sh smollm2-135m`).
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long)]
        json: bool,
    },
}
