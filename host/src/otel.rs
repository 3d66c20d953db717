//! OpenTelemetry export of runs: the spans the runtime opens for a run, its
//! tasks, their replicas, every plugin call and every model call, and the
//! exporter that sends them to a collector over OTLP/HTTP (protobuf).
//!
//! The runtime opens its spans with `tracing` under one target,
//! [`TARGET`], at `INFO`; nothing else uses that target. They cost nothing
//! worth measuring unless a subscriber enables that target: the `conclave`
//! command enables it only for the OpenTelemetry layer that
//! [`Exporter::layer`] builds, and only when `--otlp-endpoint` is given. A
//! library user who wants the spans elsewhere enables the target in their
//! own subscriber.
//!
//! The span tree, parent first: `run` > `task` > `replica` > `role` (the
//! role's plugin call) > `chat {model}` (a model call); a replica's
//! verifier calls are `verifier` spans under its `replica` span; a task's
//! votes are `voter` spans under its `task` span. Model-call spans follow
//! the OpenTelemetry GenAI semantic conventions (`gen_ai.*`, with
//! `gen_ai.provider.name`, the name that replaced `gen_ai.system`); the
//! rest of what Conclave knows is under `conclave.*`. A run's answer and
//! every prompt and completion text stay out of the spans: answers can be
//! private, and the journal already holds them.
//!
//! What lives elsewhere: where each span opens and what it records is next
//! to the code it describes (team/job.rs, team/consensus.rs,
//! model/router.rs), through the constructors here, so that every span's
//! name and fields have one home.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::field::Empty;
use tracing::Span;

use crate::team::consensus::{StopReason, TaskResult};
use crate::team::job::JobResult;

/// The `tracing` target of every span the runtime opens for export.
pub const TARGET: &str = "conclave::otel";

/// The target of the exporter's own warnings (not [`TARGET`], which
/// the command's log filter turns off).
const LOG_TARGET: &str = "conclave::otlp";

/// How long one export may take before it is given up (a slow or
/// unreachable collector costs at most this, on the exporter's own thread).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Exporter::shutdown`] waits for the last spans to be sent.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("{url:?} is not an OTLP/HTTP endpoint: {reason}")]
    Endpoint { url: String, reason: String },
    /// The exporter could not be built.
    #[error("the OTLP exporter could not start: {0}")]
    Build(String),
}

/// The URL spans are sent to, from what a user gave: a base URL
/// (`http://host:4318`, or with a trailing `/`) gets `/v1/traces`
/// appended, as the OTLP specification says for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; a URL with a path is used as it is.
pub fn traces_url(endpoint: &str) -> Result<String, OtelError> {
    let bad = |reason: String| OtelError::Endpoint {
        url: endpoint.to_string(),
        reason,
    };
    let mut url = reqwest::Url::parse(endpoint.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme is {:?}; OTLP/HTTP needs http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host".into()));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/v1/traces");
    }
    Ok(url.to_string())
}

/// Sends the runtime's spans to an OTLP/HTTP collector, batched on a
/// thread of its own: a run never waits for an export, and a collector
/// that is down loses spans (with a warning), never a run. Call
/// [`Exporter::shutdown`] before the process exits, or the last batch is
/// lost; dropping it shuts it down too.
pub struct Exporter {
    provider: Option<SdkTracerProvider>,
    url: String,
}

impl Exporter {
    /// Starts exporting to `endpoint` (see [`traces_url`]), as service
    /// `conclave` at this version. Call it outside an async runtime.
    pub fn start(endpoint: &str) -> Result<Self, OtelError> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| OtelError::Build(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("conclave")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Warned {
                inner: exporter,
                url: url.clone(),
                failing: AtomicBool::new(false),
            })
            .with_resource(resource)
            .build();
        Ok(Exporter {
            provider: Some(provider),
            url,
        })
    }

    /// Where spans go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `tracing` layer that hands the runtime's spans ([`TARGET`]) to
    /// this exporter, and nothing else (no events, no other target's spans:
    /// its own filter, so other layers see what they saw before).
    pub fn layer<S>(&self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        let tracer = self
            .provider
            .as_ref()
            .expect("not shut down")
            .tracer("conclave");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target() == TARGET
            }))
            .boxed()
    }

    /// Sends the spans not sent yet and stops, waiting at most
    /// [`SHUTDOWN_TIMEOUT`]. Spans still open are not sent: end the work
    /// first (drop the async runtime).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(target: LOG_TARGET, "OpenTelemetry export to {}: the last spans may be lost: {e}", self.url);
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The OTLP exporter, warning once when exports start failing and once
/// when they work again (not on every batch).
#[derive(Debug)]
struct Warned<E> {
    inner: E,
    url: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Warned<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(target: LOG_TARGET, "OpenTelemetry export to {} failed ({spans} spans lost): {e}; runs go on, their spans are dropped until the collector answers", self.url);
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::warn!(target: LOG_TARGET, "OpenTelemetry export to {} works again", self.url);
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(
        &mut self,
        timeout: Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A count as an attribute: OpenTelemetry's integers are `i64` (and
/// `tracing-opentelemetry` exports a `u64` as text).
fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

// The spans. Each constructor declares every field its span may record
// (`tracing` needs them up front); the `record_*` functions fill them in.
// `otel.status_description` makes a span's status an error with that
// message; `otel.name`, its name, only until the span is first entered.

/// A run: one job through a team. Records [`record_run`] at its end.
pub(crate) fn run_span(run_id: &str, team: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "run",
        conclave.run_id = run_id,
        conclave.team = team,
        conclave.stop = Empty,
        conclave.stop.reason = Empty,
        conclave.support = Empty,
        conclave.total = Empty,
        conclave.samples = Empty,
        conclave.tasks = Empty,
        conclave.tokens_in = Empty,
        conclave.tokens_out = Empty,
        conclave.cost = Empty,
        conclave.hedges = Empty,
        conclave.call_hedges = Empty,
        conclave.messages = Empty,
        conclave.simulated = Empty,
        otel.status_description = Empty,
    )
}

/// What a run counted of its own events that its result does not keep:
/// hedges (replica copies, and model calls sent twice).
#[derive(Default)]
pub(crate) struct RunTally {
    pub(crate) replica_hedges: std::sync::atomic::AtomicU64,
    pub(crate) call_hedges: std::sync::atomic::AtomicU64,
}

impl crate::team::events::Observer for RunTally {
    fn event(&self, _run: &str, event: &crate::team::events::Event) {
        use crate::team::events::Event;
        match event {
            Event::ReplicaHedged { .. } => {
                self.replica_hedges.fetch_add(1, Ordering::Relaxed);
            }
            Event::ModelCall { hedged: true, .. } => {
                self.call_hedges.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Records how a run ended on its span.
pub(crate) fn record_run(span: &Span, r: &JobResult, tally: &RunTally) {
    if span.is_disabled() {
        return;
    }
    record_stop(span, &r.stop);
    span.record("conclave.support", int(r.support));
    span.record("conclave.total", int(r.total));
    span.record("conclave.samples", int(r.samples));
    span.record("conclave.tasks", int(r.tasks.len()));
    span.record("conclave.tokens_in", int(r.tokens_in));
    span.record("conclave.tokens_out", int(r.tokens_out));
    span.record("conclave.cost", r.cost);
    span.record(
        "conclave.hedges",
        int(tally.replica_hedges.load(Ordering::Relaxed)),
    );
    span.record(
        "conclave.call_hedges",
        int(tally.call_hedges.load(Ordering::Relaxed)),
    );
    span.record("conclave.messages", int(r.messages));
    span.record("conclave.simulated", r.simulated);
}

fn record_stop(span: &Span, stop: &StopReason) {
    span.record("conclave.stop", stop.kind());
    if let Some(why) = stop.reason() {
        span.record("conclave.stop.reason", why);
    }
    if let StopReason::Failed(why) = stop {
        span.record("otel.status_description", why.as_str());
    }
}

/// A task of a run, under the run's span. Records [`record_task`] at its
/// end.
pub(crate) fn task_span(parent: &Span, task: &str, role: &str, voter: &str, replicas: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "task",
        conclave.task = task,
        conclave.role = role,
        conclave.voter = voter,
        conclave.replicas = i64::from(replicas),
        conclave.stop = Empty,
        conclave.stop.reason = Empty,
        conclave.support = Empty,
        conclave.total = Empty,
        conclave.samples = Empty,
        conclave.rounds = Empty,
        conclave.tokens = Empty,
        conclave.cost = Empty,
        conclave.hedges = Empty,
        conclave.failures = Empty,
        conclave.cancelled = Empty,
        otel.status_description = Empty,
    )
}

/// Records how a task ended on its span.
pub(crate) fn record_task(span: &Span, r: &TaskResult) {
    if span.is_disabled() {
        return;
    }
    record_stop(span, &r.stop);
    span.record("conclave.support", int(r.support));
    span.record("conclave.total", int(r.total));
    span.record("conclave.samples", int(r.samples));
    span.record("conclave.rounds", int(r.rounds));
    span.record("conclave.tokens", int(r.tokens));
    span.record("conclave.cost", r.cost);
    span.record("conclave.failures", int(r.failures.len()));
}

/// One replica of a task (a hedge's copy is a replica of its own, with
/// `conclave.hedge_of`), under the task's span.
pub(crate) fn replica_span(
    parent: &Span,
    replica: u32,
    round: u32,
    slot: u32,
    copy_of: Option<u32>,
) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "replica",
        conclave.replica = i64::from(replica),
        conclave.round = i64::from(round),
        conclave.slot = i64::from(slot),
        conclave.hedge_of = copy_of.map(i64::from),
        conclave.node = Empty,
        conclave.tokens = Empty,
        conclave.outcome = Empty,
        conclave.cancelled = Empty,
        otel.status_description = Empty,
    )
}

/// Records how a replica ended on its span: the node of its last model
/// call, the tokens charged to it, and its outcome.
pub(crate) fn record_replica(
    span: &Span,
    node: Option<&str>,
    tokens: u64,
    outcome: &Result<crate::plugin::Outcome, crate::plugin::PluginError>,
) {
    if let Some(node) = node {
        span.record("conclave.node", node);
    }
    span.record("conclave.tokens", int(tokens));
    match outcome {
        Ok(crate::plugin::Outcome::Candidate(_)) => {
            span.record("conclave.outcome", "candidate");
        }
        Ok(crate::plugin::Outcome::Plan(_)) => {
            span.record("conclave.outcome", "plan");
        }
        Err(e) => {
            span.record("conclave.outcome", "failed");
            span.record("otel.status_description", e.to_string());
        }
    }
}

/// Marks a span `conclave.cancelled = true` when dropped before
/// [`Unfinished::finish`]: the work it times was cancelled (a replica the
/// vote no longer needed, a hedge that lost).
pub(crate) struct Unfinished<'a> {
    span: &'a Span,
    done: bool,
}

impl<'a> Unfinished<'a> {
    pub(crate) fn new(span: &'a Span) -> Self {
        Unfinished { span, done: false }
    }

    pub(crate) fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done && !self.span.is_disabled() {
            self.span.record("conclave.cancelled", true);
        }
    }
}

/// One call of a plugin (`kind`: role, verifier or voter) that the team
/// names `plugin`, served by the component whose SHA-256 is `sha256`;
/// under the current span (the replica for a role or verifier, the task
/// for a voter).
pub(crate) fn plugin_span(kind: &'static str, plugin: &str, sha256: &str, version: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "plugin",
        otel.name = kind,
        conclave.plugin = plugin,
        conclave.plugin.kind = kind,
        conclave.plugin.sha256 = sha256,
        conclave.plugin.version = version,
        conclave.outcome = Empty,
        error.type = Empty,
        otel.status_description = Empty,
    )
}

/// Records a plugin call's outcome on its span: what it answered, or the
/// error it failed with.
pub(crate) fn record_plugin<T>(
    span: &Span,
    result: &Result<T, crate::plugin::PluginError>,
    outcome: impl FnOnce(&T) -> String,
) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(v) => {
            span.record("conclave.outcome", outcome(v));
        }
        Err(e) => {
            span.record("error.type", plugin_error_type(e));
            span.record("otel.status_description", e.to_string());
        }
    }
}

/// One model call through the router (its retries and hedges included),
/// under the current span (the plugin call that made it). Named `chat
/// {model}` once a node is picked.
pub(crate) fn chat_span(request: &crate::model::ChatRequest) -> Span {
    tracing::info_span!(
        target: TARGET,
        "chat",
        otel.name = Empty,
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.request.max_tokens = request.max_tokens.map(i64::from),
        gen_ai.request.temperature = request.temperature.map(f64::from),
        gen_ai.request.top_p = request.top_p.map(f64::from),
        gen_ai.request.choice.count = (request.samples() > 1).then_some(i64::from(request.samples())),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        conclave.node = Empty,
        conclave.attempts = Empty,
        conclave.hedged = Empty,
        conclave.lost_tokens = Empty,
        otel.status_description = Empty,
    )
}

/// Records the node a model call's attempt was sent to: the model asked
/// for and the span's name on the `first` attempt, the node on each.
pub(crate) fn record_pick(span: &Span, node: &dyn crate::model::Backend, first: bool) {
    if first {
        span.record("otel.name", format!("chat {}", node.model()));
        span.record("gen_ai.provider.name", provider(node.kind()));
        span.record("gen_ai.request.model", node.model());
    }
    span.record("conclave.node", node.name());
}

/// Records how a model call ended: the usage, the node and model that
/// answered, the attempts and hedges; or its error.
pub(crate) fn record_chat(
    span: &Span,
    result: &Result<crate::model::router::Routed, crate::model::ModelError>,
    model: Option<&str>,
) {
    match result {
        Ok(r) => {
            if let Some(m) = model {
                span.record("gen_ai.response.model", m);
            }
            span.record("gen_ai.usage.input_tokens", int(r.response.prompt_tokens));
            span.record(
                "gen_ai.usage.output_tokens",
                int(r.response.completion_tokens()),
            );
            span.record("conclave.node", r.response.node.as_str());
            span.record("conclave.attempts", int(r.attempts));
            span.record("conclave.hedged", r.hedged);
            if r.lost_tokens > 0 {
                span.record("conclave.lost_tokens", int(r.lost_tokens));
            }
        }
        Err(e) => {
            span.record("error.type", model_error_type(e));
            span.record("otel.status_description", e.to_string());
        }
    }
}

/// The GenAI conventions' provider for a node's backend kind: `openai` for
/// any OpenAI-compatible server (the conventions' rule when the client is
/// OpenAI's protocol), `llama.cpp` for an embedded node, and
/// `conclave.sim` for the simulator.
pub(crate) fn provider(kind: &str) -> &'static str {
    match kind {
        "openai" => "openai",
        "embedded" => "llama.cpp",
        "sim" => "conclave.sim",
        _ => "conclave",
    }
}

/// A plugin error's `error.type`: its variant, in snake case (a few
/// values, as the conventions ask, not its message).
fn plugin_error_type(e: &crate::plugin::PluginError) -> &'static str {
    use crate::plugin::PluginError as E;
    match e {
        E::Timeout { .. } => "timeout",
        E::WallTimeout { .. } => "wall_timeout",
        E::Exit { .. } => "exit",
        E::TooLarge { .. } => "too_large",
        E::TooManyHandles { .. } => "too_many_handles",
        E::Busy { .. } => "busy",
        E::OutOfMemory { .. } => "out_of_memory",
        E::Trap { .. } => "trap",
        E::CapabilityDenied { .. } => "capability_denied",
        E::Nondeterministic { .. } => "nondeterministic",
        E::Guest { .. } => "guest",
        E::BadOutput { .. } => "bad_output",
        E::NotFound { .. } => "not_found",
        E::WorldMismatch { .. } => "world_mismatch",
        E::Untrusted { .. } => "untrusted",
        E::NotAComponent { .. } => "not_a_component",
        E::UnsupportedVersion { .. } => "unsupported_version",
        E::Compile { .. } => "compile",
        E::Io { .. } => "io",
        E::Engine(_) => "engine",
        E::Remote { .. } => "remote",
    }
}

/// A model error's `error.type`: its variant, in snake case.
pub(crate) fn model_error_type(e: &crate::model::ModelError) -> &'static str {
    use crate::model::ModelError as E;
    match e {
        E::Unavailable { .. } => "unavailable",
        E::RateLimited { .. } => "rate_limited",
        E::Timeout { .. } => "timeout",
        E::Protocol { .. } => "protocol",
        E::TooLarge { .. } => "too_large",
    }
}
