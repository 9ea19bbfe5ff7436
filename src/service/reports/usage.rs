//! `tagUsage`: per tag of the effective library at an org unit, how many
//! customers of the caller's scope there hold it, their share of that
//! scope, when it was last given, how often in the last 30 and 90 days,
//! and what put it on the customers holding it now (manual, rule, bulk,
//! import, …).
//!
//! Holders come from the segment index's bitmaps (one intersection per
//! tag), or from one grouped SQL count while the index builds. Recency
//! (`add_recency`) comes from grouped statements over the partial index
//! of the tag event log's ADD events, for customers of the scope (see
//! `scope_events` for the three ways), and only for the rows that need
//! it: a page in holder or name order asks it for its own tags. The
//! sources are asked only for the tags a response shows
//! ([`holders_by_source`]): one grouped count of their assignments by
//! `source`, so they add up to the holders.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use entity::{
    customer, customer_tag,
    enums::{TagOp, TagSource},
    tag, tag_event, tag_group,
};
use roaring::RoaringBitmap;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult, IsolationLevel,
    PaginatorTrait, QueryFilter, Statement, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Func, IntoColumnRef, Query},
};

use super::rollup::{self, EventRow, count_since};
use super::{ReportSettings, customer_scope, report_unit, settings_in_force};
use crate::authz::visibility::{class_units, on_customer_visible};
use crate::authz::{Principal, Scope};
use crate::domain::{Cursor, OrgUnitId, Page, PageArgs};
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;
use crate::service::tag_library::{library_for, tags_of_groups};
use crate::store::{CHUNK, id_in, ids_per_statement};

/// One tag's usage in the report's scope.
#[derive(Debug, Clone)]
pub struct TagUsage {
    pub tag: tag::Model,
    pub group: tag_group::Model,
    /// Customers of the scope holding the tag (where the caller sees it).
    pub holders: u64,
    /// Customers of the scope.
    pub scope_customers: u64,
    /// `holders / scope_customers`, 0 for an empty scope.
    pub share: f64,
    /// The last time a customer of the scope was given the tag.
    pub last_tagged_at: Option<DateTime<Utc>>,
    /// Times a customer of the scope was given the tag in the last 30 days.
    pub tagged_last_30_days: u64,
    /// … in the last 90 days.
    pub tagged_last_90_days: u64,
    /// Under the zombie thresholds in force at the unit.
    pub zombie: bool,
}

/// The whole report at a unit, before filtering and paging; with each
/// tag's holders when the index answered (duplicates need them).
pub(crate) struct Usage {
    pub rows: Vec<TagUsage>,
    pub holders: Option<HashMap<i64, RoaringBitmap>>,
    pub settings: ReportSettings,
    /// The customers counted.
    pub scope: Arc<Scope>,
    /// The instant the recency counts are taken at.
    pub now: DateTime<Utc>,
}

/// How `tagUsage` is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageOrderField {
    /// Holders (and so share).
    #[default]
    Holders,
    /// Tag name.
    Name,
    /// Last tagged (never tagged first ascending, last descending).
    LastTagged,
    /// Tagged in the last 30 days.
    TaggedLast30Days,
}

/// A field and a direction; ties by tag id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageOrder {
    pub field: UsageOrderField,
    pub descending: bool,
}

impl Default for UsageOrder {
    fn default() -> Self {
        Self { field: UsageOrderField::Holders, descending: true }
    }
}

impl UsageOrder {
    fn tag(self) -> String {
        format!("usage:{:?}:{}", self.field, if self.descending { "desc" } else { "asc" })
    }

    fn compare(self, a: &TagUsage, b: &TagUsage) -> std::cmp::Ordering {
        let by = match self.field {
            UsageOrderField::Holders => a.holders.cmp(&b.holders),
            UsageOrderField::Name => a.tag.name.cmp(&b.tag.name),
            UsageOrderField::LastTagged => a.last_tagged_at.cmp(&b.last_tagged_at),
            UsageOrderField::TaggedLast30Days => a.tagged_last_30_days.cmp(&b.tagged_last_30_days),
        };
        let by = by.then(a.tag.id.cmp(&b.tag.id));
        if self.descending { by.reverse() } else { by }
    }
}

/// Which tags of the report to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageFilter {
    /// Only zombies (`true`) or only the others (`false`).
    pub zombie: Option<bool>,
}

#[derive(Debug, FromQueryResult)]
struct HolderRow {
    tag_id: i64,
    org_unit_id: i64,
    holders: i64,
}

#[derive(Debug, FromQueryResult)]
struct SourceRow {
    tag_id: i64,
    org_unit_id: i64,
    source: TagSource,
    holders: i64,
}

/// Holders per tag by SQL (while the index builds): one grouped count of
/// the tags' assignments (per statement of [`ids_per_statement`] tags).
/// With `whole` (every customer in the scope, every class readable all
/// over it) the customer table is not joined: the count reads the
/// assignments' `(tag_id, customer_id)` index alone.
async fn holders_by_sql(
    db: &impl ConnectionTrait,
    principal: &Principal,
    scope: &Scope,
    whole: bool,
    class_of: &HashMap<i64, String>,
    tags: &[i64],
) -> AppResult<HashMap<i64, u64>> {
    let backend = db.get_database_backend();
    let ct = |c: customer_tag::Column| (customer_tag::Entity, c);
    let unit = (customer::Entity, customer::Column::OrgUnitId);
    let units: Vec<i64> = scope.unit_ids().collect();
    let mut out: HashMap<i64, u64> = tags.iter().map(|t| (*t, 0)).collect();
    for chunk in tags.chunks(ids_per_statement(backend)) {
        let mut query = Query::select();
        query.column(ct(customer_tag::Column::TagId));
        if whole {
            query.expr_as(Expr::val(0_i64), Alias::new("org_unit_id"));
        } else {
            query.column(unit);
        }
        query
            .expr_as(Expr::col(ct(customer_tag::Column::CustomerId)).count(), Alias::new("holders"))
            .from(customer_tag::Entity)
            .and_where(id_in(backend, ct(customer_tag::Column::TagId), chunk));
        if whole {
            query.group_by_col(ct(customer_tag::Column::TagId));
        } else {
            query
                .inner_join(
                    customer::Entity,
                    Expr::col((customer::Entity, customer::Column::Id)).equals(ct(customer_tag::Column::CustomerId)),
                )
                .and_where(id_in(backend, unit, &units))
                .group_by_columns([ct(customer_tag::Column::TagId).into_column_ref(), unit.into_column_ref()]);
        }
        for row in HolderRow::find_by_statement(backend.build(&query)).all(db).await? {
            let class = class_of.get(&row.tag_id).map(String::as_str);
            if whole || on_customer_visible(principal, None, class, row.org_unit_id) {
                *out.entry(row.tag_id).or_default() += u64::try_from(row.holders).unwrap_or(0);
            }
        }
    }
    Ok(out)
}

fn class_by_tag(groups: &HashMap<i64, tag_group::Model>, tags: &[tag::Model]) -> HashMap<i64, String> {
    tags.iter().filter_map(|t| Some((t.id, groups.get(&t.group_id?)?.visibility_class.clone()))).collect()
}

/// Days of the tag event log the recency counts read.
const WINDOW_DAYS: i64 = 90;

/// Whose events an event statement reads.
#[derive(Debug, Clone, Copy)]
enum Whose<'a> {
    /// Every customer's: the customer table is not joined, the statement
    /// reads the partial index of ADD events alone; rows have unit 0.
    Everybody,
    /// Customers of these units, one row per tag and unit (for the class).
    PerUnit(&'a [i64]),
    /// Customers of these units, one row per tag (unit 0).
    Among(&'a [i64]),
}

/// The ADD events of `tags`, grouped by tag (and by org unit for
/// [`Whose::PerUnit`]), from `since` on (all of them with `None`); one
/// statement per [`ids_per_statement`] tags, the tags and units as one
/// array parameter each on PostgreSQL. `op = 'ADD'` is a literal so that
/// PostgreSQL may use the partial index of ADD events
/// `(tag_id, occurred_at, customer_id)` under any plan, generic or custom.
async fn events_by_sql(
    db: &impl ConnectionTrait,
    tags: &[i64],
    whose: Whose<'_>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> AppResult<Vec<EventRow>> {
    let backend = db.get_database_backend();
    let unit = (customer::Entity, customer::Column::OrgUnitId);
    let ev = |c: tag_event::Column| (tag_event::Entity, c);
    let mut out = Vec::new();
    for chunk in tags.chunks(ids_per_statement(backend)) {
        let mut query = Query::select();
        query.column(ev(tag_event::Column::TagId));
        if let Whose::PerUnit(_) = whose {
            query.column(unit);
        } else {
            query.expr_as(Expr::val(0_i64), Alias::new("org_unit_id"));
        }
        query
            .expr_as(Func::max(Expr::col(ev(tag_event::Column::OccurredAt))), Alias::new("last_at"))
            .expr_as(count_since(backend, now - Duration::days(30)), Alias::new("last_30"))
            .expr_as(count_since(backend, now - Duration::days(WINDOW_DAYS)), Alias::new("last_90"))
            .from(tag_event::Entity)
            .and_where(id_in(backend, ev(tag_event::Column::TagId), chunk))
            .and_where(Expr::col(ev(tag_event::Column::Op)).eq(Expr::cust(format!("'{}'", TagOp::Add.as_str()))));
        if let Some(since) = since {
            query.and_where(Expr::col(ev(tag_event::Column::OccurredAt)).gte(since));
        }
        if let Whose::PerUnit(units) | Whose::Among(units) = whose {
            query
                .inner_join(
                    customer::Entity,
                    Expr::col((customer::Entity, customer::Column::Id)).equals(ev(tag_event::Column::CustomerId)),
                )
                .and_where(id_in(backend, unit, units));
        }
        if let Whose::PerUnit(_) = whose {
            query.group_by_columns([ev(tag_event::Column::TagId).into_column_ref(), unit.into_column_ref()]);
        } else {
            query.group_by_col(ev(tag_event::Column::TagId));
        }
        out.extend(EventRow::find_by_statement(backend.build(&query)).all(db).await?);
    }
    Ok(out)
}

/// The ADD events of `tags` for the scope's customers, from `since` on (all
/// of them with `None`), per tag, each row where the caller sees the tag's
/// class. Three ways, by what the scope is:
///
/// - every customer, every class readable all over it (HQ's
///   administrators): one statement over the event index alone;
/// - every class readable all over it and at most as many customers
///   outside it as in it (a region of a large base, HQ's tree when another
///   organisation shares the database): every customer's events minus
///   those of the customers outside, which is the statement over the
///   index and one joining the few customers outside. A tag whose last
///   tagging outside is also its last overall gets its last tagging
///   inside from one more statement over those tags alone;
/// - otherwise (a store, classes that differ by unit): the events joined
///   to the scope's customers, per unit for the class.
///
/// The statements run in one read-only transaction (repeatable read on
/// PostgreSQL), so that the subtraction reads one state of the log.
#[allow(clippy::too_many_arguments)]
async fn scope_events(
    db: &impl ConnectionTrait,
    principal: &Principal,
    scope: &Scope,
    scope_customers: u64,
    class_of: &HashMap<i64, String>,
    tags: &[i64],
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> AppResult<HashMap<i64, EventRow>> {
    let covered = class_of.values().all(|c| class_units(principal, c).covers(scope));
    let inside: Vec<i64> = scope.unit_ids().collect();
    let outside: Vec<i64> = principal.org.all().iter().map(|u| u.id).filter(|u| !scope.contains(*u)).collect();
    let mut out: HashMap<i64, EventRow> = HashMap::new();
    let add = |out: &mut HashMap<i64, EventRow>, row: EventRow| {
        let at = out.entry(row.tag_id).or_insert(EventRow {
            tag_id: row.tag_id,
            org_unit_id: 0,
            last_at: None,
            last_30: Some(0),
            last_90: Some(0),
        });
        at.last_at = Ord::max(at.last_at, row.last_at);
        at.last_30 = Some(at.last_30.unwrap_or(0) + row.last_30.unwrap_or(0));
        at.last_90 = Some(at.last_90.unwrap_or(0) + row.last_90.unwrap_or(0));
    };
    if !covered || (!outside.is_empty() && customers_outnumber(db, &outside, scope_customers).await?) {
        for row in events_by_sql(db, tags, Whose::PerUnit(&inside), since, now).await? {
            let class = class_of.get(&row.tag_id).map(String::as_str);
            if on_customer_visible(principal, None, class, row.org_unit_id) {
                add(&mut out, row);
            }
        }
        return Ok(out);
    }
    let every = match rollup::every_customer(db, tags, since, now).await? {
        Some(rows) => rows,
        None => events_by_sql(db, tags, Whose::Everybody, since, now).await?,
    };
    for row in every {
        add(&mut out, row);
    }
    if outside.is_empty() {
        return Ok(out);
    }
    let mut unsure = Vec::new();
    for row in events_by_sql(db, tags, Whose::Among(&outside), since, now).await? {
        let Some(all) = out.get_mut(&row.tag_id) else { continue };
        all.last_30 = Some(all.last_30.unwrap_or(0) - row.last_30.unwrap_or(0));
        all.last_90 = Some(all.last_90.unwrap_or(0) - row.last_90.unwrap_or(0));
        if row.last_at.is_some() && row.last_at >= all.last_at {
            all.last_at = None;
            unsure.push(row.tag_id);
        }
    }
    if !unsure.is_empty() {
        for row in events_by_sql(db, &unsure, Whose::Among(&inside), since, now).await? {
            if let Some(all) = out.get_mut(&row.tag_id) {
                all.last_at = row.last_at;
            }
        }
    }
    // A tag only customers outside were given is not one of the scope's.
    out.retain(|_, r| r.last_at.is_some());
    Ok(out)
}

/// True when the customers of `units` are more than `than`: counted up to
/// one past it, so that the answer costs at most that many index entries.
async fn customers_outnumber(db: &impl ConnectionTrait, units: &[i64], than: u64) -> AppResult<bool> {
    let backend = db.get_database_backend();
    let mut seen = 0_u64;
    for chunk in units.chunks(ids_per_statement(backend)) {
        let limit = than.saturating_add(1).saturating_sub(seen);
        let inner = Query::select()
            .expr(Expr::val(1_i32))
            .from(customer::Entity)
            .and_where(id_in(backend, (customer::Entity, customer::Column::OrgUnitId), chunk))
            .limit(limit)
            .to_owned();
        let query = Query::select()
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
            .from_subquery(inner, Alias::new("outside"))
            .to_owned();
        let found =
            db.query_one_raw(backend.build(&query)).await?.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0);
        seen += u64::try_from(found).unwrap_or(0);
        if seen > than {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The usage of every active tag of the unit's effective library, with
/// the recency of every tag or of none yet.
///
/// # Errors
/// As [`report_unit`]; database errors.
pub(crate) async fn compute(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
    recency: Recency,
) -> AppResult<Usage> {
    let found = report_unit(principal, unit)?;
    let library = library_for(db, principal, unit).await?;
    let groups: HashMap<i64, tag_group::Model> =
        library.layers.iter().flat_map(|l| l.groups.iter().cloned()).map(|g| (g.id, g)).collect();
    let group_ids: Vec<i64> = groups.keys().copied().collect();
    let tags: Vec<tag::Model> = tags_of_groups(db, &group_ids, false).await?.into_values().flatten().collect();
    usage_of(db, index, principal, found.id, groups, tags, recency).await
}

/// The usage of the given tags among the caller's customers of `unit`'s
/// subtree, with the recency of every tag or of none yet.
pub(crate) async fn usage_of(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: i64,
    groups: HashMap<i64, tag_group::Model>,
    mut tags: Vec<tag::Model>,
    recency: Recency,
) -> AppResult<Usage> {
    tags.sort_by_key(|t| t.id);
    let settings = settings_in_force(db, principal, unit).await?;
    let scope = customer_scope(principal, unit);
    let now = Utc::now();
    let (scope_customers, holders, bitmaps) = match index.customers_of_units(scope.unit_ids()) {
        Some(base) => {
            let wanted: Vec<(i64, Option<Arc<Scope>>)> = tags
                .iter()
                .map(|t| {
                    let units = t
                        .group_id
                        .and_then(|g| groups.get(&g))
                        .map(|g| class_units(principal, &g.visibility_class))
                        .filter(|u| !u.covers(&scope));
                    (t.id, units)
                })
                .collect();
            let bitmaps = index
                .holders_among(&base, &wanted)
                .ok_or_else(|| AppError::internal(anyhow::anyhow!("the index stopped being ready")))?;
            let counts = bitmaps.iter().map(|(t, b)| (*t, b.len())).collect();
            (base.len(), counts, Some(bitmaps))
        }
        None => {
            let total = if scope.is_empty() {
                0
            } else {
                customer::Entity::find().filter(scope.condition(customer::Column::OrgUnitId)).count(db).await?
            };
            let class_of = class_by_tag(&groups, &tags);
            let whole = whole_scope(principal, &scope, class_of.values());
            let ids: Vec<i64> = tags.iter().map(|t| t.id).collect();
            (total, holders_by_sql(db, principal, &scope, whole, &class_of, &ids).await?, None)
        }
    };
    let mut rows = Vec::with_capacity(tags.len());
    for tag in tags {
        let Some(group) = tag.group_id.and_then(|g| groups.get(&g)).cloned() else { continue };
        let held = holders.get(&tag.id).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let share = if scope_customers == 0 { 0.0 } else { held as f64 / scope_customers as f64 };
        rows.push(TagUsage {
            tag,
            group,
            holders: held,
            scope_customers,
            share,
            last_tagged_at: None,
            tagged_last_30_days: 0,
            tagged_last_90_days: 0,
            zombie: false,
        });
    }
    let mut usage = Usage { rows, holders: bitmaps, settings, scope, now };
    if recency == Recency::All {
        let Usage { rows, scope, settings, now, .. } = &mut usage;
        add_recency(db, principal, scope, settings, *now, rows.iter_mut().collect()).await?;
    }
    Ok(usage)
}

/// Which rows of a usage report get their recency (and so their zombie
/// flag) when it is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recency {
    /// Every row: the zombie report, and `tagUsage` filtered by zombies or
    /// ordered by recency.
    All,
    /// None yet: the caller adds it with [`add_recency`] to the rows it
    /// shows (a page in holder or name order, the tags of duplicate pairs).
    Later,
}

/// Adds recency to `rows` (last tagged, taggings in the last 30 and 90
/// days among the scope's customers) and decides whether each is a
/// zombie. Recency comes from the 90-day window of the log; the last
/// tagging of tags idle for the whole window from a second statement over
/// those tags only (few, and given rarely: that is why they are idle).
///
/// # Errors
/// Database errors.
pub(crate) async fn add_recency(
    db: &DatabaseConnection,
    principal: &Principal,
    scope: &Scope,
    settings: &ReportSettings,
    now: DateTime<Utc>,
    mut rows: Vec<&mut TagUsage>,
) -> AppResult<()> {
    let class_of: HashMap<i64, String> = rows.iter().map(|r| (r.tag.id, r.group.visibility_class.clone())).collect();
    let mut ids: Vec<i64> = rows.iter().map(|r| r.tag.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let scope_customers = rows.first().map_or(0, |r| r.scope_customers);
    let mut events = HashMap::new();
    if !ids.is_empty() && !scope.is_empty() {
        let txn = if db.get_database_backend() == DbBackend::Postgres {
            db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
        } else {
            db.begin().await?
        };
        let since = now - Duration::days(WINDOW_DAYS);
        events = scope_events(&txn, principal, scope, scope_customers, &class_of, &ids, Some(since), now).await?;
        let idle: Vec<i64> = ids.iter().copied().filter(|t| !events.contains_key(t)).collect();
        if !idle.is_empty() {
            events.extend(scope_events(&txn, principal, scope, scope_customers, &class_of, &idle, None, now).await?);
        }
        txn.commit().await?;
    }
    for row in &mut rows {
        let found = events.get(&row.tag.id);
        let last = found.and_then(|e| e.last_at);
        row.last_tagged_at = last;
        row.tagged_last_30_days = found.and_then(|e| e.last_30).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        row.tagged_last_90_days = found.and_then(|e| e.last_90).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        row.zombie = settings.is_zombie(row.share, last, row.tag.created_at, now);
    }
    Ok(())
}

/// True when the scope holds every customer and every one of `classes` is
/// readable all over it (HQ's administrators): statements then need not
/// join the customer table to apply the scope or a class per unit.
fn whole_scope<'a>(principal: &Principal, scope: &Scope, mut classes: impl Iterator<Item = &'a String>) -> bool {
    principal.org.all().iter().all(|u| scope.contains(u.id)) && classes.all(|c| class_units(principal, c).covers(scope))
}

/// The current holders of `tags` among the caller's customers of `unit`'s
/// subtree, by what put the tag on them (the assignment's `source`), most
/// first; a tag's counts add up to its holders. `tags` are the tags with
/// their group's visibility class, counted only where the caller sees it,
/// as holders are. One grouped statement over the assignments of these
/// tags (by the `(tag_id, customer_id)` index); the customer table is
/// joined only when the scope is not every customer or a class is not
/// readable all over it.
///
/// # Errors
/// Database errors.
pub async fn holders_by_source(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: i64,
    tags: &[(i64, Option<String>)],
) -> AppResult<HashMap<i64, Vec<(TagSource, u64)>>> {
    let scope = customer_scope(principal, unit);
    let mut counts: HashMap<i64, HashMap<TagSource, u64>> = HashMap::new();
    if tags.is_empty() || scope.is_empty() {
        return Ok(HashMap::new());
    }
    let class_of: HashMap<i64, &str> = tags.iter().filter_map(|(t, c)| Some((*t, c.as_deref()?))).collect();
    let every_unit = principal.org.all().iter().all(|u| scope.contains(u.id));
    let whole = every_unit && class_of.values().all(|c| class_units(principal, c).covers(&scope));
    let ids: Vec<i64> = tags.iter().map(|(t, _)| *t).collect();
    let units: Vec<i64> = scope.unit_ids().collect();
    let backend = db.get_database_backend();
    let mut statements = Vec::new();
    if backend == DbBackend::Postgres {
        // Arrays, not lists of thousands of values (see `in_force_counts`).
        let (sql, values): (&str, Vec<sea_orm::Value>) = if whole {
            (
                "SELECT ct.tag_id, 0::bigint AS org_unit_id, ct.source, COUNT(*) AS holders FROM customer_tag ct \
                 WHERE ct.tag_id = ANY($1) GROUP BY ct.tag_id, ct.source",
                vec![ids.clone().into()],
            )
        } else {
            (
                "SELECT ct.tag_id, c.org_unit_id, ct.source, COUNT(*) AS holders FROM customer_tag ct \
                 JOIN customer c ON c.id = ct.customer_id \
                 WHERE ct.tag_id = ANY($1) AND c.org_unit_id = ANY($2) \
                 GROUP BY ct.tag_id, c.org_unit_id, ct.source",
                vec![ids.clone().into(), units.clone().into()],
            )
        };
        statements.push(Statement::from_sql_and_values(backend, sql, values));
    } else {
        let ct = |c: customer_tag::Column| (customer_tag::Entity, c);
        let unit_col = (customer::Entity, customer::Column::OrgUnitId);
        for chunk in ids.chunks(CHUNK) {
            let mut query = Query::select();
            query.column(ct(customer_tag::Column::TagId));
            if whole {
                query.expr_as(Expr::val(0_i64), Alias::new("org_unit_id"));
            } else {
                query.column(unit_col);
            }
            query
                .column(ct(customer_tag::Column::Source))
                .expr_as(Expr::col(ct(customer_tag::Column::CustomerId)).count(), Alias::new("holders"))
                .from(customer_tag::Entity)
                .and_where(Expr::col(ct(customer_tag::Column::TagId)).is_in(chunk.iter().copied()));
            if whole {
                query.group_by_columns([
                    ct(customer_tag::Column::TagId).into_column_ref(),
                    ct(customer_tag::Column::Source).into_column_ref(),
                ]);
            } else {
                query
                    .inner_join(
                        customer::Entity,
                        Expr::col((customer::Entity, customer::Column::Id))
                            .equals(ct(customer_tag::Column::CustomerId)),
                    )
                    .and_where(Expr::col(unit_col).is_in(units.iter().copied()))
                    .group_by_columns([
                        ct(customer_tag::Column::TagId).into_column_ref(),
                        unit_col.into_column_ref(),
                        ct(customer_tag::Column::Source).into_column_ref(),
                    ]);
            }
            statements.push(backend.build(&query));
        }
    }
    for statement in statements {
        for row in SourceRow::find_by_statement(statement).all(db).await? {
            let class = class_of.get(&row.tag_id).copied();
            if whole || on_customer_visible(principal, None, class, row.org_unit_id) {
                *counts.entry(row.tag_id).or_default().entry(row.source).or_default() +=
                    u64::try_from(row.holders).unwrap_or(0);
            }
        }
    }
    Ok(counts
        .into_iter()
        .map(|(tag, by)| {
            let mut by: Vec<(TagSource, u64)> = by.into_iter().filter(|(_, n)| *n > 0).collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
            (tag, by)
        })
        .collect())
}

/// One page of `tagUsage` at a unit, filtered and ordered. The report is
/// computed whole for each page (a library has thousands of tags at most);
/// a cursor is a position in the order, tied to it.
///
/// # Errors
/// `NOT_FOUND` for a unit the caller does not know, `FORBIDDEN` without
/// `report:read` there, `VALIDATION` for a cursor of another order.
#[tracing::instrument(skip(db, index, principal), fields(staff = principal.staff.id))]
pub async fn tag_usage(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
    filter: UsageFilter,
    order: UsageOrder,
    page: &PageArgs,
) -> AppResult<Page<TagUsage>> {
    page.decode_cursor(&order.tag())?;
    // Holder and name orders need no recency to place a tag: only the rows
    // of the page get theirs (one event statement over 100 tags instead of
    // the whole library).
    let needs_recency = filter.zombie.is_some()
        || matches!(order.field, UsageOrderField::LastTagged | UsageOrderField::TaggedLast30Days);
    let recency = if needs_recency { Recency::All } else { Recency::Later };
    let usage = compute(db, index, principal, unit, recency).await?;
    let (scope, settings, now) = (usage.scope, usage.settings, usage.now);
    let mut rows: Vec<TagUsage> =
        usage.rows.into_iter().filter(|r| filter.zombie.is_none_or(|z| r.zombie == z)).collect();
    rows.sort_by(|a, b| order.compare(a, b));
    let mut found = page_of(rows, &order.tag(), page)?;
    if recency == Recency::Later {
        add_recency(db, principal, &scope, &settings, now, found.items.iter_mut().map(|(_, r)| r).collect()).await?;
    }
    Ok(found)
}

/// A page of an ordered, computed list: the cursor's key is the position.
///
/// # Errors
/// `VALIDATION` for a cursor that is not one of this order.
pub(crate) fn page_of<T>(rows: Vec<T>, ordering: &str, page: &PageArgs) -> AppResult<Page<T>> {
    let start = match page.decode_cursor(ordering)? {
        None => 0,
        Some(c) => {
            c.key.parse::<usize>().map_err(|_| AppError::validation(page.cursor_field(), "is not a valid cursor"))? + 1
        }
    };
    let size = usize::try_from(page.size.get()).unwrap_or(usize::MAX);
    let total = rows.len();
    let items: Vec<(String, T)> = rows
        .into_iter()
        .enumerate()
        .skip(start)
        .take(size)
        .map(|(i, row)| {
            let id = i64::try_from(i).unwrap_or(i64::MAX);
            (Cursor { ordering: ordering.to_owned(), key: i.to_string(), id }.encode(), row)
        })
        .collect();
    let has_next_page = start.saturating_add(size) < total;
    Ok(Page { items, has_next_page, has_previous_page: start > 0 })
}
