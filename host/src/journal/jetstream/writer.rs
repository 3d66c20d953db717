//! The journal's side of the connection: one task on the journal's own
//! thread that connects, checks the server, publishes chunks, waits for
//! their acknowledgements, and answers reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use tokio::sync::mpsc;

use super::chunk::{Chunk, Failed, COUNT, FORMAT, MAX_CHUNK, SEQ};
use super::{token, ClusterConfig, Msg, Pending, RunsUpdate};
use crate::journal::chain;
use crate::journal::{now_ms, RunRow};

mod stored;

/// The oldest nats-server that can sync every write (`sync_interval:
/// always` came in 2.10).
const OLDEST_SERVER: (u64, u64) = (2, 10);

/// How long one record is retried (server restarting, leader moving)
/// before its write fails.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Records in flight before the writer waits for their acknowledgements
/// without being asked.
const MAX_IN_FLIGHT: usize = 512;

/// The journal's side of the connection, on its own thread.
pub(super) struct Writer {
    config: ClusterConfig,
    js: jetstream::Context,
    stream: Stream,
    runs: jetstream::kv::Store,
    /// This writer's part of each record's `Nats-Msg-Id`.
    nonce: String,
    /// Published, not yet acknowledged, in order.
    in_flight: Vec<(Chunk, jetstream::context::PublishAckFuture)>,
    /// Set while the process's journal is fenced ([`Msg::Fence`]): why
    /// every flush fails.
    failed: Option<String>,
    /// Runs a write of which failed for good, and why: nothing more of
    /// them is written (it would leave a gap) until a process reads them
    /// again to resume them ([`Msg::Forget`]).
    failed_runs: HashMap<String, String>,
    /// Per run: the stream sequence of the last message on its subject, as
    /// this writer knows it. Every chunk is published expecting it
    /// (`Nats-Expected-Last-Subject-Sequence`), so a chunk from a writer
    /// that another has overtaken on the run is refused by the server.
    last: HashMap<String, u64>,
    /// Runs this writer was fenced off, and why.
    fenced: HashMap<String, String>,
    /// Set when the process fenced its own journal ([`Msg::Fence`]):
    /// nothing more is published.
    fenced_all: Option<String>,
}

/// Whether a nats-server version string is at least `OLDEST_SERVER`.
pub(super) fn version_ok(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= OLDEST_SERVER
}

/// Reads the server's `/varz` and says whether JetStream syncs every
/// write, or why that cannot be told.
async fn check_sync(monitor: &str) -> Result<(), String> {
    let url = format!("{monitor}/varz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let varz: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            format!(
                "cannot read the server's monitoring endpoint {url} to check that it syncs every write: {e} \
                 (start nats-server with `http: PORT` or `-m PORT`, or name the endpoint with --cluster-monitor)"
            )
        })?
        .json()
        .await
        .map_err(|e| format!("{url}: not the JSON of nats-server's /varz: {e}"))?;
    let config = &varz["jetstream"]["config"];
    if config.is_null() {
        return Err(format!(
            "{url}: the server does not have JetStream enabled (start it with `-js`, or `jetstream {{ ... }}` in its config)"
        ));
    }
    if config["sync_always"] != serde_json::Value::Bool(true) {
        return Err(format!(
            "the server acknowledges JetStream writes before they reach the disk (jetstream.config.sync_always is not true at {url}), \
             so an acknowledged record could be lost if its machine goes down: set `jetstream {{ sync_interval: always }}` \
             in the server's config (scripts/nats.conf does)"
        ));
    }
    Ok(())
}

impl Writer {
    pub(super) async fn start(config: ClusterConfig) -> Result<Writer, String> {
        let client = config.connect("journal").await?;
        let version = client.server_info().version;
        if !version_ok(&version) {
            return Err(format!(
                "nats-server {version} cannot sync every JetStream write to disk before acknowledging it \
                 (`sync_interval: always` needs 2.10 or later), so acknowledged records could be lost; \
                 use a newer server (scripts/install-nats.sh fetches one)"
            ));
        }
        check_sync(&config.monitor_url()).await?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream(),
                subjects: vec![format!("conclave.{}.journal.>", config.name)],
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(120),
                description: Some("Conclave's journal: one message per record".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open the stream {}: {e}", config.stream()))?;
        let runs = match js.get_key_value(config.bucket()).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: config.bucket(),
                    description: "Conclave's runs, one entry per run".into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot open the bucket {}: {e}", config.bucket()))?,
        };
        Ok(Writer {
            config,
            js,
            stream,
            runs,
            nonce: format!("{:x}{:04x}", now_ms(), rand::random::<u16>()),
            in_flight: Vec::new(),
            failed: None,
            failed_runs: HashMap::new(),
            last: HashMap::new(),
            fenced: HashMap::new(),
            fenced_all: None,
        })
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut batch: Vec<Pending> = Vec::new();
        while let Some(first) = rx.recv().await {
            // Whatever else is queued goes with it: a run's records of one
            // batch become one message (one sync on the server).
            let mut queued = vec![first];
            while let Ok(m) = rx.try_recv() {
                queued.push(m);
            }
            for m in queued {
                let m = match m {
                    Msg::Append(p) => {
                        batch.push(*p);
                        continue;
                    }
                    other => other,
                };
                // Anything else waits for the records queued before it.
                self.publish(std::mem::take(&mut batch)).await;
                match m {
                    Msg::Append(_) => unreachable!("handled above"),
                    Msg::Flush(tx) => {
                        self.settle().await;
                        let fenced = self.fenced.values().next();
                        let failed = self.failed_runs.values().next();
                        let _ = tx.send(match self.failed.as_ref().or(failed).or(fenced) {
                            Some(e) => Err(e.clone()),
                            None => Ok(()),
                        });
                    }
                    Msg::FlushRun(run, tx) => {
                        self.settle().await;
                        // A run another process took over fails its own
                        // flushes only, not the other runs'.
                        let mine = self.fenced.get(&run).or(self.failed_runs.get(&run));
                        let _ = tx.send(match mine.or(self.failed.as_ref()) {
                            Some(e) => Err(e.clone()),
                            None => Ok(()),
                        });
                    }
                    Msg::NextSeq(run, tx) => {
                        self.settle().await;
                        // Numbered from what is stored now, and fenced
                        // from the same moment: a write another makes to
                        // the run after this refuses this writer's next.
                        let n = self.chunks(&run).await.map(|cs| {
                            let last = cs.iter().map(|c| c.sequence).max().unwrap_or(0);
                            self.last.insert(run.clone(), last);
                            // The chunk that ends last holds the run's
                            // last record, and its link.
                            let end = cs.iter().max_by_key(|c| c.first + c.records.len() as u64);
                            let next = end.map_or(0, |c| c.first + c.records.len() as u64);
                            let link = end
                                .and_then(|c| c.records.last())
                                .and_then(|r| r.linked.as_ref())
                                .and_then(|(_, l)| chain::parse(l))
                                .unwrap_or_else(|| chain::genesis(&run));
                            (next, link)
                        });
                        let _ = tx.send(n);
                    }
                    Msg::Runs(tx) => {
                        self.settle().await;
                        let _ = tx.send(self.list_runs().await);
                    }
                    Msg::Read(run, tx) => {
                        self.settle().await;
                        let _ = tx.send(self.read(&run).await);
                    }
                    Msg::Truncate(run, keep, tx) => {
                        self.settle().await;
                        let _ = tx.send(self.truncate(&run, keep).await);
                    }
                    Msg::Fence(why) => {
                        self.failed = Some(why.clone());
                        self.fenced_all = Some(why);
                    }
                    Msg::Unfence => {
                        if let Some(why) = self.fenced_all.take() {
                            if self.failed.as_ref() == Some(&why) {
                                self.failed = None;
                            }
                        }
                        self.fenced.clear();
                        self.failed_runs.clear();
                        self.last.clear();
                    }
                    Msg::Forget(run) => {
                        self.fenced.remove(&run);
                        self.failed_runs.remove(&run);
                        self.last.remove(&run);
                    }
                }
            }
            self.publish(std::mem::take(&mut batch)).await;
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.settle().await;
            }
        }
        // The journal was dropped: store what is left.
        self.publish(batch).await;
        self.settle().await;
        if let Some(e) = self.failed.as_ref().or(self.failed_runs.values().next()) {
            tracing::error!("journal {}: {e}", self.config.url);
        }
    }

    fn message(&self, c: &Chunk) -> jetstream::message::PublishMessage {
        let m = jetstream::message::PublishMessage::build();
        let m = match c.expected {
            Some(seq) => m.expected_last_subject_sequence(seq),
            None => m,
        };
        m.payload(c.body.clone().into())
            .message_id(format!(
                "{}/{}/{}/{}",
                token(&c.run),
                c.first,
                c.records.len(),
                self.nonce
            ))
            .header(SEQ, c.first.to_string().as_str())
            .header(COUNT, c.records.len().to_string().as_str())
            .header(FORMAT, c.version().to_string().as_str())
    }

    /// Publishes `batch` as chunks, a run's consecutive records in one
    /// message (`MAX_CHUNK` bytes at most), without waiting for their
    /// acknowledgements.
    async fn publish(&mut self, batch: Vec<Pending>) {
        if self.fenced_all.is_some() {
            return;
        }
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut open: HashMap<Arc<str>, usize> = HashMap::new();
        for p in batch {
            let entry = match &p.entry {
                Ok(e) => e,
                Err(e) => {
                    self.failed_runs
                        .entry(p.run.to_string())
                        .or_insert(format!("record {} of {}: {e}", p.seq, p.run));
                    continue;
                }
            };
            let i = match open.get(&p.run) {
                Some(&i)
                    if chunks[i].first + chunks[i].records.len() as u64 == p.seq
                        && chunks[i].body.len() + entry.len() < MAX_CHUNK =>
                {
                    i
                }
                _ => {
                    chunks.push(Chunk {
                        run: p.run.clone(),
                        expected: None,
                        first: p.seq,
                        records: Vec::new(),
                        body: String::new(),
                    });
                    open.insert(p.run.clone(), chunks.len() - 1);
                    chunks.len() - 1
                }
            };
            chunks[i].push(p);
        }
        for mut c in chunks {
            c.body.push(']');
            if self.fenced.contains_key(&*c.run) || self.failed_runs.contains_key(&*c.run) {
                continue;
            }
            // One chunk of a run in flight at a time: the next expects the
            // sequence the last one was stored at.
            if self.in_flight.iter().any(|(f, _)| f.run == c.run) {
                self.settle().await;
            }
            c.expected = Some(match self.last.get(&*c.run) {
                Some(&l) => l,
                None => match self.last_of(&c.run).await {
                    Ok(l) => l,
                    Err(e) => {
                        self.failed_runs.insert(c.run.to_string(), e);
                        continue;
                    }
                },
            });
            let subject = self.config.subject(&c.run);
            match self.js.send_publish(subject, self.message(&c)).await {
                Ok(ack) => self.in_flight.push((c, ack)),
                // Not sent: publish it again until it is stored.
                Err(_) => {
                    let stored = self.store_again(&c).await;
                    self.after_ack(&c, stored).await;
                }
            }
        }
    }

    /// The stream sequence of `run`'s last message (0: none), read again
    /// until the server answers or `RETRY_FOR` passes (a server
    /// restarting).
    async fn last_of(&self, run: &str) -> Result<u64, String> {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            match self.messages(run).await {
                Ok(ms) => return Ok(ms.iter().map(|m| m.sequence).max().unwrap_or(0)),
                Err(e) if start.elapsed() >= RETRY_FOR => {
                    return Err(format!(
                        "the last record of {run} not read after {}s of retries: {e}",
                        RETRY_FOR.as_secs()
                    ))
                }
                Err(e) => {
                    tracing::debug!("journal: the last record of {run}: {e}; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes `c` again until it is acknowledged or `RETRY_FOR` passes.
    /// Its message id makes a copy that did arrive count once.
    async fn store_again(&self, c: &Chunk) -> Result<u64, Failed> {
        use jetstream::context::PublishErrorKind;
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let sent = self
                .js
                .send_publish(self.config.subject(&c.run), self.message(c))
                .await;
            let result = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(Failed::Fenced)
                }
                Err(e) if start.elapsed() >= RETRY_FOR => {
                    return Err(Failed::Other(format!(
                        "{} not stored after {}s of retries: {e}",
                        c.describe(),
                        RETRY_FOR.as_secs()
                    )))
                }
                Err(e) => {
                    tracing::debug!("journal: {}: {e}; retrying", c.describe());
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Waits for every chunk in flight to be acknowledged, publishing
    /// again the ones that were not.
    async fn settle(&mut self) {
        use jetstream::context::PublishErrorKind;
        for (c, ack) in std::mem::take(&mut self.in_flight) {
            let stored = match ack.await {
                Ok(a) => Ok(a.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(Failed::Fenced),
                Err(_) => self.store_again(&c).await,
            };
            self.after_ack(&c, stored).await;
        }
    }

    /// Once a chunk is stored: its records' changes to the run's row.
    async fn after_ack(&mut self, c: &Chunk, stored: Result<u64, Failed>) {
        match stored {
            Ok(sequence) => {
                let last = self.last.entry(c.run.to_string()).or_insert(0);
                *last = (*last).max(sequence);
            }
            Err(Failed::Fenced) => {
                let why = format!(
                    "run {} was {}: another process wrote to it after this one last did, \
                     so its {} and every later record of it from this process are refused",
                    c.run,
                    crate::journal::TAKEN_OVER,
                    c.describe()
                );
                self.fenced.insert(c.run.to_string(), why);
                return;
            }
            Err(Failed::Other(e)) => {
                self.failed_runs.entry(c.run.to_string()).or_insert(e);
                return;
            }
        }
        for p in &c.records {
            let Some(update) = &p.runs else { continue };
            if let Err(e) = self.update_row(p, update).await {
                self.failed_runs.entry(p.run.to_string()).or_insert(format!(
                    "the row of run {} in {}: {e}",
                    p.run,
                    self.config.bucket()
                ));
            }
        }
    }

    async fn update_row(&self, p: &Pending, update: &RunsUpdate) -> Result<(), String> {
        let key = token(&p.run);
        let start = std::time::Instant::now();
        loop {
            let current = self.runs.get(key.clone()).await.map_err(|e| e.to_string());
            let row = current.and_then(|bytes| {
                let mut row: RunRow = match bytes {
                    Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
                    None => RunRow {
                        run: p.run.to_string(),
                        team: String::new(),
                        question: String::new(),
                        started_ms: p.at_ms,
                        ended_ms: None,
                        stop: None,
                        tokens: 0,
                        cost: 0.0,
                    },
                };
                match update {
                    RunsUpdate::Submitted { team, question } => {
                        row.team = team.clone();
                        row.question = question.clone();
                        row.started_ms = p.at_ms;
                    }
                    RunsUpdate::Resumed => {
                        row.ended_ms = None;
                        row.stop = None;
                    }
                    RunsUpdate::Ended { stop, tokens, cost } => {
                        row.ended_ms = Some(p.at_ms);
                        row.stop = Some(stop.clone());
                        row.tokens = *tokens;
                        row.cost = *cost;
                    }
                }
                serde_json::to_vec(&row).map_err(|e| e.to_string())
            });
            let put = match row {
                Ok(body) => self
                    .runs
                    .put(key.clone(), body.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match put {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= RETRY_FOR => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
