//! The rules of the business. Resolvers call one function here; every
//! function takes the caller's [`Principal`](crate::authz::Principal) and
//! limits what it reads and writes to the caller's scopes.

pub mod admin;
pub mod audit;
pub mod customer;
pub mod export;
pub mod governance;
pub mod library;
pub mod segment;
pub mod staff;
pub mod tag_library;
pub mod tagging;

pub(crate) use crate::store::{NewestFirst, newest_first};

/// Escapes `%`, `_` and the escape character itself for a `LIKE` pattern.
pub(crate) fn like_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::like_escape(r"50%_off\"), r"50\%\_off\\");
    }
}
