//! The scheduler: runs a job's task DAG, event-driven. A task starts the
//! moment its dependencies are decided (no rounds, no barriers); among
//! ready tasks the one with the longest chain of tasks still behind it goes
//! first (critical path). A task that does not decide stops its dependents
//! with its reason, never its independent siblings. A plan returned by a
//! coordinator adds its subtasks to the DAG, and whoever depended on the
//! coordinator then waits for them too. A job wall-time budget or a
//! cancellation stops every task in flight (their model calls are dropped)
//! and gives each unfinished task that reason.
//!
//! What lives elsewhere: running one task (consensus), the baseline
//! policies in virtual time (simulate), what a task costs (budget).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::{Limits, Meter};
use super::consensus::{PlannedSubtask, StopReason, TaskResult};
use super::events::{Event, Observer};
use crate::plugin::AnswerKind;

/// How to run the subtasks of a plan.
#[derive(Clone, Debug)]
pub struct SubtaskDefaults {
    pub role: String,
    pub verifiers: Vec<String>,
    pub voter: String,
    pub replicas: u32,
    pub answer_kind: AnswerKind,
}

/// A task as the scheduler runs it.
#[derive(Clone, Debug)]
pub struct JobTask {
    pub id: String,
    pub role: String,
    pub verifiers: Vec<String>,
    pub voter: String,
    /// The prompt, the job's question already in it.
    pub prompt: String,
    pub answer_kind: AnswerKind,
    pub replicas: u32,
    pub max_samples: u32,
    pub max_rounds: u32,
    pub debate_rounds: u32,
    pub retries: u32,
    pub limits: Limits,
    pub depends_on: Vec<String>,
    /// How to run the subtasks if this task's role answers with a plan.
    pub subtasks: Option<SubtaskDefaults>,
}

/// Runs one task, given the decided answers of its dependencies and the
/// meter to charge. Each task runs as a tokio task of its own (so tasks use
/// every core), owned by the scheduler, which aborts it when the job stops.
pub trait Executor: Send + Sync + 'static {
    fn execute(
        self: Arc<Self>,
        task: Arc<JobTask>,
        inputs: Vec<(String, String)>,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, TaskResult>;
}

/// Scheduler settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Tasks running at once. Default 16.
    pub max_parallel_tasks: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_parallel_tasks: 16,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Done,
}

/// The job's tasks and where each stands.
struct Graph {
    tasks: Vec<JobTask>,
    status: Vec<Status>,
    results: Vec<Option<TaskResult>>,
    index: HashMap<String, usize>,
    /// Tasks still to run behind each task, itself included, on the
    /// longest chain: the priority.
    remaining: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    /// Dependencies of each task not yet done.
    unmet: Vec<usize>,
    /// Waiting tasks with every dependency done, best first.
    ready: std::collections::BinaryHeap<(usize, std::cmp::Reverse<usize>)>,
}

impl Graph {
    fn new(tasks: Vec<JobTask>) -> Self {
        let mut g = Graph {
            status: vec![Status::Waiting; tasks.len()],
            results: vec![None; tasks.len()],
            index: HashMap::new(),
            remaining: Vec::new(),
            dependents: Vec::new(),
            unmet: Vec::new(),
            ready: Default::default(),
            tasks: Vec::new(),
        };
        for t in tasks {
            g.add(t);
        }
        g.rebuild();
        g
    }

    fn add(&mut self, t: JobTask) {
        self.index.insert(t.id.clone(), self.tasks.len());
        self.tasks.push(t);
        if self.status.len() < self.tasks.len() {
            self.status.push(Status::Waiting);
            self.results.push(None);
        }
    }

    fn deps(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.tasks[i]
            .depends_on
            .iter()
            .filter_map(|d| self.index.get(d).copied())
    }

    /// Recomputes dependents, unmet dependencies, priorities (the longest
    /// chain to a sink; tasks are acyclic: specs are checked at load and
    /// plans when returned) and the ready queue. At the start and when a
    /// plan adds tasks; otherwise the bookkeeping is incremental.
    fn rebuild(&mut self) {
        let n = self.tasks.len();
        let mut dependents = vec![Vec::new(); n];
        let mut unmet = Vec::with_capacity(n);
        for i in 0..n {
            let deps: Vec<usize> = self.deps(i).collect();
            unmet.push(
                deps.iter()
                    .filter(|&&d| self.status[d] != Status::Done)
                    .count(),
            );
            for d in deps {
                dependents[d].push(i);
            }
        }
        // Longest chain to a sink, sinks first (Kahn's order on the
        // dependents, reversed): no recursion, however deep the DAG.
        let mut left: Vec<usize> = dependents.iter().map(Vec::len).collect();
        let mut queue: Vec<usize> = (0..n).filter(|&i| left[i] == 0).collect();
        let mut remaining = vec![1usize; n];
        while let Some(j) = queue.pop() {
            for d in self.deps(j).collect::<Vec<_>>() {
                remaining[d] = remaining[d].max(1 + remaining[j]);
                left[d] -= 1;
                if left[d] == 0 {
                    queue.push(d);
                }
            }
        }
        self.remaining = remaining;
        self.dependents = dependents;
        self.unmet = unmet;
        self.ready = (0..n)
            .filter(|&i| self.status[i] == Status::Waiting && self.unmet[i] == 0)
            .map(|i| (self.remaining[i], std::cmp::Reverse(i)))
            .collect();
    }

    /// Marks `i` done: its dependents have one dependency fewer to wait
    /// for, and those with none left are ready.
    fn done(&mut self, i: usize) {
        self.status[i] = Status::Done;
        for k in 0..self.dependents[i].len() {
            let j = self.dependents[i][k];
            self.unmet[j] = self.unmet[j].saturating_sub(1);
            if self.unmet[j] == 0 && self.status[j] == Status::Waiting {
                self.ready.push((self.remaining[j], std::cmp::Reverse(j)));
            }
        }
    }

    /// A waiting task whose dependency did not decide: its stop reason.
    fn blocked(&self, i: usize) -> Option<StopReason> {
        self.deps(i).find_map(|d| {
            let r = self.results[d].as_ref()?;
            let why = |w: &str| format!("dependency {} did not decide: {w}", self.tasks[d].id);
            match &r.stop {
                StopReason::Decided => None,
                StopReason::NoConsensus(w) => Some(StopReason::NoConsensus(why(w))),
                StopReason::BudgetExhausted(w) => Some(StopReason::BudgetExhausted(w.clone())),
                StopReason::Cancelled(w) => Some(StopReason::Cancelled(w.clone())),
                StopReason::Failed(w) => Some(StopReason::Failed(why(w))),
            }
        })
    }

    fn inputs(&self, i: usize) -> Vec<(String, String)> {
        self.deps(i)
            .filter_map(|d| {
                let a = self.results[d].as_ref()?.answer.clone()?;
                Some((self.tasks[d].id.clone(), a))
            })
            .collect()
    }

    /// Adds the subtasks of `parent`'s plan; the parent's dependents wait
    /// for all of them.
    fn expand(&mut self, parent: usize, plan: &[PlannedSubtask]) {
        let p = self.tasks[parent].clone();
        let defaults = p.subtasks.clone().unwrap_or(SubtaskDefaults {
            role: p.role.clone(),
            verifiers: p.verifiers.clone(),
            voter: p.voter.clone(),
            replicas: p.replicas,
            answer_kind: AnswerKind::Text,
        });
        let name = |id: &str| format!("{}.{id}", p.id);
        let ids: Vec<String> = plan.iter().map(|s| name(&s.id)).collect();
        let first = self.tasks.len();
        for s in plan {
            // The plan itself (decided: it does not hold the subtask back)
            // and the coordinator's own inputs come first.
            let mut depends_on = vec![p.id.clone()];
            depends_on.extend(p.depends_on.iter().cloned());
            depends_on.extend(s.depends_on.iter().map(|d| name(d)));
            self.add(JobTask {
                id: name(&s.id),
                role: if s.role.is_empty() {
                    defaults.role.clone()
                } else {
                    s.role.clone()
                },
                verifiers: defaults.verifiers.clone(),
                voter: defaults.voter.clone(),
                prompt: s.prompt.clone(),
                answer_kind: defaults.answer_kind,
                replicas: defaults.replicas,
                max_samples: defaults.replicas,
                max_rounds: 1,
                debate_rounds: 0,
                retries: p.retries,
                limits: Limits::default(),
                depends_on,
                subtasks: None,
            });
        }
        // Only the tasks that were there before the plan: the subtasks
        // depend on the plan themselves.
        for t in &mut self.tasks[..first] {
            if t.depends_on.contains(&p.id) {
                t.depends_on.extend(ids.iter().cloned());
            }
        }
        self.rebuild();
    }
}

/// Runs `tasks` (acyclic, dependencies by id) to a result each, in the
/// order the tasks were added (plans' subtasks after the spec's tasks).
pub async fn run(
    run_id: &str,
    tasks: Vec<JobTask>,
    executor: Arc<dyn Executor>,
    meter: Arc<Meter>,
    options: Options,
    cancel: CancellationToken,
    observer: &dyn Observer,
) -> Vec<(String, TaskResult)> {
    let mut g = Graph::new(tasks);
    // The owner of every task in flight: dropping it aborts them all.
    let mut running: JoinSet<TaskResult> = JoinSet::new();
    let mut which: HashMap<tokio::task::Id, usize> = HashMap::new();
    let deadline = meter.deadline();
    let expiry = async {
        match &deadline {
            Some((at, _)) => tokio::time::sleep_until(*at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let end = |g: &mut Graph, i: usize, result: TaskResult| {
        observer.event(
            run_id,
            &Event::TaskEnded {
                task: g.tasks[i].id.clone(),
                result: result.clone(),
            },
        );
        g.results[i] = Some(result);
        g.done(i);
    };
    let stopped = loop {
        // Start ready tasks by priority; a task whose dependency did not
        // decide ends at once with that reason (and its own dependents
        // become ready to end the same way).
        while running.len() < options.max_parallel_tasks.max(1) {
            let Some((_, std::cmp::Reverse(i))) = g.ready.pop() else {
                break;
            };
            if g.status[i] != Status::Waiting {
                continue;
            }
            if let Some(stop) = g.blocked(i) {
                end(&mut g, i, TaskResult::not_run(stop));
                continue;
            }
            g.status[i] = Status::Running;
            observer.event(
                run_id,
                &Event::TaskStarted {
                    task: g.tasks[i].id.clone(),
                    role: g.tasks[i].role.clone(),
                    voter: g.tasks[i].voter.clone(),
                    answer_kind: crate::spec::team::kind_name(g.tasks[i].answer_kind).into(),
                    prompt: g.tasks[i].prompt.clone(),
                    depends_on: g.tasks[i].depends_on.clone(),
                },
            );
            let task_meter = meter.task(&g.tasks[i].id, g.tasks[i].limits);
            let inputs = g.inputs(i);
            // Owned copy: the graph grows while the task runs.
            let task = Arc::new(g.tasks[i].clone());
            let handle = running.spawn(executor.clone().execute(task, inputs, task_meter));
            which.insert(handle.id(), i);
        }
        if running.is_empty() {
            break None;
        }
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                let (i, result) = match joined {
                    Ok((id, r)) => (which.remove(&id).expect("spawned here"), r),
                    Err(e) => {
                        // A panic in the host's own code: fail that task only.
                        let i = which.remove(&e.id()).expect("spawned here");
                        let why = format!("the task's executor panicked: {e}");
                        (i, TaskResult::not_run(StopReason::Failed(why)))
                    }
                };
                if let (StopReason::Decided, Some(plan)) = (&result.stop, &result.plan) {
                    let plan = plan.clone();
                    g.expand(i, &plan);
                }
                end(&mut g, i, result);
            }
            _ = &mut expiry => {
                let why = deadline.as_ref().map(|d| d.1.clone()).unwrap_or_default();
                break Some(StopReason::BudgetExhausted(why));
            }
            _ = cancel.cancelled() => {
                break Some(StopReason::Cancelled("the job was cancelled".into()));
            }
        }
    };
    running.abort_all();
    while running.join_next().await.is_some() {}
    if let Some(stop) = stopped {
        for i in 0..g.tasks.len() {
            if g.status[i] != Status::Done {
                end(&mut g, i, TaskResult::not_run(stop.clone()));
            }
        }
    }
    g.tasks
        .iter()
        .zip(g.results)
        .map(|(t, r)| {
            let r = r.unwrap_or_else(|| {
                TaskResult::not_run(StopReason::Failed("the scheduler never reached it".into()))
            });
            (t.id.clone(), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team::events::Quiet;

    /// Decides every task at once with its id as the answer, recording
    /// the order tasks start in.
    struct Echo(std::sync::Mutex<Vec<String>>);

    impl Executor for Echo {
        fn execute(
            self: Arc<Self>,
            task: Arc<JobTask>,
            inputs: Vec<(String, String)>,
            _meter: Arc<Meter>,
        ) -> BoxFuture<'static, TaskResult> {
            self.0.lock().unwrap().push(task.id.clone());
            Box::pin(async move {
                let mut r = TaskResult::not_run(StopReason::Decided);
                r.answer = Some(format!("{}<{}", task.id, inputs.len()));
                r
            })
        }
    }

    fn task(id: &str, deps: &[String]) -> JobTask {
        JobTask {
            id: id.into(),
            role: "solver".into(),
            verifiers: vec![],
            voter: "majority".into(),
            prompt: String::new(),
            answer_kind: AnswerKind::Text,
            replicas: 1,
            max_samples: 1,
            max_rounds: 1,
            debate_rounds: 0,
            retries: 0,
            limits: Limits::default(),
            depends_on: deps.to_vec(),
            subtasks: None,
        }
    }

    #[tokio::test]
    async fn a_deep_chain_runs_in_order_without_recursion() {
        let n = 20_000;
        let tasks: Vec<JobTask> = (0..n)
            .map(|i| {
                let deps = if i == 0 {
                    vec![]
                } else {
                    vec![format!("t{}", i - 1)]
                };
                task(&format!("t{i}"), &deps)
            })
            .collect();
        let exec = Arc::new(Echo(Default::default()));
        let done = run(
            "r",
            tasks,
            exec.clone(),
            Meter::job(Limits::default()),
            Options::default(),
            CancellationToken::new(),
            &Quiet,
        )
        .await;
        assert_eq!(done.len(), n);
        assert!(done.iter().all(|(_, r)| r.stop == StopReason::Decided));
        let order = exec.0.lock().unwrap().clone();
        assert_eq!(order[0], "t0");
        assert_eq!(order[n - 1], format!("t{}", n - 1));
        assert_eq!(done[5].1.answer.as_deref(), Some("t5<1"));
    }

    #[tokio::test]
    async fn the_longest_chain_starts_first() {
        // a -> b -> c is the long chain; x and y stand alone.
        let tasks = vec![
            task("x", &[]),
            task("y", &[]),
            task("a", &[]),
            task("b", &["a".into()]),
            task("c", &["b".into()]),
        ];
        let exec = Arc::new(Echo(Default::default()));
        run(
            "r",
            tasks,
            exec.clone(),
            Meter::job(Limits::default()),
            Options {
                max_parallel_tasks: 1,
            },
            CancellationToken::new(),
            &Quiet,
        )
        .await;
        let order = exec.0.lock().unwrap().clone();
        assert_eq!(order[0], "a", "{order:?}");
        assert_eq!(order.len(), 5);
    }
}
