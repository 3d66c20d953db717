//! `conclave run` and `conclave nodes check`: asking a team, reaching its
//! nodes.

use super::{default_plugin_dir, exit, report, runtime, NodesCmd, RunArgs};

/// `conclave run`.
pub async fn ask(args: RunArgs) -> u8 {
    let RunArgs {
        spec,
        question,
        input,
        gold,
        json,
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
        match conclave::team::job::PreparedTeam::prepare(team, rt, &default_plugin_dir()).await {
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
            println!("note: this team uses a simulated node; its answers are not a model's");
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
