//! CSV export of customers: only the columns the caller may read, cells
//! masked or left empty per customer as the field rules say, tags limited
//! to those it may see. Every export is audited. Members come from the
//! in-memory index (SQL when it cannot answer), rows are read and written
//! a page at a time ([`CsvExport`]), so a streamed download holds one page
//! in memory however large the export.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use entity::{customer, tag};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::CustomerFilter;
use super::listing::member_ids;
use super::tagging::visible_assignments_of;
use crate::authz::{Action, FieldAccess, FieldRule, Principal};
use crate::config::Limits;
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;

/// Rows read and rendered per page: one customer query, one assignment
/// query, at most one tag query.
pub const PAGE: usize = 2_000;

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

/// An export checked and counted, its rows not read yet: the header the
/// caller may see and the members' ids, which [`CsvExport::next_chunk`]
/// turns into CSV a page at a time. Only one page of rows is ever held.
pub struct CsvExport {
    principal: Arc<Principal>,
    header: Vec<&'static str>,
    ids: Vec<u32>,
    /// Rows rendered so far.
    done: usize,
    /// Tag names met so far (a page loads only the new ones).
    tag_names: HashMap<i64, String>,
}

impl CsvExport {
    /// Rows the export has.
    pub fn total_rows(&self) -> usize {
        self.ids.len()
    }

    /// Rows rendered so far.
    pub fn rows_done(&self) -> usize {
        self.done
    }

    /// The byte-order mark (so that spreadsheets read the Chinese right)
    /// and the header line.
    pub fn head(&self) -> String {
        format!("\u{feff}{}\n", self.header.join(","))
    }

    /// The next page of rows (at most [`PAGE`]), `None` when all are out.
    ///
    /// # Errors
    /// Database errors.
    pub async fn next_chunk(&mut self, db: &DatabaseConnection) -> AppResult<Option<String>> {
        let end = (self.done + PAGE).min(self.ids.len());
        if self.done >= end {
            return Ok(None);
        }
        let chunk: Vec<i64> = self.ids[self.done..end].iter().map(|id| i64::from(*id)).collect();
        let out = self.render(db, &chunk).await?;
        self.done = end;
        Ok(Some(out))
    }

    async fn render(&mut self, db: &DatabaseConnection, chunk: &[i64]) -> AppResult<String> {
        let principal = &*self.principal;
        let customers = customer::Entity::find()
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .order_by_asc(customer::Column::Id)
            .all(db)
            .await?;
        let assignments = visible_assignments_of(db, principal, chunk).await?;
        let unknown: BTreeSet<i64> =
            assignments.values().flatten().map(|a| a.tag_id).filter(|t| !self.tag_names.contains_key(t)).collect();
        if !unknown.is_empty() {
            let names = tag::Entity::find().filter(tag::Column::Id.is_in(unknown)).all(db).await?;
            self.tag_names.extend(names.into_iter().map(|t| (t.id, t.name)));
        }
        let mut out = String::with_capacity(customers.len() * 160);
        for c in customers {
            let tags: Vec<&str> = assignments
                .get(&c.id)
                .map(|a| a.iter().filter_map(|a| self.tag_names.get(&a.tag_id).map(String::as_str)).collect())
                .unwrap_or_default();
            let row: Vec<String> = self
                .header
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
        Ok(out)
    }
}

/// Starts an export of the customers matching `filter` in the caller's
/// view: checks the filter, finds the members (from the in-memory index
/// when it can answer), refuses above `max_rows`, and audits the export
/// with its row count and columns (the audit row says what was handed
/// out; a download cut short still counts). No customer row is read yet.
///
/// # Errors
/// `LIMIT_EXCEEDED` above `max_rows`; the filter's own errors.
#[tracing::instrument(skip(db, index, principal, filter), fields(staff = principal.staff.id))]
pub async fn start_export(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: Arc<Principal>,
    filter: &CustomerFilter,
    max_rows: usize,
) -> AppResult<CsvExport> {
    let members = member_ids(db, index, &principal, filter).await?;
    let total = usize::try_from(members.len()).unwrap_or(usize::MAX);
    if total > max_rows {
        return Err(AppError::LimitExceeded(format!("{total} customers match; an export holds at most {max_rows}")));
    }
    // A guarded column (a row of the field rules) is exported when the
    // caller may read its field, at least masked, somewhere in its scope.
    let scope = principal.scope(Action::CustomerRead);
    let shown =
        |rule: &FieldRule| scope.unit_ids().any(|u| principal.field_access(rule.field, u) != FieldAccess::Hidden);
    let header: Vec<&'static str> =
        COLUMNS.iter().copied().filter(|c| FieldRule::by_export(c).is_none_or(shown)).collect();
    let mut entry = AuditEntry::ok(principal.staff_id(), "customer.export", "customer", "")
        .in_unit(principal.staff.home_org_unit_id)
        .with_detail(json!({ "rows": total, "columns": header }));
    entry.object_id = None;
    audit::record(db, entry).await?;
    Ok(CsvExport { principal, header, ids: members.iter().collect(), done: 0, tag_names: HashMap::new() })
}

/// The customers matching `filter` in the caller's view, as one CSV
/// string (UTF-8 with a byte-order mark), and how many rows it has: the
/// GraphQL `csv` fields, held in memory, so capped at `max_export_rows`.
/// Large exports stream instead (`GET /export/customers.csv`).
///
/// # Errors
/// `LIMIT_EXCEEDED` above `max_export_rows`; the filter's own errors.
pub async fn customers_csv(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: Arc<Principal>,
    limits: &Limits,
    filter: &CustomerFilter,
) -> AppResult<(String, usize)> {
    let mut export = start_export(db, index, principal, filter, limits.max_export_rows).await?;
    let mut out = export.head();
    while let Some(chunk) = export.next_chunk(db).await? {
        out.push_str(&chunk);
    }
    Ok((out, export.total_rows()))
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
