//! Loading a plugin: reading its file safely, compiling it (through the
//! cache, on a blocking thread), working out which world it implements,
//! type-checking it against that world once, and asking it who it is.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use super::bindings::{role, verifier, voter, voter_v2};
use super::checks::{check_descriptor, check_header};
use super::sandbox::{kind_name, Plugin, PluginInner, Pre};
use super::{cache, Descriptor, PluginError, PluginKind, PluginRuntime, WIT_VERSIONS};

impl PluginRuntime {
    /// Reads, compiles (through the cache), checks and describes the
    /// component at `path`.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = self.read_component(path).await?;
        self.load_bytes(bytes, path).await
    }

    /// Reads a component file: only a regular file (symlinks followed) of
    /// at most `max_file_bytes`, checked before reading and enforced while
    /// reading, so a device, a pipe or a file that keeps growing cannot make
    /// the host read without end.
    pub async fn read_component(&self, path: &Path) -> Result<Vec<u8>, PluginError> {
        use tokio::io::AsyncReadExt;
        let io = |source| PluginError::Io {
            path: path.to_path_buf(),
            source,
        };
        let not = |reason: String| PluginError::NotAComponent {
            path: path.to_path_buf(),
            reason,
        };
        let limit = self.config.max_file_bytes;
        let meta = tokio::fs::metadata(path).await.map_err(io)?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file (a device, pipe or socket)"
            };
            return Err(not(format!("it is {what}; a plugin is a `.wasm` file")));
        }
        if meta.len() > limit {
            return Err(not(format!(
                "it is {} bytes, over the limit of {limit} bytes for a component",
                meta.len()
            )));
        }
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(not(format!(
                "it grew past the limit of {limit} bytes for a component while being read"
            )));
        }
        Ok(bytes)
    }

    /// Compiles and checks a component given as bytes; `origin` names it in
    /// errors. Compilation runs on a blocking thread.
    pub async fn load_bytes(&self, bytes: Vec<u8>, origin: &Path) -> Result<Plugin, PluginError> {
        check_header(&bytes, origin)?;
        let hash = cache::content_hash(&bytes);
        let engine = self.engine.clone();
        let cache_dir = self.config.cache_dir.clone();
        let origin_buf = origin.to_path_buf();
        let component = tokio::task::spawn_blocking(move || {
            cache::compile(&engine, &bytes, &origin_buf, cache_dir.as_deref())
        })
        .await
        .map_err(|e| PluginError::Engine(format!("compile task failed: {e}")))??;
        let pre = self.check_world(&component, origin)?;
        let mut plugin = Plugin(Arc::new(PluginInner {
            descriptor: Descriptor {
                name: String::new(),
                version: String::new(),
                kind: PluginKind::Voter,
                capabilities: Vec::new(),
                description: String::new(),
            },
            hash,
            path: origin.to_path_buf(),
            pre,
        }));
        let descriptor = self.describe(&plugin).await?;
        let world = match plugin.0.pre {
            Pre::Role(_) => PluginKind::Role,
            Pre::Verifier(_) => PluginKind::Verifier,
            Pre::Voter(_) | Pre::VoterV2(_) => PluginKind::Voter,
        };
        if descriptor.kind != world {
            return Err(PluginError::WorldMismatch {
                path: origin.to_path_buf(),
                world: kind_name(world).into(),
                reason: format!(
                    "it describes itself as a {} but implements the {} world",
                    kind_name(descriptor.kind),
                    kind_name(world)
                ),
            });
        }
        check_descriptor(&descriptor, origin)?;
        Arc::get_mut(&mut plugin.0)
            .expect("not shared yet")
            .descriptor = descriptor;
        Ok(plugin)
    }

    /// Works out which world a component implements and type-checks it
    /// against that world once, so per-call instantiation cannot fail on types.
    fn check_world(&self, component: &Component, origin: &Path) -> Result<Pre, PluginError> {
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let mut newest = None;
        for name in imports.iter().chain(&exports) {
            if let Some(rest) = name.strip_prefix("conclave:plugin/") {
                let found = rest
                    .split_once('@')
                    .map(|(_, v)| v)
                    .unwrap_or("(unversioned)");
                if !WIT_VERSIONS.contains(&found) {
                    return Err(PluginError::UnsupportedVersion {
                        path: origin.to_path_buf(),
                        found: found.to_string(),
                        supported: WIT_VERSIONS.join(" and "),
                    });
                }
                newest = newest.max(Some(found));
            }
        }
        let has = |n: &str| exports.iter().any(|e| e == n);
        let worlds: Vec<(&str, &str)> =
            [("run", "role"), ("verify", "verifier"), ("tally", "voter")]
                .into_iter()
                .filter(|(f, _)| has(f))
                .collect();
        let mismatch = |world: &str, reason: String| PluginError::WorldMismatch {
            path: origin.to_path_buf(),
            world: world.to_string(),
            reason,
        };
        let world = match worlds.as_slice() {
            [(_, w)] => *w,
            [] => {
                return Err(mismatch(
                    "role, verifier or voter",
                    format!(
                        "it exports none of `run` (role), `verify` (verifier) or `tally` (voter); it exports [{}]",
                        exports.join(", ")
                    ),
                ))
            }
            many => {
                return Err(mismatch(
                    "role, verifier or voter",
                    format!(
                        "it exports the functions of several worlds ({}); a plugin implements exactly one",
                        many.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        if !has("describe") {
            return Err(mismatch(world, "it does not export `describe`".into()));
        }
        if world == "voter" {
            return self.voter_pre(component, newest, origin);
        }
        let linker = match world {
            "role" => &self.role_linker,
            _ => &self.verifier_linker,
        };
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| mismatch(world, format!("{e:#}")))?;
        Ok(match world {
            "role" => {
                Pre::Role(role::RolePre::new(pre).map_err(|e| mismatch(world, format!("{e:#}")))?)
            }
            _ => Pre::Verifier(
                verifier::VerifierPre::new(pre).map_err(|e| mismatch(world, format!("{e:#}")))?,
            ),
        })
    }

    /// A voter's contract is told by the shape of its `tally`: a list of
    /// ballots (0.1) or a ballot box (0.2). Its imports alone cannot tell: a
    /// 0.2 voter that reads no texts imports nothing of 0.2.
    fn voter_pre(
        &self,
        component: &Component,
        newest: Option<&str>,
        origin: &Path,
    ) -> Result<Pre, PluginError> {
        use wasmtime::component::types::{ComponentItem, Type};
        let tally = component
            .component_type()
            .exports(&self.engine)
            .find(|(n, _)| *n == "tally")
            .map(|(_, item)| item.ty);
        let v2 = match &tally {
            Some(ComponentItem::ComponentFunc(f)) => {
                matches!(f.params().nth(1), Some((_, Type::Record(_))))
            }
            _ => false,
        };
        let result = if v2 {
            self.voter_v2_linker
                .instantiate_pre(component)
                .and_then(|pre| voter_v2::VoterPre::new(pre).map(Pre::VoterV2))
        } else {
            self.voter_linker
                .instantiate_pre(component)
                .and_then(|pre| voter::VoterPre::new(pre).map(Pre::Voter))
        };
        let e = match result {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        let contract = if v2 { "0.2" } else { "0.1" };
        let hint = match newest {
            Some("0.2.0") if !v2 => {
                " (it imports conclave:plugin@0.2.0, but its `tally` takes a list of 0.1 ballots)"
                    .to_string()
            }
            _ => String::new(),
        };
        let reason = format!("as a {contract} voter{hint}: {e:#}");
        Err(PluginError::WorldMismatch {
            path: origin.to_path_buf(),
            world: "voter".into(),
            reason,
        })
    }
}
