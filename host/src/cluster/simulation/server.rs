//! The model of the NATS server the cluster uses, and of the network to
//! it: key-value buckets (values that may expire, one revision sequence
//! per bucket, delete markers) and the journal's stream (one sequence,
//! a subject per run, appends that expect the subject's last sequence),
//! behind seeded latency, lost replies and outages. Each simulated
//! process reaches it through a [`Proc`] gate: a killed process sends
//! nothing more and hears nothing more; a paused one sends and hears only
//! once it runs again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::kv::{Kv, KvError};

/// How long a client waits for the server's reply (as async-nats does for
/// a JetStream request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How the server and the network fail.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    /// The server is down over these spans (from the start).
    pub(crate) down: Vec<(Duration, Duration)>,
    /// Each request and each reply takes up to this long.
    pub(crate) max_latency: Duration,
    /// The chance that a reply is lost (the request took effect).
    pub(crate) reply_loss: f64,
    /// Replies are lost only before this, and core messages lost or
    /// duplicated.
    pub(crate) quiet: Duration,
    /// The chance that a core message (work queue) is lost on its way.
    pub(crate) message_loss: f64,
    /// The chance that a core message is delivered twice.
    pub(crate) duplicate: f64,
}

/// A key-value bucket: values expire `ttl` after they are written (if it
/// is set), revisions are one sequence, a delete leaves a marker that a
/// create may replace.
pub(crate) struct Bucket {
    ttl: Option<Duration>,
    last: u64,
    /// Key: its value (none: a delete marker), revision, when written.
    entries: HashMap<String, (Option<Bytes>, u64, Instant)>,
}

impl Bucket {
    /// The key's last message, if it has not expired.
    fn last_of(&self, key: &str, now: Instant) -> Option<&(Option<Bytes>, u64, Instant)> {
        self.entries
            .get(key)
            .filter(|(_, _, at)| self.ttl.is_none_or(|ttl| now < *at + ttl))
    }

    fn write(&mut self, key: &str, value: Option<Bytes>, now: Instant) -> u64 {
        self.last += 1;
        self.entries
            .insert(key.to_string(), (value, self.last, now));
        self.last
    }
}

/// One message of the journal's stream: a record of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// Its sequence in the stream.
    pub seq: u64,
    pub run: String,
    pub kind: RecordKind,
    /// The process that wrote it, and the term it wrote under.
    pub writer: usize,
    pub term: u64,
    /// When it was stored.
    pub at: Duration,
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RecordKind {
    /// The run's submission: it has this many steps (model calls).
    Submitted { steps: u32 },
    /// A process goes on with the run.
    Resumed,
    /// A step's model reply.
    Step { step: u32 },
    /// The run's end.
    Ended { decided: bool },
}

/// Why an append was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The subject's last sequence is not the one expected.
    WrongLastSequence,
}

/// What the server holds.
#[derive(Default)]
pub(crate) struct State {
    buckets: HashMap<String, Bucket>,
    /// The journal's stream, in order.
    pub(crate) journal: Vec<Record>,
    /// Message ids stored, and where (the stream's duplicate window).
    pub(crate) dedup: HashMap<String, u64>,
    /// Core messages and the work stream.
    pub(crate) queue: super::queue::Queue,
}

impl State {
    fn bucket(&mut self, name: &str) -> &mut Bucket {
        self.buckets.get_mut(name).expect("a bucket made first")
    }

    /// The records of `run`, in order.
    pub(crate) fn records(&self, run: &str) -> Vec<Record> {
        self.journal
            .iter()
            .filter(|r| r.run == run)
            .cloned()
            .collect()
    }

    /// The sequence of `run`'s last record (0: none).
    pub(crate) fn last_seq(&self, run: &str) -> u64 {
        self.journal
            .iter()
            .rev()
            .find(|r| r.run == run)
            .map_or(0, |r| r.seq)
    }

    /// Appends `records` of `run` if its last sequence is `expected`; the
    /// last sequence written.
    pub(crate) fn append(
        &mut self,
        run: &str,
        expected: u64,
        records: Vec<(RecordKind, usize, u64)>,
        at: Duration,
    ) -> Result<u64, AppendError> {
        if self.last_seq(run) != expected {
            return Err(AppendError::WrongLastSequence);
        }
        let mut seq = self.journal.last().map_or(0, |r| r.seq);
        for (kind, writer, term) in records {
            seq += 1;
            self.journal.push(Record {
                seq,
                run: run.to_string(),
                kind,
                writer,
                term,
                at,
            });
        }
        Ok(seq)
    }
}

/// A simulated process as the server sees it: killed (it sends and hears
/// nothing more), paused over spans (it sends and hears nothing then), or
/// cut off from the server over spans (what it sends or is sent then is
/// lost, while it runs on).
pub struct Proc {
    pub id: usize,
    paused: Vec<(Instant, Instant)>,
    cut: Vec<(Instant, Instant)>,
    killed: CancellationToken,
}

impl Proc {
    /// Process `id`, paused over `paused` and cut off from the server
    /// over `cut`.
    pub(crate) fn new(
        id: usize,
        paused: Vec<(Instant, Instant)>,
        cut: Vec<(Instant, Instant)>,
    ) -> Arc<Proc> {
        Arc::new(Proc {
            id,
            paused,
            cut,
            killed: CancellationToken::new(),
        })
    }

    /// A process that is never paused, cut off or killed.
    pub(crate) fn steady() -> Arc<Proc> {
        Proc::new(usize::MAX, Vec::new(), Vec::new())
    }

    /// Whether it is cut off from the server at `at`.
    pub(crate) fn is_cut(&self, at: Instant) -> bool {
        self.cut.iter().any(|(a, b)| *a <= at && at < *b)
    }

    pub(crate) fn kill(&self) {
        self.killed.cancel();
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.is_cancelled()
    }

    /// Resolves once the process is killed.
    pub(crate) async fn killed(&self) {
        self.killed.cancelled().await
    }

    /// Whether it is paused at `now`, and until when.
    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused
            .iter()
            .filter(|(a, b)| *a <= now && now < *b)
            .map(|s| s.1)
            .max()
    }

    /// Returns once the process runs: never, once it is killed.
    pub(crate) async fn gate(&self) {
        loop {
            if self.is_killed() {
                std::future::pending::<()>().await;
            }
            match self.paused_until(Instant::now()) {
                Some(until) => tokio::time::sleep_until(until).await,
                None => return,
            }
        }
    }
}

/// The simulated NATS server and the network to it.
pub struct Server {
    state: Mutex<State>,
    /// What the server did, in order: `(time, what)`.
    pub(crate) ops: Mutex<Vec<(Duration, String)>>,
    rng: Mutex<ChaCha8Rng>,
    pub(crate) start: Instant,
    faults: Faults,
}

impl Server {
    /// A server that fails as `faults` say; its draws come from `rng`.
    pub(crate) fn new(faults: Faults, rng: ChaCha8Rng) -> Arc<Server> {
        Arc::new(Server {
            state: Mutex::default(),
            ops: Mutex::default(),
            rng: Mutex::new(rng),
            start: Instant::now(),
            faults,
        })
    }

    /// A fault-free server (for the contracts).
    pub fn reliable() -> Arc<Server> {
        use rand::SeedableRng;
        Server::new(Faults::default(), ChaCha8Rng::seed_from_u64(0))
    }

    /// A bucket named `name` (made if it is not there) whose values live
    /// `ttl`, if set, reached as `proc`.
    pub fn bucket(self: &Arc<Self>, name: &str, ttl: Option<Duration>, proc: Arc<Proc>) -> SimKv {
        self.lock()
            .buckets
            .entry(name.to_string())
            .or_insert(Bucket {
                ttl,
                last: 0,
                entries: HashMap::new(),
            });
        SimKv {
            server: self.clone(),
            bucket: name.to_string(),
            proc,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_down(&self, now: Instant) -> bool {
        let t = now - self.start;
        self.faults.down.iter().any(|(a, b)| *a <= t && t < *b)
    }

    pub(crate) fn latency(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        self.faults.max_latency.mul_f64(rng.random::<f64>())
    }

    /// True with chance `p` (a draw from the server's generator).
    pub(crate) fn draw(&self, p: f64) -> bool {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// Whether messages may still be lost at `now`.
    pub(crate) fn noisy(&self, now: Instant) -> bool {
        now - self.start < self.faults.quiet
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sends a request from `proc` that does `op` on the server's state
    /// when it arrives; its reply, unless the server is down or the reply
    /// is lost.
    pub(crate) async fn request<T: Send + std::fmt::Debug + 'static>(
        self: &Arc<Self>,
        proc: &Proc,
        what: String,
        op: impl FnOnce(&mut State, Instant) -> T + Send + 'static,
    ) -> Result<T, KvError> {
        proc.gate().await;
        let (to, back) = (self.latency(), self.latency());
        // Cut off: the request does not arrive, or its reply does not.
        let cut = (
            proc.is_cut(Instant::now()),
            proc.is_cut(Instant::now() + to + back),
        );
        let lost = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_bool(self.faults.reply_loss)
                && Instant::now() - self.start < self.faults.quiet
        };
        let sent = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = self.clone();
        let who = if proc.id == usize::MAX {
            String::new()
        } else {
            format!("p{} ", proc.id)
        };
        // The server side runs whatever the client does meanwhile (a
        // paused client's request still arrives).
        tokio::spawn(async move {
            tokio::time::sleep(to).await;
            let now = Instant::now();
            if server.is_down(now) || cut.0 {
                return;
            }
            let r = op(&mut server.lock(), now);
            tokio::time::sleep(back).await;
            let delivered = !lost && !cut.1 && !server.is_down(Instant::now());
            server.ops.lock().unwrap_or_else(|p| p.into_inner()).push((
                now - server.start,
                format!(
                    "{who}{what}: {r:?}{}",
                    if delivered { "" } else { " (reply lost)" }
                ),
            ));
            if delivered {
                let _ = tx.send(r);
            }
        });
        // No reply (the server was down, or the reply was lost): the
        // client hears nothing until its request times out.
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                tokio::time::sleep_until(sent + REQUEST_TIMEOUT).await;
                Err(KvError::Unavailable("request timed out".into()))
            }
        };
        proc.gate().await;
        reply
    }
}

/// A bucket of the model, as one process reaches it.
pub struct SimKv {
    server: Arc<Server>,
    bucket: String,
    proc: Arc<Proc>,
}

impl SimKv {
    async fn on<T: Send + std::fmt::Debug + 'static>(
        &self,
        what: String,
        op: impl FnOnce(&mut Bucket, Instant) -> T + Send + 'static,
    ) -> Result<T, KvError> {
        let bucket = self.bucket.clone();
        let what = format!("{bucket}: {what}");
        self.server
            .request(&self.proc, what, move |s, now| op(s.bucket(&bucket), now))
            .await
    }
}

#[async_trait::async_trait]
impl Kv for SimKv {
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let key = key.to_string();
        let what = format!("create {key} {}", String::from_utf8_lossy(&value));
        self.on(what, move |b, now| match b.last_of(&key, now) {
            Some((Some(_), _, _)) => Err(KvError::Exists),
            _ => Ok(b.write(&key, Some(value), now)),
        })
        .await?
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let key = key.to_string();
        self.on(format!("get {key}"), move |b, now| {
            b.last_of(&key, now).and_then(|e| e.0.clone())
        })
        .await
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        let key = key.to_string();
        let what = format!("update {key} expecting {revision}");
        self.on(what, move |b, now| match b.last_of(&key, now) {
            Some((_, rev, _)) if *rev == revision => Ok(b.write(&key, Some(value), now)),
            _ => Err(KvError::WrongRevision),
        })
        .await?
    }

    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError> {
        let key = key.to_string();
        let what = format!("delete {key} expecting {revision}");
        self.on(what, move |b, now| match b.last_of(&key, now) {
            Some((_, rev, _)) if *rev == revision => {
                b.write(&key, None, now);
                Ok(())
            }
            _ => Err(KvError::WrongRevision),
        })
        .await?
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let key = key.to_string();
        self.on(format!("put {key}"), move |b, now| {
            b.write(&key, Some(value), now)
        })
        .await
    }

    async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, KvError> {
        let key = key.to_string();
        self.on(format!("entry {key}"), move |b, now| {
            b.last_of(&key, now)
                .and_then(|(v, rev, _)| v.clone().map(|v| (v, *rev)))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        let key = key.to_string();
        self.on(format!("delete {key}"), move |b, now| {
            b.write(&key, None, now);
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.on("keys".into(), move |b, now| {
            let mut keys: Vec<String> = b
                .entries
                .keys()
                .filter(|k| matches!(b.last_of(k, now), Some((Some(_), _, _))))
                .cloned()
                .collect();
            keys.sort();
            keys
        })
        .await
    }
}
