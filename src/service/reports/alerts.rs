//! Governance alerts (`governance_alert`): conditions that need somebody.
//! `refreshAlerts` at an org unit raises what it finds and resolves what
//! went away; staff acknowledge and resolve them. Every change is audited;
//! an alert is seen by readers of reports in its unit (and above), and
//! changed by holders of `alert:manage` there.
//!
//! Kinds and what raises them at a unit:
//! - `TAG_OVERLOAD`: the unresolved tag-count alerts (`tag_alert`) of the
//!   customers the caller may read in the unit's subtree, filed at each
//!   customer's unit;
//! - `ZOMBIE_TAG`, `DUPLICATE_TAGS`: the unit's zombie tags and probable
//!   duplicates as the reports show them to the caller, filed at the unit;
//! - `STRANDED_LOCK`: modification locks not released that are past their
//!   expiry or whose holder is deactivated or gone, on groups of the
//!   subtree, filed at the group's unit;
//! - `FAILED_RUN`: rules of the subtree whose latest scheduled run failed
//!   (`rule_run`), filed at the rule's unit; resolved once a later run
//!   succeeds.
//!
//! One live (not resolved) alert per kind, subject and unit: the unique
//! `open_key` says so in the database, and a refresh run twice raises
//! nothing new.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use entity::{
    customer,
    enums::RuleRunStatus,
    enums::{AlertStatus, GovernanceAlertKind},
    governance_alert, modification_lock, rule, rule_run, staff, tag_alert, tag_group,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, Query},
};
use serde_json::{Value, json};

use super::{customer_scope, duplicates, report_unit, zombie};
use crate::authz::{Action, Principal};
use crate::domain::{AlertId, Cursor, OrgUnitId, Page, PageArgs};
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;
use crate::service::audit::{self, AuditEntry};
use crate::store::CHUNK;

/// A condition found by a refresh.
struct Found {
    kind: GovernanceAlertKind,
    unit: i64,
    subject: String,
    detail: Value,
}

impl Found {
    fn key(&self) -> String {
        open_key(&self.subject, self.unit)
    }
}

fn open_key(subject: &str, unit: i64) -> String {
    format!("{subject}@{unit}")
}

/// What a refresh did.
#[derive(Debug, Clone, Default)]
pub struct RefreshOutcome {
    pub raised: u64,
    pub resolved: u64,
    pub open: u64,
}

/// The alerts of the units where the caller reads reports, newest first.
///
/// # Errors
/// `VALIDATION` for a bad cursor; database errors.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn list(
    db: &DatabaseConnection,
    principal: &Principal,
    status: Option<AlertStatus>,
    kind: Option<GovernanceAlertKind>,
    page: &PageArgs,
) -> AppResult<Page<governance_alert::Model>> {
    const ORDERING: &str = "alerts:newest";
    let cursor = page.decode_cursor(ORDERING)?;
    let mut query = governance_alert::Entity::find()
        .filter(principal.scope(Action::ReportRead).condition(governance_alert::Column::OrgUnitId));
    if let Some(status) = status {
        query = query.filter(governance_alert::Column::Status.eq(status));
    }
    if let Some(kind) = kind {
        query = query.filter(governance_alert::Column::Kind.eq(kind));
    }
    // Newest first is id descending; backward walks it ascending.
    let backward = page.backward();
    if let Some(c) = cursor {
        query = query.filter(if backward {
            governance_alert::Column::Id.gt(c.id)
        } else {
            governance_alert::Column::Id.lt(c.id)
        });
    }
    query = if backward {
        query.order_by_asc(governance_alert::Column::Id)
    } else {
        query.order_by_desc(governance_alert::Column::Id)
    };
    let rows = query.limit(page.fetch()).all(db).await?;
    Ok(Page::from_walk(rows, page, |a| Cursor { ordering: ORDERING.to_owned(), key: String::new(), id: a.id }))
}

/// An alert the caller may read.
///
/// # Errors
/// `NOT_FOUND` for a missing alert and one outside the caller's scope.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: AlertId) -> AppResult<governance_alert::Model> {
    governance_alert::Entity::find_by_id(id.0)
        .filter(principal.scope(Action::ReportRead).condition(governance_alert::Column::OrgUnitId))
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("alert", id))
}

/// Raises the alerts of what is wrong at a unit now, and resolves those
/// of its kinds and units whose condition went away; one audit row.
///
/// # Errors
/// `NOT_FOUND` for a unit the caller does not know, `FORBIDDEN` without
/// `alert:manage` there (or `report:read`); database errors.
#[tracing::instrument(skip(db, index, principal), fields(staff = principal.staff.id))]
pub async fn refresh(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
) -> AppResult<RefreshOutcome> {
    let found_unit = report_unit(principal, unit)?.id;
    principal.require(Action::AlertManage, found_unit)?;
    let subtree: Vec<i64> = principal.org.subtree(found_unit).map(|u| u.id).collect();
    let mut found: Vec<Found> = Vec::new();

    for z in zombie::zombie_tags(db, index, principal, unit).await? {
        found.push(Found {
            kind: GovernanceAlertKind::ZombieTag,
            unit: found_unit,
            subject: format!("tag:{}", z.tag.id),
            detail: json!({ "tagId": z.tag.id, "name": z.tag.name, "holders": z.holders, "share": z.share,
                            "lastTaggedAt": z.last_tagged_at }),
        });
    }
    for d in duplicates::duplicate_tags(db, index, principal, unit).await? {
        let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
        found.push(Found {
            kind: GovernanceAlertKind::DuplicateTags,
            unit: found_unit,
            subject: format!("tags:{},{}", d.a.tag.id.min(d.b.tag.id), d.a.tag.id.max(d.b.tag.id)),
            detail: json!({ "tagIds": [d.a.tag.id, d.b.tag.id], "names": [d.a.tag.name, d.b.tag.name],
                            "reasons": reasons }),
        });
    }
    // Customers over the tag alert threshold, in the caller's scope.
    let scope = customer_scope(principal, found_unit);
    let in_scope = Query::select()
        .column(customer::Column::Id)
        .from(customer::Entity)
        .cond_where(scope.condition(customer::Column::OrgUnitId))
        .to_owned();
    let raised: Vec<tag_alert::Model> = tag_alert::Entity::find()
        .filter(tag_alert::Column::ResolvedAt.is_null())
        .filter(tag_alert::Column::CustomerId.in_subquery(in_scope))
        .all(db)
        .await?;
    let mut unit_of: BTreeMap<i64, i64> = BTreeMap::new();
    let ids: Vec<i64> = raised.iter().map(|a| a.customer_id).collect();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .columns([customer::Column::Id, customer::Column::OrgUnitId])
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        unit_of.extend(rows);
    }
    let overloaded = raised.into_iter().filter_map(|a| {
        let unit = *unit_of.get(&a.customer_id)?;
        Some((a.customer_id, unit, a.tag_count, a.threshold))
    });
    for (customer_id, org_unit_id, tag_count, threshold) in overloaded {
        found.push(Found {
            kind: GovernanceAlertKind::TagOverload,
            unit: org_unit_id,
            subject: format!("customer:{customer_id}"),
            detail: json!({ "customerId": customer_id, "tagCount": tag_count, "threshold": threshold }),
        });
    }
    // Locks past their expiry or whose holder is gone.
    let now = Utc::now();
    let groups: BTreeMap<i64, tag_group::Model> = tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.is_in(subtree.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|g| (g.id, g))
        .collect();
    let mut locks = Vec::new();
    let group_ids: Vec<i64> = groups.keys().copied().collect();
    for chunk in group_ids.chunks(CHUNK) {
        locks.extend(
            modification_lock::Entity::find()
                .filter(modification_lock::Column::ReleasedAt.is_null())
                .filter(modification_lock::Column::GroupId.is_in(chunk.iter().copied()))
                .all(db)
                .await?,
        );
    }
    let holders: HashSet<i64> = staff::Entity::find()
        .select_only()
        .column(staff::Column::Id)
        .filter(staff::Column::Id.is_in(locks.iter().map(|l| l.holder_staff_id)))
        .filter(staff::Column::Active.eq(true))
        .into_tuple()
        .all(db)
        .await?
        .into_iter()
        .collect();
    for lock in locks {
        let expired = lock.expires_at < now;
        let holder_gone = !holders.contains(&lock.holder_staff_id);
        if !(expired || holder_gone) {
            continue;
        }
        let Some(group) = groups.get(&lock.group_id) else { continue };
        found.push(Found {
            kind: GovernanceAlertKind::StrandedLock,
            unit: group.org_unit_id,
            subject: format!("lock:{}", lock.id),
            detail: json!({ "lockId": lock.id, "groupId": group.id, "group": group.name,
                            "holderStaffId": lock.holder_staff_id, "expiresAt": lock.expires_at,
                            "expired": expired, "holderGone": holder_gone }),
        });
    }

    // Scheduled rules whose latest run failed.
    let rules: BTreeMap<i64, rule::Model> = rule::Entity::find()
        .filter(rule::Column::OrgUnitId.is_in(subtree.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let rule_ids: Vec<i64> = rules.keys().copied().collect();
    let mut latest: BTreeMap<i64, rule_run::Model> = BTreeMap::new();
    for chunk in rule_ids.chunks(CHUNK) {
        let runs = rule_run::Entity::find()
            .filter(rule_run::Column::RuleId.is_in(chunk.iter().copied()))
            .filter(rule_run::Column::Status.ne(RuleRunStatus::Running))
            .order_by_asc(rule_run::Column::Id)
            .all(db)
            .await?;
        for run in runs {
            latest.insert(run.rule_id, run);
        }
    }
    for run in latest.into_values().filter(|r| r.status == RuleRunStatus::Failed) {
        let Some(rule) = rules.get(&run.rule_id) else { continue };
        found.push(Found {
            kind: GovernanceAlertKind::FailedRun,
            unit: rule.org_unit_id,
            subject: format!("rule:{}", rule.id),
            detail: json!({ "ruleId": rule.id, "rule": rule.name, "runId": run.id, "slot": run.schedule_key,
                            "error": run.error, "finishedAt": run.finished_at }),
        });
    }

    let txn = db.begin().await?;
    // What is live now in the refreshed area: the unit's own report
    // alerts, and the per-customer and per-lock alerts of its subtree.
    let live = governance_alert::Entity::find()
        .filter(governance_alert::Column::Status.ne(AlertStatus::Resolved))
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(
                            governance_alert::Column::Kind
                                .is_in([GovernanceAlertKind::ZombieTag, GovernanceAlertKind::DuplicateTags]),
                        )
                        .add(governance_alert::Column::OrgUnitId.eq(found_unit)),
                )
                .add(
                    Condition::all()
                        .add(governance_alert::Column::Kind.is_in([
                            GovernanceAlertKind::TagOverload,
                            GovernanceAlertKind::StrandedLock,
                            GovernanceAlertKind::FailedRun,
                        ]))
                        .add(governance_alert::Column::OrgUnitId.is_in(subtree.iter().copied())),
                ),
        )
        .all(&txn)
        .await?;
    let found_keys: HashSet<(GovernanceAlertKind, String)> = found.iter().map(|f| (f.kind, f.key())).collect();
    let live_keys: HashSet<(GovernanceAlertKind, String)> =
        live.iter().filter_map(|a| Some((a.kind, a.open_key.clone()?))).collect();
    let mut outcome = RefreshOutcome::default();
    for gone in live.iter().filter(|a| a.open_key.as_ref().is_none_or(|k| !found_keys.contains(&(a.kind, k.clone())))) {
        let done = governance_alert::Entity::update_many()
            .col_expr(governance_alert::Column::Status, Expr::value(AlertStatus::Resolved.as_str()))
            .col_expr(governance_alert::Column::OpenKey, Expr::value(Option::<String>::None))
            .col_expr(governance_alert::Column::ResolvedAt, Expr::value(now))
            .col_expr(governance_alert::Column::UpdatedAt, Expr::value(now))
            .col_expr(governance_alert::Column::Version, Expr::value(gone.version + 1))
            .filter(governance_alert::Column::Id.eq(gone.id))
            .filter(governance_alert::Column::Version.eq(gone.version))
            .exec(&txn)
            .await?;
        outcome.resolved += done.rows_affected;
    }
    for f in found.iter().filter(|f| !live_keys.contains(&(f.kind, f.key()))) {
        governance_alert::Entity::insert(governance_alert::ActiveModel {
            id: NotSet,
            kind: Set(f.kind),
            status: Set(AlertStatus::Open),
            org_unit_id: Set(f.unit),
            subject: Set(f.subject.clone()),
            open_key: Set(Some(f.key())),
            detail: Set(f.detail.clone()),
            version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
            acknowledged_by: Set(None),
            acknowledged_at: Set(None),
            resolved_by: Set(None),
            resolved_at: Set(None),
        })
        .exec(&txn)
        .await
        .map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                AppError::Conflict("another refresh raised the same alert; retry".to_owned())
            } else {
                e.into()
            }
        })?;
        outcome.raised += 1;
    }
    outcome.open = found.len() as u64;
    let entry = AuditEntry::ok(principal.staff_id(), "alert.refresh", "org_unit", found_unit)
        .in_unit(found_unit)
        .with_detail(json!({ "raised": outcome.raised, "resolved": outcome.resolved, "open": outcome.open }));
    audit::record(&txn, entry).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// Acknowledges an open alert (somebody is on it).
///
/// # Errors
/// `NOT_FOUND` for an alert the caller cannot read, `FORBIDDEN` without
/// `alert:manage` in its unit, `CONFLICT` unless it is open.
pub async fn acknowledge(
    db: &DatabaseConnection,
    principal: &Principal,
    id: AlertId,
) -> AppResult<governance_alert::Model> {
    transition(db, principal, id, &[AlertStatus::Open], AlertStatus::Acknowledged).await
}

/// Resolves an open or acknowledged alert.
///
/// # Errors
/// As [`acknowledge`]; `CONFLICT` when it is resolved already.
pub async fn resolve(
    db: &DatabaseConnection,
    principal: &Principal,
    id: AlertId,
) -> AppResult<governance_alert::Model> {
    transition(db, principal, id, &[AlertStatus::Open, AlertStatus::Acknowledged], AlertStatus::Resolved).await
}

#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
async fn transition(
    db: &DatabaseConnection,
    principal: &Principal,
    id: AlertId,
    from: &[AlertStatus],
    to: AlertStatus,
) -> AppResult<governance_alert::Model> {
    let txn = db.begin().await?;
    let alert = find(&txn, principal, id).await?;
    principal.require(Action::AlertManage, alert.org_unit_id)?;
    if !from.contains(&alert.status) {
        return Err(AppError::Conflict(format!("the alert is {}", alert.status.as_str())));
    }
    let now = Utc::now();
    let mut update = governance_alert::Entity::update_many()
        .col_expr(governance_alert::Column::Status, Expr::value(to.as_str()))
        .col_expr(governance_alert::Column::UpdatedAt, Expr::value(now))
        .col_expr(governance_alert::Column::Version, Expr::value(alert.version + 1));
    update = match to {
        AlertStatus::Acknowledged => update
            .col_expr(governance_alert::Column::AcknowledgedBy, Expr::value(principal.staff.id))
            .col_expr(governance_alert::Column::AcknowledgedAt, Expr::value(now)),
        AlertStatus::Resolved => update
            .col_expr(governance_alert::Column::ResolvedBy, Expr::value(principal.staff.id))
            .col_expr(governance_alert::Column::ResolvedAt, Expr::value(now))
            .col_expr(governance_alert::Column::OpenKey, Expr::value(Option::<String>::None)),
        AlertStatus::Open => update,
    };
    let done = update
        .filter(governance_alert::Column::Id.eq(alert.id))
        .filter(governance_alert::Column::Version.eq(alert.version))
        .exec(&txn)
        .await?;
    if done.rows_affected == 0 {
        return Err(AppError::Conflict("the alert changed meanwhile; reload and retry".to_owned()));
    }
    let action = if to == AlertStatus::Resolved { "alert.resolve" } else { "alert.acknowledge" };
    let entry = AuditEntry::ok(principal.staff_id(), action, "governance_alert", alert.id)
        .in_unit(alert.org_unit_id)
        .with_detail(json!({ "kind": alert.kind.as_str(), "subject": alert.subject, "from": alert.status.as_str() }));
    audit::record(&txn, entry).await?;
    let after = governance_alert::Entity::find_by_id(alert.id)
        .one(&txn)
        .await?
        .ok_or_else(|| AppError::not_found("alert", id))?;
    txn.commit().await?;
    Ok(after)
}
