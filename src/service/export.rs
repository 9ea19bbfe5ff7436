//! CSV export of customers: only the columns the caller may read, cells
//! masked or left empty per customer as the field rules say, tags limited
//! to those it may see. Every export is audited.

use std::collections::HashMap;

use entity::{customer, tag};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::{CustomerFilter, ids_in_scope};
use super::tagging::visible_assignments_of;
use crate::authz::{Action, FieldAccess, FieldRule, Principal};
use crate::config::Limits;
use crate::error::{AppError, AppResult};

const BATCH: usize = 1_000;

/// The columns, in order. Those of guarded fields are rows of the field
/// rules (their `export` name) and are shown per customer as those say.
const COLUMNS: &[&str] = &[
    "id",
    "name",
    "phone",
    "gender",
    "birthDate",
    "city",
    "industry",
    "channel",
    "totalSpendCents",
    "orderCount",
    "lastOrderAt",
    "addedAt",
    "orgUnit",
    "tags",
];

/// Columns of free text, quoted and defused by [`cell`] (the others are
/// numbers, dates and enum names).
fn is_text(column: &str) -> bool {
    matches!(column, "name" | "phone" | "city" | "industry" | "channel" | "orgUnit" | "tags")
}

/// A customer's stored value of a column, before the field rules apply.
fn raw_value(principal: &Principal, c: &customer::Model, tags: &[&str], column: &str) -> Option<String> {
    match column {
        "id" => Some(c.id.to_string()),
        "name" => Some(c.name.clone()),
        "phone" => c.phone.clone(),
        "gender" => Some(c.gender.as_str().to_owned()),
        "birthDate" => c.birth_date.map(|d| d.to_string()),
        "city" => c.city.clone(),
        "industry" => c.industry.clone(),
        "channel" => c.channel.clone(),
        "totalSpendCents" => Some(c.total_spend_cents.to_string()),
        "orderCount" => Some(c.order_count.to_string()),
        "lastOrderAt" => c.last_order_at.map(|t| t.to_rfc3339()),
        "addedAt" => Some(c.added_at.to_rfc3339()),
        "orgUnit" => principal.org.get(c.org_unit_id).map(|u| u.code.clone()),
        "tags" => Some(tags.join("|")),
        _ => None,
    }
}

/// One CSV cell: quoted when needed, and defused when a spreadsheet would
/// read it as a formula.
fn cell(raw: &str) -> String {
    let mut value = raw.to_owned();
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        value.insert(0, '\'');
    }
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

/// The customers matching `filter` in the caller's view, as CSV (UTF-8 with
/// a byte-order mark, so that spreadsheets read the Chinese right), and how
/// many rows it has.
///
/// # Errors
/// `LIMIT_EXCEEDED` above `max_export_rows`; the filter's own errors.
#[tracing::instrument(skip(db, principal, limits, filter), fields(staff = principal.staff.id))]
pub async fn customers_csv(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    filter: &CustomerFilter,
) -> AppResult<(String, usize)> {
    let ids = ids_in_scope(db, principal, filter).await?;
    if ids.len() > limits.max_export_rows {
        return Err(AppError::LimitExceeded(format!(
            "{} customers match; an export holds at most {}",
            ids.len(),
            limits.max_export_rows
        )));
    }
    // A guarded column (a row of the field rules) is exported when the
    // caller may read its field, at least masked, somewhere in its scope.
    let scope = principal.scope(Action::CustomerRead);
    let shown =
        |rule: &FieldRule| scope.unit_ids().any(|u| principal.field_access(rule.field, u) != FieldAccess::Hidden);
    let header: Vec<&str> = COLUMNS.iter().copied().filter(|c| FieldRule::by_export(c).is_none_or(shown)).collect();
    let mut out = String::from("\u{feff}");
    out.push_str(&header.join(","));
    out.push('\n');

    for chunk in ids.chunks(BATCH) {
        let customers = customer::Entity::find()
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .order_by_asc(customer::Column::Id)
            .all(db)
            .await?;
        let assignments = visible_assignments_of(db, principal, chunk).await?;
        let tag_ids: Vec<i64> = assignments.values().flatten().map(|a| a.tag_id).collect();
        let names: HashMap<i64, String> = tag::Entity::find()
            .filter(tag::Column::Id.is_in(tag_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|t| (t.id, t.name))
            .collect();
        for c in customers {
            let tags: Vec<&str> = assignments
                .get(&c.id)
                .map(|a| a.iter().filter_map(|a| names.get(&a.tag_id).map(String::as_str)).collect())
                .unwrap_or_default();
            let row: Vec<String> = header
                .iter()
                .map(|column| {
                    let raw = raw_value(principal, &c, &tags, column);
                    let value = match FieldRule::by_export(column) {
                        Some(rule) => {
                            raw.and_then(|v| rule.show(principal.field_access(rule.field, c.org_unit_id), &v))
                        }
                        None => raw,
                    };
                    let value = value.unwrap_or_default();
                    if is_text(column) { cell(&value) } else { value }
                })
                .collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    let mut entry = AuditEntry::ok(principal.staff_id(), "customer.export", "customer", "")
        .in_unit(principal.staff.home_org_unit_id)
        .with_detail(json!({ "rows": ids.len(), "columns": header }));
    entry.object_id = None;
    audit::record(db, entry).await?;
    Ok((out, ids.len()))
}

#[cfg(test)]
mod tests {
    use super::{COLUMNS, cell};
    use crate::authz::FIELD_RULES;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("深圳"), "深圳");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }

    #[test]
    fn every_guarded_field_has_its_export_column() {
        for rule in FIELD_RULES {
            assert!(COLUMNS.contains(&rule.export), "{} has no column {}", rule.api, rule.export);
        }
    }
}
