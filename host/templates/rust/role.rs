//! `{{name}}`: a Conclave role (`wit/conclave.wit`, world `role`). Build:
//! `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/{{crate}}.wasm`. Test: `cargo test`. Grant
//! it `llm` in the team spec (`grants = ["llm"]`).

// The Conclave SDK's helpers, vendored as source: plain Rust with no host
// calls, so `cargo test` runs them natively. Not every plugin uses them all.
#[allow(dead_code)]
mod answer;
#[allow(dead_code)]
mod config;
#[allow(dead_code)]
mod prompt;
#[allow(dead_code)]
mod vote;

wit_bindgen::generate!({ path: "wit", world: "role", generate_all });

use conclave::plugin0_1_0::llm::{chat, ChatRequest, Route};
// The world's own types (`Descriptor`, `Task`, `Outcome`, `PluginError`) are
// in scope already; these are the rest it needs.
use conclave::plugin0_1_0::types::{AnswerKind, Candidate, Capability, Message, PluginKind};

struct {{Ident}};

impl Guest for {{Ident}} {
    fn describe() -> Descriptor {
        Descriptor {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Role,
            capabilities: vec![Capability::Llm, Capability::Log],
            description: "{{description}}".into(),
        }
    }

    fn run(task: Task) -> Result<Outcome, PluginError> {
        // `config = { temperature = 0.7, max_tokens = 256, tags = [...] }`.
        let sampling: config::Sampling =
            config::parse(&task.config).map_err(PluginError::InvalidConfig)?;
        let reply =
            chat(&request(&task, &sampling)).map_err(|e| PluginError::Model(format!("{e:?}")))?;
        Ok(Outcome::Candidate(candidate(&task, reply.text)))
    }
}

/// The helpers' name for a WIT answer kind.
fn kind(k: AnswerKind) -> answer::Kind {
    match k {
        AnswerKind::Number => answer::Kind::Number,
        AnswerKind::Choice => answer::Kind::Choice,
        AnswerKind::Text => answer::Kind::Text,
    }
}

/// The model request: solve the task (again, in the light of any feedback
/// from a previous round) and end with an `Answer:` line.
fn request(task: &Task, sampling: &config::Sampling) -> ChatRequest {
    let pairs = prompt::revise(&task.prompt, kind(task.answer_kind), &task.feedback);
    ChatRequest {
        messages: pairs
            .into_iter()
            .map(|(role, content)| Message { role, content })
            .collect(),
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        stop: Vec::new(),
        route: Route {
            tags: sampling.tags.clone(),
            node: sampling.node.clone(),
        },
    }
}

/// This replica's candidate from the model's reply: the answer of the
/// task's kind extracted from the text (empty when there is none). The host
/// fills in the node.
fn candidate(task: &Task, text: String) -> Candidate {
    Candidate {
        replica: task.replica,
        node: String::new(),
        answer: answer::extract(&text, kind(task.answer_kind)).unwrap_or_default(),
        text,
        confidence: None,
        ranking: Vec::new(),
    }
}

export!({{Ident}});

#[cfg(test)]
mod tests {
    //! The request and the candidate, natively (the model call itself needs
    //! the host: try it in a team on sim nodes).
    use super::*;

    fn task() -> Task {
        Task {
            id: "t".into(),
            run_id: "r".into(),
            prompt: "What is 2 + 2?".into(),
            answer_kind: AnswerKind::Number,
            round: 0,
            replica: 3,
            replicas: 5,
            feedback: Vec::new(),
            config: "{}".into(),
            checker: None,
        }
    }

    #[test]
    fn the_request_asks_for_an_answer_line() {
        let r = request(&task(), &config::Sampling::default());
        assert_eq!(r.messages.len(), 2);
        assert!(r.messages[0].content.contains("Answer: <number>"));
        assert_eq!(r.messages[1].content, "What is 2 + 2?");
    }

    #[test]
    fn the_candidate_carries_the_extracted_answer() {
        let c = candidate(&task(), "2 and 2 make 4.\nAnswer: 4".into());
        assert_eq!((c.answer.as_str(), c.replica), ("4", 3));
        assert_eq!(candidate(&task(), "no idea".into()).answer, "");
    }
}
