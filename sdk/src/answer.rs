//! Extracting a final answer from model text and normalising it for comparison.
//!
//! Small models rarely follow an output format to the letter, so extraction is
//! forgiving: it prefers an explicit marker (`Answer:`, `The answer is`, `####`,
//! `\boxed{}`) and falls back to the last thing of the right kind in the text.
//! Normalisation makes equal answers compare equal as strings: `1,234.50`,
//! `+1234.5` and `2469/2` all become `1234.5`.
//!
//! Everything here is plain Rust with no host calls, so it is unit-tested
//! natively and behaves the same inside a component.

use std::fmt;

/// The kind of answer a task expects. Mirrors the WIT `answer-kind` enum so
/// that the helpers do not depend on a world's bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A number (signs, thousands separators, decimals, fractions).
    Number,
    /// A multiple-choice letter.
    Choice,
    /// Free text.
    Text,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Number => "number",
            Kind::Choice => "choice",
            Kind::Text => "text",
        })
    }
}

/// Markers after which models state their final answer, lower-case, most
/// specific first.
const MARKERS: &[&str] = &[
    "final answer:",
    "final answer is",
    "answer:",
    "the answer is",
    "answer is",
    "####",
];

/// Extracts and normalises the final answer of `kind` from model `text`.
///
/// Returns `None` when nothing of that kind is in the text, so that a verifier
/// can fail the candidate instead of comparing garbage.
pub fn extract(text: &str, kind: Kind) -> Option<String> {
    match kind {
        Kind::Number => extract_number(text),
        Kind::Choice => extract_choice(text, 'Z'),
        Kind::Text => extract_text(text),
    }
}

/// Normalises an answer that is already isolated (a gold label, say) so that it
/// compares equal to what [`extract`] returns for the same value.
pub fn normalize(answer: &str, kind: Kind) -> String {
    match kind {
        Kind::Number => normalize_number(answer.trim()).unwrap_or_else(|| normalize_text(answer)),
        Kind::Choice => extract_choice(answer, 'Z').unwrap_or_else(|| normalize_text(answer)),
        Kind::Text => normalize_text(answer),
    }
}

/// Whether two answers of `kind` mean the same after normalisation.
pub fn same(a: &str, b: &str, kind: Kind) -> bool {
    normalize(a, kind) == normalize(b, kind)
}

/// The text that follows the last answer marker, if any (the rest of that
/// line, or the next non-empty line when the marker ends its line), with
/// `\boxed{...}` taking precedence over everything.
fn marked_span(text: &str) -> Option<&str> {
    if let Some(pos) = text.rfind("\\boxed{") {
        let start = pos + "\\boxed{".len();
        let mut depth = 1usize;
        for (i, c) in text[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&text[start..start + i]);
                    }
                }
                _ => {}
            }
        }
    }
    let lower = text.to_ascii_lowercase();
    for marker in MARKERS {
        if let Some(pos) = lower.rfind(marker) {
            let rest = &text[pos + marker.len()..];
            let rest = rest.trim_start_matches([' ', '\t', ':', '*']);
            let line = rest.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !line.trim().is_empty() {
                return Some(line);
            }
        }
    }
    None
}

/// A number found in text, as the characters that spelled it.
fn numbers_in(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_signed = (c == '-' || c == '+' || c == '−')
            && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())
            && (i == 0 || !chars[i - 1].is_ascii_alphanumeric());
        if !(c.is_ascii_digit() || starts_signed) {
            i += 1;
            continue;
        }
        let mut s = String::new();
        if starts_signed {
            if c != '+' {
                s.push('-');
            }
            i += 1;
        }
        let mut seen_point = false;
        let mut seen_slash = false;
        while i < chars.len() {
            let c = chars[i];
            let next_digit = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if c.is_ascii_digit() {
                s.push(c);
            } else if c == ',' && next_digit && !seen_point && !seen_slash {
                // A thousands separator only when exactly three digits follow.
                let group = chars[i + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .count();
                if group != 3 {
                    break;
                }
            } else if c == '.' && next_digit && !seen_point && !seen_slash {
                seen_point = true;
                s.push('.');
            } else if c == '/' && next_digit && !seen_point && !seen_slash {
                seen_slash = true;
                s.push('/');
            } else {
                break;
            }
            i += 1;
        }
        out.push(s);
    }
    out
}

fn extract_number(text: &str) -> Option<String> {
    if let Some(span) = marked_span(text) {
        if let Some(first) = numbers_in(span).into_iter().next() {
            return normalize_number(&first);
        }
    }
    numbers_in(text)
        .into_iter()
        .last()
        .and_then(|n| normalize_number(&n))
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Canonical spelling of a number: no sign for zero, no `+`, no separators,
/// no trailing zeros, fractions reduced and written as decimals when they
/// terminate (`3/4` -> `0.75`, `1/3` stays `1/3`).
pub fn normalize_number(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| *c != ',' && *c != ' ' && *c != '$' && *c != '£' && *c != '€')
        .map(|c| if c == '−' { '-' } else { c })
        .collect();
    let (negative, body) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    if body.is_empty() {
        return None;
    }
    // Every number becomes a fraction num/den with den = 10^k or the written one.
    let (num, den) = if let Some((n, d)) = body.split_once('/') {
        let n: u128 = n.parse().ok()?;
        let d: u128 = d.parse().ok()?;
        if d == 0 {
            return None;
        }
        (n, d)
    } else if let Some((int, frac)) = body.split_once('.') {
        if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let frac = frac.trim_end_matches('0');
        let digits = format!("{int}{frac}");
        let n: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        (n, 10u128.checked_pow(frac.len() as u32)?)
    } else {
        if !body.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        (body.parse().ok()?, 1)
    };
    let g = gcd(num, den).max(1);
    let (num, den) = (num / g, den / g);
    let sign = if negative && num != 0 { "-" } else { "" };
    if den == 1 {
        return Some(format!("{sign}{num}"));
    }
    // Terminating decimal when den = 2^a 5^b.
    let mut rest = den;
    let (mut twos, mut fives) = (0u32, 0u32);
    while rest % 2 == 0 {
        rest /= 2;
        twos += 1;
    }
    while rest % 5 == 0 {
        rest /= 5;
        fives += 1;
    }
    if rest != 1 {
        return Some(format!("{sign}{num}/{den}"));
    }
    let places = twos.max(fives);
    let scale = 10u128.checked_pow(places)?;
    let scaled = num.checked_mul(scale / den)?;
    let int = scaled / scale;
    let frac = format!("{:0width$}", scaled % scale, width = places as usize);
    let frac = frac.trim_end_matches('0');
    Some(format!("{sign}{int}.{frac}"))
}

/// Finds a multiple-choice letter (`A` to `last`) in `text`.
fn extract_choice(text: &str, last: char) -> Option<String> {
    let is_letter = |c: char| c.is_ascii_uppercase() && c <= last;
    // A standalone letter: not part of a word (`A.` `(B)` `C)` `**D**`).
    let standalone = |s: &str| -> Vec<char> {
        let chars: Vec<char> = s.chars().collect();
        let mut found = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            if !is_letter(c) {
                continue;
            }
            let before_ok = i == 0 || !chars[i - 1].is_alphanumeric();
            let after_ok = i + 1 == chars.len() || !chars[i + 1].is_alphanumeric();
            // "A" as an article ("A plumber works") is not an answer when a
            // lower-case word follows it.
            let article = c == 'A'
                && chars.get(i + 1) == Some(&' ')
                && chars.get(i + 2).is_some_and(|n| n.is_lowercase());
            if before_ok && after_ok && !article {
                found.push(c);
            }
        }
        found
    };
    if let Some(span) = marked_span(text) {
        if let Some(c) = standalone(span).first() {
            return Some(c.to_string());
        }
    }
    let lower = text.to_ascii_lowercase();
    for phrase in ["option", "choice"] {
        if let Some(pos) = lower.rfind(phrase) {
            if let Some(c) = standalone(&text[pos + phrase.len()..]).first() {
                return Some(c.to_string());
            }
        }
    }
    let trimmed = text.trim();
    if trimmed.chars().count() <= 4 {
        if let Some(c) = standalone(trimmed).first() {
            return Some(c.to_string());
        }
    }
    standalone(text).last().map(|c| c.to_string())
}

fn extract_text(text: &str) -> Option<String> {
    let span = marked_span(text).or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))?;
    let n = normalize_text(span);
    if n.is_empty() {
        None
    } else {
        Some(n)
    }
}

/// Lower-case, single spaces, no surrounding quotes, markup or final period.
pub fn normalize_text(s: &str) -> String {
    let collapsed = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    collapsed
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '`' || c == ' ')
        .trim_end_matches(['.', '!'])
        .trim()
        .to_string()
}

/// Phrases by which an answer declines to answer from the documents it
/// was given (normalised, as [`normalize_text`] leaves them). What a
/// retrieval prompt asks for ("say that the documents do not say") and the
/// ways small models put it.
const ABSTENTIONS: &[&str] = &[
    "the documents do not say",
    "the documents don't say",
    "the documents do not mention",
    "the documents don't mention",
    "the passages do not say",
    "the passages don't say",
    "not in the documents",
    "not stated in the documents",
    "not mentioned in the documents",
    "not in the passages",
    "not stated in the passages",
    "not mentioned in the passages",
    "the documents do not contain",
    "the passages do not contain",
    "cannot be determined from the documents",
    "cannot be determined from the passages",
];

/// Whether `answer` declines to answer (an abstention: "the documents do
/// not say"), as opposed to giving one. Whole answers only, after
/// normalisation: "I don't know" and "unknown" count, and so does an
/// answer that contains one of the phrases of a retrieval prompt (`The
/// documents do not say which year.`).
pub fn abstains(answer: &str) -> bool {
    let a = normalize_text(answer);
    matches!(
        a.as_str(),
        "unknown" | "i don't know" | "i do not know" | "not known" | "no answer"
    ) || ABSTENTIONS.iter().any(|p| a.contains(p))
}

#[cfg(test)]
mod tests {
    //! Extraction and normalisation on the shapes of text small models write.
    use super::*;

    #[test]
    fn abstentions_are_told_from_answers() {
        for a in [
            "The documents do not say.",
            "the documents don't say which year",
            "That is not stated in the passages.",
            "I don't know",
            "Unknown.",
            "**The documents do not mention it.**",
        ] {
            assert!(abstains(a), "{a:?} abstains");
        }
        for a in [
            "2026",
            "The documents say it was released in March.",
            "unknown error handling was removed",
            "Paris",
            "",
        ] {
            assert!(!abstains(a), "{a:?} is an answer");
        }
    }

    #[test]
    fn numbers_after_answer_marker_win_over_later_numbers() {
        let t = "First 3 apples, then 4.\nAnswer: 12\nI used 3 steps.";
        assert_eq!(extract(t, Kind::Number).as_deref(), Some("12"));
    }

    #[test]
    fn last_number_is_used_without_marker() {
        assert_eq!(extract("5 + 7 = 12", Kind::Number).as_deref(), Some("12"));
    }

    #[test]
    fn signs_commas_decimals_and_fractions() {
        assert_eq!(
            extract("The answer is -1,234.50.", Kind::Number).as_deref(),
            Some("-1234.5")
        );
        assert_eq!(extract("#### +42", Kind::Number).as_deref(), Some("42"));
        assert_eq!(extract("so x = 6/8", Kind::Number).as_deref(), Some("0.75"));
        assert_eq!(extract("so x = 2/6", Kind::Number).as_deref(), Some("1/3"));
        assert_eq!(extract("it is 8/2", Kind::Number).as_deref(), Some("4"));
        assert_eq!(extract("\\boxed{−7}", Kind::Number).as_deref(), Some("-7"));
        assert_eq!(
            extract("he earns £15,000 a year", Kind::Number).as_deref(),
            Some("15000")
        );
    }

    #[test]
    fn comma_between_numbers_is_not_a_separator() {
        assert_eq!(
            extract("the values are 1,2 and 3", Kind::Number).as_deref(),
            Some("3")
        );
        assert_eq!(numbers_in("1,2"), vec!["1", "2"]);
    }

    #[test]
    fn hyphen_inside_words_is_not_a_sign() {
        assert_eq!(
            extract("a 3-4 split gives x-5", Kind::Number).as_deref(),
            Some("5")
        );
    }

    #[test]
    fn no_number_means_none() {
        assert_eq!(extract("I do not know.", Kind::Number), None);
    }

    #[test]
    fn normalised_numbers_compare_equal() {
        assert!(same("1,234.50", "1234.5", Kind::Number));
        assert!(same("-0", "0", Kind::Number));
        assert!(same("0.750", "3/4", Kind::Number));
        assert!(!same("12", "13", Kind::Number));
        assert_eq!(normalize_number("12."), Some("12".into()));
        assert_eq!(normalize_number("1/0"), None);
        assert_eq!(normalize_number("abc"), None);
    }

    #[test]
    fn choice_letters() {
        assert_eq!(extract("Answer: (B)", Kind::Choice).as_deref(), Some("B"));
        assert_eq!(
            extract("The answer is C.", Kind::Choice).as_deref(),
            Some("C")
        );
        assert_eq!(extract("D", Kind::Choice).as_deref(), Some("D"));
        assert_eq!(
            extract("I pick option b? No, option D", Kind::Choice).as_deref(),
            Some("D")
        );
        assert_eq!(
            extract("A plumber thinks. Between B and C, it is C", Kind::Choice).as_deref(),
            Some("C")
        );
        assert_eq!(extract("no letter here", Kind::Choice), None);
    }

    #[test]
    fn text_after_marker_or_last_line() {
        assert_eq!(
            extract("thinking...\nAnswer: Paris.", Kind::Text).as_deref(),
            Some("paris")
        );
        assert_eq!(
            extract("x\n\n  The  Moon \n", Kind::Text).as_deref(),
            Some("the moon")
        );
        assert_eq!(extract("   ", Kind::Text), None);
    }

    #[test]
    fn gold_labels_normalise_like_extracted_answers() {
        for (gold, text) in [("15000", "= 15,000"), ("-61", "Answer: -61"), ("B", "(B)")] {
            let kind = if gold == "B" {
                Kind::Choice
            } else {
                Kind::Number
            };
            assert_eq!(Some(normalize(gold, kind)), extract(text, kind), "{gold}");
        }
    }
}
