//! Paging: a clamped page size, an opaque keyset cursor, and the Relay
//! paging arguments (`first/after` forward, `last/before` backward).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::error::{AppError, AppResult};

/// Number of items of one page: `first` clamped to `1..=max_page_size`
/// (zero and negative values give one item, as the API documents),
/// `default_page_size` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// Never fails today; the `Result` keeps room for a refusal without
    /// touching every caller.
    pub fn parse(first: Option<i32>, limits: &Limits) -> AppResult<Self> {
        Self::parse_named(first, "first", limits)
    }

    /// The rows a list with this `first` may return, for the cost model,
    /// which is fixed when the schema is built and so uses the default
    /// page sizes.
    pub fn estimate(first: Option<i32>) -> usize {
        let limits = Limits::default();
        Self::clamp(first, limits.default_page_size, limits.max_page_size).0 as usize
    }

    /// Never fails today (the argument name is kept for a refusal).
    fn parse_named(size: Option<i32>, _field: &str, limits: &Limits) -> AppResult<Self> {
        Ok(Self::clamp(size, limits.default_page_size, limits.max_page_size))
    }

    fn clamp(first: Option<i32>, default: u32, max: u32) -> Self {
        match first {
            None => Self(default),
            Some(n) => Self(u32::try_from(n.max(1)).unwrap_or(1).min(max)),
        }
    }

    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

/// Position after which the next page starts: the sort key of the last row
/// seen and its id (the tie-breaker). Opaque to clients (base64 of JSON).
/// `ordering` ties a cursor to the ordering it was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "o")]
    pub ordering: String,
    #[serde(rename = "k")]
    pub key: String,
    #[serde(rename = "i")]
    pub id: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("cursor serialises"))
    }

    /// Decodes a cursor made for `ordering`, given as `after`.
    pub fn decode(raw: &str, ordering: &str) -> AppResult<Self> {
        Self::decode_named(raw, ordering, "after")
    }

    /// Decodes a cursor made for `ordering`, given as argument `field`.
    pub fn decode_named(raw: &str, ordering: &str, field: &str) -> AppResult<Self> {
        let invalid = || AppError::validation(field, "is not a valid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| invalid())?;
        let cursor: Self = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if cursor.ordering != ordering {
            return Err(AppError::validation(
                field,
                format!("cursor belongs to another ordering; start again without `{field}`"),
            ));
        }
        Ok(cursor)
    }
}

/// Which way a page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `first` items after the `after` cursor.
    Forward,
    /// `last` items before the `before` cursor.
    Backward,
}

/// The paging arguments of a connection, checked: `first`/`after` page
/// forward, `last`/`before` backward; mixing the two is an error. A list
/// is read backward by walking its order reversed from `before`, taking
/// `last`, and reversing that page ([`Page::from_walk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageArgs {
    pub size: PageSize,
    pub direction: Direction,
    /// `after` going forward, `before` going backward.
    pub cursor: Option<String>,
}

impl PageArgs {
    /// Forward from the start, `first` items (the default when no paging
    /// argument is given).
    pub fn forward(size: PageSize) -> Self {
        Self { size, direction: Direction::Forward, cursor: None }
    }

    /// Checks the four Relay arguments.
    ///
    /// # Errors
    /// `VALIDATION` when forward and backward arguments are mixed, or a
    /// size is negative.
    pub fn parse(
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        limits: &Limits,
    ) -> AppResult<Self> {
        let backward = last.is_some() || before.is_some();
        if backward && (first.is_some() || after.is_some()) {
            let field = if last.is_some() { "last" } else { "before" };
            return Err(AppError::validation(
                field,
                "page forward (`first`/`after`) or backward (`last`/`before`), not both",
            ));
        }
        Ok(if backward {
            Self { size: PageSize::parse_named(last, "last", limits)?, direction: Direction::Backward, cursor: before }
        } else {
            Self { size: PageSize::parse_named(first, "first", limits)?, direction: Direction::Forward, cursor: after }
        })
    }

    pub fn backward(&self) -> bool {
        self.direction == Direction::Backward
    }

    /// The name of the cursor argument, for errors.
    pub fn cursor_field(&self) -> &'static str {
        if self.backward() { "before" } else { "after" }
    }

    /// The cursor, decoded for `ordering`.
    ///
    /// # Errors
    /// `VALIDATION` for a bad cursor or one of another ordering.
    pub fn decode_cursor(&self, ordering: &str) -> AppResult<Option<Cursor>> {
        self.cursor.as_deref().map(|raw| Cursor::decode_named(raw, ordering, self.cursor_field())).transpose()
    }

    /// How many rows to read: one more than the page, to know whether
    /// more follow.
    pub fn fetch(&self) -> u64 {
        self.size.get() + 1
    }
}

/// One page of a keyset-paged list, in the list's order, each item with
/// its cursor.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
}

impl<T> Page<T> {
    /// A page from the rows read by walking from the cursor (in the list's
    /// order forward, reversed backward), at most [`PageArgs::fetch`] of
    /// them. Reading backward puts the page back in the list's order.
    ///
    /// Beyond the cursor's side, the page only knows that a cursor was
    /// given: `hasPreviousPage` going forward (`hasNextPage` going
    /// backward) is true exactly when a cursor was given, as the Relay
    /// specification allows.
    pub fn from_walk(mut rows: Vec<T>, args: &PageArgs, cursor_of: impl Fn(&T) -> Cursor) -> Self {
        let more = rows.len() as u64 > args.size.get();
        rows.truncate(args.size.get() as usize);
        if args.backward() {
            rows.reverse();
        }
        let items = rows.into_iter().map(|row| (cursor_of(&row).encode(), row)).collect();
        let from_cursor = args.cursor.is_some();
        match args.direction {
            Direction::Forward => Self { items, has_next_page: more, has_previous_page: from_cursor },
            Direction::Backward => Self { items, has_next_page: from_cursor, has_previous_page: more },
        }
    }

    pub fn start_cursor(&self) -> Option<String> {
        self.items.first().map(|(c, _)| c.clone())
    }

    pub fn end_cursor(&self) -> Option<String> {
        self.items.last().map(|(c, _)| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_clamps() {
        let limits = Limits::default();
        assert_eq!(PageSize::parse(None, &limits).unwrap().get(), 20);
        assert_eq!(PageSize::parse(Some(0), &limits).unwrap().get(), 1);
        assert_eq!(PageSize::parse(Some(10_000), &limits).unwrap().get(), 100);
        assert_eq!(PageSize::parse(Some(-1), &limits).unwrap().get(), 1);
        assert_eq!(PageSize::parse(Some(i32::MIN), &limits).unwrap().get(), 1);
    }

    #[test]
    fn cursor_round_trips_and_rejects_other_orderings_and_garbage() {
        let cursor = Cursor { ordering: "NAME_ASC".into(), key: "张三".into(), id: 7 };
        let raw = cursor.encode();
        assert_eq!(Cursor::decode(&raw, "NAME_ASC").unwrap(), cursor);
        assert!(Cursor::decode(&raw, "ADDED_AT_DESC").is_err());
        assert!(Cursor::decode("not base64!", "NAME_ASC").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("{}"), "NAME_ASC").is_err());
    }

    #[test]
    fn mixing_forward_and_backward_arguments_is_refused() {
        let limits = Limits::default();
        assert!(PageArgs::parse(Some(2), None, Some(2), None, &limits).is_err());
        assert!(PageArgs::parse(None, Some("x".into()), None, Some("y".into()), &limits).is_err());
        assert!(PageArgs::parse(Some(2), None, None, Some("y".into()), &limits).is_err());
        let back = PageArgs::parse(None, None, Some(3), Some("c".into()), &limits).unwrap();
        assert!(back.backward());
        assert_eq!(back.cursor_field(), "before");
        assert!(!PageArgs::parse(None, None, None, None, &limits).unwrap().backward());
    }

    #[test]
    fn a_backward_walk_is_put_back_in_order() {
        let limits = Limits::default();
        let cursor = |id: &i64| Cursor { ordering: "X".into(), key: String::new(), id: *id };
        // The list is 1..=5; the last 2 before 5, walked reversed: 4, 3, 2.
        let args = PageArgs::parse(None, None, Some(2), Some("c".into()), &limits).unwrap();
        let page = Page::from_walk(vec![4, 3, 2], &args, cursor);
        assert_eq!(page.items.iter().map(|(_, i)| *i).collect::<Vec<_>>(), vec![3, 4]);
        assert!(page.has_previous_page && page.has_next_page);
        let args = PageArgs::parse(Some(2), None, None, None, &limits).unwrap();
        let page = Page::from_walk(vec![1, 2], &args, cursor);
        assert!(!page.has_previous_page && !page.has_next_page);
    }
}
