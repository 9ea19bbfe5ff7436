//! The expression model. The structured GraphQL input and the text form
//! both become a [`SegmentExpr`]; the text form prints back from it.

use chrono::{DateTime, Months, NaiveDate, Utc};
use entity::enums::Gender;

/// A tag, tag group or saved segment named in an expression: by name (text
/// form, resolved in the caller's view) or by id (structured form, `#12` in
/// text, or after resolution).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    Name(String),
    Id(i64),
}

/// What a [`Ref`] names, for printing names of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Tag,
    Group,
    Segment,
}

/// An inclusive range; an open end is `None`. At least one end is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: PartialOrd + Copy> Range<T> {
    pub fn contains(&self, value: T) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentExpr {
    And(Vec<SegmentExpr>),
    Or(Vec<SegmentExpr>),
    Not(Box<SegmentExpr>),
    /// Holds the tag.
    Tag(Ref),
    /// Holds at least one of the tags.
    AnyTags(Vec<Ref>),
    /// Holds every one of the tags.
    AllTags(Vec<Ref>),
    /// Holds any tag of the group.
    Group(Ref),
    /// Was given the tag between the two instants (inclusive), per the tag
    /// event log, whether or not it still holds it.
    TaggedBetween {
        tag: Ref,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    City(String),
    Channel(String),
    Gender(Gender),
    /// Holds this tag of the lifecycle group.
    Lifecycle(Ref),
    /// Belongs to the org unit (by code) or a unit below it.
    OrgUnit(String),
    /// Age in whole years.
    Age(Range<i64>),
    /// Total spend in cents (分).
    Spend(Range<i64>),
    Orders(Range<i64>),
    LastOrderBefore(DateTime<Utc>),
    LastOrderAfter(DateTime<Utc>),
    AddedBefore(DateTime<Utc>),
    AddedAfter(DateTime<Utc>),
    /// Member of another saved segment.
    Segment(Ref),
}

impl SegmentExpr {
    /// Every tag the expression names.
    pub fn tags(&self) -> Vec<&Ref> {
        let mut out = Vec::new();
        self.walk(&mut |e| match e {
            SegmentExpr::Tag(t) | SegmentExpr::Lifecycle(t) | SegmentExpr::TaggedBetween { tag: t, .. } => out.push(t),
            SegmentExpr::AnyTags(ts) | SegmentExpr::AllTags(ts) => out.extend(ts),
            _ => {}
        });
        out
    }

    /// Visits the expression and every sub-expression, parents first.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a SegmentExpr)) {
        visit(self);
        match self {
            SegmentExpr::And(items) | SegmentExpr::Or(items) => items.iter().for_each(|i| i.walk(visit)),
            SegmentExpr::Not(inner) => inner.walk(visit),
            _ => {}
        }
    }

    /// The name of a comparison predicate as the text form writes it
    /// (`age`, `spend`, `lastOrder`, …); `None` for the other nodes.
    pub fn predicate(&self) -> Option<&'static str> {
        Some(match self {
            SegmentExpr::City(_) => "city",
            SegmentExpr::Channel(_) => "channel",
            SegmentExpr::Gender(_) => "gender",
            SegmentExpr::Lifecycle(_) => "lifecycle",
            SegmentExpr::OrgUnit(_) => "orgUnit",
            SegmentExpr::Age(_) => "age",
            SegmentExpr::Spend(_) => "spend",
            SegmentExpr::Orders(_) => "orders",
            SegmentExpr::LastOrderBefore(_) | SegmentExpr::LastOrderAfter(_) => "lastOrder",
            SegmentExpr::AddedBefore(_) | SegmentExpr::AddedAfter(_) => "added",
            _ => return None,
        })
    }

    /// Nesting depth (a leaf is 1).
    pub fn depth(&self) -> usize {
        match self {
            SegmentExpr::And(items) | SegmentExpr::Or(items) => 1 + items.iter().map(Self::depth).max().unwrap_or(0),
            SegmentExpr::Not(inner) => 1 + inner.depth(),
            _ => 1,
        }
    }
}

/// An age range as birth-date bounds on a given day: the one definition
/// of age that SQL and the in-memory index share. A bound too far back to
/// compute is left open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeBounds {
    /// At least `min` years old: born on or before today, `min` years ago.
    pub born_on_or_before: Option<NaiveDate>,
    /// At most `max`: born after today, `max + 1` years ago.
    pub born_after: Option<NaiveDate>,
}

impl AgeBounds {
    pub fn new(range: &Range<i64>, today: NaiveDate) -> Self {
        let years_ago = |years: i64| {
            u32::try_from(years.clamp(0, 200) * 12).ok().and_then(|m| today.checked_sub_months(Months::new(m)))
        };
        Self {
            born_on_or_before: range.min.and_then(years_ago),
            born_after: range.max.and_then(|max| years_ago(max + 1)),
        }
    }

    /// Whether a birth date is in the range (no birth date: never).
    pub fn contains(&self, birth_date: Option<NaiveDate>) -> bool {
        birth_date.is_some_and(|b| {
            self.born_on_or_before.is_none_or(|latest| b <= latest)
                && self.born_after.is_none_or(|earliest| b > earliest)
        })
    }
}
