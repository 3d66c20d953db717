//! `conclave-sdk`: what a Conclave plugin author depends on.
//!
//! A plugin is a WebAssembly component for one of the worlds of the
//! `conclave:plugin` WIT package (`wit/0.2/` and `wit/0.1/`). Enable the crate feature
//! of that world (`voter` on contract 0.2, `voter-v1` on 0.1, `verifier` or
//! `role`), implement the world's trait, and export it with the world's
//! macro:
//!
//! ```ignore
//! use conclave_sdk::voter::{BallotBox, Decision, Descriptor, PluginError, Task, Voter};
//!
//! struct First;
//! impl Voter for First {
//!     fn describe() -> Descriptor { /* ... */ }
//!     fn tally(task: Task, ballots: BallotBox) -> Result<Decision, PluginError> { /* ... */ }
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

/// `decide`, shared by both voter contracts.
#[allow(unused_macros)]
macro_rules! decide_fn {
    () => {
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
    };
}

/// Bindings and trait for the contract 0.1 `voter` world, where every
/// ballot arrives whole. New voters use [`voter`] (0.2).
#[cfg(feature = "voter-v1")]
pub mod voter_v1 {
    wit_bindgen::generate!({
        // The 0.1 voter world under another name, so that its generated
        // items do not collide with the 0.2 world's when both are enabled.
        inline: "package conclave:sdk; world voter-v1 { include conclave:plugin/voter@0.1.0; }",
        path: "../wit/0.1",
        world: "conclave:sdk/voter-v1",
        pub_export_macro: true,
        export_macro_name: "export_voter_v1",
        default_bindings_module: "conclave_sdk::voter_v1",
        additional_derives: [PartialEq, Clone],
        generate_all,
    });
    pub use self::conclave::plugin::log::{write as log, Level};
    pub use self::conclave::plugin::types::*;
    /// The trait a voter implements.
    pub use self::Guest as Voter;
    crate::kind_conversions!();
    decide_fn!();
}

/// Bindings and trait for the contract 0.2 `voter` world: ballots arrive as
/// a [`BallotBox`](voter::BallotBox) of indices and numbers, and the texts
/// behind them are read on demand ([`BallotView::text`](voter::BallotView::text),
/// [`MarkView::reason`](voter::MarkView::reason)).
#[cfg(feature = "voter")]
pub mod voter {
    wit_bindgen::generate!({
        path: "../wit/0.2",
        world: "voter",
        pub_export_macro: true,
        export_macro_name: "export_voter",
        default_bindings_module: "conclave_sdk::voter",
        additional_derives: [PartialEq, Clone],
        // The 0.1 interfaces this world uses come from `wit/0.2/deps`.
        generate_all,
    });
    // Two versions of the package meet here, so wit-bindgen names their
    // modules by version.
    pub use self::conclave::plugin0_1_0::log::{write as log, Level};
    pub use self::conclave::plugin0_1_0::types::*;
    pub use self::conclave::plugin0_2_0::ballot_texts;
    pub use self::conclave::plugin0_2_0::voting::{Ballot, Mark, Preference};
    /// The trait a voter implements.
    pub use self::Guest as Voter;
    crate::kind_conversions!();

    /// One ballot of a [`BallotBox`], with what it refers to resolved.
    #[derive(Clone, Debug)]
    pub struct BallotView<'a> {
        /// Its position in the box (what `ballot-texts` takes).
        pub index: u32,
        /// Which replica produced it.
        pub replica: u32,
        /// Its normalised answer.
        pub answer: &'a str,
        /// The role's own confidence, when it has one.
        pub confidence: Option<f64>,
        /// The verifiers' marks on it.
        pub marks: Vec<MarkView<'a>>,
        /// Its ranking, best first (empty: only `answer`).
        pub ranking: Vec<&'a str>,
    }

    /// One verifier's mark on a ballot.
    #[derive(Clone, Debug)]
    pub struct MarkView<'a> {
        /// Its position in `BallotBox::marks` (what `ballot-texts.reason` takes).
        pub index: u32,
        /// The verifier's name.
        pub verifier: &'a str,
        pub pass: bool,
        pub score: f64,
    }

    impl MarkView<'_> {
        /// Why the verifier gave it (read from the host on demand).
        pub fn reason(&self) -> String {
            ballot_texts::reason(self.index)
        }
    }

    impl<'a> BallotView<'a> {
        /// Whether every verifier passed it (true when none judged it).
        pub fn passed(&self) -> bool {
            self.marks.iter().all(|m| m.pass)
        }
        /// The mean of its verifier scores (1 when none judged it).
        pub fn mean_score(&self) -> f64 {
            if self.marks.is_empty() {
                1.0
            } else {
                self.marks.iter().map(|m| m.score).sum::<f64>() / self.marks.len() as f64
            }
        }
        /// Its ranking, or only its answer when it has none.
        pub fn ranked(&self) -> Vec<String> {
            if self.ranking.is_empty() {
                vec![self.answer.to_string()]
            } else {
                self.ranking.iter().map(|a| a.to_string()).collect()
            }
        }
        /// The full text its answer came from (read from the host on demand).
        pub fn text(&self) -> String {
            ballot_texts::text(self.index)
        }
        /// The node its completion came from (read from the host on demand).
        pub fn node(&self) -> String {
            ballot_texts::node(self.index)
        }
    }

    impl BallotBox {
        /// Every ballot with its answer, marks and ranking resolved, in
        /// arrival order. An index the host did not send resolves to an
        /// empty string rather than panicking.
        pub fn views(&self) -> Vec<BallotView<'_>> {
            let answer = |i: u32| self.answers.get(i as usize).map_or("", String::as_str);
            let mut views: Vec<BallotView<'_>> = self
                .ballots
                .iter()
                .enumerate()
                .map(|(i, b)| BallotView {
                    index: i as u32,
                    replica: b.replica,
                    answer: answer(b.answer),
                    confidence: b.confidence,
                    marks: Vec::new(),
                    ranking: Vec::new(),
                })
                .collect();
            for (i, m) in self.marks.iter().enumerate() {
                if let Some(v) = views.get_mut(m.ballot as usize) {
                    v.marks.push(MarkView {
                        index: i as u32,
                        verifier: self
                            .verifiers
                            .get(m.verifier as usize)
                            .map_or("", String::as_str),
                        pass: m.pass,
                        score: m.score,
                    });
                }
            }
            for p in &self.rankings {
                if let Some(v) = views.get_mut(p.ballot as usize) {
                    v.ranking.push(answer(p.answer));
                }
            }
            views
        }

        /// The marks of each ballot, as ranges of `marks` (which the host
        /// sends grouped by ballot, in ballot order).
        fn mark_ranges(&self) -> Vec<std::ops::Range<usize>> {
            let mut out = Vec::with_capacity(self.ballots.len());
            let mut at = 0;
            for i in 0..self.ballots.len() {
                let start = at;
                while at < self.marks.len() && self.marks[at].ballot as usize == i {
                    at += 1;
                }
                out.push(start..at);
            }
            out
        }

        /// A plurality count without building a string per ballot: the
        /// totals per answer, best first (most votes, then the higher mean
        /// verifier score, then the smaller answer), exactly as
        /// [`crate::vote::tally`] orders them for votes of weight 1 whose
        /// score is the ballot's mean mark score (1 without marks); and how
        /// many ballots were counted. Ballots with an empty answer are not
        /// counted, nor (unless `count_failed`) ballots a verifier failed.
        pub fn plurality(&self, count_failed: bool) -> (Vec<crate::vote::Count>, u32) {
            // (answer, score) pairs summed in sorted order, as `tally` sums
            // them, so that the result does not depend on arrival order
            // even in the last bit of a mean score.
            let mut pairs: Vec<(u32, f64)> = Vec::with_capacity(self.ballots.len());
            for (b, range) in self.ballots.iter().zip(self.mark_ranges()) {
                let marks = &self.marks[range];
                let a = b.answer as usize;
                if a >= self.answers.len() || self.answers[a].is_empty() {
                    continue;
                }
                if !count_failed && marks.iter().any(|m| !m.pass) {
                    continue;
                }
                let score = if marks.is_empty() {
                    1.0
                } else {
                    marks.iter().map(|m| m.score).sum::<f64>() / marks.len() as f64
                };
                pairs.push((b.answer, score));
            }
            pairs.sort_by(|x, y| {
                self.answers[x.0 as usize]
                    .cmp(&self.answers[y.0 as usize])
                    .then(x.1.total_cmp(&y.1))
            });
            let total = pairs.len() as u32;
            let mut counts: Vec<crate::vote::Count> = Vec::new();
            for (a, score) in pairs {
                match counts.last_mut() {
                    Some(c) if c.answer == self.answers[a as usize] => {
                        c.votes += 1;
                        c.score += score;
                    }
                    _ => counts.push(crate::vote::Count {
                        answer: self.answers[a as usize].clone(),
                        votes: 1,
                        weight: 0.0,
                        score,
                    }),
                }
            }
            for c in &mut counts {
                c.weight = f64::from(c.votes);
                c.score /= f64::from(c.votes);
            }
            counts.sort_by(|a, b| {
                b.weight
                    .total_cmp(&a.weight)
                    .then(b.score.total_cmp(&a.score))
                    .then(a.answer.cmp(&b.answer))
            });
            (counts, total)
        }

        /// How many ballots it holds.
        pub fn len(&self) -> usize {
            self.ballots.len()
        }

        /// Whether it holds none.
        pub fn is_empty(&self) -> bool {
            self.ballots.is_empty()
        }
    }

    decide_fn!();
}

/// Bindings and trait for the `verifier` world.
#[cfg(feature = "verifier")]
pub mod verifier {
    wit_bindgen::generate!({
        path: "../wit/0.1",
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
        path: "../wit/0.1",
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

#[cfg(all(test, feature = "voter"))]
mod ballot_box_tests {
    //! The 0.2 ballot box's fast count agrees with the vote arithmetic.
    use crate::vote::{tally, Vote};
    use crate::voter::{Ballot, BallotBox, Mark};

    /// A small deterministic generator, so the cases are the same each run.
    fn next(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn plurality_equals_tally_over_the_same_votes_in_any_order() {
        let mut state = 7;
        for case in 0..2000u32 {
            let answers: Vec<String> = ["42", "41", "", "40", "7/2"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let n = (next(&mut state) % 12) as usize;
            let mut ballots = Vec::new();
            let mut marks = Vec::new();
            for i in 0..n {
                ballots.push(Ballot {
                    replica: i as u32,
                    answer: (next(&mut state) % 5) as u32,
                    confidence: None,
                });
                for v in 0..(next(&mut state) % 3) {
                    marks.push(Mark {
                        ballot: i as u32,
                        verifier: v as u32,
                        pass: !next(&mut state).is_multiple_of(4),
                        score: (next(&mut state) % 11) as f64 / 10.0,
                    });
                }
            }
            let count_failed = case.is_multiple_of(2);
            let bx = BallotBox {
                answers: answers.clone(),
                verifiers: vec!["a".into(), "b".into(), "c".into()],
                ballots,
                marks,
                rankings: vec![],
            };
            let votes: Vec<Vote> = bx
                .views()
                .iter()
                .filter(|b| count_failed || b.passed())
                .map(|b| Vote {
                    answer: b.answer.to_string(),
                    weight: 1.0,
                    score: b.mean_score(),
                })
                .collect();
            let want = tally(&votes);
            let want_total = votes.iter().filter(|v| !v.answer.is_empty()).count() as u32;
            let (got, total) = bx.plurality(count_failed);
            assert_eq!(got, want, "case {case}");
            assert_eq!(total, want_total, "case {case}");
        }
    }
}
