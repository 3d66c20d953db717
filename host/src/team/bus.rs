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
//! What lives elsewhere: the plugin-facing `bus` import (plugin::imports)
//! calls into a [`Bus`] through the team's host services.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

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
}

/// Why a message was not sent or no reply came.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("the mailbox of {0} is full ({1} messages waiting); try again later")]
    Full(String, usize),
    #[error("no mailbox {0:?} in this run")]
    UnknownRecipient(String),
    #[error("no reply to {0:?} within {1:?}")]
    Timeout(String, Duration),
}

#[derive(Default)]
struct State {
    boxes: BTreeMap<String, VecDeque<Envelope>>,
    /// Pending requests: correlation id → (requester, where its reply goes).
    waiting: HashMap<String, (String, oneshot::Sender<Envelope>)>,
    sent: u64,
}

/// The mailboxes of one run.
pub struct Bus {
    capacity: usize,
    state: Mutex<State>,
}

impl Bus {
    /// A bus whose mailboxes hold at most `capacity` messages each.
    pub fn new(capacity: usize) -> Self {
        Bus {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
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

    /// Sends `message`. A reply to a pending [`Bus::request`] (same
    /// correlation id, addressed to its sender) goes to the requester.
    /// A broadcast is all or nothing: if any mailbox is full, none gets it.
    pub fn send(&self, message: Envelope) -> Result<(), BusError> {
        let mut s = self.state();
        let is_reply = s
            .waiting
            .get(&message.correlation_id)
            .is_some_and(|(requester, _)| *requester == message.to);
        if is_reply {
            if let Some((_, tx)) = s.waiting.remove(&message.correlation_id) {
                s.sent += 1;
                // The requester may have given up; that is not the sender's
                // error.
                let _ = tx.send(message);
                return Ok(());
            }
        }
        let capacity = self.capacity;
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
        if let Some(full) = targets.iter().find(|t| s.boxes[*t].len() >= capacity) {
            return Err(BusError::Full(full.clone(), capacity));
        }
        for t in targets {
            s.boxes
                .get_mut(&t)
                .expect("listed")
                .push_back(message.clone());
        }
        s.sent += 1;
        Ok(())
    }

    /// Takes every message waiting for `address` whose deadline has not
    /// passed, oldest first.
    pub fn inbox(&self, address: &str) -> Vec<Envelope> {
        let now = Instant::now();
        let mut s = self.state();
        match s.boxes.get_mut(address) {
            Some(q) => q
                .drain(..)
                .filter(|m| m.deadline.is_none_or(|d| d > now))
                .collect(),
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
