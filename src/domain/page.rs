//! Paging: a clamped page size and an opaque keyset cursor.

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
        Ok(Self::clamp(first, limits.default_page_size, limits.max_page_size))
    }

    /// The rows a list with this `first` may return, for the cost model,
    /// which is fixed when the schema is built and so uses the default
    /// page sizes.
    pub fn estimate(first: Option<i32>) -> usize {
        let limits = Limits::default();
        Self::clamp(first, limits.default_page_size, limits.max_page_size).0 as usize
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
}
