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

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::work::{
    stream, Beat, Names, Withdrawn, WorkItem, WorkSettings, HEARTBEAT_EVERY, HEARTBEAT_TTL,
};
use crate::journal::jetstream::ClusterConfig;
use crate::team::job::PreparedTeam;
use crate::team::remote::ReplicaDone;

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

struct State {
    id: String,
    client: async_nats::Client,
    teams: HashMap<String, Arc<PreparedTeam>>,
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
        let c = work
            .get_or_create_consumer(
                &names.consumer(&team),
                jetstream::consumer::pull::Config {
                    durable_name: Some(names.consumer(&team)),
                    filter_subject: names.subject(&team),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.settings.ack_wait,
                    max_deliver: config.settings.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot open the work consumer for team {team}: {e}"))?;
        let ack_wait = c.cached_info().config.ack_wait;
        consumers.push((team, c, ack_wait));
    }
    let ack_wait = consumers
        .iter()
        .map(|(_, _, w)| *w)
        .min()
        .unwrap_or(config.settings.ack_wait);
    let id = super::lease::Holder::this_process(None).id;
    let state = Arc::new(State {
        id: id.clone(),
        client: client.clone(),
        teams: teams
            .iter()
            .map(|t| (t.spec().team.name.clone(), t.clone()))
            .collect(),
        inflight: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        running: Mutex::default(),
        withdrawn: Mutex::default(),
        progress_every: (ack_wait / 3).max(Duration::from_millis(100)),
        say: say.clone(),
        term: AtomicU64::new(0),
    });
    let lease_bucket = format!("conclave-{}-lease", config.cluster.name);
    let mut lease: Option<jetstream::kv::Store> = None;
    let mut cancels = client
        .subscribe(names.cancel())
        .await
        .map_err(|e| format!("cannot subscribe to {}: {e}", names.cancel()))?;
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
    let beat = |state: &State| Beat {
        id: state.id.clone(),
        teams: state.teams.keys().cloned().collect(),
        tags: config.tags.clone(),
        max_inflight: config.max_inflight,
        inflight: state.inflight.load(Ordering::Relaxed),
        done: state.done.load(Ordering::Relaxed),
        at_ms: crate::journal::now_ms(),
    };
    let key = token_key(&id);
    let put = |b: Beat| {
        let kv = kv.clone();
        let key = key.clone();
        async move {
            let body = serde_json::to_vec(&b).unwrap_or_default();
            kv.put(key, body.into()).await.map_err(|e| e.to_string())
        }
    };
    put(beat(&state))
        .await
        .map_err(|e| format!("cannot beat in {}: {e}", names.bucket()))?;
    say(format!(
        "worker {id}: serving teams {} on {url} (cluster {}), {} at once, ack wait {:?}",
        state.teams.keys().cloned().collect::<Vec<_>>().join(", "),
        config.cluster.name,
        config.max_inflight,
        ack_wait
    ));
    read_term(&js, &lease_bucket, &mut lease, &state).await;
    let slots = Arc::new(Semaphore::new(config.max_inflight.max(1)));
    let mut pulls = tokio::task::JoinSet::new();
    for (team, consumer, _) in consumers {
        let (state, slots, stop) = (state.clone(), slots.clone(), stop.clone());
        pulls.spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    p = slots.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
                };
                let batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await;
                let mut batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        (state.say)(format!("worker: cannot pull work for team {team}: {e}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Bounded here too: a pull sent just before the server
                // went away is never ended by it.
                let next = tokio::time::timeout(PULL_EXPIRES * 3, batch.next()).await;
                if let Ok(Some(Ok(msg))) = next {
                    let state = state.clone();
                    tokio::spawn(async move {
                        handle(&state, msg).await;
                        drop(permit);
                    });
                }
            }
        });
    }
    let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = beats.tick() => {
                if let Err(e) = put(beat(&state)).await {
                    (state.say)(format!("worker {id}: heartbeat failed: {e}"));
                }
                read_term(&js, &lease_bucket, &mut lease, &state).await;
            }
            r = pulls.join_next() => {
                if let Some(Ok(Err(e))) = r {
                    return Err(e);
                }
            }
        }
    }
    // Finish what is running, then leave the bucket.
    let _ = slots.acquire_many(config.max_inflight.max(1) as u32).await;
    let _ = kv.delete(&key).await;
    Ok(())
}

/// Reads the term of the cluster's coordinator from the lease (terms only
/// grow); opens the lease's bucket once it is there.
async fn read_term(
    js: &jetstream::Context,
    bucket: &str,
    lease: &mut Option<jetstream::kv::Store>,
    state: &State,
) {
    if lease.is_none() {
        *lease = js.get_key_value(bucket).await.ok();
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
async fn handle(state: &Arc<State>, msg: jetstream::Message) {
    let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
    let item = match serde_json::from_slice::<WorkItem>(&msg.payload) {
        Ok(i) => i,
        Err(e) => {
            (state.say)(format!(
                "worker {}: dropped an item that does not read: {e}",
                state.id
            ));
            let _ = msg.ack_with(AckKind::Term).await;
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
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    }
    if state.withdrawn(&w) {
        (state.say)(format!(
            "worker {}: dropped {what}: withdrawn by its coordinator",
            state.id
        ));
        let _ = msg.ack().await;
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
            let msg = &msg;
            let progress = async {
                loop {
                    tokio::time::sleep(state.progress_every).await;
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            };
            let out = tokio::select! {
                d = team.work(&job, &state.id, attempt) => Some(d),
                _ = progress => None,
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
                    let _ = msg.ack().await;
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
    match deliver(state, &item.reply, body.into()).await {
        Delivered::Yes => {}
        Delivered::Gone => {
            // The coordinator that asked is gone; its successor draws the
            // task's replicas again.
            (state.say)(format!(
                "worker {}: dropped {what}: the coordinator that asked for it is gone",
                state.id
            ));
            let _ = msg.ack_with(AckKind::Term).await;
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
    match msg.double_ack().await {
        Ok(()) => (state.say)(format!("worker {}: done {what}", state.id)),
        Err(e) => (state.say)(format!(
            "worker {}: done {what} late (its ack was refused: {e}); the coordinator counts one result per replica",
            state.id
        )),
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
    use async_nats::RequestErrorKind;
    let mut last = String::new();
    for wait in [0u64, 500, 1000, 2000, 4000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let req = async_nats::Request::new()
            .payload(body.clone())
            .timeout(Some(RESULT_TIMEOUT));
        match state.client.send_request(to.to_string(), req).await {
            Ok(_) => return Delivered::Yes,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return Delivered::Gone,
            Err(e) => last = e.to_string(),
        }
    }
    Delivered::No(last)
}
