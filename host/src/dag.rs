//! Task DAGs: tasks with dependencies, read from the paper's task-list JSON
//! (`{"tasks": [{"id", "title", "description", "dependencies"}]}`), checked
//! (unique ids, known dependencies, no cycles), with the numbers that bound
//! how fast a team can go: the critical path, the parallel fraction p and
//! Amdahl's bound for n workers.
//!
//! It sits at the crate's root, not in [`crate::team`], because a team spec
//! (its `[dag]` table) and `conclave plan` read it without the runtime.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One task of a DAG.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DagTask {
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// What bounds a team on a DAG.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Shape {
    pub tasks: usize,
    /// Tasks on the longest chain.
    pub critical_path: usize,
    /// p = (tasks − critical path) / tasks.
    pub parallel_fraction: f64,
    /// Amdahl's bound on speed-up for n workers: (n, bound).
    pub amdahl: Vec<(usize, f64)>,
    /// Each task (topological order) with the tasks on the longest chain
    /// from it: the scheduler's priority.
    pub priority: Vec<(String, usize)>,
}

#[derive(Deserialize)]
struct TaskList {
    tasks: Vec<DagTask>,
}

/// A checked DAG. Tasks are kept in a topological order; `deps[i]` are the
/// indices of task `i`'s dependencies.
#[derive(Clone, Debug)]
pub struct Dag {
    pub tasks: Vec<DagTask>,
    pub deps: Vec<Vec<usize>>,
}

/// Why a task list was refused.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("task {0:?} appears twice")]
    Duplicate(String),
    #[error("task {task:?} depends on unknown task {dep:?}")]
    Unknown { task: String, dep: String },
    #[error("the dependencies of tasks {0:?} form a cycle")]
    Cycle(Vec<String>),
    #[error("the task list is empty")]
    Empty,
}

impl Dag {
    /// Reads a task-list JSON file.
    pub fn load(path: &Path) -> Result<Self, DagError> {
        let read = |reason: String| DagError::Read {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let list: TaskList = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
        Self::new(list.tasks)
    }

    /// Checks `tasks` and orders them topologically (stable: among ready
    /// tasks, the input order).
    pub fn new(tasks: Vec<DagTask>) -> Result<Self, DagError> {
        if tasks.is_empty() {
            return Err(DagError::Empty);
        }
        let mut index = BTreeMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if index.insert(t.id.clone(), i).is_some() {
                return Err(DagError::Duplicate(t.id.clone()));
            }
        }
        for t in &tasks {
            if let Some(d) = t.dependencies.iter().find(|d| !index.contains_key(*d)) {
                return Err(DagError::Unknown {
                    task: t.id.clone(),
                    dep: d.clone(),
                });
            }
        }
        let mut order = Vec::with_capacity(tasks.len());
        let mut placed = vec![false; tasks.len()];
        while order.len() < tasks.len() {
            let before = order.len();
            for (i, t) in tasks.iter().enumerate() {
                if !placed[i] && t.dependencies.iter().all(|d| placed[index[d]]) {
                    placed[i] = true;
                    order.push(i);
                }
            }
            if order.len() == before {
                let stuck = tasks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !placed[*i])
                    .map(|(_, t)| t.id.clone())
                    .collect();
                return Err(DagError::Cycle(stuck));
            }
        }
        let sorted: Vec<DagTask> = order.iter().map(|i| tasks[*i].clone()).collect();
        let pos: BTreeMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        let deps = sorted
            .iter()
            .map(|t| t.dependencies.iter().map(|d| pos[d.as_str()]).collect())
            .collect();
        Ok(Dag {
            tasks: sorted,
            deps,
        })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are no tasks (never true for a checked DAG).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// For each task, the number of tasks on the longest path from it to
    /// the end, itself included (its priority under critical-path
    /// scheduling).
    pub fn remaining_path(&self) -> Vec<usize> {
        let n = self.len();
        let mut rest = vec![1usize; n];
        for i in (0..n).rev() {
            for (j, deps) in self.deps.iter().enumerate() {
                if deps.contains(&i) {
                    rest[i] = rest[i].max(1 + rest[j]);
                }
            }
        }
        rest
    }

    /// Tasks on the longest dependency chain.
    pub fn critical_path(&self) -> usize {
        self.remaining_path().into_iter().max().unwrap_or(0)
    }

    /// The parallel fraction, (tasks − critical path) / tasks.
    pub fn parallel_fraction(&self) -> f64 {
        (self.len() - self.critical_path()) as f64 / self.len() as f64
    }

    /// Amdahl's bound on speed-up with `n` workers: 1 / ((1 − p) + p / n).
    pub fn amdahl_bound(&self, n: usize) -> f64 {
        let p = self.parallel_fraction();
        1.0 / ((1.0 - p) + p / n.max(1) as f64)
    }

    /// The numbers that bound a team on this DAG, for teams of 1 to
    /// `up_to` workers.
    pub fn shape(&self, up_to: usize) -> Shape {
        let rest = self.remaining_path();
        Shape {
            tasks: self.len(),
            critical_path: self.critical_path(),
            parallel_fraction: self.parallel_fraction(),
            amdahl: (1..=up_to.max(1))
                .map(|n| (n, self.amdahl_bound(n)))
                .collect(),
            priority: self
                .tasks
                .iter()
                .zip(rest)
                .map(|(t, r)| (t.id.clone(), r))
                .collect(),
        }
    }

    /// Weakly connected groups of tasks that depend on each other, in
    /// topological order, as the paper's pre-assignment keeps each chain on
    /// one agent. Single independent tasks are groups of one.
    pub fn components(&self) -> Vec<Vec<usize>> {
        let n = self.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], i: usize) -> usize {
            let mut r = i;
            while p[r] != r {
                r = p[r];
            }
            p[i] = r;
            r
        }
        for (i, deps) in self.deps.iter().enumerate() {
            for &d in deps {
                let (a, b) = (find(&mut parent, i), find(&mut parent, d));
                parent[a] = b;
            }
        }
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            let r = find(&mut parent, i);
            groups.entry(r).or_default().push(i);
        }
        let mut out: Vec<Vec<usize>> = groups.into_values().collect();
        out.sort_by_key(|g| g[0]);
        out
    }
}

#[cfg(test)]
mod tests {
    //! Checking and measuring DAGs.
    use super::*;

    fn t(id: &str, deps: &[&str]) -> DagTask {
        DagTask {
            id: id.into(),
            title: String::new(),
            description: String::new(),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn measures_a_chain_and_independent_tasks() {
        let mut tasks = vec![t("b", &["a"]), t("a", &[])];
        tasks.extend((0..8).map(|i| t(&format!("x{i}"), &[])));
        let d = Dag::new(tasks).unwrap();
        assert_eq!(d.tasks[0].id, "a", "topological order");
        assert_eq!(d.critical_path(), 2);
        assert!((d.parallel_fraction() - 0.8).abs() < 1e-12);
        assert!((d.amdahl_bound(4) - 1.0 / (0.2 + 0.2)).abs() < 1e-12);
        assert_eq!(d.components().len(), 9);
        assert_eq!(d.components()[0], vec![0, 9]);
        assert_eq!(d.tasks[9].id, "b");
    }

    #[test]
    fn refuses_bad_lists() {
        assert!(matches!(
            Dag::new(vec![t("a", &["b"]), t("b", &["a"])]),
            Err(DagError::Cycle(_))
        ));
        assert!(matches!(
            Dag::new(vec![t("a", &["z"])]),
            Err(DagError::Unknown { .. })
        ));
        assert!(matches!(
            Dag::new(vec![t("a", &[]), t("a", &[])]),
            Err(DagError::Duplicate(_))
        ));
        assert!(matches!(Dag::new(vec![]), Err(DagError::Empty)));
    }
}
