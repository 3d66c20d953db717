//! Compiling components, once: compiled code is cached on disk keyed by the
//! engine's compatibility hash and the component's content hash, so a
//! restart (or a second process) loads a plugin in milliseconds and a
//! changed engine or file never picks up stale code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::PluginError;

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash can be
/// part of a stable file name.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The cache key of `bytes` under `engine`.
pub fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.update(b"|");
    h.0.update(bytes);
    hex::encode(h.0.finalize())
}

/// Compiles `bytes` (read from `origin`), through the cache in `dir` when
/// given. A cache entry that cannot be read back is recompiled and replaced.
pub fn compile(
    engine: &Engine,
    bytes: &[u8],
    origin: &Path,
    dir: Option<&Path>,
) -> Result<Component, PluginError> {
    let Some(dir) = dir else {
        return compile_fresh(engine, bytes, origin);
    };
    let path = dir.join(format!("{}.cwasm", cache_key(engine, bytes)));
    if path.exists() {
        // SAFETY: the file is one this function wrote from wasmtime's own
        // `serialize` output; its name includes the engine's compatibility
        // hash, and wasmtime checks the header again on load.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(
                "component cache entry {} is unreadable ({e:#}); recompiling",
                path.display()
            ),
        }
    }
    let component = compile_fresh(engine, bytes, origin)?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!("cannot write component cache entry {}: {e}", path.display());
    }
    Ok(component)
}

fn compile_fresh(engine: &Engine, bytes: &[u8], origin: &Path) -> Result<Component, PluginError> {
    Component::new(engine, bytes).map_err(|e| PluginError::Compile {
        path: origin.to_path_buf(),
        reason: format!("{e:#}"),
    })
}

/// Writes the serialized component atomically (temporary file, then rename),
/// so a reader never sees half an entry.
fn store(component: &Component, dir: &Path, path: &PathBuf) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), rand_suffix()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
