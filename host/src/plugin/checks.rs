//! Checks of what crosses the sandbox boundary: a file before it is
//! compiled, a plugin's description at load, and each call's output
//! (decisions, plans) before the host acts on it; plus reading a guest's
//! panic message out of its stderr.

use std::path::Path;

use super::sandbox::Plugin;
use super::{Decision, Descriptor, PluginError};

/// Refuses files that are not components before compiling them, with a
/// message that says what the file is instead.
pub(crate) fn check_header(bytes: &[u8], origin: &Path) -> Result<(), PluginError> {
    let not = |reason: &str| PluginError::NotAComponent {
        path: origin.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(not("it is not a WebAssembly file (no `\\0asm` header)"));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(not(
            "it is a core WebAssembly module; build the plugin with `--target wasm32-wasip2` \
             so that it is a component",
        )),
        [_, _, 1, 0] => Ok(()),
        _ => Err(not("unknown WebAssembly version or layer")),
    }
}

/// Fixed caps on a description: (field, bytes).
const DESCRIPTOR_CAPS: [(&str, usize); 3] = [("name", 64), ("version", 64), ("description", 1024)];

pub(crate) fn check_descriptor(d: &Descriptor, origin: &Path) -> Result<(), PluginError> {
    let bad = |reason: String| PluginError::BadOutput {
        plugin: format!("from {}", origin.display()),
        reason,
    };
    for ((field, limit), value) in DESCRIPTOR_CAPS
        .iter()
        .zip([&d.name, &d.version, &d.description])
    {
        if value.len() > *limit {
            return Err(PluginError::TooLarge {
                plugin: format!("from {}", origin.display()),
                what: format!("the {field} its describe() gave"),
                bytes: value.len(),
                limit: *limit,
            });
        }
    }
    if d.capabilities.len() > 8 {
        return Err(bad(format!(
            "describe() asked for {} capabilities; there are four",
            d.capabilities.len()
        )));
    }
    if d.name.is_empty()
        || !d
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad(format!(
            "describe() gave the name {:?}; names are kebab-case",
            d.name
        )));
    }
    if semver::Version::parse(&d.version).is_err() {
        return Err(bad(format!(
            "describe() gave the version {:?}, which is not semver",
            d.version
        )));
    }
    Ok(())
}

pub(crate) fn check_decision(
    plugin: &Plugin,
    d: &Decision,
    ballots: usize,
) -> Result<(), PluginError> {
    let bad = |reason: String| {
        Err(PluginError::BadOutput {
            plugin: plugin.id(),
            reason,
        })
    };
    match d {
        Decision::Decided(x) if x.answer.is_empty() => bad("decided an empty answer".into()),
        Decision::Decided(x) if x.support > x.total || x.total as usize > ballots => bad(format!(
            "decided with support {} of {} on {ballots} ballots",
            x.support, x.total
        )),
        Decision::NeedMore(0) => bad("asked for zero more samples".into()),
        _ => Ok(()),
    }
}

/// A voter's decision as the host vouches for it: the decided answer is
/// one the ballots gave (as their answer or in their ranking), and the
/// support and total are the host's own counts, not the voter's claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Vouched {
    pub decision: Decision,
    /// The answer is none of the ballots': the voter synthesised it, which
    /// its team declared it may (`synthesises = true`).
    pub synthesised: bool,
}

/// Checks a voter's decision against the ballots the host gave it, and
/// replaces the counts it claimed with the host's: `support` is how many
/// ballots answered the decided answer, `total` how many ballots the voter
/// was given. A voter still chooses which answer wins and may weigh the
/// ballots as it likes; it cannot name an answer no ballot gave (unless
/// `may_synthesise`: then the decision is marked synthesised, with no
/// support) nor misstate how many ballots carried it. `who` names the
/// plugin in the error (the team's name for it and what it ran).
pub fn vouch(
    who: &str,
    decision: Decision,
    ballots: &[super::Ballot],
    may_synthesise: bool,
) -> Result<Vouched, PluginError> {
    let Decision::Decided(mut d) = decision else {
        return Ok(Vouched {
            decision,
            synthesised: false,
        });
    };
    let given = |answer: &str| {
        ballots.iter().any(|b| {
            b.candidate.answer == answer || b.candidate.ranking.iter().any(|r| r == answer)
        })
    };
    let bad = |reason: String| PluginError::BadOutput {
        plugin: who.to_string(),
        reason,
    };
    let answers = || {
        let mut seen: Vec<&str> = Vec::new();
        for b in ballots {
            let a = b.candidate.answer.as_str();
            if !seen.contains(&a) {
                seen.push(a);
            }
        }
        let listed: Vec<String> = seen
            .iter()
            .take(8)
            .map(|a| format!("{:?}", clip(a, 40)))
            .collect();
        let more = seen.len().saturating_sub(8);
        if more > 0 {
            format!("{} and {more} more", listed.join(", "))
        } else {
            listed.join(", ")
        }
    };
    let synthesised = !given(&d.answer);
    if synthesised && !may_synthesise {
        return Err(bad(format!(
            "decided {:?} ({} of {}), which none of the {} ballots gave (their answers: {}); a \
             voter that synthesises answers must be declared with `synthesises = true` in its \
             [[plugin]] section",
            clip(&d.answer, 80),
            d.support,
            d.total,
            ballots.len(),
            answers()
        )));
    }
    if let Some(r) = &d.runner_up {
        if !given(r) && !may_synthesise {
            return Err(bad(format!(
                "named {:?} as the runner-up, which none of the {} ballots gave (their answers: {})",
                clip(r, 80),
                ballots.len(),
                answers()
            )));
        }
    }
    let support = ballots
        .iter()
        .filter(|b| b.candidate.answer == d.answer)
        .count() as u32;
    if (d.support, d.total) != (support, ballots.len() as u32) {
        tracing::debug!(
            plugin = who,
            "the voter claimed {} of {} for {:?}; the ballots say {} of {}",
            d.support,
            d.total,
            clip(&d.answer, 80),
            support,
            ballots.len()
        );
    }
    d.support = support;
    d.total = ballots.len() as u32;
    Ok(Vouched {
        decision: Decision::Decided(d),
        synthesised,
    })
}

/// At most `max` bytes of `s` for a message, cut at a character boundary,
/// with `...` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// The most subtasks one plan may have whatever a team allows: the ceiling
/// of `[team] max_plan_subtasks` (default 64). It is what keeps
/// [`check_plan`] cheap enough to run on the async threads as a plan comes
/// out of the sandbox, before the team's own (lower) cap is applied: the
/// check is linear, and 10,000 subtasks take well under a millisecond.
pub const PLAN_SUBTASKS_CEILING: usize = 10_000;

/// A plan must be a non-empty DAG of at most [`PLAN_SUBTASKS_CEILING`]
/// uniquely named subtasks whose dependencies exist. The team applies its
/// own limits (size, nesting, ids, prompts, roles) on top of this.
pub fn check_plan(plan: &super::Plan) -> Result<(), String> {
    let n = plan.subtasks.len();
    if n > PLAN_SUBTASKS_CEILING {
        return Err(format!(
            "the plan has {n} subtasks; no team takes more than {PLAN_SUBTASKS_CEILING} in one \
             plan ([team] max_plan_subtasks, default 64, can be raised up to that)"
        ));
    }
    plan_order(&plan.subtasks).map(|_| ())
}

/// The subtasks' positions in an order where each comes after its
/// dependencies, or why there is none (no subtasks, an empty or repeated
/// id, an unknown or repeated dependency, a cycle). Kahn's algorithm in one
/// pass, with in-degree counts and a queue: linear in the subtasks plus
/// their dependencies, however deep the chain.
pub fn plan_order(subtasks: &[super::Subtask]) -> Result<Vec<usize>, String> {
    use std::collections::HashMap;
    let n = subtasks.len();
    if n == 0 {
        return Err("the plan has no subtasks".into());
    }
    let clip = |s: &str| clip(s, 64);
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, s) in subtasks.iter().enumerate() {
        if s.id.is_empty() || index.insert(s.id.as_str(), i).is_some() {
            return Err(format!("subtask id {:?} is empty or repeated", clip(&s.id)));
        }
    }
    // Who waits on whom, and how many dependencies each still waits for.
    let mut waiting: Vec<u32> = vec![0; n];
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    // The last subtask that listed each one as a dependency: a repeat.
    let mut listed_by: Vec<usize> = vec![usize::MAX; n];
    for (i, s) in subtasks.iter().enumerate() {
        for d in &s.depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                return Err(format!(
                    "subtask {:?} depends on unknown subtask {:?}",
                    clip(&s.id),
                    clip(d)
                ));
            };
            if listed_by[j] == i {
                return Err(format!(
                    "subtask {:?} lists dependency {:?} twice",
                    clip(&s.id),
                    clip(d)
                ));
            }
            listed_by[j] = i;
            dependents[j].push(i as u32);
            waiting[i] += 1;
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let j = order[next];
        next += 1;
        for &i in &dependents[j] {
            let i = i as usize;
            waiting[i] -= 1;
            if waiting[i] == 0 {
                order.push(i);
            }
        }
    }
    if order.len() < n {
        let stuck: Vec<String> = (0..n)
            .filter(|&i| waiting[i] > 0)
            .take(5)
            .map(|i| clip(&subtasks[i].id))
            .collect();
        return Err(format!(
            "the plan's dependencies form a cycle (through {} of {} subtasks, among them {stuck:?})",
            n - order.len(),
            n
        ));
    }
    Ok(order)
}

/// The panic message a Rust guest printed to stderr (`panicked at FILE:L:C:
/// MESSAGE`), or the last lines of stderr when it is not a panic.
pub(crate) fn panic_message(stderr: &str) -> String {
    // A Python plugin's exception: componentize-py prints the traceback,
    // then its own runtime panics with a message that names no cause. The
    // traceback says what went wrong.
    if let Some(pos) = stderr.rfind("Traceback (most recent call last):") {
        let rest = &stderr[pos..];
        // Up to the line where the runtime's panic begins.
        let end = rest
            .find("panicked at ")
            .map(|p| rest[..p].rfind('\n').unwrap_or(p))
            .unwrap_or(rest.len());
        return tail(&rest[..end]);
    }
    if let Some(pos) = stderr.find("panicked at ") {
        let rest = &stderr[pos..];
        let lines: Vec<&str> = rest
            .lines()
            .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        return lines.join(" ").trim().to_string();
    }
    tail(stderr)
}

/// The last lines: where a traceback or a JavaScript error ends with what
/// went wrong. At most 12 lines and 2 KiB, joined with ` | `.
fn tail(stderr: &str) -> String {
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(12)
        .collect();
    let text = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    let mut start = text.len().saturating_sub(2048);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim().to_string()
}

#[cfg(test)]
mod tests {
    //! Header checks, plan checks and panic-message extraction.
    use super::*;
    use crate::plugin::{Plan, Subtask};

    #[test]
    fn header_check_names_what_the_file_is() {
        let p = Path::new("x.wasm");
        let e = check_header(b"garbage!", p).unwrap_err().to_string();
        assert!(e.contains("not a WebAssembly file"), "{e}");
        let e = check_header(b"\0asm\x01\0\0\0", p).unwrap_err().to_string();
        assert!(e.contains("core WebAssembly module"), "{e}");
        assert!(check_header(b"\0asm\x0d\0\x01\0", p).is_ok());
    }

    fn st(id: &str, deps: &[&str]) -> Subtask {
        Subtask {
            id: id.into(),
            prompt: "p".into(),
            role: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn plans_must_be_dags_of_known_ids() {
        assert!(check_plan(&Plan {
            subtasks: vec![st("a", &[]), st("b", &["a"])]
        })
        .is_ok());
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &["b"]), st("b", &["a"])],
        })
        .unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &["z"])],
        })
        .unwrap_err();
        assert!(e.contains("unknown subtask \"z\""), "{e}");
        assert!(check_plan(&Plan {
            subtasks: vec![st("a", &[]), st("a", &[])]
        })
        .is_err());
        assert!(check_plan(&Plan { subtasks: vec![] }).is_err());
    }

    #[test]
    fn repeated_dependencies_and_self_loops_are_refused() {
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &[]), st("b", &["a", "a"])],
        })
        .unwrap_err();
        assert!(e.contains("lists dependency \"a\" twice"), "{e}");
        let e = check_plan(&Plan {
            subtasks: vec![st("a", &["a"])],
        })
        .unwrap_err();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn plans_past_the_ceiling_are_refused_before_they_are_walked() {
        let subtasks = (0..=PLAN_SUBTASKS_CEILING)
            .map(|i| st(&format!("s{i}"), &[]))
            .collect();
        let e = check_plan(&Plan { subtasks }).unwrap_err();
        assert!(e.contains("no team takes more than 10000"), "{e}");
    }

    #[test]
    fn a_100k_chain_is_ordered_in_one_linear_pass() {
        // Listed backwards, so that every subtask waits for the next one in
        // the list: a per-level rescan would walk it 100,000 times.
        let n = 100_000;
        let subtasks: Vec<Subtask> = (0..n)
            .rev()
            .map(|i| {
                let id = format!("s{i}");
                if i == 0 {
                    st(&id, &[])
                } else {
                    st(&id, &[&format!("s{}", i - 1)])
                }
            })
            .collect();
        let start = std::time::Instant::now();
        let order = plan_order(&subtasks).unwrap();
        let took = start.elapsed();
        assert_eq!(order.len(), n);
        let ids: Vec<&str> = order.iter().map(|&i| subtasks[i].id.as_str()).collect();
        assert_eq!(&ids[..3], ["s0", "s1", "s2"]);
        assert_eq!(ids[n - 1], format!("s{}", n - 1));
        assert!(
            took < std::time::Duration::from_secs(5),
            "ordering a 100k chain took {took:?}"
        );
        // A cycle closing the chain is found just as fast.
        let mut cyclic = subtasks;
        cyclic.last_mut().unwrap().depends_on = vec![format!("s{}", n - 1)];
        let e = plan_order(&cyclic).unwrap_err();
        assert!(e.contains(&format!("through {n} of {n} subtasks")), "{e}");
    }

    fn ballot(answer: &str, ranking: &[&str]) -> crate::plugin::Ballot {
        crate::plugin::Ballot {
            candidate: crate::plugin::Candidate {
                replica: 0,
                node: String::new(),
                answer: answer.into(),
                text: String::new(),
                confidence: None,
                ranking: ranking.iter().map(|r| r.to_string()).collect(),
            },
            verdicts: Vec::new(),
        }
    }

    fn decided(answer: &str, support: u32, total: u32) -> Decision {
        Decision::Decided(crate::plugin::Decided {
            answer: answer.into(),
            support,
            total,
            runner_up: None,
        })
    }

    #[test]
    fn a_decision_is_one_of_the_ballots_answers_with_the_hosts_counts() {
        let ballots = [ballot("7", &[]), ballot("7", &[]), ballot("9", &["9", "8"])];
        let v = vouch("v", decided("7", 3, 3), &ballots, false).unwrap();
        assert_eq!(v.decision, decided("7", 2, 3));
        assert!(!v.synthesised);
        // An answer only ranked (borda) is one the ballots gave.
        let v = vouch("v", decided("8", 1, 3), &ballots, false).unwrap();
        assert_eq!(v.decision, decided("8", 0, 3));
        let e = vouch("v", decided("1337", 3, 3), &ballots, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decided \"1337\" (3 of 3), which none of the 3 ballots gave (their answers: \"7\", \"9\")"), "{e}");
        let v = vouch("v", decided("1337", 3, 3), &ballots, true).unwrap();
        assert_eq!((v.decision, v.synthesised), (decided("1337", 0, 3), true));
        // Not a decision: nothing to vouch for.
        let v = vouch("v", Decision::NeedMore(2), &ballots, false).unwrap();
        assert_eq!(v.decision, Decision::NeedMore(2));
    }

    #[test]
    fn panic_message_is_extracted() {
        let s = "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom here\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(panic_message(s), "panicked at src/lib.rs:9:5: boom here");
        assert_eq!(panic_message("a\n\nb"), "a | b");
        // componentize-py: the traceback, then its runtime's own panic.
        let py = "Traceback (most recent call last):\n  File \"app.py\", line 3, in tally\nValueError: bad ballot\nthread '<unnamed>' panicked at runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\n";
        assert_eq!(
            panic_message(py),
            "Traceback (most recent call last): |   File \"app.py\", line 3, in tally | ValueError: bad ballot"
        );
    }
}
