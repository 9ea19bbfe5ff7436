//! Typed ids. On the wire an id is an opaque Relay global id: base64url
//! (no padding) of `Type:rowid`, e.g. `Q3VzdG9tZXI6NDI` for `Customer:42`,
//! so ids are unique across types and `node(id)` knows what to load.
//! Inputs also accept the bare decimal row id, as before global ids;
//! anything else, or the global id of another type, is a `VALIDATION`
//! error naming the argument.
//!
//! `Display` (and so `async_graphql::ID::from`) shows the global id; code
//! that records a row id (audit rows, policy subjects) uses the inner
//! `i64`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{AppError, AppResult};

/// Encodes the global id of row `id` of GraphQL type `type_name`.
pub fn encode_global(type_name: &str, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{type_name}:{id}"))
}

/// Decodes a global id into its type name and row id; `None` for anything
/// that is not one (a decimal id included).
pub fn decode_global(raw: &str) -> Option<(String, i64)> {
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (type_name, digits) = text.split_once(':')?;
    let id = all_digits(digits).then(|| digits.parse::<i64>().ok()).flatten().filter(|id| *id > 0)?;
    (!type_name.is_empty() && type_name.chars().all(|c| c.is_ascii_alphanumeric())).then(|| (type_name.to_owned(), id))
}

/// Digits only: `i64::from_str` would also take a sign.
fn all_digits(raw: &str) -> bool {
    !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit())
}

/// Parses an id given by a client for argument `field`: the global id of
/// `type_name`, or a decimal row id.
fn parse_row_id(raw: &str, field: &str, type_name: &str, kind: &str) -> AppResult<i64> {
    let trimmed = raw.trim();
    if all_digits(trimmed) {
        return trimmed
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| AppError::validation(field, format!("{raw:?} is not a valid {kind} id")));
    }
    match decode_global(trimmed) {
        Some((ty, id)) if ty == type_name => Ok(id),
        Some((ty, _)) => Err(AppError::validation(field, format!("is the id of a {ty}, not of a {type_name}"))),
        None => Err(AppError::validation(field, format!("{raw:?} is not a valid {kind} id"))),
    }
}

macro_rules! typed_id {
    ($name:ident, $kind:literal, $type_name:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl $name {
            /// The GraphQL type whose objects carry this id.
            pub const TYPE_NAME: &'static str = $type_name;

            /// Parses an id given by a client for argument `field`: its
            /// global id or its decimal row id.
            pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
                parse_row_id(raw, field, $type_name, $kind).map(Self)
            }

            /// The opaque global id clients see.
            pub fn global(self) -> String {
                encode_global($type_name, self.0)
            }
        }

        /// Stored (in change-request payloads) as the bare row id.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_i64(self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <i64 as serde::Deserialize>::deserialize(d).map(Self)
            }
        }

        /// The global id, as clients see it (so `ID::from` and error
        /// messages show what a client sends).
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.global())
            }
        }
    };
}

typed_id!(CustomerId, "customer", "Customer");
typed_id!(TagId, "tag", "Tag");
typed_id!(TagGroupId, "tag group", "TagGroup");
typed_id!(OrgUnitId, "org unit", "OrgUnit");
typed_id!(StaffId, "staff", "Staff");
typed_id!(EventSeq, "tag event", "TagEvent");
typed_id!(ChangeRequestId, "change request", "ChangeRequest");
typed_id!(LockId, "lock", "ModificationLock");
typed_id!(SegmentId, "segment", "Segment");
typed_id!(AuditEntryId, "audit log entry", "AuditLogEntry");
typed_id!(RuleId, "rule", "Rule");
typed_id!(CustomerEventId, "customer event", "CustomerEvent");
typed_id!(JobId, "job", "Job");
typed_id!(AlertId, "alert", "GovernanceAlert");

/// Parses a list of ids, dropping repeats but keeping the first order.
pub fn parse_ids<T: Copy + Eq + std::hash::Hash>(
    raw: &[async_graphql::ID],
    field: &str,
    parse: impl Fn(&str, &str) -> AppResult<T>,
) -> AppResult<Vec<T>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for id in raw {
        let id = parse(id.as_str(), field)?;
        if seen.insert(id) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_id_parses() {
        assert_eq!(CustomerId::parse(" 42 ", "id").unwrap(), CustomerId(42));
    }

    #[test]
    fn a_global_id_round_trips_and_is_opaque() {
        let global = CustomerId(42).global();
        assert_eq!(global, "Q3VzdG9tZXI6NDI");
        assert_eq!(CustomerId::parse(&global, "id").unwrap(), CustomerId(42));
        assert_eq!(decode_global(&global), Some(("Customer".to_owned(), 42)));
    }

    #[test]
    fn the_global_id_of_another_type_is_a_validation_error() {
        let err = CustomerId::parse(&TagId(42).global(), "customerIds").unwrap_err();
        assert!(matches!(err, AppError::Validation { ref field, .. } if field == "customerIds"), "{err:?}");
        assert!(err.message().contains("Tag"), "{}", err.message());
    }

    #[test]
    fn garbage_zero_and_negative_ids_are_validation_errors() {
        let forged = ["Tag:0", "Tag:-3", "Tag:+3", "Tag: 3", "Tag:", ":3", "Tag:3:4", "Ta g:3"]
            .map(|raw| URL_SAFE_NO_PAD.encode(raw));
        for raw in ["abc", "0", "-3", "", "1.5", "99999999999999999999"]
            .iter()
            .copied()
            .chain(forged.iter().map(String::as_str))
        {
            let err = TagId::parse(raw, "tagId").unwrap_err();
            assert!(matches!(err, AppError::Validation { ref field, .. } if field == "tagId"), "{raw}: {err:?}");
        }
    }

    #[test]
    fn repeated_ids_are_dropped_keeping_order() {
        let raw: Vec<async_graphql::ID> = ["3", "1", "3", "2"].into_iter().map(Into::into).collect();
        let ids = parse_ids(&raw, "ids", TagId::parse).unwrap();
        assert_eq!(ids, vec![TagId(3), TagId(1), TagId(2)]);
    }

    #[test]
    fn decimal_and_global_ids_in_one_list_are_the_same_id() {
        let raw: Vec<async_graphql::ID> = vec!["7".into(), TagId(7).global().into()];
        assert_eq!(parse_ids(&raw, "ids", TagId::parse).unwrap(), vec![TagId(7)]);
    }
}
