//! Hot swap of the plugins a prepared team uses.
//!
//! What lives here: [`PluginSlot`], the swappable handle a [`PluginUse`]
//! holds, and [`PreparedTeam::watch`], which follows the files the team's
//! plugins were loaded from and swaps in a replaced file once it compiles,
//! fits its world and is still the same plugin (same kind, same name).
//! A call takes [`PluginSlot::current`] when it starts and holds that
//! [`Plugin`] clone to its end, so calls already running finish on the
//! version they started with while calls started after a swap get the new
//! one. A broken replacement is refused, logged with the file and the
//! cause, remembered on the slot (see [`PluginStatus::refused`]), and the old
//! version keeps serving.
//!
//! What does not: loading a team's plugins in the first place
//! ([`super::job::load_plugins`]), or a directory of arbitrary plugins by
//! name and version (that is [`crate::plugin::Registry`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use super::consensus::PluginUse;
use super::job::PreparedTeam;
use crate::plugin::sandbox::kind_name;
use crate::plugin::{Plugin, PluginError, PluginRuntime};

/// How long a watched file must stay quiet after its last change before it
/// is read: long enough that a file being written (a plain overwrite, not
/// an atomic rename) is read whole, short enough that a deploy is live at
/// once.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(200);

/// The version of a plugin that serves new calls, swappable while calls on
/// the old one finish. Cheap to clone: clones share the slot.
#[derive(Clone)]
pub struct PluginSlot(Arc<RwLock<Live>>);

struct Live {
    plugin: Plugin,
    /// When this version was loaded, in milliseconds since the Unix epoch.
    loaded_ms: u64,
    /// The last replacement that was refused since, if any.
    refused: Option<Refusal>,
}

/// A replacement file that was refused, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl From<Plugin> for PluginSlot {
    fn from(plugin: Plugin) -> Self {
        PluginSlot::new(plugin)
    }
}

impl PluginSlot {
    /// A slot serving `plugin`, loaded now.
    pub fn new(plugin: Plugin) -> Self {
        PluginSlot(Arc::new(RwLock::new(Live {
            plugin,
            loaded_ms: crate::journal::now_ms(),
            refused: None,
        })))
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The version serving new calls. A call takes it once, at its start,
    /// and keeps it to its end.
    pub fn current(&self) -> Plugin {
        self.live().plugin.clone()
    }

    /// When the current version was loaded (ms since the Unix epoch).
    pub fn loaded_ms(&self) -> u64 {
        self.live().loaded_ms
    }

    /// The last refused replacement since the current version was loaded.
    pub fn refused(&self) -> Option<Refusal> {
        self.live().refused.clone()
    }

    /// Serves `plugin` from now on; returns the version it replaced.
    fn replace(&self, plugin: Plugin) -> Plugin {
        let mut live = self.live_mut();
        live.loaded_ms = crate::journal::now_ms();
        live.refused = None;
        std::mem::replace(&mut live.plugin, plugin)
    }

    fn refuse(&self, path: &Path, reason: &str) {
        self.live_mut().refused = Some(Refusal {
            path: path.to_path_buf(),
            reason: reason.to_string(),
            at_ms: crate::journal::now_ms(),
        });
    }
}

/// One plugin a team uses, as `GET /v1/plugins` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginStatus {
    /// The team's name for it (a built-in's, or a `[[plugin]]`'s).
    pub team_name: String,
    /// The plugin's own name.
    pub name: String,
    pub version: String,
    /// `role`, `verifier` or `voter`.
    pub kind: String,
    /// The `conclave:plugin` contract it is built against (`0.1`, `0.2`).
    pub contract: String,
    /// SHA-256 of the component file serving new calls.
    pub sha256: String,
    pub path: PathBuf,
    /// When that version was loaded, RFC 3339 (UTC, milliseconds).
    pub loaded_at: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
    /// The last replacement refused since, if any: the old version kept
    /// serving.
    pub refused: Option<Refusal>,
}

impl PluginStatus {
    fn of(team_name: &str, slot: &PluginSlot) -> Self {
        let live = slot.live();
        let p = &live.plugin;
        PluginStatus {
            team_name: team_name.to_string(),
            name: p.name().to_string(),
            version: p.version().to_string(),
            kind: kind_name(p.kind()).to_string(),
            contract: p.contract().to_string(),
            sha256: p.hash().to_string(),
            path: p.path().to_path_buf(),
            loaded_at: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(live.loaded_ms),
            )
            .to_string(),
            loaded_at_ms: live.loaded_ms,
            refused: live.refused.clone(),
        }
    }
}

/// Why a replacement file was refused. The old version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// It does not load: unreadable, not a component, another world or
    /// contract version, a descriptor that breaks the rules.
    #[error(transparent)]
    Load(#[from] PluginError),
    /// It is another kind of plugin than the one it would replace.
    #[error("it is a {found}, but the team uses `{team_name}` as a {expected}")]
    WrongKind {
        team_name: String,
        expected: &'static str,
        found: &'static str,
    },
    /// It is another plugin altogether.
    #[error("it is plugin `{found}`, but the team loaded `{expected}` from this file")]
    WrongName { expected: String, found: String },
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} for plugin replacements: {source}")]
pub struct WatchError {
    pub dir: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// Keeps a team's plugin files watched; dropping it stops watching (a
/// reload under way is abandoned, and the version serving keeps serving).
pub struct PluginWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    files: usize,
    dirs: Vec<PathBuf>,
}

impl PluginWatch {
    /// How many distinct files are watched.
    pub fn files(&self) -> usize {
        self.files
    }

    /// The folders watched (the parents of those files).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for PluginWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The file a plugin was loaded from, as the watcher sees it: its folder
/// made absolute and resolved (so that it matches the paths in events).
fn watched_path(file: &Path) -> PathBuf {
    let name = file.file_name().map(PathBuf::from).unwrap_or_default();
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&parent).unwrap_or(parent).join(name)
}

/// The files being watched: each with the slots loaded from it.
type Watched = BTreeMap<PathBuf, Vec<(String, PluginSlot)>>;

impl PreparedTeam {
    /// What the team's plugins are now: one row per plugin the team uses.
    pub fn plugin_status(&self) -> Vec<PluginStatus> {
        self.plugins()
            .iter()
            .map(|(name, u)| PluginStatus::of(name, &u.plugin))
            .collect()
    }

    /// Follows the files this team's plugins were loaded from (watching
    /// their folders, so that an atomic rename is seen as well as a plain
    /// overwrite). A file that changes is read once it has been quiet for
    /// `settle`, compiled and checked off the hot path, and swapped in for
    /// new calls if it is the same kind of plugin under the same name;
    /// otherwise it is refused, logged, and the old version keeps serving.
    /// Must be called within a tokio runtime; stops when the returned
    /// handle is dropped.
    pub fn watch(&self, settle: Duration) -> Result<PluginWatch, WatchError> {
        let mut watched: Watched = BTreeMap::new();
        for (name, u) in self.plugins().iter() {
            let file = watched_path(u.plugin.current().path());
            watched
                .entry(file)
                .or_default()
                .push((name.clone(), u.plugin.clone()));
        }
        let count = watched.len();
        // A component's signature is followed too: a replacement whose
        // new signature lands after it is read again then.
        let trust = self.trust().clone();
        let mut files: std::collections::BTreeSet<PathBuf> = watched.keys().cloned().collect();
        if trust.enforced() {
            files.extend(
                watched
                    .keys()
                    .map(|f| crate::plugin::signature::sig_path(f)),
            );
        }
        let runtime = self.runtime().clone();
        let watched = Arc::new(watched);
        let Settled {
            watcher,
            task,
            dirs,
        } = watch_settled(files, settle, move |p| {
            let (runtime, watched, trust) = (runtime.clone(), watched.clone(), trust.clone());
            async move {
                let component = match p.to_str().and_then(|s| s.strip_suffix(".sig")) {
                    Some(c) => PathBuf::from(c),
                    None => p,
                };
                if let Some(slots) = watched.get(&component) {
                    reload(&runtime, &trust, &component, slots).await;
                }
            }
        })?;
        Ok(PluginWatch {
            _watcher: watcher,
            task,
            files: count,
            dirs,
        })
    }
}

/// Files followed through their folders (so that an atomic rename is seen
/// as well as a plain overwrite), and the task handing each changed file
/// to its callback once it has been quiet for the settle time.
pub(crate) struct Settled {
    pub(crate) watcher: notify::RecommendedWatcher,
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// The folders watched.
    pub(crate) dirs: Vec<PathBuf>,
}

/// Watches `files` (absolute paths); a file that changes is passed to
/// `on_settled` once no change to it has been seen for `settle`, one file
/// at a time. Must be called within a tokio runtime; the task ends when
/// the watcher is dropped.
pub(crate) fn watch_settled<F, Fut>(
    files: std::collections::BTreeSet<PathBuf>,
    settle: Duration,
    mut on_settled: F,
) -> Result<Settled, WatchError>
where
    F: FnMut(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.kind.is_access() {
                return;
            }
            for p in event.paths {
                if files.contains(&p) {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|source| WatchError {
        dir: dirs.first().cloned().unwrap_or_default(),
        source,
    })?;
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                dir: d.clone(),
                source,
            })?;
    }
    let task = tokio::spawn(async move {
        let mut pending: BTreeMap<PathBuf, tokio::time::Instant> = BTreeMap::new();
        loop {
            let next = pending.values().min().copied();
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        pending.insert(p, tokio::time::Instant::now() + settle);
                    }
                    None => break,
                },
                _ = async { tokio::time::sleep_until(next.expect("guarded")).await }, if next.is_some() => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in due {
                        pending.remove(&p);
                        on_settled(p).await;
                    }
                }
            }
        }
    });
    Ok(Settled {
        watcher,
        task,
        dirs,
    })
}

/// The first 12 hex digits of a hash, for log lines.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Reads `path` again and swaps it into every slot loaded from it, or
/// refuses it for all of them.
async fn reload(
    runtime: &PluginRuntime,
    trust: &crate::plugin::signature::Trust,
    path: &Path,
    slots: &[(String, PluginSlot)],
) {
    let Some((_, first)) = slots.first() else {
        return;
    };
    let old = first.current();
    // Read like any plugin file: a regular file of bounded size only, so a
    // replacement that is a device or a pipe is refused, never read.
    let bytes = match runtime.read_component(path).await {
        Ok(b) => b,
        Err(PluginError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // Mid-rename, or removed: the loaded version keeps serving, and
            // a file put back later is picked up again.
            tracing::warn!(
                "plugin file {} is gone; {} ({}) keeps serving",
                path.display(),
                old.id(),
                short(old.hash())
            );
            return;
        }
        Err(e) => return refuse(path, slots, &old, &SwapError::Load(e)),
    };
    let hash = crate::plugin::cache::content_hash(&bytes);
    // Signed by a key the team trusts, or refused before it is compiled.
    if let Err(reason) = trust.check(path, &hash) {
        let e = SwapError::Load(PluginError::Untrusted {
            path: path.to_path_buf(),
            reason,
        });
        return refuse(path, slots, &old, &e);
    }
    if hash == old.hash() {
        // Back to the version serving: any refusal since is moot.
        for (_, slot) in slots {
            slot.live_mut().refused = None;
        }
        return;
    }
    let new = match runtime.load_bytes(bytes, path).await {
        Ok(p) => p,
        Err(e) => return refuse(path, slots, &old, &SwapError::Load(e)),
    };
    for (team_name, slot) in slots {
        let was = slot.current();
        if new.kind() != was.kind() {
            let e = SwapError::WrongKind {
                team_name: team_name.clone(),
                expected: kind_name(was.kind()),
                found: kind_name(new.kind()),
            };
            return refuse(path, slots, &old, &e);
        }
        if new.name() != was.name() {
            let e = SwapError::WrongName {
                expected: was.name().to_string(),
                found: new.name().to_string(),
            };
            return refuse(path, slots, &old, &e);
        }
    }
    for (_, slot) in slots {
        slot.replace(new.clone());
    }
    tracing::info!(
        "swapped in {}: {} ({}) replaces {} ({}) for new calls",
        path.display(),
        new.id(),
        short(new.hash()),
        old.id(),
        short(old.hash())
    );
}

fn refuse(path: &Path, slots: &[(String, PluginSlot)], old: &Plugin, e: &SwapError) {
    tracing::error!(
        "refused the new {}: {e}; {} ({}) keeps serving",
        path.display(),
        old.id(),
        short(old.hash())
    );
    for (_, slot) in slots {
        slot.refuse(path, &e.to_string());
    }
}

impl PluginUse {
    /// The version serving new calls (see [`PluginSlot::current`]).
    pub fn current(&self) -> Plugin {
        self.plugin.current()
    }
}
