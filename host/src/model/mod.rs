//! Model nodes: the backends a node can be, and the router that every `llm`
//! call of a plugin goes through.
//!
//! A node is an endpoint that can think: [`openai`] (any OpenAI-compatible
//! server), [`embedded`] (llama.cpp in-process on a GGUF file) or [`sim`] (a
//! seeded simulator for tests and benchmarks, labelled as such everywhere).
//! All of them implement [`Backend`]; the [`router`] picks a healthy,
//! lightly loaded node for each call, retries and hedges, and keeps the
//! accounts.

pub mod accounts;
pub mod check;
pub mod embedded;
pub mod health;
pub mod latency;
pub mod node;
pub mod openai;
pub mod pool;
pub mod route;
pub mod router;
pub mod sim;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use node::{NodeError, NodeSpec};
pub use pool::NodePool;
pub use router::{Router, RouterConfig};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat completion request, as the router hands it to a backend. Unset
/// sampling fields fall back to the node's configured defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// How many samples of this prompt to draw in one call (default 1).
    /// Backends that can share work between samples (the embedded one
    /// shares the prompt's prefill) do so.
    pub n: u32,
    /// The right answer, when an evaluation provides one. Only the `sim`
    /// backend looks at it; real backends never send it anywhere.
    pub gold: Option<String>,
}

impl ChatRequest {
    /// A request for one sample of `messages`.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            n: 1,
            ..Default::default()
        }
    }

    /// Number of samples asked for (at least 1).
    pub fn samples(&self) -> u32 {
        self.n.max(1)
    }
}

/// What the client of a served request asked of every model call of its
/// run (`max_tokens`, `temperature`, `seed`, `stop` of an OpenAI chat
/// request), over what the team's plugins ask. Journaled with the job, so
/// a resumed run samples as the first did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Each call generates at most this many tokens (the smaller of this
    /// and what the plugin asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Every call samples at this temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Every call samples with this nucleus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Seeds derive from this instead of the run id: the same seed gives
    /// the same run on seeded nodes, whatever the run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Added to every call's stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

impl Sampling {
    /// Whether it changes nothing.
    pub fn is_default(&self) -> bool {
        *self == Sampling::default()
    }

    /// Applies it to one call's request.
    pub fn apply(&self, r: &mut ChatRequest) {
        if let Some(m) = self.max_tokens {
            r.max_tokens = Some(r.max_tokens.map_or(m, |asked| asked.min(m)));
        }
        if let Some(t) = self.temperature {
            r.temperature = Some(t);
        }
        if let Some(p) = self.top_p {
            r.top_p = Some(p);
        }
        for s in &self.stop {
            if !r.stop.contains(s) {
                r.stop.push(s.clone());
            }
        }
    }
}

/// One generated sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    /// Tokens generated for this sample.
    pub completion_tokens: u32,
    /// Why generation stopped (`stop`, `length`, ...), when known.
    pub finish_reason: Option<String>,
}

/// A backend's answer to one [`ChatRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// One per sample asked for.
    pub choices: Vec<Completion>,
    /// Prompt tokens (counted once even when several samples share them).
    pub prompt_tokens: u32,
    /// The node that answered.
    pub node: String,
    /// Whether the answer came from the simulator, not from a model.
    pub simulated: bool,
}

impl ChatResponse {
    /// Generated tokens over all samples.
    pub fn completion_tokens(&self) -> u32 {
        self.choices.iter().map(|c| c.completion_tokens).sum()
    }
}

/// Why a model call failed. Every variant names the node and says what
/// happened in a few words.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ModelError {
    /// The node cannot be reached or failed (connection refused or reset, a
    /// 5xx, a circuit breaker open, no node left to try).
    #[error("node {node} is unavailable: {reason}")]
    Unavailable { node: String, reason: String },
    /// The node asked us to slow down.
    #[error("node {node} is rate limited{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        node: String,
        retry_after: Option<Duration>,
    },
    /// No answer within the deadline.
    #[error("node {node} did not answer within {after:?}")]
    Timeout { node: String, after: Duration },
    /// The node answered something that is not a completion.
    #[error("node {node} broke the protocol: {reason}")]
    Protocol { node: String, reason: String },
    /// The call is larger than any node that could serve it can ever take
    /// (its prompt plus `max_tokens` pass the node's `tokens_per_minute`
    /// window): refused at once rather than waited on forever. Not retried.
    #[error("no node can ever take this call ({node}): {reason}")]
    TooLarge { node: String, reason: String },
}

impl ModelError {
    /// The node the error is about.
    pub fn node(&self) -> &str {
        match self {
            ModelError::Unavailable { node, .. }
            | ModelError::RateLimited { node, .. }
            | ModelError::Timeout { node, .. }
            | ModelError::Protocol { node, .. }
            | ModelError::TooLarge { node, .. } => node,
        }
    }

    /// Whether another attempt (here or on another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ModelError::TooLarge { .. })
    }
}

/// What every kind of node implements.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The node's name from the team spec.
    fn name(&self) -> &str;

    /// `openai`, `embedded` or `sim`.
    fn kind(&self) -> &'static str;

    /// The model it serves, as telemetry names it (`gen_ai.request.model`
    /// on a model call's span): an `openai` node's `model`, an `embedded`
    /// node's GGUF file name; by default its kind (`sim`).
    fn model(&self) -> &str {
        self.kind()
    }

    /// Whether this node is the simulator (its output is not a model's).
    fn is_simulated(&self) -> bool {
        false
    }

    /// One chat completion call (with `request.samples()` samples).
    /// Dropping the future cancels the call.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError>;
}

/// Counts tokens approximately when a server does not report usage: about
/// four characters per token for English text, at least one per word.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u32;
    let words = text.split_whitespace().count() as u32;
    chars.div_ceil(4).max(words)
}
