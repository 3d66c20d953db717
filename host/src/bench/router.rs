//! Router benchmarks: the router's own overhead per call, and tail latency
//! with and without hedging when replaying measured model latencies through
//! a sim node in virtual time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::model::latency::LatencySpec;
use crate::model::router::{CallTag, HedgeConfig, NodeHandle, Route};
use crate::model::sim::{SimBackend, SimConfig};
use crate::model::{Backend, ChatRequest, Message, Router, RouterConfig};

use super::Latency;

/// Result of [`overhead`].
#[derive(Clone, Debug, Serialize)]
pub struct OverheadReport {
    /// The sim node called directly.
    pub direct: Latency,
    /// The same node through the router.
    pub routed: Latency,
    /// `routed.p50 - direct.p50`.
    pub overhead_p50: Duration,
}

fn request() -> ChatRequest {
    ChatRequest {
        gold: Some("42".into()),
        ..ChatRequest::new(vec![Message::new("user", "What is 6 * 7?")])
    }
}

/// Router overhead against a zero-latency sim node: `calls` direct calls,
/// then `calls` routed ones, in the same process.
pub async fn overhead(calls: usize) -> Result<OverheadReport, String> {
    let sim: Arc<dyn Backend> = Arc::new(
        SimBackend::new("sim", SimConfig::default(), Path::new(".")).map_err(|e| e.to_string())?,
    );
    let router = Router::new(vec![NodeHandle::new(sim.clone())], RouterConfig::default());
    let req = request();
    let tag = CallTag {
        run: "bench".into(),
        role: "solver".into(),
    };
    let route = Route::default();
    let mut direct = Vec::with_capacity(calls);
    let mut routed = Vec::with_capacity(calls);
    for _ in 0..calls / 10 {
        sim.chat(&req).await.map_err(|e| e.to_string())?;
        router
            .chat(&route, &tag, &req)
            .await
            .map_err(|e| e.to_string())?;
    }
    for _ in 0..calls {
        let t = std::time::Instant::now();
        sim.chat(&req).await.map_err(|e| e.to_string())?;
        direct.push(t.elapsed());
        let t = std::time::Instant::now();
        router
            .chat(&route, &tag, &req)
            .await
            .map_err(|e| e.to_string())?;
        routed.push(t.elapsed());
    }
    let (direct, routed) = (Latency::of(direct), Latency::of(routed));
    Ok(OverheadReport {
        overhead_p50: routed.p50.saturating_sub(direct.p50),
        direct,
        routed,
    })
}

/// One row of the tail-latency table.
#[derive(Clone, Debug, Serialize)]
pub struct TailRow {
    pub model: String,
    pub policy: String,
    pub p50: Duration,
    pub p99: Duration,
    /// Hedges as a share of calls.
    pub extra_calls: f64,
    /// p99 without hedging divided by this policy's p99.
    pub p99_cut: f64,
}

/// The hedging policies compared.
pub fn policies() -> Vec<(String, Option<HedgeConfig>)> {
    vec![
        ("no hedging".into(), None),
        (
            "hedge at p95 (budget 5%)".into(),
            Some(HedgeConfig {
                enabled: true,
                quantile: 0.95,
                idle_quantile: None,
                max_extra: 0.05,
                min_samples: 50,
            }),
        ),
        (
            "hedge at p90 when idle (budget 10%)".into(),
            Some(HedgeConfig {
                enabled: true,
                quantile: 0.95,
                idle_quantile: Some(0.90),
                max_extra: 0.10,
                min_samples: 50,
            }),
        ),
    ]
}

/// Replays the latencies of `model` in `csv` through one sim node, `calls`
/// calls one after another, in virtual time (a paused tokio clock), for each
/// hedging policy, with the same seed.
pub fn tail(csv: &Path, models: &[&str], calls: usize) -> Result<Vec<TailRow>, String> {
    let mut rows = Vec::new();
    for model in models {
        let mut base_p99 = None;
        for (policy, hedge) in policies() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .map_err(|e| e.to_string())?;
            let (lat, extra) = rt.block_on(async {
                let cfg = SimConfig {
                    latency: LatencySpec::Empirical {
                        csv: csv.to_path_buf(),
                        model: model.to_string(),
                        scale: 1.0,
                    },
                    seed: 7,
                    ..Default::default()
                };
                let sim = Arc::new(
                    SimBackend::new("sim", cfg, Path::new(".")).map_err(|e| e.to_string())?,
                );
                let config = RouterConfig {
                    deadline: Duration::from_secs(3600),
                    hedge: hedge.clone().unwrap_or_default(),
                    ..Default::default()
                };
                let router = Router::new(vec![NodeHandle::new(sim)], config);
                let (tag, route, req) = (CallTag::default(), Route::default(), request());
                let mut lat = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t = tokio::time::Instant::now();
                    router
                        .chat(&route, &tag, &req)
                        .await
                        .map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                }
                let hedges = router.accounts().by_node["sim"].hedges;
                Ok::<_, String>((Latency::of(lat), hedges as f64 / calls as f64))
            })?;
            let base = *base_p99.get_or_insert(lat.p99);
            rows.push(TailRow {
                model: model.to_string(),
                policy,
                p50: lat.p50,
                p99: lat.p99,
                extra_calls: extra,
                p99_cut: base.as_secs_f64() / lat.p99.as_secs_f64().max(1e-9),
            });
        }
    }
    Ok(rows)
}
