//! The scheduler on echo executors: order, priorities, plans and caps.

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

/// Answers every task with the plan `plan` gives it (if any), recording
/// the order tasks start in.
struct Planner {
    plan: fn(&JobTask) -> Option<Vec<PlannedSubtask>>,
    started: std::sync::Mutex<Vec<String>>,
}

impl Executor for Planner {
    fn execute(
        self: Arc<Self>,
        task: Arc<JobTask>,
        _inputs: Vec<(String, String)>,
        _meter: Arc<Meter>,
    ) -> BoxFuture<'static, TaskResult> {
        self.started.lock().unwrap().push(task.id.clone());
        let plan = (self.plan)(&task);
        Box::pin(async move {
            let mut r = TaskResult::not_run(StopReason::Decided);
            r.answer = Some(task.id.clone());
            r.plan = plan;
            r
        })
    }
}

fn sub(id: &str, deps: &[&str]) -> PlannedSubtask {
    PlannedSubtask {
        id: id.into(),
        prompt: String::new(),
        role: String::new(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

async fn run_planner(
    plan: fn(&JobTask) -> Option<Vec<PlannedSubtask>>,
    options: Options,
) -> (Vec<(String, TaskResult)>, Vec<String>) {
    let exec = Arc::new(Planner {
        plan,
        started: Default::default(),
    });
    let tasks = vec![task("root", &[]), task("after", &["root".into()])];
    let done = run(
        "r",
        tasks,
        exec.clone(),
        Meter::job(Limits::default()),
        options,
        CancellationToken::new(),
        &Quiet,
    )
    .await;
    let started = exec.started.lock().unwrap().clone();
    (done, started)
}

#[tokio::test]
async fn a_task_that_always_plans_is_stopped_at_the_depth_cap() {
    let (done, _) = run_planner(
        |t| (t.id != "after").then(|| vec![sub("s", &[])]),
        Options::default(),
    )
    .await;
    let ids: Vec<&str> = done.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["root", "after", "root.s", "root.s.s", "root.s.s.s"]);
    let deepest = &done[4].1;
    assert!(
        matches!(&deepest.stop, StopReason::Failed(w)
            if w.starts_with("plan refused: the plan would nest 4 deep, past the 3")
                && w.contains("max_plan_depth")),
        "{:?}",
        deepest.stop
    );
    assert_eq!(deepest.plan, None);
    assert!(
        matches!(&done[1].1.stop, StopReason::Failed(w)
            if w.starts_with("dependency root.s.s.s did not decide: plan refused")),
        "{:?}",
        done[1].1.stop
    );
}

#[tokio::test]
async fn a_job_stops_growing_at_its_task_cap() {
    let options = Options {
        plans: PlanLimits {
            max_job_tasks: 50,
            ..PlanLimits::default()
        },
        ..Options::default()
    };
    let (done, _) = run_planner(
        |t| (t.id != "after").then(|| (0..10).map(|i| sub(&format!("s{i}"), &[])).collect()),
        options,
    )
    .await;
    // 2 + 10 + 3 * 10: the fourth second-level plan would pass 50.
    assert_eq!(done.len(), 42);
    let refused = done
        .iter()
        .filter(|(_, r)| {
            matches!(&r.stop, StopReason::Failed(w)
                if w.starts_with("plan refused") && w.contains("max_job_tasks"))
        })
        .count();
    assert!(refused >= 7, "{refused} refused");
    assert!(done.iter().all(|(id, _)| id.split('.').count() <= 3));
}

#[tokio::test]
async fn a_plans_long_chain_starts_first_and_its_parents_dependents_wait() {
    let options = Options {
        max_parallel_tasks: 1,
        ..Options::default()
    };
    let (done, started) = run_planner(
        |t| {
            (t.id == "root").then(|| {
                vec![
                    sub("x", &[]),
                    sub("b", &["a"]),
                    sub("c", &["b"]),
                    sub("a", &[]),
                ]
            })
        },
        options,
    )
    .await;
    // Priorities: a 4, b 3, then c and x tie at 2 (x was planned first);
    // the root's dependent waits for all of them.
    assert_eq!(
        started,
        ["root", "root.a", "root.b", "root.x", "root.c", "after"]
    );
    assert!(done.iter().all(|(_, r)| r.stop == StopReason::Decided));
}

#[tokio::test]
async fn a_plan_that_reuses_a_task_id_is_refused() {
    let (done, _) = run_planner(
        |t| (t.id == "root").then(|| vec![sub("s", &[]), sub("s", &[])]),
        Options::default(),
    )
    .await;
    assert_eq!(done.len(), 2);
    assert!(
        matches!(&done[0].1.stop, StopReason::Failed(w)
            if w.contains("would be task \"root.s\", which the job already has")),
        "{:?}",
        done[0].1.stop
    );
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
            ..Options::default()
        },
        CancellationToken::new(),
        &Quiet,
    )
    .await;
    let order = exec.0.lock().unwrap().clone();
    assert_eq!(order[0], "a", "{order:?}");
    assert_eq!(order.len(), 5);
}

/// Sleeps each copy of a task for the next of its scripted latencies
/// (seconds), and answers with the copy's number.
struct Scripted {
    latencies: HashMap<String, Vec<f64>>,
    copies: std::sync::Mutex<HashMap<String, usize>>,
}

impl Executor for Scripted {
    fn execute(
        self: Arc<Self>,
        task: Arc<JobTask>,
        _inputs: Vec<(String, String)>,
        _meter: Arc<Meter>,
    ) -> BoxFuture<'static, TaskResult> {
        let k = {
            let mut c = self.copies.lock().unwrap();
            let k = c.entry(task.id.clone()).or_insert(0);
            *k += 1;
            *k - 1
        };
        let secs = self.latencies[&task.id][k];
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let mut r = TaskResult::not_run(StopReason::Decided);
            r.answer = Some(format!("copy {k}"));
            r
        })
    }
}

async fn run_scripted(
    latencies: &[(&str, &[f64])],
    slots: usize,
    hedge: Option<HedgeTasks>,
) -> (Vec<(String, TaskResult)>, Duration, Vec<Event>) {
    let exec = Arc::new(Scripted {
        latencies: latencies
            .iter()
            .map(|(id, l)| (id.to_string(), l.to_vec()))
            .collect(),
        copies: Default::default(),
    });
    let tasks = latencies.iter().map(|(id, _)| task(id, &[])).collect();
    let events = std::sync::Mutex::new(Vec::new());
    let observer = |_: &str, e: &Event| {
        if matches!(
            e,
            Event::TaskHedged { .. } | Event::TaskCopyCancelled { .. }
        ) {
            events.lock().unwrap().push(e.clone());
        }
    };
    let start = tokio::time::Instant::now();
    let done = run(
        "r",
        tasks,
        exec,
        Meter::job(Limits::default()),
        Options {
            max_parallel_tasks: slots,
            hedge_tasks: hedge,
            ..Options::default()
        },
        CancellationToken::new(),
        &observer,
    )
    .await;
    let took = start.elapsed();
    (done, took, events.into_inner().unwrap())
}

#[tokio::test(start_paused = true)]
async fn an_idle_slot_copies_a_straggler_and_the_first_copy_wins() {
    let hedge = HedgeTasks {
        after: HedgeAfter::Fixed(Duration::from_secs(5)),
        max_copies: 2,
    };
    // "slow" takes 100 s on its first copy and 1 s on its second.
    let script: &[(&str, &[f64])] = &[("slow", &[100.0, 1.0]), ("quick", &[1.0])];
    let (done, took, events) = run_scripted(script, 2, Some(hedge)).await;
    // Copied at 5 s, done at 6 s; the first copy is aborted and reported.
    assert_eq!(took.as_secs(), 6, "{took:?}");
    assert_eq!(done[0].1.answer.as_deref(), Some("copy 1"));
    assert_eq!(
        events,
        vec![
            Event::TaskHedged {
                task: "slow".into(),
                copy: 1,
                after_ms: 5000.0
            },
            Event::TaskCopyCancelled {
                task: "slow".into(),
                copy: 0,
                winner: 1
            },
        ]
    );
    // Without hedging the straggler sets the makespan.
    let (_, took, events) = run_scripted(script, 2, None).await;
    assert_eq!((took.as_secs(), events.len()), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_quantile_threshold_waits_for_enough_finished_tasks() {
    let hedge = HedgeTasks {
        after: "p50".parse().unwrap(),
        max_copies: 2,
    };
    // Three 2 s tasks finish first; then the 100 s one is copied at its
    // median run time (2 s after it started) and the copy takes 1 s.
    let script: &[(&str, &[f64])] = &[
        ("a", &[2.0]),
        ("b", &[2.0]),
        ("c", &[2.0]),
        ("slow", &[100.0, 1.0]),
    ];
    let (done, took, events) = run_scripted(script, 4, Some(hedge)).await;
    assert_eq!(took.as_secs(), 3, "{took:?}");
    assert_eq!(done[3].1.answer.as_deref(), Some("copy 1"));
    assert_eq!(events.len(), 2);
}

#[test]
fn hedge_thresholds_parse_from_the_spec() {
    assert_eq!(
        "p90".parse::<HedgeAfter>().unwrap(),
        HedgeAfter::Quantile(0.9)
    );
    assert_eq!(
        "20s".parse::<HedgeAfter>().unwrap(),
        HedgeAfter::Fixed(Duration::from_secs(20))
    );
    assert!("p100"
        .parse::<HedgeAfter>()
        .unwrap_err()
        .contains("p1..p99"));
    let t: HedgeTasks = toml::from_str("after = \"p90\"").unwrap();
    assert_eq!(t.max_copies, 2);
}

/// Hears `TaskEnded` events and makes each flush wait until `open` is
/// set: a journal whose disk is slow.
struct SlowDisk {
    ended: std::sync::Mutex<Vec<String>>,
    open: Arc<tokio::sync::Notify>,
    flushes: std::sync::atomic::AtomicUsize,
}

impl Observer for SlowDisk {
    fn event(&self, _run: &str, event: &Event) {
        if let Event::TaskEnded { task, .. } = event {
            self.ended.lock().unwrap().push(task.clone());
        }
    }

    fn flushed(&self) -> BoxFuture<'static, ()> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let open = self.open.clone();
        Box::pin(async move { open.notified().await })
    }
}

#[tokio::test]
async fn a_result_is_reported_once_safe_and_its_slot_runs_the_next_task_meanwhile() {
    // One slot, two independent tasks and a dependent one: while the
    // first result waits on the disk, the second task runs; nothing ends
    // (and the dependent does not start) before its flush resolves.
    let tasks = vec![
        task("a", &[]),
        task("b", &[]),
        task("c", &["a".to_string(), "b".to_string()]),
    ];
    let exec = Arc::new(Echo(Default::default()));
    let disk = Arc::new(SlowDisk {
        ended: Default::default(),
        open: Arc::new(tokio::sync::Notify::new()),
        flushes: Default::default(),
    });
    let options = Options {
        max_parallel_tasks: 1,
        ..Options::default()
    };
    let job = {
        let (exec, disk) = (exec.clone(), disk.clone());
        tokio::spawn(async move {
            run(
                "r",
                tasks,
                exec,
                Meter::job(Limits::default()),
                options,
                CancellationToken::new(),
                disk.as_ref(),
            )
            .await
        })
    };
    // Both independent tasks ran while their results waited on the disk.
    for _ in 0..1000 {
        if disk.flushes.load(std::sync::atomic::Ordering::SeqCst) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(disk.flushes.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(*exec.0.lock().unwrap(), vec!["a", "b"]);
    assert!(
        disk.ended.lock().unwrap().is_empty(),
        "a task ended before its events were safe"
    );
    // The disk catches up: both end, then the dependent runs and ends.
    while !job.is_finished() {
        disk.open.notify_waiters();
        tokio::task::yield_now().await;
    }
    let done = job.await.unwrap();
    assert_eq!(*exec.0.lock().unwrap(), vec!["a", "b", "c"]);
    let ended = disk.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 3);
    assert_eq!(
        ended[2], "c",
        "the dependent ended before what it needs: {ended:?}"
    );
    assert!(done.iter().all(|(_, r)| r.stop == StopReason::Decided));
}
