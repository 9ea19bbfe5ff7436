//! Library versions: every state a tag or tag group has had, one row per
//! version, and what changed from one version to the next. Edits write
//! here (`service::library`); the segment index follows the rows to
//! re-read moved tags.

use chrono::{DateTime, Utc};
use entity::library_version;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::Value;

use crate::domain::{ChangeRequestId, ObjectKey, StaffId};
use crate::error::AppResult;

/// One version to store.
pub struct NewVersion<'a> {
    pub key: ObjectKey,
    pub version: i32,
    /// `create`, `update`, `archive`, `restore`, `merge`, `rollback`.
    pub action: &'a str,
    /// The object's whole state after the change.
    pub state: Value,
    pub changed_by: Option<StaffId>,
    pub change_request: Option<ChangeRequestId>,
    pub at: DateTime<Utc>,
}

/// Stores one version.
///
/// # Errors
/// Database errors (a repeated version breaks `uq_library_version`).
pub async fn insert(db: &impl ConnectionTrait, new: NewVersion<'_>) -> AppResult<()> {
    library_version::Entity::insert(library_version::ActiveModel {
        id: NotSet,
        object_kind: Set(new.key.kind.as_str().to_owned()),
        object_id: Set(new.key.id),
        version: Set(new.version),
        action: Set(new.action.to_owned()),
        state: Set(new.state),
        changed_by: Set(new.changed_by.map(|s| s.0)),
        changed_at: Set(new.at),
        change_request_id: Set(new.change_request.map(|r| r.0)),
    })
    .exec(db)
    .await?;
    Ok(())
}

/// Stores the state an object had before its first recorded change (data
/// that predates versioning, such as seeded libraries), unless stored.
///
/// # Errors
/// Database errors.
pub async fn ensure_recorded(
    db: &impl ConnectionTrait,
    key: ObjectKey,
    version: i32,
    state: Value,
    at: DateTime<Utc>,
) -> AppResult<()> {
    let found = library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(key.kind.as_str()))
        .filter(library_version::Column::ObjectId.eq(key.id))
        .filter(library_version::Column::Version.eq(version))
        .count(db)
        .await?;
    if found == 0 {
        let first = NewVersion { key, version, action: "create", state, changed_by: None, change_request: None, at };
        insert(db, first).await?;
    }
    Ok(())
}

/// The stored state of `key` at `version`, if stored.
///
/// # Errors
/// Database errors.
pub async fn stored_state(db: &impl ConnectionTrait, key: ObjectKey, version: i32) -> AppResult<Option<Value>> {
    Ok(library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(key.kind.as_str()))
        .filter(library_version::Column::ObjectId.eq(key.id))
        .filter(library_version::Column::Version.eq(version))
        .one(db)
        .await?
        .map(|row| row.state))
}

/// One stored version of a tag or group, with what changed from the
/// version before it.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub version: i32,
    pub action: String,
    pub state: Value,
    pub changed_by: Option<i64>,
    pub changed_at: DateTime<Utc>,
    pub change_request_id: Option<i64>,
    /// `(field, before, after)`.
    pub changes: Vec<(String, Value, Value)>,
}

/// The fields of `after` that differ from `before`, as
/// `(field, before, after)`.
pub fn diff(before: Option<&Value>, after: &Value) -> Vec<(String, Value, Value)> {
    let empty = serde_json::Map::new();
    let before = before.and_then(Value::as_object).unwrap_or(&empty);
    let Some(after) = after.as_object() else { return Vec::new() };
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), before.get(k).cloned().unwrap_or(Value::Null), v.clone()))
        .collect()
}

/// The versions of an object, newest first. Objects created before
/// versioning show their current state as their first version.
///
/// # Errors
/// Database errors.
pub async fn history(
    db: &impl ConnectionTrait,
    key: ObjectKey,
    current_version: i32,
    current_state: Value,
    updated_at: DateTime<Utc>,
) -> AppResult<Vec<VersionEntry>> {
    let rows = library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(key.kind.as_str()))
        .filter(library_version::Column::ObjectId.eq(key.id))
        .order_by_asc(library_version::Column::Version)
        .all(db)
        .await?;
    let mut entries: Vec<VersionEntry> = Vec::with_capacity(rows.len() + 1);
    let mut previous: Option<Value> = None;
    for row in rows {
        entries.push(VersionEntry {
            version: row.version,
            action: row.action,
            changes: diff(previous.as_ref(), &row.state),
            state: row.state.clone(),
            changed_by: row.changed_by,
            changed_at: row.changed_at,
            change_request_id: row.change_request_id,
        });
        previous = Some(row.state);
    }
    if entries.last().is_none_or(|e| e.version < current_version) {
        entries.push(VersionEntry {
            version: current_version,
            action: "create".to_owned(),
            changes: diff(previous.as_ref(), &current_state),
            state: current_state,
            changed_by: None,
            changed_at: updated_at,
            change_request_id: None,
        });
    }
    entries.reverse();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff;

    #[test]
    fn a_diff_lists_changed_and_new_fields_only() {
        let before = json!({ "name": "a", "ttl": 1, "same": true });
        let after = json!({ "name": "b", "ttl": 1, "same": true, "new": 5 });
        let mut changes = diff(Some(&before), &after);
        changes.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            changes,
            vec![("name".to_owned(), json!("a"), json!("b")), ("new".to_owned(), json!(null), json!(5))]
        );
    }
}
