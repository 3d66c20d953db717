//! The seam between the cluster's logic and the key-value buckets it keeps
//! on the NATS server: the operations the coordinator lease uses, as a
//! trait, so that the same election runs against the server
//! (`async_nats::jetstream::kv::Store`) and against the in-process model
//! of [`super::simulation`]. [`contract`] is what both must do alike; it
//! runs against each (the model in `simulation`'s tests, a real
//! nats-server in `tests/all/cluster_contract.rs`).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

/// Why a key-value operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// `create`: the key has a live value.
    Exists,
    /// `update` or `delete_expect_revision`: the key's last revision is
    /// not the one expected (someone else wrote it, or it expired).
    WrongRevision,
    /// The server could not be reached or did not answer in time.
    Unavailable(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Exists => f.write_str("the key exists"),
            KvError::WrongRevision => f.write_str("wrong last revision"),
            KvError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// What the election needs of a bucket whose values expire a fixed time
/// after they are written. Revisions only grow across the bucket.
#[async_trait::async_trait]
pub trait LeaseKv: Send + Sync {
    /// Writes `key` if it has no live value; its revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError>;
    /// The live value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;
    /// Writes `key` if its last revision is `revision`; the new revision.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError>;
    /// Deletes `key` if its last revision is `revision`.
    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError>;
}

#[async_trait::async_trait]
impl LeaseKv for kv::Store {
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        kv::Store::create(self, key, value).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                KvError::Exists
            } else {
                KvError::Unavailable(e.to_string())
            }
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        kv::Store::get(self, key)
            .await
            .map_err(|e| KvError::Unavailable(e.to_string()))
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        kv::Store::update(self, key, value, revision)
            .await
            .map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    KvError::WrongRevision
                } else {
                    KvError::Unavailable(e.to_string())
                }
            })
    }

    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError> {
        kv::Store::delete_expect_revision(self, key, Some(revision))
            .await
            .map_err(|e| {
                // The server says "wrong last sequence" in the error text.
                let text = e.to_string();
                if text.contains("wrong last sequence") {
                    KvError::WrongRevision
                } else {
                    KvError::Unavailable(text)
                }
            })
    }
}

/// The contract of a [`LeaseKv`] whose values live `ttl`: what the
/// election relies on. `key` must be unused. Waits about 1.5 × `ttl` for
/// a value to expire (in virtual time on the model). `Err` says which
/// step broke it.
pub async fn contract(kv: &dyn LeaseKv, key: &str, ttl: Duration) -> Result<(), String> {
    let v = |s: &str| Bytes::from(s.to_string());
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(what.to_string())
        }
    };
    check(
        kv.get(key).await == Ok(None),
        "an unused key reads as no value",
    )?;
    let first = kv
        .create(key, v("a"))
        .await
        .map_err(|e| format!("create on an unused key: {e}"))?;
    check(
        kv.create(key, v("b")).await == Err(KvError::Exists),
        "create on a live key is refused as existing",
    )?;
    check(
        kv.get(key).await == Ok(Some(v("a"))),
        "get reads the value created",
    )?;
    let second = kv
        .update(key, v("c"), first)
        .await
        .map_err(|e| format!("update expecting the last revision: {e}"))?;
    check(second > first, "an update's revision is larger")?;
    check(
        kv.update(key, v("d"), first).await == Err(KvError::WrongRevision),
        "update expecting an older revision is refused",
    )?;
    check(
        kv.delete_expect_revision(key, first).await == Err(KvError::WrongRevision),
        "delete expecting an older revision is refused",
    )?;
    check(
        kv.get(key).await == Ok(Some(v("c"))),
        "a refused write changes nothing",
    )?;
    kv.delete_expect_revision(key, second)
        .await
        .map_err(|e| format!("delete expecting the last revision: {e}"))?;
    check(kv.get(key).await == Ok(None), "a deleted key reads as none")?;
    check(
        kv.update(key, v("e"), second).await == Err(KvError::WrongRevision),
        "update of a deleted key is refused",
    )?;
    let third = kv
        .create(key, v("f"))
        .await
        .map_err(|e| format!("create over a deleted key: {e}"))?;
    check(third > second, "revisions grow across a delete")?;
    // Expiry: nothing written for longer than the time to live.
    tokio::time::sleep(ttl + ttl / 2).await;
    check(
        kv.get(key).await == Ok(None),
        "a value expires after its ttl",
    )?;
    check(
        kv.update(key, v("g"), third).await == Err(KvError::WrongRevision),
        "update of an expired key is refused",
    )?;
    let fourth = kv
        .create(key, v("h"))
        .await
        .map_err(|e| format!("create over an expired key: {e}"))?;
    check(fourth > third, "revisions grow across an expiry")?;
    // A renewal keeps a value alive past its first ttl.
    tokio::time::sleep(ttl * 3 / 4).await;
    let fifth = kv
        .update(key, v("i"), fourth)
        .await
        .map_err(|e| format!("renewal before expiry: {e}"))?;
    tokio::time::sleep(ttl * 3 / 4).await;
    check(
        kv.get(key).await == Ok(Some(v("i"))),
        "a renewed value outlives the first write's ttl",
    )?;
    check(
        kv.create(key, v("j")).await == Err(KvError::Exists),
        "create on a renewed key is refused",
    )?;
    kv.delete_expect_revision(key, fifth)
        .await
        .map_err(|e| format!("delete after renewal: {e}"))?;
    Ok(())
}
