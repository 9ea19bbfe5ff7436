//! Paging: a clamped page size and an opaque keyset cursor.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::error::{AppError, AppResult};

/// Number of items of one page: `first` clamped to `1..=max_page_size`,
/// `default_page_size` when absent. Negative `first` is an error rather
/// than silently clamped, since it is surely a client bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub fn parse(first: Option<i32>, limits: &Limits) -> AppResult<Self> {
        match first {
            None => Ok(Self(limits.default_page_size)),
            Some(n) if n < 0 => Err(AppError::validation("first", "must not be negative")),
            Some(n) => Ok(Self((n as u32).clamp(1, limits.max_page_size))),
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

    /// Decodes a cursor made for `ordering`.
    pub fn decode(raw: &str, ordering: &str) -> AppResult<Self> {
        let invalid = || AppError::validation("after", "is not a valid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| invalid())?;
        let cursor: Self = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if cursor.ordering != ordering {
            return Err(AppError::validation(
                "after",
                "cursor belongs to another ordering; start again without `after`",
            ));
        }
        Ok(cursor)
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
        assert!(PageSize::parse(Some(-1), &limits).is_err());
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
}
