//! The cluster's work queue: a coordinator hands replicas to workers
//! (`conclave worker`) through a JetStream work-queue stream, and takes
//! their results back.
//!
//! - Stream `CONCLAVE_NAME_WORK` (file storage, work-queue retention),
//!   one subject per team: `conclave.NAME.work.TEAM`. Each team has one
//!   durable pull consumer (`team-TEAM`) that all its workers share, with
//!   explicit acks, an ack wait ([`WorkSettings::ack_wait`]) that a worker
//!   extends with progress acks while it runs a long replica, and a
//!   bounded number of deliveries ([`WorkSettings::max_deliver`]). Work
//!   whose worker dies or stalls past its ack wait is redelivered to
//!   another; work given up after its last delivery fails its replica
//!   (the server's max-deliveries advisory), which the task may redraw.
//! - Results come back on the coordinator's own subject
//!   (`conclave.NAME.results.ID`), named in each item, as requests: the
//!   coordinator answers each one it received, and only then does the
//!   worker ack its item, so a result lost on the way (the NATS server
//!   restarting) leaves the item to be redelivered. A result counts
//!   once, by (run, task, replica): the first one in; a late or duplicate
//!   one (a stalled worker that woke up, a redelivery that raced) is
//!   ignored and said so. Each item carries a random ticket that its
//!   result must carry back; a result with another ticket (forged by
//!   someone who can publish on the subject but was not delivered the
//!   item) is refused, said so, and leaves the replica waiting for its
//!   real result.
//! - A replica the coordinator no longer needs (an early decision, a lost
//!   hedge, a cancelled run) is withdrawn on `conclave.NAME.cancel`:
//!   a worker running it stops, one that takes it later drops it.
//! - Workers put a heartbeat in bucket `conclave-NAME-workers` every
//!   second, kept [`HEARTBEAT_TTL`]: a worker that stops beating is gone
//!   from it within that time. A team's replicas run in the coordinator's
//!   process while no live worker serves it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::kv::Kv;
use super::wire::{Nats, Note, Wire};
use crate::journal::jetstream::{token, ClusterConfig};
use crate::team::remote::{RemoteReplicas, ReplicaDone, ReplicaJob};

/// How often a worker beats, and how long its beat is kept.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(5);

/// Waits before each try to remove a withdrawn item (about 30 s in all,
/// past a NATS server's restart).
const REMOVE_RETRIES: [u64; 6] = [0, 1000, 2000, 4000, 8000, 15000];

/// Tries to queue a replica (each waits for the server's reply).
const QUEUE_TRIES: u32 = 3;

/// Round trips kept for the hedge delay.
const TIMES_KEPT: usize = 256;

/// The work queue's settings, set by the first worker of a team (the
/// consumer keeps them).
#[derive(Clone, Copy, Debug)]
pub struct WorkSettings {
    /// How long a delivery may go without an ack or a progress ack before
    /// it is redelivered. Default 30 s; workers send progress every third
    /// of it.
    pub ack_wait: Duration,
    /// Deliveries of one item at most (the first included). Default 5.
    pub max_deliver: i64,
}

impl Default for WorkSettings {
    fn default() -> Self {
        WorkSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }
}

/// The names of a cluster's work queue.
pub struct Names {
    pub name: String,
}

impl Names {
    pub fn of(config: &ClusterConfig) -> Self {
        Names {
            name: config.name.clone(),
        }
    }
    pub fn stream(&self) -> String {
        format!("CONCLAVE_{}_WORK", self.name.to_uppercase())
    }
    pub fn subject(&self, team: &str) -> String {
        format!("conclave.{}.work.{}", self.name, token(team))
    }
    pub fn consumer(&self, team: &str) -> String {
        format!("team-{}", token(team))
    }
    pub fn cancel(&self) -> String {
        format!("conclave.{}.cancel", self.name)
    }
    pub fn bucket(&self) -> String {
        format!("conclave-{}-workers", self.name)
    }
    /// Where the server says it gave up on an item of the work stream.
    pub fn advisories(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.stream()
        )
    }
}

/// One item on the queue: the replica, and where its result goes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkItem {
    pub(crate) reply: String,
    pub(crate) job: ReplicaJob,
    /// A random token the result must carry back: a result counts only
    /// from a worker that was delivered this item, not from anyone who can
    /// publish on the coordinator's subject and guess a run, a task and a
    /// replica number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) ticket: String,
    /// The term of the coordinator that queued it (none from a `run`
    /// process): a worker drops an item of a term older than the cluster's
    /// coordinator's, a deposed coordinator's scheduling decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) term: Option<u64>,
}

/// A withdrawn replica: the item its coordinator queued for `(run, task,
/// replica)` with results to `reply`. The coordinator is part of the key:
/// a successor that takes the run over draws the same replica numbers
/// again, and what a deposed coordinator withdraws as it stops must not
/// drop the successor's items. (A withdrawal from an older coordinator,
/// with no `reply`, matches nothing.) So is its term: a coordinator that
/// was deposed and leads again in a later term takes its own runs over,
/// from the same inbox, and what it withdrew as it stopped must not drop
/// what it queues in the new term.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Withdrawn {
    pub(crate) run: String,
    pub(crate) task: String,
    pub(crate) replica: u32,
    #[serde(default)]
    pub(crate) reply: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) term: Option<u64>,
}

/// A worker's heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// `host/pid`.
    pub id: String,
    /// The teams it serves, by name.
    pub teams: Vec<String>,
    pub tags: Vec<String>,
    pub max_inflight: usize,
    /// Replicas it is running now, and has finished since it started.
    pub inflight: usize,
    pub done: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Team `team`'s consumer of the work stream, made with `settings` when
/// it is not there (a consumer keeps the settings it was made with).
pub async fn consumer(
    work: &jetstream::stream::Stream,
    names: &Names,
    team: &str,
    settings: WorkSettings,
) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>, String> {
    work.get_or_create_consumer(
        &names.consumer(team),
        jetstream::consumer::pull::Config {
            durable_name: Some(names.consumer(team)),
            filter_subject: names.subject(team),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("cannot open the work consumer for team {team}: {e}"))
}

/// The stream, made when it is not there.
pub async fn stream(
    js: &jetstream::Context,
    names: &Names,
    config: &ClusterConfig,
) -> Result<jetstream::stream::Stream, String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: names.stream(),
        subjects: vec![format!("conclave.{}.work.>", names.name)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        // Work nobody took in a day is nobody's.
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot open the work stream {}: {e}", names.stream()))
}

/// The live workers' heartbeats (none when the bucket cannot be read).
pub async fn workers(kv: &dyn Kv) -> Vec<Beat> {
    read_workers(kv).await.unwrap_or_default()
}

async fn read_workers(kv: &dyn Kv) -> Result<Vec<Beat>, String> {
    let mut beats = Vec::new();
    for k in kv.keys().await.map_err(|e| e.to_string())? {
        if let Some(v) = kv.get(&k).await.map_err(|e| e.to_string())? {
            if let Ok(b) = serde_json::from_slice::<Beat>(&v) {
                beats.push(b);
            }
        }
    }
    beats.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(beats)
}

/// A result awaited.
struct Pending {
    tx: oneshot::Sender<Result<ReplicaDone, String>>,
    /// The ticket its item carries.
    ticket: String,
}

type Key = (String, String, u32);

struct Inner {
    wire: Arc<dyn Wire>,
    names: Names,
    /// This coordinator's results subject.
    inbox: String,
    pending: Mutex<HashMap<Key, Pending>>,
    /// Which replica each stream sequence carries, while it is pending.
    by_seq: Mutex<HashMap<u64, Key>>,
    beats: Mutex<Vec<Beat>>,
    times: Mutex<VecDeque<Duration>>,
    ignored: AtomicU64,
    /// Results refused for a ticket that is not their item's.
    refused: AtomicU64,
    /// Where this process stands in the election, if it takes part.
    role: Option<tokio::sync::watch::Receiver<super::lease::Role>>,
}

impl Inner {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A result in: to its replica's waiter, or ignored when it has none.
    fn arrived(&self, done: ReplicaDone) {
        let key = (done.run.clone(), done.task.clone(), done.replica);
        let waiter = {
            let mut pending = self.lock_pending();
            match pending.get(&key) {
                Some(p) if p.ticket != done.ticket => {
                    drop(pending);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "cluster: refused a result of run {} task {} replica {} that says it is from worker {}: it does not carry its item's ticket (forged by a publisher that was not delivered the item); the replica waits for its real result",
                        done.run, done.task, done.replica, done.worker
                    );
                    return;
                }
                _ => pending.remove(&key),
            }
        };
        match waiter {
            Some(p) => {
                let mut t = self.times.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TIMES_KEPT {
                    t.pop_front();
                }
                t.push_back(Duration::from_secs_f64(done.ms.max(0.0) / 1e3));
                drop(t);
                let _ = p.tx.send(Ok(done));
            }
            None => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: ignored a result of run {} task {} replica {} from worker {} (delivery {}): that replica was already counted or withdrawn",
                    done.run, done.task, done.replica, done.worker, done.attempt
                );
            }
        }
    }

    /// The server gave up on the item at stream sequence `seq`.
    fn given_up(&self, seq: u64, deliveries: u64) {
        let key = self
            .by_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        if let Some(key) = key {
            if let Some(p) = self.lock_pending().remove(&key) {
                let _ = p.tx.send(Err(format!(
                    "given up after {deliveries} deliveries: each worker that took it died or stalled past its ack wait"
                )));
            }
        }
    }
}

/// The coordinator's side of the work queue: sends replicas, takes results.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

impl WorkQueue {
    /// Opens the cluster's work queue for a coordinator; `role`: its place
    /// in the election, whose term every item it queues carries (`None`: a
    /// `run` process, which takes no part).
    pub async fn open(
        config: &ClusterConfig,
        role: Option<tokio::sync::watch::Receiver<super::lease::Role>>,
    ) -> Result<Self, String> {
        let client = config
            .connect("coordinator (work)")
            .await
            .map_err(|e| format!("{}: {e}", config.url))?;
        let js = jetstream::new(client.clone());
        let names = Names::of(config);
        stream(&js, &names, config).await?;
        let kv = super::bucket(
            &js,
            jetstream::kv::Config {
                bucket: names.bucket(),
                max_age: HEARTBEAT_TTL,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        // This queue's own inbox (the process, and a random part: a process
        // that coordinates again gets another), which its withdrawals name.
        let process = token(
            &super::lease::Holder::this_process(None)
                .id
                .replace('/', "-"),
        );
        WorkQueue::over(
            Arc::new(Nats { client, js }),
            Arc::new(kv),
            names,
            &process,
            role,
        )
        .await
    }

    /// The queue over any wire and heartbeat bucket (the simulation's
    /// model, or the server's); `process` names this process in its
    /// inbox's subject.
    pub(crate) async fn over(
        wire: Arc<dyn Wire>,
        kv: Arc<dyn Kv>,
        names: Names,
        process: &str,
        role: Option<tokio::sync::watch::Receiver<super::lease::Role>>,
    ) -> Result<Self, String> {
        let inbox = format!(
            "conclave.{}.results.{process}-{:016x}",
            names.name,
            rand::random::<u64>()
        );
        let results = wire.subscribe(&inbox).await?;
        let advisories = wire
            .subscribe(&names.advisories())
            .await
            .map_err(|e| format!("cannot subscribe to the work stream's advisories: {e}"))?;
        let inner = Arc::new(Inner {
            wire,
            names,
            inbox,
            pending: Mutex::default(),
            by_seq: Mutex::default(),
            beats: Mutex::default(),
            times: Mutex::default(),
            ignored: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            role,
        });
        tokio::spawn(take_results(Arc::downgrade(&inner), results));
        tokio::spawn(take_advisories(Arc::downgrade(&inner), advisories));
        *inner.beats.lock().unwrap_or_else(|p| p.into_inner()) = workers(kv.as_ref()).await;
        tokio::spawn(follow_workers(Arc::downgrade(&inner), kv));
        Ok(WorkQueue { inner })
    }

    /// Results that came in for a replica already counted or withdrawn.
    pub fn ignored(&self) -> u64 {
        self.inner.ignored.load(Ordering::Relaxed)
    }

    /// Results refused because they did not carry their item's ticket.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The live workers, as last read.
    pub fn workers(&self) -> Vec<Beat> {
        self.inner
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn take_results(inner: Weak<Inner>, mut sub: BoxStream<'static, Note>) {
    while let Some(m) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match serde_json::from_slice::<ReplicaDone>(&m.payload) {
            Ok(done) => inner.arrived(done),
            Err(e) => tracing::warn!("cluster: a result that does not read: {e}"),
        }
        // Received (counted or ignored): the worker may ack its item.
        if let Some(reply) = m.reply {
            let _ = inner.wire.publish(&reply, Bytes::new()).await;
        }
    }
}

async fn take_advisories(inner: Weak<Inner>, mut sub: BoxStream<'static, Note>) {
    #[derive(Deserialize)]
    struct MaxDeliveries {
        stream_seq: u64,
        #[serde(default)]
        deliveries: u64,
    }
    while let Some(m) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        if let Ok(a) = serde_json::from_slice::<MaxDeliveries>(&m.payload) {
            inner.given_up(a.stream_seq, a.deliveries);
        }
    }
}

/// Rereads the heartbeats every second. While the bucket cannot be read
/// (the NATS server restarting), the last list stands, for as long as a
/// heartbeat is kept; after that, no worker is taken to be alive.
async fn follow_workers(inner: Weak<Inner>, kv: Arc<dyn Kv>) {
    let mut read_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let read = read_workers(kv.as_ref()).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut beats = inner.beats.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(b) => {
                *beats = b;
                read_at = tokio::time::Instant::now();
            }
            Err(_) if read_at.elapsed() > HEARTBEAT_TTL => beats.clear(),
            Err(_) => {}
        }
    }
}

/// Where an item landed on the stream, once it did, and whether its
/// replica was withdrawn: whichever of the queueing and the withdrawal
/// comes second removes the item (a replica withdrawn while it was being
/// queued still lands on the stream).
#[derive(Default)]
struct Queued {
    seq: std::sync::OnceLock<u64>,
    withdrawn: std::sync::atomic::AtomicBool,
}

/// Removes the item at `seq` from the work stream, retrying past a NATS
/// server's restart.
async fn remove(wire: Arc<dyn Wire>, stream: String, seq: u64, what: String) {
    let mut last = String::new();
    for wait in REMOVE_RETRIES {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match wire.remove(&stream, seq).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    tracing::warn!(
        "cluster: cannot remove withdrawn {what} from the work stream ({last}); a worker that did not hear its withdrawal may still run it"
    );
}

/// Withdraws its replica when dropped before the result came in.
struct Withdraw {
    inner: Arc<Inner>,
    key: Key,
    seq: Option<u64>,
    queued: Arc<Queued>,
    /// The term its item carries.
    term: Option<u64>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            self.inner
                .by_seq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&seq);
        }
        if self.inner.lock_pending().remove(&self.key).is_none() {
            return;
        }
        let (run, task, replica) = self.key.clone();
        let w = Withdrawn {
            run,
            task,
            replica,
            reply: self.inner.inbox.clone(),
            term: self.term,
        };
        let wire = self.inner.wire.clone();
        let subject = self.inner.names.cancel();
        self.queued.withdrawn.store(true, Ordering::SeqCst);
        let (stream, seq) = (self.inner.names.stream(), self.queued.seq.get().copied());
        if let (Ok(body), Ok(rt)) = (
            serde_json::to_vec(&w),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(async move {
                // A worker running it stops...
                let _ = wire.publish(&subject, body.into()).await;
                // ...and none is given it later, not even one that was not
                // listening when the withdrawal went out (it started later,
                // or the server was restarting).
                if let Some(seq) = seq {
                    let what = format!("replica {} of run {} task {}", w.replica, w.run, w.task);
                    remove(wire, stream, seq, what).await;
                }
            });
        }
    }
}

impl RemoteReplicas for WorkQueue {
    fn available(&self, team: &str) -> bool {
        self.inner
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|b| b.teams.iter().any(|t| t == team))
    }

    fn run(&self, job: ReplicaJob) -> BoxFuture<'static, Result<ReplicaDone, String>> {
        let inner = self.inner.clone();
        let me = self.clone();
        Box::pin(async move {
            let key = job.key();
            let team = job.team.clone();
            let (tx, mut rx) = oneshot::channel();
            let ticket = format!("{:032x}", rand::random::<u128>());
            inner.lock_pending().insert(
                key.clone(),
                Pending {
                    tx,
                    ticket: ticket.clone(),
                },
            );
            let subject = inner.names.subject(&team);
            use super::lease::Role;
            let term = inner.role.as_ref().and_then(|r| match &*r.borrow() {
                Role::Leading { term } | Role::Deposed { term, .. } => Some(*term),
                Role::Standby { .. } => None,
            });
            let queued = Arc::new(Queued::default());
            let mut withdraw = Withdraw {
                inner: inner.clone(),
                key,
                seq: None,
                queued: queued.clone(),
                term,
            };
            let item = WorkItem {
                reply: inner.inbox.clone(),
                job,
                ticket,
                term,
            };
            let body = serde_json::to_vec(&item).map_err(|e| e.to_string())?;
            // Sent here, in the order the replicas were asked for; its
            // acknowledgement awaited by a task of its own, which this wait
            // being dropped does not stop: see [`Queued`].
            let what = format!(
                "replica {} of run {} task {}",
                withdraw.key.2, withdraw.key.0, withdraw.key.1
            );
            let (wire, stream) = (inner.wire.clone(), inner.names.stream());
            // The ticket names the message: queued again after a lost
            // reply, it lands once, and its sequence is learnt.
            let id = item.ticket.clone();
            let body = Bytes::from(body);
            let first = wire.queue(&subject, &id, body.clone()).await;
            let seq = tokio::spawn(async move {
                let mut sent = first;
                let mut tries = 1;
                let seq = loop {
                    let e = match sent {
                        Ok(ack) => match ack.await {
                            Ok(seq) => break seq,
                            Err(e) => e,
                        },
                        Err(e) => e,
                    };
                    if tries == QUEUE_TRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tries += 1;
                    sent = wire.queue(&subject, &id, body.clone()).await;
                };
                let _ = queued.seq.set(seq);
                if queued.withdrawn.load(Ordering::SeqCst) {
                    remove(wire, stream, seq, what).await;
                }
                Ok::<u64, String>(seq)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("cannot queue the replica: {e}"))?;
            withdraw.seq = Some(seq);
            inner
                .by_seq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, withdraw.key.clone());
            loop {
                tokio::select! {
                    biased;
                    r = &mut rx => {
                        return r.unwrap_or_else(|_| Err("the work queue closed".into()));
                    }
                    _ = tokio::time::sleep(HEARTBEAT_EVERY) => {
                        if !me.available(&team) {
                            return Err(format!(
                                "no live worker serves team {team} any more (none has beaten for {:?})",
                                HEARTBEAT_TTL
                            ));
                        }
                    }
                }
            }
        })
    }

    fn late_after(&self, q: f64, min_samples: usize) -> Option<Duration> {
        let t = self.inner.times.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() < min_samples.max(1) {
            return None;
        }
        let mut v: Vec<Duration> = t.iter().copied().collect();
        v.sort();
        let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
        Some(v[k - 1])
    }
}
