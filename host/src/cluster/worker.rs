//! `conclave worker`: runs replicas of the teams it was given for any
//! coordinator of the cluster, from the work queue ([`super::work`]).
//!
//! A worker takes one item at a time per free slot (`max_inflight` slots),
//! sends a progress ack every third of the ack wait while the replica
//! runs (so a long model call is not taken for a dead worker), publishes
//! the result to the coordinator that asked, and then acks the item. It
//! beats in the workers bucket every second. A replica withdrawn by its
//! coordinator is stopped (or dropped when taken later). A worker runs
//! only the team spec it was given: an item for another version of the
//! team (its SHA-256 differs) fails that replica with the reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::kv::Kv;
use super::wire::{Ack, Delivery, Nats, Pull, Unanswered, Wire};
use super::work::{
    stream, Beat, Names, Withdrawn, WorkItem, WorkSettings, HEARTBEAT_EVERY, HEARTBEAT_TTL,
};
use crate::journal::jetstream::ClusterConfig;
use crate::team::job::PreparedTeam;
use crate::team::remote::{ReplicaDone, ReplicaJob};

/// How long one pull for work waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long a coordinator may take to say it has a result.
const RESULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Withdrawn replicas remembered, for items taken after their withdrawal.
const WITHDRAWN_KEPT: usize = 4096;

/// A worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub cluster: ClusterConfig,
    /// Replicas run at once (default 4).
    pub max_inflight: usize,
    /// Labels shown in `conclave cluster`.
    pub tags: Vec<String>,
    /// The queue's settings, if this worker is the first of a team.
    pub settings: WorkSettings,
}

/// What a worker reports as it goes (the CLI prints it).
pub type Say = Arc<dyn Fn(String) + Send + Sync>;

/// What runs a team's replicas on a worker: the team runtime (a
/// [`PreparedTeam`]), or the simulation's model of it.
#[async_trait::async_trait]
pub(crate) trait Serves: Send + Sync {
    /// The SHA-256 of the team's spec.
    fn digest(&self) -> String;
    /// Runs one replica.
    async fn work(&self, job: &ReplicaJob, worker: &str, attempt: u32) -> ReplicaDone;
}

#[async_trait::async_trait]
impl Serves for PreparedTeam {
    fn digest(&self) -> String {
        PreparedTeam::digest(self)
    }

    async fn work(&self, job: &ReplicaJob, worker: &str, attempt: u32) -> ReplicaDone {
        PreparedTeam::work(self, job, worker, attempt).await
    }
}

/// Opens the coordinator lease's bucket, once it is there.
pub(crate) type OpenLease = Arc<dyn Fn() -> BoxFuture<'static, Option<Arc<dyn Kv>>> + Send + Sync>;

/// A team a worker serves: its name, what runs its replicas, and its
/// consumer of the work stream.
pub(crate) type Served = (String, Arc<dyn Serves>, Arc<dyn Pull>);

/// A worker's parts, over any wire (the server's, or the simulation's).
pub(crate) struct Serving {
    /// `host/pid`.
    pub(crate) id: String,
    /// Where it serves (for its first words).
    pub(crate) place: String,
    pub(crate) wire: Arc<dyn Wire>,
    /// The workers' heartbeat bucket.
    pub(crate) beats: Arc<dyn Kv>,
    pub(crate) bucket: String,
    pub(crate) lease: OpenLease,
    pub(crate) cancel_subject: String,
    pub(crate) teams: Vec<Served>,
    pub(crate) ack_wait: Duration,
    pub(crate) max_inflight: usize,
    pub(crate) tags: Vec<String>,
}

struct State {
    id: String,
    wire: Arc<dyn Wire>,
    teams: HashMap<String, Arc<dyn Serves>>,
    inflight: AtomicUsize,
    done: AtomicU64,
    running: Mutex<HashMap<Withdrawn, CancellationToken>>,
    withdrawn: Mutex<(HashSet<Withdrawn>, VecDeque<Withdrawn>)>,
    progress_every: Duration,
    say: Say,
    /// The term of the cluster's coordinator, as last read (0: unknown).
    term: AtomicU64,
}

impl State {
    fn withdrawn(&self, w: &Withdrawn) -> bool {
        self.withdrawn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(w)
    }

    fn withdraw(&self, w: Withdrawn) {
        if let Some(t) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&w)
        {
            t.cancel();
        }
        let mut g = self.withdrawn.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.insert(w.clone()) {
            g.1.push_back(w);
            if g.1.len() > WITHDRAWN_KEPT {
                if let Some(old) = g.1.pop_front() {
                    g.0.remove(&old);
                }
            }
        }
    }
}

/// Runs a worker for `teams` until `stop` is cancelled (the replicas in
/// flight are finished first) or the connection fails.
pub async fn run(
    config: WorkerConfig,
    teams: Vec<Arc<PreparedTeam>>,
    stop: CancellationToken,
    say: Say,
) -> Result<(), String> {
    let url = &config.cluster.url;
    let client = config
        .cluster
        .connect("worker")
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let js = jetstream::new(client.clone());
    let names = Names::of(&config.cluster);
    let work = stream(&js, &names, &config.cluster).await?;
    let kv = super::bucket(
        &js,
        jetstream::kv::Config {
            bucket: names.bucket(),
            max_age: HEARTBEAT_TTL,
            num_replicas: config.cluster.replicas,
            ..Default::default()
        },
    )
    .await?;
    let mut consumers = Vec::new();
    for t in &teams {
        let team = t.spec().team.name.clone();
        let c = super::work::consumer(&work, &names, &team, config.settings).await?;
        let ack_wait = c.cached_info().config.ack_wait;
        consumers.push((team, c, ack_wait));
    }
    let ack_wait = consumers
        .iter()
        .map(|(_, _, w)| *w)
        .min()
        .unwrap_or(config.settings.ack_wait);
    let lease_bucket = format!("conclave-{}-lease", config.cluster.name);
    let lease: OpenLease = Arc::new(move || {
        let (js, bucket) = (js.clone(), lease_bucket.clone());
        Box::pin(async move {
            js.get_key_value(bucket)
                .await
                .ok()
                .map(|kv| Arc::new(kv) as Arc<dyn Kv>)
        })
    });
    let by_name: HashMap<String, Arc<PreparedTeam>> = teams
        .iter()
        .map(|t| (t.spec().team.name.clone(), t.clone()))
        .collect();
    serve(
        Serving {
            id: super::lease::Holder::this_process(None).id,
            place: format!("on {url} (cluster {})", config.cluster.name),
            wire: Arc::new(Nats {
                client: client.clone(),
                js: jetstream::new(client),
            }),
            beats: Arc::new(kv),
            bucket: names.bucket(),
            lease,
            cancel_subject: names.cancel(),
            teams: consumers
                .into_iter()
                .map(|(team, c, _)| {
                    let t = by_name[&team].clone() as Arc<dyn Serves>;
                    (team, t, Arc::new(c) as Arc<dyn Pull>)
                })
                .collect(),
            ack_wait,
            max_inflight: config.max_inflight,
            tags: config.tags,
        },
        stop,
        say,
    )
    .await
}

/// Runs a worker over `s` until `stop` is cancelled (the replicas in
/// flight are finished first) or a pull fails for good.
pub(crate) async fn serve(s: Serving, stop: CancellationToken, say: Say) -> Result<(), String> {
    let id = s.id.clone();
    let max_inflight = s.max_inflight;
    let state = Arc::new(State {
        id: id.clone(),
        wire: s.wire.clone(),
        teams: s
            .teams
            .iter()
            .map(|(name, t, _)| (name.clone(), t.clone()))
            .collect(),
        inflight: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        running: Mutex::default(),
        withdrawn: Mutex::default(),
        progress_every: (s.ack_wait / 3).max(Duration::from_millis(100)),
        say: say.clone(),
        term: AtomicU64::new(0),
    });
    let mut lease: Option<Arc<dyn Kv>> = None;
    let mut cancels = s.wire.subscribe(&s.cancel_subject).await?;
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(m) = cancels.next().await {
                if let Ok(w) = serde_json::from_slice::<Withdrawn>(&m.payload) {
                    state.withdraw(w);
                }
            }
        });
    }
    let tags = s.tags.clone();
    let beat = |state: &State| Beat {
        id: state.id.clone(),
        teams: state.teams.keys().cloned().collect(),
        tags: tags.clone(),
        max_inflight,
        inflight: state.inflight.load(Ordering::Relaxed),
        done: state.done.load(Ordering::Relaxed),
        at_ms: crate::journal::now_ms(),
    };
    let key = token_key(&id);
    let kv = s.beats.clone();
    let put = |b: Beat| {
        let kv = kv.clone();
        let key = key.clone();
        async move {
            let body = serde_json::to_vec(&b).unwrap_or_default();
            kv.put(&key, body.into()).await.map_err(|e| e.to_string())
        }
    };
    put(beat(&state))
        .await
        .map_err(|e| format!("cannot beat in {}: {e}", s.bucket))?;
    let mut names: Vec<String> = state.teams.keys().cloned().collect();
    names.sort();
    say(format!(
        "worker {id}: serving teams {} {}, {} at once, ack wait {:?}",
        names.join(", "),
        s.place,
        max_inflight,
        s.ack_wait
    ));
    read_term(&s.lease, &mut lease, &state).await;
    let slots = Arc::new(Semaphore::new(max_inflight.max(1)));
    let mut pulls = tokio::task::JoinSet::new();
    for (team, _, consumer) in s.teams {
        let (state, slots, stop) = (state.clone(), slots.clone(), stop.clone());
        pulls.spawn(async move {
            loop {
                let permit = tokio::select! {
                   biased;
                    _ = stop.cancelled() => return Ok(()),
                    p = slots.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
                };
                match consumer.next(PULL_EXPIRES).await {
                    Ok(Some(msg)) => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            handle(&state, msg).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        (state.say)(format!("worker: cannot pull work for team {team}: {e}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = beats.tick() => {
                if let Err(e) = put(beat(&state)).await {
                    (state.say)(format!("worker {id}: heartbeat failed: {e}"));
                }
                read_term(&s.lease, &mut lease, &state).await;
            }
            r = pulls.join_next() => {
                if let Some(Ok(Err(e))) = r {
                    return Err(e);
                }
            }
        }
    }
    // Finish what is running, then leave the bucket.
    let _ = slots.acquire_many(max_inflight.max(1) as u32).await;
    let _ = kv.delete(&key).await;
    Ok(())
}

/// Reads the term of the cluster's coordinator from the lease (terms only
/// grow); opens the lease's bucket once it is there.
async fn read_term(open: &OpenLease, lease: &mut Option<Arc<dyn Kv>>, state: &State) {
    if lease.is_none() {
        *lease = open().await;
    }
    if let Some(kv) = lease.as_ref() {
        if let Ok(Some(v)) = kv.get(super::lease::KEY).await {
            if let Ok(h) = serde_json::from_slice::<super::lease::Holder>(&v) {
                state.term.fetch_max(h.term.unwrap_or(0), Ordering::Relaxed);
            }
        }
    }
}

fn token_key(id: &str) -> String {
    crate::journal::jetstream::token(&id.replace('/', "-"))
}

/// One delivered item: run it, answer, ack.
async fn handle(state: &Arc<State>, msg: Box<dyn Delivery>) {
    let attempt = msg.delivered();
    let item = match serde_json::from_slice::<WorkItem>(msg.payload()) {
        Ok(i) => i,
        Err(e) => {
            (state.say)(format!(
                "worker {}: dropped an item that does not read: {e}",
                state.id
            ));
            let _ = msg.ack(Ack::Term).await;
            return;
        }
    };
    let job = item.job;
    let w = Withdrawn {
        run: job.run.clone(),
        task: job.task.clone(),
        replica: job.replica,
        reply: item.reply.clone(),
        term: item.term,
    };
    let what = format!(
        "run {} task {} replica {} (delivery {attempt})",
        job.run, job.task, job.replica
    );
    let now = state.term.load(Ordering::Relaxed);
    if let Some(term) = item.term.filter(|t| *t < now) {
        (state.say)(format!(
            "worker {}: dropped {what}: queued by a deposed coordinator (term {term}; the cluster's coordinator has term {now})",
            state.id
        ));
        let _ = msg.ack(Ack::Term).await;
        return;
    }
    if state.withdrawn(&w) {
        (state.say)(format!(
            "worker {}: dropped {what}: withdrawn by its coordinator",
            state.id
        ));
        let _ = msg.ack(Ack::Done).await;
        return;
    }
    let done = match state.teams.get(&job.team) {
        None => ReplicaDone::refused(
            &job,
            &state.id,
            attempt,
            format!("worker {} does not serve team {}", state.id, job.team),
        ),
        Some(t) if t.digest() != job.digest => ReplicaDone::refused(
            &job,
            &state.id,
            attempt,
            format!(
                "worker {} serves another version of team {} (its spec's SHA-256 is {}, the coordinator's {})",
                state.id,
                job.team,
                t.digest(),
                job.digest
            ),
        ),
        Some(team) => {
            (state.say)(format!("worker {}: took {what}", state.id));
            state.inflight.fetch_add(1, Ordering::Relaxed);
            let cancel = CancellationToken::new();
            state
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(w.clone(), cancel.clone());
            let out = tokio::select! {
               biased;
                d = team.work(&job, &state.id, attempt) => Some(d),
                _ = in_progress(msg.as_ref(), state.progress_every) => None,
                _ = cancel.cancelled() => None,
            };
            state
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&w);
            state.inflight.fetch_sub(1, Ordering::Relaxed);
            match out {
                Some(d) => d,
                None => {
                    (state.say)(format!(
                        "worker {}: stopped {what}: withdrawn by its coordinator",
                        state.id
                    ));
                    let _ = msg.ack(Ack::Done).await;
                    return;
                }
            }
        }
    };
    let mut done = done;
    done.ticket = item.ticket.clone();
    let body = match serde_json::to_vec(&done) {
        Ok(b) => b,
        Err(e) => {
            (state.say)(format!("worker {}: cannot send {what}: {e}", state.id));
            return;
        }
    };
    // Still in progress while the result is on its way: a coordinator
    // slow to take it (paused, or the server restarting) must not have
    // the item redelivered and its model calls made again.
    let delivered = tokio::select! {
       biased;
        d = deliver(state, &item.reply, body.into()) => d,
        _ = in_progress(msg.as_ref(), state.progress_every) => unreachable!("progress never ends"),
    };
    match delivered {
        Delivered::Yes => {}
        Delivered::Gone => {
            // The coordinator that asked is gone; its successor draws the
            // task's replicas again.
            (state.say)(format!(
                "worker {}: dropped {what}: the coordinator that asked for it is gone",
                state.id
            ));
            let _ = msg.ack(Ack::Term).await;
            return;
        }
        Delivered::No(e) => {
            // Not acked: redelivered after the ack wait.
            (state.say)(format!(
                "worker {}: could not deliver {what} ({e}); it will be redelivered",
                state.id
            ));
            return;
        }
    }
    state.done.fetch_add(1, Ordering::Relaxed);
    match msg.ack(Ack::DoneConfirmed).await {
        Ok(()) => (state.say)(format!("worker {}: done {what}", state.id)),
        Err(e) => (state.say)(format!(
            "worker {}: done {what} late (its ack was refused: {e}); the coordinator counts one result per replica",
            state.id
        )),
    }
}

/// Sends a progress ack every `every`, for ever.
async fn in_progress(msg: &dyn Delivery, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let _ = msg.ack(Ack::Progress).await;
    }
}

enum Delivered {
    Yes,
    /// Nobody listens on the coordinator's subject any more.
    Gone,
    No(String),
}

/// Sends a result to the coordinator as a request, until it says it has
/// it: a few tries, a little apart (the server may be restarting).
async fn deliver(state: &State, to: &str, body: bytes::Bytes) -> Delivered {
    let mut last = String::new();
    for wait in [0u64, 500, 1000, 2000, 4000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match state.wire.request(to, body.clone(), RESULT_TIMEOUT).await {
            Ok(()) => return Delivered::Yes,
            Err(Unanswered::NoResponders) => return Delivered::Gone,
            Err(e) => last = e.to_string(),
        }
    }
    Delivered::No(last)
}
