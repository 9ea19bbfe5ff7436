//! The rules of the business. Resolvers call one function here; every
//! function takes the caller's [`Principal`](crate::authz::Principal) and
//! limits what it reads and writes to the caller's scopes.

pub mod admin;
pub mod audit;
pub mod customer;
pub mod export;
pub mod governance;
pub mod identity;
pub mod import;
pub mod jobs;
pub mod library;
pub mod listing;
pub mod merge;
pub mod realtime;
pub mod reports;
pub mod rules;
pub mod segment;
pub mod staff;
pub mod tag_library;
pub mod tagging;

pub(crate) use crate::store::{NewestFirst, newest_first};

pub(crate) use crate::store::like_escape;

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(crate::store::like_escape(r"50%_off\"), r"50\%\_off\\");
    }
}
