//! `numeric-check`: checks a numeric answer against the task's checker.
//!
//! The checker (`task.checker`, JSON) may give any of:
//! - `"expression"`: an arithmetic expression (`+ - * /`, parentheses, unary
//!   minus) whose value the answer must equal (re-derivation);
//! - `"min"` / `"max"`: an inclusive range;
//! - `"integer": true`: the answer must be a whole number.
//!
//! With `derive_from_prompt` in the plugin config, a prompt that is itself an
//! arithmetic expression (after an optional leading instruction word such as
//! `Calculate`) is evaluated when the task gives no expression. Without any
//! check to run the verdict passes with score 0.5 and says so.

use conclave_sdk::answer::normalize_number;
use conclave_sdk::verifier::*;

mod expr;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    derive_from_prompt: bool,
    /// Relative tolerance when comparing with a derived value.
    tolerance: Option<f64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Checker {
    expression: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    integer: bool,
}

/// Parses a normalised number (`-12`, `0.75`, `1/3`) as f64.
fn value(answer: &str) -> Option<f64> {
    let n = normalize_number(answer)?;
    match n.split_once('/') {
        Some((a, b)) => Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?),
        None => n.parse().ok(),
    }
}

struct NumericCheck;

impl Verifier for NumericCheck {
    fn describe() -> Descriptor {
        Descriptor {
            name: "numeric-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Verifier,
            capabilities: vec![Capability::Log],
            description: "Re-derives or range-checks a numeric answer from the task's checker."
                .into(),
        }
    }

    fn verify(task: Task, candidate: Candidate) -> Result<Verdict, PluginError> {
        let config: Config = task.parse_config()?;
        let checker: Checker = match &task.checker {
            Some(json) => conclave_sdk::config::parse(json)
                .map_err(|e| PluginError::InvalidInput(format!("task checker: {e}")))?,
            None => Checker::default(),
        };
        let verdict = |pass: bool, score: f64, reason: String| Verdict {
            verifier: "numeric-check".into(),
            pass,
            score,
            reason,
        };
        let Some(x) = value(&candidate.answer) else {
            return Ok(verdict(
                false,
                0.0,
                format!("{:?} is not a number", candidate.answer),
            ));
        };
        let mut checked = Vec::new();
        let expression = checker.expression.clone().or_else(|| {
            config
                .derive_from_prompt
                .then(|| expr::expression_in_prompt(&task.prompt))
                .flatten()
        });
        if let Some(e) = expression {
            let want = expr::eval(&e).map_err(|err| {
                PluginError::InvalidInput(format!("checker expression {e:?}: {err}"))
            })?;
            let tol = config.tolerance.unwrap_or(1e-9) * want.abs().max(1.0);
            if (x - want).abs() > tol {
                return Ok(verdict(
                    false,
                    0.0,
                    format!("{x} differs from {e} = {want}"),
                ));
            }
            checked.push(format!("equals {e}"));
        }
        if let Some(min) = checker.min {
            if x < min {
                return Ok(verdict(
                    false,
                    0.0,
                    format!("{x} is below the minimum {min}"),
                ));
            }
            checked.push(format!(">= {min}"));
        }
        if let Some(max) = checker.max {
            if x > max {
                return Ok(verdict(
                    false,
                    0.0,
                    format!("{x} is above the maximum {max}"),
                ));
            }
            checked.push(format!("<= {max}"));
        }
        if checker.integer {
            if x.fract() != 0.0 {
                return Ok(verdict(false, 0.0, format!("{x} is not a whole number")));
            }
            checked.push("is whole".into());
        }
        Ok(if checked.is_empty() {
            verdict(true, 0.5, "no numeric check was given for this task".into())
        } else {
            verdict(true, 1.0, format!("{x} {}", checked.join(", ")))
        })
    }
}

export_verifier!(NumericCheck);
