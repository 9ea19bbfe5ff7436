//! Property-based fuzzing (proptest) of the parsers that take raw client
//! text: the segment language, page cursors and ids. Nothing may panic,
//! and whatever is refused is refused as `VALIDATION` (segment text:
//! a `ParseError`, which the API answers as `VALIDATION`).
//!
//! `cargo test --lib fuzz` runs a bounded number of cases per target (CI);
//! `TAGBASE_FUZZ_CASES=1000000 cargo test --release --lib fuzz` runs a
//! longer campaign. A failure prints the smallest input found.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::FixedOffset;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::domain::{Cursor, CustomerId, TagId};
use crate::error::AppError;
use crate::segment::{self, text};

/// Cases per target: `TAGBASE_FUZZ_CASES`, else a number that keeps the
/// whole run to tens of seconds in a debug build.
fn cases(default: u32) -> u32 {
    std::env::var("TAGBASE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config { cases: cases(default_cases), failure_persistence: None, ..Config::default() })
}

fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("offset")
}

/// Pieces of the segment language, so that generated text gets past the
/// lexer and exercises the grammar, not only the first character.
const SEGMENT_PIECES: &[&str] = &[
    "tag",
    "anyTags",
    "allTags",
    "group",
    "taggedBetween",
    "lifecycle",
    "orgUnit",
    "segment",
    "city",
    "channel",
    "gender",
    "age",
    "spend",
    "orders",
    "added",
    "lastOrder",
    "FEMALE",
    "MALE",
    "UNKNOWN",
    "AND",
    "OR",
    "NOT",
    "and",
    "(",
    ")",
    ",",
    "#",
    "=",
    "<",
    "<=",
    ">",
    ">=",
    "\"深圳\"",
    "\"\"",
    "\"2025-01-01\"",
    "\"2025-02-30\"",
    "\"2025-01-01T08:00:00+08:00\"",
    "\"a\\\"b\"",
    "\"\\x\"",
    "“弯引号”",
    "\"",
    "0",
    "-1",
    "42",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "_",
    "标签",
    "\u{202e}",
    " ",
];

fn segment_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Anything at all.
        any::<String>(),
        // Tokens of the language in any order.
        prop::collection::vec(prop::sample::select(SEGMENT_PIECES), 0..40).prop_map(|pieces| pieces.join(" ")),
        // The same, glued without spaces.
        prop::collection::vec(prop::sample::select(SEGMENT_PIECES), 0..40).prop_map(|pieces| pieces.concat()),
        // Deep nesting, balanced or not.
        (0usize..200, 0usize..200).prop_map(|(open, close)| format!(
            "{}tag(#1){}",
            "(".repeat(open),
            ")".repeat(close)
        )),
        (0usize..200).prop_map(|n| format!("{}tag(#1)", "NOT ".repeat(n))),
    ]
}

#[test]
fn segment_text_never_panics_and_what_parses_prints_back() {
    fn no_names(_: segment::RefKind, _: i64) -> Option<String> {
        None
    }
    runner(20_000)
        .run(&segment_text(), |input| {
            if let Ok(expr) = text::parse(&input, offset()) {
                // What parses has a canonical text that parses to the same.
                let printed = text::print(&expr, &no_names, offset());
                let again = text::parse(&printed, offset());
                prop_assert_eq!(again.as_ref(), Ok(&expr), "{} printed as {}", input, printed);
            }
            Ok(())
        })
        .unwrap();
}

fn cursor_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        // Base64 of arbitrary bytes, and of JSON that almost is a cursor.
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        (any::<String>(), any::<String>(), any::<i64>(), any::<bool>()).prop_map(|(o, k, i, extra)| {
            let json = if extra {
                serde_json::json!({ "o": o, "k": k, "i": i, "x": [1, 2] })
            } else {
                serde_json::json!({ "o": o, "k": k, "i": i.to_string() })
            };
            URL_SAFE_NO_PAD.encode(json.to_string())
        }),
        (any::<String>(), any::<i64>())
            .prop_map(|(k, i)| Cursor { ordering: "NAME_ASC".into(), key: k, id: i }.encode()),
    ]
}

#[test]
fn cursors_never_panic_and_bad_ones_are_validation_errors() {
    runner(20_000)
        .run(&cursor_text(), |raw| {
            match Cursor::decode(&raw, "NAME_ASC") {
                Ok(cursor) => {
                    prop_assert_eq!(&cursor.ordering, "NAME_ASC");
                    prop_assert_eq!(Cursor::decode(&cursor.encode(), "NAME_ASC").ok(), Some(cursor));
                }
                Err(err) => prop_assert!(matches!(err, AppError::Validation { .. }), "{:?}", err),
            }
            Ok(())
        })
        .unwrap();
}

fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| format!(" {n}\t")),
        "[0-9+\\-. ]{0,30}",
        any::<Vec<u8>>().prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
    ]
}

#[test]
fn ids_never_panic_and_bad_ones_are_validation_errors() {
    runner(50_000)
        .run(&id_text(), |raw| {
            match CustomerId::parse(&raw, "id") {
                Ok(id) => prop_assert!(id.0 > 0),
                Err(err) => prop_assert!(matches!(err, AppError::Validation { .. }), "{:?}", err),
            }
            if let Err(err) = TagId::parse(&raw, "tagId") {
                prop_assert!(matches!(err, AppError::Validation { .. }), "{:?}", err);
            }
            Ok(())
        })
        .unwrap();
}
