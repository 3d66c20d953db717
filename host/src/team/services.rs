//! The host services a replica sees: model calls through the router,
//! spread over nodes the task's other replicas are not using, admitted by
//! and charged to the task's meter, reported as events; the run's bus; and
//! the decided answers of the task's dependencies (the blackboard).

use std::sync::{Arc, Mutex};

use super::bus::{BusError, Envelope};
use super::consensus::TaskContext;
use super::events::Event;
use crate::model::router::{CallTag, Route};
use crate::model::{self, ModelError, Router};
use crate::plugin::bindings::{bus as wit_bus, llm};
use crate::plugin::{CallInfo, HostServices};

/// The host services a replica sees: model calls through the router,
/// spread over nodes the task's other replicas are not using and charged
/// to the task's meter, the run's bus, and the task's inputs.
pub(super) struct RoutedServices {
    pub(super) router: Arc<Router>,
    pub(super) tag: CallTag,
    pub(super) run: String,
    pub(super) gold: Option<String>,
    pub(super) used: Arc<Mutex<Vec<String>>>,
    pub(super) board: Vec<(String, String)>,
    pub(super) ctx: TaskContext,
    /// Calls made so far by each replica: the key of a journaled reply.
    pub(super) calls: Mutex<std::collections::HashMap<u32, u32>>,
}

fn replica_seed(call: &CallInfo) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&call.run_id, &call.task_id, call.replica).hash(&mut h);
    h.finish()
}

fn to_llm_error(e: ModelError) -> llm::LlmError {
    let s = e.to_string();
    match e {
        ModelError::Unavailable { .. } => llm::LlmError::Unavailable(s),
        ModelError::RateLimited { .. } => llm::LlmError::RateLimited(s),
        ModelError::Timeout { .. } => llm::LlmError::Timeout(s),
        ModelError::Protocol { .. } => llm::LlmError::Protocol(s),
    }
}

fn address(call: &CallInfo) -> String {
    format!("{}/{}", call.task_id, call.replica)
}

#[async_trait::async_trait]
impl HostServices for RoutedServices {
    async fn chat(
        &self,
        call: &CallInfo,
        request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(call.replica).or_insert(0);
            *n += 1;
            *n - 1
        };
        let recorded = self
            .ctx
            .recorded
            .as_ref()
            .and_then(|m| m.get(&(call.task_id.clone(), call.replica, n)));
        if let Some(r) = recorded {
            // Resume: the reply is in the journal; no node is called.
            self.ctx
                .meter
                .charge(u64::from(r.tokens_in) + u64::from(r.tokens_out), r.cost);
            self.ctx.observer.event(
                &self.run,
                &Event::ModelCall {
                    task: call.task_id.clone(),
                    replica: call.replica,
                    call: n,
                    node: r.node.clone(),
                    tokens_in: r.tokens_in,
                    tokens_out: r.tokens_out,
                    cost: r.cost,
                    latency_ms: 0.0,
                    attempts: 0,
                    hedged: false,
                    text: r.text.clone(),
                    replayed: true,
                },
            );
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r.node.clone());
            return Ok(llm::ChatResponse {
                completion_tokens: r.tokens_out,
                prompt_tokens: r.tokens_in,
                node: r.node.clone(),
                text: r.text.clone(),
            });
        }
        let _admission = self
            .ctx
            .meter
            .admit()
            .map_err(|why| llm::LlmError::Unavailable(format!("budget exhausted: {why}")))?;
        let req = model::ChatRequest {
            messages: request
                .messages
                .iter()
                .map(|m| model::Message::new(&m.role, &m.content))
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stop: request.stop.clone(),
            n: 1,
            // A seed of its own for every replica, so that replicas sample
            // independently even on a node that would otherwise repeat
            // itself for the same prompt.
            seed: Some(replica_seed(call)),
            gold: self.gold.clone(),
            ..Default::default()
        };
        let route = Route {
            tags: request.route.tags.clone(),
            node: (!request.route.node.is_empty()).then(|| request.route.node.clone()),
            avoid: self.used.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            deadline: None,
        };
        let routed = match self.router.chat(&route, &self.tag, &req).await {
            Ok(r) => r,
            Err(e) => {
                self.ctx.observer.event(
                    &self.run,
                    &Event::Failure {
                        task: call.task_id.clone(),
                        what: format!("replica {}: model call: {e}", call.replica),
                        node: Some(e.node().to_string()),
                    },
                );
                return Err(to_llm_error(e));
            }
        };
        let r = &routed.response;
        let (tin, tout) = (r.prompt_tokens, r.completion_tokens());
        let cost = self.router.cost_of(&r.node, tin.into(), tout.into());
        self.ctx
            .meter
            .charge(u64::from(tin) + u64::from(tout), cost);
        let text = r
            .choices
            .first()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        self.ctx.observer.event(
            &self.run,
            &Event::ModelCall {
                task: call.task_id.clone(),
                replica: call.replica,
                call: n,
                node: r.node.clone(),
                tokens_in: tin,
                tokens_out: tout,
                cost,
                latency_ms: routed.latency.as_secs_f64() * 1e3,
                attempts: routed.attempts,
                hedged: routed.hedged,
                text: text.clone(),
                replayed: false,
            },
        );
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r.node.clone());
        let r = routed.response;
        Ok(llm::ChatResponse {
            completion_tokens: tout,
            prompt_tokens: tin,
            node: r.node,
            text,
        })
    }

    fn send(&self, call: &CallInfo, m: wit_bus::Envelope) -> Result<(), wit_bus::BusError> {
        let envelope = Envelope {
            from: address(call),
            to: m.recipient,
            kind: m.kind,
            body: m.body,
            correlation_id: m.correlation_id,
            deadline: None,
        };
        let event = Event::Message {
            from: envelope.from.clone(),
            to: envelope.to.clone(),
            kind: envelope.kind.clone(),
        };
        match self.ctx.bus.send(envelope) {
            Ok(()) => {
                self.ctx.observer.event(&self.run, &event);
                Ok(())
            }
            Err(e @ BusError::Full(..)) => Err(wit_bus::BusError::Full(e.to_string())),
            Err(e) => Err(wit_bus::BusError::UnknownRecipient(e.to_string())),
        }
    }

    fn inbox(&self, call: &CallInfo) -> Vec<wit_bus::Envelope> {
        self.ctx
            .bus
            .inbox(&address(call))
            .into_iter()
            .map(|m| wit_bus::Envelope {
                sender: m.from,
                recipient: m.to,
                kind: m.kind,
                body: m.body,
                correlation_id: m.correlation_id,
            })
            .collect()
    }

    fn read(&self, _call: &CallInfo, id: &str) -> Option<String> {
        self.board
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    }

    fn keys(&self, _call: &CallInfo) -> Vec<String> {
        self.board.iter().map(|(k, _)| k.clone()).collect()
    }
}
