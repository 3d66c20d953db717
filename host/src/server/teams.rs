//! The teams one server serves, by model id (each team's `[team] name`).
//!
//! They share one plugin runtime, one set of nodes ([`NodePool`]: a node
//! defined the same way in two specs is one node) and the server's one
//! journal. Each spec can be reloaded without a restart: with
//! [`Teams::watch`], a spec file that changes is read again once it has
//! been quiet for a moment, prepared (nodes built, plugins loaded and
//! checked) off the request path, and swapped in for new requests; runs
//! already going finish on the version they started with. A spec that does
//! not load, or whose team name another spec already serves, is refused,
//! logged with the file and the cause, shown on `/v1/models`, and the
//! version serving keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::journal::now_ms;
use crate::model::NodePool;
use crate::plugin::PluginRuntime;
use crate::spec::team::TeamSpec;
use crate::team::job::{JobError, PreparedTeam};
use crate::team::remote::RemoteReplicas;
use crate::team::swap::{watch_settled, PluginWatch, Settled, WatchError};

/// Why the teams could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TeamsError {
    #[error("{}", naming_the_file(path, source))]
    Team {
        path: PathBuf,
        #[source]
        source: Box<JobError>,
    },
    #[error("{}: cannot list the folder: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no team spec (*.toml) in this folder", path.display())]
    EmptyFolder { path: PathBuf },
    #[error("team {name:?} is defined twice: in {} and in {}; a server serves each model id once", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no team spec given")]
    None,
}

/// `PATH: cause`, or the cause alone where it begins with the path
/// already (a spec that cannot be read or parsed names its file, line and
/// column itself).
fn naming_the_file(path: &Path, source: &JobError) -> String {
    let (path, cause) = (path.display().to_string(), source.to_string());
    if cause.starts_with(&path) {
        cause
    } else {
        format!("{path}: {cause}")
    }
}

/// A team as it is served: the prepared team, the spec file it came from,
/// and when this version was loaded.
pub struct Served {
    pub team: Arc<PreparedTeam>,
    pub path: PathBuf,
    /// Milliseconds since the Unix epoch.
    pub loaded_ms: u64,
    /// Its plugin files, watched while it serves (with [`Teams::watch`]).
    plugins: Mutex<Option<PluginWatch>>,
}

impl Served {
    /// The model id clients ask for: the team's name.
    pub fn name(&self) -> &str {
        &self.team.spec().team.name
    }
}

/// A spec file whose new version was refused.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpecRefusal {
    pub path: PathBuf,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

#[derive(Default)]
struct Table {
    by_name: BTreeMap<String, Arc<Served>>,
    /// Which team each spec file serves.
    by_file: BTreeMap<PathBuf, String>,
    refused: BTreeMap<PathBuf, SpecRefusal>,
}

/// The served teams.
pub struct Teams {
    runtime: Arc<PluginRuntime>,
    /// Keys the server trusts to sign every team's components.
    trusted: Vec<crate::plugin::signature::PublicKey>,
    builtin_dir: PathBuf,
    pool: NodePool,
    table: RwLock<Table>,
    /// Whether each team's plugin files are watched (set by `watch`).
    watch_plugins: std::sync::atomic::AtomicBool,
    /// Where the teams' replicas go in cluster mode (`use_workers`).
    workers: RwLock<Option<Arc<dyn RemoteReplicas>>>,
}

impl Teams {
    /// Loads every spec in `paths`; a folder stands for the `*.toml` files
    /// in it (not its subfolders), in name order. Each team's name is the
    /// model id that selects it; two specs with one name are refused.
    pub async fn load(
        paths: &[PathBuf],
        runtime: Arc<PluginRuntime>,
        builtin_dir: &Path,
    ) -> Result<Arc<Self>, TeamsError> {
        Self::load_trusting(paths, runtime, builtin_dir, Vec::new()).await
    }

    /// [`Teams::load`], where every team also trusts `keys` to sign its
    /// components (the server's `--trusted-key`), beside its own
    /// `[team] trusted_keys`; a spec reloaded later is held to them too.
    pub async fn load_trusting(
        paths: &[PathBuf],
        runtime: Arc<PluginRuntime>,
        builtin_dir: &Path,
        keys: Vec<crate::plugin::signature::PublicKey>,
    ) -> Result<Arc<Self>, TeamsError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let found = specs_in(p)?;
                if found.is_empty() {
                    return Err(TeamsError::EmptyFolder { path: p.clone() });
                }
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        if files.is_empty() {
            return Err(TeamsError::None);
        }
        let teams = Arc::new(Teams {
            runtime,
            trusted: keys,
            builtin_dir: builtin_dir.to_path_buf(),
            pool: NodePool::new(),
            table: Default::default(),
            watch_plugins: Default::default(),
            workers: Default::default(),
        });
        for f in files {
            let served = teams.prepare(&f).await?;
            let mut t = teams.write();
            let name = served.name().to_string();
            if let Some(other) = t.by_name.get(&name) {
                return Err(TeamsError::Duplicate {
                    name,
                    first: other.path.clone(),
                    second: f,
                });
            }
            t.by_file.insert(f, name.clone());
            t.by_name.insert(name, served);
        }
        Ok(teams)
    }

    /// Teams already prepared (tests, benchmarks), sharing their runtime.
    pub fn of(teams: Vec<Arc<PreparedTeam>>) -> Result<Arc<Self>, TeamsError> {
        let runtime = teams.first().ok_or(TeamsError::None)?.runtime().clone();
        let mut t = Table::default();
        for team in teams {
            let path = team.spec().path.clone();
            let name = team.spec().team.name.clone();
            if let Some(other) = t.by_name.get(&name) {
                return Err(TeamsError::Duplicate {
                    name,
                    first: other.path.clone(),
                    second: path,
                });
            }
            t.by_file.insert(path.clone(), name.clone());
            t.by_name.insert(
                name,
                Arc::new(Served {
                    team,
                    path,
                    loaded_ms: now_ms(),
                    plugins: Mutex::new(None),
                }),
            );
        }
        Ok(Arc::new(Teams {
            runtime,
            trusted: Vec::new(),
            builtin_dir: PathBuf::new(),
            pool: NodePool::new(),
            table: RwLock::new(t),
            watch_plugins: Default::default(),
            workers: Default::default(),
        }))
    }

    /// Sends every team's replicas to `workers` while a live worker
    /// serves it (cluster mode), a team reloaded later too.
    pub fn use_workers(&self, workers: Arc<dyn RemoteReplicas>) {
        *self.workers.write().unwrap_or_else(|p| p.into_inner()) = Some(workers.clone());
        for t in self.list() {
            t.team.use_workers(workers.clone());
        }
    }

    /// The team serving model id `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.read().by_name.get(name).cloned()
    }

    /// The one team, when exactly one is served.
    pub fn only(&self) -> Option<Arc<Served>> {
        let t = self.read();
        (t.by_name.len() == 1)
            .then(|| t.by_name.values().next().cloned())
            .flatten()
    }

    /// Every team, by name.
    pub fn list(&self) -> Vec<Arc<Served>> {
        self.read().by_name.values().cloned().collect()
    }

    /// The model ids served.
    pub fn names(&self) -> Vec<String> {
        self.read().by_name.keys().cloned().collect()
    }

    /// The spec file (if any) whose last new version was refused, for the
    /// team `name` serves from it.
    pub fn refusal(&self, path: &Path) -> Option<SpecRefusal> {
        self.read().refused.get(path).cloned()
    }

    /// Distinct nodes the teams route to.
    pub fn nodes(&self) -> usize {
        self.pool.len()
    }

    /// Reads the spec at `path` again and serves its new version, or
    /// refuses it (the version serving, if any, keeps serving). Returns
    /// the name served, or why it was refused.
    pub async fn reload(&self, path: &Path) -> Result<String, String> {
        let served = match self.prepare(path).await {
            Ok(s) => s,
            Err(e) => return Err(self.refuse(path, e.to_string())),
        };
        let name = served.name().to_string();
        if self.watch_plugins.load(std::sync::atomic::Ordering::SeqCst) {
            match served.team.watch(crate::team::swap::DEFAULT_SETTLE) {
                Ok(w) => *served.plugins.lock().unwrap_or_else(|p| p.into_inner()) = Some(w),
                Err(e) => {
                    return Err(self.refuse(path, format!("cannot watch its plugin files: {e}")))
                }
            }
        }
        let mut t = self.write();
        if let Some(other) = t.by_name.get(&name).filter(|o| o.path != path) {
            let why = format!(
                "its team name {name:?} is served already, from {}",
                other.path.display()
            );
            drop(t);
            return Err(self.refuse(path, why));
        }
        if let Some(old) = t.by_file.insert(path.to_path_buf(), name.clone()) {
            if old != name {
                t.by_name.remove(&old);
                tracing::warn!(
                    "{}: team {old:?} is now {name:?}; model {old:?} is no longer served",
                    path.display()
                );
            }
        }
        t.refused.remove(path);
        t.by_name.insert(name.clone(), served);
        tracing::warn!("{}: team {name:?} reloaded", path.display());
        Ok(name)
    }

    fn refuse(&self, path: &Path, reason: String) -> String {
        tracing::error!(
            "{}: new version refused, the one serving keeps serving: {reason}",
            path.display()
        );
        self.write().refused.insert(
            path.to_path_buf(),
            SpecRefusal {
                path: path.to_path_buf(),
                reason: reason.clone(),
                at_ms: now_ms(),
            },
        );
        reason
    }

    async fn prepare(&self, path: &Path) -> Result<Arc<Served>, TeamsError> {
        let fail = |source: JobError| TeamsError::Team {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let mut spec = TeamSpec::load(path).map_err(|e| fail(JobError::Spec(e)))?;
        spec.team
            .trusted_keys
            .extend(self.trusted.iter().map(|k| k.to_string()));
        let team =
            PreparedTeam::prepare_in(spec, self.runtime.clone(), &self.builtin_dir, &self.pool)
                .await
                .map_err(fail)?;
        if let Some(w) = &*self.workers.read().unwrap_or_else(|p| p.into_inner()) {
            team.use_workers(w.clone());
        }
        Ok(Arc::new(Served {
            team: Arc::new(team),
            path: path.to_path_buf(),
            loaded_ms: now_ms(),
            plugins: Mutex::new(None),
        }))
    }

    /// The plugin runtime every served team shares.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// Follows every served spec file, reloading one that changes once it
    /// has been quiet for `settle`; with `plugins`, each team's plugin
    /// files are followed too (see [`PreparedTeam::watch`]). Stops when
    /// the returned handle is dropped. Must be called within a tokio
    /// runtime.
    pub fn watch(
        self: &Arc<Self>,
        settle: Duration,
        plugins: bool,
    ) -> Result<SpecWatch, WatchError> {
        let mut plugin_files = 0;
        if plugins {
            self.watch_plugins
                .store(true, std::sync::atomic::Ordering::SeqCst);
            for s in self.list() {
                let w = s.team.watch(settle)?;
                plugin_files += w.files();
                *s.plugins.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
            }
        }
        let files: std::collections::BTreeSet<PathBuf> =
            self.read().by_file.keys().map(|p| absolute(p)).collect();
        // The absolute path a change names, back to the path as given.
        let given: BTreeMap<PathBuf, PathBuf> = self
            .read()
            .by_file
            .keys()
            .map(|p| (absolute(p), p.clone()))
            .collect();
        let teams = self.clone();
        let Settled { watcher, task, .. } = watch_settled(files.clone(), settle, move |p| {
            let teams = teams.clone();
            let path = given.get(&p).cloned();
            async move {
                let Some(path) = path else { return };
                if !path.is_file() {
                    tracing::warn!(
                        "team spec {} is gone; its team keeps serving",
                        path.display()
                    );
                    return;
                }
                if !teams.unchanged(&path) {
                    let _ = teams.reload(&path).await;
                }
            }
        })?;
        Ok(SpecWatch {
            _watcher: watcher,
            task,
            specs: files.len(),
            plugin_files,
        })
    }

    /// Whether the spec file holds the text its team was loaded from.
    fn unchanged(&self, path: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let t = self.read();
        let refused = t.refused.contains_key(path);
        t.by_file
            .get(path)
            .and_then(|n| t.by_name.get(n))
            .is_some_and(|s| s.team.spec().source == text && !refused)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the spec files (and, if asked, the plugin files) watched;
/// dropping it stops watching.
pub struct SpecWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    specs: usize,
    plugin_files: usize,
}

impl SpecWatch {
    /// Spec files watched.
    pub fn specs(&self) -> usize {
        self.specs
    }

    /// Plugin files watched, over all teams.
    pub fn plugin_files(&self) -> usize {
        self.plugin_files
    }
}

impl Drop for SpecWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `*.toml` files directly in `dir`, in name order.
fn specs_in(dir: &Path) -> Result<Vec<PathBuf>, TeamsError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TeamsError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    Ok(out)
}

/// `p` made absolute against the working folder (as file watchers name
/// paths), without resolving links.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
