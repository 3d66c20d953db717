//! The model of what the work queue uses of the NATS server
//! ([`crate::cluster::wire`]): core messages (subscriptions with `*` and
//! `>` wildcards, requests and their replies, "no responders" when
//! nobody listens) and the work stream with its pull consumers (explicit
//! acks, an ack wait that progress acks start again, redelivery after
//! it, at most `max_deliver` deliveries and then a max-deliveries
//! advisory, work-queue retention). Core messages are at most once: each
//! one may be lost, duplicated or delayed (and so reordered) as the
//! seed's faults say, and none gets through while the server is down or
//! its sender or receiver is cut off. Subscriptions outlive a server
//! restart (clients subscribe again); a killed process's do not count as
//! responders.
//!
//! Its maps are ordered ones: what expires in one tick is handled in
//! the same order every run, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::server::{Proc, Server, State};
use crate::cluster::kv::KvError;
use crate::cluster::wire::{Ack, Delivery, Note, Pull, Queueing, Unanswered, Wire};

/// How often the server looks for deliveries past their ack wait.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// A pull that finds nothing asks again this often until it expires.
const PULL_POLL: Duration = Duration::from_millis(100);

struct Sub {
    pattern: String,
    proc: Arc<Proc>,
    tx: mpsc::UnboundedSender<Note>,
}

struct Item {
    subject: String,
    body: Bytes,
}

/// A delivery awaiting its ack.
struct Pending {
    deadline: Instant,
}

struct Consumer {
    stream: String,
    filter: String,
    ack_wait: Duration,
    max_deliver: u32,
    /// Deliveries so far, by stream sequence.
    delivered: BTreeMap<u64, u32>,
    pending: BTreeMap<u64, Pending>,
    /// Given up after its last delivery.
    dead: BTreeSet<u64>,
}

/// The server's messages and work stream.
#[derive(Default)]
pub(crate) struct Queue {
    subs: Vec<Sub>,
    /// Requests waiting for a reply, by reply subject.
    /// Requests waiting for a reply, by reply subject (true: answered;
    /// false: nobody listens).
    replies: BTreeMap<String, oneshot::Sender<bool>>,
    next_inbox: u64,
    last: u64,
    items: BTreeMap<u64, Item>,
    consumers: BTreeMap<String, Consumer>,
    ticking: bool,
    /// Core messages lost on the way: `(time, sender, subject)`.
    pub(crate) lost: Vec<(Instant, usize, String)>,
    /// Deliveries made: `(time, stream sequence, delivery, to process)`.
    pub(crate) deliveries: Vec<(Instant, u64, u32, usize)>,
    /// Message ids queued, and where (the duplicate window).
    ids: BTreeMap<String, u64>,
    /// Every body queued, by stream sequence (for the checks).
    pub(crate) queued: BTreeMap<u64, Bytes>,
}

impl Queue {
    /// Items still on the stream that a consumer may deliver again: neither
    /// acked nor given up.
    pub(crate) fn left(&self) -> Vec<u64> {
        self.items
            .keys()
            .filter(|s| !self.consumers.values().any(|c| c.dead.contains(s)))
            .copied()
            .collect()
    }
}

/// Whether `subject` matches `pattern` (`*` one token, `>` the rest).
fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Server {
    /// Delivers a core message to each live subscriber of `subject`, from
    /// `from`, as the faults say. Called at the server, at `now`.
    fn fan_out(self: &Arc<Self>, q: &mut Queue, from: usize, subject: &str, note: Note) {
        let now = Instant::now();
        if let Some(tx) = q.replies.remove(subject) {
            let back = self.latency();
            tokio::spawn(async move {
                tokio::time::sleep(back).await;
                let _ = tx.send(true);
            });
            return;
        }
        for sub in q.subs.iter().filter(|s| matches(&s.pattern, subject)) {
            if self.noisy(now) && self.draw(self.faults().message_loss) {
                q.lost.push((now, from, subject.to_string()));
                continue;
            }
            let copies = if self.noisy(now) && self.draw(self.faults().duplicate) {
                2
            } else {
                1
            };
            let (tx, proc, note) = (sub.tx.clone(), sub.proc.clone(), note.clone());
            let delay = self.latency();
            let server = self.clone();
            let subject = subject.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let now = Instant::now();
                if proc.is_cut(now) || proc.is_killed() {
                    server.lock().queue.lost.push((now, from, subject));
                    return;
                }
                for _ in 0..copies {
                    let _ = tx.send(note.clone());
                }
            });
        }
    }

    /// Starts the expiry of deliveries past their ack wait (once).
    fn tick(self: &Arc<Self>, state: &mut State) {
        if std::mem::replace(&mut state.queue.ticking, true) {
            return;
        }
        let server = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_TICK).await;
                let Some(server) = server.upgrade() else {
                    return;
                };
                let now = Instant::now();
                if server.is_down(now) {
                    continue;
                }
                let mut state = server.lock();
                let q = &mut state.queue;
                let mut advisories = Vec::new();
                for (name, c) in q.consumers.iter_mut() {
                    let expired: Vec<u64> = c
                        .pending
                        .iter()
                        .filter(|(_, p)| p.deadline <= now)
                        .map(|(s, _)| *s)
                        .collect();
                    for seq in expired {
                        c.pending.remove(&seq);
                        let n = c.delivered.get(&seq).copied().unwrap_or(0);
                        if n >= c.max_deliver && c.dead.insert(seq) {
                            let subject = format!(
                                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{name}",
                                c.stream
                            );
                            advisories.push((subject, seq, n));
                        }
                    }
                }
                for (subject, seq, n) in advisories {
                    let body = serde_json::json!({"stream_seq": seq, "deliveries": n});
                    server.fan_out(
                        q,
                        usize::MAX,
                        &subject,
                        Note {
                            payload: Bytes::from(body.to_string()),
                            reply: None,
                        },
                    );
                }
            }
        });
    }

    /// Consumer `name` of the work stream `stream`, reached as `proc`.
    pub(crate) fn pull(
        self: &Arc<Self>,
        stream: &str,
        name: &str,
        filter: &str,
        ack_wait: Duration,
        max_deliver: u32,
        proc: Arc<Proc>,
    ) -> SimPull {
        let mut state = self.lock();
        self.tick(&mut state);
        state
            .queue
            .consumers
            .entry(name.to_string())
            .or_insert(Consumer {
                stream: stream.to_string(),
                filter: filter.to_string(),
                ack_wait,
                max_deliver,
                delivered: BTreeMap::new(),
                pending: BTreeMap::new(),
                dead: Default::default(),
            });
        SimPull {
            server: self.clone(),
            name: name.to_string(),
            proc,
        }
    }

    /// The wire of process `proc`.
    pub(crate) fn wire(self: &Arc<Self>, proc: Arc<Proc>) -> SimWire {
        SimWire {
            server: self.clone(),
            proc,
        }
    }
}

/// The model's connection, as one process has it.
pub struct SimWire {
    server: Arc<Server>,
    proc: Arc<Proc>,
}

fn unavailable(e: KvError) -> String {
    e.to_string()
}

#[async_trait::async_trait]
impl Wire for SimWire {
    async fn queue(&self, subject: &str, id: &str, body: Bytes) -> Result<Queueing, String> {
        let (subject, id) = (subject.to_string(), id.to_string());
        let (server, proc) = (self.server.clone(), self.proc.clone());
        // Sent when the returned future first runs: the model's latency
        // reorders what is sent close together, as the network may.
        Ok(Box::pin(async move {
            server
                .request(&proc, format!("queue on {subject}"), move |s, _| {
                    let q = &mut s.queue;
                    if let Some(seq) = q.ids.get(&id) {
                        return *seq;
                    }
                    q.last += 1;
                    q.ids.insert(id, q.last);
                    q.queued.insert(q.last, body.clone());
                    q.items.insert(q.last, Item { subject, body });
                    q.last
                })
                .await
                .map_err(unavailable)
        }))
    }

    async fn remove(&self, _stream: &str, seq: u64) -> Result<(), String> {
        self.server
            .request(&self.proc, format!("remove #{seq}"), move |s, _| {
                let q = &mut s.queue;
                q.items.remove(&seq);
                for c in q.consumers.values_mut() {
                    c.pending.remove(&seq);
                }
            })
            .await
            .map_err(unavailable)
    }

    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), String> {
        self.proc.gate().await;
        let from = self.proc.id;
        if self.proc.is_cut(Instant::now()) {
            self.server
                .lock()
                .queue
                .lost
                .push((Instant::now(), from, subject.to_string()));
            return Ok(());
        }
        let to = self.server.latency();
        let server = self.server.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(to).await;
            let now = Instant::now();
            let mut state = server.lock();
            if server.is_down(now) {
                state.queue.lost.push((now, from, subject));
                return;
            }
            let note = Note {
                payload: body,
                reply: None,
            };
            server.fan_out(&mut state.queue, from, &subject, note);
        });
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Note>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = Sub {
            pattern: subject.to_string(),
            proc: self.proc.clone(),
            tx,
        };
        self.server
            .request(&self.proc, format!("subscribe {subject}"), move |s, _| {
                s.queue.subs.push(sub);
            })
            .await
            .map_err(unavailable)?;
        let proc = self.proc.clone();
        // A paused process hears what was sent meanwhile once it runs.
        Ok(
            futures::stream::unfold((rx, proc), |(mut rx, proc)| async move {
                let n = rx.recv().await?;
                proc.gate().await;
                Some((n, (rx, proc)))
            })
            .boxed(),
        )
    }

    async fn request(
        &self,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), Unanswered> {
        self.proc.gate().await;
        let sent = Instant::now();
        let from = self.proc.id;
        let (tx, rx) = oneshot::channel();
        let (to, back) = (self.server.latency(), self.server.latency());
        let cut = self.proc.is_cut(sent);
        let server = self.server.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(to).await;
            let now = Instant::now();
            if cut || server.is_down(now) {
                return;
            }
            let mut state = server.lock();
            let q = &mut state.queue;
            let listening = q
                .subs
                .iter()
                .any(|s| matches(&s.pattern, &subject) && !s.proc.is_killed());
            if !listening {
                tokio::spawn(async move {
                    tokio::time::sleep(back).await;
                    let _ = tx.send(false);
                });
                return;
            }
            q.next_inbox += 1;
            let inbox = format!("_INBOX.{}", q.next_inbox);
            q.replies.insert(inbox.clone(), tx);
            let note = Note {
                payload: body,
                reply: Some(inbox),
            };
            server.fan_out(q, from, &subject, note);
        });
        let answered = tokio::time::timeout(timeout, rx).await;
        self.proc.gate().await;
        let heard = !self.proc.is_cut(Instant::now());
        if answered == Ok(Ok(false)) && heard {
            return Err(Unanswered::NoResponders);
        }
        if answered == Ok(Ok(true)) && heard {
            Ok(())
        } else {
            tokio::time::sleep_until(sent + timeout).await;
            Err(Unanswered::Failed("request timed out".into()))
        }
    }
}

/// A team's consumer, as one process reaches it.
pub struct SimPull {
    server: Arc<Server>,
    name: String,
    proc: Arc<Proc>,
}

#[async_trait::async_trait]
impl Pull for SimPull {
    async fn next(&self, expires: Duration) -> Result<Option<Box<dyn Delivery>>, String> {
        let until = Instant::now() + expires;
        loop {
            let name = self.name.clone();
            let who = self.proc.id;
            let got = self
                .server
                .request(&self.proc, format!("pull {name}"), move |s, now| {
                    let q = &mut s.queue;
                    let c = q.consumers.get_mut(&name).expect("a consumer made first");
                    let seq = q
                        .items
                        .iter()
                        .filter(|(_, i)| matches(&c.filter, &i.subject))
                        .map(|(s, _)| *s)
                        .find(|s| !c.pending.contains_key(s) && !c.dead.contains(s))?;
                    let n = c.delivered.entry(seq).or_insert(0);
                    *n += 1;
                    c.pending.insert(
                        seq,
                        Pending {
                            deadline: now + c.ack_wait,
                        },
                    );
                    let n = *n;
                    q.deliveries.push((now, seq, n, who));
                    Some((seq, n, q.items[&seq].body.clone()))
                })
                .await;
            match got {
                Ok(Some((seq, delivered, body))) => {
                    return Ok(Some(Box::new(SimDelivery {
                        server: self.server.clone(),
                        consumer: self.name.clone(),
                        proc: self.proc.clone(),
                        seq,
                        delivered,
                        body,
                    })))
                }
                Ok(None) if Instant::now() + PULL_POLL < until => {
                    tokio::time::sleep(PULL_POLL).await
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// One delivery of an item.
pub struct SimDelivery {
    server: Arc<Server>,
    consumer: String,
    proc: Arc<Proc>,
    pub(crate) seq: u64,
    delivered: u32,
    body: Bytes,
}

#[async_trait::async_trait]
impl Delivery for SimDelivery {
    fn payload(&self) -> &Bytes {
        &self.body
    }

    fn delivered(&self) -> u32 {
        self.delivered
    }

    async fn ack(&self, how: Ack) -> Result<(), String> {
        let (name, seq) = (self.consumer.clone(), self.seq);
        let op = move |s: &mut State, now: Instant| {
            let q = &mut s.queue;
            let c = q.consumers.get_mut(&name).expect("a consumer made first");
            match how {
                Ack::Done | Ack::DoneConfirmed | Ack::Term => {
                    c.pending.remove(&seq);
                    q.items.remove(&seq).is_some()
                }
                Ack::Progress => match c.pending.get_mut(&seq) {
                    Some(p) => {
                        p.deadline = now + c.ack_wait;
                        true
                    }
                    None => false,
                },
            }
        };
        let what = format!("ack {how:?} {}#{seq}", self.consumer);
        match how {
            // Acks are core messages: nobody waits for them but a
            // confirmed one, and they may be lost.
            Ack::DoneConfirmed => self
                .server
                .request(&self.proc, what, op)
                .await
                .map_err(unavailable)
                .and_then(|took| {
                    if took {
                        Ok(())
                    } else {
                        Err("the item is not on the stream".into())
                    }
                }),
            _ => {
                let server = self.server.clone();
                let proc = self.proc.clone();
                proc.gate().await;
                let now = Instant::now();
                if proc.is_cut(now)
                    || (server.noisy(now) && server.draw(server.faults().message_loss))
                {
                    server.lock().queue.lost.push((now, proc.id, what));
                    return Ok(());
                }
                tokio::spawn(async move {
                    let _ = server.request(&proc, what, op).await;
                });
                Ok(())
            }
        }
    }
}
