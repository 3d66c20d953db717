//! The seam between the work queue ([`super::work`], [`super::worker`])
//! and the NATS server: the messages, the work stream and its pull
//! consumers, as traits, so that the same coordinator's queue and the
//! same worker run against the server (async-nats) and against the
//! in-process model of [`super::simulation`]. [`contract`] is what both
//! must do alike; it runs against each (the model in `simulation`'s
//! tests, a real nats-server in `tests/all/cluster_contract.rs`).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

/// A message heard on a subscription, and where to answer it, if asked.
#[derive(Clone, Debug)]
pub struct Note {
    pub payload: Bytes,
    pub reply: Option<String>,
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Nobody listens on the subject.
    NoResponders,
    /// It timed out, or the server could not be reached.
    Failed(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::NoResponders => f.write_str("no responders"),
            Unanswered::Failed(why) => f.write_str(why),
        }
    }
}

/// How a worker acknowledges a delivered item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Done: the item leaves the stream (fire and forget).
    Done,
    /// Done, and wait for the server to say it took the ack.
    DoneConfirmed,
    /// Still working: the ack wait starts again.
    Progress,
    /// Never deliver it again.
    Term,
}

/// An item sent to the stream: its sequence once the stream took it.
pub type Queueing = BoxFuture<'static, Result<u64, String>>;

/// What the work queue needs of the NATS connection.
#[async_trait::async_trait]
pub trait Wire: Send + Sync {
    /// Sends `body` to the work stream on `subject` (items sent one after
    /// another are queued in that order); the returned future waits for
    /// the stream to take it, and gives its sequence. `id` names the
    /// message: queued again with the same `id` (after a lost reply), it
    /// is not appended twice, and the first one's sequence is given.
    async fn queue(&self, subject: &str, id: &str, body: Bytes) -> Result<Queueing, String>;
    /// Deletes the item at `seq` from the stream `stream`, so that no
    /// worker is given it (again); Ok when it is not there.
    async fn remove(&self, stream: &str, seq: u64) -> Result<(), String>;
    /// Publishes `body` on `subject` (no one need hear it).
    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), String>;
    /// What is published on `subject` from now on.
    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Note>, String>;
    /// Sends `body` to whoever listens on `subject` and waits up to
    /// `timeout` for an answer.
    async fn request(
        &self,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), Unanswered>;
}

/// One delivery of a work item.
#[async_trait::async_trait]
pub trait Delivery: Send + Sync {
    fn payload(&self) -> &Bytes;
    /// Which delivery this is (1: the first).
    fn delivered(&self) -> u32;
    async fn ack(&self, how: Ack) -> Result<(), String>;
}

/// A team's pull consumer of the work stream.
#[async_trait::async_trait]
pub trait Pull: Send + Sync {
    /// The next item for this consumer, waiting up to `expires` for one
    /// (none: nothing came).
    async fn next(&self, expires: Duration) -> Result<Option<Box<dyn Delivery>>, String>;
}

/// The real connection.
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

#[async_trait::async_trait]
impl Wire for Nats {
    async fn queue(&self, subject: &str, id: &str, body: Bytes) -> Result<Queueing, String> {
        let m = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(id);
        let ack = self
            .js
            .send_publish(subject.to_string(), m)
            .await
            .map_err(|e| format!("cannot queue on {subject}: {e}"))?;
        Ok(Box::pin(async move {
            ack.await
                .map(|a| a.sequence)
                .map_err(|e| format!("the work stream did not take it: {e}"))
        }))
    }

    async fn remove(&self, stream: &str, seq: u64) -> Result<(), String> {
        let s = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| e.to_string())?;
        match s.delete_message(seq).await {
            Ok(_) => Ok(()),
            // Acked (work-queue retention) or deleted already: the
            // server's "sequence not found" (JetStream error 10043).
            Err(e) if e.to_string().contains("10043") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn publish(&self, subject: &str, body: Bytes) -> Result<(), String> {
        self.client
            .publish(subject.to_string(), body)
            .await
            .map_err(|e| e.to_string())
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Note>, String> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
        Ok(sub
            .map(|m| Note {
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            })
            .boxed())
    }

    async fn request(
        &self,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), Unanswered> {
        use async_nats::RequestErrorKind;
        let req = async_nats::Request::new()
            .payload(body)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), req).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(Unanswered::NoResponders),
            Err(e) => Err(Unanswered::Failed(e.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl Delivery for jetstream::Message {
    fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn delivered(&self) -> u32 {
        self.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1)
    }

    async fn ack(&self, how: Ack) -> Result<(), String> {
        let r = match how {
            Ack::Done => jetstream::Message::ack(self).await,
            Ack::DoneConfirmed => self.double_ack().await,
            Ack::Progress => self.ack_with(AckKind::Progress).await,
            Ack::Term => self.ack_with(AckKind::Term).await,
        };
        r.map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Pull for jetstream::consumer::Consumer<jetstream::consumer::pull::Config> {
    async fn next(&self, expires: Duration) -> Result<Option<Box<dyn Delivery>>, String> {
        let mut batch = self
            .fetch()
            .max_messages(1)
            .expires(expires)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        // Bounded here too: a pull sent just before the server went away
        // is never ended by it.
        match tokio::time::timeout(expires * 3, batch.next()).await {
            Ok(Some(Ok(m))) => Ok(Some(Box::new(m))),
            Ok(Some(Err(e))) => Err(e.to_string()),
            _ => Ok(None),
        }
    }
}

/// What a wire and a team's consumer (ack wait `ack_wait`, at most
/// `max_deliver` deliveries, filtering `subject`, of stream `stream`)
/// must do, checked on the model and on a real server. `advisories`: the
/// subject of the consumer's max-deliveries advisories.
pub async fn contract(
    wire: &dyn Wire,
    stream: &str,
    pull: &dyn Pull,
    subject: &str,
    advisories: &str,
    ack_wait: Duration,
    max_deliver: u32,
) -> Result<(), String> {
    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(what.to_string())
        }
    }
    let expires = Duration::from_millis(500);
    // Past the ack wait of what was delivered, nothing is delivered.
    let none_after_ack_wait = |what: &'static str| async move {
        tokio::time::sleep(ack_wait + Duration::from_millis(300)).await;
        check(pull.next(expires).await?.is_none(), what)
    };
    // Queues the item named `name` (its id and its payload).
    let queue = |name: &'static str| async move {
        match wire
            .queue(subject, name, Bytes::from_static(name.as_bytes()))
            .await
        {
            Ok(taken) => taken.await,
            Err(e) => Err(e),
        }
    };
    // The next delivery, which must come.
    let next = |missing: &'static str| async move {
        match pull.next(expires).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(missing.to_string()),
            Err(e) => Err(e),
        }
    };
    const NOT_DELIVERED: &str = "a queued item was not delivered";
    // Nothing queued: nothing delivered.
    check(
        pull.next(expires).await?.is_none(),
        "an empty stream delivered an item",
    )?;
    // An item acked is gone.
    let a = queue("a").await?;
    let d = next(NOT_DELIVERED).await?;
    check(
        d.payload() == &Bytes::from_static(b"a"),
        "delivered another payload",
    )?;
    check(d.delivered() == 1, "a first delivery is not delivery 1")?;
    d.ack(Ack::DoneConfirmed).await?;
    none_after_ack_wait("an acked item was delivered again").await?;
    // An item not acked comes again after the ack wait, and not before;
    // progress acks hold it.
    let b = queue("b").await?;
    check(b > a, "stream sequences do not grow")?;
    // Queued again under the same id: not appended twice.
    let same = queue("b").await?;
    check(
        same == b,
        "a message queued twice under one id was appended twice",
    )?;
    let d = next(NOT_DELIVERED).await?;
    check(d.delivered() == 1, "a first delivery is not delivery 1")?;
    for _ in 0..3 {
        tokio::time::sleep(ack_wait / 2).await;
        d.ack(Ack::Progress).await?;
    }
    check(
        pull.next(expires / 5).await?.is_none(),
        "an item whose worker sends progress was delivered to another",
    )?;
    tokio::time::sleep(ack_wait + Duration::from_millis(300)).await;
    let again = next("an item not acked past its ack wait was not redelivered").await?;
    check(
        again.payload() == &Bytes::from_static(b"b"),
        "redelivered another payload",
    )?;
    check(again.delivered() == 2, "a redelivery is not delivery 2")?;
    // Its last delivery not acked: given up, and said so on the advisories.
    let mut given_up = wire.subscribe(advisories).await?;
    let mut last = again;
    for n in 3..=max_deliver {
        tokio::time::sleep(ack_wait + Duration::from_millis(300)).await;
        last = pull
            .next(expires)
            .await?
            .ok_or(format!("delivery {n} of {max_deliver} did not come"))?;
        check(last.delivered() == n, "deliveries are not counted")?;
    }
    drop(last);
    none_after_ack_wait("an item was delivered past max_deliver").await?;
    let note = tokio::time::timeout(Duration::from_secs(5), given_up.next())
        .await
        .map_err(|_| "no max-deliveries advisory")?
        .ok_or("the advisories' subscription ended")?;
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let adv: Advisory = serde_json::from_slice(&note.payload).map_err(|e| e.to_string())?;
    check(adv.stream_seq == b, "the advisory names another item")?;
    check(
        adv.deliveries == max_deliver as u64,
        "the advisory's deliveries",
    )?;
    // A removed item is not delivered, whether it was or not; removing
    // one that is gone is no error.
    let gone = queue("removed").await?;
    wire.remove(stream, gone).await?;
    check(
        pull.next(expires).await?.is_none(),
        "a removed item was delivered",
    )?;
    wire.remove(stream, gone).await?;
    let taken = queue("taken").await?;
    let d = next(NOT_DELIVERED).await?;
    wire.remove(stream, taken).await?;
    d.ack(Ack::Done).await?;
    none_after_ack_wait("an item removed while delivered was delivered again").await?;
    // A term ends an item.
    queue("c").await?;
    let d = next(NOT_DELIVERED).await?;
    d.ack(Ack::Term).await?;
    none_after_ack_wait("a terminated item was delivered again").await?;
    // Requests: none listening, then one that answers.
    // Outside the work stream's subjects (the stream would answer).
    let inbox = format!("contract.{stream}.inbox");
    check(
        wire.request(&inbox, Bytes::new(), Duration::from_secs(2))
            .await
            == Err(Unanswered::NoResponders),
        "a request nobody hears is not told no responders",
    )?;
    let mut heard = wire.subscribe(&inbox).await?;
    let asked = wire.request(&inbox, Bytes::from_static(b"r"), Duration::from_secs(2));
    let answer = async {
        let n = heard.next().await.ok_or("the subscription ended")?;
        check(
            n.payload == Bytes::from_static(b"r"),
            "heard another payload",
        )?;
        let reply = n.reply.ok_or("a request came without a reply subject")?;
        wire.publish(&reply, Bytes::new()).await
    };
    let (asked, answered) = tokio::join!(asked, answer);
    answered?;
    check(asked.is_ok(), "an answered request was not told so")
}
