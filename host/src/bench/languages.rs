//! What a plugin's language costs: the same voter built from Rust, Python
//! and JavaScript, loaded and called the same way, side by side.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{sample_ballots, sample_task, Latency};
use crate::plugin::{Decision, Invocation, PluginError, PluginRuntime, RuntimeConfig};

/// One language's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LanguageCost {
    /// The label it was given (`rust`, `python`, `js`).
    pub language: String,
    pub path: PathBuf,
    /// The component file's size.
    pub file_bytes: u64,
    /// The `conclave:plugin` contract it is on.
    pub contract: String,
    /// Reading, compiling (no cache) and describing it.
    pub load: Duration,
    /// The first call after loading.
    pub first_call: Duration,
    /// Every later call, each on a fresh instance.
    pub calls: Latency,
    /// Linear memory an instance holds at the end of a call.
    pub memory_bytes: u64,
    /// What it decided on the sample ballots, so that a reader can see the
    /// three builds agree.
    pub decision: String,
}

/// Loads and calls each voter of `voters` (label, path) on `ballots`
/// sample ballots, `iterations` calls each, with fresh instances and no
/// compilation cache. The runtime's default limits apply, so a voter too
/// big for them fails here as it would in a team.
pub async fn costs(
    voters: &[(String, PathBuf)],
    iterations: usize,
    ballots: usize,
) -> Result<Vec<LanguageCost>, PluginError> {
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig {
        cache_dir: None,
        ..Default::default()
    })?);
    let task = sample_task();
    let shared = Arc::new(sample_ballots(ballots));
    let inv = Invocation::default();
    let mut out = Vec::new();
    for (language, path) in voters {
        let bytes = rt.read_component(path).await?;
        let file_bytes = bytes.len() as u64;
        let t = Instant::now();
        let plugin = rt.load_bytes(bytes, path).await?;
        let load = t.elapsed();
        let t = Instant::now();
        let decision = rt.tally_shared(&plugin, &inv, &task, &shared).await?;
        let first_call = t.elapsed();
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            rt.tally_shared(&plugin, &inv, &task, &shared).await?;
            samples.push(t.elapsed());
        }
        let (_, memory_bytes) = rt.tally_phases(&plugin, &inv, &task, &shared).await?;
        out.push(LanguageCost {
            language: language.clone(),
            path: path.clone(),
            file_bytes,
            contract: plugin.contract().to_string(),
            load,
            first_call,
            calls: Latency::of(samples),
            memory_bytes,
            decision: match decision {
                Decision::Decided(d) => format!("{} ({} of {})", d.answer, d.support, d.total),
                other => format!("{other:?}"),
            },
        });
    }
    Ok(out)
}
