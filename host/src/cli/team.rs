//! `conclave run` and `conclave nodes check`: asking a team, reaching its
//! nodes.

use conclave::team::events::{Event, Observer};

use super::{default_plugin_dir, exit, report, runtime, NodesCmd, RunArgs};

/// `conclave run`.
pub async fn ask(args: RunArgs) -> u8 {
    let RunArgs {
        spec,
        question,
        input,
        gold,
        json,
        store,
        run_id,
    } = args;
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
    let team = match load_team(&spec, None).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let journal = match open_journal(&store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    match cluster_workers(&store).await {
        Ok(Some(w)) => team.use_workers(w),
        Ok(None) => {}
        Err(code) => return code,
    }
    let run_id = run_id.unwrap_or_else(conclave::team::job::new_run_id);
    let (observer, bar) = progress(json);
    // On a cluster, the coordinator takes the run over if this process dies.
    let owner = match store.cluster() {
        Some(cluster) => match conclave::cluster::owner::Owner::claim(&cluster, &run_id).await {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("error: cluster {}: {e}", cluster.url);
                return exit::FAILURE;
            }
        },
        None => None,
    };
    let job = conclave::team::submit::Job::new(&run_id, &question, gold.as_deref());
    let done = team
        .submit(&job, journal, None, observer, cancel_on_ctrl_c())
        .await;
    if let Some(o) = owner {
        o.release(done.journal_error.is_none()).await;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(&done, json)
}

/// On a cluster, its work queue: replicas go to its workers while any
/// serves the team (`conclave worker`).
pub(super) async fn cluster_workers(
    store: &super::StoreArgs,
) -> Result<Option<std::sync::Arc<dyn conclave::team::remote::RemoteReplicas>>, u8> {
    let Some(cluster) = store.cluster() else {
        return Ok(None);
    };
    match conclave::cluster::work::WorkQueue::open(&cluster, None).await {
        Ok(q) => Ok(Some(std::sync::Arc::new(q))),
        Err(e) => {
            eprintln!("error: cluster {}: {e}", cluster.url);
            Err(exit::FAILURE)
        }
    }
}

/// Loads and prepares the team spec at `path` with the built-in plugins,
/// on `rt` (a new runtime when `None`); on failure, reports it and gives
/// the exit code (3 bad spec, 5 bad plugin, 1 otherwise).
pub(super) async fn load_team(
    path: &std::path::Path,
    rt: Option<std::sync::Arc<conclave::PluginRuntime>>,
) -> Result<conclave::team::job::PreparedTeam, u8> {
    use conclave::team::job::{JobError, PreparedTeam};
    let spec = conclave::spec::team::TeamSpec::load(path).map_err(|e| {
        report(&e);
        exit::BAD_SPEC
    })?;
    let rt = match rt {
        Some(rt) => rt,
        None => runtime().map_err(|e| {
            report(&e);
            exit::FAILURE
        })?,
    };
    PreparedTeam::prepare(spec, rt, &default_plugin_dir())
        .await
        .map_err(|e| {
            report(&e);
            match e {
                JobError::Spec(_) | JobError::Index { .. } => exit::BAD_SPEC,
                JobError::Plugin { .. } | JobError::Limits { .. } => exit::BAD_PLUGIN,
            }
        })
}

/// Opens the journal: the cluster's stream when `--cluster` names one,
/// else the SQLite file in the data directory (default: the user's).
pub(super) fn open_journal(
    store: &super::StoreArgs,
) -> Result<std::sync::Arc<dyn conclave::journal::Journal>, u8> {
    if let Some(cluster) = store.cluster() {
        return match conclave::journal::jetstream::JetStreamJournal::connect(&cluster) {
            Ok(j) => Ok(j),
            Err(e) => {
                report(&e);
                Err(exit::FAILURE)
            }
        };
    }
    let dir = store
        .data_dir()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(conclave::journal::sqlite::default_dir);
    match conclave::journal::sqlite::SqliteJournal::open(&dir) {
        Ok(j) => Ok(j),
        Err(e) => {
            report(&e);
            eprintln!("hint: choose another place with --data-dir DIR");
            Err(exit::FAILURE)
        }
    }
}

/// A token cancelled by Ctrl-C.
pub(super) fn cancel_on_ctrl_c() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the model calls in flight");
            on_ctrl_c.cancel();
        }
    });
    cancel
}

/// Progress on standard error: a live line (samples, votes, round,
/// tokens, tasks) on a terminal, a plain line per finished task otherwise,
/// nothing with --json. The bar, if any, is cleared before the result.
pub(super) fn progress(
    json: bool,
) -> (std::sync::Arc<dyn Observer>, Option<indicatif::ProgressBar>) {
    use std::io::IsTerminal;
    if json {
        return (std::sync::Arc::new(conclave::team::events::Quiet), None);
    }
    if !std::io::stderr().is_terminal() {
        let plain = |_: &str, e: &Event| {
            if let Event::TaskEnded { task, result } = e {
                eprintln!(
                    "task {task}: {} after {} samples, {} rounds",
                    result.stop, result.samples, result.rounds
                );
            }
        };
        return (std::sync::Arc::new(plain), None);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let live = Live {
        bar: bar.clone(),
        counts: std::sync::Mutex::default(),
    };
    (std::sync::Arc::new(live), Some(bar))
}

/// The live progress line.
struct Live {
    bar: indicatif::ProgressBar,
    /// samples, votes, round, tokens, tasks done
    counts: std::sync::Mutex<(u64, u64, u32, u64, u64)>,
}

impl Observer for Live {
    fn event(&self, _run: &str, e: &Event) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Ballot { round, .. } => {
                c.0 += 1;
                c.2 = c.2.max(*round + 1);
            }
            Event::Vote { .. } => c.1 += 1,
            Event::ModelCall {
                tokens_in,
                tokens_out,
                ..
            } => c.3 += u64::from(*tokens_in) + u64::from(*tokens_out),
            Event::TaskEnded { task, result } => {
                c.4 += 1;
                self.bar.println(format!(
                    "task {task}: {} after {} samples, {} rounds",
                    result.stop, result.samples, result.rounds
                ));
            }
            _ => return,
        }
        self.bar.set_message(format!(
            "{} samples, {} votes, round {}, {} tokens, {} tasks done",
            c.0, c.1, c.2, c.3, c.4
        ));
    }
}

/// Prints a journaled job's result; the exit code for its stop reason.
pub(super) fn finish(done: &conclave::journal::resume::Journaled, json: bool) -> u8 {
    use conclave::team::consensus::StopReason;
    let r = &done.result;
    if let Some(w) = &done.repaired {
        eprintln!("warning: {w}");
    }
    if let Some(e) = &done.journal_error {
        if e.contains(conclave::journal::TAKEN_OVER) {
            // Another process continues the run and owns its record; what
            // this one decided is not the run's answer.
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
        eprintln!("warning: the run was not fully journaled: {e}");
    }
    if json {
        // The result as journaled, and the run's digest beside it.
        let mut v = serde_json::to_value(r).expect("serialisable");
        v["digest"] = serde_json::json!(done.digest);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
    } else {
        if r.simulated {
            println!("note: this team uses a simulated node; its answers are not a model's");
        }
        println!("answer:     {}", r.answer.as_deref().unwrap_or("(none)"));
        let mut nodes = r.nodes.clone();
        nodes.sort();
        nodes.dedup();
        if r.synthesised {
            println!(
                "support:    synthesised by the voter from {} ballots; none of them gave this answer (nodes: {})",
                r.total,
                nodes.join(", ")
            );
        } else {
            println!(
                "support:    {} of {} ballots (nodes: {})",
                r.support,
                r.total,
                nodes.join(", ")
            );
        }
        println!("runner-up:  {}", r.runner_up.as_deref().unwrap_or("(none)"));
        for (i, c) in r.citations.iter().enumerate() {
            println!(
                "{}[{}] {}{}, bytes {}-{} (index {}, score {:.2})",
                if i == 0 {
                    "sources:    "
                } else {
                    "            "
                },
                i + 1,
                c.source,
                if c.heading.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.heading)
                },
                c.start,
                c.end,
                c.index,
                c.score
            );
        }
        println!("samples:    {}", r.samples);
        println!(
            "tokens:     {} in, {} out; cost {:.6}",
            r.tokens_in, r.tokens_out, r.cost
        );
        println!("messages:   {}", r.messages);
        println!("time:       {:.2?}", r.wall);
        println!("stop:       {}", r.stop);
        println!("run:        {} (conclave trace {})", r.run_id, r.run_id);
        if let Some(d) = &done.digest {
            println!(
                "digest:     {d} (keep it: conclave verify {} --digest {d})",
                r.run_id
            );
        }
    }
    match r.stop {
        StopReason::Decided => exit::OK,
        StopReason::NoConsensus(_) => exit::NO_CONSENSUS,
        StopReason::BudgetExhausted(_) => exit::BUDGET_EXHAUSTED,
        StopReason::Failed(_) => exit::NODE_FAILURE,
        StopReason::Cancelled(_) => exit::CANCELLED,
    }
}

/// `conclave plan`.
pub fn plan(spec: &std::path::Path, workers: Option<usize>, json: bool) -> u8 {
    let team = match conclave::spec::team::TeamSpec::load(spec) {
        Ok(t) => t,
        Err(e) => {
            report(&e);
            return exit::BAD_SPEC;
        }
    };
    let n = workers.unwrap_or(team.team.max_parallel_tasks.unwrap_or(16).min(8));
    let shape = team.dag().shape(n);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&shape).expect("serialisable")
        );
        return exit::OK;
    }
    println!("{:<28} {:>22}", "task", "longest chain from it");
    let mut order = shape.priority.clone();
    order.sort_by_key(|(_, r)| std::cmp::Reverse(*r));
    for (id, rest) in &order {
        println!("{id:<28} {rest:>22}");
    }
    println!();
    println!("tasks:             {}", shape.tasks);
    println!("critical path:     {} tasks", shape.critical_path);
    println!("parallel fraction: p = {:.2}", shape.parallel_fraction);
    let bounds: Vec<String> = shape
        .amdahl
        .iter()
        .map(|(n, b)| format!("n={n}: {b:.2}x"))
        .collect();
    println!("Amdahl bound:      {}", bounds.join(", "));
    println!("(a coordinator's plan, if any, adds subtasks at run time)");
    exit::OK
}

/// `conclave nodes ...`.
pub async fn nodes(cmd: NodesCmd) -> u8 {
    match cmd {
        NodesCmd::Check {
            spec,
            timeout,
            json,
        } => {
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
    }
}
