//! One map from the database's unique constraints to what a caller is
//! told when a write breaks one (in the manner of realworld-axum-sqlx's
//! `on_constraint`). The constraint decides the code (`CONFLICT`, or
//! `VALIDATION` with its field); the service that wrote words the message
//! with the values it has at hand.
//!
//! The two backends name a broken constraint differently: PostgreSQL gives
//! the constraint's name (`duplicate key value violates unique constraint
//! "uq_tag_group_name"`, named in the migrations, or `<table>_pkey` and
//! `<table>_<column>_key` for inline ones); SQLite gives the columns
//! (`UNIQUE constraint failed: tag.group_id, tag.name`). Each row of
//! [`CONSTRAINTS`] carries both.

use sea_orm::{DbErr, SqlErr};

use crate::error::AppError;

/// A unique constraint of the schema that a caller can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// A library layer's group names.
    TagGroupName,
    /// A group's tag names.
    EnterpriseTagName,
    /// A staff member's personal tag names.
    PersonalTagName,
    /// One assignment of a tag per customer.
    TagAssignment,
    /// Staff logins.
    StaffLogin,
    /// An external sign-in identity belongs to one staff member.
    StaffIdentityValue,
    /// One identity of each kind per staff member.
    StaffIdentityKind,
    /// An org unit's segment names.
    SegmentName,
    /// An external customer identity belongs to one customer.
    CustomerIdentity,
    /// One row per version of a library object.
    LibraryVersion,
    /// Policy rules are a set.
    PolicyRule,
}

/// What breaking a constraint means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Somebody else holds the value (or wrote first): `CONFLICT`.
    Conflict,
    /// The input itself is unusable: `VALIDATION` naming the field.
    Validation { field: &'static str },
}

/// A row of the map.
pub struct ConstraintRule {
    pub constraint: Constraint,
    /// The name PostgreSQL reports.
    pub name: &'static str,
    /// The columns SQLite reports, as it lists them.
    pub sqlite_columns: &'static str,
    pub refusal: Refusal,
}

const fn rule(
    constraint: Constraint,
    name: &'static str,
    sqlite_columns: &'static str,
    refusal: Refusal,
) -> ConstraintRule {
    ConstraintRule { constraint, name, sqlite_columns, refusal }
}

/// Every unique constraint a write of a service can break.
pub const CONSTRAINTS: &[ConstraintRule] = &[
    rule(Constraint::TagGroupName, "uq_tag_group_org_name", "tag_group.org_unit_id, tag_group.name", Refusal::Conflict),
    rule(Constraint::EnterpriseTagName, "uq_tag_group_name", "tag.group_id, tag.name", Refusal::Conflict),
    rule(Constraint::PersonalTagName, "uq_tag_owner_name", "tag.owner_staff_id, tag.name", Refusal::Conflict),
    rule(
        Constraint::TagAssignment,
        "customer_tag_pkey",
        "customer_tag.customer_id, customer_tag.tag_id",
        Refusal::Conflict,
    ),
    rule(Constraint::StaffLogin, "staff_login_key", "staff.login", Refusal::Conflict),
    rule(
        Constraint::StaffIdentityValue,
        "ux_staff_identity_kind_value",
        "staff_identity.kind, staff_identity.value",
        Refusal::Validation { field: "identity" },
    ),
    rule(
        Constraint::StaffIdentityKind,
        "ux_staff_identity_staff_kind",
        "staff_identity.staff_id, staff_identity.kind",
        Refusal::Conflict,
    ),
    rule(Constraint::SegmentName, "uq_segment_org_name", "segment.org_unit_id, segment.name", Refusal::Conflict),
    rule(
        Constraint::CustomerIdentity,
        "uq_customer_identity_provider_external",
        "customer_identity.provider, customer_identity.external_id",
        Refusal::Conflict,
    ),
    rule(
        Constraint::LibraryVersion,
        "uq_library_version",
        "library_version.object_kind, library_version.object_id, library_version.version",
        Refusal::Conflict,
    ),
    rule(
        Constraint::PolicyRule,
        "uq_casbin_rule",
        "casbin_rule.ptype, casbin_rule.v0, casbin_rule.v1, casbin_rule.v2, casbin_rule.v3, casbin_rule.v4, \
         casbin_rule.v5",
        Refusal::Conflict,
    ),
];

impl Constraint {
    /// The unique constraint a database error broke, if it is one of the
    /// map's.
    pub fn of(err: &DbErr) -> Option<Self> {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(message)) => Self::from_message(&message),
            _ => None,
        }
    }

    /// Reads either backend's message.
    fn from_message(message: &str) -> Option<Self> {
        let named = |r: &&ConstraintRule| {
            // PostgreSQL: `... violates unique constraint "name"`.
            message.contains(&format!("\"{}\"", r.name))
                // SQLite: `UNIQUE constraint failed: t.a, t.b`.
                || message.rsplit_once("failed: ").is_some_and(|(_, cols)| cols.trim() == r.sqlite_columns)
        };
        CONSTRAINTS.iter().find(named).map(|r| r.constraint)
    }

    pub fn refusal(self) -> Refusal {
        CONSTRAINTS.iter().find(|r| r.constraint == self).map_or(Refusal::Conflict, |r| r.refusal)
    }
}

/// Turns a write's database error into the caller's error: a broken unique
/// constraint of the map becomes `CONFLICT` or `VALIDATION` (with the
/// constraint's field) carrying `message(constraint)`; any other error
/// stays an internal one.
pub fn on_constraint(err: DbErr, message: impl FnOnce(Constraint) -> String) -> AppError {
    let Some(constraint) = Constraint::of(&err) else { return err.into() };
    match constraint.refusal() {
        Refusal::Conflict => AppError::Conflict(message(constraint)),
        Refusal::Validation { field } => AppError::validation(field, message(constraint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_messages_name_the_constraint() {
        let message = "duplicate key value violates unique constraint \"uq_tag_group_name\"";
        assert_eq!(Constraint::from_message(message), Some(Constraint::EnterpriseTagName));
        let message = "duplicate key value violates unique constraint \"customer_tag_pkey\"";
        assert_eq!(Constraint::from_message(message), Some(Constraint::TagAssignment));
    }

    #[test]
    fn sqlite_messages_name_the_columns() {
        let message = "UNIQUE constraint failed: tag.owner_staff_id, tag.name";
        assert_eq!(Constraint::from_message(message), Some(Constraint::PersonalTagName));
        assert_eq!(Constraint::from_message("UNIQUE constraint failed: staff.login"), Some(Constraint::StaffLogin));
    }

    #[test]
    fn a_constraint_outside_the_map_is_none() {
        assert_eq!(Constraint::from_message("duplicate key value violates unique constraint \"x\""), None);
        assert_eq!(Constraint::from_message("UNIQUE constraint failed: tag.name"), None);
    }

    #[test]
    fn every_constraint_has_one_row() {
        for r in CONSTRAINTS {
            assert_eq!(CONSTRAINTS.iter().filter(|o| o.constraint == r.constraint).count(), 1, "{:?}", r.constraint);
        }
    }
}
