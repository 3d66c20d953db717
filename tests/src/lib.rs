//! Helpers shared by the end-to-end tests: where the built components are,
//! a runtime with a test cache, and small constructors for tasks and ballots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave::plugin::{AnswerKind, Ballot, Candidate, Task, Verdict};
use conclave::{PluginRuntime, RuntimeConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn built(dir: &str, name: &str) -> PathBuf {
    let p = workspace()
        .join("target")
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

/// The directory of built-in plugins.
pub fn plugin_dir() -> PathBuf {
    built("plugins", "majority").parent().unwrap().to_path_buf()
}

/// A built-in plugin's component file.
pub fn plugin(name: &str) -> PathBuf {
    built("plugins", name)
}

/// A test fixture's component file.
pub fn fixture(name: &str) -> PathBuf {
    built("fixtures", name)
}

/// A runtime whose compilation cache lives under `target/`, so repeated test
/// runs do not recompile the same components.
pub fn runtime() -> Arc<PluginRuntime> {
    runtime_with(RuntimeConfig::default())
}

/// A runtime with `config`, cache under `target/` unless disabled.
pub fn runtime_with(mut config: RuntimeConfig) -> Arc<PluginRuntime> {
    if config.cache_dir.is_some() {
        config.cache_dir = Some(workspace().join("target").join("test-component-cache"));
    }
    Arc::new(PluginRuntime::new(config).expect("runtime starts"))
}

/// A numeric task with `config` as the plugin config.
pub fn task(config: &str) -> Task {
    Task {
        id: "t".into(),
        run_id: "run-test".into(),
        prompt: "What is 6 * 7?".into(),
        answer_kind: AnswerKind::Number,
        round: 0,
        replica: 0,
        replicas: 5,
        feedback: vec![],
        config: config.into(),
        checker: None,
    }
}

/// A candidate answering `answer`, from replica `replica`.
pub fn candidate(answer: &str, replica: u32) -> Candidate {
    Candidate {
        replica,
        node: format!("node-{replica}"),
        answer: answer.into(),
        text: format!("Some reasoning.\nAnswer: {answer}"),
        confidence: None,
        ranking: vec![],
    }
}

/// A ballot for `answer` with no verdicts.
pub fn ballot(answer: &str) -> Ballot {
    Ballot {
        candidate: candidate(answer, 0),
        verdicts: vec![],
    }
}

/// A ballot for `answer` with one verdict.
pub fn judged(answer: &str, pass: bool, score: f64) -> Ballot {
    Ballot {
        candidate: candidate(answer, 0),
        verdicts: vec![Verdict {
            verifier: "v".into(),
            pass,
            score,
            reason: String::new(),
        }],
    }
}

/// A model stand-in for plugin tests: answers every chat with a fixed text
/// after an optional delay, counts calls, and remembers the last prompt.
/// It is not a model node (those come with the model layer); it only feeds
/// the `llm` import so roles and judges can be exercised.
pub struct ScriptedServices {
    pub reply: String,
    pub delay: std::time::Duration,
    pub calls: std::sync::atomic::AtomicU32,
    pub last_prompt: std::sync::Mutex<String>,
    pub board: Vec<(String, String)>,
}

impl ScriptedServices {
    /// Answers `reply` at once.
    pub fn new(reply: &str) -> Arc<Self> {
        Self::with(reply, std::time::Duration::ZERO, vec![])
    }

    /// Answers `reply` after `delay`, with `board` as the blackboard.
    pub fn with(
        reply: &str,
        delay: std::time::Duration,
        board: Vec<(String, String)>,
    ) -> Arc<Self> {
        Arc::new(ScriptedServices {
            reply: reply.into(),
            delay,
            calls: Default::default(),
            last_prompt: Default::default(),
            board,
        })
    }
}

#[async_trait::async_trait]
impl conclave::HostServices for ScriptedServices {
    async fn chat(
        &self,
        _call: &conclave::plugin::CallInfo,
        request: conclave::plugin::bindings::llm::ChatRequest,
    ) -> Result<
        conclave::plugin::bindings::llm::ChatResponse,
        conclave::plugin::bindings::llm::LlmError,
    > {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.last_prompt.lock().unwrap() = request
            .messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n");
        tokio::time::sleep(self.delay).await;
        Ok(conclave::plugin::bindings::llm::ChatResponse {
            text: self.reply.clone(),
            node: "scripted".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
        })
    }

    fn read(&self, _call: &conclave::plugin::CallInfo, id: &str) -> Option<String> {
        self.board
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    }

    fn keys(&self, _call: &conclave::plugin::CallInfo) -> Vec<String> {
        self.board.iter().map(|(k, _)| k.clone()).collect()
    }
}

pub mod http;

/// `component` with a custom section named `tag` appended: the same
/// plugin, behaving the same, from a file with another SHA-256 (what a
/// rebuild of an unchanged plugin looks like to the host).
pub fn restamped(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(tag.len(), &mut payload);
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"restamped by a test");
    let mut out = component.to_vec();
    out.push(0); // a custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Writes `bytes` to `path` the way a deploy should: a temporary file in
/// the same folder, then a rename, so a reader never sees half a file.
pub fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` every 20 ms until it gives a value, for at most
/// `within`; panics with `what` if it never does.
pub async fn eventually<T>(
    within: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let until = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "gave up after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Records every event of a run, for assertions on what happened when.
#[derive(Clone, Default)]
pub struct Recorder(Arc<std::sync::Mutex<Vec<conclave::team::events::Event>>>);

impl Recorder {
    /// The events so far, in order.
    pub fn events(&self) -> Vec<conclave::team::events::Event> {
        self.0.lock().unwrap().clone()
    }

    /// An observer that records into this.
    pub fn observer(&self) -> Arc<dyn conclave::team::events::Observer> {
        let log = self.0.clone();
        Arc::new(move |_: &str, e: &conclave::team::events::Event| {
            log.lock().unwrap().push(e.clone())
        })
    }
}

/// A team spec file written into a temporary folder (kept alive by the
/// returned guard), loaded and prepared with the built-in plugins.
pub async fn prepare_team(text: &str) -> (tempfile::TempDir, conclave::team::job::PreparedTeam) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, text).unwrap();
    (dir, prepare_file(&path).await)
}

/// A team spec file loaded and prepared with the built-in plugins.
pub async fn prepare_file(path: &Path) -> conclave::team::job::PreparedTeam {
    let spec = conclave::spec::team::TeamSpec::load(path).unwrap();
    conclave::team::job::PreparedTeam::prepare(spec, runtime(), &plugin_dir())
        .await
        .unwrap()
}

/// Runs a job to its end, recording its events.
pub async fn run_job(
    team: &conclave::team::job::PreparedTeam,
    run: &str,
    question: &str,
    gold: Option<&str>,
) -> (
    conclave::team::job::JobResult,
    Vec<conclave::team::events::Event>,
) {
    let rec = Recorder::default();
    let r = team
        .run(
            run,
            question,
            gold,
            rec.observer(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    (r, rec.events())
}

/// The `conclave` binary of this checkout, built once per test run (a
/// no-op when it is fresh).
pub fn conclave_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-q", "-p", "conclave", "--bin", "conclave"])
                .current_dir(workspace())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the conclave binary failed");
            workspace().join("target").join("debug").join("conclave")
        })
        .clone()
}

/// `component` with `extra` more linear memories of `pages` 64 KiB pages
/// each added to its first core module: a hostile shape that no compiler
/// here emits but any author can write (a component's memories are many).
pub fn with_extra_memories(component: &[u8], extra: u32, pages: u64) -> Vec<u8> {
    use wasm_encoder::{Component, MemorySection, MemoryType, Module, ModuleSection, RawSection};
    use wasmparser::{Chunk, Parser, Payload};

    /// A top-level section: its id and byte range.
    enum Top {
        Section(u8, std::ops::Range<usize>),
        Module(std::ops::Range<usize>),
    }
    let us = |r: std::ops::Range<u64>| r.start as usize..r.end as usize;
    let mut tops = Vec::new();
    let mut parser = Parser::new(0);
    let mut at = 0;
    loop {
        let Chunk::Parsed { payload, consumed } = parser.parse(&component[at..], true).unwrap()
        else {
            unreachable!("all bytes are given")
        };
        at += consumed;
        match payload {
            Payload::End(_) => break,
            Payload::Version { .. } => {}
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                // The parent parser resumes after the nested module.
                at = unchecked_range.end as usize;
                tops.push(Top::Module(us(unchecked_range)));
            }
            Payload::ComponentSection {
                unchecked_range, ..
            } => {
                at = unchecked_range.end as usize;
                tops.push(Top::Section(4, us(unchecked_range)));
            }
            other => {
                let (id, range) = other.as_section().expect("a section");
                tops.push(Top::Section(id, us(range)));
            }
        }
    }
    let grow = |core: &[u8]| {
        let mut module = Module::new();
        for payload in Parser::new(0).parse_all(core) {
            let payload = payload.unwrap();
            if let Payload::MemorySection(reader) = &payload {
                let mut memories = MemorySection::new();
                for m in reader.clone() {
                    let m = m.unwrap();
                    memories.memory(MemoryType {
                        minimum: m.initial,
                        maximum: m.maximum,
                        memory64: m.memory64,
                        shared: m.shared,
                        page_size_log2: m.page_size_log2,
                    });
                }
                for _ in 0..extra {
                    memories.memory(MemoryType {
                        minimum: pages,
                        maximum: None,
                        memory64: false,
                        shared: false,
                        page_size_log2: None,
                    });
                }
                module.section(&memories);
            } else if let Some((id, r)) = payload.as_section() {
                module.section(&RawSection {
                    id,
                    data: &core[us(r)],
                });
            }
        }
        module
    };
    let mut out = Component::new();
    let mut first = true;
    for top in tops {
        match top {
            Top::Module(range) if first => {
                first = false;
                out.section(&ModuleSection(&grow(&component[range])));
            }
            Top::Module(range) => {
                out.section(&RawSection {
                    id: 1,
                    data: &component[range],
                });
            }
            Top::Section(id, range) => {
                out.section(&RawSection {
                    id,
                    data: &component[range],
                });
            }
        }
    }
    out.finish()
}
