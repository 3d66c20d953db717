//! What the lease holder does besides serving: it registers the runs it
//! starts, and when it takes over it resumes from the journal the runs an
//! earlier coordinator registered and did not end.
//!
//! The registry is the bucket `conclave-NAME-coordinated`: one key per run
//! in progress, valued `{run, term, at_ms}`. A run is registered before its
//! submission is journaled and unregistered once its end is durable in the
//! journal, so a run that a coordinator was running when it died is always
//! in the registry under that coordinator's term. The new coordinator
//! re-registers it under its own term (an update expecting the revision it
//! read, so two would-be successors cannot both take it) and resumes it.
//! Runs that a `conclave run --cluster` process runs itself are in the
//! registry too, with their owner ([`super::owner`]): they are taken over
//! once the owner stops beating.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kv::Kv;
use super::lease::Role;
use crate::journal::jetstream::{token, ClusterConfig};
use crate::journal::{now_ms, Journal, JournalError};
use crate::plugin::PluginRuntime;
use crate::team::events::{Event, Observer};
use crate::team::remote::RemoteReplicas;

/// How often the holder looks for runs to take over.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// A registered run that never reached the journal (its coordinator died
/// or was deposed between registering and journaling it; its client was
/// answered, or lost its connection) is forgotten once a coordinator has
/// found it missing from the journal for this long.
pub(crate) const NEVER_JOURNALED: Duration = Duration::from_secs(60);

/// A run's entry in the registry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Registered {
    pub(crate) run: String,
    /// The coordinator's term it runs under; 0 for a run its owner runs.
    pub(crate) term: u64,
    pub(crate) at_ms: u64,
    /// The `conclave run --cluster` process that runs it itself, if one
    /// does (see [`super::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<String>,
}

/// The registry bucket, made when it is not there.
pub(crate) async fn registry(
    js: &async_nats::jetstream::Context,
    config: &ClusterConfig,
) -> Result<kv::Store, String> {
    super::bucket(
        js,
        kv::Config {
            bucket: format!("conclave-{}-coordinated", config.name),
            description: "Conclave's runs in progress under an elected coordinator".into(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await
}

/// Where a registered run stands in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Its end is there.
    Ended,
    /// It is there and has not ended.
    InProgress,
    /// It is not there (never journaled, or not yet).
    NotJournaled,
}

/// Why a run could not be resumed here.
#[derive(Clone, Debug)]
pub(crate) struct Unresumable {
    pub(crate) why: String,
    /// It never can be (its journal has no submission, its chain is
    /// broken, its team no longer loads); otherwise it is tried again.
    pub(crate) for_good: bool,
}

/// How a resumed run came out.
#[derive(Clone, Debug)]
pub(crate) struct Resumed {
    /// How it stopped, in words.
    pub(crate) stop: String,
    /// Why its end is not durable in the journal, if it is not.
    pub(crate) journal_error: Option<String>,
}

/// What a coordinator does with the journal: the seam between the
/// takeover logic and the runs themselves, so that the same logic runs
/// against the cluster's journal and team runtime ([`JournalRuns`]) and
/// against the model of [`super::simulation`].
#[async_trait::async_trait]
pub(crate) trait Runs: Send + Sync {
    /// Where `run` stands in the journal.
    async fn state(&self, run: &str) -> Result<RunState, String>;
    /// Refuses every later write of this process's runs, for `why`.
    fn fence(&self, why: &str);
    /// Lifts the fence.
    fn unfence(&self);
    /// Goes on with `run` from the journal, in `term`, until it ends or
    /// `cancel`.
    async fn resume(
        &self,
        run: &str,
        term: u64,
        cancel: CancellationToken,
    ) -> Result<Resumed, Unresumable>;
}

/// The cluster's journal and the team runtime.
pub(crate) struct JournalRuns {
    journal: Arc<dyn Journal>,
    runtime: Arc<PluginRuntime>,
    builtin_dir: PathBuf,
    /// Where the replicas of resumed runs go (the cluster's workers).
    workers: OnceLock<Arc<dyn RemoteReplicas>>,
}

#[async_trait::async_trait]
impl Runs for JournalRuns {
    async fn state(&self, run: &str) -> Result<RunState, String> {
        let journal = self.journal.clone();
        let id = run.to_string();
        match tokio::task::spawn_blocking(move || journal.read(&id)).await {
            Ok(Ok(log)) if log.ended().is_some() => Ok(RunState::Ended),
            Ok(Ok(_)) => Ok(RunState::InProgress),
            Ok(Err(JournalError::NoRun { .. })) => Ok(RunState::NotJournaled),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn fence(&self, why: &str) {
        self.journal.fence(why);
    }

    fn unfence(&self) {
        self.journal.unfence();
    }

    async fn resume(
        &self,
        run: &str,
        _term: u64,
        cancel: CancellationToken,
    ) -> Result<Resumed, Unresumable> {
        let observer: Arc<dyn Observer> = Arc::new(|run: &str, e: &Event| {
            if let Event::TaskEnded { task, result } = e {
                tracing::info!("run {run}: task {task}: {}", result.stop);
            }
        });
        let done = crate::journal::resume::resume(
            self.journal.clone(),
            run,
            self.runtime.clone(),
            &self.builtin_dir,
            observer,
            cancel,
            self.workers.get().cloned(),
            false,
        )
        .await
        .map_err(|e| Unresumable {
            // The journal could not be read or written now (a server
            // restarting): tried again; anything else would fail again.
            for_good: !matches!(e, crate::journal::resume::ResumeError::Journal(_)),
            why: e.to_string(),
        })?;
        Ok(Resumed {
            stop: done.result.stop.to_string(),
            journal_error: done.journal_error,
        })
    }
}

/// The longest a coordinator waits before it resumes again a run whose
/// last resumption here ended without a durable end (the journal could
/// not be written): the wait doubles from [`SCAN_EVERY`] up to this.
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

/// The coordinator's side of cluster mode.
pub struct Coordinator {
    registry: Arc<dyn Kv>,
    /// The beats of `conclave run --cluster` processes that own runs.
    owners: Arc<dyn Kv>,
    runs: Arc<dyn Runs>,
    /// Set when `runs` is the journal's: where resumed replicas go.
    journal_runs: Option<Arc<JournalRuns>>,
    role: watch::Receiver<Role>,
    /// Runs this process is running (served or resumed).
    running: Mutex<HashSet<String>>,
    /// Runs that could not be resumed here (reported once).
    given_up: Mutex<HashSet<String>>,
    /// Runs of this process that stopped without a durable end: when to
    /// resume each again, and the wait after that.
    retry: Mutex<HashMap<String, (Instant, Duration)>>,
    /// Registered runs not found in the journal, and when this process
    /// first found them so (its own clock: another's may be off).
    unjournaled: Mutex<HashMap<String, Instant>>,
    /// The term this process runs requests in (0: none): set once it leads
    /// and the runs of any term it lost before have stopped and its journal
    /// takes writes again.
    ready: AtomicU64,
    /// Why this process last lost the lease, for what its clients are told.
    lost: Arc<Mutex<Option<String>>>,
}

impl Coordinator {
    /// Opens the registry of the cluster's runs.
    pub async fn open(
        config: &ClusterConfig,
        journal: Arc<dyn Journal>,
        runtime: Arc<PluginRuntime>,
        builtin_dir: PathBuf,
        role: watch::Receiver<Role>,
    ) -> Result<Arc<Coordinator>, String> {
        let js = super::connect(config, "coordinator").await?;
        let registry = registry(&js, config).await?;
        let owners = super::owner::owners(&js, config).await?;
        let runs = Arc::new(JournalRuns {
            journal,
            runtime,
            builtin_dir,
            workers: OnceLock::new(),
        });
        let mut c = Coordinator::with(Arc::new(registry), Arc::new(owners), runs.clone(), role);
        c.journal_runs = Some(runs);
        Ok(Arc::new(c))
    }

    /// A coordinator over these buckets and runs.
    pub(crate) fn with(
        registry: Arc<dyn Kv>,
        owners: Arc<dyn Kv>,
        runs: Arc<dyn Runs>,
        role: watch::Receiver<Role>,
    ) -> Coordinator {
        Coordinator {
            registry,
            owners,
            runs,
            journal_runs: None,
            role,
            running: Default::default(),
            given_up: Default::default(),
            retry: Default::default(),
            unjournaled: Default::default(),
            ready: AtomicU64::new(0),
            lost: Default::default(),
        }
    }

    /// Where this process stands in the election now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The term this process runs requests in now: it leads, and it is
    /// ready (the runs of a term it lost before have stopped).
    pub fn serving(&self) -> Option<u64> {
        let ready = self.ready.load(Ordering::SeqCst);
        match self.role() {
            Role::Leading { term } if term == ready => Some(term),
            _ => None,
        }
    }

    /// Why this process last lost the coordinator lease, if it did.
    pub fn lost_lease(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Registers `run`, about to start under `term`, before its submission
    /// is journaled.
    pub async fn register(&self, run: &str, term: u64) -> Result<(), String> {
        self.lock_running().insert(run.to_string());
        let value = serde_json::to_vec(&Registered {
            run: run.to_string(),
            term,
            at_ms: now_ms(),
            owner: None,
        })
        .unwrap_or_default();
        if let Err(e) = self.registry.put(&token(run), value.into()).await {
            self.lock_running().remove(run);
            return Err(format!("cannot register run {run} with the cluster: {e}"));
        }
        Ok(())
    }

    /// `run` is no longer running here. `durable`: its end is in the
    /// journal (or nothing of it is), so it leaves the registry; otherwise
    /// it stays there, and this coordinator (or the next) resumes it.
    pub async fn finished(&self, run: &str, durable: bool) {
        if durable {
            if let Err(e) = self.registry.delete(&token(run)).await {
                tracing::warn!("run {run}: cannot leave the cluster's registry: {e}");
            }
        }
        self.lock_running().remove(run);
    }

    /// A token cancelled once this process no longer leads in `term`. A
    /// process that no longer leads at all has its journal fenced first, so
    /// that nothing its runs record on their way out (their cancellation)
    /// is written; the fence is lifted when it leads again and those runs
    /// have stopped ([`Self::lead`]).
    pub fn while_leading(&self, term: u64) -> CancellationToken {
        let token = CancellationToken::new();
        let cancel = token.clone();
        let mut role = self.role.clone();
        let runs = self.runs.clone();
        let lost = self.lost.clone();
        tokio::spawn(async move {
            loop {
                let now = role.borrow_and_update().clone();
                if !matches!(now, Role::Leading { term: t } if t == term) {
                    let why = match now {
                        Role::Deposed { why, .. } => Some(why),
                        Role::Standby { .. } => Some(format!(
                            "this server no longer coordinates the cluster (it led in term {term})"
                        )),
                        // A later term of this process: its journal is
                        // not this term's to fence.
                        Role::Leading { .. } => None,
                    };
                    if let Some(why) = why {
                        runs.fence(&why);
                        *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                    cancel.cancel();
                    return;
                }
                tokio::select! {
                    biased;
                    changed = role.changed() => if changed.is_err() {
                        cancel.cancel();
                        return;
                    },
                    _ = cancel.cancelled() => return,
                }
            }
        });
        token
    }

    /// Until `stop`: whenever this process leads, takes over the runs of
    /// earlier terms (at once, then every second, for runs registered
    /// late by a coordinator that was stopped rather than dead), and
    /// resumes its own runs that stopped without a durable end.
    pub async fn lead(self: Arc<Self>, stop: CancellationToken) {
        let mut role = self.role.clone();
        loop {
            let term = loop {
                if let Role::Leading { term } = *role.borrow_and_update() {
                    break term;
                }
                tokio::select! {
                    biased;
                    changed = role.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            };
            let leading = self.while_leading(term);
            // The runs of a term this process lost stop first (they were
            // cancelled as it was deposed); only then does its journal take
            // writes again, so that nothing they record on their way out
            // lands in a run this term resumes.
            let waiting = Instant::now();
            let mut said = false;
            loop {
                let left = self.lock_running().len();
                if left == 0 || leading.is_cancelled() {
                    break;
                }
                if !said && waiting.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(
                        "coordinator (term {term}): waiting for {left} runs of the term this server lost to stop before it coordinates"
                    );
                    said = true;
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = leading.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            if leading.is_cancelled() {
                continue;
            }
            self.runs.unfence();
            self.ready.store(term, Ordering::SeqCst);
            while !leading.is_cancelled() {
                self.take_over(term, &leading).await;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = leading.cancelled() => {}
                    _ = tokio::time::sleep(SCAN_EVERY) => {}
                }
            }
            let _ = self
                .ready
                .compare_exchange(term, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `run`, stopped here without a durable end, waits before it
    /// is resumed again.
    fn backing_off(&self, run: &str) -> bool {
        let retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        retry.get(run).is_some_and(|(at, _)| Instant::now() < *at)
    }

    /// One pass over the registry.
    async fn take_over(self: &Arc<Self>, term: u64, leading: &CancellationToken) {
        let keys = match self.registry.keys().await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("cannot list the cluster's runs in progress: {e}");
                return;
            }
        };
        for key in keys {
            let Ok(Some((value, revision))) = self.registry.entry(&key).await else {
                continue;
            };
            let Ok(reg) = serde_json::from_slice::<Registered>(&value) else {
                continue;
            };
            // A later term's, or running here: not this pass's. A run of
            // this term that is not running here stopped without a durable
            // end (the journal failed it): it is resumed like an earlier
            // term's, after a wait that grows each time.
            if reg.term > term
                || self.lock_running().contains(&reg.run)
                || self.backing_off(&reg.run)
                || self
                    .given_up
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&reg.run)
            {
                continue;
            }
            // A run its owner process runs is taken over once that process
            // stops beating.
            if let Some(owner) = &reg.owner {
                if super::owner::alive(&*self.owners, owner).await {
                    continue;
                }
            }
            let state = self.runs.state(&reg.run).await;
            if state != Ok(RunState::NotJournaled) {
                self.unjournaled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&reg.run);
            }
            match state {
                Ok(RunState::Ended) => {
                    let _ = self.registry.delete_expect_revision(&key, revision).await;
                }
                Ok(RunState::InProgress) => {
                    let mine = serde_json::to_vec(&Registered {
                        run: reg.run.clone(),
                        term,
                        at_ms: now_ms(),
                        owner: None,
                    })
                    .unwrap_or_default();
                    // Taken only if nobody changed it since it was read.
                    if self
                        .registry
                        .update(&key, mine.into(), revision)
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    // Checked again: a run of this term may have started
                    // here since the registry was read.
                    if !self.lock_running().insert(reg.run.clone()) {
                        continue;
                    }
                    let of = match &reg.owner {
                        Some(o) => format!("of the process {o}, which stopped beating"),
                        None if reg.term == term => {
                            "of this term, which stopped without a durable end".to_string()
                        }
                        None => format!("of term {}", reg.term),
                    };
                    tracing::warn!(
                        "coordinator (term {term}): taking over run {} {of}, resumed from the journal",
                        reg.run
                    );
                    tokio::spawn(self.clone().resume(reg.run, term, leading.child_token()));
                }
                Ok(RunState::NotJournaled) => {
                    // Its coordinator stopped between registering it and
                    // journaling it (and told its client), or the journal
                    // is slow: said once, forgotten after a while.
                    let first = *self
                        .unjournaled
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(reg.run.clone())
                        .or_insert_with(|| {
                            tracing::info!(
                                "run {} is registered under term {} but not in the journal; it is forgotten if it is not there within {:?}",
                                reg.run,
                                reg.term,
                                NEVER_JOURNALED
                            );
                            Instant::now()
                        });
                    if first.elapsed() > NEVER_JOURNALED {
                        // Only the entry as read: not a registration made
                        // again meanwhile.
                        if self
                            .registry
                            .delete_expect_revision(&key, revision)
                            .await
                            .is_ok()
                        {
                            tracing::info!(
                                "run {}: forgotten, never journaled (registered under term {})",
                                reg.run,
                                reg.term
                            );
                        }
                        self.unjournaled
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&reg.run);
                    }
                }
                Err(e) => tracing::warn!("run {}: {e}", reg.run),
            }
        }
    }

    /// Sends the replicas of the runs it resumes to `workers`; set once.
    pub fn use_workers(&self, workers: Arc<dyn RemoteReplicas>) {
        if let Some(runs) = &self.journal_runs {
            let _ = runs.workers.set(workers);
        }
    }

    async fn resume(self: Arc<Self>, run: String, term: u64, cancel: CancellationToken) {
        match self.runs.resume(&run, term, cancel).await {
            Ok(done) => match &done.journal_error {
                None => {
                    tracing::info!("run {run} ended: {}", done.stop);
                    self.retry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&run);
                    self.finished(&run, true).await;
                }
                Some(e) => {
                    let wait = self.retry_later(&run);
                    tracing::error!(
                        "run {run}: {e}; it is resumed again in {wait:?} unless another coordinator takes it"
                    );
                    self.finished(&run, false).await;
                }
            },
            Err(e) if !e.for_good => {
                let wait = self.retry_later(&run);
                tracing::warn!(
                    "run {run} cannot be resumed now ({}); tried again in {wait:?}",
                    e.why
                );
                self.lock_running().remove(&run);
            }
            Err(e) => {
                tracing::error!("run {run} cannot be resumed here: {}", e.why);
                self.lock_running().remove(&run);
                self.given_up
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run);
            }
        }
    }

    /// `run` is resumed here again after a wait that doubles each time
    /// (from [`SCAN_EVERY`] to [`RETRY_AT_MOST`]); the wait.
    fn retry_later(&self, run: &str) -> Duration {
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        let wait = retry
            .get(run)
            .map_or(SCAN_EVERY, |(_, w)| (*w * 2).min(RETRY_AT_MOST));
        retry.insert(run.to_string(), (Instant::now() + wait, wait));
        wait
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("role", &*self.role.borrow())
            .finish_non_exhaustive()
    }
}

/// The runs in `registry`, with their terms.
pub(crate) async fn registered(registry: &dyn Kv) -> Result<Vec<(String, u64)>, String> {
    let keys = registry.keys().await.map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for key in keys {
        if let Ok(Some((value, _))) = registry.entry(&key).await {
            if let Ok(r) = serde_json::from_slice::<Registered>(&value) {
                runs.push((r.run, r.term));
            }
        }
    }
    runs.sort();
    Ok(runs)
}
