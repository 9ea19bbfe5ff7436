//! Segments (客群): a boolean expression language over tags, tag history
//! and customer attributes. `docs/segment-language.md` is the grammar for
//! people.
//!
//! - [`expr`]: the expression model, and the one definition of age.
//! - [`text`]: the text form (parse and print).
//! - [`resolve`]: names and ids in the caller's view, saved-segment
//!   references, guarded-field checks → [`Resolved`].
//! - [`sql`]: the SQL compiler, and the one "holds tag" condition that
//!   customer filters use too.
//! - [`index`]: the in-memory bitmap engine, which answers as the SQL does.

mod expr;
mod index;
pub mod resolve;
pub mod sql;
pub(crate) mod text;

pub use expr::{AgeBounds, Range, Ref, RefKind, SegmentExpr};
pub use index::{BuildProgress, PageKey, SegmentIndex, page_key};
pub use resolve::{Resolved, SavedRef, parse_text, resolve, resolve_saved};
pub use text::{ParseError, parse, print};
