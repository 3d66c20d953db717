//! The `openai` backend: any server that speaks the OpenAI chat completions
//! API (`POST {base_url}/chat/completions`): vLLM, llama.cpp's server,
//! Ollama, LM Studio, OpenAI and the like.
//!
//! Every way such a server can misbehave ends in a typed [`ModelError`]:
//! 5xx and connection failures are `Unavailable`, 429 (and 503 with
//! `Retry-After`) are `RateLimited` with the delay, a missed deadline is
//! `Timeout`, and malformed JSON, a reply without `choices` or a body over
//! the size cap are `Protocol`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::node::NodeError;
use super::{estimate_tokens, Backend, ChatRequest, ChatResponse, Completion, ModelError};

/// An openai node's settings (the `[[node]]` table with `backend = "openai"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name to ask for.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Default 5 s.
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole request, body included. Default 120 s.
    #[serde(default = "default_request", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest response body accepted. Default 8 MiB.
    #[serde(default = "default_body")]
    pub max_response_bytes: usize,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_request() -> Duration {
    Duration::from_secs(120)
}
fn default_body() -> usize {
    8 << 20
}

/// A node reached over HTTP.
pub struct OpenAiBackend {
    name: String,
    config: OpenAiConfig,
    url: String,
    client: reqwest::Client,
}

impl OpenAiBackend {
    /// Checks the settings (URL, key variable, headers) and builds the client.
    pub fn new(name: &str, config: OpenAiConfig) -> Result<Self, NodeError> {
        let base = reqwest::Url::parse(&config.base_url).map_err(|e| {
            NodeError::new(
                name,
                "base_url",
                format!("{:?} is not a URL: {e}", config.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(NodeError::new(
                name,
                "base_url",
                format!("scheme {:?} is not http or https", base.scheme()),
            ));
        }
        if config.model.trim().is_empty() {
            return Err(NodeError::new(name, "model", "must not be empty"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(var) = &config.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                NodeError::new(
                    name,
                    "api_key_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            let value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    NodeError::new(
                        name,
                        "api_key_env",
                        format!("{var} holds characters not allowed in a header"),
                    )
                })?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        for (k, v) in &config.headers {
            let k2 = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                NodeError::new(name, "headers", format!("{k:?} is not a header name"))
            })?;
            let v2 = reqwest::header::HeaderValue::from_str(v).map_err(|_| {
                NodeError::new(
                    name,
                    "headers",
                    format!("the value of {k:?} is not a header value"),
                )
            })?;
            headers.insert(k2, v2);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| {
                NodeError::new(
                    name,
                    "base_url",
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(OpenAiBackend {
            name: name.into(),
            config,
            url,
            client,
        })
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let c = &self.config;
        let mut body = json!({
            "model": c.model,
            "messages": request.messages,
            "stream": stream,
        });
        let o = body.as_object_mut().expect("an object");
        if let Some(v) = request.max_tokens.or(c.max_tokens) {
            o.insert("max_tokens".into(), json!(v));
        }
        if let Some(v) = request.temperature.or(c.temperature) {
            o.insert("temperature".into(), json!(v));
        }
        if let Some(v) = request.top_p.or(c.top_p) {
            o.insert("top_p".into(), json!(v));
        }
        let stop = if request.stop.is_empty() {
            &c.stop
        } else {
            &request.stop
        };
        if !stop.is_empty() {
            o.insert("stop".into(), json!(stop));
        }
        if let Some(v) = request.seed.or(c.seed) {
            o.insert("seed".into(), json!(v));
        }
        if request.samples() > 1 {
            o.insert("n".into(), json!(request.samples()));
        }
        body
    }

    fn error_for_status(
        &self,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
    ) -> ModelError {
        let node = self.name.clone();
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
        match status.as_u16() {
            429 => ModelError::RateLimited { node, retry_after },
            503 if retry_after.is_some() => ModelError::RateLimited { node, retry_after },
            s if s >= 500 => ModelError::Unavailable {
                node,
                reason: format!("HTTP {status}"),
            },
            _ => ModelError::Protocol {
                node,
                reason: format!("HTTP {status}"),
            },
        }
    }

    fn transport(&self, e: reqwest::Error) -> ModelError {
        let node = self.name.clone();
        if e.is_timeout() {
            ModelError::Timeout {
                node,
                after: self.config.request_timeout,
            }
        } else if e.is_connect() {
            ModelError::Unavailable {
                node,
                reason: format!("cannot connect: {}", root_cause(&e)),
            }
        } else {
            ModelError::Unavailable {
                node,
                reason: format!("connection failed: {}", root_cause(&e)),
            }
        }
    }

    /// Streams the deltas of one sample as the server sends them (`stream:
    /// true`, server-sent events), ending at `[DONE]`.
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
    ) -> Result<impl futures::Stream<Item = Result<String, ModelError>> + Send + use<>, ModelError>
    {
        let resp = self
            .client
            .post(&self.url)
            .json(&self.body(request, true))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(self.error_for_status(resp.status(), resp.headers()));
        }
        let node = self.name.clone();
        let node2 = self.name.clone();
        let mut buf = String::new();
        let stream = resp
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| ModelError::Unavailable {
                    node: node.clone(),
                    reason: format!("stream broke: {e}"),
                })
            })
            .map(move |chunk| {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => return vec![Err(e)],
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                let mut out = Vec::new();
                while let Some(pos) = buf.find('\n') {
                    let line: String = buf.drain(..=pos).collect();
                    let line = line.trim();
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let data = data.trim();
                    if data == "[DONE]" {
                        break;
                    }
                    match serde_json::from_str::<Value>(data) {
                        Ok(v) => {
                            if let Some(d) = v
                                .pointer("/choices/0/delta/content")
                                .and_then(Value::as_str)
                            {
                                out.push(Ok(d.to_string()));
                            }
                        }
                        Err(e) => out.push(Err(ModelError::Protocol {
                            node: node2.clone(),
                            reason: format!("bad stream event: {e}"),
                        })),
                    }
                }
                out
            })
            .flat_map(futures::stream::iter)
            .filter(|r| futures::future::ready(!matches!(r, Ok(s) if s.is_empty())));
        Ok(stream)
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let resp = self
            .client
            .post(&self.url)
            .json(&self.body(request, false))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(self.error_for_status(resp.status(), resp.headers()));
        }
        let cap = self.config.max_response_bytes;
        if resp.content_length().is_some_and(|n| n as usize > cap) {
            return Err(ModelError::Protocol {
                node: self.name.clone(),
                reason: format!("response body larger than {cap} bytes"),
            });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if body.len() + chunk.len() > cap {
                return Err(ModelError::Protocol {
                    node: self.name.clone(),
                    reason: format!("response body larger than {cap} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let protocol = |reason: String| ModelError::Protocol {
            node: self.name.clone(),
            reason,
        };
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("reply is not JSON: {e}")))?;
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("reply has no `choices`".into()))?;
        if choices.is_empty() {
            return Err(protocol("reply has an empty `choices`".into()));
        }
        let mut out = Vec::with_capacity(choices.len());
        for c in choices {
            let text = c
                .pointer("/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| protocol("a choice has no `message.content`".into()))?
                .to_string();
            out.push(Completion {
                completion_tokens: estimate_tokens(&text),
                finish_reason: c
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .map(String::from),
                text,
            });
        }
        let usage = v.get("usage");
        let prompt_tokens = usage
            .and_then(|u| u.get("prompt_tokens"))
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .unwrap_or_else(|| {
                request
                    .messages
                    .iter()
                    .map(|m| estimate_tokens(&m.content))
                    .sum()
            });
        if let Some(total) = usage
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
        {
            // Spread the server's count over the samples in proportion.
            let est: u32 = out.iter().map(|c| c.completion_tokens).sum::<u32>().max(1);
            let mut left = total as u32;
            let n = out.len();
            for (i, c) in out.iter_mut().enumerate() {
                c.completion_tokens = if i + 1 == n {
                    left
                } else {
                    let share = (total * c.completion_tokens as u64 / est as u64) as u32;
                    left = left.saturating_sub(share);
                    share
                };
            }
        }
        Ok(ChatResponse {
            choices: out,
            prompt_tokens,
            node: self.name.clone(),
            simulated: false,
        })
    }
}
