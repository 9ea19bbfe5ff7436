//! Segments (客群): a boolean expression language over tags, tag history
//! and customer attributes. This module holds the expression model and its
//! text form; `docs/segment-language.md` is the grammar for people.

mod expr;
mod index;
pub(crate) mod text;

pub use expr::{Range, Ref, RefKind, SegmentExpr};
pub use index::{BuildProgress, PageKey, SegmentIndex, page_key};
pub use text::{ParseError, parse, print};
