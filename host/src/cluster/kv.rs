//! The seam between the cluster's logic and the key-value buckets it keeps
//! on the NATS server: the operations the coordinator lease, the registry
//! of runs in progress and the owners' beats use, as a trait, so that the
//! same election and takeover run against the server
//! (`async_nats::jetstream::kv::Store`) and against the in-process model
//! of [`super::simulation`]. [`contract`] (a bucket whose values expire)
//! and [`registry_contract`] (one whose values stay) are what both must
//! do alike; they run against each (the model in `simulation`'s tests, a
//! real nats-server in `tests/all/cluster_contract.rs`).

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

/// What the cluster needs of a key-value bucket (values may expire a fixed
/// time after they are written). Revisions only grow across the bucket.
#[async_trait::async_trait]
pub trait Kv: Send + Sync {
    /// Writes `key` if it has no live value; its revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError>;
    /// The live value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;
    /// Writes `key` if its last revision is `revision`; the new revision.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError>;
    /// Deletes `key` if its last revision is `revision`.
    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError>;
    /// Writes `key` whatever it holds; the new revision.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError>;
    /// The live value of `key` and its revision, if any.
    async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, KvError>;
    /// Deletes `key` whatever it holds.
    async fn delete(&self, key: &str) -> Result<(), KvError>;
    /// The keys with a live value.
    async fn keys(&self) -> Result<Vec<String>, KvError>;
}

#[async_trait::async_trait]
impl Kv for kv::Store {
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

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        kv::Store::put(self, key, value)
            .await
            .map_err(|e| KvError::Unavailable(e.to_string()))
    }

    async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, KvError> {
        match kv::Store::entry(self, key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some((e.value, e.revision))),
            Ok(_) => Ok(None),
            Err(e) => Err(KvError::Unavailable(e.to_string())),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        kv::Store::delete(self, key)
            .await
            .map_err(|e| KvError::Unavailable(e.to_string()))
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        use futures::TryStreamExt;
        let unavailable = |e: String| KvError::Unavailable(e);
        let keys = kv::Store::keys(self)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        keys.sort();
        Ok(keys)
    }
}

/// A value of the contracts.
fn value(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

/// `Ok` when `ok`, else `what` was broken.
fn holds(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// The contract of a [`Kv`] whose values live `ttl`: what the
/// election relies on. `key` must be unused. Waits about 1.5 × `ttl` for
/// a value to expire (in virtual time on the model). `Err` says which
/// step broke it.
pub async fn contract(kv: &dyn Kv, key: &str, ttl: Duration) -> Result<(), String> {
    let (v, check) = (value, holds);
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

/// The contract of a [`Kv`] whose values stay: what the registry of runs
/// in progress relies on. The bucket must be empty.
pub async fn registry_contract(kv: &dyn Kv) -> Result<(), String> {
    let (v, check) = (value, holds);
    check(
        kv.keys().await == Ok(vec![]),
        "an empty bucket lists no keys",
    )?;
    check(
        kv.entry("a").await == Ok(None),
        "an unused key has no entry",
    )?;
    let a = kv
        .put("a", v("1"))
        .await
        .map_err(|e| format!("put on an unused key: {e}"))?;
    let b = kv
        .put("b", v("2"))
        .await
        .map_err(|e| format!("put on another key: {e}"))?;
    check(b > a, "revisions grow across keys")?;
    check(
        kv.entry("a").await == Ok(Some((v("1"), a))),
        "an entry is the value put and its revision",
    )?;
    let a2 = kv
        .put("a", v("3"))
        .await
        .map_err(|e| format!("put over a value: {e}"))?;
    check(a2 > b, "a put over a value has a new revision")?;
    check(
        kv.keys().await == Ok(vec!["a".to_string(), "b".to_string()]),
        "keys lists each live key once, in order",
    )?;
    check(
        kv.update("a", v("4"), a).await == Err(KvError::WrongRevision),
        "an update expecting a replaced revision is refused",
    )?;
    let a3 = kv
        .update("a", v("5"), a2)
        .await
        .map_err(|e| format!("update expecting the last revision: {e}"))?;
    kv.delete("b").await.map_err(|e| format!("delete: {e}"))?;
    check(
        kv.entry("b").await == Ok(None),
        "a deleted key has no entry",
    )?;
    check(
        kv.keys().await == Ok(vec!["a".to_string()]),
        "keys leaves deleted keys out",
    )?;
    check(
        kv.delete_expect_revision("a", a2).await == Err(KvError::WrongRevision),
        "a delete expecting an older revision is refused",
    )?;
    check(
        kv.entry("a").await == Ok(Some((v("5"), a3))),
        "a refused delete changes nothing",
    )?;
    kv.delete_expect_revision("a", a3)
        .await
        .map_err(|e| format!("delete expecting the last revision: {e}"))?;
    check(kv.keys().await == Ok(vec![]), "all deleted: no keys")?;
    let a4 = kv
        .put("a", v("6"))
        .await
        .map_err(|e| format!("put over a deleted key: {e}"))?;
    check(a4 > a3, "revisions grow across a delete")?;
    kv.delete("a").await.map_err(|e| format!("delete: {e}"))?;
    Ok(())
}
