//! The bus of one run: typed envelopes between the replicas of its tasks.
//!
//! Every replica (`task-id/replica`) has a bounded mailbox; a message to a
//! task id reaches each of its replicas.
//! A full mailbox refuses the message (`Full`), which is the sender's
//! backpressure: it may try again later, nothing is dropped silently. A
//! message to nobody (empty recipient) is a broadcast to every mailbox of
//! the run but the sender's. Messages carry an optional deadline after which
//! they are no longer delivered. Host code can also make a request and await
//! the reply that carries the same correlation id, with a deadline.
//!
//! Plugins write to the bus, so it is bounded in bytes as well as in
//! messages ([`BusLimits`]): a message may carry so many bytes, a mailbox
//! hold so many, and a run carry so many messages and bytes in all. A
//! broadcast is stored once and shared by every mailbox it reaches.
//!
//! What lives elsewhere: the plugin-facing `bus` import (plugin::imports)
//! calls into a [`Bus`] through the team's host services, which also count
//! messages per plugin call and decide which messages are journaled.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `task-id/replica`, or `host`.
    pub from: String,
    /// A task id, `task-id/replica`, or empty for a broadcast.
    pub to: String,
    /// What the body is (`answer`, `critique`, ...).
    pub kind: String,
    pub body: String,
    /// Ties a reply to its request; empty when unused.
    pub correlation_id: String,
    /// Not delivered after this instant.
    pub deadline: Option<Instant>,
}

impl Envelope {
    /// A message from `from` to `to`.
    pub fn new(from: &str, to: &str, kind: &str, body: &str) -> Self {
        Envelope {
            from: from.into(),
            to: to.into(),
            kind: kind.into(),
            body: body.into(),
            correlation_id: String::new(),
            deadline: None,
        }
    }

    /// This message with its body cut (on a character) so that it weighs
    /// at most `limit` bytes: for messages the host itself sends, such as
    /// a replica's answer and reasoning in a debate.
    pub fn fit(mut self, limit: usize) -> Self {
        let over = self.bytes().saturating_sub(limit);
        if over > 0 {
            let mut end = self.body.len().saturating_sub(over);
            while !self.body.is_char_boundary(end) {
                end -= 1;
            }
            self.body.truncate(end);
        }
        self
    }

    /// What the message weighs against the bus's byte limits: its body,
    /// kind, recipient and correlation id (the sender is the host's).
    pub fn bytes(&self) -> usize {
        self.body.len() + self.kind.len() + self.to.len() + self.correlation_id.len()
    }
}

/// Limits of a run's bus; one home for these numbers, each overridable in
/// the team spec's `[team]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusLimits {
    /// Messages a mailbox holds. Default 64 (`bus_capacity`).
    pub capacity: usize,
    /// Bytes of one message (body, kind, recipient, correlation id).
    /// Default 64 KiB (`max_message_bytes`).
    pub message_bytes: usize,
    /// Bytes a mailbox holds. Default 1 MiB (`max_mailbox_bytes`).
    pub mailbox_bytes: usize,
    /// Bytes of all the messages a run's bus carries. Default 16 MiB
    /// (`max_bus_bytes`).
    pub run_bytes: u64,
    /// Messages a run's bus carries. Default 10,000 (`max_bus_messages`).
    pub run_messages: u64,
    /// Messages one plugin call may send (counted by the host services).
    /// Default 256 (`max_messages_per_call`).
    pub messages_per_call: u32,
    /// Messages journaled per run; past them one summary record says that
    /// the rest were not, and the run's result still counts them all.
    /// Default 1,000 (`max_journaled_messages`).
    pub journaled_messages: u64,
}

impl Default for BusLimits {
    fn default() -> Self {
        BusLimits {
            capacity: 64,
            message_bytes: 64 << 10,
            mailbox_bytes: 1 << 20,
            run_bytes: 16 << 20,
            run_messages: 10_000,
            messages_per_call: 256,
            journaled_messages: 1_000,
        }
    }
}

/// Why a message was not sent or no reply came.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("the mailbox of {0} is full ({1} messages waiting); try again later")]
    Full(String, usize),
    #[error(
        "the mailbox of {mailbox} is full ({held} bytes waiting; another {bytes} would pass its \
         {limit}, `max_mailbox_bytes` in [team]); try again later"
    )]
    MailboxBytes {
        mailbox: String,
        held: usize,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "a message of {bytes} bytes is larger than the {limit} bytes a message may carry \
         (body, kind, recipient and correlation id; `max_message_bytes` in [team])"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "the run's bus is full: it has carried {used} of the {limit} {what} a run may send \
         (`{key}` in [team]); no more messages in this run"
    )]
    RunQuota {
        what: &'static str,
        used: u64,
        limit: u64,
        key: &'static str,
    },
    #[error(
        "this plugin call has sent the {0} messages one call may send (`max_messages_per_call` \
         in [team])"
    )]
    CallQuota(u32),
    #[error("no mailbox {0:?} in this run")]
    UnknownRecipient(String),
    #[error("no reply to {0:?} within {1:?}")]
    Timeout(String, Duration),
}

#[derive(Default)]
struct Mailbox {
    queue: VecDeque<Arc<Envelope>>,
    /// Bytes of the messages waiting, by [`Envelope::bytes`].
    bytes: usize,
}

#[derive(Default)]
struct State {
    boxes: BTreeMap<String, Mailbox>,
    /// Pending requests: correlation id → (requester, where its reply goes).
    waiting: HashMap<String, (String, oneshot::Sender<Envelope>)>,
    sent: u64,
    sent_bytes: u64,
}

/// The mailboxes of one run.
pub struct Bus {
    limits: BusLimits,
    state: Mutex<State>,
}

impl Bus {
    /// A bus whose mailboxes hold at most `capacity` messages each, with
    /// the default byte limits.
    pub fn new(capacity: usize) -> Self {
        Bus::with_limits(BusLimits {
            capacity,
            ..BusLimits::default()
        })
    }

    /// A bus with `limits`.
    pub fn with_limits(limits: BusLimits) -> Self {
        Bus {
            limits: BusLimits {
                capacity: limits.capacity.max(1),
                ..limits
            },
            state: Mutex::new(State::default()),
        }
    }

    /// The bus's limits.
    pub fn limits(&self) -> &BusLimits {
        &self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the mailbox `address` (idempotent).
    pub fn open(&self, address: &str) {
        self.state().boxes.entry(address.to_string()).or_default();
    }

    /// Closes the mailboxes of every replica of `task` (when it ends):
    /// what they still hold is dropped, later messages to them refused.
    pub fn close_task(&self, task: &str) {
        let prefix = format!("{task}/");
        self.state().boxes.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.state().sent
    }

    /// Sends `message`: the how-many-th message of the run it is, from 1.
    /// A reply to a pending [`Bus::request`] (same correlation id,
    /// addressed to its sender) goes to the requester. A broadcast is all
    /// or nothing: if any mailbox is full, none gets it; it is stored once.
    pub fn send(&self, message: Envelope) -> Result<u64, BusError> {
        let bytes = message.bytes();
        let limits = self.limits;
        if bytes > limits.message_bytes {
            return Err(BusError::TooLarge {
                bytes,
                limit: limits.message_bytes,
            });
        }
        let mut s = self.state();
        if s.sent >= limits.run_messages {
            return Err(BusError::RunQuota {
                what: "messages",
                used: s.sent,
                limit: limits.run_messages,
                key: "max_bus_messages",
            });
        }
        if s.sent_bytes + bytes as u64 > limits.run_bytes {
            return Err(BusError::RunQuota {
                what: "bytes",
                used: s.sent_bytes,
                limit: limits.run_bytes,
                key: "max_bus_bytes",
            });
        }
        let is_reply = s
            .waiting
            .get(&message.correlation_id)
            .is_some_and(|(requester, _)| *requester == message.to);
        if is_reply {
            if let Some((_, tx)) = s.waiting.remove(&message.correlation_id) {
                s.sent += 1;
                s.sent_bytes += bytes as u64;
                // The requester may have given up; that is not the sender's
                // error.
                let _ = tx.send(message);
                return Ok(s.sent);
            }
        }
        let targets: Vec<String> = if message.to.is_empty() {
            s.boxes
                .keys()
                .filter(|k| **k != message.from)
                .cloned()
                .collect()
        } else if s.boxes.contains_key(&message.to) {
            vec![message.to.clone()]
        } else {
            // A task id reaches every replica of that task.
            let prefix = format!("{}/", message.to);
            let replicas: Vec<String> = s
                .boxes
                .keys()
                .filter(|k| k.starts_with(&prefix) && **k != message.from)
                .cloned()
                .collect();
            if replicas.is_empty() {
                return Err(BusError::UnknownRecipient(message.to));
            }
            replicas
        };
        for t in &targets {
            let b = &s.boxes[t];
            if b.queue.len() >= limits.capacity {
                return Err(BusError::Full(t.clone(), limits.capacity));
            }
            if b.bytes + bytes > limits.mailbox_bytes {
                return Err(BusError::MailboxBytes {
                    mailbox: t.clone(),
                    held: b.bytes,
                    bytes,
                    limit: limits.mailbox_bytes,
                });
            }
        }
        let shared = Arc::new(message);
        for t in targets {
            let b = s.boxes.get_mut(&t).expect("listed");
            b.bytes += bytes;
            b.queue.push_back(shared.clone());
        }
        s.sent += 1;
        s.sent_bytes += bytes as u64;
        Ok(s.sent)
    }

    /// Takes every message waiting for `address` whose deadline has not
    /// passed, oldest first.
    pub fn inbox(&self, address: &str) -> Vec<Envelope> {
        let now = Instant::now();
        let mut s = self.state();
        match s.boxes.get_mut(address) {
            Some(b) => {
                b.bytes = 0;
                b.queue
                    .drain(..)
                    .filter(|m| m.deadline.is_none_or(|d| d > now))
                    .map(Arc::unwrap_or_clone)
                    .collect()
            }
            None => Vec::new(),
        }
    }

    /// Sends `message` with a fresh correlation id and waits up to `within`
    /// for the reply that carries it.
    pub async fn request(
        &self,
        mut message: Envelope,
        within: Duration,
    ) -> Result<Envelope, BusError> {
        let id = {
            let s = self.state();
            format!("{}#{}", message.from, s.sent + 1)
        };
        message.correlation_id = id.clone();
        message.deadline = Some(Instant::now() + within);
        let (tx, rx) = oneshot::channel();
        self.state()
            .waiting
            .insert(id.clone(), (message.from.clone(), tx));
        if let Err(e) = self.send(message) {
            self.state().waiting.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.state().waiting.remove(&id);
                Err(BusError::Timeout(id, within))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_messages_reach_only_their_recipient() {
        let bus = Bus::new(4);
        bus.open("t/0");
        bus.open("t/1");
        bus.send(Envelope::new("t/0", "t/1", "answer", "42"))
            .unwrap();
        assert!(bus.inbox("t/0").is_empty());
        let got = bus.inbox("t/1");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].from.as_str(), got[0].body.as_str()), ("t/0", "42"));
        assert!(bus.inbox("t/1").is_empty(), "inbox takes the messages");
    }

    #[test]
    fn broadcast_skips_the_sender() {
        let bus = Bus::new(4);
        for a in ["t/0", "t/1", "t/2"] {
            bus.open(a);
        }
        bus.send(Envelope::new("t/1", "", "answer", "7")).unwrap();
        assert_eq!(bus.inbox("t/0").len(), 1);
        assert_eq!(bus.inbox("t/1").len(), 0);
        assert_eq!(bus.inbox("t/2").len(), 1);
    }

    #[test]
    fn a_full_mailbox_pushes_back_and_keeps_what_it_has() {
        let bus = Bus::new(2);
        bus.open("a");
        bus.send(Envelope::new("h", "a", "k", "1")).unwrap();
        bus.send(Envelope::new("h", "a", "k", "2")).unwrap();
        let e = bus.send(Envelope::new("h", "a", "k", "3")).unwrap_err();
        assert_eq!(e, BusError::Full("a".into(), 2));
        let bodies: Vec<_> = bus.inbox("a").into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, ["1", "2"]);
        bus.send(Envelope::new("h", "a", "k", "3")).unwrap();
    }

    #[test]
    fn a_task_id_reaches_its_replicas() {
        let bus = Bus::new(2);
        for a in ["t/0", "t/1", "u/0"] {
            bus.open(a);
        }
        bus.send(Envelope::new("u/0", "t", "k", "x")).unwrap();
        assert_eq!(
            (
                bus.inbox("t/0").len(),
                bus.inbox("t/1").len(),
                bus.inbox("u/0").len()
            ),
            (1, 1, 0)
        );
    }

    #[test]
    fn unknown_recipients_are_refused() {
        let bus = Bus::new(2);
        assert_eq!(
            bus.send(Envelope::new("h", "nobody", "k", "")),
            Err(BusError::UnknownRecipient("nobody".into()))
        );
    }

    fn small(capacity: usize) -> BusLimits {
        BusLimits {
            capacity,
            message_bytes: 100,
            mailbox_bytes: 250,
            run_bytes: 1_000,
            run_messages: 30,
            ..BusLimits::default()
        }
    }

    #[test]
    fn a_message_past_the_byte_limit_is_refused_whole() {
        let bus = Bus::with_limits(small(64));
        bus.open("a");
        // 97 bytes of body plus `k` and `a`: 99, within 100.
        assert_eq!(
            bus.send(Envelope::new("h", "a", "k", &"x".repeat(97))),
            Ok(1)
        );
        let mut m = Envelope::new("h", "a", "k", &"x".repeat(90));
        m.correlation_id = "c".repeat(9);
        assert_eq!(
            bus.send(m),
            Err(BusError::TooLarge {
                bytes: 101,
                limit: 100
            })
        );
        assert_eq!(bus.inbox("a").len(), 1);
    }

    #[test]
    fn a_mailbox_counts_bytes_and_frees_them_when_read() {
        let bus = Bus::with_limits(small(64));
        bus.open("a");
        let m = || Envelope::new("h", "a", "k", &"x".repeat(98));
        bus.send(m()).unwrap();
        bus.send(m()).unwrap();
        let e = bus.send(m()).unwrap_err();
        assert_eq!(
            e,
            BusError::MailboxBytes {
                mailbox: "a".into(),
                held: 200,
                bytes: 100,
                limit: 250
            }
        );
        assert!(e.to_string().contains("max_mailbox_bytes"), "{e}");
        assert_eq!(bus.inbox("a").len(), 2);
        bus.send(m()).unwrap();
    }

    #[test]
    fn a_run_carries_so_many_bytes_and_messages_in_all() {
        let bus = Bus::with_limits(small(64));
        bus.open("a");
        for _ in 0..10 {
            bus.send(Envelope::new("h", "a", "k", &"x".repeat(98)))
                .unwrap();
            bus.inbox("a");
        }
        let e = bus.send(Envelope::new("h", "a", "k", "y")).unwrap_err();
        assert!(
            matches!(
                e,
                BusError::RunQuota {
                    what: "bytes",
                    used: 1000,
                    limit: 1000,
                    ..
                }
            ),
            "{e}"
        );
        let bus = Bus::with_limits(small(64));
        bus.open("a");
        for _ in 0..30 {
            bus.send(Envelope::new("h", "a", "k", "")).unwrap();
            bus.inbox("a");
        }
        let e = bus.send(Envelope::new("h", "a", "k", "")).unwrap_err();
        assert!(e.to_string().contains("max_bus_messages"), "{e}");
        assert_eq!(bus.sent(), 30);
    }

    #[test]
    fn a_broadcast_is_stored_once_and_shared() {
        let bus = Bus::new(4);
        for a in ["t/0", "t/1", "t/2"] {
            bus.open(a);
        }
        bus.send(Envelope::new("t/0", "", "k", "shared")).unwrap();
        {
            let s = bus.state();
            let a = &s.boxes["t/1"].queue[0];
            let b = &s.boxes["t/2"].queue[0];
            assert!(Arc::ptr_eq(a, b), "one copy for every mailbox");
            assert_eq!(Arc::strong_count(a), 2);
            assert_eq!(s.sent_bytes, "shared".len() as u64 + 1);
        }
        assert_eq!(bus.inbox("t/1")[0].body, "shared");
        assert_eq!(bus.inbox("t/2")[0].body, "shared");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_messages_are_not_delivered() {
        let bus = Bus::new(4);
        bus.open("a");
        let mut m = Envelope::new("h", "a", "k", "late");
        m.deadline = Some(Instant::now() + Duration::from_secs(1));
        bus.send(m).unwrap();
        bus.send(Envelope::new("h", "a", "k", "fresh")).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let bodies: Vec<_> = bus.inbox("a").into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, ["fresh"]);
    }

    #[tokio::test(start_paused = true)]
    async fn request_gets_the_reply_with_its_correlation_id() {
        let bus = std::sync::Arc::new(Bus::new(4));
        bus.open("server");
        bus.open("client");
        let b = bus.clone();
        let server = tokio::spawn(async move {
            loop {
                if let Some(m) = b.inbox("server").pop() {
                    let mut reply = Envelope::new("server", &m.from, "pong", &m.body);
                    reply.correlation_id = m.correlation_id;
                    b.send(reply).unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let reply = bus
            .request(
                Envelope::new("client", "server", "ping", "hi"),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!((reply.kind.as_str(), reply.body.as_str()), ("pong", "hi"));
        assert!(
            bus.inbox("client").is_empty(),
            "the reply went to the waiter"
        );
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn request_without_reply_times_out() {
        let bus = Bus::new(4);
        bus.open("server");
        let e = bus
            .request(
                Envelope::new("client", "server", "ping", ""),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::Timeout(_, d) if d == Duration::from_millis(50)));
    }
}
