//! `embedded` nodes: llama.cpp in-process (through the `llama-cpp-2` crate)
//! on a GGUF file, so a team can think with zero set-up: no server, no
//! account, no GPU.
//!
//! What lives here:
//! - [`EmbeddedConfig`], the `[[node]]` fields of an embedded node, with
//!   their defaults;
//! - [`EmbeddedBackend`], the [`Backend`] that loads the model once and
//!   answers chat calls, each in its own llama.cpp context on a blocking
//!   thread, at most `slots` at a time;
//! - the generation loop: one prefill of the prompt shared by all samples of
//!   a call (its KV cache is shared by every sequence), then all samples
//!   decoded together, one batch per step;
//! - the process-wide llama.cpp backend and its log hook, which sends
//!   llama.cpp's chatter to `tracing` (target `llama_cpp`) instead of stderr
//!   and keeps the last error line so that a failed load can say why.
//!
//! The default model of the examples is Qwen2.5-Coder-0.5B-Instruct; the
//! tests use SmolLM2-135M-Instruct (see `models/README.md` and
//! `scripts/fetch-model.sh`).
//!
//! Build: llama-cpp-sys-2 compiles llama.cpp with `GGML_NATIVE=OFF` by
//! itself (its build script defines it after any `GGML_*` variable from the
//! environment, so an `[env]` entry would change nothing); ggml then turns
//! on the x86-64-v3 set (SSE4.2, AVX, AVX2, FMA, F16C, BMI2) and no
//! AVX-512. The binary runs on any CPU with AVX2. Building with
//! `RUSTFLAGS=-C target-cpu=native` would switch `GGML_NATIVE` on, which
//! crashed another llama.cpp binding on these machines: don't.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::node::NodeError;
use super::{Backend, ChatRequest, ChatResponse, Completion, Message, ModelError};

mod generate;
use generate::*;

/// Where `scripts/fetch-model.sh smollm2-135m` puts SmolLM2-135M, relative
/// to the repository root: the small model the tests and `conclave bench
/// embedded` use (the default model of the examples is Qwen2.5-Coder-0.5B).
pub const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Most sequences one llama.cpp context can hold (`LLAMA_MAX_SEQ`), hence
/// the most samples one call can ask for.
pub const MAX_SAMPLES: u32 = 256;

/// Tokens per prefill batch. llama.cpp splits bigger batches itself, but a
/// bounded batch keeps its buffers small and lets cancellation in between.
const PREFILL_BATCH: usize = 512;

/// The fields of an `embedded` node. Every field but `path` has a default,
/// so `path = "models/....gguf"` alone is a working node.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The GGUF model file.
    pub path: PathBuf,
    /// Longest sequence (prompt plus answer) one sample may reach, in
    /// tokens. Default 2048. A prompt that does not fit is refused; an answer
    /// that would overflow is cut at the context's end (`finish_reason`
    /// `length`). Each call's KV cache is sized for what it needs (the prompt
    /// once plus `n` answers), not for `n × context`.
    #[serde(default = "default_context")]
    pub context: u32,
    /// CPU threads llama.cpp uses per call. Default: the available
    /// parallelism, at most 4 (more rarely helps a small model and starves
    /// everything else on the machine).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Default cap on generated tokens per sample, when a request sets none.
    /// Default 256.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Default sampling temperature; 0 means greedy. Default 0.7.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens before sampling (0: all).
    /// Default 40.
    #[serde(default = "default_top_k")]
    pub top_k: i32,
    /// Default nucleus-sampling mass. Default 0.95.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Default seed when a request sets none; sample `i` of a call uses
    /// `seed + i`, so a call is reproducible. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Calls generating at the same time; more wait for a free slot. Each
    /// slot holds its own context (KV cache) while it runs. Default 1.
    #[serde(default = "default_slots")]
    pub slots: u32,
}

fn default_context() -> u32 {
    2048
}
fn default_max_tokens() -> u32 {
    256
}
fn default_temperature() -> f32 {
    0.7
}
fn default_top_k() -> i32 {
    40
}
fn default_top_p() -> f32 {
    0.95
}
fn default_slots() -> u32 {
    1
}

impl EmbeddedConfig {
    /// A node on the GGUF file at `path` with every other field at its
    /// default (what a spec with only `path` gives).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            context: default_context(),
            threads: None,
            max_tokens: default_max_tokens(),
            temperature: default_temperature(),
            top_k: default_top_k(),
            top_p: default_top_p(),
            seed: 0,
            slots: default_slots(),
        }
    }

    /// Threads per call: the configured number, or the available
    /// parallelism capped at 4.
    pub fn effective_threads(&self) -> u32 {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .min(4)
        })
    }

    /// Refuses values that cannot work, naming the field.
    fn check(&self, node: &str) -> Result<(), NodeError> {
        let bad = |field: &str, reason: &str| Err(NodeError::new(node, field, reason));
        if self.context < 16 {
            return bad("context", "must be at least 16 tokens");
        }
        if self.threads == Some(0) {
            return bad("threads", "must be at least 1");
        }
        if self.slots == 0 {
            return bad(
                "slots",
                "must be at least 1 (0 would make every call wait forever)",
            );
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        Ok(())
    }
}

/// An `embedded` node: a GGUF model loaded in this process.
///
/// The model's weights are loaded (memory-mapped) once and shared by every
/// call; each call builds its own llama.cpp context sized for that call and
/// runs on tokio's blocking pool, so the async executor never waits on
/// llama.cpp. At most `slots` calls run at once; the others queue.
pub struct EmbeddedBackend {
    name: String,
    inner: Arc<Inner>,
    slots: Arc<Semaphore>,
}

/// What a call needs on its blocking thread.
struct Inner {
    model: LlamaModel,
    /// The GGUF's chat template, or `None` for the plain transcript.
    template: Option<LlamaChatTemplate>,
    config: EmbeddedConfig,
    threads: u32,
    /// Creating two contexts of one model at the same time is unsound in
    /// llama.cpp (context creation writes to the model), so it is
    /// serialised; generation itself runs in parallel.
    new_context: Mutex<()>,
    /// Whether the plain-transcript fallback has been announced already.
    warned_template: AtomicBool,
}

/// The models `scripts/fetch-model.sh` fetches: its name for each, and the
/// file it writes into `models/`. A test checks this table against the
/// script's own.
const FETCHABLE: [(&str, &str); 3] = [
    (
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
    ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    (
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
];

/// What to run to get a missing GGUF file: the exact fetch command when
/// the file name is one the project's script fetches.
fn fetch_hint(path: &Path) -> String {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    match FETCHABLE.iter().find(|(_, f)| *f == file) {
        Some((name, _)) => format!("fetch it with `bash scripts/fetch-model.sh {name}`"),
        None => "`bash scripts/fetch-model.sh --list` names the models the project fetches".into(),
    }
}

impl EmbeddedBackend {
    /// Loads the GGUF file of `config` for the node `node`.
    ///
    /// Errors name the node and the field: a `path` that does not exist or
    /// that llama.cpp cannot load (with llama.cpp's own reason), or a value
    /// out of range. Loading is synchronous and takes about as long as
    /// mapping the file; call it before serving, not on a hot path.
    pub fn load(node: &str, config: &EmbeddedConfig) -> Result<Self, NodeError> {
        config.check(node)?;
        let path = &config.path;
        if !path.exists() {
            return Err(NodeError::new(
                node,
                "path",
                format!("{} does not exist ({})", path.display(), fetch_hint(path)),
            ));
        }
        let backend = backend()
            .map_err(|e| NodeError::new(node, "path", format!("llama.cpp failed to start: {e}")))?;
        let model = load_model(backend, path).map_err(|cause| {
            NodeError::new(
                node,
                "path",
                format!("llama.cpp cannot load {}: {cause}", path.display()),
            )
        })?;
        let template = match model.chat_template(None) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    node,
                    path = %path.display(),
                    "model has no usable chat template ({e}); prompts will be a plain `role: content` transcript"
                );
                None
            }
        };
        if config.context > model.n_ctx_train() {
            tracing::warn!(
                node,
                context = config.context,
                trained = model.n_ctx_train(),
                "context is longer than the model was trained for; answers past that point degrade"
            );
        }
        let threads = config.effective_threads();
        tracing::debug!(
            node,
            path = %path.display(),
            params = model.n_params(),
            threads,
            slots = config.slots,
            "embedded model loaded"
        );
        Ok(EmbeddedBackend {
            name: node.to_string(),
            slots: Arc::new(Semaphore::new(config.slots as usize)),
            inner: Arc::new(Inner {
                model,
                template,
                config: config.clone(),
                threads,
                new_context: Mutex::new(()),
                warned_template: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration the node was loaded with.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.inner.config
    }

    /// Threads each call uses.
    pub fn threads(&self) -> u32 {
        self.inner.threads
    }

    /// The prompt text `messages` become for this model (its chat template
    /// with the assistant's turn opened), as a call would feed it.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String, ModelError> {
        self.inner.render(&self.name, messages)
    }
}

/// Builds an `embedded` node from the backend-specific keys of its
/// `[[node]]` table (what [`NodeSpec`](super::NodeSpec) leaves after the
/// common keys). A relative `path` is resolved against `base`, the team
/// spec's folder, so a spec works from any working directory.
///
/// Errors name the node and the field: an unknown or mistyped key, or
/// anything [`EmbeddedBackend::load`] refuses.
pub fn build_node(
    node: &str,
    table: &toml::Table,
    base: &Path,
) -> Result<Arc<dyn Backend>, NodeError> {
    let mut config: EmbeddedConfig = table.clone().try_into().map_err(|e: toml::de::Error| {
        let message = e.message().to_string();
        let field = super::node::field_of_error::<EmbeddedConfig>(table, &message)
            .unwrap_or_else(|| "path".into());
        NodeError::new(node, &field, message)
    })?;
    if config.path.is_relative() {
        config.path = base.join(&config.path);
    }
    Ok(Arc::new(EmbeddedBackend::load(node, &config)?))
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn model(&self) -> &str {
        self.inner
            .config
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("embedded")
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        // Waiting for a slot is cancel-safe: dropping the future here just
        // leaves the queue.
        let permit =
            self.slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ModelError::Unavailable {
                    node: self.name.clone(),
                    reason: "node is shut down".into(),
                })?;
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let inner = self.inner.clone();
        let node = self.name.clone();
        let request = request.clone();
        let job = tokio::task::spawn_blocking(move || {
            // The slot is held by the blocking work, not by the future: a
            // dropped call keeps its slot until llama.cpp has really stopped,
            // so slots never oversubscribe the CPU.
            let _permit = permit;
            inner.generate(&node, &request, &cancel)
        });
        match job.await {
            Ok(result) => result,
            Err(e) => Err(ModelError::Unavailable {
                node: self.name.clone(),
                reason: format!("generation failed: {e}"),
            }),
        }
    }
}

/// The process-wide llama.cpp backend, started on first use (llama.cpp
/// allows one per process), with its logs sent to `tracing`.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // SAFETY: `on_log` matches `ggml_log_callback`, never unwinds and
            // ignores its user data, so a null pointer is fine.
            unsafe { llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut()) };
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads a model, turning llama.cpp's failure into its own words.
fn load_model(backend: &LlamaBackend, path: &Path) -> Result<LlamaModel, String> {
    LAST_ERROR.with(|e| e.borrow_mut().clear());
    LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
        let logged = LAST_ERROR.with(|l| l.borrow().join("; "));
        if logged.is_empty() {
            e.to_string()
        } else {
            logged
        }
    })
}

thread_local! {
    /// A log line llama.cpp is still writing (it sends some in pieces).
    static LOG_LINE: RefCell<(u32, String)> = const { RefCell::new((0, String::new())) };
    /// Error lines llama.cpp logged on this thread since the last load
    /// started: the reason a load failed (the API only returns null).
    static LAST_ERROR: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// llama.cpp's (and ggml's) log callback: whole lines go to `tracing` at
/// target `llama_cpp` (errors as warnings, warnings as debug, the rest as
/// trace, because llama.cpp narrates every context it builds).
unsafe extern "C" fn on_log(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let line = LOG_LINE.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return None;
        };
        if level != llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
            buf.0 = level;
        }
        buf.1.push_str(&text);
        if buf.1.ends_with('\n') {
            let line = std::mem::take(&mut buf.1);
            Some((buf.0, line))
        } else {
            None
        }
    });
    let Some((level, line)) = line else { return };
    let line = line.trim_end();
    match level {
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => {
            tracing::warn!(target: "llama_cpp", "{line}");
            LAST_ERROR.with(|e| {
                if let Ok(mut e) = e.try_borrow_mut() {
                    e.push(line.to_string());
                }
            });
        }
        llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => tracing::debug!(target: "llama_cpp", "{line}"),
        _ => tracing::trace!(target: "llama_cpp", "{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names and files of `FETCHABLE` are those of the script's table,
    /// so the hint for a missing file names a command that fetches it.
    #[test]
    fn fetch_hints_match_the_fetch_script() {
        let script = include_str!("../../../../scripts/fetch-model.sh");
        let table = script
            .split("MODELS='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let rows: Vec<(String, String)> = table
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split('|').map(str::trim).collect();
                (fields[0].to_string(), fields[1].to_string())
            })
            .collect();
        let ours: Vec<(String, String)> = FETCHABLE
            .iter()
            .map(|(n, f)| (n.to_string(), f.to_string()))
            .collect();
        assert_eq!(ours, rows);
        assert_eq!(
            fetch_hint(Path::new(
                "examples/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
            )),
            "fetch it with `bash scripts/fetch-model.sh smollm2-135m`"
        );
        assert!(fetch_hint(Path::new("models/other.gguf")).contains("--list"));
    }

    fn stops(s: &[&'static str]) -> Vec<&'static [u8]> {
        s.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: EmbeddedConfig = serde_json::from_str(r#"{"path": "m.gguf"}"#).unwrap();
        assert_eq!(c, EmbeddedConfig::new("m.gguf"));
        assert_eq!(
            (c.context, c.max_tokens, c.top_k, c.seed, c.slots),
            (2048, 256, 40, 0, 1)
        );
        assert_eq!((c.temperature, c.top_p, c.threads), (0.7, 0.95, None));
        assert!((1..=4).contains(&c.effective_threads()));
        let c: EmbeddedConfig =
            serde_json::from_str(r#"{"path": "m.gguf", "threads": 3}"#).unwrap();
        assert_eq!(c.effective_threads(), 3);
        let err = serde_json::from_str::<EmbeddedConfig>(r#"{"path": "m", "ctx": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `ctx`"), "{err}");
        assert!(serde_json::from_str::<EmbeddedConfig>("{}").is_err());
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |f: fn(&mut EmbeddedConfig)| {
            let mut c = EmbeddedConfig::new("m.gguf");
            f(&mut c);
            c.check("n").err().map(|e| e.field)
        };
        assert_eq!(field(|_| {}), None);
        assert_eq!(field(|c| c.slots = 0).as_deref(), Some("slots"));
        assert_eq!(field(|c| c.threads = Some(0)).as_deref(), Some("threads"));
        assert_eq!(field(|c| c.context = 0).as_deref(), Some("context"));
        assert_eq!(field(|c| c.top_p = 0.0).as_deref(), Some("top_p"));
        assert_eq!(
            field(|c| c.temperature = f32::NAN).as_deref(),
            Some("temperature")
        );
    }

    #[test]
    fn missing_file_is_a_path_error() {
        let err = EmbeddedBackend::load("tiny", &EmbeddedConfig::new("/nonexistent/x.gguf"))
            .err()
            .unwrap();
        assert_eq!((err.node.as_str(), err.field.as_str()), ("tiny", "path"));
        assert!(
            err.reason.contains("/nonexistent/x.gguf") && err.reason.contains("does not exist")
        );
    }

    #[test]
    fn a_file_llama_cpp_cannot_read_is_a_path_error_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.gguf");
        std::fs::write(&path, b"this is not a GGUF file at all").unwrap();
        let err = EmbeddedBackend::load("junk", &EmbeddedConfig::new(&path))
            .err()
            .unwrap();
        assert_eq!(err.field, "path");
        assert!(err.reason.contains("cannot load"), "{err}");
        // llama.cpp's own words, not just "null result".
        assert!(
            err.reason.to_lowercase().contains("gguf") || err.reason.contains("magic"),
            "{err}"
        );
    }

    #[test]
    fn node_tables_name_the_field_and_resolve_paths() {
        let table = |s: &str| s.parse::<toml::Table>().unwrap();
        let err = |s: &str| {
            build_node("e", &table(s), Path::new("/spec/dir"))
                .err()
                .unwrap()
        };
        let e = err("path = \"m.gguf\"\nctx = 4");
        assert_eq!((e.node.as_str(), e.field.as_str()), ("e", "ctx"));
        let e = err("path = \"m.gguf\"\nslots = \"two\"");
        assert_eq!(e.field, "slots", "{e}");
        assert_eq!(err("path = 3").field, "path");
        assert_eq!(err("context = 10").field, "path");
        // Relative to the spec's folder.
        let e = err("path = \"m.gguf\"");
        assert_eq!(e.field, "path");
        assert!(e.reason.contains("/spec/dir/m.gguf"), "{e}");
    }

    #[test]
    fn stop_strings_are_found_across_pieces() {
        let s = stops(&["\n\n", "Answer:"]);
        assert_eq!(find_stop(b"abc", 0, &s), None);
        assert_eq!(find_stop(b"abc\n\nd", 3, &s), Some(3));
        // The match straddles the boundary between old and new bytes.
        assert_eq!(find_stop(b"x Answ", 0, &s), None);
        assert_eq!(find_stop(b"x Answer: 4", 6, &s), Some(2));
        // The earliest of several.
        assert_eq!(find_stop(b"Answer:\n\n", 0, &s), Some(0));
        assert_eq!(find_stop(b"abc", 0, &[]), None);
    }

    #[test]
    fn a_stop_string_cuts_the_text_and_what_follows() {
        let mut st = SampleState::new(LlamaSampler::greedy(), 0);
        let s = stops(&["END"]);
        st.push(LlamaToken(1), b"hello E", &s, 10);
        assert_eq!(st.finish, None);
        st.push(LlamaToken(2), b"ND and more", &s, 10);
        assert_eq!(st.finish, Some("stop"));
        assert_eq!(text_of(&st.bytes), "hello ");
        assert_eq!(st.tokens, 2);
    }

    #[test]
    fn max_tokens_ends_a_sample() {
        let mut st = SampleState::new(LlamaSampler::greedy(), 0);
        st.push(LlamaToken(1), b"a", &[], 2);
        assert_eq!(st.finish, None);
        st.push(LlamaToken(2), b"b", &[], 2);
        assert_eq!((st.finish, st.tokens), (Some("length"), 2));
    }

    #[test]
    fn text_drops_a_cut_character_only_at_the_end() {
        let e_acute = "é".as_bytes();
        assert_eq!(text_of(b"caf"), "caf");
        assert_eq!(text_of(&[b"caf".as_slice(), &e_acute[..1]].concat()), "caf");
        assert_eq!(text_of(&[b"caf".as_slice(), e_acute].concat()), "café");
        assert_eq!(text_of(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn budget_fits_the_context() {
        assert_eq!(answer_budget(100, 256, 2048), Some(256));
        assert_eq!(answer_budget(2000, 256, 2048), Some(48));
        assert_eq!(answer_budget(2048, 256, 2048), None);
        assert_eq!(answer_budget(3000, 256, 2048), None);
        assert_eq!(kv_cells(100, 5, 64), 100 + 5 * 64 + 1);
    }

    #[test]
    fn seeds_differ_per_sample_and_avoid_the_random_marker() {
        assert_eq!(sample_seed(0, 0), 0);
        assert_ne!(sample_seed(7, 0), sample_seed(7, 1));
        assert_eq!(sample_seed(7, 1), sample_seed(8, 0));
        assert_ne!(sample_seed(u64::from(u32::MAX), 0), u32::MAX);
        assert_ne!(sample_seed(u64::MAX, 0), u32::MAX);
    }

    #[test]
    fn plain_transcript_opens_the_assistant_turn() {
        let t = plain_transcript(&[
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ]);
        assert_eq!(t, "system: Be brief.\n\nuser: Hi\n\nassistant:");
    }
}
