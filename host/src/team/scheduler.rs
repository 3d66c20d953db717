//! The scheduler: runs a job's task DAG, event-driven. A task starts the
//! moment its dependencies are decided (no rounds, no barriers); among
//! ready tasks the one with the longest chain of tasks still behind it goes
//! first (critical path). A task that does not decide stops its dependents
//! with its reason, never its independent siblings. A plan returned by a
//! coordinator adds its subtasks to the DAG, and whoever depended on the
//! coordinator then waits for them too, unless the plan passes the job's
//! plan limits (nesting, tasks per job, size: [`PlanLimits`]), in which
//! case the task that made it fails with the limit it passed. Adding a
//! plan costs time linear in the plan, not in the job. A job wall-time
//! budget or a
//! cancellation stops every task in flight (their model calls are dropped)
//! and gives each unfinished task that reason.
//!
//! With [`HedgeTasks`] (off by default), a slot with no ready task to run
//! starts a copy of a running task that has run longer than `after`; the
//! first copy to finish wins and the others are aborted, each reported as
//! an [`Event::TaskCopyCancelled`]. This is the policy the simulator's
//! critical-path numbers come from (`simulate::tests` checks that the two
//! agree in virtual time).
//!
//! A task's result is reported (its [`Event::TaskEnded`], its dependents
//! started) only once the observer says every event before it is safe
//! (for a journal: durable). The task's slot is free while it waits: the
//! next task runs during the sync instead of after it. Once more than
//! `max_parallel_tasks` results wait so, no task starts until one is
//! reported, which bounds what a slow disk holds in memory.
//!
//! What lives elsewhere: running one task (consensus), the baseline
//! policies in virtual time (simulate), what a task costs (budget).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::{Limits, Meter};
use super::consensus::{PlannedSubtask, StopReason, TaskResult};
use super::events::{Event, Observer};
use super::plan::{PlanError, PlanLimits};
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

/// Read from the team spec; defined with it so a spec loads without the runtime.
pub use crate::spec::config::{HedgeAfter, HedgeTasks};

/// When a straggler may get a copy now, given the run times of the tasks
/// finished so far (sorted): `None` while a quantile has too few of them
/// ([`HedgeTasks::MIN_OBSERVED`]).
fn hedge_threshold(h: &HedgeTasks, finished: &[Duration]) -> Option<Duration> {
    match h.after {
        HedgeAfter::Fixed(d) => Some(d),
        HedgeAfter::Quantile(_) if finished.len() < HedgeTasks::MIN_OBSERVED => None,
        HedgeAfter::Quantile(q) => {
            let k = ((finished.len() as f64 * q).ceil() as usize).clamp(1, finished.len());
            Some(finished[k - 1])
        }
    }
}

/// Scheduler settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Tasks running at once. Default 16.
    pub max_parallel_tasks: usize,
    /// How large and deep plans may be, and how many tasks a job may have.
    pub plans: PlanLimits,
    /// Budgets of each subtask a plan adds. Default: the default cap on a
    /// task's model calls ([`super::caps::ModelLimits::calls_per_task`]).
    pub subtask_limits: Limits,
    /// Copies of straggling tasks on idle slots; `None` (the default): off.
    pub hedge_tasks: Option<HedgeTasks>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_parallel_tasks: 16,
            plans: PlanLimits::default(),
            subtask_limits: Limits {
                max_calls: Some(super::caps::ModelLimits::default().calls_per_task),
                ..Limits::default()
            },
            hedge_tasks: None,
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
    /// How deep in plans each task is: 0 for the spec's, 1 for a subtask
    /// of their plans, and so on.
    depth: Vec<u32>,
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
            depth: Vec::new(),
        };
        for t in tasks {
            g.add(t, 0);
        }
        g.rebuild();
        g
    }

    fn add(&mut self, t: JobTask, depth: u32) {
        self.index.insert(t.id.clone(), self.tasks.len());
        self.tasks.push(t);
        self.depth.push(depth);
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

    /// Computes dependents, unmet dependencies, priorities (the longest
    /// chain to a sink; tasks are acyclic: specs are checked at load and
    /// plans when returned) and the ready queue, at the start; from then on
    /// the bookkeeping is incremental, plans included.
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

    /// Adds the subtasks of `parent`'s plan, if it fits `limits` (nesting,
    /// tasks per job, size) and its subtasks' task ids are new; the
    /// parent's dependents wait for all of them. Time linear in the plan
    /// and the parent's dependents: nothing else changes, priorities
    /// included (the subtasks sit between the parent, which is running, and
    /// its dependents, whose own chains stay what they were).
    fn expand(
        &mut self,
        parent: usize,
        plan: &[PlannedSubtask],
        options: &Options,
    ) -> Result<(), PlanError> {
        options
            .plans
            .admit(self.depth[parent], self.tasks.len(), plan.len())?;
        let p = self.tasks[parent].clone();
        let name = |id: &str| format!("{}.{id}", p.id);
        let ids: Vec<String> = plan.iter().map(|s| name(&s.id)).collect();
        let local: HashMap<&str, usize> = plan
            .iter()
            .enumerate()
            .map(|(k, s)| (s.id.as_str(), k))
            .collect();
        if let Some(k) = (0..plan.len())
            .find(|&k| self.index.contains_key(&ids[k]) || local[plan[k].id.as_str()] != k)
        {
            return Err(PlanError::Taken {
                id: plan[k].id.clone(),
                task: ids[k].clone(),
            });
        }
        let defaults = p.subtasks.clone().unwrap_or(SubtaskDefaults {
            role: p.role.clone(),
            verifiers: p.verifiers.clone(),
            voter: p.voter.clone(),
            replicas: p.replicas,
            answer_kind: AnswerKind::Text,
        });
        let first = self.tasks.len();
        let depth = self.depth[parent] + 1;
        for s in plan {
            // The plan itself (decided: it does not hold the subtask back)
            // and the coordinator's own inputs come first.
            let mut depends_on = vec![p.id.clone()];
            depends_on.extend(p.depends_on.iter().cloned());
            depends_on.extend(s.depends_on.iter().map(|d| name(d)));
            self.add(
                JobTask {
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
                    limits: options.subtask_limits,
                    depends_on,
                    subtasks: None,
                },
                depth,
            );
        }
        let n = self.tasks.len();
        self.dependents.resize(n, Vec::new());
        self.unmet.resize(n, 0);
        self.remaining.resize(n, 1);
        // Only the tasks that were there before the plan wait for it: the
        // subtasks depend on the plan themselves.
        let before = std::mem::take(&mut self.dependents[parent]);
        for &j in &before {
            self.tasks[j].depends_on.extend(ids.iter().cloned());
            self.unmet[j] += plan.len();
        }
        for i in first..n {
            let deps: Vec<usize> = self.deps(i).collect();
            self.unmet[i] = deps
                .iter()
                .filter(|&&d| self.status[d] != Status::Done)
                .count();
            for d in deps {
                self.dependents[d].push(i);
            }
            self.dependents[i].extend(before.iter().copied());
        }
        self.dependents[parent].splice(0..0, before.iter().copied());
        // Priorities of the subtasks: the longest chain through the plan
        // (Kahn's order, walked backwards), then on to the parent's
        // dependents.
        let tail = before.iter().map(|&j| self.remaining[j]).max().unwrap_or(0);
        let mut waiting: Vec<usize> = plan.iter().map(|s| s.depends_on.len()).collect();
        let mut within: Vec<Vec<usize>> = vec![Vec::new(); plan.len()];
        for (k, s) in plan.iter().enumerate() {
            for d in &s.depends_on {
                if let Some(&j) = local.get(d.as_str()) {
                    within[j].push(k);
                }
            }
        }
        let mut order: Vec<usize> = (0..plan.len()).filter(|&k| waiting[k] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let j = order[next];
            next += 1;
            for &k in &within[j] {
                waiting[k] = waiting[k].saturating_sub(1);
                if waiting[k] == 0 {
                    order.push(k);
                }
            }
        }
        for &k in order.iter().rev() {
            let after = within[k]
                .iter()
                .map(|&d| self.remaining[first + d])
                .max()
                .unwrap_or(0);
            self.remaining[first + k] = 1 + after.max(tail);
        }
        Ok(())
    }
}

/// The copies of one running task.
struct Copies {
    /// Copies in flight and their numbers (0: the first).
    live: Vec<(tokio::task::AbortHandle, u32)>,
    /// Copies started so far.
    made: u32,
    started: tokio::time::Instant,
    task: Arc<JobTask>,
    inputs: Vec<(String, String)>,
    meter: Arc<Meter>,
}

/// `result` with its plan refused for `why`: the task fails, naming the
/// limit, and adds nothing to the job.
fn refused(mut result: TaskResult, why: PlanError) -> TaskResult {
    result.stop = StopReason::Failed(format!("plan refused: {why}"));
    result.plan = None;
    result.answer = None;
    result.support = 0;
    result
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
    // Which task each copy in flight runs.
    let mut which: HashMap<tokio::task::Id, usize> = HashMap::new();
    // Per running task: its copies (id, abort handle, copy number), when
    // its first copy started, its meter and inputs (a copy shares both).
    let mut copies: HashMap<usize, Copies> = HashMap::new();
    // Run times of finished tasks, sorted: what a quantile is taken of.
    let mut finished: Vec<Duration> = Vec::new();
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
    // A finished task's result, its plan added to the graph, then ended.
    let settle = |g: &mut Graph, i: usize, result: TaskResult| {
        let result = match (&result.stop, &result.plan) {
            (StopReason::Decided, Some(plan)) => {
                let plan = plan.clone();
                match g.expand(i, &plan, &options) {
                    Ok(()) => result,
                    Err(why) => refused(result, why),
                }
            }
            _ => result,
        };
        end(g, i, result);
    };
    // Finished tasks whose events are not yet safe: each resolves, with
    // the task and its result, once they are.
    let mut unsafe_yet: FuturesUnordered<BoxFuture<'static, (usize, TaskResult)>> =
        FuturesUnordered::new();
    let limit = options.max_parallel_tasks.max(1);
    let stopped = loop {
        // Results already safe are reported first, so that their
        // dependents compete for the free slots by priority.
        while let Some(Some((i, result))) = unsafe_yet.next().now_or_never() {
            settle(&mut g, i, result);
        }
        // Start ready tasks by priority; a task whose dependency did not
        // decide ends at once with that reason (and its own dependents
        // become ready to end the same way).
        while running.len() < limit && unsafe_yet.len() <= limit {
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
            let handle = running.spawn(executor.clone().execute(
                task.clone(),
                inputs.clone(),
                task_meter.clone(),
            ));
            which.insert(handle.id(), i);
            copies.insert(
                i,
                Copies {
                    live: vec![(handle, 0)],
                    made: 1,
                    started: tokio::time::Instant::now(),
                    task,
                    inputs,
                    meter: task_meter,
                },
            );
        }
        // Idle slots copy stragglers: the most critical first, then the
        // one running longest.
        let mut wake = None;
        if let Some(h) = options.hedge_tasks {
            let now = tokio::time::Instant::now();
            let after = hedge_threshold(&h, &finished);
            while running.len() < limit && unsafe_yet.len() <= limit {
                let Some(after) = after else { break };
                let pick = copies
                    .iter()
                    .filter(|(_, c)| c.live.len() < h.max_copies.max(1))
                    .filter(|(_, c)| now >= c.started + after)
                    .max_by(|(a, x), (b, y)| {
                        g.remaining[**a]
                            .cmp(&g.remaining[**b])
                            .then(y.started.cmp(&x.started))
                            .then(b.cmp(a))
                    })
                    .map(|(i, _)| *i);
                let Some(i) = pick else { break };
                let c = copies.get_mut(&i).expect("picked from the map");
                let copy = c.made;
                c.made += 1;
                let handle = running.spawn(executor.clone().execute(
                    c.task.clone(),
                    c.inputs.clone(),
                    c.meter.clone(),
                ));
                which.insert(handle.id(), i);
                c.live.push((handle, copy));
                observer.event(
                    run_id,
                    &Event::TaskHedged {
                        task: g.tasks[i].id.clone(),
                        copy,
                        after_ms: (now - c.started).as_secs_f64() * 1e3,
                    },
                );
            }
            // With a slot still free, wake when the next task becomes a
            // straggler.
            if running.len() < limit && unsafe_yet.len() <= limit {
                wake = after.and_then(|after| {
                    copies
                        .values()
                        .filter(|c| c.live.len() < h.max_copies.max(1))
                        .map(|c| c.started + after)
                        .filter(|&t| t > now)
                        .min()
                });
            }
        }
        if running.is_empty() && unsafe_yet.is_empty() {
            break None;
        }
        let straggler = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                let (i, id, result) = match joined {
                    Ok((id, r)) => match which.remove(&id) {
                        Some(i) => (i, id, r),
                        None => continue,
                    },
                    Err(e) => {
                        // A copy aborted as the loser of its task: already
                        // reported.
                        let Some(i) = which.remove(&e.id()) else { continue };
                        // A panic in the host's own code: fail that task only.
                        let why = format!("the task's executor panicked: {e}");
                        (i, e.id(), TaskResult::not_run(StopReason::Failed(why)))
                    }
                };
                let c = copies.get_mut(&i).expect("a running task has copies");
                let won = c.live.iter().find(|(h, _)| h.id() == id).map(|(_, k)| *k).unwrap_or(0);
                c.live.retain(|(h, _)| h.id() != id);
                // A copy that did not decide leaves the task to the copies
                // still running.
                if result.stop != StopReason::Decided && !c.live.is_empty() {
                    continue;
                }
                let c = copies.remove(&i).expect("looked up above");
                for (h, copy) in c.live {
                    h.abort();
                    which.remove(&h.id());
                    observer.event(
                        run_id,
                        &Event::TaskCopyCancelled {
                            task: g.tasks[i].id.clone(),
                            copy,
                            winner: won,
                        },
                    );
                }
                let took = c.started.elapsed();
                let at = finished.partition_point(|d| *d <= took);
                finished.insert(at, took);
                // Reported once what led to it is safe; the slot is free
                // meanwhile.
                let safe = observer.flushed();
                unsafe_yet.push(Box::pin(async move {
                    safe.await;
                    (i, result)
                }));
            }
            Some((i, result)) = unsafe_yet.next() => settle(&mut g, i, result),
            _ = straggler => {}
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
    // Results already in hand are reported as they are, once safe.
    while let Some((i, result)) = unsafe_yet.next().await {
        settle(&mut g, i, result);
    }
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
mod tests;
