//! The text form of segment expressions: a small recursive-descent parser
//! (errors give the column and what was expected) and a printer of the
//! canonical text. Written by hand: the grammar is tiny, and a generator
//! would make the error messages worse, not better.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use entity::enums::Gender;

use super::expr::{Range, Ref, RefKind, SegmentExpr};
use crate::domain::{SegmentId, TagGroupId, TagId, decode_global};

/// Longest expression accepted, in characters.
pub const MAX_LENGTH: usize = 10_000;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A parse error: 1-based column (in characters), what was expected and
/// what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: expected {}, found {}", self.column, self.expected, self.found)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Int(i64),
    Hash,
    /// `#` directly followed by a row id or a global id (`#42`,
    /// `#VGFnOjQy`): the text after `#`.
    IdRef(String),
    Open,
    Close,
    Comma,
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Int(n) => format!("the number {n}"),
            Tok::Hash => "`#`".into(),
            Tok::IdRef(raw) => format!("`#{raw}`"),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, expected: &str, found: String| ParseError { column, expected: expected.into(), found };
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '#' if chars.get(i + 1).is_some_and(|d| is_id_char(*d)) => {
                // Global ids are base64url: letters, digits, `-` and `_`.
                let start = i + 1;
                i = start;
                while chars.get(i).is_some_and(|d| is_id_char(*d)) {
                    i += 1;
                }
                out.push((Tok::IdRef(chars[start..i].iter().collect()), column));
            }
            '(' | ')' | ',' | '#' | '=' => {
                out.push((
                    match c {
                        '(' => Tok::Open,
                        ')' => Tok::Close,
                        ',' => Tok::Comma,
                        '#' => Tok::Hash,
                        _ => Tok::Eq,
                    },
                    column,
                ));
                i += 1;
            }
            '<' | '>' => {
                let with_eq = chars.get(i + 1) == Some(&'=');
                out.push((
                    match (c, with_eq) {
                        ('<', false) => Tok::Lt,
                        ('<', true) => Tok::Le,
                        ('>', false) => Tok::Gt,
                        _ => Tok::Ge,
                    },
                    column,
                ));
                i += if with_eq { 2 } else { 1 };
            }
            '"' | '“' | '”' => {
                // Curly quotes come from phones and office documents.
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(column, "a closing `\"`", "the end of the expression".into())),
                        Some('"' | '“' | '”') => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(e @ ('"' | '\\')) => s.push(*e),
                                _ => return Err(err(i + 1, "`\\\"` or `\\\\`", "another escape".into())),
                            }
                            i += 1;
                        }
                        Some(other) => s.push(*other),
                    }
                    i += 1;
                }
                i += 1;
                out.push((Tok::Str(s), column));
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let n = digits.parse().map_err(|_| err(column, "a number that fits 64 bits", format!("`{digits}`")))?;
                out.push((Tok::Int(n), column));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars.get(i).is_some_and(|d| d.is_alphanumeric() || *d == '_') {
                    i += 1;
                }
                out.push((Tok::Word(chars[start..i].iter().collect()), column));
            }
            other => return Err(err(column, "an expression", format!("`{other}`"))),
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The GraphQL type whose global ids name objects of `kind`, and how an
/// error message calls them.
fn id_type(kind: RefKind) -> (&'static str, &'static str) {
    match kind {
        RefKind::Tag => (TagId::TYPE_NAME, "tag"),
        RefKind::Group => (TagGroupId::TYPE_NAME, "tag group"),
        RefKind::Segment => (SegmentId::TYPE_NAME, "segment"),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
    offset: FixedOffset,
}

/// Parses the text form. Dates without a time are midnight at `offset`
/// (the organisation's time zone).
///
/// # Errors
/// [`ParseError`] at the first offending token.
pub fn parse(text: &str, offset: FixedOffset) -> Result<SegmentExpr, ParseError> {
    let length = text.chars().count();
    if length > MAX_LENGTH {
        return Err(ParseError {
            column: MAX_LENGTH + 1,
            expected: format!("at most {MAX_LENGTH} characters"),
            found: format!("{length}"),
        });
    }
    let mut p = Parser { toks: lex(text)?, at: 0, depth: 0, offset };
    let expr = p.or()?;
    p.expect(&Tok::End, "`AND`, `OR` or the end of the expression")?;
    Ok(expr)
}

fn is_word(tok: &Tok, word: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(word))
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn column(&self) -> usize {
        self.toks[self.at].1
    }

    fn bump(&mut self) -> Tok {
        let tok = self.toks[self.at].0.clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        tok
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(ParseError { column: self.column(), expected: expected.into(), found: self.peek().describe() })
    }

    fn expect(&mut self, tok: &Tok, expected: &str) -> Result<(), ParseError> {
        if self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if is_word(self.peek(), word) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, ParseError>) -> Result<T, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(&format!("at most {MAX_DEPTH} levels of nesting"));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn or(&mut self) -> Result<SegmentExpr, ParseError> {
        let mut items = vec![self.and()?];
        while self.keyword("OR") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.pop().expect("one item") } else { SegmentExpr::Or(items) })
    }

    fn and(&mut self) -> Result<SegmentExpr, ParseError> {
        let mut items = vec![self.unary()?];
        while self.keyword("AND") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 { items.pop().expect("one item") } else { SegmentExpr::And(items) })
    }

    fn unary(&mut self) -> Result<SegmentExpr, ParseError> {
        if self.keyword("NOT") {
            return self.nested(|p| Ok(SegmentExpr::Not(Box::new(p.unary()?))));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<SegmentExpr, ParseError> {
        if *self.peek() == Tok::Open {
            self.bump();
            let inner = self.nested(Self::or)?;
            self.expect(&Tok::Close, "`)`")?;
            return Ok(inner);
        }
        let Tok::Word(word) = self.peek().clone() else {
            return self.fail("`tag(…)`, a comparison such as `city = \"深圳\"`, `NOT` or `(`");
        };
        let lower = word.to_ascii_lowercase();
        self.bump();
        match lower.as_str() {
            "tag" => self.call(|p| Ok(SegmentExpr::Tag(p.tag_ref()?))),
            "anytag" | "anytags" => self.call(|p| Ok(SegmentExpr::AnyTags(p.tag_list()?))),
            "alltags" => self.call(|p| Ok(SegmentExpr::AllTags(p.tag_list()?))),
            "group" => self.call(|p| Ok(SegmentExpr::Group(p.reference(RefKind::Group)?))),
            "segment" => self.call(|p| Ok(SegmentExpr::Segment(p.reference(RefKind::Segment)?))),
            "taggedbetween" => self.call(|p| {
                let tag = p.tag_ref()?;
                p.expect(&Tok::Comma, "`,`")?;
                let from = p.date()?;
                p.expect(&Tok::Comma, "`,`")?;
                let to = p.date()?;
                Ok(SegmentExpr::TaggedBetween { tag, from, to })
            }),
            "city" => self.equals(|p| Ok(SegmentExpr::City(p.string()?))),
            "channel" => self.equals(|p| Ok(SegmentExpr::Channel(p.string()?))),
            "orgunit" => self.equals(|p| Ok(SegmentExpr::OrgUnit(p.string()?))),
            "lifecycle" => self.equals(|p| Ok(SegmentExpr::Lifecycle(p.tag_ref()?))),
            "gender" => self.equals(|p| {
                let column = p.column();
                let value = match p.bump() {
                    Tok::Word(w) | Tok::Str(w) => w,
                    other => {
                        return Err(ParseError {
                            column,
                            expected: "FEMALE, MALE or UNKNOWN".into(),
                            found: other.describe(),
                        });
                    }
                };
                match value.to_ascii_uppercase().as_str() {
                    "FEMALE" => Ok(SegmentExpr::Gender(Gender::Female)),
                    "MALE" => Ok(SegmentExpr::Gender(Gender::Male)),
                    "UNKNOWN" => Ok(SegmentExpr::Gender(Gender::Unknown)),
                    _ => Err(ParseError {
                        column,
                        expected: "FEMALE, MALE or UNKNOWN".into(),
                        found: format!("`{value}`"),
                    }),
                }
            }),
            "age" => Ok(SegmentExpr::Age(self.range()?)),
            "spend" => Ok(SegmentExpr::Spend(self.range()?)),
            "orders" => Ok(SegmentExpr::Orders(self.range()?)),
            "lastorder" | "added" => {
                let before = match self.bump() {
                    Tok::Lt => true,
                    Tok::Gt => false,
                    _ => {
                        self.at -= 1;
                        return self.fail("`<` (before) or `>` (after)");
                    }
                };
                let at = self.date()?;
                Ok(match (lower.as_str(), before) {
                    ("lastorder", true) => SegmentExpr::LastOrderBefore(at),
                    ("lastorder", false) => SegmentExpr::LastOrderAfter(at),
                    (_, true) => SegmentExpr::AddedBefore(at),
                    (_, false) => SegmentExpr::AddedAfter(at),
                })
            }
            _ => {
                self.at -= 1;
                self.fail(
                    "a function (tag, anyTag, allTags, group, taggedBetween, segment) or a field \
                     (city, channel, gender, lifecycle, orgUnit, age, spend, orders, lastOrder, added)",
                )
            }
        }
    }

    fn call(
        &mut self,
        args: impl FnOnce(&mut Self) -> Result<SegmentExpr, ParseError>,
    ) -> Result<SegmentExpr, ParseError> {
        self.expect(&Tok::Open, "`(`")?;
        let out = args(self)?;
        self.expect(&Tok::Close, "`)`")?;
        Ok(out)
    }

    fn equals(
        &mut self,
        value: impl FnOnce(&mut Self) -> Result<SegmentExpr, ParseError>,
    ) -> Result<SegmentExpr, ParseError> {
        self.expect(&Tok::Eq, "`=`")?;
        value(self)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(s)
            }
            _ => self.fail("a string in double quotes"),
        }
    }

    fn int(&mut self) -> Result<i64, ParseError> {
        match self.peek().clone() {
            Tok::Int(n) => {
                self.bump();
                Ok(n)
            }
            _ => self.fail("a whole number"),
        }
    }

    fn tag_ref(&mut self) -> Result<Ref, ParseError> {
        self.reference(RefKind::Tag)
    }

    /// A name in quotes, or `#` and an id of an object of `kind`: its row
    /// id or its global id (of the right type).
    fn reference(&mut self, kind: RefKind) -> Result<Ref, ParseError> {
        let (type_name, noun) = id_type(kind);
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(Ref::Name(s))
            }
            Tok::Hash => {
                self.bump();
                let column = self.column();
                let id = self.int()?;
                if id <= 0 {
                    return Err(ParseError { column, expected: format!("a {noun} id"), found: format!("{id}") });
                }
                Ok(Ref::Id(id))
            }
            Tok::IdRef(raw) => {
                let column = self.column();
                self.bump();
                let fail = |found: String| ParseError {
                    column,
                    expected: format!("the id of a {noun}: `#` and its row id or its global id"),
                    found,
                };
                if raw.bytes().all(|b| b.is_ascii_digit()) {
                    return match raw.parse::<i64>() {
                        Ok(id) if id > 0 => Ok(Ref::Id(id)),
                        _ => Err(fail(format!("`#{raw}`"))),
                    };
                }
                match decode_global(&raw) {
                    Some((ty, id)) if ty == type_name => Ok(Ref::Id(id)),
                    Some((ty, _)) => Err(fail(format!("the global id of a {ty} (`#{raw}`)"))),
                    None => Err(fail(format!("`#{raw}`, which is neither"))),
                }
            }
            _ => self.fail("a name in double quotes or `#<id>`"),
        }
    }

    fn tag_list(&mut self) -> Result<Vec<Ref>, ParseError> {
        let mut tags = vec![self.tag_ref()?];
        while *self.peek() == Tok::Comma {
            self.bump();
            tags.push(self.tag_ref()?);
        }
        Ok(tags)
    }

    fn range(&mut self) -> Result<Range<i64>, ParseError> {
        match self.bump() {
            Tok::Ge => Ok(Range { min: Some(self.int()?), max: None }),
            Tok::Le => Ok(Range { min: None, max: Some(self.int()?) }),
            Tok::Eq => {
                let n = self.int()?;
                Ok(Range { min: Some(n), max: Some(n) })
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("BETWEEN") => {
                let min = self.int()?;
                if !self.keyword("AND") {
                    return self.fail("`AND`");
                }
                let column = self.column();
                let max = self.int()?;
                if max < min {
                    return Err(ParseError {
                        column,
                        expected: format!("a number of at least {min}"),
                        found: format!("{max}"),
                    });
                }
                Ok(Range { min: Some(min), max: Some(max) })
            }
            _ => {
                self.at -= 1;
                self.fail("`>=`, `<=`, `=` or `BETWEEN`")
            }
        }
    }

    fn date(&mut self) -> Result<DateTime<Utc>, ParseError> {
        let column = self.column();
        let raw = self.string()?;
        parse_instant(&raw, self.offset).ok_or(ParseError {
            column,
            expected: "a date \"YYYY-MM-DD\" or an RFC 3339 time".into(),
            found: format!("{raw:?}"),
        })
    }
}

fn parse_instant(raw: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return offset.from_local_datetime(&date.and_time(NaiveTime::MIN)).single().map(|t| t.with_timezone(&Utc));
    }
    DateTime::parse_from_rfc3339(raw).ok().map(|t| t.with_timezone(&Utc))
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Prints the canonical text of an expression. References by id print by
/// name when `name_of` knows it, as `#id` otherwise; instants print as
/// dates when they are midnight at `offset`.
pub fn print(expr: &SegmentExpr, name_of: &dyn Fn(RefKind, i64) -> Option<String>, offset: FixedOffset) -> String {
    let named = |kind: RefKind, r: &Ref| match r {
        Ref::Name(n) => quote(n),
        Ref::Id(id) => name_of(kind, *id).map(|n| quote(&n)).unwrap_or_else(|| format!("#{id}")),
    };
    let tag = |t: &Ref| named(RefKind::Tag, t);
    let tags = |ts: &[Ref]| ts.iter().map(tag).collect::<Vec<_>>().join(", ");
    let instant = |t: &DateTime<Utc>| {
        let local = t.with_timezone(&offset);
        if local.time() == NaiveTime::MIN {
            quote(&local.date_naive().format("%Y-%m-%d").to_string())
        } else {
            quote(&t.to_rfc3339())
        }
    };
    let range = |field: &str, r: &Range<i64>| match (r.min, r.max) {
        (Some(a), Some(b)) if a == b => format!("{field} = {a}"),
        (Some(a), Some(b)) => format!("{field} BETWEEN {a} AND {b}"),
        (Some(a), None) => format!("{field} >= {a}"),
        (None, Some(b)) => format!("{field} <= {b}"),
        // An unbounded range holds for everyone; printed as its lower
        // bound so that it parses back.
        (None, None) => format!("{field} >= {}", i64::MIN),
    };
    let grouped = |e: &SegmentExpr| {
        let text = print(e, name_of, offset);
        if matches!(e, SegmentExpr::And(_) | SegmentExpr::Or(_)) { format!("({text})") } else { text }
    };
    match expr {
        SegmentExpr::And(items) => items.iter().map(grouped).collect::<Vec<_>>().join(" AND "),
        SegmentExpr::Or(items) => items
            .iter()
            .map(|e| match e {
                // AND binds tighter than OR: no parentheses needed.
                SegmentExpr::And(_) => print(e, name_of, offset),
                other => grouped(other),
            })
            .collect::<Vec<_>>()
            .join(" OR "),
        SegmentExpr::Not(inner) => format!("NOT {}", grouped(inner)),
        SegmentExpr::Tag(t) => format!("tag({})", tag(t)),
        SegmentExpr::AnyTags(ts) => format!("anyTag({})", tags(ts)),
        SegmentExpr::AllTags(ts) => format!("allTags({})", tags(ts)),
        SegmentExpr::Group(g) => format!("group({})", named(RefKind::Group, g)),
        SegmentExpr::TaggedBetween { tag: t, from, to } => {
            format!("taggedBetween({}, {}, {})", tag(t), instant(from), instant(to))
        }
        SegmentExpr::City(c) => format!("city = {}", quote(c)),
        SegmentExpr::Channel(c) => format!("channel = {}", quote(c)),
        SegmentExpr::Gender(g) => format!("gender = {}", g.as_str()),
        SegmentExpr::Lifecycle(t) => format!("lifecycle = {}", tag(t)),
        SegmentExpr::OrgUnit(code) => format!("orgUnit = {}", quote(code)),
        SegmentExpr::Age(r) => range("age", r),
        SegmentExpr::Spend(r) => range("spend", r),
        SegmentExpr::Orders(r) => range("orders", r),
        SegmentExpr::LastOrderBefore(t) => format!("lastOrder < {}", instant(t)),
        SegmentExpr::LastOrderAfter(t) => format!("lastOrder > {}", instant(t)),
        SegmentExpr::AddedBefore(t) => format!("added < {}", instant(t)),
        SegmentExpr::AddedAfter(t) => format!("added > {}", instant(t)),
        SegmentExpr::Segment(s) => format!("segment({})", named(RefKind::Segment, s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shanghai() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).expect("offset")
    }

    fn p(text: &str) -> SegmentExpr {
        parse(text, shanghai()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn no_names(_: RefKind, _: i64) -> Option<String> {
        None
    }

    fn round_trip(text: &str) -> String {
        print(&p(text), &no_names, shanghai())
    }

    #[test]
    fn the_articles_example_parses_as_expected() {
        let e = p(r#"tag("房贷用户") AND tag("有车一族") AND NOT tag("流失客户") AND city = "深圳""#);
        assert_eq!(
            e,
            SegmentExpr::And(vec![
                SegmentExpr::Tag(Ref::Name("房贷用户".into())),
                SegmentExpr::Tag(Ref::Name("有车一族".into())),
                SegmentExpr::Not(Box::new(SegmentExpr::Tag(Ref::Name("流失客户".into())))),
                SegmentExpr::City("深圳".into()),
            ])
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        assert_eq!(
            p(r#"tag("a") OR tag("b") AND tag("c")"#),
            SegmentExpr::Or(vec![
                SegmentExpr::Tag(Ref::Name("a".into())),
                SegmentExpr::And(vec![
                    SegmentExpr::Tag(Ref::Name("b".into())),
                    SegmentExpr::Tag(Ref::Name("c".into()))
                ]),
            ])
        );
        assert_eq!(round_trip(r#"(tag("a") OR tag("b")) AND tag("c")"#), r#"(tag("a") OR tag("b")) AND tag("c")"#);
    }

    #[test]
    fn canonical_text_is_stable_and_keywords_are_case_insensitive() {
        let canonical =
            r#"gender = FEMALE AND allTags("孩子3-6岁", "本地居民") AND age BETWEEN 26 AND 40 AND spend >= 100000"#;
        assert_eq!(
            round_trip(
                r#"Gender = "female" and ALLTAGS( "孩子3-6岁","本地居民" ) and age between 26 and 40 and spend>=100000"#
            ),
            canonical
        );
        assert_eq!(round_trip(canonical), canonical);
    }

    #[test]
    fn dates_are_midnight_in_the_organisations_time_zone() {
        let e =
            p(r#"taggedBetween("购车意向", "2026-04-01", "2026-05-31") AND lastOrder > "2026-10-01T12:00:00+08:00""#);
        let SegmentExpr::And(items) = &e else { panic!("{e:?}") };
        let SegmentExpr::TaggedBetween { from, .. } = &items[0] else { panic!() };
        assert_eq!(from.to_rfc3339(), "2026-03-31T16:00:00+00:00");
        assert_eq!(
            print(&e, &no_names, shanghai()),
            r#"taggedBetween("购车意向", "2026-04-01", "2026-05-31") AND lastOrder > "2026-10-01T04:00:00+00:00""#
        );
    }

    #[test]
    fn tags_by_id_print_by_name_when_known() {
        let e = p("tag(#12) OR lifecycle = #3");
        let names = |kind: RefKind, id: i64| (kind == RefKind::Tag && id == 12).then(|| "房贷用户".to_owned());
        assert_eq!(print(&e, &names, shanghai()), r#"tag("房贷用户") OR lifecycle = #3"#);
    }

    #[test]
    fn global_ids_name_objects_as_row_ids_do() {
        let tag = crate::domain::encode_global("Tag", 12);
        let group = crate::domain::encode_global("TagGroup", 5);
        let segment = crate::domain::encode_global("Segment", 7);
        let e = p(&format!("tag(#{tag}) AND group(#{group}) AND segment(#{segment}) AND lifecycle = #{tag}"));
        assert_eq!(e, p("tag(#12) AND group(#5) AND segment(#7) AND lifecycle = #12"));
        assert_eq!(p(&format!("anyTag(#{tag}, # 3)")), p("anyTag(#12, #3)"), "a row id may still follow a space");
        // The canonical text keeps row ids, as stored segments print them.
        assert_eq!(print(&p(&format!("tag(#{tag})")), &no_names, shanghai()), "tag(#12)");
    }

    #[test]
    fn a_global_id_of_another_type_is_refused_at_its_column() {
        let group = crate::domain::encode_global("TagGroup", 5);
        let err = parse(&format!(r#"city = "深圳" AND tag(#{group})"#), shanghai()).unwrap_err();
        assert_eq!(err.column, 21, "{err}");
        assert_eq!(err.expected, "the id of a tag: `#` and its row id or its global id");
        assert_eq!(err.found, format!("the global id of a TagGroup (`#{group}`)"));
        let tag = crate::domain::encode_global("Tag", 12);
        let err = parse(&format!("group(#{tag})"), shanghai()).unwrap_err();
        assert_eq!(
            (err.column, err.expected.as_str()),
            (7, "the id of a tag group: `#` and its row id or its global id")
        );
        let err = parse("segment(#nonsense)", shanghai()).unwrap_err();
        assert_eq!((err.column, err.found.as_str()), (9, "`#nonsense`, which is neither"));
        let err = parse("tag(#0)", shanghai()).unwrap_err();
        assert_eq!((err.column, err.found.as_str()), (5, "`#0`"));
        let err = parse("tag(#99999999999999999999)", shanghai()).unwrap_err();
        assert_eq!(err.column, 5);
    }

    #[test]
    fn strings_escape_quotes_and_backslashes() {
        let e = SegmentExpr::City(r#"a"b\c"#.into());
        let text = print(&e, &no_names, shanghai());
        assert_eq!(text, r#"city = "a\"b\\c""#);
        assert_eq!(p(&text), e);
    }

    #[test]
    fn errors_point_at_the_offending_column_and_say_what_was_expected() {
        let err = parse(r#"tag("房贷用户") AND tag("有车一族" AND"#, shanghai()).unwrap_err();
        assert_eq!(err.column, 28);
        assert_eq!(err.expected, "`)`");
        assert_eq!(err.found, "`AND`");
        let err = parse(r#"city == "深圳""#, shanghai()).unwrap_err();
        assert_eq!((err.column, err.found.as_str()), (7, "`=`"));
        let err = parse(r#"colour = "red""#, shanghai()).unwrap_err();
        assert_eq!(err.column, 1);
        assert!(err.expected.contains("city"), "{err}");
        let err = parse(r#"tag("a") tag("b")"#, shanghai()).unwrap_err();
        assert_eq!((err.column, err.expected.as_str()), (10, "`AND`, `OR` or the end of the expression"));
        let err = parse(r#"age BETWEEN 40 AND 30"#, shanghai()).unwrap_err();
        assert_eq!(err.column, 20);
        let err = parse(r#"added > "yesterday""#, shanghai()).unwrap_err();
        assert!(err.expected.contains("YYYY-MM-DD"));
        let err = parse(r#"city = "深圳"#, shanghai()).unwrap_err();
        assert_eq!(err.column, 8);
        assert!(parse("", shanghai()).is_err());
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = format!("{}tag(\"a\"){}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep, shanghai()).unwrap_err().expected.contains("nesting"));
        let nots = format!("{}tag(\"a\")", "NOT ".repeat(100));
        assert!(parse(&nots, shanghai()).is_err());
        let long = format!("city = \"{}\"", "x".repeat(MAX_LENGTH));
        assert!(parse(&long, shanghai()).is_err());
    }

    #[test]
    fn every_node_kind_round_trips() {
        let text = r#"NOT (tag("a") OR anyTag("b", #7)) AND group("活动") AND segment("母亲节促销") AND channel = "抖音广告-北京" AND orgUnit = "sz01" AND orders <= 3 AND age = 30 AND added < "2026-01-01" AND lastOrder < "2026-06-01" AND added > "2025-01-01" AND gender = UNKNOWN AND lifecycle = "付费客户""#;
        assert_eq!(round_trip(text), text);
    }

    /// Random expressions of every node kind, nested, print and parse back
    /// to themselves.
    #[test]
    fn random_expressions_round_trip_through_text() {
        use rand::{Rng, SeedableRng};
        fn name(rng: &mut rand_chacha::ChaCha8Rng) -> String {
            ["房贷用户", "a\"b", "back\\slash", "有车 一族", "x"][rng.random_range(0..5)].to_owned()
        }
        fn tag(rng: &mut rand_chacha::ChaCha8Rng) -> Ref {
            if rng.random_bool(0.5) { Ref::Name(name(rng)) } else { Ref::Id(rng.random_range(1..1000)) }
        }
        fn instant(rng: &mut rand_chacha::ChaCha8Rng) -> DateTime<Utc> {
            let secs = rng.random_range(1_600_000_000i64..1_900_000_000);
            let secs = if rng.random_bool(0.5) { secs - secs.rem_euclid(86_400) - 8 * 3600 } else { secs };
            DateTime::from_timestamp(secs, 0).expect("instant")
        }
        fn range(rng: &mut rand_chacha::ChaCha8Rng) -> Range<i64> {
            let a = rng.random_range(-5..200);
            let b = a + rng.random_range(0..50);
            match rng.random_range(0..3) {
                0 => Range { min: Some(a), max: None },
                1 => Range { min: None, max: Some(b) },
                _ => Range { min: Some(a), max: Some(b) },
            }
        }
        fn expr(rng: &mut rand_chacha::ChaCha8Rng, depth: usize) -> SegmentExpr {
            let kinds = if depth == 0 { 18 } else { 21 };
            match rng.random_range(0..kinds) {
                0 => SegmentExpr::Tag(tag(rng)),
                1 => SegmentExpr::AnyTags((0..rng.random_range(1..4)).map(|_| tag(rng)).collect()),
                2 => SegmentExpr::AllTags((0..rng.random_range(1..4)).map(|_| tag(rng)).collect()),
                3 => SegmentExpr::Group(tag(rng)),
                4 => SegmentExpr::TaggedBetween { tag: tag(rng), from: instant(rng), to: instant(rng) },
                5 => SegmentExpr::City(name(rng)),
                6 => SegmentExpr::Channel(name(rng)),
                7 => SegmentExpr::Gender([Gender::Female, Gender::Male, Gender::Unknown][rng.random_range(0..3)]),
                8 => SegmentExpr::Lifecycle(tag(rng)),
                9 => SegmentExpr::OrgUnit(name(rng)),
                10 => SegmentExpr::Age(range(rng)),
                11 => SegmentExpr::Spend(range(rng)),
                12 => SegmentExpr::Orders(range(rng)),
                13 => SegmentExpr::LastOrderBefore(instant(rng)),
                14 => SegmentExpr::LastOrderAfter(instant(rng)),
                15 => SegmentExpr::AddedBefore(instant(rng)),
                16 => SegmentExpr::AddedAfter(instant(rng)),
                17 => SegmentExpr::Segment(tag(rng)),
                18 => SegmentExpr::Not(Box::new(expr(rng, depth - 1))),
                19 => SegmentExpr::And((0..rng.random_range(2..4)).map(|_| expr(rng, depth - 1)).collect()),
                _ => SegmentExpr::Or((0..rng.random_range(2..4)).map(|_| expr(rng, depth - 1)).collect()),
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2_000 {
            let e = expr(&mut rng, 4);
            let text = print(&e, &no_names, shanghai());
            let back = parse(&text, shanghai()).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(back, e, "{text}");
        }
    }
}
