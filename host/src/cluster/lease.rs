//! The coordinator lease: who coordinates the cluster now.
//!
//! The lease is the key `coordinator` in the bucket `conclave-NAME-lease`,
//! whose entries expire `ttl` after they were written (the bucket's
//! `max_age`; the first process to create the bucket sets it, and later
//! ones use what the bucket says). Its value names the holder
//! ([`Holder`]).
//!
//! - A standby tries to create the key every `ttl / 4`; creating succeeds
//!   only when there is no live entry, so one process at a time holds the
//!   lease. The revision it created the key at is its **term**: terms only
//!   grow (they are stream sequences), so a later coordinator's is larger.
//! - The holder renews every `ttl / 4` by updating the key *expecting the
//!   revision it last wrote*: if anyone else wrote it meanwhile, the
//!   update is refused and the holder steps down.
//! - The holder's own deadline is three quarters of `ttl` after it *sent*
//!   its last successful renewal. The server cannot let the entry expire
//!   before `ttl` after it *received* it, so the holder knows it is deposed
//!   (and stops acting) before any standby can take the key, with a
//!   quarter of `ttl` to spare for scheduling delays. A process that is
//!   paused past its deadline (`SIGSTOP`, a long GC-like stall) is caught
//!   by the journal's fencing instead ([`super`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::time::Instant;

use super::kv::{Kv, KvError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::journal::jetstream::ClusterConfig;

/// The lease's time to live when none is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest time to live accepted (renewals are a quarter of it).
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The lease's key in its bucket.
pub(crate) const KEY: &str = "coordinator";

/// Who holds (or held) the lease, as its value says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Names the process: `HOSTNAME/PID`, unless given.
    pub id: String,
    /// Where it serves requests (`http://HOST:PORT`), for standbys to point
    /// clients at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Its term, written with its first renewal, right after it creates
    /// the key (the term is the revision that creation gets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

impl Holder {
    /// This process, serving at `http`.
    pub fn this_process(http: Option<String>) -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "host".into());
        Holder {
            id: format!("{host}/{}", std::process::id()),
            http,
            term: None,
        }
    }
}

/// Where this process stands in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Another process holds the lease (`None`: it could not be read, or
    /// nobody holds it and this one has not taken it yet).
    Standby { leader: Option<Holder> },
    /// This process holds the lease since it created it at revision `term`.
    Leading { term: u64 },
    /// This process held the lease in `term` and lost it (it could not
    /// renew it in time, or another took it): it must stop coordinating.
    /// A quarter of the TTL later it is a standby again.
    Deposed { term: u64, why: String },
}

/// Taking part in the election until dropped (a holder that leaves
/// releases the lease).
///
/// The election runs on a thread of its own, with its own connection and
/// its own single-threaded runtime: a process whose runtime is busy (a
/// burst of thousands of requests on a small machine) must still renew its
/// lease on time, or it is deposed for being slow rather than gone.
pub struct Election {
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    ttl: Duration,
}

impl Election {
    /// Connects and joins the election as `me`, as a standby: the lease is
    /// taken by the loop this starts, which reports through [`Self::role`].
    /// `ttl` is used when this process creates the lease bucket.
    pub async fn join(
        config: &ClusterConfig,
        me: Holder,
        ttl: Duration,
    ) -> Result<Election, String> {
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (tx, role) = watch::channel(Role::Standby { leader: None });
        let stop = CancellationToken::new();
        let config = config.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("conclave-lease".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            opened_tx.send(Err(format!("cannot start the lease's runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match open(&config, ttl).await {
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                        }
                        Ok((store, ttl)) => {
                            let _ = opened_tx.send(Ok(ttl));
                            elect(Arc::new(store), me, ttl, tx, stopped).await;
                        }
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the lease's thread: {e}"))?;
        let ttl = opened
            .await
            .map_err(|_| "the lease's thread stopped".to_string())??;
        Ok(Election {
            role,
            stop,
            done: Some(done),
            ttl,
        })
    }

    /// Where this process stands, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The lease's time to live (the bucket's).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Leaves the election; the lease, if held, is released at once (a
    /// standby can take it on its next try).
    pub async fn leave(mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects, opens the lease bucket (made with `ttl` if it is not there)
/// and says the time to live it has.
async fn open(config: &ClusterConfig, ttl: Duration) -> Result<(kv::Store, Duration), String> {
    let ttl = ttl.max(MIN_TTL);
    let js = super::connect(config, "election").await?;
    let name = format!("conclave-{}-lease", config.name);
    let store = super::bucket(
        &js,
        kv::Config {
            bucket: name.clone(),
            description: "Conclave's coordinator lease".into(),
            history: 1,
            max_age: ttl,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await?;
    match store.status().await {
        Ok(s) if s.max_age() >= MIN_TTL => {
            if s.max_age() != ttl {
                tracing::warn!(
                    "the lease bucket {name} has a time to live of {:?}, which this process uses (not {:?})",
                    s.max_age(),
                    ttl
                );
            }
            let ttl = s.max_age();
            Ok((store, ttl))
        }
        Ok(s) => Err(format!(
            "the lease bucket {name} has no usable time to live ({:?}); delete it to let it be created again",
            s.max_age()
        )),
        Err(e) => Err(format!("cannot read the lease bucket {name}: {e}")),
    }
}

/// The election loop, until `stop`: standby until the key can be created,
/// then holder until a renewal fails or the deadline passes, then deposed
/// (the process stops coordinating in that term), and, a quarter of `ttl`
/// later, a standby again: a coordinator that lost the lease to a slow or
/// restarted server, or to a pause, rejoins by itself, and may lead again
/// in a later term.
pub(crate) async fn elect(
    store: Arc<dyn Kv>,
    me: Holder,
    ttl: Duration,
    tx: watch::Sender<Role>,
    stop: CancellationToken,
) {
    loop {
        let Some((term, why)) = hold(store.as_ref(), &me, ttl, &tx, &stop).await else {
            return;
        };
        let _ = tx.send(Role::Deposed { term, why });
        // Deposed stays what the process reads for a moment, so that all
        // who watch the role see it (and stop what they do in `term`)
        // before it turns standby.
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ttl / 4) => {}
        }
    }
}

/// One term: standby until the key can be created, then holder until the
/// lease is lost (`Some((term, why))`) or `stop` (`None`).
async fn hold(
    store: &dyn Kv,
    me: &Holder,
    ttl: Duration,
    tx: &watch::Sender<Role>,
    stop: &CancellationToken,
) -> Option<(u64, String)> {
    let value: bytes::Bytes = serde_json::to_vec(me).unwrap_or_default().into();
    let every = ttl / 4;
    let deadline_after = ttl * 3 / 4;
    // Standby.
    let (term, mut revision, mut renewed) = loop {
        let sent = Instant::now();
        match store.create(KEY, value.clone()).await {
            Ok(rev) => break (rev, rev, sent),
            Err(KvError::Exists) => {
                // This process's own entry, from the term it just lost,
                // until it expires: nobody else leads yet.
                let leader = match store.get(KEY).await {
                    Ok(Some(v)) => serde_json::from_slice::<Holder>(&v)
                        .ok()
                        .filter(|h| h.id != me.id),
                    _ => None,
                };
                tx.send_if_modified(|r| {
                    let now = Role::Standby { leader };
                    let changed = *r != now;
                    *r = now;
                    changed
                });
            }
            Err(e) => {
                tracing::warn!("coordinator lease: cannot try to take it: {e}");
                tx.send_if_modified(|r| {
                    let changed = *r != Role::Standby { leader: None };
                    *r = Role::Standby { leader: None };
                    changed
                });
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
    };
    let _ = tx.send(Role::Leading { term });
    let value: bytes::Bytes = serde_json::to_vec(&Holder {
        term: Some(term),
        ..me.clone()
    })
    .unwrap_or_default()
    .into();
    // Holder. Renewals go every quarter of the ttl after the last one was
    // sent (a slow acknowledgement does not push the next one back); the
    // holder wakes no later than its deadline, and steps down at it. The
    // first renewal goes at once, to write the term into the value.
    let mut next = Instant::now();
    let lapsed = || {
        format!(
            "no renewal of the coordinator lease was acknowledged within {:?}",
            deadline_after
        )
    };
    let why = loop {
        let deadline = renewed + deadline_after;
        let wake = next.min(deadline);
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                // Released for the next holder, if it is still ours.
                let _ = store.delete_expect_revision(KEY, revision).await;
                return None;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(wake);
        if late > every {
            tracing::warn!(
                "coordinator lease: this process woke {late:?} late to renew the lease (it renews every {every:?}): it is starved of CPU"
            );
        }
        if now >= deadline {
            break lapsed();
        }
        let sent = now;
        next = sent + every;
        match tokio::time::timeout_at(deadline, store.update(KEY, value.clone(), revision)).await {
            Ok(Ok(rev)) => {
                revision = rev;
                renewed = sent;
                let took = sent.elapsed();
                if took > every {
                    tracing::warn!(
                        "coordinator lease: a renewal took {took:?} to be acknowledged (it renews every {every:?} and is deposed {deadline_after:?} after its last acknowledged renewal): the NATS server is slow to write"
                    );
                }
                // An acknowledgement heard after the deadline it sets (the
                // process was stopped while it was on its way) renews
                // nothing this process may still act on: the value may
                // have expired and been taken meanwhile.
                if Instant::now() >= sent + deadline_after {
                    break format!(
                        "a renewal of the coordinator lease was acknowledged only after {took:?}, past its deadline of {deadline_after:?}"
                    );
                }
            }
            Ok(Err(KvError::WrongRevision)) => {
                break "another process took the coordinator lease".to_string();
            }
            Ok(Err(e)) => {
                tracing::warn!("coordinator lease: renewal failed ({e}); retrying");
            }
            Err(_) => break lapsed(),
        }
    };
    Some((term, why))
}
