//! The host services a replica sees: model calls through the router,
//! spread over nodes the task's other replicas are not using, admitted by
//! and charged to the task's meter, reported as events; the run's bus; and
//! the decided answers of the task's dependencies (the blackboard).
//!
//! Plugins are untrusted, so what they ask of these services is capped
//! ([`super::caps`]): each plugin call gets a view of its own
//! ([`RoutedServices::for_call`]) that counts its model calls and
//! messages; a model request is refused when it is too large to cross into
//! the host; a call that a cap or budget stops gets
//! `llm-error::budget-exhausted`; and only the first messages of a run are
//! journaled.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::bus::{BusError, Envelope};
use super::consensus::TaskContext;
use super::events::{AttemptEnd, Event};
use crate::model::router::{AttemptOutcome, CallTag, NodeCell, Route};
use crate::model::{self, ModelError, Router};
use crate::plugin::bindings::{bus as wit_bus, llm};
use crate::plugin::{CallInfo, HostServices};

/// Nodes that served a round of a task so far: a set, so it holds each
/// node once however many calls the replicas make (at most the team's
/// nodes), and routing a call costs the same on the 10,000th call as on
/// the first.
pub(super) type Used = BTreeSet<String>;

/// The host services a replica sees: model calls through the router,
/// spread over nodes the task's other replicas are not using and charged
/// to the task's meter, the run's bus, and the task's inputs.
pub(super) struct RoutedServices {
    pub(super) router: Arc<Router>,
    pub(super) tag: CallTag,
    pub(super) run: String,
    pub(super) gold: Option<String>,
    pub(super) used: Arc<Mutex<Used>>,
    pub(super) board: Vec<(String, String)>,
    pub(super) ctx: TaskContext,
    /// Calls made so far by each replica: the key of a journaled reply.
    pub(super) calls: Mutex<std::collections::HashMap<u32, u32>>,
    /// Why a per-plugin-call cap stopped a model call of this task, if one
    /// did: the task's stop reason when its replicas then all fail.
    pub(super) capped: Mutex<Option<String>>,
    /// Tokens and cost charged so far for each replica's model calls: what
    /// a cancelled replica is journaled as having spent.
    pub(super) spent: Mutex<std::collections::HashMap<u32, (u64, f64)>>,
    /// Where each replica's latest model call went, as the router picked
    /// it: the node a straggler is waiting on.
    pub(super) nodes: Mutex<std::collections::HashMap<u32, NodeCell>>,
}

impl RoutedServices {
    /// The services one plugin call gets: these, counting that call's
    /// model calls and messages against its caps.
    pub(super) fn for_call(self: &Arc<Self>) -> Arc<dyn HostServices> {
        Arc::new(PluginCall {
            task: self.clone(),
            chats: AtomicU32::new(0),
            sends: AtomicU32::new(0),
        })
    }

    /// The node `replica`'s latest model call went to, if it has made one.
    pub(super) fn node_of(&self, replica: u32) -> Option<String> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&replica)
            .and_then(NodeCell::get)
    }

    /// Keeps the task's later model calls off `node` while another node can
    /// serve them (as a node that already answered is): a hedged replica's
    /// copy must not queue behind the straggler it is racing.
    pub(super) fn avoid(&self, node: &str) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string());
    }

    fn node_cell(&self, replica: u32) -> NodeCell {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(replica)
            .or_default()
            .clone()
    }

    /// Tokens and cost charged so far for `replica`'s model calls.
    pub(super) fn spent_by(&self, replica: u32) -> (u64, f64) {
        self.spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&replica)
            .copied()
            .unwrap_or_default()
    }

    /// Charges `tokens` and `cost` to the task's meter and to `replica`.
    pub(super) fn charge(&self, replica: u32, tokens: u64, cost: f64) {
        self.ctx.meter.charge(tokens, cost);
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let e = spent.entry(replica).or_default();
        e.0 += tokens;
        e.1 += cost;
    }

    /// Why a per-plugin-call cap stopped one of this task's model calls,
    /// if one did.
    pub(super) fn capped(&self) -> Option<String> {
        self.capped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One plugin call's view of its task's services: what it has asked for
/// so far, against the per-call caps.
struct PluginCall {
    task: Arc<RoutedServices>,
    chats: AtomicU32,
    sends: AtomicU32,
}

#[async_trait::async_trait]
impl HostServices for PluginCall {
    async fn chat(
        &self,
        call: &CallInfo,
        request: llm::ChatRequest,
    ) -> Result<llm::ChatResponse, llm::LlmError> {
        let cap = self.task.ctx.caps.model.calls_per_plugin_call;
        // Every call counts, refused ones too: each is a trip into the host
        // that the plugin's compute deadline does not see.
        let n = self.chats.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n > cap {
            let why = format!(
                "{}: a plugin call may make {cap} model calls (`max_calls_per_plugin_call` in \
                 [team])",
                call.task_id
            );
            *self.task.capped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            return Err(llm::LlmError::BudgetExhausted(why));
        }
        self.task.chat(call, request).await
    }

    fn send(&self, call: &CallInfo, m: wit_bus::Envelope) -> Result<(), wit_bus::BusError> {
        let cap = self.task.ctx.caps.bus.messages_per_call;
        if self.sends.fetch_add(1, Ordering::Relaxed) >= cap {
            return Err(wit_bus::BusError::Full(
                BusError::CallQuota(cap).to_string(),
            ));
        }
        self.task.send(call, m)
    }

    fn inbox(&self, call: &CallInfo) -> Vec<wit_bus::Envelope> {
        self.task.inbox(call)
    }

    fn read(&self, call: &CallInfo, id: &str) -> Option<String> {
        self.task.read(call, id)
    }

    fn keys(&self, call: &CallInfo) -> Vec<String> {
        self.task.keys(call)
    }
}

/// Refuses a model request too large to take into the host: too many
/// messages or stop sequences, or too many bytes in all (roles, contents
/// and stop sequences). `protocol`, as the request breaks what the host
/// accepts, not a budget: the same request will never pass.
fn check_request(
    limits: &super::caps::ModelLimits,
    r: &llm::ChatRequest,
) -> Result<(), llm::LlmError> {
    let too_large = |what: String| llm::LlmError::Protocol(format!("request too large: {what}"));
    if r.messages.len() > limits.request_messages {
        return Err(too_large(format!(
            "{} messages, at most {} (`max_request_messages` in [team])",
            r.messages.len(),
            limits.request_messages
        )));
    }
    if r.stop.len() > limits.request_stops {
        return Err(too_large(format!(
            "{} stop sequences, at most {} (`max_request_stops` in [team])",
            r.stop.len(),
            limits.request_stops
        )));
    }
    let bytes: usize = r
        .messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .chain(r.stop.iter().map(String::len))
        .chain(r.route.tags.iter().map(String::len))
        .fold(r.route.node.len(), usize::saturating_add);
    if bytes > limits.request_bytes {
        return Err(too_large(format!(
            "{bytes} bytes of messages, stop sequences and route, at most {} \
             (`max_request_bytes` in [team])",
            limits.request_bytes
        )));
    }
    Ok(())
}

/// Longest recipient or kind a journaled message record keeps, in bytes:
/// the journal records who talked to whom, not what was said.
const JOURNALED_LABEL_BYTES: usize = 128;

fn label(s: &str) -> String {
    crate::plugin::checks::clip(s, JOURNALED_LABEL_BYTES)
}

/// Reports the run's `n`-th message (from 1) to the observer, that is to
/// the journal: the first `max_journaled_messages` of a run each, then one
/// record saying that the rest are not (the run's result counts them all).
pub(super) fn journal_message(
    ctx: &TaskContext,
    run: &str,
    n: u64,
    from: &str,
    to: &str,
    kind: &str,
) {
    let cap = ctx.caps.bus.journaled_messages;
    if n <= cap {
        let event = Event::Message {
            from: label(from),
            to: label(to),
            kind: label(kind),
        };
        ctx.observer.event(run, &event);
    } else if n == cap + 1 {
        let event = Event::Message {
            from: "host".into(),
            to: String::new(),
            kind: format!(
                "not journaled: the messages of this run after the first {cap} \
                 (`max_journaled_messages` in [team]); the run's result counts them all"
            ),
        };
        ctx.observer.event(run, &event);
    }
}

/// A replica's seed: from the run id, or from the seed its client asked
/// for (then the same seed gives the same run, whatever the run id).
fn replica_seed(call: &CallInfo, asked: Option<u64>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match asked {
        Some(seed) => (seed, &call.task_id, call.replica).hash(&mut h),
        None => (&call.run_id, &call.task_id, call.replica).hash(&mut h),
    }
    h.finish()
}

fn to_llm_error(e: ModelError) -> llm::LlmError {
    let s = e.to_string();
    match e {
        ModelError::Unavailable { .. } => llm::LlmError::Unavailable(s),
        ModelError::RateLimited { .. } => llm::LlmError::RateLimited(s),
        ModelError::Timeout { .. } => llm::LlmError::Timeout(s),
        ModelError::Protocol { .. } => llm::LlmError::Protocol(s),
        // No node could ever serve it: as the WIT puts it, no node could.
        ModelError::TooLarge { .. } => llm::LlmError::Unavailable(s),
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
        check_request(&self.ctx.caps.model, &request)?;
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(call.replica).or_insert(0);
            *n += 1;
            *n - 1
        };
        // Admitted before a journaled reply is used too, so that a resumed
        // run counts its calls against the budgets as the first run did.
        let _admission = self
            .ctx
            .meter
            .admit()
            .map_err(llm::LlmError::BudgetExhausted)?;
        let recorded = self
            .ctx
            .recorded
            .as_ref()
            .and_then(|m| m.get(&(call.task_id.clone(), call.replica, n)));
        if let Some(r) = recorded {
            // Resume: the reply is in the journal; no node is called.
            self.charge(
                call.replica,
                u64::from(r.tokens_in) + u64::from(r.tokens_out),
                r.cost,
            );
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
                .insert(r.node.clone());
            return Ok(llm::ChatResponse {
                completion_tokens: r.tokens_out,
                prompt_tokens: r.tokens_in,
                node: r.node.clone(),
                text: r.text.clone(),
            });
        }
        let mut req = model::ChatRequest {
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
            seed: Some(replica_seed(call, self.ctx.caps.sampling.seed)),
            gold: self.gold.clone(),
            ..Default::default()
        };
        self.ctx.caps.sampling.apply(&mut req);
        let route = Route {
            tags: request.route.tags.clone(),
            node: (!request.route.node.is_empty()).then(|| request.route.node.clone()),
            avoid: self
                .used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            deadline: None,
            picked: Some(self.node_cell(call.replica)),
        };
        let mut trail = Vec::new();
        let result = self
            .router
            .chat_traced(&route, &self.tag, &req, &mut trail)
            .await;
        // Every attempt that did not answer, so that a trace sees the
        // router's retries and cancelled hedges with their nodes and causes.
        for a in trail {
            let (outcome, cause) = match a.outcome {
                AttemptOutcome::Served => continue,
                AttemptOutcome::Failed(e) => (AttemptEnd::Failed, Some(e.to_string())),
                AttemptOutcome::Cancelled => (AttemptEnd::Cancelled, None),
            };
            self.ctx.observer.event(
                &self.run,
                &Event::Attempt {
                    task: call.task_id.clone(),
                    replica: call.replica,
                    call: n,
                    node: a.node,
                    outcome,
                    cause,
                    latency_ms: a.latency.as_secs_f64() * 1e3,
                },
            );
        }
        let routed = match result {
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
        // A hedge that lost was sent the prompt too: its tokens are spent.
        self.charge(
            call.replica,
            u64::from(tin) + u64::from(tout) + u64::from(routed.lost_tokens),
            cost + routed.lost_cost,
        );
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
            .insert(r.node.clone());
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
        let (from, to, kind) = (
            label(&envelope.from),
            label(&envelope.to),
            label(&envelope.kind),
        );
        match self.ctx.bus.send(envelope) {
            Ok(n) => {
                journal_message(&self.ctx, &self.run, n, &from, &to, &kind);
                Ok(())
            }
            Err(e @ BusError::UnknownRecipient(_)) => {
                Err(wit_bus::BusError::UnknownRecipient(e.to_string()))
            }
            // Every limit on size or count: the WIT's `full`, with the
            // reason and the key that raises it.
            Err(e) => Err(wit_bus::BusError::Full(e.to_string())),
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
