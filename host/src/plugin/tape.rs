//! Durable re-execution: what lets a replica wait on a model without
//! holding a plugin instance.
//!
//! A role (or a verifier that judges with a model) runs in steps. A step is
//! one guest call on a fresh instance. When the guest calls `llm.chat` and
//! the call's [`Tape`] holds no reply for it yet, the import ends the guest
//! call with [`Suspended`]: the instance goes back to the pool, the host
//! makes the model call itself (holding no instance while it waits), writes
//! the reply on the tape and runs the guest again from the start. This
//! time every import the guest already made is answered from the tape
//! (model replies, bus inbox reads and sends, blackboard reads), until it
//! reaches the next model call or returns. `wasi:random` is seeded per call
//! and the clocks are frozen, so a plugin sees exactly what it saw before.
//!
//! The tape checks as it replays: an import that differs from the one
//! recorded at the same position (another import, or the same import with
//! another request) stops the call with [`Diverged`], which names the call
//! and what differed. A guest that returns before making every call it made
//! before diverges too.
//!
//! What lives here: the tape, its cursor and their errors. What does not:
//! the loop that runs the steps (the sandbox) and the model call itself
//! (the caller's [`HostServices`](super::HostServices)). The tape lives in
//! memory only, for the length of one plugin call: the journal records each
//! model call once, when the host makes it, and a replayed import writes
//! nothing.

use std::hash::{Hash, Hasher};

use super::bindings::{bus, llm};

/// The error an import raises to end a step at an unrecorded model call:
/// the host makes the call, then runs the guest again. Not a failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("suspended at an unrecorded model call")]
pub struct Suspended;

/// The error an import raises when a re-executed guest makes another import
/// than the one recorded at the same position.
#[derive(Debug, Clone, thiserror::Error)]
#[error("call #{call} ({got}) differs from the one it made before ({expected})")]
pub struct Diverged {
    /// Position of the import among the guest's imports (from 1).
    pub call: usize,
    /// What it made before.
    pub expected: String,
    /// What it makes now.
    pub got: String,
}

/// The error an import raises when the call's record of host calls would
/// pass its bounds (entries or bytes).
#[derive(Debug, Clone, thiserror::Error)]
#[error("its record of host calls would hold {what}, over the limit of {limit}")]
pub struct TapeFull {
    pub what: String,
    pub bytes: usize,
    pub limit: usize,
}

/// One import the guest made, with what it was answered.
#[derive(Clone, Debug)]
enum Entry {
    Chat {
        digest: u64,
        reply: Result<llm::ChatResponse, llm::LlmError>,
    },
    Send {
        digest: u64,
        result: Result<(), bus::BusError>,
    },
    Inbox {
        messages: Vec<bus::Envelope>,
    },
    Read {
        digest: u64,
        value: Option<String>,
    },
    Keys {
        keys: Vec<String>,
    },
}

impl Entry {
    fn name(&self) -> &'static str {
        match self {
            Entry::Chat { .. } => "llm.chat",
            Entry::Send { .. } => "bus.send",
            Entry::Inbox { .. } => "bus.inbox",
            Entry::Read { .. } => "blackboard.read",
            Entry::Keys { .. } => "blackboard.keys",
        }
    }

    fn digest(&self) -> Option<u64> {
        match self {
            Entry::Chat { digest, .. }
            | Entry::Send { digest, .. }
            | Entry::Read { digest, .. } => Some(*digest),
            Entry::Inbox { .. } | Entry::Keys { .. } => None,
        }
    }
}

/// An import as the guest makes it now, to match against the tape.
#[derive(Clone, Copy, Debug)]
pub enum Import {
    Chat(u64),
    Send(u64),
    Inbox,
    Read(u64),
    Keys,
}

impl Import {
    fn name(self) -> &'static str {
        match self {
            Import::Chat(_) => "llm.chat",
            Import::Send(_) => "bus.send",
            Import::Inbox => "bus.inbox",
            Import::Read(_) => "blackboard.read",
            Import::Keys => "blackboard.keys",
        }
    }

    fn digest(self) -> Option<u64> {
        match self {
            Import::Chat(d) | Import::Send(d) | Import::Read(d) => Some(d),
            Import::Inbox | Import::Keys => None,
        }
    }

    /// `llm.chat` with this request.
    pub fn chat(request: &llm::ChatRequest) -> Self {
        Import::Chat(digest_request(request))
    }

    /// `bus.send` of this message.
    pub fn send(message: &bus::Envelope) -> Self {
        let mut h = Fnv::default();
        (
            &message.recipient,
            &message.kind,
            &message.body,
            &message.correlation_id,
        )
            .hash(&mut h);
        Import::Send(h.finish())
    }

    /// `blackboard.read` of this key.
    pub fn read(key: &str) -> Self {
        let mut h = Fnv::default();
        key.hash(&mut h);
        Import::Read(h.finish())
    }
}

/// What a recorded import answered.
#[derive(Debug)]
pub enum Answer {
    Chat(Result<llm::ChatResponse, llm::LlmError>),
    Send(Result<(), bus::BusError>),
    Inbox(Vec<bus::Envelope>),
    Read(Option<String>),
    Keys(Vec<String>),
}

/// The imports one plugin call has made so far, across its steps, and
/// where the current step stands in them. Bounded: at most
/// `max_entries` imports and `max_bytes` of recorded text.
pub struct Tape {
    entries: Vec<Entry>,
    /// Bytes of text the entries hold.
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// The next entry the current step will replay.
    pos: usize,
    /// Entries recorded before the current step began: the guest's log
    /// lines are written once, by the step that first got this far.
    replaying_below: usize,
    /// The model request that ended the current step, for the host to make.
    pending: Option<llm::ChatRequest>,
    /// Steps run so far.
    steps: u32,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::bounded(usize::MAX, usize::MAX)
    }
}

impl Tape {
    /// An empty tape that holds at most `max_entries` imports and
    /// `max_bytes` of their text.
    pub fn bounded(max_entries: usize, max_bytes: usize) -> Self {
        Tape {
            entries: Vec::new(),
            bytes: 0,
            max_entries,
            max_bytes,
            pos: 0,
            replaying_below: 0,
            pending: None,
            steps: 0,
        }
    }

    /// Starts a step: the guest runs again from the start.
    pub fn rewind(&mut self) {
        self.pos = 0;
        self.replaying_below = self.entries.len();
        self.pending = None;
        self.steps += 1;
    }

    /// Steps run so far (1 for a call that made no model call).
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Imports recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the current step is still replaying what an earlier step
    /// did (its log lines were written then).
    pub fn replaying(&self) -> bool {
        self.pos < self.replaying_below
    }

    /// The recorded answer to `import` when the guest has made it before,
    /// `Ok(None)` when it is new (the caller makes it and records it), or
    /// the divergence.
    pub fn replay(&mut self, import: Import) -> Result<Option<Answer>, Diverged> {
        let Some(entry) = self.entries.get(self.pos) else {
            return Ok(None);
        };
        let call = self.pos + 1;
        if entry.name() != import.name() || entry.digest() != import.digest() {
            let what = |name: &str, same_name: bool| {
                if same_name {
                    format!("{name} with other arguments")
                } else {
                    name.to_string()
                }
            };
            let same = entry.name() == import.name();
            return Err(Diverged {
                call,
                expected: what(entry.name(), false),
                got: what(import.name(), same),
            });
        }
        self.pos += 1;
        Ok(Some(match entry {
            Entry::Chat { reply, .. } => Answer::Chat(reply.clone()),
            Entry::Send { result, .. } => Answer::Send(result.clone()),
            Entry::Inbox { messages } => Answer::Inbox(messages.clone()),
            Entry::Read { value, .. } => Answer::Read(value.clone()),
            Entry::Keys { keys } => Answer::Keys(keys.clone()),
        }))
    }

    /// Records a new import and what it answered; the guest goes on.
    /// Refused past the tape's bounds.
    pub fn record(&mut self, import: Import, answer: &Answer) -> Result<(), TapeFull> {
        debug_assert_eq!(self.pos, self.entries.len());
        if self.entries.len() >= self.max_entries {
            return Err(TapeFull {
                what: format!("{} host calls", self.entries.len() + 1),
                bytes: self.entries.len() + 1,
                limit: self.max_entries,
            });
        }
        let bytes = self.bytes.saturating_add(answer_bytes(answer));
        if bytes > self.max_bytes {
            return Err(TapeFull {
                what: format!("{bytes} bytes"),
                bytes,
                limit: self.max_bytes,
            });
        }
        self.bytes = bytes;
        let entry = match (import, answer) {
            (Import::Chat(digest), Answer::Chat(reply)) => Entry::Chat {
                digest,
                reply: reply.clone(),
            },
            (Import::Send(digest), Answer::Send(result)) => Entry::Send {
                digest,
                result: result.clone(),
            },
            (Import::Inbox, Answer::Inbox(messages)) => Entry::Inbox {
                messages: messages.clone(),
            },
            (Import::Read(digest), Answer::Read(value)) => Entry::Read {
                digest,
                value: value.clone(),
            },
            (Import::Keys, Answer::Keys(keys)) => Entry::Keys { keys: keys.clone() },
            _ => unreachable!("an import is recorded with its own kind of answer"),
        };
        self.entries.push(entry);
        self.pos += 1;
        Ok(())
    }

    /// Ends the step at a new model call: the host makes `request` and
    /// records its reply with [`Tape::answer`] before the next step.
    pub fn suspend(&mut self, request: llm::ChatRequest) -> Suspended {
        self.pending = Some(request);
        Suspended
    }

    /// The model request the step ended at, if it ended at one.
    pub fn take_pending(&mut self) -> Option<llm::ChatRequest> {
        self.pending.take()
    }

    /// Records the reply to the request the last step ended at.
    pub fn answer(
        &mut self,
        request: &llm::ChatRequest,
        reply: Result<llm::ChatResponse, llm::LlmError>,
    ) -> Result<(), TapeFull> {
        self.pos = self.entries.len();
        self.record(Import::chat(request), &Answer::Chat(reply))
    }

    /// The error for a guest that returned before replaying every import
    /// it made before, if it did.
    pub fn unfinished(&self) -> Option<Diverged> {
        let entry = self.entries.get(self.pos)?;
        Some(Diverged {
            call: self.pos + 1,
            expected: entry.name().to_string(),
            got: "a return".into(),
        })
    }

    /// The node of the last model reply recorded (the host's own record of
    /// where a candidate came from).
    pub fn last_node(&self) -> Option<String> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Chat { reply: Ok(r), .. } => Some(r.node.clone()),
            _ => None,
        })
    }
}

/// The text an answer holds (what recording it costs, roughly).
fn answer_bytes(a: &Answer) -> usize {
    let llm_error = |e: &llm::LlmError| match e {
        llm::LlmError::Unavailable(m)
        | llm::LlmError::RateLimited(m)
        | llm::LlmError::Timeout(m)
        | llm::LlmError::Protocol(m)
        | llm::LlmError::BudgetExhausted(m) => m.len(),
    };
    let envelope = |m: &bus::Envelope| {
        m.sender.len() + m.recipient.len() + m.kind.len() + m.body.len() + m.correlation_id.len()
    };
    32 + match a {
        Answer::Chat(Ok(r)) => r.text.len() + r.node.len(),
        Answer::Chat(Err(e)) => llm_error(e),
        Answer::Send(Ok(())) => 0,
        Answer::Send(Err(bus::BusError::Full(m) | bus::BusError::UnknownRecipient(m))) => m.len(),
        Answer::Inbox(ms) => ms.iter().map(envelope).sum(),
        Answer::Read(v) => v.as_ref().map_or(0, String::len),
        Answer::Keys(ks) => ks.iter().map(String::len).sum(),
    }
}

/// The digest a model request is matched by: every field the guest sets.
fn digest_request(r: &llm::ChatRequest) -> u64 {
    let mut h = Fnv::default();
    r.messages.len().hash(&mut h);
    for m in &r.messages {
        (&m.role, &m.content).hash(&mut h);
    }
    r.max_tokens.hash(&mut h);
    r.temperature.map(f32::to_bits).hash(&mut h);
    (&r.stop, &r.route.tags, &r.route.node).hash(&mut h);
    h.finish()
}

/// FNV-1a, 64 bits: a stable digest for matching imports, not a defence
/// against a guest (a guest that wants to diverge can simply return
/// another answer).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tape answers what was recorded, in order, and names the first
    //! import that differs.
    use super::*;

    fn req(text: &str) -> llm::ChatRequest {
        llm::ChatRequest {
            messages: vec![crate::plugin::Message {
                role: "user".into(),
                content: text.into(),
            }],
            max_tokens: Some(8),
            temperature: None,
            stop: vec![],
            route: llm::Route {
                tags: vec![],
                node: String::new(),
            },
        }
    }

    fn reply(text: &str) -> Result<llm::ChatResponse, llm::LlmError> {
        Ok(llm::ChatResponse {
            text: text.into(),
            node: "n1".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
        })
    }

    #[test]
    fn a_recorded_call_is_answered_from_the_tape_and_a_new_one_is_not() {
        let mut t = Tape::default();
        t.rewind();
        assert!(t.replay(Import::chat(&req("a"))).unwrap().is_none());
        let _ = t.suspend(req("a"));
        let pending = t.take_pending().unwrap();
        t.answer(&pending, reply("A")).unwrap();
        t.rewind();
        assert!(t.replaying());
        match t.replay(Import::chat(&req("a"))).unwrap() {
            Some(Answer::Chat(Ok(r))) => assert_eq!(r.text, "A"),
            _ => panic!("expected the recorded reply"),
        }
        assert!(!t.replaying());
        assert!(t.replay(Import::Inbox).unwrap().is_none());
        t.record(Import::Inbox, &Answer::Inbox(vec![])).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.steps(), 2);
        assert_eq!(t.last_node().as_deref(), Some("n1"));
        assert!(t.unfinished().is_none());
    }

    #[test]
    fn another_request_at_a_recorded_position_is_named() {
        let mut t = Tape::default();
        t.rewind();
        t.answer(&req("a"), reply("A")).unwrap();
        t.record(Import::Keys, &Answer::Keys(vec!["k".into()]))
            .unwrap();
        t.rewind();
        let e = t.replay(Import::chat(&req("b"))).unwrap_err();
        assert_eq!(e.call, 1);
        assert_eq!(e.expected, "llm.chat");
        assert_eq!(e.got, "llm.chat with other arguments");
        t.rewind();
        t.replay(Import::chat(&req("a"))).unwrap();
        let e = t.replay(Import::Inbox).unwrap_err();
        assert_eq!(
            (e.call, e.expected.as_str(), e.got.as_str()),
            (2, "blackboard.keys", "bus.inbox")
        );
        t.rewind();
        t.replay(Import::chat(&req("a"))).unwrap();
        let e = t.unfinished().unwrap();
        assert_eq!((e.call, e.got.as_str()), (2, "a return"));
    }

    #[test]
    fn a_tape_past_its_bounds_refuses_the_next_call() {
        let mut t = Tape::bounded(2, 1 << 20);
        t.rewind();
        t.record(Import::Keys, &Answer::Keys(vec![])).unwrap();
        t.record(Import::Inbox, &Answer::Inbox(vec![])).unwrap();
        let e = t.record(Import::Keys, &Answer::Keys(vec![])).unwrap_err();
        assert_eq!((e.bytes, e.limit), (3, 2));
        let mut t = Tape::bounded(100, 100);
        t.rewind();
        let e = t
            .record(Import::read("k"), &Answer::Read(Some("x".repeat(100))))
            .unwrap_err();
        assert_eq!((e.bytes, e.limit), (132, 100));
        assert_eq!(t.len(), 0);
    }
}
