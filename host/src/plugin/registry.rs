//! A directory of plugins, kept by name and version, with hot swap.
//!
//! [`Registry::open`] loads every `*.wasm` in a directory; a file that fails
//! its checks is reported (see [`Registry::failures`]) and skipped, never
//! fatal for the others. [`Registry::watch`] follows the directory: a changed
//! file is compiled and checked off the hot path and swapped in atomically.
//! A call holds its own [`Plugin`] handle, so calls already running finish
//! on the version they started with while new calls get the new one; a
//! broken replacement is refused and the old version keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::sandbox::kind_name;
use super::{Capability, Plugin, PluginError, PluginRuntime};

/// What `conclave plugins list` shows for one plugin.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub kind: String,
    /// The `conclave:plugin` contract it was built against (`0.1`, `0.2`).
    pub contract: String,
    pub capabilities: Vec<Capability>,
    pub description: String,
    pub path: PathBuf,
    pub hash: String,
}

impl From<&Plugin> for PluginInfo {
    fn from(p: &Plugin) -> Self {
        PluginInfo {
            name: p.name().to_string(),
            version: p.version().to_string(),
            kind: kind_name(p.kind()).to_string(),
            contract: p.contract().to_string(),
            capabilities: p
                .descriptor()
                .capabilities
                .iter()
                .map(|c| (*c).into())
                .collect(),
            description: p.descriptor().description.clone(),
            path: p.path().to_path_buf(),
            hash: p.hash().to_string(),
        }
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The file's plugin was loaded or replaced.
    Loaded(Plugin),
    /// The file is gone and its plugin was removed.
    Removed,
    /// The file has not changed since it was loaded.
    Unchanged,
}

#[derive(Default)]
struct State {
    /// name -> version -> plugin.
    by_name: BTreeMap<String, BTreeMap<semver::Version, Plugin>>,
    /// path -> (name, version) of the plugin it holds.
    by_path: BTreeMap<PathBuf, (String, semver::Version)>,
    /// path -> why it is not loaded.
    failures: BTreeMap<PathBuf, String>,
    /// Bumped on every successful load or removal.
    generation: u64,
}

/// Plugins by name and version, loaded from one directory.
pub struct Registry {
    runtime: Arc<PluginRuntime>,
    dir: PathBuf,
    state: RwLock<State>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// Keeps a directory watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_component_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "wasm")
}

impl Registry {
    /// Loads every `*.wasm` file in `dir`. Files that fail are recorded in
    /// [`failures`](Self::failures); only an unreadable directory is an error.
    pub async fn open(
        runtime: Arc<PluginRuntime>,
        dir: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, PluginError> {
        let dir = dir.into();
        let rd = std::fs::read_dir(&dir).map_err(|source| PluginError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_component_file(p))
            .collect();
        files.sort();
        let registry = Arc::new(Registry {
            runtime,
            dir,
            state: RwLock::new(State::default()),
            changed: tokio::sync::watch::channel(0).0,
        });
        for f in files {
            if let Err(e) = registry.reload(&f).await {
                tracing::warn!("{e}");
            }
        }
        Ok(registry)
    }

    /// The directory this registry follows.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime its plugins run on.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// The newest version of the plugin called `name`.
    pub fn get(&self, name: &str) -> Result<Plugin, PluginError> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.by_name
            .get(name)
            .and_then(|versions| versions.values().next_back().cloned())
            .ok_or_else(|| PluginError::NotFound {
                name: name.to_string(),
                available: s.by_name.keys().cloned().collect(),
            })
    }

    /// Exactly `name` at `version`.
    pub fn get_version(&self, name: &str, version: &str) -> Result<Plugin, PluginError> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let v = semver::Version::parse(version).ok();
        v.and_then(|v| s.by_name.get(name).and_then(|m| m.get(&v)).cloned())
            .ok_or_else(|| PluginError::NotFound {
                name: format!("{name}@{version}"),
                available: s
                    .by_name
                    .iter()
                    .flat_map(|(n, vs)| vs.keys().map(move |v| format!("{n}@{v}")))
                    .collect(),
            })
    }

    /// Every loaded plugin, by name then version.
    pub fn list(&self) -> Vec<PluginInfo> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.by_name
            .values()
            .flat_map(|vs| vs.values().map(PluginInfo::from))
            .collect()
    }

    /// Files that are not loaded, and why.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.failures
            .iter()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    }

    /// A counter that changes whenever a plugin is loaded, replaced or
    /// removed; await `changed()` on it to follow hot swaps.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Loads (or reloads) the file at `path`. The new version is compiled and
    /// checked before anything is swapped; on failure the previous plugin of
    /// that file keeps serving and the error is recorded and returned.
    pub async fn reload(&self, path: &Path) -> Result<Reload, PluginError> {
        let path = path.to_path_buf();
        let bytes = match self.runtime.read_component(&path).await {
            Ok(b) => b,
            Err(PluginError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.remove(&path);
                return Ok(Reload::Removed);
            }
            Err(e) => return Err(self.fail(&path, e)),
        };
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            if let Some((name, version)) = s.by_path.get(&path) {
                let current = s.by_name.get(name).and_then(|m| m.get(version));
                if current.is_some_and(|p| p.hash() == super::cache::content_hash(&bytes)) {
                    s.failures.remove(&path);
                    return Ok(Reload::Unchanged);
                }
            }
        }
        let plugin = match self.runtime.load_bytes(bytes, &path).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(&path, e)),
        };
        let version = semver::Version::parse(plugin.version()).expect("checked at load");
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            if let Some((old_name, old_version)) = s.by_path.remove(&path) {
                if let Some(m) = s.by_name.get_mut(&old_name) {
                    m.remove(&old_version);
                    if m.is_empty() {
                        s.by_name.remove(&old_name);
                    }
                }
            }
            s.by_name
                .entry(plugin.name().to_string())
                .or_default()
                .insert(version.clone(), plugin.clone());
            s.by_path
                .insert(path.clone(), (plugin.name().to_string(), version));
            s.failures.remove(&path);
            s.generation += 1;
            self.changed.send_replace(s.generation);
        }
        tracing::info!("loaded plugin {} from {}", plugin.id(), path.display());
        Ok(Reload::Loaded(plugin))
    }

    fn fail(&self, path: &Path, e: PluginError) -> PluginError {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let serving = s.by_path.get(path).map(|(n, v)| format!("{n}@{v}"));
        match &serving {
            Some(old) => tracing::warn!(
                "refused new version of {}: {e}; {old} keeps serving",
                path.display()
            ),
            None => tracing::warn!("refused {}: {e}", path.display()),
        }
        s.failures.insert(path.to_path_buf(), e.to_string());
        e
    }

    fn remove(&self, path: &Path) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.failures.remove(path);
        if let Some((name, version)) = s.by_path.remove(path) {
            if let Some(m) = s.by_name.get_mut(&name) {
                m.remove(&version);
                if m.is_empty() {
                    s.by_name.remove(&name);
                }
            }
            s.generation += 1;
            self.changed.send_replace(s.generation);
            tracing::info!(
                "removed plugin {name}@{version}: {} is gone",
                path.display()
            );
        }
    }

    /// Follows the directory: files that change are reloaded after `settle`
    /// without further events (so a file being written is read once it is
    /// whole), each on a task of the current tokio runtime.
    pub fn watch(self: &Arc<Self>, settle: Duration) -> Result<WatchHandle, PluginError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    for p in event.paths {
                        if is_component_file(&p) {
                            let _ = tx.send(p);
                        }
                    }
                }
            })
            .map_err(|e| {
                PluginError::Engine(format!("cannot watch {}: {e}", self.dir.display()))
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                PluginError::Engine(format!("cannot watch {}: {e}", self.dir.display()))
            })?;
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut pending: BTreeMap<PathBuf, tokio::time::Instant> = BTreeMap::new();
            loop {
                let next = pending.values().min().copied();
                tokio::select! {
                    p = rx.recv() => match p {
                        Some(p) => { pending.insert(p, tokio::time::Instant::now() + settle); }
                        None => break,
                    },
                    _ = async { tokio::time::sleep_until(next.unwrap()).await }, if next.is_some() => {
                        let now = tokio::time::Instant::now();
                        let due: Vec<PathBuf> = pending.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
                        for p in due {
                            pending.remove(&p);
                            let _ = me.reload(&p).await;
                        }
                    }
                }
            }
        });
        Ok(WatchHandle {
            _watcher: watcher,
            task,
        })
    }
}
