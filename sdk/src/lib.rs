//! `conclave-sdk`: what a Conclave plugin author depends on.
//!
//! A plugin is a WebAssembly component for one of the worlds of the
//! `conclave:plugin` WIT package (`wit/conclave.wit`). Enable the crate feature
//! of that world (`voter`, `verifier` or `role`; exactly one), implement the
//! world's trait, and export it with the world's macro:
//!
//! ```ignore
//! use conclave_sdk::voter::{Ballot, Decision, Descriptor, PluginError, Task, Voter};
//!
//! struct First;
//! impl Voter for First {
//!     fn describe() -> Descriptor { /* ... */ }
//!     fn tally(task: Task, ballots: Vec<Ballot>) -> Result<Decision, PluginError> { /* ... */ }
//! }
//! conclave_sdk::voter::export_voter!(First);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the host loads.
//!
//! The helpers ([`answer`], [`prompt`], [`config`]) are plain Rust and work
//! natively as well, which is how they are tested.

pub mod answer;
pub mod config;
pub mod prompt;
pub mod vote;

#[doc(hidden)]
pub use serde;
#[doc(hidden)]
pub use serde_json;

/// Bindings and trait for the `voter` world.
#[cfg(feature = "voter")]
pub mod voter {
    wit_bindgen::generate!({
        path: "../wit",
        world: "voter",
        pub_export_macro: true,
        export_macro_name: "export_voter",
        default_bindings_module: "conclave_sdk::voter",
        additional_derives: [PartialEq, Clone],
    });
    pub use self::conclave::plugin::log::{write as log, Level};
    pub use self::conclave::plugin::types::*;
    /// The trait a voter implements.
    pub use self::Guest as Voter;
    crate::kind_conversions!();

    /// The decision for `counts` (best first, as [`crate::vote::tally`]
    /// returns them) over `total` counted ballots: the best answer, with the
    /// second as runner-up; no consensus, saying `empty()`, when nothing
    /// was counted. `support` is the winner's number of votes.
    pub fn decide(
        counts: &[crate::vote::Count],
        total: u32,
        empty: impl FnOnce() -> String,
    ) -> Decision {
        match counts.first() {
            None => Decision::NoConsensus(empty()),
            Some(best) => Decision::Decided(Decided {
                answer: best.answer.clone(),
                support: best.votes,
                total,
                runner_up: counts.get(1).map(|c| c.answer.clone()),
            }),
        }
    }
}

/// Bindings and trait for the `verifier` world.
#[cfg(feature = "verifier")]
pub mod verifier {
    wit_bindgen::generate!({
        path: "../wit",
        world: "verifier",
        pub_export_macro: true,
        export_macro_name: "export_verifier",
        default_bindings_module: "conclave_sdk::verifier",
        additional_derives: [PartialEq, Clone],
    });
    pub use self::conclave::plugin::llm::{self, chat, ChatRequest, ChatResponse, LlmError, Route};
    pub use self::conclave::plugin::log::{write as log, Level};
    pub use self::conclave::plugin::types::*;
    /// The trait a verifier implements.
    pub use self::Guest as Verifier;
    crate::kind_conversions!();
    crate::message_conversions!();
}

/// Bindings and trait for the `role` world.
#[cfg(feature = "role")]
pub mod role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "role",
        pub_export_macro: true,
        export_macro_name: "export_role",
        default_bindings_module: "conclave_sdk::role",
        additional_derives: [PartialEq, Clone],
    });
    pub use self::conclave::plugin::blackboard;
    pub use self::conclave::plugin::bus::{self, Envelope};
    pub use self::conclave::plugin::llm::{self, chat, ChatRequest, ChatResponse, LlmError, Route};
    pub use self::conclave::plugin::log::{write as log, Level};
    pub use self::conclave::plugin::types::*;
    /// The trait a role implements.
    pub use self::Guest as Role;
    crate::kind_conversions!();
    crate::message_conversions!();

    /// Calls the model and turns its reply into this replica's candidate,
    /// with the answer of the task's kind extracted from the text (empty
    /// when there is none) or, failing that, from `fallback`.
    pub fn ask(
        task: &Task,
        request: &ChatRequest,
        fallback: Option<&str>,
    ) -> Result<Candidate, PluginError> {
        let reply = chat(request).map_err(|e| PluginError::Model(format!("{e:?}")))?;
        let kind = task.kind();
        let answer = crate::answer::extract(&reply.text, kind)
            .or_else(|| fallback.and_then(|f| crate::answer::extract(f, kind)))
            .unwrap_or_default();
        Ok(Candidate {
            replica: task.replica,
            node: reply.node,
            answer,
            text: reply.text,
            confidence: None,
            ranking: Vec::new(),
        })
    }
}

/// Conversions between a world's `AnswerKind` and [`answer::Kind`].
#[doc(hidden)]
#[macro_export]
macro_rules! kind_conversions {
    () => {
        impl From<AnswerKind> for $crate::answer::Kind {
            fn from(k: AnswerKind) -> Self {
                match k {
                    AnswerKind::Number => $crate::answer::Kind::Number,
                    AnswerKind::Choice => $crate::answer::Kind::Choice,
                    AnswerKind::Text => $crate::answer::Kind::Text,
                }
            }
        }
        impl Task {
            /// The task's answer kind as the helpers' [`Kind`]($crate::answer::Kind).
            pub fn kind(&self) -> $crate::answer::Kind {
                self.answer_kind.into()
            }
            /// The plugin's configuration, parsed from `config` (JSON). A
            /// missing or empty config parses as `{}`.
            pub fn parse_config<C: $crate::serde::de::DeserializeOwned>(
                &self,
            ) -> Result<C, PluginError> {
                $crate::config::parse(&self.config).map_err(PluginError::InvalidConfig)
            }
        }
    };
}

/// Conversions from the prompt helpers' pairs into a world's `Message`.
#[doc(hidden)]
#[macro_export]
macro_rules! message_conversions {
    () => {
        /// Turns `(role, content)` pairs from [`prompt`]($crate::prompt) into messages.
        pub fn messages(pairs: Vec<(String, String)>) -> Vec<Message> {
            pairs
                .into_iter()
                .map(|(role, content)| Message { role, content })
                .collect()
        }
        /// A request on any node with the node's default sampling settings.
        pub fn request(pairs: Vec<(String, String)>) -> ChatRequest {
            request_with(pairs, &$crate::config::Sampling::default())
        }
        /// A request with the sampling and routing settings of a plugin's config.
        pub fn request_with(
            pairs: Vec<(String, String)>,
            s: &$crate::config::Sampling,
        ) -> ChatRequest {
            ChatRequest {
                messages: messages(pairs),
                max_tokens: s.max_tokens,
                temperature: s.temperature,
                stop: Vec::new(),
                route: Route {
                    tags: s.tags.clone(),
                    node: s.node.clone(),
                },
            }
        }
    };
}
