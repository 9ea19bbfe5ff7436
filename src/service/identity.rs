//! Customers' identities in other systems (WeCom per corp, unionid, phone,
//! order system): looking a customer up by one, adding and removing them.
//! The database holds each identity once (`uq_customer_identity_provider_external`),
//! so an identity names exactly one customer.

use chrono::Utc;
use entity::{customer, customer_identity};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::{find_in_scope, find_live_in_scope};
use crate::authz::{Action, Principal};
use crate::domain::{CustomerId, Identity};
use crate::error::{AppError, AppResult};
use crate::store::constraint::on_constraint;

/// Most identities one customer holds.
pub const MAX_IDENTITIES: usize = 20;

/// The customer an identity belongs to, if the caller may read it (a
/// merged customer's identities moved to the kept one).
///
/// # Errors
/// `NOT_FOUND` for an unknown identity and for one of a customer outside
/// the caller's scope alike.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn find_by_identity(
    db: &impl ConnectionTrait,
    principal: &Principal,
    identity: &Identity,
) -> AppResult<customer::Model> {
    let not_found = || AppError::not_found("customer", identity);
    let row = customer_identity::Entity::find()
        .filter(customer_identity::Column::Provider.eq(identity.provider()))
        .filter(customer_identity::Column::ExternalId.eq(identity.value.as_str()))
        .one(db)
        .await?
        .ok_or_else(not_found)?;
    find_in_scope(db, principal, CustomerId(row.customer_id)).await.map_err(|_| not_found())
}

/// Gives a customer an identity.
///
/// # Errors
/// `NOT_FOUND` outside the scope, `FORBIDDEN` without `customer:update`,
/// `CONFLICT` when the identity belongs to a customer already (this one
/// or another), `LIMIT_EXCEEDED` past [`MAX_IDENTITIES`].
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn add_identity(
    db: &DatabaseConnection,
    principal: &Principal,
    id: CustomerId,
    identity: &Identity,
) -> AppResult<customer::Model> {
    let target = find_live_in_scope(db, principal, id).await?;
    principal.require(Action::CustomerUpdate, target.org_unit_id)?;
    let txn = db.begin().await?;
    let held = customer_identity::Entity::find()
        .filter(customer_identity::Column::CustomerId.eq(target.id))
        .all(&txn)
        .await?
        .len();
    if held >= MAX_IDENTITIES {
        return Err(AppError::LimitExceeded(format!("at most {MAX_IDENTITIES} identities per customer")));
    }
    customer_identity::Entity::insert(customer_identity::ActiveModel {
        id: NotSet,
        customer_id: Set(target.id),
        provider: Set(identity.provider()),
        external_id: Set(identity.value.clone()),
        created_at: Set(Utc::now()),
    })
    .exec(&txn)
    .await
    .map_err(|e| on_constraint(e, |_| format!("identity {identity} already belongs to a customer")))?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "customer.identity_add", "customer", target.id)
            .in_unit(target.org_unit_id)
            .with_detail(json!({ "provider": identity.provider(), "value": identity.value })),
    )
    .await?;
    txn.commit().await?;
    Ok(target)
}

/// Takes an identity off a customer.
///
/// # Errors
/// `NOT_FOUND` outside the scope or when the customer does not hold the
/// identity, `FORBIDDEN` without `customer:update`.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn remove_identity(
    db: &DatabaseConnection,
    principal: &Principal,
    id: CustomerId,
    identity: &Identity,
) -> AppResult<customer::Model> {
    let target = find_live_in_scope(db, principal, id).await?;
    principal.require(Action::CustomerUpdate, target.org_unit_id)?;
    let txn = db.begin().await?;
    let deleted = customer_identity::Entity::delete_many()
        .filter(customer_identity::Column::CustomerId.eq(target.id))
        .filter(customer_identity::Column::Provider.eq(identity.provider()))
        .filter(customer_identity::Column::ExternalId.eq(identity.value.as_str()))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(AppError::not_found("identity", identity));
    }
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "customer.identity_remove", "customer", target.id)
            .in_unit(target.org_unit_id)
            .with_detail(json!({ "provider": identity.provider(), "value": identity.value })),
    )
    .await?;
    txn.commit().await?;
    Ok(target)
}
