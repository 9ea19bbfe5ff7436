//! The append-only audit log. Rows are written in the same transaction as
//! the change they describe; nothing updates or deletes them.

use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};

use entity::{audit_log, enums::AuditOutcome, tag};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
};
use serde_json::{Value, json};

use crate::authz::{Action, ClassAccess, FieldAccess, FieldRule, Principal};
use crate::domain::{AuditEntryId, OrgUnitId, PageArgs, StaffId};
use crate::error::{AppError, AppResult};
use crate::request_id;

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: Option<StaffId>,
    /// `customer.create`, `customer.tag`, `tag_group.create`, …
    pub action: &'static str,
    pub object_kind: &'static str,
    pub object_id: Option<String>,
    pub org_unit_id: Option<i64>,
    pub outcome: AuditOutcome,
    pub detail: Value,
}

impl AuditEntry {
    /// A successful change made by `actor`.
    pub fn ok(actor: StaffId, action: &'static str, object_kind: &'static str, object_id: impl ToString) -> Self {
        Self {
            actor: Some(actor),
            action,
            object_kind,
            object_id: Some(object_id.to_string()),
            org_unit_id: None,
            outcome: AuditOutcome::Ok,
            detail: Value::Null,
        }
    }

    pub fn in_unit(mut self, org_unit_id: i64) -> Self {
        self.org_unit_id = Some(org_unit_id);
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Appends one row; the request id comes from the current request.
///
/// # Errors
/// Database errors.
pub async fn record(conn: &impl ConnectionTrait, entry: AuditEntry) -> Result<(), DbErr> {
    let action = entry.action.to_owned();
    record_action(conn, entry, action).await
}

/// As [`record`], with an action named at run time (`mutation.<field>`).
///
/// # Errors
/// Database errors.
pub async fn record_action(conn: &impl ConnectionTrait, entry: AuditEntry, action: String) -> Result<(), DbErr> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        occurred_at: Set(Utc::now()),
        actor_staff_id: Set(entry.actor.map(|s| s.0)),
        action: Set(action),
        object_kind: Set(entry.object_kind.to_owned()),
        object_id: Set(entry.object_id),
        org_unit_id: Set(entry.org_unit_id),
        outcome: Set(entry.outcome),
        request_id: Set(request_id::current()),
        detail: Set(entry.detail),
    })
    .exec(conn)
    .await?;
    Ok(())
}

/// Which rows to list; every part is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<StaffId>,
    /// An action (`customer.tag`), or a prefix ending in `.` or `*`
    /// (`customer.`, `tag*`).
    pub action: Option<String>,
    pub object_kind: Option<String>,
    pub object_id: Option<String>,
    /// Rows of this unit and the units below it.
    pub scope: Option<OrgUnitId>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub outcome: Option<AuditOutcome>,
}

/// A page of rows, newest first, with each row's cursor; values the reader
/// may not see are masked.
pub type AuditPage = super::NewestFirst<audit_log::Model>;

const ORDERING: &str = "audit.newest";

/// The rows the caller may read: those of the units where it holds
/// `audit_log:read`; rows of no unit (system-wide changes) only for
/// readers at the root.
fn readable(principal: &Principal) -> Condition {
    let scope = principal.scope(Action::AuditLogRead);
    let mut cond = Condition::any().add(scope.condition(audit_log::Column::OrgUnitId));
    let at_root =
        principal.org.all().iter().find(|u| u.parent_id.is_none()).is_some_and(|root| scope.contains(root.id));
    if at_root {
        cond = cond.add(audit_log::Column::OrgUnitId.is_null());
    }
    cond
}

fn filtered(principal: &Principal, filter: &AuditFilter) -> AppResult<Condition> {
    if !principal.may_anywhere(Action::AuditLogRead) {
        return Err(AppError::Forbidden(format!("you may not {}", Action::AuditLogRead.name())));
    }
    let mut cond = Condition::all().add(readable(principal));
    if let Some(actor) = filter.actor {
        cond = cond.add(audit_log::Column::ActorStaffId.eq(actor.0));
    }
    if let Some(action) = filter.action.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        if action.chars().count() > 100 {
            return Err(AppError::validation("filter.action", "must be at most 100 characters"));
        }
        cond = match action.strip_suffix('*') {
            Some(prefix) => cond.add(audit_log::Column::Action.starts_with(prefix)),
            None if action.ends_with('.') => cond.add(audit_log::Column::Action.starts_with(action)),
            None => cond.add(audit_log::Column::Action.eq(action)),
        };
    }
    if let Some(kind) = &filter.object_kind {
        cond = cond.add(audit_log::Column::ObjectKind.eq(kind.as_str()));
    }
    if let Some(id) = &filter.object_id {
        cond = cond.add(audit_log::Column::ObjectId.eq(id.as_str()));
    }
    if let Some(scope) = filter.scope {
        if principal.org.get(scope.0).is_none() {
            return Err(AppError::not_found("org unit", scope));
        }
        let units: Vec<i64> = principal.org.subtree(scope.0).map(|u| u.id).collect();
        cond = cond.add(audit_log::Column::OrgUnitId.is_in(units));
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(AppError::validation("filter.from", "must not be after `to`"));
    }
    if let Some(from) = filter.from {
        cond = cond.add(audit_log::Column::OccurredAt.gte(from));
    }
    if let Some(to) = filter.to {
        cond = cond.add(audit_log::Column::OccurredAt.lte(to));
    }
    if let Some(outcome) = filter.outcome {
        cond = cond.add(audit_log::Column::Outcome.eq(outcome));
    }
    Ok(cond)
}

/// A page of the audit log, newest first.
///
/// # Errors
/// `FORBIDDEN` without `audit_log:read` anywhere, `VALIDATION` for a bad
/// cursor or filter, `NOT_FOUND` for an unknown scope.
pub async fn list(
    db: &impl ConnectionTrait,
    principal: &Principal,
    filter: &AuditFilter,
    page: &PageArgs,
) -> AppResult<AuditPage> {
    let query = audit_log::Entity::find().filter(filtered(principal, filter)?);
    let mut page = super::newest_first(db, query, audit_log::Column::Id, |r| r.id, ORDERING, page).await?;
    let mut named = BTreeSet::new();
    for (_, row) in &page.items {
        tags_named(row, &mut named);
    }
    let tags = TagSight::load(db, named).await?;
    for (_, row) in &mut page.items {
        row.detail = masked(principal, row);
        tags.hide_unseen(principal, row);
    }
    Ok(page)
}

/// One row the caller may read, masked as [`list`] masks it.
///
/// # Errors
/// `NOT_FOUND` for a missing row and for one the caller may not read alike.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: AuditEntryId) -> AppResult<audit_log::Model> {
    let mut row = audit_log::Entity::find_by_id(id.0)
        .filter(readable(principal))
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("audit log entry", id))?;
    row.detail = masked(principal, &row);
    let mut named = BTreeSet::new();
    tags_named(&row, &mut named);
    TagSight::load(db, named).await?.hide_unseen(principal, &mut row);
    Ok(row)
}

/// Keys under which audit details name tags by id.
const TAG_KEYS: [&str; 4] = ["tagId", "tagIds", "tag_id", "tag_ids"];

/// The ids of the tags a row is about: its object when that is a tag, and
/// every id under a [`TAG_KEYS`] key of its detail.
fn tags_named(row: &audit_log::Model, out: &mut BTreeSet<i64>) {
    if row.object_kind == "tag"
        && let Some(id) = row.object_id.as_deref().and_then(|id| id.parse().ok())
    {
        out.insert(id);
    }
    walk_tag_ids(&row.detail, out);
}

/// Every id under a [`TAG_KEYS`] key, at any depth.
fn walk_tag_ids(value: &Value, out: &mut BTreeSet<i64>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if TAG_KEYS.contains(&key.as_str()) {
                    let ids = inner.as_array().map_or_else(|| vec![inner], |a| a.iter().collect());
                    out.extend(ids.into_iter().filter_map(Value::as_i64));
                } else {
                    walk_tag_ids(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk_tag_ids(v, out)),
        _ => {}
    }
}

/// `value` (a detail or a change request's payload, about `unit`) as
/// `principal` may see it: the ids of tags it may not see removed, and
/// nothing but `{ "hidden": "***" }` left when those were all it named.
///
/// # Errors
/// Database errors.
pub async fn without_unseen_tags(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: Option<i64>,
    mut value: Value,
) -> AppResult<Value> {
    let mut named = BTreeSet::new();
    walk_tag_ids(&value, &mut named);
    let tags = TagSight::load(db, named).await?;
    let (named, kept) = drop_unseen(&mut value, &|tag| tags.sees(principal, tag, unit));
    Ok(if named && !kept { json!({ "hidden": HIDDEN }) } else { value })
}

/// What decides whether a reader may see a tag named in an audit row: its
/// group's visibility class, or the owner of a personal tag.
struct TagSight(HashMap<i64, (Option<String>, Option<i64>)>);

impl TagSight {
    async fn load(db: &impl ConnectionTrait, ids: BTreeSet<i64>) -> AppResult<Self> {
        if ids.is_empty() {
            return Ok(Self(HashMap::new()));
        }
        let tags = tag::Entity::find().filter(tag::Column::Id.is_in(ids)).all(db).await?;
        let groups = super::tag_library::groups_by_id(db, tags.iter().filter_map(|t| t.group_id)).await?;
        Ok(Self(
            tags.into_iter()
                .map(|t| {
                    let class = t.group_id.and_then(|g| groups.get(&g)).map(|g| g.visibility_class.clone());
                    (t.id, (class, t.owner_staff_id))
                })
                .collect(),
        ))
    }

    /// As everywhere else: a library tag where the reader sees its class at
    /// the row's unit, a personal tag for its owner or a reader of all
    /// personal tags. Unknown ids are not seen.
    fn sees(&self, principal: &Principal, tag: i64, unit: Option<i64>) -> bool {
        match self.0.get(&tag) {
            None => false,
            Some((Some(class), _)) => unit.is_some_and(|u| principal.class_scope(class, ClassAccess::Read).contains(u)),
            Some((None, owner)) => *owner == Some(principal.staff.id) || principal.reads_all_personal_tags(),
        }
    }

    /// Removes the tags the reader may not see from the row, ids included;
    /// a row about nothing but such tags keeps only that something was
    /// hidden (not which customers carry them).
    fn hide_unseen(&self, principal: &Principal, row: &mut audit_log::Model) {
        let unit = row.org_unit_id;
        let sees = |tag: i64| self.sees(principal, tag, unit);
        let object_hidden = row.object_kind == "tag"
            && row.object_id.as_deref().and_then(|id| id.parse().ok()).is_some_and(|id| !sees(id));
        let (named, kept) = drop_unseen(&mut row.detail, &sees);
        if object_hidden || (named && !kept) {
            row.detail = json!({ "hidden": HIDDEN });
        }
        if object_hidden {
            row.object_id = None;
        }
    }
}

/// Drops unseen tag ids under [`TAG_KEYS`] keys; answers whether the value
/// named any tag, and whether any is left.
fn drop_unseen(value: &mut Value, sees: &dyn Fn(i64) -> bool) -> (bool, bool) {
    let (mut named, mut kept) = (false, false);
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if !TAG_KEYS.contains(&key.as_str()) {
                    let (n, k) = drop_unseen(inner, sees);
                    (named, kept) = (named || n, kept || k);
                    continue;
                }
                match inner {
                    Value::Array(ids) => {
                        named |= !ids.is_empty();
                        ids.retain(|id| id.as_i64().is_none_or(sees));
                        kept |= !ids.is_empty();
                    }
                    Value::Number(id) => {
                        named = true;
                        if id.as_i64().is_some_and(sees) {
                            kept = true;
                        } else {
                            *inner = json!(HIDDEN);
                        }
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let (n, k) = drop_unseen(item, sees);
                (named, kept) = (named || n, kept || k);
            }
        }
        _ => {}
    }
    (named, kept)
}

/// Rows matching the filter that the caller may read.
///
/// # Errors
/// As [`list`].
pub async fn count(db: &impl ConnectionTrait, principal: &Principal, filter: &AuditFilter) -> AppResult<u64> {
    Ok(audit_log::Entity::find().filter(filtered(principal, filter)?).count(db).await?)
}

/// Shown instead of a value the reader may not see.
pub const HIDDEN: &str = "***";

/// The row's detail as `principal` may see it:
/// * guarded customer fields (`phone`, `birthDate`, `totalSpend`, …) as
///   the reader's field rules say for the row's unit — in full, masked, or
///   hidden — wherever they appear (`{ "phone": … }` and `{ "changes":
///   { "phone": { "from", "to" } } }`);
/// * the whole detail of a row about tags of a visibility class the
///   reader may not see at the row's unit;
/// * the name of somebody else's personal tag, unless the reader sees all
///   personal tags.
pub fn masked(principal: &Principal, row: &audit_log::Model) -> Value {
    let unit = row.org_unit_id;
    if let Some(class) = row.detail.get("visibilityClass").and_then(Value::as_str) {
        let sees = unit.is_some_and(|u| principal.class_scope(class, ClassAccess::Read).contains(u));
        if !sees {
            return json!({ "visibilityClass": class, "hidden": HIDDEN });
        }
    }
    let mut detail = row.detail.clone();
    let personal = detail.get("personal").and_then(Value::as_bool).unwrap_or(false);
    if personal
        && row.actor_staff_id != Some(principal.staff.id)
        && !principal.reads_all_personal_tags()
        && let Some(name) = detail.get_mut("name")
    {
        *name = json!(HIDDEN);
    }
    mask_fields(principal, unit, &mut detail);
    detail
}

fn mask_fields(principal: &Principal, unit: Option<i64>, value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match FieldRule::by_api(key) {
                    Some(rule) => {
                        let access = unit.map_or(FieldAccess::Hidden, |u| principal.field_access(rule.field, u));
                        mask_value(rule, access, inner);
                    }
                    None => mask_fields(principal, unit, inner),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_fields(principal, unit, v)),
        _ => {}
    }
}

/// Masks a guarded value, or each end of a `{ from, to }` change of one.
fn mask_value(rule: &FieldRule, access: FieldAccess, value: &mut Value) {
    match value {
        Value::Null => {}
        Value::Object(map) => map.values_mut().for_each(|v| mask_value(rule, access, v)),
        Value::String(s) if access == FieldAccess::Masked && rule.mask.is_some() => {
            *s = rule.show(access, s).unwrap_or_default();
        }
        _ if access == FieldAccess::Full => {}
        other => *other = json!(HIDDEN),
    }
}
