//! A small recursive-descent evaluator for arithmetic expressions:
//! numbers, `+ - * /`, parentheses and unary signs, in f64.

/// Evaluates `src`, or says where it stopped making sense.
pub fn eval(src: &str) -> Result<f64, String> {
    let tokens: Vec<char> = src.chars().filter(|c| !c.is_whitespace()).collect();
    let mut p = Parser { t: &tokens, i: 0 };
    let v = p.sum()?;
    if p.i != tokens.len() {
        return Err(format!("unexpected {:?} at position {}", tokens[p.i], p.i));
    }
    Ok(v)
}

/// The arithmetic expression a prompt consists of, if it is one (an optional
/// leading instruction word and a final period or question mark allowed).
pub fn expression_in_prompt(prompt: &str) -> Option<String> {
    let body = prompt.trim().trim_end_matches(['.', '?', '=']).trim();
    let start = body.find(|c: char| c.is_ascii_digit() || "(-+".contains(c))?;
    let (head, expr) = body.split_at(start);
    if head.split_whitespace().count() > 3 || expr.chars().any(|c| c.is_alphabetic()) {
        return None;
    }
    eval(expr).ok().map(|_| expr.to_string())
}

struct Parser<'a> {
    t: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.t.get(self.i).copied()
    }
    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let r = self.product()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }
    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        while let Some(op @ ('*' | '/' | '×' | '÷')) = self.peek() {
            self.i += 1;
            let r = self.unary()?;
            v = if op == '*' || op == '×' {
                v * r
            } else {
                v / r
            };
        }
        Ok(v)
    }
    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some('-') => {
                self.i += 1;
                Ok(-self.unary()?)
            }
            Some('+') => {
                self.i += 1;
                self.unary()
            }
            _ => self.atom(),
        }
    }
    fn atom(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some('(') => {
                self.i += 1;
                let v = self.sum()?;
                if self.peek() != Some(')') {
                    return Err(format!("missing ')' at position {}", self.i));
                }
                self.i += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == ',')
                {
                    self.i += 1;
                }
                let s: String = self.t[start..self.i]
                    .iter()
                    .filter(|c| **c != ',')
                    .collect();
                s.parse().map_err(|_| format!("bad number {s:?}"))
            }
            Some(c) => Err(format!("unexpected {c:?} at position {}", self.i)),
            None => Err("unexpected end of expression".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The evaluator on precedence, signs and errors.
    use super::*;

    #[test]
    fn precedence_and_signs() {
        assert_eq!(eval("-9 / 3 + 8 * -8 - -6").unwrap(), -61.0);
        assert_eq!(eval("-( -17 + -391 )").unwrap(), 408.0);
        assert_eq!(eval("2*(3+4)").unwrap(), 14.0);
        assert!(eval("2*(3+4").is_err());
        assert!(eval("2 x 3").is_err());
    }

    #[test]
    fn prompts_that_are_expressions() {
        assert_eq!(
            expression_in_prompt("Calculate ( 952 - 894 ).").as_deref(),
            Some("( 952 - 894 )")
        );
        assert_eq!(
            expression_in_prompt("How many apples are 3 + 4 apples?"),
            None
        );
    }
}
