//! Building chat prompts that end in an answer the helpers in
//! [`crate::answer`] can extract.
//!
//! These return plain `(role, content)` pairs so they work in every world and
//! in native tests; a role turns them into its bindings' `Message` with one
//! `map`.

use crate::answer::Kind;

/// The instruction that makes a model finish with a parseable answer line.
pub fn answer_format(kind: Kind) -> &'static str {
    match kind {
        Kind::Number => {
            "Reason step by step, then end with a line of the form `Answer: <number>` \
             containing only the number, without units."
        }
        Kind::Choice => {
            "Reason step by step, then end with a line of the form `Answer: <letter>` \
             containing only the letter of the correct choice."
        }
        Kind::Text => {
            "Reason step by step, then end with a line of the form `Answer: <answer>` \
             containing only the short final answer."
        }
    }
}

/// A system and a user message asking to solve `question`.
pub fn solve(question: &str, kind: Kind) -> Vec<(String, String)> {
    vec![
        (
            "system".into(),
            format!("You are a careful problem solver. {}", answer_format(kind)),
        ),
        ("user".into(), question.to_string()),
    ]
}

/// Messages asking to solve `question` again in the light of `feedback`
/// (other solvers' answers in a debate, a critic's objections).
pub fn revise(question: &str, kind: Kind, feedback: &[String]) -> Vec<(String, String)> {
    let mut msgs = solve(question, kind);
    if !feedback.is_empty() {
        let mut note = String::from(
            "Other participants and reviewers said the following. Use what is right, \
             reject what is wrong, and give your own final answer.\n",
        );
        for (i, f) in feedback.iter().enumerate() {
            note.push_str(&format!("\n[{}] {}\n", i + 1, f.trim()));
        }
        msgs.push(("user".into(), note));
    }
    msgs
}

/// Lists `choices` as `A. ...` lines under `question`.
pub fn with_choices(question: &str, choices: &[String]) -> String {
    let mut s = question.trim().to_string();
    s.push('\n');
    for (i, c) in choices.iter().enumerate() {
        let letter = (b'A' + (i as u8 % 26)) as char;
        s.push_str(&format!("\n{letter}. {c}"));
    }
    s
}

#[cfg(test)]
mod tests {
    //! Prompt builders: shape and content of the messages.
    use super::*;

    #[test]
    fn solve_has_system_then_user() {
        let m = solve("2+2?", Kind::Number);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, "system");
        assert!(m[0].1.contains("Answer: <number>"));
        assert_eq!(m[1], ("user".to_string(), "2+2?".to_string()));
    }

    #[test]
    fn revise_numbers_each_feedback_item() {
        let m = revise("q", Kind::Text, &["x is 3".into(), "x is 4".into()]);
        assert_eq!(m.len(), 3);
        assert!(m[2].1.contains("[1] x is 3") && m[2].1.contains("[2] x is 4"));
        assert_eq!(revise("q", Kind::Text, &[]).len(), 2);
    }

    #[test]
    fn choices_are_lettered() {
        let s = with_choices("Which?", &["red".into(), "blue".into()]);
        assert_eq!(s, "Which?\n\nA. red\nB. blue");
    }
}
