//! Rule conditions: `cpa > 20`, `duplicates / events > 0.05`,
//! `conversions < 3 and sessions >= 200`.
//!
//! ```text
//! condition := or
//! or        := and ("or" and)*
//! and       := not ("and" not)*
//! not       := "not" not | compare
//! compare   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum       := product (("+" | "-") product)*
//! product   := unary (("*" | "/") unary)*
//! unary     := "-" unary | atom
//! atom      := number | name | "(" condition ")"
//! ```
//!
//! Names are the KPIs of `/v1/kpis` (see [`Metric`]). Values are numbers or *unknown*: a
//! ratio with a zero denominator, spend without spend records, a division by zero. A
//! comparison with an unknown side is false, and so is a condition with no data: a rule
//! never fires on what it cannot know (an empty window is not a zero). `not` of an unknown
//! comparison is false too (three-valued logic: unknown stays unknown).
//!
//! Every name is checked when the rule is loaded; a typo is an error naming the position,
//! never a condition that is silently always false. Expressions are bounded (length,
//! nesting) because rules files may come from many hands.

use super::notification::Unit;
use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 1_000;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// A KPI a condition can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Accepted events of every type.
    Events,
    /// Accepted events of one built-in type (index into `KpiCounters::events`).
    EventType(usize),
    Sessions,
    ConvertingSessions,
    Conversions,
    Revenue,
    Spend,
    Cpa,
    Aov,
    ConversionRate,
    Flagged,
    Duplicates,
    Late,
    /// Records in the log not yet in the KPIs (system-wide: rules without `group_by`).
    LagEvents,
    /// Seconds from intake to KPIs, 99th percentile of the last five minutes
    /// (system-wide).
    E2eLatency,
}

impl Metric {
    /// Every name, for error messages and documentation.
    pub const NAMES: [&'static str; 20] = [
        "events",
        "page_view",
        "add_to_cart",
        "registration",
        "checkout",
        "purchase",
        "lead",
        "sessions",
        "converting_sessions",
        "conversions",
        "revenue",
        "spend",
        "cpa",
        "aov",
        "conversion_rate",
        "flagged",
        "duplicates",
        "late",
        "lag_events",
        "e2e_latency",
    ];

    pub fn from_name(name: &str) -> Option<Metric> {
        Some(match name {
            "events" => Metric::Events,
            "page_view" => Metric::EventType(0),
            "add_to_cart" => Metric::EventType(1),
            "registration" => Metric::EventType(2),
            "checkout" => Metric::EventType(3),
            "purchase" => Metric::EventType(4),
            "lead" => Metric::EventType(5),
            "sessions" => Metric::Sessions,
            "converting_sessions" => Metric::ConvertingSessions,
            "conversions" => Metric::Conversions,
            "revenue" => Metric::Revenue,
            "spend" => Metric::Spend,
            "cpa" => Metric::Cpa,
            "aov" => Metric::Aov,
            "conversion_rate" => Metric::ConversionRate,
            "flagged" => Metric::Flagged,
            "duplicates" => Metric::Duplicates,
            "late" => Metric::Late,
            "lag_events" => Metric::LagEvents,
            "e2e_latency" => Metric::E2eLatency,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::EventType(i) => [
                "page_view",
                "add_to_cart",
                "registration",
                "checkout",
                "purchase",
                "lead",
            ]
            .get(i)
            .copied()
            .unwrap_or("events"),
            Metric::Sessions => "sessions",
            Metric::ConvertingSessions => "converting_sessions",
            Metric::Conversions => "conversions",
            Metric::Revenue => "revenue",
            Metric::Spend => "spend",
            Metric::Cpa => "cpa",
            Metric::Aov => "aov",
            Metric::ConversionRate => "conversion_rate",
            Metric::Flagged => "flagged",
            Metric::Duplicates => "duplicates",
            Metric::Late => "late",
            Metric::LagEvents => "lag_events",
            Metric::E2eLatency => "e2e_latency",
        }
    }

    /// Whether the metric describes the whole system, not a group of traffic.
    pub fn is_system(self) -> bool {
        matches!(self, Metric::LagEvents | Metric::E2eLatency)
    }

    /// Whether the metric is spend or derived from it (spend has only channel and
    /// campaign: such a rule cannot group by device or region).
    pub fn uses_spend(self) -> bool {
        matches!(self, Metric::Spend | Metric::Cpa)
    }

    pub fn unit(self) -> Unit {
        match self {
            Metric::Revenue | Metric::Spend | Metric::Cpa | Metric::Aov => Unit::Money,
            Metric::ConversionRate => Unit::Ratio,
            Metric::E2eLatency => Unit::Seconds,
            _ => Unit::Count,
        }
    }
}

/// Where metric values come from when a condition is evaluated.
pub trait Values {
    /// The metric's value; `None` when unknown.
    fn value(&self, metric: Metric) -> Option<f64>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        }
    }

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CompareOp::Lt => a < b,
            CompareOp::Le => a <= b,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a >= b,
            CompareOp::Eq => a == b,
            CompareOp::Ne => a != b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A numeric expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Num {
    Const(f64),
    Metric(Metric),
    Neg(Box<Num>),
    Arith(ArithOp, Box<Num>, Box<Num>),
}

/// A condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Compare(CompareOp, Num, Num),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

impl Num {
    pub fn eval(&self, values: &dyn Values) -> Option<f64> {
        let v = match self {
            Num::Const(c) => *c,
            Num::Metric(m) => values.value(*m)?,
            Num::Neg(inner) => -inner.eval(values)?,
            Num::Arith(op, a, b) => {
                let (a, b) = (a.eval(values)?, b.eval(values)?);
                match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div if b == 0.0 => return None,
                    ArithOp::Div => a / b,
                }
            }
        };
        v.is_finite().then_some(v)
    }

    fn metrics(&self, out: &mut Vec<Metric>) {
        match self {
            Num::Const(_) => {}
            Num::Metric(m) => out.push(*m),
            Num::Neg(inner) => inner.metrics(out),
            Num::Arith(_, a, b) => {
                a.metrics(out);
                b.metrics(out);
            }
        }
    }

    /// The unit of the value: a metric's own, a ratio for count / count.
    fn unit(&self) -> Unit {
        match self {
            Num::Const(_) => Unit::Count,
            Num::Metric(m) => m.unit(),
            Num::Neg(inner) => inner.unit(),
            Num::Arith(ArithOp::Div, a, b) => match (a.unit(), b.unit()) {
                (Unit::Count, Unit::Count) => Unit::Ratio,
                (unit, Unit::Count) => unit,
                _ => Unit::Count,
            },
            Num::Arith(_, a, _) => a.unit(),
        }
    }
}

impl Cond {
    /// `Some(true/false)`, or `None` when a value it needs is unknown.
    pub fn eval(&self, values: &dyn Values) -> Option<bool> {
        match self {
            Cond::Compare(op, a, b) => Some(op.holds(a.eval(values)?, b.eval(values)?)),
            Cond::And(a, b) => match (a.eval(values), b.eval(values)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Cond::Or(a, b) => match (a.eval(values), b.eval(values)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Cond::Not(inner) => inner.eval(values).map(|v| !v),
        }
    }

    /// Whether the condition holds: unknown counts as not.
    pub fn holds(&self, values: &dyn Values) -> bool {
        self.eval(values) == Some(true)
    }

    /// Every metric it names.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.dedup();
        out
    }

    fn collect(&self, out: &mut Vec<Metric>) {
        match self {
            Cond::Compare(_, a, b) => {
                a.metrics(out);
                b.metrics(out);
            }
            Cond::And(a, b) | Cond::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Cond::Not(inner) => inner.collect(out),
        }
    }

    /// The first comparison: what the rule measures (left) against what (right, when a
    /// constant). Notifications show these.
    pub fn headline(&self) -> (&Num, Option<f64>) {
        match self {
            Cond::Compare(_, a, Num::Const(c)) => (a, Some(*c)),
            Cond::Compare(_, a, _) => (a, None),
            Cond::And(a, _) | Cond::Or(a, _) | Cond::Not(a) => a.headline(),
        }
    }

    /// The unit of the measured side of the first comparison.
    pub fn unit(&self) -> Unit {
        self.headline().0.unit()
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Const(c) => write!(f, "{c}"),
            Num::Metric(m) => f.write_str(m.name()),
            Num::Neg(inner) => write!(f, "-{inner}"),
            Num::Arith(op, a, b) => {
                let symbol = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                };
                write!(f, "({a} {symbol} {b})")
            }
        }
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cond::Compare(op, a, b) => write!(f, "{a} {} {b}", op.symbol()),
            Cond::And(a, b) => write!(f, "({a} and {b})"),
            Cond::Or(a, b) => write!(f, "({a} or {b})"),
            Cond::Not(inner) => write!(f, "not {inner}"),
        }
    }
}

/// Why a condition does not parse: what and where (a byte offset into the text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}")]
pub struct ExprError {
    pub position: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Op(&'static str),
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let number: f64 = text[start..i].parse().map_err(|_| ExprError {
                position: start,
                message: format!("{:?} is not a number", &text[start..i]),
            })?;
            // Past the largest double it parses as infinity, which evaluates to unknown:
            // the condition could never hold.
            if !number.is_finite() {
                return Err(ExprError {
                    position: start,
                    message: format!("a number of {} digits is too large", i - start),
                });
            }
            out.push((start, Token::Number(number)));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Token::Name(text[start..i].to_ascii_lowercase())));
            continue;
        }
        let two = text.get(i..i + 2);
        let op = match (two, c) {
            (Some("<="), _) => "<=",
            (Some(">="), _) => ">=",
            (Some("=="), _) => "==",
            (Some("!="), _) => "!=",
            (_, b'<') => "<",
            (_, b'>') => ">",
            (_, b'+') => "+",
            (_, b'-') => "-",
            (_, b'*') => "*",
            (_, b'/') => "/",
            (_, b'(') => {
                out.push((start, Token::Open));
                i += 1;
                continue;
            }
            (_, b')') => {
                out.push((start, Token::Close));
                i += 1;
                continue;
            }
            _ => {
                let shown = text[i..].chars().next().unwrap_or('?');
                return Err(ExprError {
                    position: start,
                    message: format!("unexpected {shown:?}"),
                });
            }
        };
        i += op.len();
        out.push((start, Token::Op(op)));
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(p, _)| *p)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            position: self.position(),
            message: message.into(),
        })
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Name(n)) if n == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Cond, ExprError> {
        self.enter()?;
        let mut left = self.and()?;
        while self.keyword("or") {
            let right = self.and()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond, ExprError> {
        let mut left = self.not()?;
        while self.keyword("and") {
            let right = self.not()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Cond, ExprError> {
        if self.keyword("not") {
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Cond, ExprError> {
        // A parenthesised condition: `(a > 1 or b > 2)`. Tried first; if what follows the
        // parenthesis is a comparison operator, it was a number in parentheses instead.
        if self.peek() == Some(&Token::Open) {
            let saved = self.at;
            self.at += 1;
            if let Ok(inner) = self.or()
                && self.peek() == Some(&Token::Close)
            {
                self.at += 1;
                if !matches!(self.peek(), Some(Token::Op(op)) if is_compare(op) || is_arith(op)) {
                    return Ok(inner);
                }
            }
            self.at = saved;
        }
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Token::Op(op)) if is_compare(op) => *op,
            _ => return self.error("expected a comparison (<, <=, >, >=, ==, !=)"),
        };
        self.at += 1;
        let right = self.sum()?;
        let op = match op {
            "<" => CompareOp::Lt,
            "<=" => CompareOp::Le,
            ">" => CompareOp::Gt,
            ">=" => CompareOp::Ge,
            "==" => CompareOp::Eq,
            _ => CompareOp::Ne,
        };
        Ok(Cond::Compare(op, left, right))
    }

    fn sum(&mut self) -> Result<Num, ExprError> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Some(Token::Op("+")) => ArithOp::Add,
                Some(Token::Op("-")) => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.product()?;
            left = Num::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn product(&mut self) -> Result<Num, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Op("*")) => ArithOp::Mul,
                Some(Token::Op("/")) => ArithOp::Div,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.unary()?;
            left = Num::Arith(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Num, ExprError> {
        if self.peek() == Some(&Token::Op("-")) {
            self.at += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Num::Neg(Box::new(inner)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Num, ExprError> {
        match self.peek().cloned() {
            Some(Token::Number(n)) => {
                self.at += 1;
                Ok(Num::Const(n))
            }
            Some(Token::Name(name)) => match Metric::from_name(&name) {
                Some(metric) => {
                    self.at += 1;
                    Ok(Num::Metric(metric))
                }
                None => self.error(format!(
                    "unknown KPI {name:?}; known: {}",
                    Metric::NAMES.join(", ")
                )),
            },
            Some(Token::Open) => {
                self.at += 1;
                self.enter()?;
                let inner = self.sum()?;
                self.depth -= 1;
                if self.peek() != Some(&Token::Close) {
                    return self.error("expected \")\"");
                }
                self.at += 1;
                Ok(inner)
            }
            Some(other) => self.error(format!("expected a number or a KPI, found {other:?}")),
            None => self.error("expected a number or a KPI, found the end"),
        }
    }
}

fn is_compare(op: &str) -> bool {
    matches!(op, "<" | "<=" | ">" | ">=" | "==" | "!=")
}

fn is_arith(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/")
}

/// Parses a condition.
pub fn parse(text: &str) -> Result<Cond, ExprError> {
    if text.len() > MAX_EXPR_LEN {
        return Err(ExprError {
            position: MAX_EXPR_LEN,
            message: format!("longer than {MAX_EXPR_LEN} bytes"),
        });
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        at: 0,
        end: text.len(),
        depth: 0,
    };
    if parser.tokens.is_empty() {
        return parser.error("empty condition");
    }
    let cond = parser.or()?;
    if parser.at != parser.tokens.len() {
        return parser.error("unexpected text after the condition");
    }
    Ok(cond)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, f64>);

    impl Values for Map {
        fn value(&self, metric: Metric) -> Option<f64> {
            self.0.get(metric.name()).copied()
        }
    }

    fn values(pairs: &[(&'static str, f64)]) -> Map {
        Map(pairs.iter().copied().collect())
    }

    #[test]
    fn the_issue_examples_parse_and_evaluate() {
        let v = values(&[("cpa", 23.4), ("duplicates", 30.0), ("events", 400.0)]);
        assert!(parse("cpa > 20").unwrap().holds(&v));
        assert!(!parse("cpa < 17").unwrap().holds(&v));
        assert!(parse("duplicates / events > 0.05").unwrap().holds(&v));
        assert!(parse("(duplicates / events) >= 0.075").unwrap().holds(&v));
        assert!(
            parse("cpa > 20 and (events > 1000 or duplicates > 10)")
                .unwrap()
                .holds(&v)
        );
        assert!(!parse("not cpa > 20").unwrap().holds(&v));
        assert!(parse("-cpa < -20").unwrap().holds(&v));
        assert!(
            parse("CPA > 2 * 10").unwrap().holds(&v),
            "names in any case"
        );
    }

    /// The bug: a literal past the largest double (310 digits fit in an expression) was
    /// taken as infinity, which evaluates to "unknown": the rule was accepted and could
    /// never fire, nor could its negation.
    #[test]
    fn a_number_too_large_for_a_double_is_refused() {
        let huge = format!("1{}", "0".repeat(400));
        let error = parse(&format!("revenue < {huge}")).unwrap_err();
        assert_eq!(error.position, 10, "{error:?}");
        assert!(error.message.contains("too large"), "{error:?}");
        // The largest finite ones still parse.
        assert!(parse(&format!("revenue < 1{}", "0".repeat(300))).is_ok());
    }

    #[test]
    fn unknown_values_never_make_a_condition_hold() {
        // No spend records: cpa unknown. Neither `cpa > 20` nor its negation holds.
        let v = values(&[("events", 0.0), ("duplicates", 0.0)]);
        assert!(!parse("cpa > 20").unwrap().holds(&v));
        assert!(!parse("not cpa > 20").unwrap().holds(&v));
        assert!(!parse("cpa <= 20").unwrap().holds(&v));
        // Division by zero is unknown, not infinity.
        assert!(!parse("duplicates / events > 0.05").unwrap().holds(&v));
        assert!(!parse("duplicates / events <= 0.05").unwrap().holds(&v));
        // But `or` with a true side holds, and `and` with a false side is false.
        assert!(parse("cpa > 20 or events == 0").unwrap().holds(&v));
        assert_eq!(
            parse("cpa > 20 and events > 0").unwrap().eval(&v),
            Some(false)
        );
    }

    #[test]
    fn errors_name_the_problem_and_where() {
        let e = parse("cpaa > 20").unwrap_err();
        assert_eq!(e.position, 0);
        assert!(e.message.contains("unknown KPI \"cpaa\""), "{e}");
        let e = parse("cpa > ").unwrap_err();
        assert_eq!(e.position, 6);
        assert!(parse("cpa").unwrap_err().message.contains("comparison"));
        assert!(parse("cpa > 20 20").unwrap_err().message.contains("after"));
        assert!(
            parse("cpa > 2€")
                .unwrap_err()
                .message
                .contains("unexpected")
        );
        assert!(parse("").is_err());
        assert!(parse(&"(".repeat(100)).is_err());
        assert!(parse(&"-".repeat(100)).is_err());
        assert!(
            parse(&"x".repeat(2_000))
                .unwrap_err()
                .message
                .contains("longer")
        );
        assert!(
            parse("1.2.3 > 1")
                .unwrap_err()
                .message
                .contains("not a number")
        );
    }

    #[test]
    fn the_headline_and_unit_come_from_the_first_comparison() {
        let c = parse("cpa > 20 and conversions >= 3").unwrap();
        assert_eq!(c.headline().1, Some(20.0));
        assert_eq!(c.unit(), Unit::Money);
        assert_eq!(
            parse("duplicates / events > 0.05").unwrap().unit(),
            Unit::Ratio
        );
        assert_eq!(parse("conversions < 1").unwrap().unit(), Unit::Count);
        assert_eq!(
            parse("cpa > 20 and conversions >= 3").unwrap().metrics(),
            vec![Metric::Cpa, Metric::Conversions]
        );
        assert_eq!(
            parse("(duplicates / events) > 0.05").unwrap().to_string(),
            "(duplicates / events) > 0.05"
        );
    }
}
