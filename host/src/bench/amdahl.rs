//! Scheduling on the paper's work: the nine task DAGs, task times drawn
//! from each model's measured call latencies, team sizes 1..5, the paper's
//! two policies and Conclave's, paired seeds, virtual time.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::model::latency::load_csv;
use crate::team::dag::Dag;
use crate::team::simulate::{run, Draws, Policy};

/// One cell: a latency set, a parallel fraction, a policy, a team size.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub model: String,
    pub p: f64,
    pub policy: String,
    pub n: usize,
    /// Mean makespan over the runs and the suites of this p, seconds.
    pub makespan: f64,
    /// Mean makespan at n = 1 (same policy) divided by `makespan`.
    pub speedup: f64,
    /// Amdahl's bound for this p and n.
    pub bound: f64,
    /// Model calls per run, claims and hedges included.
    pub calls: f64,
}

/// The policies compared.
pub fn policies() -> [Policy; 4] {
    [
        Policy::Preassign,
        Policy::SelfClaim,
        Policy::CriticalPath {
            hedge: false,
            max_copies: 1,
        },
        Policy::CriticalPath {
            hedge: true,
            max_copies: 3,
        },
    ]
}

/// Runs every DAG in `tasks_dir` (`*_p02.json`, ...) against each model's
/// latencies in `csv`, `runs` seeds per cell.
pub fn table(
    tasks_dir: &Path,
    csv: &Path,
    models: &[&str],
    runs: u64,
) -> Result<Vec<Cell>, String> {
    let mut dags: Vec<Dag> = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(tasks_dir)
        .map_err(|e| format!("{}: {e}", tasks_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        dags.push(Dag::load(&p).map_err(|e| e.to_string())?);
    }
    if dags.is_empty() {
        return Err(format!("{}: no task lists", tasks_dir.display()));
    }
    let mut ps: Vec<f64> = dags
        .iter()
        .map(|d| (d.parallel_fraction() * 100.0).round() / 100.0)
        .collect();
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    let mut cells = Vec::new();
    for model in models {
        let lat: Vec<f64> = load_csv(csv, model)?
            .into_iter()
            .map(|d| d.as_secs_f64())
            .collect();
        let draws = Draws::new(Arc::new(lat), 0);
        for &p in &ps {
            let group: Vec<&Dag> = dags
                .iter()
                .filter(|d| ((d.parallel_fraction() * 100.0).round() / 100.0 - p).abs() < 1e-9)
                .collect();
            for policy in policies() {
                let mut base = None;
                for n in 1..=5 {
                    let (mut total, mut calls) = (0.0, 0usize);
                    for (k, d) in group.iter().enumerate() {
                        for s in 0..runs {
                            let o = run(d, n, policy, &draws.with_seed(s * 31 + k as u64));
                            total += o.makespan;
                            calls += o.calls;
                        }
                    }
                    let count = (group.len() as u64 * runs) as f64;
                    let makespan = total / count;
                    let t1 = *base.get_or_insert(makespan);
                    cells.push(Cell {
                        model: model.to_string(),
                        p,
                        policy: policy.name().to_string(),
                        n,
                        makespan,
                        speedup: t1 / makespan,
                        bound: group[0].amdahl_bound(n),
                        calls: calls as f64 / count,
                    });
                }
            }
        }
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    //! The table on the repository's copy of the paper's data.
    use super::*;

    #[test]
    fn preassign_is_calibrated_and_ours_reaches_the_bound_at_p09() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/paper-amdahl");
        let cells = table(
            &data.join("tasks"),
            &data.join("llm_call_latencies.csv"),
            &["gpt-5.2"],
            20,
        )
        .unwrap();
        let cell = |policy: &str, p: f64, n: usize| {
            cells
                .iter()
                .find(|c| c.policy.starts_with(policy) && c.p == p && c.n == n)
                .unwrap()
                .clone()
        };
        // The paper measured 1.64x at p = 0.9, n = 5; a faithful preassign lands near it.
        let pre = cell("preassign", 0.9, 5);
        assert!((1.4..2.0).contains(&pre.speedup), "{pre:?}");
        let ours = cell("critical-path + hedging", 0.9, 5);
        assert!(ours.speedup >= 0.9 * ours.bound, "{ours:?}");
        for n in 2..=5 {
            for p in [0.2, 0.5, 0.9] {
                let ours = cell("critical-path + hedging", p, n).speedup;
                assert!(
                    ours > cell("preassign", p, n).speedup
                        && ours > cell("self-claim", p, n).speedup
                );
            }
        }
    }
}
