//! Boolean and arithmetic expressions over rule names, as SpamAssassin's `meta` rules
//! write them (`(A || B) && !C`, `A + B + C > 1`), also used for its `if` conditions.
//! Parsed once into postfix form; evaluation is a loop over a small stack.

use std::fmt;

/// One step of a compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Num(f64),
    Var(u32),
    Not,
    Neg,
    Bin(BinOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    Add,
    Sub,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Mul | BinOp::Div => 6,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => 4,
            BinOp::Eq | BinOp::Ne => 3,
            BinOp::And => 2,
            BinOp::Or => 1,
        }
    }

    fn apply(self, a: f64, b: f64) -> f64 {
        let t = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            BinOp::Mul => a * b,
            BinOp::Div => {
                if b == 0.0 {
                    0.0
                } else {
                    a / b
                }
            }
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Lt => t(a < b),
            BinOp::Gt => t(a > b),
            BinOp::Le => t(a <= b),
            BinOp::Ge => t(a >= b),
            BinOp::Eq => t(a == b),
            BinOp::Ne => t(a != b),
            // Perl's && and || yield an operand, not a boolean.
            BinOp::And => {
                if a != 0.0 {
                    b
                } else {
                    a
                }
            }
            BinOp::Or => {
                if a != 0.0 {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// A parse error with the offset it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub at: usize,
    pub message: &'static str,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.message, self.at)
    }
}

impl std::error::Error for ExprError {}

/// A compiled expression: postfix operations over variables numbered by the resolver.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    Num(f64),
    Ident(&'a str),
    Not,
    Minus,
    Bin(BinOp),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<(usize, Token<'_>)>, ExprError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = if i + 1 < b.len() {
            &b[i..i + 2]
        } else {
            &b[i..]
        };
        let tok = match two {
            b"&&" => Some((2, Token::Bin(BinOp::And))),
            b"||" => Some((2, Token::Bin(BinOp::Or))),
            b"<=" => Some((2, Token::Bin(BinOp::Le))),
            b">=" => Some((2, Token::Bin(BinOp::Ge))),
            b"==" => Some((2, Token::Bin(BinOp::Eq))),
            b"!=" => Some((2, Token::Bin(BinOp::Ne))),
            _ => None,
        };
        if let Some((n, t)) = tok {
            out.push((start, t));
            i += n;
            continue;
        }
        let t = match c {
            b'!' => Token::Not,
            b'-' => Token::Minus,
            b'+' => Token::Bin(BinOp::Add),
            b'*' => Token::Bin(BinOp::Mul),
            b'/' => Token::Bin(BinOp::Div),
            b'<' => Token::Bin(BinOp::Lt),
            b'>' => Token::Bin(BinOp::Gt),
            b'(' => Token::Open,
            b')' => Token::Close,
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                let text: String = s[start..i].chars().filter(|&c| c != '_').collect();
                let v = text.parse::<f64>().map_err(|_| ExprError {
                    at: start,
                    message: "bad number",
                })?;
                out.push((start, Token::Num(v)));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, Token::Ident(&s[start..i])));
                continue;
            }
            _ => {
                return Err(ExprError {
                    at: start,
                    message: "unexpected character",
                });
            }
        };
        out.push((start, t));
        i += 1;
    }
    Ok(out)
}

enum Stacked {
    Open,
    Not,
    Neg,
    Bin(BinOp),
}

/// Parses `s`, naming each identifier through `resolve` (which returns its variable
/// number).
pub fn parse(s: &str, mut resolve: impl FnMut(&str) -> u32) -> Result<Expr, ExprError> {
    let tokens = tokenize(s)?;
    let mut ops = Vec::with_capacity(tokens.len());
    let mut stack: Vec<Stacked> = Vec::new();
    // True where an operand is expected (so `-` and `!` are unary).
    let mut want_operand = true;
    let end = s.len();
    for (at, tok) in tokens {
        match tok {
            Token::Num(_) | Token::Ident(_) if !want_operand => {
                return Err(ExprError {
                    at,
                    message: "missing operator",
                });
            }
            Token::Num(v) => {
                ops.push(Op::Num(v));
                want_operand = false;
            }
            Token::Ident(name) => {
                ops.push(Op::Var(resolve(name)));
                want_operand = false;
            }
            Token::Not if want_operand => stack.push(Stacked::Not),
            Token::Minus if want_operand => stack.push(Stacked::Neg),
            Token::Open if want_operand => stack.push(Stacked::Open),
            Token::Close if !want_operand => {
                loop {
                    match stack.pop() {
                        Some(Stacked::Open) => break,
                        Some(s) => push_stacked(&mut ops, s),
                        None => {
                            return Err(ExprError {
                                at,
                                message: "unbalanced ')'",
                            });
                        }
                    }
                }
                want_operand = false;
            }
            Token::Bin(_) | Token::Minus if !want_operand => {
                let op = match tok {
                    Token::Bin(op) => op,
                    _ => BinOp::Sub,
                };
                while let Some(top) = stack.last() {
                    let higher = match top {
                        Stacked::Not | Stacked::Neg => true,
                        Stacked::Bin(o) => o.precedence() >= op.precedence(),
                        Stacked::Open => false,
                    };
                    if !higher {
                        break;
                    }
                    if let Some(s) = stack.pop() {
                        push_stacked(&mut ops, s);
                    }
                }
                stack.push(Stacked::Bin(op));
                want_operand = true;
            }
            _ => {
                return Err(ExprError {
                    at,
                    message: if want_operand {
                        "operand expected"
                    } else {
                        "operator expected"
                    },
                });
            }
        }
    }
    if want_operand {
        return Err(ExprError {
            at: end,
            message: "expression ends early",
        });
    }
    while let Some(s) = stack.pop() {
        if matches!(s, Stacked::Open) {
            return Err(ExprError {
                at: end,
                message: "unbalanced '('",
            });
        }
        push_stacked(&mut ops, s);
    }
    Ok(Expr { ops })
}

fn push_stacked(ops: &mut Vec<Op>, s: Stacked) {
    match s {
        Stacked::Not => ops.push(Op::Not),
        Stacked::Neg => ops.push(Op::Neg),
        Stacked::Bin(b) => ops.push(Op::Bin(b)),
        Stacked::Open => {}
    }
}

impl Expr {
    /// Evaluates with `values[var]` for each variable; `stack` is scratch space.
    pub fn eval(&self, values: &[f64], stack: &mut Vec<f64>) -> f64 {
        stack.clear();
        for op in &self.ops {
            match *op {
                Op::Num(v) => stack.push(v),
                Op::Var(i) => stack.push(values.get(i as usize).copied().unwrap_or(0.0)),
                Op::Not => {
                    let a = stack.pop().unwrap_or(0.0);
                    stack.push(if a == 0.0 { 1.0 } else { 0.0 });
                }
                Op::Neg => {
                    let a = stack.pop().unwrap_or(0.0);
                    stack.push(-a);
                }
                Op::Bin(b) => {
                    let y = stack.pop().unwrap_or(0.0);
                    let x = stack.pop().unwrap_or(0.0);
                    stack.push(b.apply(x, y));
                }
            }
        }
        stack.pop().unwrap_or(0.0)
    }

    /// The variables the expression reads.
    pub fn vars(&self) -> impl Iterator<Item = u32> + '_ {
        self.ops.iter().filter_map(|o| match o {
            Op::Var(v) => Some(*v),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str, vars: &[(&str, f64)]) -> f64 {
        let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
        let e = parse(s, |n| {
            names.iter().position(|x| *x == n).unwrap_or(999) as u32
        })
        .unwrap_or_else(|e| panic!("{s}: {e}"));
        let values: Vec<f64> = vars.iter().map(|(_, v)| *v).collect();
        e.eval(&values, &mut Vec::new())
    }

    #[test]
    fn boolean_and_arithmetic_meta_rules() {
        let v = [("A", 1.0), ("B", 0.0), ("C", 1.0)];
        assert_eq!(eval("A && B", &v), 0.0);
        assert_eq!(eval("A || B", &v), 1.0);
        assert_eq!(eval("(A || B) && !C", &v), 0.0);
        assert_eq!(eval("A && !B", &v), 1.0);
        assert_eq!(eval("A + B + C > 1", &v), 1.0);
        assert_eq!(eval("A + B + C >= 3", &v), 0.0);
        assert_eq!(eval("2 * A - C == 1", &v), 1.0);
        assert_eq!(eval("-A + 2", &v), 1.0);
        assert_eq!(eval("!(A && C)", &v), 0.0);
        assert_eq!(eval("UNKNOWN || A", &v), 1.0);
        assert_eq!(eval("A / 0", &v), 0.0);
        assert_eq!(eval("version >= 3.004000", &[("version", 4.000001)]), 1.0);
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in ["A &&", "(A", "A)", "A B", "&& A", "A $ B", "", "()"] {
            assert!(parse(bad, |_| 0).is_err(), "{bad:?} parsed");
        }
    }
}
