//! Traces: what a journaled run did, where its time and tokens went. A
//! summary per node (calls, failures, p50/p95 latency, tokens, cost), per
//! plugin version (the SHA-256 of the component that served its calls,
//! so a hot swap mid-run shows as two rows) and per task (samples,
//! support, rounds, straggler gap), the bus messages,
//! the critical path as it happened, a readable timeline, and a
//! self-contained HTML page with a Gantt chart of nodes × time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Entry, RunLog};
use crate::team::events::{AttemptEnd, Event, Served};

/// One version of one plugin's share of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PluginRow {
    /// The team's name for the plugin.
    pub plugin: String,
    /// SHA-256 of the component that served these calls.
    pub hash: String,
    /// Calls it served (failed ones included).
    pub calls: u32,
    pub failures: u32,
}

/// The first 12 hex digits of a hash: enough to tell versions apart.
pub fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A node's share of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub calls: u32,
    /// Calls answered from the journal on resume (not made again).
    pub replayed: u32,
    /// Failed attempts on this node (each retry the router made counts);
    /// in journals written before attempts were recorded, failed calls.
    pub failures: u32,
    /// Hedges on this node cancelled when the other request answered.
    pub cancelled: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub tokens: u64,
    pub cost: f64,
}

/// A task's share of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskRow {
    pub task: String,
    pub stop: String,
    pub answer: Option<String>,
    pub samples: u32,
    pub support: u32,
    pub total: u32,
    /// The voter synthesised the answer: none of the ballots gave it.
    pub synthesised: bool,
    pub rounds: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Slowest replica's model time minus the mean: what waiting for the
    /// last replica cost.
    pub straggler_gap_ms: f64,
    pub depends_on: Vec<String>,
}

/// One model call on the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub node: String,
    pub task: String,
    pub replica: u32,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A run, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub run: String,
    pub team: String,
    pub question: String,
    pub answer: Option<String>,
    pub stop: Option<String>,
    pub started_ms: u64,
    pub wall_ms: u64,
    pub nodes: Vec<NodeRow>,
    /// Per plugin and component hash, in the order first seen (empty for
    /// journals written before hashes were recorded).
    pub plugins: Vec<PluginRow>,
    pub tasks: Vec<TaskRow>,
    pub messages: u32,
    pub resumed: u32,
    /// Task ids from the first to the answer task along the dependencies
    /// that ended last: what set the run's length.
    pub critical_path: Vec<String>,
    pub calls: Vec<Call>,
    /// A line per event, with its time from the start.
    pub timeline: Vec<String>,
    /// Damage found in the journal, if any.
    pub damaged: Option<String>,
    /// What the records' hash chain says, and the run's digest.
    pub chain: crate::journal::chain::ChainReport,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Summarises `log`.
pub fn trace(log: &RunLog) -> Trace {
    let run = log
        .records
        .first()
        .map(|r| r.run.clone())
        .unwrap_or_default();
    let started = log.records.first().map(|r| r.at_ms).unwrap_or(0);
    let ended = log.records.last().map(|r| r.at_ms).unwrap_or(started);
    let (team, question) = log
        .submitted()
        .map(|(t, _, _, q, _)| (t.to_string(), q.to_string()))
        .unwrap_or_default();
    let mut nodes: BTreeMap<String, (NodeRow, Vec<f64>)> = BTreeMap::new();
    let mut tasks: Vec<TaskRow> = Vec::new();
    let mut replica_time: BTreeMap<(String, u32), f64> = BTreeMap::new();
    let mut calls = Vec::new();
    let mut timeline = Vec::new();
    let (mut messages, mut resumed) = (0u32, 0u32);
    let mut plugins: Vec<PluginRow> = Vec::new();
    // A failed call's attempts are journaled one by one; its closing
    // `failure` counts against a node only in journals that predate them.
    let attempts_recorded = log.records.iter().any(|r| {
        matches!(
            &r.entry,
            Entry::Event {
                event: Event::Attempt { .. }
            }
        )
    });
    let mut served = |by: &Served, failed: bool| {
        let i = match plugins
            .iter()
            .position(|p| p.plugin == by.plugin && p.hash == by.hash)
        {
            Some(i) => i,
            None => {
                plugins.push(PluginRow {
                    plugin: by.plugin.clone(),
                    hash: by.hash.clone(),
                    ..Default::default()
                });
                plugins.len() - 1
            }
        };
        plugins[i].calls += 1;
        plugins[i].failures += failed as u32;
    };
    let task_row = |tasks: &mut Vec<TaskRow>, id: &str| -> usize {
        match tasks.iter().position(|t| t.task == id) {
            Some(i) => i,
            None => {
                tasks.push(TaskRow {
                    task: id.to_string(),
                    ..Default::default()
                });
                tasks.len() - 1
            }
        }
    };
    for r in &log.records {
        let t = r.at_ms.saturating_sub(started);
        let line = match &r.entry {
            Entry::JobSubmitted { team, question, .. } => {
                format!("submitted to team {team:?}: {question:?}")
            }
            Entry::Resumed { after } => {
                resumed += 1;
                format!("resumed after record {after}")
            }
            Entry::JobEnded { result } => format!(
                "ended: {} (answer {})",
                result.stop,
                result.answer.as_deref().unwrap_or("none")
            ),
            Entry::Event { event } => match event {
                Event::TaskStarted {
                    task, depends_on, ..
                } => {
                    let i = task_row(&mut tasks, task);
                    tasks[i].start_ms = t;
                    tasks[i].depends_on = depends_on.clone();
                    format!("task {task} started")
                }
                Event::Retrieved {
                    task,
                    index,
                    passages,
                } => {
                    let cited: Vec<String> = passages
                        .iter()
                        .map(|p| format!("{} bytes {}-{}", p.source, p.start, p.end))
                        .collect();
                    format!(
                        "task {task}: {} passages from index {index}: {}",
                        passages.len(),
                        cited.join("; ")
                    )
                }
                Event::ModelCall {
                    task,
                    replica,
                    node,
                    tokens_in,
                    tokens_out,
                    cost,
                    latency_ms,
                    replayed,
                    ..
                } => {
                    let (row, lat) = nodes.entry(node.clone()).or_default();
                    row.node = node.clone();
                    row.calls += 1;
                    row.replayed += *replayed as u32;
                    row.tokens += u64::from(*tokens_in) + u64::from(*tokens_out);
                    row.cost += cost;
                    if !replayed {
                        lat.push(*latency_ms);
                        *replica_time.entry((task.clone(), *replica)).or_default() += latency_ms;
                        calls.push(Call {
                            node: node.clone(),
                            task: task.clone(),
                            replica: *replica,
                            start_ms: t.saturating_sub(latency_ms.round() as u64),
                            end_ms: t,
                        });
                    }
                    format!(
                        "  {task}/{replica} on {node}: {tokens_in}+{tokens_out} tokens, {latency_ms:.1} ms{}",
                        if *replayed { " (from the journal)" } else { "" }
                    )
                }
                Event::Ballot {
                    task,
                    round,
                    ballot,
                    role,
                    verifiers,
                } => {
                    for by in role.iter().chain(verifiers) {
                        served(by, false);
                    }
                    format!(
                        "  {task}/{} round {round}: answer {:?}{}",
                        ballot.replica,
                        ballot.answer,
                        if ballot.verdicts.iter().all(|v| v.1) {
                            ""
                        } else {
                            " (failed a verifier)"
                        }
                    )
                }
                Event::Attempt {
                    task,
                    replica,
                    call,
                    node,
                    outcome,
                    cause,
                    latency_ms,
                } => {
                    let (row, _) = nodes.entry(node.clone()).or_default();
                    row.node = node.clone();
                    match outcome {
                        AttemptEnd::Failed => row.failures += 1,
                        AttemptEnd::Cancelled => row.cancelled += 1,
                    }
                    let what = match outcome {
                        AttemptEnd::Failed => "failed",
                        AttemptEnd::Cancelled => "cancelled (hedge lost)",
                    };
                    format!(
                        "  {task}/{replica} call {call} on {node}: {what} after {latency_ms:.1} ms{}",
                        cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
                    )
                }
                Event::Failure { task, what, node } => {
                    if let Some(n) = node.as_ref().filter(|_| !attempts_recorded) {
                        let (row, _) = nodes.entry(n.clone()).or_default();
                        row.node = n.clone();
                        row.failures += 1;
                    }
                    format!("  {task}: failure: {what}")
                }
                Event::PluginFailure { task, what, by } => {
                    served(by, true);
                    format!(
                        "  {task}: failure: {what} ({} {})",
                        by.plugin,
                        short_hash(&by.hash)
                    )
                }
                Event::Retry { task, replica } => format!("  {task}/{replica}: drawn again"),
                Event::Message { from, to, kind } => {
                    messages += 1;
                    format!("  message {kind} {from} -> {to}")
                }
                Event::Vote {
                    task,
                    round,
                    ballots,
                    voter,
                    decision,
                    hash,
                    ..
                } => {
                    let version = match hash {
                        Some(h) => {
                            served(
                                &Served {
                                    plugin: voter.clone(),
                                    hash: h.clone(),
                                },
                                false,
                            );
                            format!(" {}", short_hash(h))
                        }
                        None => String::new(),
                    };
                    format!(
                        "  {task} round {round}: {voter}{version} on {ballots} ballots: {decision}"
                    )
                }
                Event::Planned {
                    task,
                    subtasks,
                    role,
                } => {
                    if let Some(by) = role {
                        served(by, false);
                    }
                    format!("  {task} planned {}", subtasks.join(", "))
                }
                Event::ReplicaCancelled {
                    task,
                    round,
                    replica,
                    reason,
                    tokens,
                    ..
                } => format!(
                    "  {task}/{replica} round {round}: cancelled ({reason}); {tokens} tokens spent"
                ),
                Event::ReplicaWorked {
                    task,
                    round,
                    replica,
                    worker,
                    attempt,
                    ms,
                } => format!(
                    "  {task}/{replica} round {round}: ran on worker {worker} (delivery {attempt}) in {ms:.0} ms"
                ),
                Event::ReplicaHedged {
                    task,
                    replica,
                    copy,
                    after_ms,
                    ..
                } => format!(
                    "  {task}/{replica}: hedged by replica {copy} after {:.0} ms",
                    after_ms
                ),
                Event::TaskHedged {
                    task,
                    copy,
                    after_ms,
                } => format!("task {task}: copy {copy} started after {after_ms:.0} ms"),
                Event::TaskCopyCancelled { task, copy, winner } => {
                    format!("task {task}: copy {copy} cancelled, copy {winner} finished first")
                }
                Event::TaskEnded { task, result } => {
                    let i = task_row(&mut tasks, task);
                    let row = &mut tasks[i];
                    row.end_ms = t;
                    row.stop = result.stop.to_string();
                    row.answer = result.answer.clone();
                    row.samples = result.samples;
                    row.support = result.support;
                    row.total = result.total;
                    row.synthesised = result.synthesised;
                    row.rounds = result.rounds;
                    if result.synthesised {
                        format!(
                            "task {task} ended: {} (the voter synthesised the answer; none of the {} ballots gave it)",
                            result.stop, result.total
                        )
                    } else {
                        format!("task {task} ended: {}", result.stop)
                    }
                }
            },
        };
        timeline.push(format!("{:>8.3}s  {line}", t as f64 / 1e3));
    }
    for row in &mut tasks {
        let times: Vec<f64> = replica_time
            .iter()
            .filter(|((task, _), _)| *task == row.task)
            .map(|(_, v)| *v)
            .collect();
        if !times.is_empty() {
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let max = times.iter().cloned().fold(f64::MIN, f64::max);
            row.straggler_gap_ms = max - mean;
        }
    }
    let nodes = nodes
        .into_values()
        .map(|(mut row, mut lat)| {
            lat.sort_by(f64::total_cmp);
            row.p50_ms = quantile(&lat, 0.5);
            row.p95_ms = quantile(&lat, 0.95);
            row
        })
        .collect();
    let result = log.ended();
    // Back from the task that ended last, through the dependency that
    // ended last.
    let mut critical_path = Vec::new();
    let mut at = tasks
        .iter()
        .max_by_key(|t| t.end_ms)
        .map(|t| t.task.clone());
    while let Some(id) = at {
        let row = tasks.iter().find(|t| t.task == id);
        critical_path.push(id.clone());
        at = row.and_then(|r| {
            r.depends_on
                .iter()
                .filter_map(|d| tasks.iter().find(|t| &t.task == d))
                .max_by_key(|t| t.end_ms)
                .map(|t| t.task.clone())
        });
        if critical_path.len() > tasks.len() {
            break;
        }
    }
    critical_path.reverse();
    Trace {
        run,
        team,
        question,
        answer: result.and_then(|r| r.answer.clone()),
        stop: result.map(|r| r.stop.to_string()),
        started_ms: started,
        wall_ms: ended.saturating_sub(started),
        nodes,
        plugins,
        tasks,
        messages,
        resumed,
        critical_path,
        calls,
        timeline,
        damaged: log.damaged.clone(),
        chain: log.chain.clone(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: the summary, a Gantt chart of model calls
/// (one row per node, one colour per task), and each task's vote.
pub fn html(t: &Trace) -> String {
    let mut names: Vec<&str> = t.nodes.iter().map(|n| n.node.as_str()).collect();
    names.dedup();
    let span = t.calls.iter().map(|c| c.end_ms).max().unwrap_or(1).max(1) as f64;
    let (left, width, row_h) = (140.0, 860.0, 28.0);
    let height = row_h * names.len().max(1) as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">",
        left + width + 20.0
    );
    let task_ids: Vec<&str> = t.tasks.iter().map(|x| x.task.as_str()).collect();
    for (i, n) in names.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let _ = write!(svg, "<text x=\"4\" y=\"{}\">{}</text>", y + 17.0, esc(n));
        for c in t.calls.iter().filter(|c| c.node == *n) {
            let x = left + c.start_ms as f64 / span * width;
            let w = ((c.end_ms - c.start_ms) as f64 / span * width).max(1.0);
            let k = task_ids.iter().position(|id| *id == c.task).unwrap_or(0);
            let hue = (k * 67) % 360;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"hsl({hue},60%,60%)\"><title>{}/{} on {}: {} ms</title></rect>",
                row_h - 6.0,
                esc(&c.task),
                c.replica,
                esc(n),
                c.end_ms - c.start_ms
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\">0 ms</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{span} ms</text></svg>",
        height - 6.0,
        left + width,
        height - 6.0
    );
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Conclave run {run}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>\
         </head><body><h1>Run {run}</h1><p>Team <b>{team}</b>: {q}</p>\
         <p>Answer: <b>{answer}</b> &middot; stop: {stop} &middot; {wall} ms &middot; {messages} messages &middot; critical path: {path}</p>\
         <p>Journal chain: {chain}</p>",
        run = esc(&t.run),
        team = esc(&t.team),
        q = esc(&t.question),
        answer = esc(t.answer.as_deref().unwrap_or("none")),
        stop = esc(t.stop.as_deref().unwrap_or("did not end")),
        wall = t.wall_ms,
        messages = t.messages,
        path = esc(&t.critical_path.join(" → ")),
        chain = esc(&t.chain.summary()),
    );
    let _ = write!(page, "<h2>Nodes × time</h2>{svg}<h2>Nodes</h2><table><tr><th>node</th><th>calls</th><th>failures</th><th>p50 ms</th><th>p95 ms</th><th>tokens</th><th>cost</th></tr>");
    for n in &t.nodes {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.6}</td></tr>",
            esc(&n.node), n.calls, n.failures, n.p50_ms, n.p95_ms, n.tokens, n.cost
        );
    }
    let _ = write!(page, "</table><h2>Plugins</h2><table><tr><th>plugin</th><th>sha256</th><th>calls</th><th>failures</th></tr>");
    for p in &t.plugins {
        let _ = write!(
            page,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&p.plugin),
            esc(&p.hash),
            p.calls,
            p.failures
        );
    }
    let _ = write!(page, "</table><h2>Tasks and votes</h2><table><tr><th>task</th><th>stop</th><th>answer</th><th>support</th><th>samples</th><th>rounds</th><th>straggler gap ms</th></tr>");
    for x in &t.tasks {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            esc(&x.task),
            esc(&x.stop),
            esc(x.answer.as_deref().unwrap_or("")),
            if x.synthesised {
                format!("synthesised from {}", x.total)
            } else {
                format!("{} of {}", x.support, x.total)
            },
            x.samples,
            x.rounds,
            x.straggler_gap_ms
        );
    }
    page.push_str("</table></body></html>\n");
    page
}
