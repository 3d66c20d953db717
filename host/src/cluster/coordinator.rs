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

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::Role;
use crate::journal::jetstream::{token, ClusterConfig};
use crate::journal::{now_ms, Journal, JournalError};
use crate::plugin::PluginRuntime;
use crate::team::events::{Event, Observer};

/// How often the holder looks for runs to take over.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// A registered run that never reached the journal (its coordinator died
/// or was deposed between registering and journaling it; its client was
/// answered, or lost its connection) is forgotten once a coordinator has
/// found it missing from the journal for this long.
const NEVER_JOURNALED: Duration = Duration::from_secs(60);

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

/// The coordinator's side of cluster mode.
pub struct Coordinator {
    registry: kv::Store,
    /// The beats of `conclave run --cluster` processes that own runs.
    owners: kv::Store,
    journal: Arc<dyn Journal>,
    runtime: Arc<PluginRuntime>,
    builtin_dir: PathBuf,
    role: watch::Receiver<Role>,
    /// Runs this process is running (served or resumed).
    running: Mutex<HashSet<String>>,
    /// Runs that could not be resumed here (reported once).
    given_up: Mutex<HashSet<String>>,
    /// Registered runs not found in the journal, and when this process
    /// first found them so (its own clock: another's may be off).
    unjournaled: Mutex<std::collections::HashMap<String, Instant>>,
    /// Where the replicas of resumed runs go (the cluster's workers).
    workers: std::sync::OnceLock<Arc<dyn crate::team::remote::RemoteReplicas>>,
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
        Ok(Arc::new(Coordinator {
            registry,
            owners,
            journal,
            runtime,
            builtin_dir,
            role,
            running: Default::default(),
            given_up: Default::default(),
            unjournaled: Default::default(),
            workers: Default::default(),
            ready: AtomicU64::new(0),
            lost: Default::default(),
        }))
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
        if let Err(e) = self.registry.put(token(run), value.into()).await {
            self.lock_running().remove(run);
            return Err(format!("cannot register run {run} with the cluster: {e}"));
        }
        Ok(())
    }

    /// `run` is no longer running here. `durable`: its end is in the
    /// journal, so it leaves the registry; otherwise it stays there for
    /// the next coordinator to resume.
    pub async fn finished(&self, run: &str, durable: bool) {
        self.lock_running().remove(run);
        if durable {
            if let Err(e) = self.registry.delete(token(run)).await {
                tracing::warn!("run {run}: cannot leave the cluster's registry: {e}");
            }
        }
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
        let journal = self.journal.clone();
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
                        journal.fence(&why);
                        *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                    cancel.cancel();
                    return;
                }
                tokio::select! {
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
    /// late by a coordinator that was stopped rather than dead).
    pub async fn lead(self: Arc<Self>, stop: CancellationToken) {
        let mut role = self.role.clone();
        loop {
            let term = loop {
                if let Role::Leading { term } = *role.borrow_and_update() {
                    break term;
                }
                tokio::select! {
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
                    _ = stop.cancelled() => return,
                    _ = leading.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            if leading.is_cancelled() {
                continue;
            }
            self.journal.unfence();
            self.ready.store(term, Ordering::SeqCst);
            while !leading.is_cancelled() {
                self.take_over(term, &leading).await;
                tokio::select! {
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

    /// One pass over the registry.
    async fn take_over(self: &Arc<Self>, term: u64, leading: &CancellationToken) {
        let keys: Vec<String> = match self.registry.keys().await {
            Ok(k) => k.try_collect().await.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("cannot list the cluster's runs in progress: {e}");
                return;
            }
        };
        for key in keys {
            let Ok(Some(entry)) = self.registry.entry(key.as_str()).await else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(reg) = serde_json::from_slice::<Registered>(&entry.value) else {
                continue;
            };
            if reg.term >= term
                || self.lock_running().contains(&reg.run)
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
                if super::owner::alive(&self.owners, owner).await {
                    continue;
                }
            }
            let journal = self.journal.clone();
            let run = reg.run.clone();
            let read = tokio::task::spawn_blocking(move || journal.read(&run)).await;
            if !matches!(read, Ok(Err(JournalError::NoRun { .. }))) {
                self.unjournaled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&reg.run);
            }
            match read {
                Ok(Ok(log)) if log.ended().is_some() => {
                    let _ = self.registry.delete(key.as_str()).await;
                }
                Ok(Ok(_)) => {
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
                        .update(key.as_str(), mine.into(), entry.revision)
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    self.lock_running().insert(reg.run.clone());
                    let of = match &reg.owner {
                        Some(o) => format!("of the process {o}, which stopped beating"),
                        None => format!("of term {}", reg.term),
                    };
                    tracing::warn!(
                        "coordinator (term {term}): taking over run {} {of}, resumed from the journal",
                        reg.run
                    );
                    tokio::spawn(self.clone().resume(reg.run, leading.child_token()));
                }
                Ok(Err(JournalError::NoRun { .. })) => {
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
                            .delete_expect_revision(key.as_str(), Some(entry.revision))
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
                Ok(Err(e)) => tracing::warn!("run {}: {e}", reg.run),
                Err(e) => tracing::warn!("run {}: {e}", reg.run),
            }
        }
    }

    /// Sends the replicas of the runs it resumes to `workers`; set once.
    pub fn use_workers(&self, workers: Arc<dyn crate::team::remote::RemoteReplicas>) {
        let _ = self.workers.set(workers);
    }

    async fn resume(self: Arc<Self>, run: String, cancel: CancellationToken) {
        let observer: Arc<dyn Observer> = Arc::new(|run: &str, e: &Event| {
            if let Event::TaskEnded { task, result } = e {
                tracing::info!("run {run}: task {task}: {}", result.stop);
            }
        });
        let resumed = crate::journal::resume::resume(
            self.journal.clone(),
            &run,
            self.runtime.clone(),
            &self.builtin_dir,
            observer,
            cancel,
            self.workers.get().cloned(),
            false,
        )
        .await;
        match resumed {
            Ok(done) => {
                let durable = done.journal_error.is_none();
                if durable {
                    tracing::info!("run {run} ended: {}", done.result.stop);
                } else if let Some(e) = &done.journal_error {
                    tracing::error!("run {run}: {e}");
                }
                self.finished(&run, durable).await;
            }
            Err(e) => {
                tracing::error!("run {run} cannot be resumed here: {e}");
                self.lock_running().remove(&run);
                self.given_up
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run);
            }
        }
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
pub(crate) async fn registered(registry: &kv::Store) -> Result<Vec<(String, u64)>, String> {
    let keys: Vec<String> = match registry.keys().await {
        Ok(k) => k.try_collect().await.map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    let mut runs = Vec::new();
    for key in keys {
        if let Ok(Some(e)) = registry.entry(key.as_str()).await {
            if let Ok(r) = serde_json::from_slice::<Registered>(&e.value) {
                runs.push((r.run, r.term));
            }
        }
    }
    runs.sort();
    Ok(runs)
}
