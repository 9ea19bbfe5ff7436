//! Staff management: list, create, edit, move, deactivate and reactivate
//! staff members, and their sign-in identities.
//!
//! `staff:read` at a member's home unit lets the caller see the member;
//! `staff:manage` lets it change the member, when the member's home unit
//! *and every unit where the member holds a role* lie in the caller's
//! `staff:manage` scope. So a region manager manages the people of its
//! region and its stores, and nobody whose power reaches above it (an HQ
//! admin, another region's manager).
//!
//! Deactivation keeps every row that mentions the member (tags, change
//! requests, audit rows, role bindings); it revokes the member's sessions
//! in the same transaction, and the next request with any of the member's
//! tokens is refused on every instance (sign-in reads `staff.active` on
//! every request). Customers the member owns are handed to the successor
//! given in the call, or else keep their owner, whom the API then shows
//! as inactive (`Customer.owner.active == false`) for a manager to act on.

use chrono::Utc;
use entity::{customer, staff, staff_identity};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func, LikeExpr},
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::{NewestFirst, like_escape, newest_first};
use crate::authz::{self, Action, Authz, Permission, Principal};
use crate::domain::{Email, IdentityValue, Login, OrgUnitId, PageArgs, Phone, StaffId, StaffName};
use crate::error::{AppError, AppResult};
use crate::store::constraint::on_constraint;
use crate::store::session::{self, IDENTITY_OIDC, IDENTITY_WECOM, RevokeReason};

const ORDERING: &str = "staff";

/// Which staff members to list.
#[derive(Debug, Default)]
pub struct StaffFilter {
    /// Members whose home unit is this unit or below it.
    pub org_unit: Option<OrgUnitId>,
    /// Part of the login or display name, any case.
    pub search: Option<String>,
    pub active: Option<bool>,
}

/// A staff member to create.
#[derive(Debug)]
pub struct NewStaff {
    pub login: Login,
    pub display_name: StaffName,
    pub home: OrgUnitId,
    pub phone: Option<Phone>,
    pub email: Option<Email>,
    pub oidc_subject: Option<IdentityValue>,
    pub wecom_userid: Option<IdentityValue>,
}

/// Changes to a staff member: `None` keeps a field, `Some(None)` clears it.
#[derive(Debug)]
pub struct StaffPatch {
    pub id: StaffId,
    pub display_name: Option<StaffName>,
    /// Moving a member moves the role bindings held at the old home unit
    /// to the new one.
    pub home: Option<OrgUnitId>,
    pub phone: Option<Option<Phone>>,
    pub email: Option<Option<Email>>,
    pub oidc_subject: Option<Option<IdentityValue>>,
    pub wecom_userid: Option<Option<IdentityValue>>,
}

/// What a deactivation did.
#[derive(Debug)]
pub struct Deactivated {
    pub staff: staff::Model,
    pub sessions_revoked: u64,
    /// Customers handed to the successor.
    pub customers_reassigned: u64,
    /// Customers still owned by the deactivated member (no successor given).
    pub customers_flagged: u64,
}

/// The staff members the caller may see, newest first.
///
/// # Errors
/// `NOT_FOUND` for a unit the caller cannot see, `VALIDATION` for a bad
/// cursor or search.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn list_in_scope(
    db: &DatabaseConnection,
    principal: &Principal,
    filter: StaffFilter,
    page: &PageArgs,
) -> AppResult<NewestFirst<staff::Model>> {
    let scope = principal.scope(Action::StaffRead);
    let mut units: Vec<i64> = scope.unit_ids().collect();
    if let Some(unit) = filter.org_unit {
        if !principal.visible_units().contains(&unit.0) {
            return Err(AppError::not_found("org unit", unit));
        }
        units.retain(|u| principal.org.is_within(*u, unit.0));
    }
    let mut query = staff::Entity::find().filter(staff::Column::HomeOrgUnitId.is_in(units));
    if let Some(active) = filter.active {
        query = query.filter(staff::Column::Active.eq(active));
    }
    if let Some(search) = filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        if search.chars().count() > 64 {
            return Err(AppError::validation("search", "must be at most 64 characters"));
        }
        let pattern = format!("%{}%", like_escape(&search.to_lowercase()));
        let like = |column: staff::Column| {
            Expr::expr(Func::lower(Expr::col(column))).like(LikeExpr::new(pattern.clone()).escape('\\'))
        };
        query = query.filter(Condition::any().add(like(staff::Column::Login)).add(like(staff::Column::DisplayName)));
    }
    newest_first(db, query, staff::Column::Id, |s| s.id, ORDERING, page).await
}

/// One staff member the caller may see.
///
/// # Errors
/// `NOT_FOUND` when unknown or outside the caller's `staff:read` scope.
pub async fn find_in_scope(db: &impl ConnectionTrait, principal: &Principal, id: StaffId) -> AppResult<staff::Model> {
    staff::Entity::find_by_id(id.0)
        .one(db)
        .await?
        .filter(|s| s.id == principal.staff.id || principal.may(Action::StaffRead, s.home_org_unit_id))
        .ok_or_else(|| AppError::not_found("staff", id))
}

/// The sign-in identities of a member, by kind.
///
/// # Errors
/// Database errors.
pub async fn identities_of(db: &impl ConnectionTrait, staff_id: i64) -> AppResult<Vec<staff_identity::Model>> {
    Ok(staff_identity::Entity::find().filter(staff_identity::Column::StaffId.eq(staff_id)).all(db).await?)
}

/// `FORBIDDEN` unless the caller may manage the member: `staff:manage` at
/// the member's home unit and at every unit where it holds a role.
fn require_manageable(authz: &Authz, principal: &Principal, member: &staff::Model) -> AppResult<()> {
    let scope = principal.scope(Action::StaffManage);
    principal.require(Action::StaffManage, member.home_org_unit_id)?;
    let target = authz.principal(member.clone(), principal.org.clone());
    if let Some(above) = target.bindings.iter().find(|b| !scope.contains(b.org_unit_id)) {
        let unit = principal.org.get(above.org_unit_id).map(|u| u.name.as_str()).unwrap_or("another unit");
        return Err(AppError::Forbidden(format!(
            "{} holds the role {} in {unit}, beyond the units where you manage staff",
            member.login, above.role
        )));
    }
    Ok(())
}

fn visible_unit(principal: &Principal, unit: OrgUnitId) -> AppResult<i64> {
    principal
        .visible_units()
        .contains(&unit.0)
        .then_some(unit.0)
        .filter(|u| principal.org.get(*u).is_some())
        .ok_or_else(|| AppError::not_found("org unit", unit))
}

/// Sets (or, with `None`, removes) the member's identity of `kind`.
async fn set_identity(
    txn: &DatabaseTransaction,
    staff_id: i64,
    kind: &str,
    value: Option<&IdentityValue>,
) -> AppResult<()> {
    staff_identity::Entity::delete_many()
        .filter(staff_identity::Column::StaffId.eq(staff_id))
        .filter(staff_identity::Column::Kind.eq(kind))
        .exec(txn)
        .await?;
    if let Some(value) = value {
        let inserted = staff_identity::Entity::insert(staff_identity::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
            staff_id: Set(staff_id),
            kind: Set(kind.to_owned()),
            value: Set(value.as_str().to_owned()),
            created_at: Set(Utc::now()),
        })
        .exec(txn)
        .await;
        if let Err(err) = inserted {
            let field = if kind == IDENTITY_OIDC { "oidcSubject" } else { "wecomUserId" };
            let err = on_constraint(err, |_| "already belongs to another staff member".to_owned());
            // The map names the field `identity`; the caller gave it as one of two.
            return Err(err.in_field(field));
        }
    }
    Ok(())
}

/// Creates an active staff member at a home unit.
///
/// # Errors
/// `FORBIDDEN` without `staff:manage` at the unit, `NOT_FOUND` for a unit
/// the caller cannot see, `CONFLICT` for a login in use, `VALIDATION` for
/// an identity that belongs to someone else.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn create(db: &DatabaseConnection, principal: &Principal, new: NewStaff) -> AppResult<staff::Model> {
    let home = visible_unit(principal, new.home)?;
    principal.require(Action::StaffManage, home)?;
    let txn = db.begin().await?;
    let inserted = staff::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        login: Set(new.login.as_str().to_owned()),
        display_name: Set(new.display_name.into_inner()),
        home_org_unit_id: Set(home),
        active: Set(true),
        created_at: Set(Utc::now()),
        phone: Set(new.phone.map(Phone::into_inner)),
        email: Set(new.email.map(Email::into_inner)),
        signed_out_at: Set(None),
    }
    .insert(&txn)
    .await;
    let member = inserted.map_err(|e| on_constraint(e, |_| format!("the login {} is taken", new.login.as_str())))?;
    set_identity(&txn, member.id, IDENTITY_OIDC, new.oidc_subject.as_ref()).await?;
    set_identity(&txn, member.id, IDENTITY_WECOM, new.wecom_userid.as_ref()).await?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "staff.create", "staff", member.id).in_unit(home).with_detail(json!({
            "login": member.login,
            "displayName": member.display_name,
            "oidcSubject": new.oidc_subject.as_ref().map(IdentityValue::as_str),
            "wecomUserId": new.wecom_userid.as_ref().map(IdentityValue::as_str),
        })),
    )
    .await?;
    txn.commit().await?;
    Ok(member)
}

/// Edits a staff member: name, contact, identities, home unit. Moving the
/// member moves the role bindings it holds at its old home unit to the new
/// one (the caller must be able to assign those roles there), so a
/// salesperson moved to another store works in that store from the next
/// request on.
///
/// # Errors
/// `NOT_FOUND` outside the caller's `staff:read` scope, `FORBIDDEN` when
/// the caller may not manage the member (before or after the move) or
/// assign its roles at the new unit, `VALIDATION` for an empty patch or an
/// identity in use.
#[tracing::instrument(skip(db, authz, principal), fields(staff = principal.staff.id))]
pub async fn update(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    patch: StaffPatch,
) -> AppResult<staff::Model> {
    let member = find_in_scope(db, principal, patch.id).await?;
    require_manageable(authz, principal, &member)?;
    let mut changes = staff::ActiveModel { id: sea_orm::ActiveValue::Unchanged(member.id), ..Default::default() };
    let mut changed = serde_json::Map::new();
    let mut note = |field: &str, from: serde_json::Value, to: serde_json::Value| {
        changed.insert(field.to_owned(), json!({ "from": from, "to": to }));
    };
    if let Some(name) = patch.display_name {
        let name = name.into_inner();
        note("displayName", json!(member.display_name), json!(name));
        changes.display_name = Set(name);
    }
    if let Some(phone) = patch.phone {
        let phone = phone.map(Phone::into_inner);
        note("phone", json!(member.phone), json!(phone));
        changes.phone = Set(phone);
    }
    if let Some(email) = patch.email {
        let email = email.map(Email::into_inner);
        note("email", json!(member.email), json!(email));
        changes.email = Set(email);
    }
    let mut moved_roles = Vec::new();
    let mut new_home = None;
    if let Some(home) = patch.home {
        let home = visible_unit(principal, home)?;
        if home != member.home_org_unit_id {
            principal.require(Action::StaffManage, home)?;
            let target = authz.principal(member.clone(), principal.org.clone());
            for binding in target.bindings.iter().filter(|b| b.org_unit_id == member.home_org_unit_id) {
                principal.require_permission(&Permission::assign_role(&binding.role), home)?;
                moved_roles.push(binding.role.clone());
            }
            let from = principal.org.get(member.home_org_unit_id).map(|u| u.code.clone());
            let to = principal.org.get(home).map(|u| u.code.clone());
            note("homeOrgUnit", json!(from), json!(to));
            changes.home_org_unit_id = Set(home);
            new_home = Some(home);
        }
    }
    if let Some(subject) = &patch.oidc_subject {
        note("oidcSubject", serde_json::Value::Null, json!(subject.as_ref().map(IdentityValue::as_str)));
    }
    if let Some(userid) = &patch.wecom_userid {
        note("wecomUserId", serde_json::Value::Null, json!(userid.as_ref().map(IdentityValue::as_str)));
    }
    if changed.is_empty() {
        return Err(AppError::validation("input", "nothing to change"));
    }
    let txn = db.begin().await?;
    if changes.is_changed() {
        changes.update(&txn).await?;
    }
    if let Some(subject) = &patch.oidc_subject {
        set_identity(&txn, member.id, IDENTITY_OIDC, subject.as_ref()).await?;
    }
    if let Some(userid) = &patch.wecom_userid {
        set_identity(&txn, member.id, IDENTITY_WECOM, userid.as_ref()).await?;
    }
    if let Some(home) = new_home
        && !moved_roles.is_empty()
    {
        let subject = authz::staff_subject(StaffId(member.id));
        let old_path = principal.org.get(member.home_org_unit_id).map(|u| u.path.clone()).unwrap_or_default();
        let new_path = principal.org.get(home).map(|u| u.path.clone()).unwrap_or_default();
        for role in &moved_roles {
            let old = [subject.clone(), role.clone(), authz::domain_pattern(&old_path)];
            let new = [subject.clone(), role.clone(), authz::domain_pattern(&new_path)];
            authz::delete_rule(&txn, "g", &old).await.map_err(AppError::internal)?;
            authz::store_rule(&txn, "g", &new).await.map_err(AppError::internal)?;
        }
        authz.changed(&txn).await.map_err(AppError::internal)?;
    }
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "staff.update", "staff", member.id)
            .in_unit(new_home.unwrap_or(member.home_org_unit_id))
            .with_detail(json!({ "login": member.login, "changes": changed, "movedRoles": moved_roles })),
    )
    .await?;
    let updated =
        staff::Entity::find_by_id(member.id).one(&txn).await?.ok_or_else(|| AppError::not_found("staff", patch.id))?;
    txn.commit().await?;
    Ok(updated)
}

/// Deactivates a staff member: from the next request on, on every instance,
/// none of its tokens work; its sessions are revoked; its history stays.
/// Its customers go to `successor` when given (an active member the caller
/// may see, whose home unit's subtree holds each customer), or else stay
/// with it, flagged by its inactive state.
///
/// # Errors
/// `NOT_FOUND` outside the caller's scope, `FORBIDDEN` when the caller may
/// not manage the member, `VALIDATION` for deactivating oneself or a
/// successor that cannot take the customers, `CONFLICT` when the member is
/// already inactive.
#[tracing::instrument(skip(db, authz, principal), fields(staff = principal.staff.id))]
pub async fn deactivate(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    id: StaffId,
    successor: Option<StaffId>,
) -> AppResult<Deactivated> {
    let member = find_in_scope(db, principal, id).await?;
    if member.id == principal.staff.id {
        return Err(AppError::validation("id", "you cannot deactivate yourself"));
    }
    require_manageable(authz, principal, &member)?;
    let successor = match successor {
        None => None,
        Some(s) if s.0 == member.id => {
            return Err(AppError::validation("reassignCustomersTo", "must be somebody else"));
        }
        Some(s) => {
            let heir = find_in_scope(db, principal, s).await?;
            if !heir.active {
                return Err(AppError::validation("reassignCustomersTo", "must be an active staff member"));
            }
            Some(heir)
        }
    };
    let txn = db.begin().await?;
    // The conditional update is the guard: of two racing deactivations,
    // one wins and the other gets CONFLICT.
    let flipped = staff::Entity::update_many()
        .col_expr(staff::Column::Active, Expr::value(false))
        .filter(staff::Column::Id.eq(member.id))
        .filter(staff::Column::Active.eq(true))
        .exec(&txn)
        .await?
        .rows_affected;
    if flipped == 0 {
        return Err(AppError::Conflict(format!("{} is already deactivated", member.login)));
    }
    let sessions_revoked = session::revoke_all(&txn, member.id, RevokeReason::Deactivated).await?;
    let owned: Vec<i64> = customer::Entity::find()
        .select_only()
        .column(customer::Column::Id)
        .filter(customer::Column::OwnerStaffId.eq(member.id))
        .into_tuple()
        .all(&txn)
        .await?;
    let mut customers_reassigned = 0;
    if let Some(heir) = &successor {
        let units: Vec<i64> = customer::Entity::find()
            .select_only()
            .column(customer::Column::OrgUnitId)
            .filter(customer::Column::OwnerStaffId.eq(member.id))
            .distinct()
            .into_tuple()
            .all(&txn)
            .await?;
        if let Some(outside) = units.iter().find(|u| !principal.org.is_within(**u, heir.home_org_unit_id)) {
            let unit = principal.org.get(*outside).map(|u| u.name.as_str()).unwrap_or("another unit");
            return Err(AppError::validation(
                "reassignCustomersTo",
                format!("{} owns customers in {unit}, outside {}'s home unit", member.login, heir.login),
            ));
        }
        customers_reassigned = customer::Entity::update_many()
            .col_expr(customer::Column::OwnerStaffId, Expr::value(heir.id))
            .col_expr(customer::Column::UpdatedAt, Expr::value(Utc::now()))
            .col_expr(customer::Column::Version, Expr::col(customer::Column::Version).add(1))
            .filter(customer::Column::OwnerStaffId.eq(member.id))
            .exec(&txn)
            .await?
            .rows_affected;
        for customer_id in &owned {
            crate::store::customer_log::log_customer_change(&txn, *customer_id).await?;
        }
    }
    let customers_flagged = owned.len() as u64 - customers_reassigned;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "staff.deactivate", "staff", member.id)
            .in_unit(member.home_org_unit_id)
            .with_detail(json!({
                "login": member.login,
                "sessionsRevoked": sessions_revoked,
                "customersReassigned": customers_reassigned,
                "customersKept": customers_flagged,
                "reassignedTo": successor.as_ref().map(|h| h.login.clone()),
            })),
    )
    .await?;
    let staff =
        staff::Entity::find_by_id(member.id).one(&txn).await?.ok_or_else(|| AppError::not_found("staff", id))?;
    txn.commit().await?;
    Ok(Deactivated { staff, sessions_revoked, customers_reassigned, customers_flagged })
}

/// Lets a deactivated member sign in again (with new tokens: everything
/// issued before the deactivation stays refused).
///
/// # Errors
/// `NOT_FOUND` outside the caller's scope, `FORBIDDEN` when the caller may
/// not manage the member, `CONFLICT` when it is active.
#[tracing::instrument(skip(db, authz, principal), fields(staff = principal.staff.id))]
pub async fn reactivate(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    id: StaffId,
) -> AppResult<staff::Model> {
    let member = find_in_scope(db, principal, id).await?;
    require_manageable(authz, principal, &member)?;
    let txn = db.begin().await?;
    let flipped = staff::Entity::update_many()
        .col_expr(staff::Column::Active, Expr::value(true))
        // Tokens from before the deactivation must not come back to life.
        .col_expr(staff::Column::SignedOutAt, Expr::value(Utc::now()))
        .filter(staff::Column::Id.eq(member.id))
        .filter(staff::Column::Active.eq(false))
        .exec(&txn)
        .await?
        .rows_affected;
    if flipped == 0 {
        return Err(AppError::Conflict(format!("{} is active", member.login)));
    }
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "staff.reactivate", "staff", member.id)
            .in_unit(member.home_org_unit_id)
            .with_detail(json!({ "login": member.login })),
    )
    .await?;
    let staff =
        staff::Entity::find_by_id(member.id).one(&txn).await?.ok_or_else(|| AppError::not_found("staff", id))?;
    txn.commit().await?;
    Ok(staff)
}

/// Ends every session of the member and refuses every token issued so far
/// (dev and OIDC tokens included). Returns the sessions revoked.
///
/// # Errors
/// Database errors.
#[tracing::instrument(skip(db, member), fields(staff = member.id))]
pub async fn sign_out_everywhere(db: &DatabaseConnection, member: &staff::Model) -> AppResult<u64> {
    let txn = db.begin().await?;
    staff::Entity::update_many()
        .col_expr(staff::Column::SignedOutAt, Expr::value(Utc::now()))
        .filter(staff::Column::Id.eq(member.id))
        .exec(&txn)
        .await?;
    let revoked = session::revoke_all(&txn, member.id, RevokeReason::SignOutEverywhere).await?;
    audit::record(
        &txn,
        AuditEntry::ok(StaffId(member.id), "staff.sign_out_everywhere", "staff", member.id)
            .in_unit(member.home_org_unit_id)
            .with_detail(json!({ "sessionsRevoked": revoked })),
    )
    .await?;
    txn.commit().await?;
    Ok(revoked)
}
