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
use crate::authz::{Action, CustomerField, FieldAccess, Principal};
use crate::config::Limits;
use crate::domain::Phone;
use crate::error::{AppError, AppResult};

const BATCH: usize = 1_000;

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
    let scope = principal.scope(Action::CustomerRead);
    let shown =
        |field: CustomerField| scope.unit_ids().any(|u| principal.field_access(field, u) != FieldAccess::Hidden);
    let (phone, birth, spend) =
        (shown(CustomerField::Phone), shown(CustomerField::BirthDate), shown(CustomerField::TotalSpend));
    let mut header = vec!["id", "name"];
    if phone {
        header.push("phone");
    }
    header.extend(["gender"]);
    if birth {
        header.push("birthDate");
    }
    header.extend(["city", "industry", "channel"]);
    if spend {
        header.extend(["totalSpendCents", "orderCount", "lastOrderAt"]);
    }
    header.extend(["addedAt", "orgUnit", "tags"]);
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
            let access = |field| principal.field_access(field, c.org_unit_id);
            let mut row: Vec<String> = vec![c.id.to_string(), cell(&c.name)];
            if phone {
                row.push(match (access(CustomerField::Phone), c.phone.as_deref()) {
                    (FieldAccess::Full, Some(p)) => cell(p),
                    (FieldAccess::Masked, Some(p)) => cell(&Phone::mask(p)),
                    _ => String::new(),
                });
            }
            row.push(c.gender.as_str().to_owned());
            if birth {
                let readable = access(CustomerField::BirthDate) == FieldAccess::Full;
                row.push(c.birth_date.filter(|_| readable).map(|d| d.to_string()).unwrap_or_default());
            }
            for text in [&c.city, &c.industry, &c.channel] {
                row.push(text.as_deref().map(cell).unwrap_or_default());
            }
            if spend {
                if access(CustomerField::TotalSpend) == FieldAccess::Full {
                    row.push(c.total_spend_cents.to_string());
                    row.push(c.order_count.to_string());
                    row.push(c.last_order_at.map(|t| t.to_rfc3339()).unwrap_or_default());
                } else {
                    row.extend([String::new(), String::new(), String::new()]);
                }
            }
            row.push(c.added_at.to_rfc3339());
            row.push(principal.org.get(c.org_unit_id).map(|u| cell(&u.code)).unwrap_or_default());
            let tags: Vec<&str> = assignments
                .get(&c.id)
                .map(|a| a.iter().filter_map(|a| names.get(&a.tag_id).map(String::as_str)).collect())
                .unwrap_or_default();
            row.push(cell(&tags.join("|")));
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
    use super::cell;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("深圳"), "深圳");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
