//! Administration of the policy at run time: role bindings and the
//! permissions of roles. Every change is one transaction with its audit row
//! and a new policy revision, so it applies on the next request on every
//! instance that shares the database.

use entity::staff;
use sea_orm::{DatabaseConnection, EntityTrait, TransactionTrait};
use serde_json::json;

use super::audit::{self, AuditEntry};
use crate::authz::{self, Action, Authz, CustomerField, Permission, Principal};
use crate::domain::{OrgUnitId, RoleName, StaffId};
use crate::error::{AppError, AppResult};

/// Checks that an (object, action) pair is one the server understands, so
/// that a typo cannot silently grant nothing (or something else).
///
/// # Errors
/// `VALIDATION` naming what is accepted.
pub fn parse_permission(object: &str, action: &str) -> AppResult<Permission> {
    let object = object.trim();
    let action = action.trim();
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let known = Action::ALL.iter().any(|a| a.policy_pair() == (object, action))
        || CustomerField::ALL
            .iter()
            .any(|f| f.object() == object && (action == "read" || (f.maskable() && action == "read_masked")))
        || object
            .strip_prefix("tag_class:")
            .is_some_and(|class| (class == "*" || word(class)) && matches!(action, "read" | "use"))
        || object.strip_prefix("role:").is_some_and(|role| (role == "*" || word(role)) && action == "assign");
    if known {
        Ok(Permission::new(object, action))
    } else {
        Err(AppError::validation(
            "object",
            format!("{object}:{action} is not a permission tagbase knows (see policies/policy.csv for the list)"),
        ))
    }
}

/// What an administrative change did.
#[derive(Debug, Clone)]
pub struct Change {
    /// False when the change was already in place (assigning a role twice,
    /// revoking one that was not there).
    pub changed: bool,
}

/// Binds (or unbinds) a role to a staff member at an org unit.
///
/// # Errors
/// `NOT_FOUND` for a unit or staff member the caller cannot see,
/// `VALIDATION` for a role the policy does not know, `FORBIDDEN` without
/// `role:<role>:assign` at the unit.
#[tracing::instrument(skip(db, authz, principal), fields(staff = principal.staff.id))]
pub async fn set_role(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    target: StaffId,
    role: RoleName,
    unit: OrgUnitId,
    bind: bool,
) -> AppResult<Change> {
    let org_unit = principal
        .visible_units()
        .contains(&unit.0)
        .then(|| principal.org.get(unit.0))
        .flatten()
        .ok_or_else(|| AppError::not_found("org unit", unit))?
        .clone();
    let member =
        staff::Entity::find_by_id(target.0).one(db).await?.ok_or_else(|| AppError::not_found("staff", target))?;
    if !authz.roles().iter().any(|r| r == role.as_str()) {
        return Err(AppError::validation("role", format!("{:?} is not a role of the policy", role.as_str())));
    }
    principal.require_permission(&Permission::assign_role(role.as_str()), org_unit.id)?;
    let rule =
        [authz::staff_subject(StaffId(member.id)), role.as_str().to_owned(), authz::domain_pattern(&org_unit.path)];
    let txn = db.begin().await?;
    let changed =
        if bind { authz::store_rule(&txn, "g", &rule).await } else { authz::delete_rule(&txn, "g", &rule).await }
            .map_err(AppError::internal)?;
    if changed {
        authz.changed(&txn).await.map_err(AppError::internal)?;
        audit::record(
            &txn,
            AuditEntry::ok(principal.staff_id(), if bind { "role.assign" } else { "role.revoke" }, "staff", member.id)
                .in_unit(org_unit.id)
                .with_detail(json!({ "login": member.login, "role": role.as_str(), "orgUnit": org_unit.code })),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(Change { changed })
}

/// Grants (or revokes) a permission to a role. Roles apply everywhere they
/// are bound, so this takes `policy:edit` at the root of the organisation.
///
/// # Errors
/// `FORBIDDEN` without `policy:edit` at the root, `VALIDATION` for unknown
/// permissions, `CONFLICT` when the change would leave no role able to edit
/// the policy.
#[tracing::instrument(skip(db, authz, principal), fields(staff = principal.staff.id))]
pub async fn set_permission(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    role: RoleName,
    permission: Permission,
    grant: bool,
) -> AppResult<Change> {
    let root = principal.org.all().iter().find(|u| u.parent_id.is_none()).map(|u| u.id).unwrap_or_default();
    principal.require(Action::PolicyEdit, root)?;
    let edit: Permission = Action::PolicyEdit.into();
    let rule = [role.as_str().to_owned(), permission.object.clone(), permission.action.clone()];
    let txn = db.begin().await?;
    if !grant && permission == edit {
        // Writing the policy revision first takes its row lock: a second
        // revoke waits here for this one to commit, then reads the rules
        // as this one left them, so two revokes cannot both see the other's
        // role as the editor that remains.
        authz.changed(&txn).await.map_err(AppError::internal)?;
        let others = authz::roles_granting(&txn, &edit).await.map_err(AppError::internal)?;
        if others.iter().all(|r| r == role.as_str()) {
            return Err(AppError::Conflict("no role would be left that may edit the policy".to_owned()));
        }
    }
    let changed =
        if grant { authz::store_rule(&txn, "p", &rule).await } else { authz::delete_rule(&txn, "p", &rule).await }
            .map_err(AppError::internal)?;
    if changed {
        authz.changed(&txn).await.map_err(AppError::internal)?;
        audit::record(
            &txn,
            AuditEntry::ok(
                principal.staff_id(),
                if grant { "policy.grant" } else { "policy.revoke" },
                "role",
                role.as_str(),
            )
            .in_unit(root)
            .with_detail(json!({ "permission": permission.name() })),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(Change { changed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_permissions_parse_and_typos_do_not() {
        for (object, action) in [
            ("customer", "read"),
            ("customer.phone", "read_masked"),
            ("customer.totalSpend", "read"),
            ("tag_class:value", "use"),
            ("tag_class:*", "read"),
            ("role:sales", "assign"),
            ("personal_tag", "read_all"),
        ] {
            assert!(parse_permission(object, action).is_ok(), "{object}:{action}");
        }
        for (object, action) in [
            ("customer", "delete"),
            ("customer.totalSpend", "read_masked"),
            ("customers", "read"),
            ("tag_class:Value", "read"),
            ("role:sales", "use"),
        ] {
            assert!(parse_permission(object, action).is_err(), "{object}:{action}");
        }
    }
}
