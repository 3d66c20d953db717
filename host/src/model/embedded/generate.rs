//! Generation on a loaded model: one shared prefill, the KV cache copied to
//! every sample's sequence, then all samples decoded together, one batch
//! per step, each with its own seeded sampler, until end of generation, a
//! stop string or the token budget; cancelled between steps when the call
//! is dropped.

use super::*;

/// Sets the flag when the `chat` future is dropped (or finishes), so the
/// generation loop stops at its next decode step.
pub(super) struct CancelOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sampling settings of one call: the request's, else the node's.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sampling {
    samples: u32,
    max_tokens: u32,
    temperature: f32,
    top_k: i32,
    top_p: f32,
    seed: u64,
}

impl Inner {
    pub(super) fn sampling(&self, request: &ChatRequest) -> Sampling {
        Sampling {
            samples: request.samples(),
            max_tokens: request.max_tokens.unwrap_or(self.config.max_tokens),
            temperature: request.temperature.unwrap_or(self.config.temperature),
            top_k: self.config.top_k,
            top_p: request.top_p.unwrap_or(self.config.top_p),
            seed: request.seed.unwrap_or(self.config.seed),
        }
    }

    /// The prompt text for `messages`: the model's chat template, else (no
    /// template, or one llama.cpp cannot apply) a plain transcript.
    pub(super) fn render(&self, node: &str, messages: &[Message]) -> Result<String, ModelError> {
        if let Some(template) = &self.template {
            let chat = messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ModelError::Protocol {
                    node: node.into(),
                    reason: format!("a message cannot be passed to the model: {e}"),
                })?;
            match self.model.apply_chat_template(template, &chat, true) {
                Ok(prompt) => return Ok(prompt),
                Err(e) => {
                    if !self.warned_template.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            node,
                            "llama.cpp cannot apply the model's chat template ({e}); using a plain `role: content` transcript"
                        );
                    }
                }
            }
        }
        Ok(plain_transcript(messages))
    }

    /// One call, start to end, on a blocking thread.
    pub(super) fn generate(
        &self,
        node: &str,
        request: &ChatRequest,
        cancel: &AtomicBool,
    ) -> Result<ChatResponse, ModelError> {
        let protocol = |reason: String| ModelError::Protocol {
            node: node.into(),
            reason,
        };
        let failed = |what: &str, e: &dyn std::fmt::Display| ModelError::Unavailable {
            node: node.into(),
            reason: format!("llama.cpp {what} failed: {e}"),
        };
        let cancelled = || ModelError::Unavailable {
            node: node.into(),
            reason: "call cancelled".into(),
        };

        let sampling = self.sampling(request);
        if sampling.samples > MAX_SAMPLES {
            return Err(protocol(format!(
                "{} samples asked for; one call can draw at most {MAX_SAMPLES}",
                sampling.samples
            )));
        }
        let n = sampling.samples as usize;

        let prompt_text = self.render(node, &request.messages)?;
        let prompt = self.tokenize(&prompt_text);
        let prompt_len = prompt.len() as u32;
        if prompt.is_empty() {
            return Err(protocol("the prompt is empty".into()));
        }
        let budget = answer_budget(prompt_len, sampling.max_tokens, self.config.context)
            .ok_or_else(|| {
                protocol(format!(
                    "the prompt is {prompt_len} tokens, too long for this node's context of {} tokens",
                    self.config.context
                ))
            })?;
        if budget == 0 {
            let empty = Completion {
                text: String::new(),
                completion_tokens: 0,
                finish_reason: Some("length".into()),
            };
            return Ok(ChatResponse {
                choices: vec![empty; n],
                prompt_tokens: prompt_len,
                node: node.into(),
                simulated: false,
            });
        }

        let started = Instant::now();
        let n_ctx = kv_cells(prompt_len, sampling.samples, budget);
        let batch_size = PREFILL_BATCH.max(n);
        let mut ctx = self
            .context(n_ctx, sampling.samples, batch_size as u32)
            .map_err(|e| failed("context creation", &e))?;

        // Prefill once, on sequence 0; only the last prompt token's logits
        // are needed.
        let mut batch = LlamaBatch::new(batch_size, 1);
        let mut last_logits = 0;
        for (chunk_no, chunk) in prompt.chunks(PREFILL_BATCH).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            batch.clear();
            let first = chunk_no * PREFILL_BATCH;
            for (i, &token) in chunk.iter().enumerate() {
                let pos = (first + i) as i32;
                let is_last = first + i + 1 == prompt.len();
                batch
                    .add(token, pos, &[0], is_last)
                    .map_err(|e| failed("batch", &e))?;
            }
            ctx.decode(&mut batch).map_err(|e| failed("prefill", &e))?;
            last_logits = batch.n_tokens() - 1;
        }
        let prefilled = started.elapsed();

        // Every other sample starts from the same prompt: share its cells
        // (with a unified KV cache this adds sequence ids, it copies nothing).
        for seq in 1..n as i32 {
            ctx.copy_kv_cache_seq(0, seq, None, None)
                .map_err(|e| failed("KV cache copy", &e))?;
        }

        let vocab = self.model.vocab();
        let stops: Vec<&[u8]> = request
            .stop
            .iter()
            .map(|s| s.as_bytes())
            .filter(|s| !s.is_empty())
            .collect();
        let mut samples: Vec<SampleState> = (0..n)
            .map(|i| SampleState::new(sampler(&sampling, i as u32), last_logits))
            .collect();
        let mut piece = Vec::new();
        let (mut sampling_time, mut decode_time) = (Duration::ZERO, Duration::ZERO);
        let mut steps = 0u32;
        loop {
            let sampling_started = Instant::now();
            // Sample the next token of every running sample, from the logits
            // of the last decode (the prompt's for the first token).
            for s in samples.iter_mut().filter(|s| s.finish.is_none()) {
                let token = s.sampler.sample(&ctx, s.logits_at);
                if vocab.is_eog(token) {
                    s.finish = Some("stop");
                    continue;
                }
                piece.clear();
                vocab.token_to_piece_into(token, &mut piece, false, None);
                s.push(token, &piece, &stops, budget);
            }
            sampling_time += sampling_started.elapsed();
            if samples.iter().all(|s| s.finish.is_some()) {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            // One batch for all running samples: one token each.
            batch.clear();
            for (seq, s) in samples
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| s.finish.is_none())
            {
                let pos = (prompt_len + s.tokens - 1) as i32;
                s.logits_at = batch.n_tokens();
                batch
                    .add(s.last, pos, &[seq as i32], true)
                    .map_err(|e| failed("batch", &e))?;
            }
            let decode_started = Instant::now();
            ctx.decode(&mut batch).map_err(|e| failed("decode", &e))?;
            decode_time += decode_started.elapsed();
            steps += 1;
        }

        let choices: Vec<Completion> = samples
            .into_iter()
            .map(|s| Completion {
                text: text_of(&s.bytes),
                completion_tokens: s.tokens,
                finish_reason: s.finish.map(str::to_string),
            })
            .collect();
        let generated: u32 = choices.iter().map(|c| c.completion_tokens).sum();
        let elapsed = started.elapsed();
        tracing::debug!(
            node,
            prompt_tokens = prompt_len,
            samples = n,
            generated,
            steps,
            prefill_ms = prefilled.as_millis() as u64,
            decode_ms = decode_time.as_millis() as u64,
            sampling_ms = sampling_time.as_millis() as u64,
            total_ms = elapsed.as_millis() as u64,
            "embedded call done"
        );
        Ok(ChatResponse {
            choices,
            prompt_tokens: prompt_len,
            node: node.into(),
            simulated: false,
        })
    }

    /// The prompt's tokens, with the model's BOS when it wants one (and
    /// not twice when the template already wrote it).
    pub(super) fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
        if tokens.len() >= 2 && tokens[0] == vocab.bos() && tokens[1] == vocab.bos() {
            tokens.remove(0);
        }
        tokens
    }

    /// A fresh context for one call: `n_ctx` cells in one KV cache shared
    /// by `samples` sequences.
    pub(super) fn context(
        &self,
        n_ctx: u32,
        samples: u32,
        batch: u32,
    ) -> Result<LlamaContext<'_>, llama_cpp_2::LlamaContextLoadError> {
        let backend = backend().expect("the backend started when the model loaded");
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch)
            .with_n_ubatch(batch.min(PREFILL_BATCH as u32))
            .with_n_seq_max(samples)
            .with_kv_unified(true)
            .with_n_threads(self.threads as i32)
            .with_n_threads_batch(self.threads as i32);
        let _one_at_a_time = self.new_context.lock().unwrap_or_else(|e| e.into_inner());
        self.model.new_context(backend, params)
    }
}

/// Where one sample of a call stands.
pub(super) struct SampleState {
    pub(super) sampler: LlamaSampler,
    /// The text so far, as bytes: tokens may end inside a UTF-8 character.
    pub(super) bytes: Vec<u8>,
    /// Tokens generated (end-of-generation tokens are not counted).
    pub(super) tokens: u32,
    /// The token to feed at the next decode.
    pub(super) last: LlamaToken,
    /// Index in the last batch of the logits this sample samples from.
    pub(super) logits_at: i32,
    pub(super) finish: Option<&'static str>,
}

impl SampleState {
    pub(super) fn new(sampler: LlamaSampler, logits_at: i32) -> Self {
        SampleState {
            sampler,
            bytes: Vec::new(),
            tokens: 0,
            last: LlamaToken(0),
            logits_at,
            finish: None,
        }
    }

    /// Takes a generated (non end-of-generation) token whose text is
    /// `piece`: stops at a stop string (cutting it and what follows) or at
    /// `max_tokens`.
    pub(super) fn push(
        &mut self,
        token: LlamaToken,
        piece: &[u8],
        stops: &[&[u8]],
        max_tokens: u32,
    ) {
        self.tokens += 1;
        self.last = token;
        let before = self.bytes.len();
        self.bytes.extend_from_slice(piece);
        if let Some(at) = find_stop(&self.bytes, before, stops) {
            self.bytes.truncate(at);
            self.finish = Some("stop");
        } else if self.tokens >= max_tokens {
            self.finish = Some("length");
        }
    }
}

/// The sampler chain of sample `index`: top-k, top-p, temperature, then a
/// draw seeded from the call's seed plus `index` (greedy at temperature 0).
pub(super) fn sampler(s: &Sampling, index: u32) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::with_capacity(4);
    if s.top_k > 0 {
        chain.push(LlamaSampler::top_k(s.top_k));
    }
    if s.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(s.top_p, 1));
    }
    chain.push(LlamaSampler::temp(s.temperature));
    chain.push(LlamaSampler::dist(sample_seed(s.seed, index)));
    LlamaSampler::chain_simple(chain)
}

/// The 32-bit seed of sample `index` of a call seeded with `seed`. llama.cpp
/// reads `u32::MAX` as "pick a random seed", so that value is never given.
pub(super) fn sample_seed(seed: u64, index: u32) -> u32 {
    let s = seed.wrapping_add(u64::from(index));
    let folded = (s ^ (s >> 32)) as u32;
    if folded == u32::MAX {
        u32::MAX - 1
    } else {
        folded
    }
}

/// How many tokens each sample may generate: `max_tokens`, cut so that
/// prompt plus answer fit in `context`. `None` when the prompt alone does
/// not leave room for a single token.
pub(super) fn answer_budget(prompt_tokens: u32, max_tokens: u32, context: u32) -> Option<u32> {
    let room = context.checked_sub(prompt_tokens).filter(|r| *r > 0)?;
    Some(max_tokens.min(room))
}

/// KV cells one call needs: the shared prompt once, then each sample's
/// answer (plus one spare cell for the token fed after the last one).
pub(super) fn kv_cells(prompt_tokens: u32, samples: u32, budget: u32) -> u32 {
    prompt_tokens + samples * budget + 1
}

/// Where the first stop string in `text` starts, looking only at matches
/// that end after `new_from` (the bytes before were checked already).
pub(super) fn find_stop(text: &[u8], new_from: usize, stops: &[&[u8]]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| {
            let from = new_from.saturating_sub(stop.len().saturating_sub(1));
            text.get(from..)?
                .windows(stop.len())
                .position(|w| w == *stop)
                .map(|at| from + at)
        })
        .min()
}

/// Text of generated bytes: an incomplete UTF-8 character at the end (a
/// sample cut mid-character) is dropped; other invalid bytes become U+FFFD.
pub(super) fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The prompt for a model without a chat template: one `role: content`
/// paragraph per message, then the assistant's turn opened.
pub(super) fn plain_transcript(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&m.role);
        out.push_str(": ");
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    out.push_str("assistant:");
    out
}
