//! `conclave eval`: teams scored on a dataset, side by side.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::team::{cancel_on_ctrl_c, load_team, open_journal};
use super::{exit, report, runtime, EvalArgs};

/// `conclave eval`.
pub async fn eval(args: EvalArgs) -> u8 {
    let EvalArgs {
        spec,
        data,
        compare,
        limit,
        seed,
        parallel,
        out,
        json,
        store,
    } = args;
    let items = match conclave::eval::load(&data, limit) {
        Ok(i) => i,
        Err(e) => {
            report(&e);
            return exit::USAGE;
        }
    };
    let journal = match open_journal(&store) {
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
    let eval_id = conclave::eval::eval_id(&data, seed, items.len());
    let cancel = cancel_on_ctrl_c();
    let mut scores = Vec::new();
    for path in std::iter::once(&spec).chain(compare.iter()) {
        let team = match load_team(path, Some(rt.clone())).await {
            Ok(t) => t,
            Err(code) => return code,
        };
        if let Err(e) = conclave::eval::check_fit(&team, &data, &items) {
            report(&e);
            return exit::USAGE;
        }
        let name = team.spec().team.name.clone();
        let bar = if std::io::stderr().is_terminal() && !json {
            let b = indicatif::ProgressBar::new(items.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>20} [{bar:30}] {pos}/{len} items, {msg} ({eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(name.clone());
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let right = std::sync::atomic::AtomicUsize::new(0);
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let total = items.len();
        let plain = !std::io::stderr().is_terminal() && !json;
        let done = |r: &conclave::eval::ItemResult| {
            let ok = right.fetch_add(r.correct as usize, std::sync::atomic::Ordering::Relaxed)
                + r.correct as usize;
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{ok} right"));
            bar.inc(1);
            if plain && (n % 10 == 0 || n == total) {
                eprintln!("{name}: {n}/{total} items, {ok} right");
            }
        };
        let score = conclave::eval::evaluate(
            &team,
            journal.clone(),
            &eval_id,
            &items,
            parallel,
            cancel.clone(),
            &done,
        )
        .await;
        bar.finish_and_clear();
        scores.push(score);
        if cancel.is_cancelled() {
            eprintln!("interrupted: run the same command again to resume ({eval_id})");
            return exit::CANCELLED;
        }
    }
    let out = out.unwrap_or_else(|| {
        store
            .data_dir()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(conclave::journal::sqlite::default_dir)
            .join("evals")
            .join(&eval_id)
    });
    if let Err(e) = write_outputs(&out, &scores, &eval_id) {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&scores).expect("serialisable")
        );
        return exit::OK;
    }
    println!(
        "{:<26} {:>6} {:>8} {:>15} {:>7} {:>8} {:>9} {:>11} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "team",
        "items",
        "accuracy",
        "95% interval",
        "wrong",
        "abstain",
        "samples",
        "tokens",
        "cost",
        "p50",
        "p95",
        "no-cons.",
        "failed"
    );
    for s in &scores {
        let interval = format!("{:.1}–{:.1}%", 100.0 * s.ci_low, 100.0 * s.ci_high);
        println!(
            "{:<26} {:>6} {:>7.1}% {:>15} {:>6.1}% {:>7.1}% {:>9.2} {:>11.1} {:>10.6} {:>7.0}ms {:>7.0}ms {:>7.1}% {:>6.1}%",
            s.team,
            s.items,
            100.0 * s.accuracy,
            interval,
            100.0 * s.wrong_rate,
            100.0 * s.abstention_rate,
            s.samples_per_item,
            s.tokens_per_item,
            s.cost,
            s.p50_ms,
            s.p95_ms,
            100.0 * s.no_consensus_rate,
            100.0 * s.failed_rate
        );
    }
    for s in &scores {
        if let Some(failures) = s.failures() {
            println!("warning: {failures}");
        }
    }
    let resumed: usize = scores
        .iter()
        .map(|s| s.results.iter().filter(|r| r.resumed).count())
        .sum();
    if resumed > 0 {
        println!("({resumed} items read back from an earlier run of this evaluation)");
    }
    println!(
        "wrote {}/eval.json and {}/chart.svg",
        out.display(),
        out.display()
    );
    exit::OK
}

fn write_outputs(
    out: &PathBuf,
    scores: &[conclave::eval::Score],
    title: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(scores).expect("serialisable");
    let p = out.join("eval.json");
    std::fs::write(&p, json).map_err(|e| format!("{}: {e}", p.display()))?;
    let p = out.join("chart.svg");
    std::fs::write(&p, conclave::eval::chart::svg(scores, title))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(())
}
