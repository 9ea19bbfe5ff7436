//! Typed ids. On the wire an id is the decimal row id as a GraphQL `ID`;
//! anything else is a `VALIDATION` error naming the argument.

use std::fmt;

use crate::error::{AppError, AppResult};

macro_rules! typed_id {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i64);

        impl $name {
            /// Parses an id given by a client for argument `field`.
            pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
                raw.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .map(Self)
                    .ok_or_else(|| AppError::validation(field, format!("{:?} is not a valid {} id", raw, $kind)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

typed_id!(CustomerId, "customer");
typed_id!(TagId, "tag");
typed_id!(TagGroupId, "tag group");
typed_id!(OrgUnitId, "org unit");
typed_id!(StaffId, "staff");
typed_id!(EventSeq, "tag event");
typed_id!(ChangeRequestId, "change request");
typed_id!(LockId, "lock");

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
    fn garbage_zero_and_negative_ids_are_validation_errors() {
        for raw in ["abc", "0", "-3", "", "1.5", "99999999999999999999"] {
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
}
