//! Rules as library objects: created, edited, enabled, disabled, archived
//! and rolled back, each change a new version with its audit row, checked
//! at save time (the condition parses, its tags and the actions' tags are
//! in the rule's unit's library, the caller may use the actions' tags
//! there, and no chain of rules loops).

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use entity::{enums::RuleStatus, rule, rule_version};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
    sea_query::Expr,
};
use serde_json::json;

use super::condition;
use super::eval::{Action, ActionOp, CompiledRule, find_cycle};
use super::library::{UnitLibrary, compile, stored_actions};
use crate::authz::{Action as Permit, ClassAccess, Permission, Principal};
use crate::domain::{OrgUnitId, RuleId};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::service::audit::{self, AuditEntry};

/// Longest rule name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most actions one rule may have.
pub const MAX_ACTIONS: usize = 10;

/// A new rule.
#[derive(Debug, Clone)]
pub struct RuleDraft {
    pub org_unit: OrgUnitId,
    pub name: String,
    pub condition: String,
    pub actions: Vec<Action>,
    pub override_manual_removal: bool,
    pub priority: i32,
    /// Rules start disabled unless asked: dry-run them first.
    pub enabled: bool,
    /// `DAILY HH:MM`: the rule runs on this schedule instead of on events.
    pub schedule: Option<String>,
}

/// A change to a rule; absent parts stay.
#[derive(Debug, Clone, Default)]
pub struct RulePatch {
    pub name: Option<String>,
    pub condition: Option<String>,
    pub actions: Option<Vec<Action>>,
    pub override_manual_removal: Option<bool>,
    pub priority: Option<i32>,
    /// `Some(None)` takes the schedule away (the rule runs on events again).
    pub schedule: Option<Option<String>>,
}

/// A schedule as stored: checked, in its canonical text.
///
/// # Errors
/// `VALIDATION` on `schedule` for one that does not parse.
pub(super) fn check_schedule(schedule: Option<&str>) -> AppResult<Option<String>> {
    schedule.map(|s| super::slot::Schedule::parse("schedule", s).map(|s| s.text())).transpose()
}

/// True when the caller may read rules of `unit`: it reads rules at that
/// unit or below it (where the rule applies).
pub fn may_read(principal: &Principal, unit: i64) -> bool {
    principal.scope(Permit::RuleRead).unit_ids().any(|u| principal.org.is_within(u, unit))
}

pub(super) fn check_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(AppError::validation("name", format!("must be 1 to {MAX_NAME_CHARS} characters")));
    }
    Ok(name.to_owned())
}

/// Checks a rule's condition and actions for its unit and the caller (a
/// dry run of an unsaved rule checks it the same way); the
/// compiled rule is what loop detection needs.
pub(super) async fn validate(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: i64,
    id: i64,
    condition_text: &str,
    actions: &[Action],
) -> AppResult<(CompiledRule, UnitLibrary)> {
    let condition = condition::parse(condition_text).map_err(|e| AppError::validation("condition", e.to_string()))?;
    let library = UnitLibrary::load(db, &principal.org, unit).await?;
    let tag_ids = library.resolve_condition("condition", &condition)?;
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(AppError::validation("actions", format!("a rule has 1 to {MAX_ACTIONS} actions")));
    }
    let mut seen_tags = BTreeSet::new();
    let mut seen_groups = BTreeSet::new();
    for (i, action) in actions.iter().enumerate() {
        let field = format!("actions[{i}]");
        let Some((tag, group)) = library.tags.get(&action.tag_id) else {
            return Err(AppError::validation(
                format!("{field}.tagId"),
                format!("tag {} is not an active tag of this unit's tag library", action.tag_id),
            ));
        };
        principal.require_permission(&Permission::tag_class(&group.visibility_class, ClassAccess::Use), unit).map_err(
            |_| AppError::Forbidden(format!("{field}: you may not use tags of group {:?} here", group.name)),
        )?;
        if !seen_tags.insert(tag.id) {
            return Err(AppError::validation(format!("{field}.tagId"), format!("tag {:?} is named twice", tag.name)));
        }
        if action.op == ActionOp::Move && !group.exclusive {
            return Err(AppError::validation(
                format!("{field}.op"),
                format!("MOVE needs a tag of an exclusive group; {:?} is not one", group.name),
            ));
        }
        if action.op != ActionOp::Remove && group.exclusive && !seen_groups.insert(group.id) {
            return Err(AppError::validation(
                format!("{field}.tagId"),
                format!("two tags of the exclusive group {:?}", group.name),
            ));
        }
        if action.op == ActionOp::Remove && action.ttl_seconds.is_some() {
            return Err(AppError::validation(format!("{field}.ttlSeconds"), "only tags put on expire"));
        }
        crate::service::tag_library::check_ttl(action.ttl_seconds)
            .map_err(|e| AppError::validation(format!("{field}.ttlSeconds"), e.message()))?;
    }
    let compiled = CompiledRule::new(id, 0, String::new(), 0, condition, tag_ids, actions.to_vec(), false)
        .map_err(|e| AppError::validation("condition", e))?;
    Ok((compiled, library))
}

/// `VALIDATION` when `candidate` and the other live rules that apply to
/// the same customers would loop.
async fn refuse_loops(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: i64,
    candidate: CompiledRule,
    library: &UnitLibrary,
) -> AppResult<()> {
    let others = rule::Entity::find()
        .filter(rule::Column::Status.ne(RuleStatus::Archived))
        .filter(rule::Column::Id.ne(candidate.id))
        .all(db)
        .await?;
    let org = &principal.org;
    let mut libraries: HashMap<i64, UnitLibrary> = HashMap::new();
    let mut rules = vec![candidate];
    let mut exclusive = library.exclusive_of(rules[0].actions.iter().map(|a| a.tag_id));
    let mut names: HashMap<i64, String> = HashMap::new();
    for other in others.into_iter().filter(|r| org.is_within(r.org_unit_id, unit) || org.is_within(unit, r.org_unit_id))
    {
        if let std::collections::hash_map::Entry::Vacant(slot) = libraries.entry(other.org_unit_id) {
            slot.insert(UnitLibrary::load(db, org, other.org_unit_id).await?);
        }
        let lib = &libraries[&other.org_unit_id];
        if let Some(compiled) = compile(&other, lib) {
            let more = lib.exclusive_of(compiled.actions.iter().map(|a| a.tag_id));
            exclusive.group_of.extend(more.group_of);
            exclusive.members.extend(more.members);
            names.insert(other.id, other.name.clone());
            rules.push(compiled);
        }
    }
    let Some(cycle) = find_cycle(&rules, &exclusive) else { return Ok(()) };
    let chain: Vec<String> =
        cycle.iter().map(|id| names.get(id).cloned().unwrap_or_else(|| "this rule".to_owned())).collect();
    Err(AppError::validation(
        "condition",
        format!("rules would loop, each changing a tag the next one reads: {}", chain.join(" → ")),
    ))
}

pub(super) async fn name_taken(db: &impl ConnectionTrait, unit: i64, name: &str, except: i64) -> AppResult<()> {
    let taken = rule::Entity::find()
        .filter(rule::Column::OrgUnitId.eq(unit))
        .filter(rule::Column::Name.eq(name))
        .filter(rule::Column::Id.ne(except))
        .one(db)
        .await?;
    if taken.is_some() {
        return Err(AppError::validation("name", format!("a rule named {name:?} exists in this unit")));
    }
    Ok(())
}

async fn record_version(txn: &DatabaseTransaction, row: &rule::Model, change: &str, by: i64) -> AppResult<()> {
    rule_version::Entity::insert(rule_version::ActiveModel {
        id: NotSet,
        rule_id: Set(row.id),
        version: Set(row.version),
        change: Set(change.to_owned()),
        name: Set(row.name.clone()),
        status: Set(row.status),
        condition: Set(row.condition.clone()),
        actions: Set(row.actions.clone()),
        override_manual_removal: Set(row.override_manual_removal),
        priority: Set(row.priority),
        schedule: Set(row.schedule.clone()),
        changed_by: Set(by),
        changed_at: Set(row.updated_at),
    })
    .exec(txn)
    .await?;
    Ok(())
}

async fn audit_change(
    txn: &DatabaseTransaction,
    principal: &Principal,
    action: &'static str,
    row: &rule::Model,
) -> AppResult<()> {
    audit::record(
        txn,
        AuditEntry::ok(principal.staff_id(), action, "rule", row.id).in_unit(row.org_unit_id).with_detail(json!({
            "name": row.name,
            "version": row.version,
            "status": row.status,
            "condition": row.condition,
            "actions": row.actions,
            "schedule": row.schedule,
        })),
    )
    .await?;
    Ok(())
}

fn actions_json(actions: &[Action]) -> serde_json::Value {
    serde_json::to_value(actions).unwrap_or_default()
}

/// Creates a rule (disabled unless `enabled`), version 1.
///
/// # Errors
/// `FORBIDDEN` without `rule:write` at the unit or the use of an action's
/// tag there; `VALIDATION` for a bad name, condition (with its column) or
/// action, a name taken in the unit, or a loop; `NOT_FOUND` for an unknown
/// unit.
#[tracing::instrument(skip(db, principal, draft), fields(staff = principal.staff.id))]
pub async fn create_rule(db: &DatabaseConnection, principal: &Principal, draft: RuleDraft) -> AppResult<rule::Model> {
    let txn = db.begin().await?;
    let row = create_rule_in(&txn, principal, draft, Permit::RuleWrite).await?;
    txn.commit().await?;
    Ok(row)
}

/// [`create_rule`] in `txn`, the caller holding `permit` at the unit
/// (`rule:write`, or `rule:propose` when an approved request applies it).
pub(super) async fn create_rule_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    draft: RuleDraft,
    permit: Permit,
) -> AppResult<rule::Model> {
    let unit = draft.org_unit.0;
    if principal.org.get(unit).is_none() {
        return Err(AppError::not_found("org unit", draft.org_unit));
    }
    principal.require(permit, unit)?;
    let name = check_name(&draft.name)?;
    let schedule = check_schedule(draft.schedule.as_deref())?;
    let (compiled, library) = validate(txn, principal, unit, 0, &draft.condition, &draft.actions).await?;
    name_taken(txn, unit, &name, 0).await?;
    if draft.enabled {
        refuse_loops(txn, principal, unit, compiled, &library).await?;
    }
    let now = Utc::now();
    let inserted = rule::Entity::insert(rule::ActiveModel {
        id: NotSet,
        org_unit_id: Set(unit),
        name: Set(name),
        status: Set(if draft.enabled { RuleStatus::Enabled } else { RuleStatus::Disabled }),
        version: Set(1),
        condition: Set(draft.condition.trim().to_owned()),
        actions: Set(actions_json(&draft.actions)),
        override_manual_removal: Set(draft.override_manual_removal),
        priority: Set(draft.priority),
        schedule: Set(schedule),
        created_by: Set(principal.staff.id),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec(txn)
    .await;
    let id = match inserted {
        Ok(res) => res.last_insert_id,
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::validation("name", "a rule of this name exists in this unit"));
        }
        Err(err) => return Err(err.into()),
    };
    let row = rule::Entity::find_by_id(id).one(txn).await?.ok_or_else(|| AppError::not_found("rule", RuleId(id)))?;
    record_version(txn, &row, "create", principal.staff.id).await?;
    audit_change(txn, principal, "rule.create", &row).await?;
    Ok(row)
}

/// The rule, when the caller may read it.
///
/// # Errors
/// `NOT_FOUND` for a missing rule and one the caller may not read alike.
pub async fn find_rule(db: &impl ConnectionTrait, principal: &Principal, id: RuleId) -> AppResult<rule::Model> {
    let row = rule::Entity::find_by_id(id.0).one(db).await?;
    row.filter(|r| may_read(principal, r.org_unit_id)).ok_or_else(|| AppError::not_found("rule", id))
}

/// The rule for a change: readable, and `permit` (`rule:write`, or
/// `rule:propose` for an approved request) at its unit.
async fn writable(
    txn: &DatabaseTransaction,
    principal: &Principal,
    id: RuleId,
    permit: Permit,
) -> AppResult<rule::Model> {
    let row = find_rule(txn, principal, id).await?;
    principal.require(permit, row.org_unit_id)?;
    Ok(row)
}

/// Writes `next` over `current` if nobody changed the rule meanwhile, as
/// version `current.version + 1`.
async fn save(
    txn: &DatabaseTransaction,
    principal: &Principal,
    current: &rule::Model,
    mut next: rule::Model,
    change: &str,
    audit_action: &'static str,
) -> AppResult<rule::Model> {
    next.version = current.version + 1;
    next.updated_at = Utc::now();
    let res = rule::Entity::update_many()
        .col_expr(rule::Column::Name, Expr::value(next.name.clone()))
        .col_expr(rule::Column::Status, Expr::value(next.status.as_str()))
        .col_expr(rule::Column::Version, Expr::value(next.version))
        .col_expr(rule::Column::Condition, Expr::value(next.condition.clone()))
        .col_expr(rule::Column::Actions, Expr::value(next.actions.clone()))
        .col_expr(rule::Column::OverrideManualRemoval, Expr::value(next.override_manual_removal))
        .col_expr(rule::Column::Priority, Expr::value(next.priority))
        .col_expr(rule::Column::Schedule, Expr::value(next.schedule.clone()))
        .col_expr(rule::Column::UpdatedAt, Expr::value(next.updated_at))
        .filter(rule::Column::Id.eq(current.id))
        .filter(rule::Column::Version.eq(current.version))
        .exec(txn)
        .await;
    match res {
        Ok(r) if r.rows_affected == 0 => {
            return Err(AppError::Conflict("the rule changed meanwhile; read it again".to_owned()));
        }
        Ok(_) => {}
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::validation("name", "a rule of this name exists in this unit"));
        }
        Err(err) => return Err(err.into()),
    }
    record_version(txn, &next, change, principal.staff.id).await?;
    audit_change(txn, principal, audit_action, &next).await?;
    Ok(next)
}

fn check_version(row: &rule::Model, expected: Option<i32>) -> AppResult<()> {
    match expected {
        Some(v) if v != row.version => {
            Err(AppError::Conflict(format!("the rule is at version {}, not {v}; read it again", row.version)))
        }
        _ => Ok(()),
    }
}

/// Edits a rule: a new version, checked as at creation.
///
/// # Errors
/// As [`create_rule`]; `CONFLICT` when `expected_version` is not the
/// rule's version or it changed meanwhile; `VALIDATION` for an archived
/// rule.
#[tracing::instrument(skip(db, principal, patch), fields(staff = principal.staff.id))]
pub async fn update_rule(
    db: &DatabaseConnection,
    principal: &Principal,
    id: RuleId,
    expected_version: Option<i32>,
    patch: RulePatch,
) -> AppResult<rule::Model> {
    let txn = db.begin().await?;
    let saved = update_rule_in(&txn, principal, id, expected_version, patch, Permit::RuleWrite).await?;
    txn.commit().await?;
    Ok(saved)
}

/// [`update_rule`] in `txn`, the caller holding `permit` at the rule's unit.
pub(super) async fn update_rule_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    id: RuleId,
    expected_version: Option<i32>,
    patch: RulePatch,
    permit: Permit,
) -> AppResult<rule::Model> {
    let current = writable(txn, principal, id, permit).await?;
    check_version(&current, expected_version)?;
    if current.status == RuleStatus::Archived {
        return Err(AppError::validation("id", "an archived rule cannot change"));
    }
    let mut next = current.clone();
    if let Some(name) = &patch.name {
        next.name = check_name(name)?;
        name_taken(txn, next.org_unit_id, &next.name, next.id).await?;
    }
    if let Some(condition) = &patch.condition {
        next.condition = condition.trim().to_owned();
    }
    if let Some(actions) = &patch.actions {
        next.actions = actions_json(actions);
    }
    if let Some(o) = patch.override_manual_removal {
        next.override_manual_removal = o;
    }
    if let Some(p) = patch.priority {
        next.priority = p;
    }
    if let Some(schedule) = &patch.schedule {
        next.schedule = check_schedule(schedule.as_deref())?;
    }
    let actions = stored_actions(&next)?;
    let (compiled, library) = validate(txn, principal, next.org_unit_id, next.id, &next.condition, &actions).await?;
    if next.status == RuleStatus::Enabled {
        refuse_loops(txn, principal, next.org_unit_id, compiled, &library).await?;
    }
    save(txn, principal, &current, next, "update", "rule.update").await
}

/// Enables, disables or archives a rule. Enabling checks the rule again
/// (its tags may have changed since) and refuses loops; archiving is for
/// good.
///
/// # Errors
/// `FORBIDDEN` without `rule:write` at the rule's unit; `CONFLICT` on a
/// version mismatch; `VALIDATION` for an archived rule or one that no
/// longer passes the checks.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn set_status(
    db: &DatabaseConnection,
    principal: &Principal,
    id: RuleId,
    expected_version: Option<i32>,
    status: RuleStatus,
) -> AppResult<rule::Model> {
    let txn = db.begin().await?;
    let saved = set_status_in(&txn, principal, id, expected_version, status, Permit::RuleWrite).await?;
    txn.commit().await?;
    Ok(saved)
}

/// [`set_status`] in `txn`, the caller holding `permit` at the rule's unit.
pub(super) async fn set_status_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    id: RuleId,
    expected_version: Option<i32>,
    status: RuleStatus,
    permit: Permit,
) -> AppResult<rule::Model> {
    let current = writable(txn, principal, id, permit).await?;
    check_version(&current, expected_version)?;
    if current.status == RuleStatus::Archived {
        return Err(AppError::validation("id", "an archived rule cannot change"));
    }
    if current.status == status {
        return Ok(current);
    }
    if status == RuleStatus::Enabled {
        let actions = stored_actions(&current)?;
        let (compiled, library) =
            validate(txn, principal, current.org_unit_id, current.id, &current.condition, &actions).await?;
        refuse_loops(txn, principal, current.org_unit_id, compiled, &library).await?;
    }
    let (change, audit_action) = match status {
        RuleStatus::Enabled => ("enable", "rule.enable"),
        RuleStatus::Disabled => ("disable", "rule.disable"),
        RuleStatus::Archived => ("archive", "rule.archive"),
    };
    let next = rule::Model { status, ..current.clone() };
    save(txn, principal, &current, next, change, audit_action).await
}

/// Makes an earlier version's name, condition, actions and settings the
/// rule's next version (its status stays), checked as an edit.
///
/// # Errors
/// As [`update_rule`]; `NOT_FOUND` for a version the rule never had.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn rollback_rule(
    db: &DatabaseConnection,
    principal: &Principal,
    id: RuleId,
    to_version: i32,
) -> AppResult<rule::Model> {
    let txn = db.begin().await?;
    let current = writable(&txn, principal, id, Permit::RuleWrite).await?;
    if current.status == RuleStatus::Archived {
        return Err(AppError::validation("id", "an archived rule cannot change"));
    }
    let old = rule_version::Entity::find()
        .filter(rule_version::Column::RuleId.eq(current.id))
        .filter(rule_version::Column::Version.eq(to_version))
        .one(&txn)
        .await?
        .ok_or_else(|| AppError::not_found("rule version", to_version))?;
    let next = rule::Model {
        name: old.name,
        condition: old.condition,
        actions: old.actions,
        override_manual_removal: old.override_manual_removal,
        priority: old.priority,
        schedule: old.schedule,
        ..current.clone()
    };
    name_taken(&txn, next.org_unit_id, &next.name, next.id).await?;
    let actions = stored_actions(&next)?;
    let (compiled, library) = validate(&txn, principal, next.org_unit_id, next.id, &next.condition, &actions).await?;
    if next.status == RuleStatus::Enabled {
        refuse_loops(&txn, principal, next.org_unit_id, compiled, &library).await?;
    }
    let saved = save(&txn, principal, &current, next, "rollback", "rule.rollback").await?;
    txn.commit().await?;
    Ok(saved)
}

/// The rules that apply to the customers of `unit`: the unit's own and
/// those of the units above it, archived ones only when asked; by unit
/// (root first), then name.
///
/// # Errors
/// `NOT_FOUND` for an unknown unit or one where the caller reads no rules.
pub async fn rules_of_unit(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: OrgUnitId,
    include_archived: bool,
) -> AppResult<Vec<rule::Model>> {
    if principal.org.get(unit.0).is_none() || !principal.may(Permit::RuleRead, unit.0) {
        return Err(AppError::not_found("org unit", unit));
    }
    let chain = principal.org.ancestors_or_self(unit.0);
    let depth: HashMap<i64, usize> = chain.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
    let mut query = rule::Entity::find().filter(rule::Column::OrgUnitId.is_in(depth.keys().copied()));
    if !include_archived {
        query = query.filter(rule::Column::Status.ne(RuleStatus::Archived));
    }
    let mut rows = query.order_by_asc(rule::Column::Name).all(db).await?;
    rows.sort_by_key(|r| (depth.get(&r.org_unit_id).copied().unwrap_or(usize::MAX), r.name.clone()));
    Ok(rows)
}

/// Every version of a rule, newest first.
///
/// # Errors
/// `NOT_FOUND` for a rule the caller may not read.
pub async fn rule_history(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: RuleId,
) -> AppResult<Vec<rule_version::Model>> {
    let row = find_rule(db, principal, id).await?;
    Ok(rule_version::Entity::find()
        .filter(rule_version::Column::RuleId.eq(row.id))
        .order_by_desc(rule_version::Column::Version)
        .all(db)
        .await?)
}
