//! The rule condition language: the segment language's tag and attribute
//! predicates, extended with predicates over the customer's events.
//!
//! ```text
//! message contains "询价"
//! count(click where title = "产品介绍", 7d) >= 1
//! streak(group_joined, 3d)
//! no order_paid for 180d
//! customer_added at 18:00–24:00
//! spend >= 100000 AND NOT tag("流失客户")
//! ```
//!
//! Errors carry the column (in characters, from 1) where parsing failed.

use std::fmt;

use chrono::Duration;
use entity::enums::{CustomerEventKind, Gender};

/// Longest condition, in characters.
pub const MAX_LENGTH: usize = 4_000;
/// Deepest nesting.
pub const MAX_DEPTH: usize = 32;
/// Longest window of `count`, `no … for` and `streak`.
pub const MAX_WINDOW_DAYS: i64 = 3_650;

/// Where parsing failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

/// A tag named in a condition, with where it was named (for errors found
/// when names are resolved).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagRef {
    pub name: TagName,
    pub column: usize,
}

/// A tag by name (in the rule's library) or by id (`#12`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagName {
    Name(String),
    Id(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Gt,
    Eq,
    Le,
    Lt,
}

impl Cmp {
    pub fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Cmp::Ge => left >= right,
            Cmp::Gt => left > right,
            Cmp::Eq => left == right,
            Cmp::Le => left <= right,
            Cmp::Lt => left < right,
        }
    }
}

/// How an event field is matched in `count(kind where …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldMatch {
    Equals(String),
    Contains(String),
}

/// An event filter: a kind and optionally one field condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub kind: CustomerEventKind,
    pub field: Option<(String, FieldMatch)>,
}

/// A numeric customer attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberAttr {
    /// Total spend in cents (分).
    Spend,
    Orders,
    /// Age in whole years.
    Age,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Tag(TagRef),
    City(String),
    Channel(String),
    Gender(Gender),
    Number(NumberAttr, Cmp, i64),
    /// The newest message contains the text (case-insensitive).
    MessageContains(String),
    /// The newest message matches the regular expression.
    MessageMatches(String),
    /// Events matching the filter in the window ending now, compared.
    Count {
        filter: EventFilter,
        window: Duration,
        cmp: Cmp,
        n: i64,
    },
    /// An event of the kind on each of the last `days` days (today
    /// included), in the organisation's time zone.
    Streak {
        kind: CustomerEventKind,
        days: i64,
    },
    /// No event of the kind in the window ending now.
    Absent {
        kind: CustomerEventKind,
        window: Duration,
    },
    /// The newest event of the kind happened between two times of day
    /// (minutes after midnight, `from` included, `to` excluded; `from >
    /// to` wraps past midnight), in the organisation's time zone.
    TimeOfDay {
        kind: CustomerEventKind,
        from: u32,
        to: u32,
    },
}

impl Condition {
    /// Visits the condition and every sub-condition, parents first.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Condition)) {
        visit(self);
        match self {
            Condition::And(items) | Condition::Or(items) => items.iter().for_each(|i| i.walk(visit)),
            Condition::Not(inner) => inner.walk(visit),
            _ => {}
        }
    }

    /// Every tag the condition names.
    pub fn tags(&self) -> Vec<&TagRef> {
        let mut out = Vec::new();
        self.walk(&mut |c| {
            if let Condition::Tag(t) = c {
                out.push(t);
            }
        });
        out
    }

    /// The event kinds the condition looks at: an event of one of these
    /// kinds may change its value.
    pub fn event_kinds(&self) -> Vec<CustomerEventKind> {
        let mut out = Vec::new();
        self.walk(&mut |c| match c {
            Condition::MessageContains(_) | Condition::MessageMatches(_) => {
                out.push(CustomerEventKind::MessageReceived)
            }
            Condition::Count { filter, .. } => out.push(filter.kind),
            Condition::Streak { kind, .. } | Condition::Absent { kind, .. } | Condition::TimeOfDay { kind, .. } => {
                out.push(*kind)
            }
            _ => {}
        });
        out.sort_by_key(|k| k.as_str());
        out.dedup();
        out
    }
}

/// Event kinds by the names the language uses.
const KIND_NAMES: &[(&str, CustomerEventKind)] = &[
    ("message", CustomerEventKind::MessageReceived),
    ("message_received", CustomerEventKind::MessageReceived),
    ("click", CustomerEventKind::LinkClicked),
    ("link_clicked", CustomerEventKind::LinkClicked),
    ("group_joined", CustomerEventKind::GroupJoined),
    ("group_left", CustomerEventKind::GroupLeft),
    ("order_paid", CustomerEventKind::OrderPaid),
    ("customer_added", CustomerEventKind::CustomerAdded),
    ("form_submitted", CustomerEventKind::FormSubmitted),
    ("custom", CustomerEventKind::Custom),
];

/// Event fields a `where` may test.
const EVENT_FIELDS: &[&str] = &["text", "url", "title", "group", "amount", "orderId", "channel", "form", "name"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Int(i64),
    /// `7d`, `24h`.
    Span(Duration, String),
    /// `18:00`, in minutes.
    Clock(u32),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    Hash,
    Dash,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Span(_, raw) => format!("`{raw}`"),
            Tok::Clock(m) => format!("`{:02}:{:02}`", m / 60, m % 60),
            Tok::Op(op) => format!("`{op}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Hash => "`#`".into(),
            Tok::Dash => "`–`".into(),
            Tok::End => "the end".into(),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let fail = |column: usize, message: String| Err(ParseError { column, message });
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => out.push((Tok::LParen, column)),
            ')' => out.push((Tok::RParen, column)),
            ',' => out.push((Tok::Comma, column)),
            '#' => out.push((Tok::Hash, column)),
            '-' | '–' | '—' => out.push((Tok::Dash, column)),
            '>' | '<' | '=' => {
                let op = match (c, chars.get(i + 1)) {
                    ('>', Some('=')) => ">=",
                    ('<', Some('=')) => "<=",
                    ('>', _) => ">",
                    ('<', _) => "<",
                    _ => "=",
                };
                out.push((Tok::Op(op), column));
                i += op.len();
                continue;
            }
            '"' | '“' => {
                let close = if c == '"' { '"' } else { '”' };
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return fail(column, "unterminated string".into()),
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\')) => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(ch) if *ch == close => break,
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((Tok::Str(s), column));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let Ok(n) = digits.parse::<i64>() else { return fail(column, "number too large".into()) };
                if chars.get(i) == Some(&':') {
                    let m_start = i + 1;
                    let m_end = m_start + 2;
                    let minutes: String = chars.get(m_start..m_end).map(|s| s.iter().collect()).unwrap_or_default();
                    let valid = minutes.len() == 2 && minutes.chars().all(|c| c.is_ascii_digit());
                    let mm: u32 = if valid { minutes.parse().unwrap_or(99) } else { 99 };
                    if !(0..=24).contains(&n) || mm > 59 || (n == 24 && mm != 0) {
                        return fail(column, "expected a time of day HH:MM between 00:00 and 24:00".into());
                    }
                    out.push((Tok::Clock(n as u32 * 60 + mm), column));
                    i = m_end;
                    continue;
                }
                if let Some(unit) = chars.get(i).filter(|c| c.is_alphabetic()) {
                    let span = match unit {
                        'd' => Duration::days(n.min(MAX_WINDOW_DAYS + 1)),
                        'h' => Duration::hours(n.min((MAX_WINDOW_DAYS + 1) * 24)),
                        _ => return fail(i + 1, format!("unknown time unit `{unit}`; use d (days) or h (hours)")),
                    };
                    out.push((Tok::Span(span, format!("{digits}{unit}")), column));
                    i += 1;
                    continue;
                }
                out.push((Tok::Int(n), column));
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((Tok::Word(chars[start..i].iter().collect()), column));
                continue;
            }
            other => return fail(column, format!("unexpected character `{other}`")),
        }
        i += 1;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// Parses a condition.
///
/// # Errors
/// [`ParseError`] with the column where parsing failed.
pub fn parse(text: &str) -> Result<Condition, ParseError> {
    if text.chars().count() > MAX_LENGTH {
        return Err(ParseError { column: MAX_LENGTH + 1, message: format!("at most {MAX_LENGTH} characters") });
    }
    if text.trim().is_empty() {
        return Err(ParseError { column: 1, message: "expected a condition, found nothing".into() });
    }
    let mut p = Parser { toks: lex(text)?, pos: 0, depth: 0 };
    let cond = p.or()?;
    if p.peek() != &Tok::End {
        return p.fail("`AND`, `OR` or the end");
    }
    Ok(cond)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn column(&self) -> usize {
        self.toks[self.pos].1
    }

    fn bump(&mut self) -> Tok {
        let tok = self.toks[self.pos].0.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        tok
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: format!("expected {expected}, found {}", self.peek().describe()),
        })
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }

    fn keyword(&mut self, word: &str) -> bool {
        let hit = self.is_word(word);
        if hit {
            self.bump();
        }
        hit
    }

    fn expect_word(&mut self, word: &str) -> Result<(), ParseError> {
        if self.keyword(word) { Ok(()) } else { self.fail(&format!("`{word}`")) }
    }

    fn expect(&mut self, tok: &Tok, expected: &str) -> Result<(), ParseError> {
        if self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn or(&mut self) -> Result<Condition, ParseError> {
        let mut items = vec![self.and()?];
        while self.keyword("OR") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::Or(items) })
    }

    fn and(&mut self) -> Result<Condition, ParseError> {
        let mut items = vec![self.unary()?];
        while self.keyword("AND") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::And(items) })
    }

    fn unary(&mut self) -> Result<Condition, ParseError> {
        if self.keyword("NOT") {
            return self.nested(|p| p.unary()).map(|c| Condition::Not(Box::new(c)));
        }
        self.atom()
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, ParseError>) -> Result<T, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError {
                column: self.column(),
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn atom(&mut self) -> Result<Condition, ParseError> {
        if self.peek() == &Tok::LParen {
            self.bump();
            let inner = self.nested(|p| p.or())?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(inner);
        }
        let Tok::Word(word) = self.peek().clone() else { return self.fail("a condition") };
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "tag" => {
                self.bump();
                self.expect(&Tok::LParen, "`(`")?;
                let tag = self.tag_ref()?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(Condition::Tag(tag))
            }
            "city" | "channel" => {
                self.bump();
                self.expect(&Tok::Op("="), "`=`")?;
                let value = self.string()?;
                Ok(if lower == "city" { Condition::City(value) } else { Condition::Channel(value) })
            }
            "gender" => {
                self.bump();
                self.expect(&Tok::Op("="), "`=`")?;
                let gender = match self.peek() {
                    Tok::Word(w) if w.eq_ignore_ascii_case("FEMALE") => Gender::Female,
                    Tok::Word(w) if w.eq_ignore_ascii_case("MALE") => Gender::Male,
                    Tok::Word(w) if w.eq_ignore_ascii_case("UNKNOWN") => Gender::Unknown,
                    _ => return self.fail("`FEMALE`, `MALE` or `UNKNOWN`"),
                };
                self.bump();
                Ok(Condition::Gender(gender))
            }
            "spend" | "orders" | "age" => {
                self.bump();
                let attr = match lower.as_str() {
                    "spend" => NumberAttr::Spend,
                    "orders" => NumberAttr::Orders,
                    _ => NumberAttr::Age,
                };
                let cmp = self.cmp()?;
                Ok(Condition::Number(attr, cmp, self.int()?))
            }
            "count" => {
                self.bump();
                self.expect(&Tok::LParen, "`(`")?;
                let kind = self.kind()?;
                let field = if self.keyword("where") {
                    let column = self.column();
                    let Tok::Word(field) = self.bump() else {
                        return Err(ParseError { column, message: "expected an event field".into() });
                    };
                    let Some(field) = EVENT_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&field)) else {
                        return Err(ParseError {
                            column,
                            message: format!("unknown event field `{field}`; fields are {}", EVENT_FIELDS.join(", ")),
                        });
                    };
                    let how = if self.keyword("contains") {
                        FieldMatch::Contains(self.string()?)
                    } else {
                        self.expect(&Tok::Op("="), "`=` or `contains`")?;
                        FieldMatch::Equals(self.string()?)
                    };
                    Some(((*field).to_owned(), how))
                } else {
                    None
                };
                self.expect(&Tok::Comma, "`,` or `where`")?;
                let window = self.span()?;
                self.expect(&Tok::RParen, "`)`")?;
                let cmp = self.cmp()?;
                let n = self.int()?;
                Ok(Condition::Count { filter: EventFilter { kind, field }, window, cmp, n })
            }
            "streak" => {
                self.bump();
                self.expect(&Tok::LParen, "`(`")?;
                let kind = self.kind()?;
                self.expect(&Tok::Comma, "`,`")?;
                let column = self.column();
                let span = self.span()?;
                if span.num_hours() % 24 != 0 || span.num_days() < 1 {
                    return Err(ParseError { column, message: "a streak counts whole days, e.g. `3d`".into() });
                }
                self.expect(&Tok::RParen, "`)`")?;
                Ok(Condition::Streak { kind, days: span.num_days() })
            }
            "no" => {
                self.bump();
                let kind = self.kind()?;
                self.expect_word("for")?;
                Ok(Condition::Absent { kind, window: self.span()? })
            }
            "message" if matches!(self.toks.get(self.pos + 1), Some((Tok::Word(w), _)) if w.eq_ignore_ascii_case("contains") || w.eq_ignore_ascii_case("matches")) =>
            {
                self.bump();
                if self.keyword("contains") {
                    Ok(Condition::MessageContains(self.string()?))
                } else {
                    self.bump();
                    let column = self.column();
                    let pattern = self.string()?;
                    if let Err(err) = regex::RegexBuilder::new(&pattern).size_limit(1 << 20).build() {
                        return Err(ParseError { column, message: format!("not a valid regular expression: {err}") });
                    }
                    Ok(Condition::MessageMatches(pattern))
                }
            }
            _ if KIND_NAMES.iter().any(|(n, _)| *n == lower) => {
                let kind = self.kind()?;
                self.expect_word("at")?;
                let from = self.clock()?;
                self.expect(&Tok::Dash, "`–` between two times")?;
                let to = self.clock()?;
                if from == to {
                    return self.fail("a time after the start");
                }
                Ok(Condition::TimeOfDay { kind, from, to })
            }
            _ => self.fail(
                "a condition (`tag`, `message`, `count`, `streak`, `no`, an event kind, `spend`, `orders`, `age`, `city`, `channel`, `gender`)",
            ),
        }
    }

    fn kind(&mut self) -> Result<CustomerEventKind, ParseError> {
        if let Tok::Word(w) = self.peek()
            && let Some((_, kind)) = KIND_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(w))
        {
            let kind = *kind;
            self.bump();
            return Ok(kind);
        }
        self.fail("an event kind (message, click, group_joined, group_left, order_paid, customer_added, form_submitted, custom)")
    }

    fn cmp(&mut self) -> Result<Cmp, ParseError> {
        let cmp = match self.peek() {
            Tok::Op(">=") => Cmp::Ge,
            Tok::Op(">") => Cmp::Gt,
            Tok::Op("=") => Cmp::Eq,
            Tok::Op("<=") => Cmp::Le,
            Tok::Op("<") => Cmp::Lt,
            _ => return self.fail("a comparison (`>=`, `>`, `=`, `<=`, `<`)"),
        };
        self.bump();
        Ok(cmp)
    }

    fn int(&mut self) -> Result<i64, ParseError> {
        match self.peek() {
            Tok::Int(n) => {
                let n = *n;
                self.bump();
                Ok(n)
            }
            _ => self.fail("a number"),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => self.fail("a string in double quotes"),
        }
    }

    fn span(&mut self) -> Result<Duration, ParseError> {
        match self.peek() {
            Tok::Span(span, _) if *span > Duration::zero() && *span <= Duration::days(MAX_WINDOW_DAYS) => {
                let span = *span;
                self.bump();
                Ok(span)
            }
            Tok::Span(..) => self.fail(&format!("a window between 1h and {MAX_WINDOW_DAYS}d")),
            _ => self.fail("a window such as `7d` or `24h`"),
        }
    }

    fn clock(&mut self) -> Result<u32, ParseError> {
        match self.peek() {
            Tok::Clock(m) => {
                let m = *m;
                self.bump();
                Ok(m)
            }
            _ => self.fail("a time of day such as `18:00`"),
        }
    }

    fn tag_ref(&mut self) -> Result<TagRef, ParseError> {
        let column = self.column();
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(TagRef { name: TagName::Name(s), column })
            }
            Tok::Hash => {
                self.bump();
                let id = self.int()?;
                Ok(TagRef { name: TagName::Id(id), column })
            }
            _ => self.fail("a tag name in double quotes or `#id`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ParseError {
        parse(text).unwrap_err()
    }

    #[test]
    fn the_articles_rules_parse() {
        assert_eq!(parse(r#"message contains "询价""#).unwrap(), Condition::MessageContains("询价".into()));
        assert_eq!(
            parse(r#"count(click where title = "产品介绍", 7d) >= 1"#).unwrap(),
            Condition::Count {
                filter: EventFilter {
                    kind: CustomerEventKind::LinkClicked,
                    field: Some(("title".into(), FieldMatch::Equals("产品介绍".into()))),
                },
                window: Duration::days(7),
                cmp: Cmp::Ge,
                n: 1,
            }
        );
        assert_eq!(
            parse("streak(group_joined, 3d)").unwrap(),
            Condition::Streak { kind: CustomerEventKind::GroupJoined, days: 3 }
        );
        assert_eq!(
            parse("no order_paid for 180d").unwrap(),
            Condition::Absent { kind: CustomerEventKind::OrderPaid, window: Duration::days(180) }
        );
        assert_eq!(
            parse("customer_added at 18:00–24:00").unwrap(),
            Condition::TimeOfDay { kind: CustomerEventKind::CustomerAdded, from: 18 * 60, to: 24 * 60 }
        );
        assert_eq!(
            parse(r#"spend >= 100000 AND NOT tag("流失客户")"#).unwrap(),
            Condition::And(vec![
                Condition::Number(NumberAttr::Spend, Cmp::Ge, 100_000),
                Condition::Not(Box::new(Condition::Tag(TagRef {
                    name: TagName::Name("流失客户".into()), column: 29
                }))),
            ])
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_keywords_ignore_case() {
        let c = parse(r#"tag("a") or tag("b") AND message CONTAINS "x""#).unwrap();
        assert!(matches!(c, Condition::Or(ref items) if items.len() == 2 && matches!(items[1], Condition::And(_))));
    }

    #[test]
    fn errors_point_at_the_offending_column() {
        assert_eq!(err(r#"message contains 询价"#).column, 18);
        let e = err("count(click, 7d) >= ");
        assert_eq!(e.column, 21);
        assert!(e.message.contains("a number"), "{e}");
        let e = err("streak(group_join, 3d)");
        assert_eq!(e.column, 8);
        assert!(e.message.contains("event kind"), "{e}");
        let e = err("customer_added at 25:00-26:00");
        assert_eq!(e.column, 19);
        assert_eq!(err("count(click where colour = \"red\", 7d) >= 1").column, 19);
        assert_eq!(err(r#"message matches "(""#).column, 17);
        assert_eq!(err("no order_paid for 0d").column, 19);
        assert_eq!(err("streak(group_joined, 36h)").column, 22);
        assert_eq!(err(r#"tag("a") tag("b")"#).column, 10);
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = format!("{}tag(\"a\"){}", "(".repeat(40), ")".repeat(40));
        assert!(err(&deep).message.contains("nested"));
        assert!(parse(&format!("city = \"{}\"", "深".repeat(MAX_LENGTH))).is_err());
    }

    #[test]
    fn event_kinds_and_tags_are_collected() {
        let c =
            parse(r#"(message contains "a" OR count(click, 1d) > 0) AND tag("x") AND no order_paid for 30d"#).unwrap();
        assert_eq!(
            c.event_kinds(),
            vec![CustomerEventKind::LinkClicked, CustomerEventKind::MessageReceived, CustomerEventKind::OrderPaid]
        );
        assert_eq!(c.tags().len(), 1);
    }
}
