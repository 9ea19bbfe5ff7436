//! The expression model. The structured GraphQL input and the text form
//! both become a [`SegmentExpr`]; the text form prints back from it.

use chrono::{DateTime, Utc};
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

    /// Nesting depth (a leaf is 1).
    pub fn depth(&self) -> usize {
        match self {
            SegmentExpr::And(items) | SegmentExpr::Or(items) => 1 + items.iter().map(Self::depth).max().unwrap_or(0),
            SegmentExpr::Not(inner) => 1 + inner.depth(),
            _ => 1,
        }
    }
}
