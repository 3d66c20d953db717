//! `conclave resume`, `replay`, `runs` and `trace`: the journal's commands.

use std::path::Path;

use conclave::journal::replay::ReplayReport;

use std::path::PathBuf;

use super::team::{cancel_on_ctrl_c, cluster_workers, finish, open_journal, progress};
use super::{default_plugin_dir, exit, report, runtime};

/// `conclave resume`.
pub async fn resume(run: &str, json: bool, accept_broken_chain: bool, store: &StoreArgs) -> u8 {
    let journal = match open_journal(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    let workers = match cluster_workers(store).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    let (observer, bar) = progress(json);
    let resumed = conclave::journal::resume::resume(
        journal,
        run,
        rt,
        &default_plugin_dir(),
        observer,
        cancel_on_ctrl_c(),
        workers,
        accept_broken_chain,
    )
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match resumed {
        Ok(done) => finish(&done, json),
        Err(e) => {
            report(&e);
            exit::FAILURE
        }
    }
}

/// `conclave replay`.
pub async fn replay(
    run: Option<&str>,
    (all, team): (bool, Option<&str>),
    (voter, voter_config, synthesises): (Option<&str>, &str, bool),
    (verifier, verifier_config): (Option<&str>, &str),
    (json, accept_broken_chain): (bool, bool),
    store: &StoreArgs,
) -> u8 {
    let journal = match open_journal(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    let voter = match voter {
        None => None,
        Some(v) => {
            match conclave::journal::replay::load_voter(&rt, v, voter_config, &default_plugin_dir())
                .await
            {
                Ok(p) => Some(conclave::team::consensus::PluginUse { synthesises, ..p }),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::BAD_PLUGIN;
                }
            }
        }
    };
    let verifier = match verifier {
        None => None,
        Some(v) => {
            let loaded = conclave::journal::replay::load_verifier(
                &rt,
                v,
                verifier_config,
                &default_plugin_dir(),
            )
            .await;
            match loaded {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::BAD_PLUGIN;
                }
            }
        }
    };
    let runs: Vec<String> = match (run, all) {
        (Some(r), _) => vec![r.to_string()],
        (None, _) => match journal.runs() {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| team.is_none_or(|t| r.team == t))
                .map(|r| r.run)
                .collect(),
            Err(e) => {
                report(&e);
                return exit::FAILURE;
            }
        },
    };
    let mut reports: Vec<ReplayReport> = Vec::new();
    let mut failed = false;
    for r in &runs {
        let log = match journal.read(r) {
            Ok(l) => l,
            Err(e) => {
                report(&e);
                failed = true;
                continue;
            }
        };
        if let Some(w) = &log.damaged {
            eprintln!("warning: {w}");
        }
        if let Some(why) = &log.chain.broken {
            if !accept_broken_chain {
                eprintln!(
                    "error: run {r}: its journal's hash chain is broken ({why}); it is not replayed from records that may have been edited (`conclave verify {r}` says more; --accept-broken-chain replays anyway)"
                );
                failed = true;
                continue;
            }
            eprintln!("warning: run {r}: its journal's hash chain is broken: {why}");
        }
        match conclave::journal::replay::replay(
            &log,
            rt.clone(),
            &default_plugin_dir(),
            voter.clone(),
            verifier.clone(),
        )
        .await
        {
            Ok(rep) => reports.push(rep),
            Err(e) => {
                report(&e);
                failed = true;
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serialisable")
        );
    } else {
        for rep in &reports {
            let changed = rep.changed.len();
            println!(
                "{}: {} votes counted again, {changed} decided differently; answer {} -> {}",
                rep.run,
                rep.votes,
                rep.answer_before.as_deref().unwrap_or("(none)"),
                rep.answer_now.as_deref().unwrap_or("(none)")
            );
            for c in rep.changed.iter().take(5) {
                println!(
                    "  {} round {} ({} ballots): {} -> {}",
                    c.task, c.round, c.ballots, c.recorded, c.now
                );
            }
            for s in &rep.swapped {
                println!("  {}", swapped(s));
            }
        }
        let judged: Vec<&ReplayReport> = reports.iter().filter(|r| r.gold.is_some()).collect();
        if !judged.is_empty() {
            let before = judged
                .iter()
                .filter(|r| r.right_before == Some(true))
                .count();
            let now = judged.iter().filter(|r| r.right_now == Some(true)).count();
            println!(
                "{} runs with a gold answer: right as recorded {before} ({:.1}%), right now {now} ({:.1}%)",
                judged.len(),
                100.0 * before as f64 / judged.len() as f64,
                100.0 * now as f64 / judged.len() as f64
            );
        }
        if reports.len() > 1 {
            let votes: usize = reports.iter().map(|r| r.votes).sum();
            let changed: usize = reports.iter().map(|r| r.changed.len()).sum();
            let answers = reports
                .iter()
                .filter(|r| r.answer_before != r.answer_now)
                .count();
            println!(
                "{} runs: {votes} votes, {changed} decided differently, {answers} final answers changed",
                reports.len()
            );
        }
    }
    // Without --voter a replay is a check: any difference is a divergence.
    let diverged =
        voter.is_none() && verifier.is_none() && reports.iter().any(|r| !r.changed.is_empty());
    if diverged {
        if let Some(r) = reports.iter().find(|r| !r.changed.is_empty()) {
            let c = &r.changed[0];
            eprintln!(
                "error: run {} diverges from its journal at task {} round {}: recorded {:?}, now {:?}",
                r.run, c.task, c.round, c.recorded, c.now
            );
            for s in &r.swapped {
                eprintln!("  because {}", swapped(s));
            }
        }
        return exit::FAILURE;
    }
    if voter.is_none() {
        if let Some(r) = reports.iter().find(|r| !r.swapped.is_empty()) {
            eprintln!(
                "warning: run {}: {}; the decisions came out the same",
                r.run,
                swapped(&r.swapped[0])
            );
        }
    }
    if failed {
        exit::FAILURE
    } else {
        exit::OK
    }
}

/// A voter whose file changed since the run, in one line.
fn swapped(s: &conclave::journal::replay::Swapped) -> String {
    use conclave::journal::trace::short_hash;
    format!(
        "voter {} is not the component that counted {} of these votes: the journal names sha256 {}, the file loaded now is {} (the plugin changed since the run)",
        s.voter,
        s.votes,
        short_hash(&s.recorded),
        short_hash(&s.loaded)
    )
}

/// The journal of `store` and its runs, or the exit code after saying
/// why they could not be read.
fn journal_runs(
    store: &StoreArgs,
) -> Result<
    (
        std::sync::Arc<dyn conclave::journal::Journal>,
        Vec<conclave::journal::RunRow>,
    ),
    u8,
> {
    let journal = open_journal(store)?;
    match journal.runs() {
        Ok(rows) => Ok((journal, rows)),
        Err(e) => {
            report(&e);
            Err(exit::FAILURE)
        }
    }
}

/// `conclave runs`.
pub fn runs(json: bool, store: &StoreArgs) -> u8 {
    let (_, rows) = match journal_runs(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialisable")
        );
        return exit::OK;
    }
    println!(
        "{:<28} {:<24} {:<20} {:>10} {:>8} {:>10}  stop",
        "run", "team", "started (UTC)", "duration", "tokens", "cost"
    );
    for r in rows {
        let started = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.started_ms),
        )
        .to_string();
        let duration = r
            .ended_ms
            .map(|e| format!("{:.2}s", e.saturating_sub(r.started_ms) as f64 / 1e3))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:<24} {:<20} {:>10} {:>8} {:>10.6}  {}",
            r.run,
            r.team,
            started.trim_end_matches('Z').replace('T', " "),
            duration,
            r.tokens,
            r.cost,
            r.stop
                .as_deref()
                .unwrap_or("did not end (conclave resume RUN)")
        );
    }
    exit::OK
}

/// A run's records from the journal `store` names, or the exit code after
/// saying why not.
fn read_run(run: &str, store: &StoreArgs) -> Result<conclave::journal::RunLog, u8> {
    let journal = open_journal(store)?;
    journal.read(run).map_err(|e| {
        report(&e);
        exit::FAILURE
    })
}

/// `conclave verify`.
pub fn verify(run: &str, digest: Option<&str>, json: bool, store: &StoreArgs) -> u8 {
    let log = match read_run(run, store) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let chain = &log.chain;
    let records = log.records.len() as u64;
    let kept = digest.map(|d| chain.record_of(d));
    let ok = chain.intact() && log.damaged.is_none() && kept.is_none_or(|k| k.is_some());
    if json {
        let v = serde_json::json!({
            "run": run,
            "records": records,
            "ok": ok,
            "chain": chain,
            "damaged": log.damaged,
            "digest_given": digest,
            "digest_record": kept.flatten(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
    } else {
        println!("run {run}: {records} records");
        println!("chain:   {}", chain.summary());
        if let Some(d) = &log.damaged {
            println!("damaged: {d}");
        }
        match (digest, kept.flatten()) {
            (None, _) => {}
            (Some(_), Some(seq)) if seq + 1 == records => println!(
                "digest:  matches record {seq}, the run's last: the journal holds what the run did when that digest was given"
            ),
            (Some(_), Some(seq)) => println!(
                "digest:  matches record {seq} of {records}: the journal holds what the run did up to then; {} records came after",
                records - seq - 1
            ),
            (Some(d), None) => println!(
                "digest:  {d} is the link of none of the run's verified records: the run's records are not the ones that digest was given for (rewritten, or cut before it)"
            ),
        }
    }
    if ok {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// `conclave trace`.
pub fn trace(run: &str, json: bool, html: Option<&Path>, store: &StoreArgs) -> u8 {
    let log = match read_run(run, store) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Some(w) = &log.damaged {
        eprintln!("warning: {w}");
    }
    if let Some(why) = &log.chain.broken {
        eprintln!(
            "warning: run {run}: its journal's hash chain is broken, so what follows may have been edited: {why}"
        );
    }
    let t = conclave::journal::trace::trace(&log);
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, conclave::journal::trace::html(&t)) {
            eprintln!("error: {}: {e}", path.display());
            return exit::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&t).expect("serialisable")
        );
        return exit::OK;
    }
    for line in &t.timeline {
        println!("{line}");
    }
    println!();
    println!(
        "run {} of team {:?}: answer {}, {}; {:.2}s, {} messages{}",
        t.run,
        t.team,
        t.answer.as_deref().unwrap_or("(none)"),
        t.stop.as_deref().unwrap_or("did not end"),
        t.wall_ms as f64 / 1e3,
        t.messages,
        if t.resumed > 0 {
            format!(", resumed {} times", t.resumed)
        } else {
            String::new()
        }
    );
    println!("journal chain: {}", t.chain.summary());
    println!(
        "{:<16} {:>6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>10}",
        "node", "calls", "journal", "failures", "cancelled", "p50 ms", "p95 ms", "tokens", "cost"
    );
    for n in &t.nodes {
        println!(
            "{:<16} {:>6} {:>9} {:>9} {:>9} {:>10.1} {:>10.1} {:>8} {:>10.6}",
            n.node,
            n.calls,
            n.replayed,
            n.failures,
            n.cancelled,
            n.p50_ms,
            n.p95_ms,
            n.tokens,
            n.cost
        );
    }
    if !t.plugins.is_empty() {
        println!(
            "{:<24} {:<14} {:>6} {:>9}",
            "plugin", "sha256", "calls", "failures"
        );
        for p in &t.plugins {
            println!(
                "{:<24} {:<14} {:>6} {:>9}",
                p.plugin,
                conclave::journal::trace::short_hash(&p.hash),
                p.calls,
                p.failures
            );
        }
    }
    println!(
        "{:<24} {:>8} {:>9} {:>7} {:>14}  stop",
        "task", "samples", "support", "rounds", "straggler ms"
    );
    for x in &t.tasks {
        let support = if x.synthesised {
            format!("synth/{}", x.total)
        } else {
            format!("{} of {}", x.support, x.total)
        };
        println!(
            "{:<24} {:>8} {:>9} {:>6} {:>14.1}  {}",
            x.task, x.samples, support, x.rounds, x.straggler_gap_ms, x.stop
        );
    }
    println!("critical path: {}", t.critical_path.join(" -> "));
    exit::OK
}

/// `config` (a voter's JSON config) with the node weights of a
/// `conclave calibrate` file added as `weights`.
pub fn with_weights(config: &str, weights: Option<&Path>) -> Result<String, u8> {
    let Some(path) = weights else {
        return Ok(config.to_string());
    };
    let w = match conclave::team::calibrate::Weights::read(path) {
        Ok(w) => w,
        Err(e) => {
            report(&e);
            return Err(exit::USAGE);
        }
    };
    let mut value: serde_json::Value = match serde_json::from_str(config) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            eprintln!("error: --voter-config must be a JSON object to add --weights to");
            return Err(exit::USAGE);
        }
    };
    value["weights"] = serde_json::json!(w.by_node());
    Ok(value.to_string())
}

/// `conclave calibrate`: node weights learned from the ballots of past runs
/// (of one team, or all), written to `out`.
pub fn calibrate(team: Option<&str>, out: &Path, json: bool, store: &StoreArgs) -> u8 {
    use conclave::team::calibrate;
    let (journal, rows) = match journal_runs(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let runs: Vec<_> = rows
        .iter()
        .filter(|r| team.is_none_or(|t| r.team == t))
        .collect();
    if runs.is_empty() {
        eprintln!(
            "error: no journaled run{} to learn from",
            team.map(|t| format!(" of team `{t}`")).unwrap_or_default()
        );
        return exit::FAILURE;
    }
    let mut items = Vec::new();
    for r in &runs {
        match journal.read(&r.run) {
            Ok(log) => items.extend(calibrate::items(&log)),
            Err(e) => {
                report(&e);
                return exit::FAILURE;
            }
        }
    }
    let weights = match calibrate::estimate(&items) {
        Ok(w) => w,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    let note = format!(
        "{} votes from {} runs{}.",
        weights.items,
        runs.len(),
        team.map(|t| format!(" of team \"{t}\""))
            .unwrap_or_default()
    );
    if let Err(e) = weights.write(out, &note) {
        report(&e);
        return exit::FAILURE;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&weights).expect("serialisable")
        );
        return exit::OK;
    }
    println!("learned from {note}");
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>8}",
        "node", "ballots", "accuracy", "gold", "weight"
    );
    for (node, w) in &weights.nodes {
        let gold = w
            .gold_accuracy
            .map(|g| format!("{:.3}", g))
            .unwrap_or_else(|| "-".into());
        println!(
            "{node:<24} {:>8} {:>10.3} {gold:>10} {:>8.3}",
            w.ballots, w.accuracy, w.weight
        );
    }
    println!(
        "accuracy: estimated from agreement alone; gold: measured where a run had a gold answer (not used to learn)"
    );
    println!("wrote {}", out.display());
    exit::OK
}

/// Where runs are journaled: a data directory on this machine, or a
/// cluster's stream on NATS JetStream.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct StoreArgs {
    /// Where runs are journaled (default: `conclave` in the user's data
    /// directory).
    #[arg(long, env = "CONCLAVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Journal on a NATS JetStream server instead (`nats://HOST:PORT`):
    /// runs recorded on any host are listed, traced, replayed and resumed
    /// from any other. The server must sync every write (`jetstream {
    /// sync_interval: always }`; scripts/nats.conf).
    #[arg(long, alias = "nats", env = "CONCLAVE_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// Names the cluster's stream and bucket on the server, so that
    /// several clusters can share one.
    #[arg(long, env = "CONCLAVE_CLUSTER_NAME", default_value = conclave::journal::jetstream::DEFAULT_NAME)]
    pub(crate) cluster_name: String,
    /// The server's monitoring endpoint, read to check its sync setting
    /// (default: port 8222 of the --cluster host).
    #[arg(long, env = "CONCLAVE_CLUSTER_MONITOR", value_name = "URL")]
    cluster_monitor: Option<String>,
    /// A credentials file (user JWT and NKey seed, as `nsc` writes it) for
    /// a NATS server in operator mode.
    #[arg(long, env = "CONCLAVE_CLUSTER_CREDS", value_name = "FILE")]
    cluster_creds: Option<PathBuf>,
    /// A file holding the NKey seed (`SU...`) of a user the NATS server
    /// lists by its public key.
    #[arg(long, env = "CONCLAVE_CLUSTER_NKEY", value_name = "FILE")]
    cluster_nkey: Option<PathBuf>,
    /// A user of the NATS server; its password is read from
    /// CONCLAVE_CLUSTER_PASSWORD.
    #[arg(long, env = "CONCLAVE_CLUSTER_USER", value_name = "USER")]
    cluster_user: Option<String>,
    /// The NATS user's password. Give it in the environment: a value on
    /// the command line is visible to every user of the machine.
    #[arg(
        long,
        env = "CONCLAVE_CLUSTER_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    cluster_password: Option<String>,
    /// A token the NATS server requires. Give it in the environment, as
    /// with the password.
    #[arg(
        long,
        env = "CONCLAVE_CLUSTER_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    cluster_token: Option<String>,
    /// The CA (PEM) that signed the NATS server's certificate: the
    /// connection must then be TLS, and the server's certificate is checked
    /// against it.
    #[arg(long, env = "CONCLAVE_CLUSTER_CA", value_name = "FILE")]
    cluster_ca: Option<PathBuf>,
    /// A client certificate (PEM) for a NATS server that verifies its
    /// clients' (with --cluster-key).
    #[arg(
        long,
        env = "CONCLAVE_CLUSTER_CERT",
        value_name = "FILE",
        requires = "cluster_key"
    )]
    cluster_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "CONCLAVE_CLUSTER_KEY",
        value_name = "FILE",
        requires = "cluster_cert"
    )]
    cluster_key: Option<PathBuf>,
}

impl StoreArgs {
    /// The data directory, if one was named.
    pub(crate) fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// The cluster, if one was named.
    pub(crate) fn cluster(&self) -> Option<conclave::journal::jetstream::ClusterConfig> {
        self.cluster
            .as_ref()
            .map(|url| conclave::journal::jetstream::ClusterConfig {
                url: url.clone(),
                name: self.cluster_name.clone(),
                monitor: self.cluster_monitor.clone(),
                replicas: 1,
                auth: conclave::journal::jetstream::ClusterAuth {
                    creds: self.cluster_creds.clone(),
                    nkey_seed: self.cluster_nkey.clone(),
                    user: self.cluster_user.clone(),
                    password: self.cluster_password.clone(),
                    token: self.cluster_token.clone(),
                    ca: self.cluster_ca.clone(),
                    cert: self.cluster_cert.clone(),
                    key: self.cluster_key.clone(),
                },
            })
    }
}
