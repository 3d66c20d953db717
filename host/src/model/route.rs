//! What a model call asks of the router and what it gets back: the
//! router's settings, a node's routing settings, where a call may go, who it
//! is for, and how each attempt ended. The router itself is in
//! [`super::router`], which re-exports all of these.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::health::BreakerConfig;
use super::{Backend, ChatResponse, ModelError};

/// Hedging: a second request when the first runs long.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// Off by default.
    pub enabled: bool,
    /// Hedge once a call has run past this quantile of the node's recent
    /// latencies. Default 0.95.
    pub quantile: f64,
    /// Hedge earlier, at this quantile, when a node has spare capacity (no
    /// call of its own in flight). Default: same as `quantile`.
    pub idle_quantile: Option<f64>,
    /// Most hedges as a share of calls. Default 0.05.
    pub max_extra: f64,
    /// Latencies a node needs before it is hedged. Default 20.
    pub min_samples: usize,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: false,
            quantile: 0.95,
            idle_quantile: None,
            max_extra: 0.05,
            min_samples: 20,
        }
    }
}

/// How the router behaves; one home for its numbers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Attempts after the first. Default 3.
    pub retries: u32,
    /// First backoff delay. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest backoff delay. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Deadline of a call, retries and hedges included. Default 120 s.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    pub hedge: HedgeConfig,
    pub breaker: BreakerConfig,
    /// Seeds the random part of the node choice (power of two choices), so
    /// that a run on sim nodes in virtual time is repeatable. Default: a
    /// fresh seed per process.
    pub seed: Option<u64>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            retries: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
            hedge: HedgeConfig::default(),
            breaker: BreakerConfig::default(),
            seed: None,
        }
    }
}

/// A node as the router sees it: its backend plus routing settings.
pub struct NodeHandle {
    pub backend: Arc<dyn Backend>,
    pub tags: Vec<String>,
    /// Calls in flight at most. Default: unlimited.
    pub max_concurrency: Option<u32>,
    /// Prompt plus completion tokens per minute at most.
    pub tokens_per_minute: Option<u32>,
    /// Price per million prompt tokens.
    pub price_in: f64,
    /// Price per million completion tokens.
    pub price_out: f64,
}

impl NodeHandle {
    /// A node with no limits, tags or prices.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        NodeHandle {
            backend,
            tags: vec![],
            max_concurrency: None,
            tokens_per_minute: None,
            price_in: 0.0,
            price_out: 0.0,
        }
    }
}

/// Where the router writes the node each attempt of a call goes to, as it
/// picks it: how a caller learns which node a call still running is on.
#[derive(Clone, Debug, Default)]
pub struct NodeCell(Arc<Mutex<Option<String>>>);

impl NodeCell {
    /// The node of the latest attempt, if one has been picked.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set(&self, node: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.to_string());
    }
}

impl PartialEq for NodeCell {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for NodeCell {}

/// Where a call may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Only nodes carrying all of these tags.
    pub tags: Vec<String>,
    /// Exactly this node.
    pub node: Option<String>,
    /// Nodes already serving sibling replicas of the same task: avoided
    /// while another node can serve (anti-affinity).
    pub avoid: Vec<String>,
    /// A deadline for this call instead of the router's.
    pub deadline: Option<Duration>,
    /// Told the node of each attempt as it is picked.
    pub picked: Option<NodeCell>,
}

/// Who a call is for, for the accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallTag {
    pub run: String,
    pub role: String,
}

/// A routed call's result.
#[derive(Clone, Debug)]
pub struct Routed {
    pub response: ChatResponse,
    /// Attempts made (1 = first try succeeded).
    pub attempts: u32,
    /// Whether a hedge was sent.
    pub hedged: bool,
    /// Time from the call to the answer.
    pub latency: Duration,
    /// Prompt tokens of a hedge that lost, on another attempt's node: the
    /// node read the prompt before it was cancelled, so it is charged
    /// (estimated from the text, as backends do not report a cancelled
    /// call's usage; what it generated before the cancel is not counted).
    /// Already in the accounts; the caller charges its own budget.
    pub lost_tokens: u32,
    /// What [`Routed::lost_tokens`] cost at that node's prices.
    pub lost_cost: f64,
}

/// One request the router sent to one node while serving a call: the
/// retries and hedges a caller would otherwise never see, so that a trace
/// can say which node failed, why, and where the call went instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub node: String,
    pub outcome: AttemptOutcome,
    /// From the attempt's start to its end (its answer, error or cancel).
    pub latency: Duration,
}

/// How one [`Attempt`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// It answered the call.
    Served,
    /// It failed; the router retried elsewhere or gave up.
    Failed(ModelError),
    /// It was a hedge pair's loser, cancelled when the other answered.
    Cancelled,
}
