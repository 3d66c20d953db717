//! `conclave nodes check`: reach every node once and say what answered.

use std::time::Duration;

use serde::Serialize;

use super::router::NodeHandle;
use super::{ChatRequest, Message};

/// What one node did with a tiny request.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCheck {
    pub node: String,
    pub kind: String,
    pub simulated: bool,
    /// Time to the answer (or the failure).
    pub latency: Duration,
    /// The start of the reply, or the error.
    pub outcome: Result<String, String>,
}

/// Sends each node a short request (at most 8 new tokens), all at once,
/// each bounded by `timeout`.
pub async fn check(nodes: &[NodeHandle], timeout: Duration) -> Vec<NodeCheck> {
    let req = ChatRequest {
        max_tokens: Some(8),
        temperature: Some(0.0),
        ..ChatRequest::new(vec![Message::new("user", "Reply with the word OK.")])
    };
    let calls = nodes.iter().map(|n| {
        let req = req.clone();
        async move {
            let start = std::time::Instant::now();
            let outcome = match tokio::time::timeout(timeout, n.backend.chat(&req)).await {
                Ok(Ok(r)) => Ok(r
                    .choices
                    .first()
                    .map(|c| c.text.chars().take(60).collect())
                    .unwrap_or_default()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            NodeCheck {
                node: n.backend.name().to_string(),
                kind: n.backend.kind().to_string(),
                simulated: n.backend.is_simulated(),
                latency: start.elapsed(),
                outcome,
            }
        }
    });
    futures::future::join_all(calls).await
}
