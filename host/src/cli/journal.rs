//! `conclave resume`, `replay`, `runs` and `trace`: the journal's commands.

use std::path::Path;

use conclave::journal::replay::ReplayReport;

use super::team::{cancel_on_ctrl_c, finish, open_journal, progress};
use super::{default_plugin_dir, exit, report, runtime};

/// `conclave resume`.
pub async fn resume(run: &str, json: bool, data_dir: Option<&Path>) -> u8 {
    let journal = match open_journal(data_dir) {
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
    let (observer, bar) = progress(json);
    let resumed = conclave::journal::resume::resume(
        journal,
        run,
        rt,
        &default_plugin_dir(),
        observer,
        cancel_on_ctrl_c(),
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
    all: bool,
    (voter, voter_config): (Option<&str>, &str),
    (verifier, verifier_config): (Option<&str>, &str),
    json: bool,
    data_dir: Option<&Path>,
) -> u8 {
    let journal = match open_journal(data_dir) {
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
                Ok(p) => Some(p),
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
            Ok(rows) => rows.into_iter().map(|r| r.run).collect(),
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

/// `conclave runs`.
pub fn runs(json: bool, data_dir: Option<&Path>) -> u8 {
    let journal = match open_journal(data_dir) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let rows = match journal.runs() {
        Ok(r) => r,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
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

/// `conclave trace`.
pub fn trace(run: &str, json: bool, html: Option<&Path>, data_dir: Option<&Path>) -> u8 {
    let journal = match open_journal(data_dir) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let log = match journal.read(run) {
        Ok(l) => l,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    if let Some(w) = &log.damaged {
        eprintln!("warning: {w}");
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
        println!(
            "{:<24} {:>8} {:>5} of {:<2} {:>6} {:>14.1}  {}",
            x.task, x.samples, x.support, x.total, x.rounds, x.straggler_gap_ms, x.stop
        );
    }
    println!("critical path: {}", t.critical_path.join(" -> "));
    exit::OK
}
