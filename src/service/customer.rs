//! Customers: reads limited to the caller's scope, creation, and updates
//! guarded by the version the caller read.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use entity::{audit_log, customer, customer_identity, enums::Gender};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func},
};
use serde_json::{Value, json};

use super::audit::{self, AuditEntry};
use crate::authz::visibility::{VisibleTag, visible_tags};
use crate::authz::{Action, CustomerField, FieldAccess, FieldRule, Permission, Principal, Scope};
use crate::config::Limits;
use crate::domain::tag::is_lifecycle_group;
use crate::domain::{
    Cursor, CustomerId, CustomerName, ExternalIdentity, OptionalText, OrgUnitId, PageArgs, Phone, TagId,
};
use crate::error::{AppError, AppResult};
use crate::store::constraint::on_constraint;
use crate::store::like_escape;

/// Filter of a customer list; ids are checked against the caller's view.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    /// Customers of this unit and its subtree.
    pub org_unit: Option<OrgUnitId>,
    /// Part of the name, or a whole phone number.
    pub search: Option<String>,
    pub has_all_tags: Vec<TagId>,
    pub has_any_tags: Vec<TagId>,
    /// A lifecycle stage (see [`is_lifecycle_group`]).
    pub lifecycle_stage: Option<TagId>,
    /// Total spend range in cents, both ends included.
    pub total_spend_min: Option<i64>,
    pub total_spend_max: Option<i64>,
    /// Members of a segment.
    pub segment: Option<SegmentFilter>,
}

/// A resolved segment expression and the time zone its dates are in.
#[derive(Debug, Clone)]
pub struct SegmentFilter {
    pub resolved: crate::segment::Resolved,
    pub offset: FixedOffset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortField {
    #[default]
    AddedAt,
    UpdatedAt,
    Name,
    TotalSpend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CustomerOrder {
    pub field: SortField,
    pub descending: bool,
}

impl CustomerOrder {
    /// The name a cursor is tied to.
    pub(crate) fn tag(self) -> String {
        format!("{}_{}", self.field_name(), if self.descending { "DESC" } else { "ASC" })
    }

    fn column(self) -> customer::Column {
        match self.field {
            SortField::AddedAt => customer::Column::AddedAt,
            SortField::UpdatedAt => customer::Column::UpdatedAt,
            SortField::Name => customer::Column::Name,
            SortField::TotalSpend => customer::Column::TotalSpendCents,
        }
    }

    /// The name of the sort key, as `CustomerOrderField` spells it.
    fn field_name(self) -> &'static str {
        match self.field {
            SortField::AddedAt => "ADDED_AT",
            SortField::UpdatedAt => "UPDATED_AT",
            SortField::Name => "NAME",
            SortField::TotalSpend => "TOTAL_SPEND",
        }
    }

    /// The field rule an ordering reveals values of, if any.
    fn guarded_by(self) -> Option<&'static FieldRule> {
        FieldRule::by_order(self.field_name())
    }

    /// The value of the order's key a cursor carries.
    pub(crate) fn key_of(self, c: &customer::Model) -> String {
        match self.field {
            SortField::AddedAt => c.added_at.to_rfc3339(),
            SortField::UpdatedAt => c.updated_at.to_rfc3339(),
            SortField::Name => c.name.clone(),
            SortField::TotalSpend => c.total_spend_cents.to_string(),
        }
    }

    /// The same key walked the other way (for paging backward).
    pub(crate) fn reversed(self) -> Self {
        Self { descending: !self.descending, ..self }
    }

    /// A cursor of this order, of the page arguments.
    pub(crate) fn cursor_of(self, c: &customer::Model) -> Cursor {
        Cursor { ordering: self.tag(), key: self.key_of(c), id: c.id }
    }

    /// Rows strictly after the cursor in this order (`field`: the cursor's
    /// argument, for errors).
    fn after(self, cursor: &Cursor, field: &str) -> AppResult<Condition> {
        let invalid = || AppError::validation(field, "is not a valid cursor");
        let col = self.column();
        let time = |key: &str| DateTime::parse_from_rfc3339(key).map(|t| t.with_timezone(&Utc)).map_err(|_| invalid());
        let value: sea_orm::Value = match self.field {
            SortField::AddedAt | SortField::UpdatedAt => time(&cursor.key)?.into(),
            SortField::Name => cursor.key.clone().into(),
            SortField::TotalSpend => cursor.key.parse::<i64>().map_err(|_| invalid())?.into(),
        };
        let (beyond, id_beyond) = if self.descending {
            (Expr::col(col).lt(value.clone()), customer::Column::Id.lt(cursor.id))
        } else {
            (Expr::col(col).gt(value.clone()), customer::Column::Id.gt(cursor.id))
        };
        Ok(Condition::any().add(beyond).add(Condition::all().add(Expr::col(col).eq(value)).add(id_beyond)))
    }
}

pub use crate::domain::Page;

/// Finds a customer the caller may read. The id of a customer merged into
/// another (a tombstone) redirects to the one it was merged into, which
/// the caller must be able to read too.
///
/// # Errors
/// [`AppError::NotFound`] for a missing id and for one outside the caller's
/// scope alike.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn find_in_scope(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: CustomerId,
) -> AppResult<customer::Model> {
    let mut next = id.0;
    // A merge never targets a tombstone, so one hop is the rule; a few
    // more cost nothing and a loop is impossible past them.
    for _ in 0..4 {
        let found = customer::Entity::find_by_id(next)
            .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
            .one(db)
            .await?
            .ok_or_else(|| AppError::not_found("customer", id))?;
        match found.merged_into_id {
            Some(kept) => next = kept,
            None => return Ok(found),
        }
    }
    Err(AppError::not_found("customer", id))
}

/// Finds a customer the caller may read, not following a merge: a
/// tombstone is `NOT_FOUND` (writes never land on one).
///
/// # Errors
/// `NOT_FOUND` for missing, out-of-scope and merged ids alike.
pub async fn find_live_in_scope(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: CustomerId,
) -> AppResult<customer::Model> {
    customer::Entity::find_by_id(id.0)
        .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
        .filter(customer::Column::MergedIntoId.is_null())
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("customer", id))
}

/// Checks that every id names a customer the caller may read.
///
/// # Errors
/// `NOT_FOUND` naming the first that is missing or out of scope.
pub async fn require_visible_ids(db: &impl ConnectionTrait, principal: &Principal, ids: &[i64]) -> AppResult<()> {
    let mut found = std::collections::HashSet::new();
    let backend = db.get_database_backend();
    for chunk in ids.chunks(crate::store::ids_per_statement(backend)) {
        let rows: Vec<i64> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .filter(crate::store::id_in(backend, customer::Column::Id, chunk))
            .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
            .filter(customer::Column::MergedIntoId.is_null())
            .into_tuple()
            .all(db)
            .await?;
        found.extend(rows);
    }
    match ids.iter().find(|id| !found.contains(id)) {
        Some(missing) => Err(AppError::not_found("customer", missing)),
        None => Ok(()),
    }
}

/// The condition of a filter, scope included, after checking that the
/// filter reveals nothing the caller may not read: tags it cannot see are
/// `NOT_FOUND`, a tag matches only customers of units where its class is
/// visible, and a guarded field may be filtered on only where it is
/// readable in full over the whole scope searched (else `FORBIDDEN_FIELD`).
pub(crate) async fn filter_condition(
    db: &DatabaseConnection,
    principal: &Principal,
    filter: &CustomerFilter,
    order: Option<CustomerOrder>,
) -> AppResult<Condition> {
    Ok(check_filter(db, principal, filter, order).await?.condition)
}

/// A filter checked for the caller (see [`filter_condition`]): its SQL
/// condition, and the tags it names as the caller sees them (what the
/// in-memory index needs to answer the same filter).
pub(crate) struct CheckedFilter {
    pub condition: Condition,
    pub tags: HashMap<TagId, VisibleTag>,
}

/// The search text of a filter, when it has one that filters.
pub(crate) fn search_text(filter: &CustomerFilter) -> Option<&str> {
    filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// [`filter_condition`], with the tags it named.
pub(crate) async fn check_filter(
    db: &DatabaseConnection,
    principal: &Principal,
    filter: &CustomerFilter,
    order: Option<CustomerOrder>,
) -> AppResult<CheckedFilter> {
    let mut searched: Scope = (*principal.scope(Action::CustomerRead)).clone();
    if let Some(unit) = filter.org_unit {
        if !principal.visible_units().contains(&unit.0) {
            return Err(AppError::not_found("org unit", unit));
        }
        searched = searched.intersect(&principal.org.subtree(unit.0).map(|u| u.id).collect());
    }
    // Tombstones of merged customers are in no list.
    let mut cond = Condition::all()
        .add(searched.condition(customer::Column::OrgUnitId))
        .add(customer::Column::MergedIntoId.is_null());

    // A guarded field may be compared only where it is readable in full.
    let require_field = |rule: Option<&FieldRule>, api: &str| match rule {
        Some(rule) if !principal.field_scope(rule.field).covers(&searched) => {
            Err(AppError::ForbiddenField { field: api.to_owned() })
        }
        _ => Ok(()),
    };
    if let Some(order) = order {
        require_field(order.guarded_by(), "orderBy")?;
    }
    if let Some(min) = filter.total_spend_min {
        require_field(FieldRule::by_filter("totalSpendMin"), "filter.totalSpendMin")?;
        cond = cond.add(customer::Column::TotalSpendCents.gte(min));
    }
    if let Some(max) = filter.total_spend_max {
        require_field(FieldRule::by_filter("totalSpendMax"), "filter.totalSpendMax")?;
        cond = cond.add(customer::Column::TotalSpendCents.lte(max));
    }

    if let Some(search) = search_text(filter) {
        if search.chars().count() > 64 {
            return Err(AppError::validation("filter.search", "must be at most 64 characters"));
        }
        let pattern = format!("%{}%", like_escape(&search.to_lowercase()));
        let mut any = Condition::any().add(
            Expr::expr(Func::lower(Expr::col(customer::Column::Name)))
                .like(sea_orm::sea_query::LikeExpr::new(pattern).escape('\\')),
        );
        // A whole number finds its customer where the caller sees the phone
        // at least masked (a service desk looking up a caller); never where
        // the phone is hidden from it.
        if let Ok(phone) = Phone::parse(search, "filter.search") {
            let readable: Scope = principal
                .scope_of(&Permission::field(CustomerField::Phone, "read"))
                .unit_ids()
                .chain(principal.scope_of(&Permission::field(CustomerField::Phone, "read_masked")).unit_ids())
                .collect();
            any = any.add(
                Condition::all()
                    .add(customer::Column::Phone.eq(phone.into_inner()))
                    .add(readable.condition(customer::Column::OrgUnitId)),
            );
        }
        cond = cond.add(any);
    }

    let mut named: Vec<TagId> = filter.has_all_tags.iter().chain(&filter.has_any_tags).copied().collect();
    named.extend(filter.lifecycle_stage);
    // Unknown and invisible tags are NOT_FOUND, so filters cannot probe.
    let tags = visible_tags(db, principal, &named).await?;
    if let Some(stage) = filter.lifecycle_stage {
        let group = tags[&stage].group.as_ref();
        if !group.is_some_and(|g| is_lifecycle_group(g, principal.org.get(g.org_unit_id))) {
            return Err(AppError::validation(
                "filter.lifecycleStage",
                format!("tag {} is not a lifecycle stage", stage.0),
            ));
        }
    }
    // Holders of the tag, in units where the caller may see its class.
    let holds = |id: &TagId| crate::segment::sql::holds_tag(principal, &searched, id.0, tags.get(id));
    for tag in filter.has_all_tags.iter().chain(&filter.lifecycle_stage) {
        cond = cond.add(holds(tag));
    }
    if !filter.has_any_tags.is_empty() {
        cond = cond.add(filter.has_any_tags.iter().fold(Condition::any(), |any, tag| any.add(holds(tag))));
    }
    if let Some(seg) = &filter.segment {
        cond = cond.add(crate::segment::sql::condition(principal, &seg.resolved, &searched, seg.offset, Utc::now())?);
    }
    Ok(CheckedFilter { condition: cond, tags })
}

/// The audit action of a search by a whole phone number.
pub const PHONE_SEARCH: &str = "customer.phone_search";

/// Audits and rate-limits a search by a whole phone number from a reader
/// who sees phones only masked somewhere in its scope. Such a reader learns
/// from `totalCount` whether a guessed number is right (10,000 guesses
/// recover a masked one), yet a service desk must find a caller by the
/// number given. So each such search is a sensitive read, audited as
/// `customer.phone_search` with the number masked as that reader sees it
/// (never in clear), and at most `limits.phone_searches_per_minute` run per
/// staff member and minute. The count is of those audit rows, so the limit
/// holds across instances without shared memory (two searches racing at
/// the limit may both pass: a brake, not an exact quota). Readers who see
/// phones in full, and searches that are not a whole number, pass
/// untouched.
///
/// # Errors
/// `LIMIT_EXCEEDED` beyond the rate; database errors.
#[tracing::instrument(skip_all, fields(staff = principal.staff.id))]
pub async fn screen_phone_search(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    filter: &CustomerFilter,
) -> AppResult<()> {
    let Some(Ok(phone)) = filter.search.as_deref().map(|s| Phone::parse(s.trim(), "filter.search")) else {
        return Ok(());
    };
    let full = principal.field_scope(CustomerField::Phone);
    let masked = principal.scope_of(&Permission::field(CustomerField::Phone, "read_masked"));
    if masked.unit_ids().all(|u| full.contains(u)) {
        return Ok(());
    }
    let since = Utc::now() - chrono::Duration::minutes(1);
    let recent = audit_log::Entity::find()
        .filter(audit_log::Column::OccurredAt.gte(since))
        .filter(audit_log::Column::ActorStaffId.eq(principal.staff.id))
        .filter(audit_log::Column::Action.eq(PHONE_SEARCH))
        .count(db)
        .await?;
    if recent >= u64::from(limits.phone_searches_per_minute) {
        return Err(AppError::LimitExceeded(format!(
            "at most {} searches by phone number per minute",
            limits.phone_searches_per_minute
        )));
    }
    let scope = filter.org_unit.map(|u| u.0).filter(|u| principal.visible_units().contains(u));
    let entry = AuditEntry {
        object_id: None,
        ..AuditEntry::ok(principal.staff_id(), PHONE_SEARCH, "customer", "")
            .in_unit(scope.unwrap_or(principal.staff.home_org_unit_id))
            .with_detail(json!({ "phone": FieldRule::by_api("phone").and_then(|r| r.show(FieldAccess::Masked, phone.as_str())), "scope": scope }))
    };
    audit::record(db, entry).await?;
    Ok(())
}

/// One page of the customers the caller may read, in `order`.
///
/// # Errors
/// `VALIDATION` for a bad cursor or search; `NOT_FOUND` for unknown or
/// invisible org units and tags in the filter.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn list_in_scope(
    db: &DatabaseConnection,
    principal: &Principal,
    filter: &CustomerFilter,
    order: CustomerOrder,
    page: &PageArgs,
) -> AppResult<Page<customer::Model>> {
    let mut cond = filter_condition(db, principal, filter, Some(order)).await?;
    // Backward: walk the reversed order from `before`, then reverse the page.
    let walk = if page.backward() { order.reversed() } else { order };
    if let Some(cursor) = page.decode_cursor(&order.tag())? {
        cond = cond.add(walk.after(&cursor, page.cursor_field())?);
    }
    let dir = if walk.descending { Order::Desc } else { Order::Asc };
    let rows = customer::Entity::find()
        .filter(cond)
        .order_by(order.column(), dir.clone())
        .order_by(customer::Column::Id, dir)
        .limit(page.fetch())
        .all(db)
        .await?;
    Ok(Page::from_walk(rows, page, |c| order.cursor_of(c)))
}

/// Ids per statement when a list is restricted to ids known to match.
const ID_CHUNK: usize = 5_000;

/// One page, in `order`, of the given customers (known to match the
/// caller's filter, e.g. from the in-memory index), limited to its scope
/// again. Each chunk of ids gives its first rows after the cursor; the
/// database then orders those candidates, so that names sort by its
/// collation exactly as in [`list_in_scope`].
///
/// # Errors
/// `VALIDATION` for a bad cursor.
pub(crate) async fn list_among(
    db: &DatabaseConnection,
    principal: &Principal,
    ids: &[i64],
    order: CustomerOrder,
    page: &PageArgs,
) -> AppResult<Page<customer::Model>> {
    let walk = if page.backward() { order.reversed() } else { order };
    let mut cond = Condition::all()
        .add(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
        .add(customer::Column::MergedIntoId.is_null());
    if let Some(cursor) = page.decode_cursor(&order.tag())? {
        cond = cond.add(walk.after(&cursor, page.cursor_field())?);
    }
    let dir = if walk.descending { Order::Desc } else { Order::Asc };
    let ordered = |q: sea_orm::Select<customer::Entity>| {
        q.order_by(order.column(), dir.clone()).order_by(customer::Column::Id, dir.clone()).limit(page.fetch())
    };
    let candidates: Vec<i64> = if ids.len() <= ID_CHUNK {
        ids.to_vec()
    } else {
        let mut candidates = Vec::new();
        for chunk in ids.chunks(ID_CHUNK) {
            let query = customer::Entity::find()
                .select_only()
                .column(customer::Column::Id)
                .filter(customer::Column::Id.is_in(chunk.iter().copied()))
                .filter(cond.clone());
            candidates.extend(ordered(query).into_tuple::<i64>().all(db).await?);
        }
        candidates
    };
    let rows =
        ordered(customer::Entity::find().filter(customer::Column::Id.is_in(candidates)).filter(cond)).all(db).await?;
    Ok(Page::from_walk(rows, page, |c| order.cursor_of(c)))
}

/// How many customers match the filter within the caller's scope.
///
/// # Errors
/// As [`list_in_scope`].
pub async fn count_in_scope(db: &DatabaseConnection, principal: &Principal, filter: &CustomerFilter) -> AppResult<u64> {
    let cond = filter_condition(db, principal, filter, None).await?;
    Ok(customer::Entity::find().filter(cond).count(db).await?)
}

/// Ids of every customer matching the filter within the caller's scope.
///
/// # Errors
/// As [`list_in_scope`].
pub async fn ids_in_scope(
    db: &DatabaseConnection,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<Vec<i64>> {
    let cond = filter_condition(db, principal, filter, None).await?;
    Ok(customer::Entity::find()
        .select_only()
        .column(customer::Column::Id)
        .filter(cond)
        .order_by_asc(customer::Column::Id)
        .into_tuple()
        .all(db)
        .await?)
}

/// Input of [`create`], parsed.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub org_unit: OrgUnitId,
    pub name: CustomerName,
    pub phone: Option<Phone>,
    pub gender: Gender,
    pub birth_date: Option<NaiveDate>,
    pub city: OptionalText,
    pub industry: OptionalText,
    pub channel: OptionalText,
    pub identities: Vec<ExternalIdentity>,
}

/// A created customer and the customers in scope that share its phone.
#[derive(Debug, Clone)]
pub struct Created {
    pub customer: customer::Model,
    pub possible_duplicates: Vec<customer::Model>,
}

fn check_birth_date(date: Option<NaiveDate>) -> AppResult<()> {
    match date {
        Some(d) if d > Utc::now().date_naive() => Err(AppError::validation("birthDate", "must not be in the future")),
        Some(d) if d < NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid date") => {
            Err(AppError::validation("birthDate", "must be after 1900-01-01"))
        }
        _ => Ok(()),
    }
}

/// Creates a customer in an org unit, owned by the caller, with its
/// external identities; audited in the same transaction.
///
/// # Errors
/// `NOT_FOUND` for an org unit the caller cannot see, `FORBIDDEN` without
/// `customer:create` there, `CONFLICT` when an external id already belongs
/// to a customer, `VALIDATION` for bad input.
#[tracing::instrument(skip(db, principal, input), fields(staff = principal.staff.id))]
pub async fn create(db: &DatabaseConnection, principal: &Principal, input: NewCustomer) -> AppResult<Created> {
    if !principal.visible_units().contains(&input.org_unit.0) {
        return Err(AppError::not_found("org unit", input.org_unit));
    }
    principal.require(Action::CustomerCreate, input.org_unit.0)?;
    check_birth_date(input.birth_date)?;
    if input.identities.len() > 10 {
        return Err(AppError::validation("externalIds", "at most 10 external ids"));
    }
    let now = Utc::now();
    let phone = input.phone.map(Phone::into_inner);
    let txn = db.begin().await?;
    let model = customer::Entity::insert(customer::ActiveModel {
        id: NotSet,
        org_unit_id: Set(input.org_unit.0),
        owner_staff_id: Set(Some(principal.staff.id)),
        name: Set(input.name.into_inner()),
        phone: Set(phone.clone()),
        gender: Set(input.gender),
        birth_date: Set(input.birth_date),
        city: Set(input.city.into_inner()),
        industry: Set(input.industry.into_inner()),
        channel: Set(input.channel.into_inner()),
        total_spend_cents: Set(0),
        order_count: Set(0),
        last_order_at: Set(None),
        added_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
        merged_into_id: Set(None),
        merged_at: Set(None),
    })
    .exec_with_returning(&txn)
    .await?;
    for identity in &input.identities {
        let inserted = customer_identity::Entity::insert(customer_identity::ActiveModel {
            id: NotSet,
            customer_id: Set(model.id),
            provider: Set(identity.provider.clone()),
            external_id: Set(identity.external_id.clone()),
            created_at: Set(now),
        })
        .exec(&txn)
        .await;
        inserted.map_err(|e| {
            on_constraint(e, |_| {
                format!("external id {}:{} already belongs to a customer", identity.provider, identity.external_id)
            })
        })?;
    }
    crate::store::customer_log::log_customer_change(&txn, model.id).await?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "customer.create", "customer", model.id)
            .in_unit(model.org_unit_id)
            .with_detail(json!({
                "name": model.name,
                "phone": model.phone,
                "birthDate": model.birth_date,
                "city": model.city,
                "externalIds": input.identities.len(),
            })),
    )
    .await?;
    txn.commit().await?;

    let possible_duplicates = match &phone {
        Some(phone) => {
            customer::Entity::find()
                .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
                .filter(customer::Column::Phone.eq(phone.as_str()))
                .filter(customer::Column::Id.ne(model.id))
                .filter(customer::Column::MergedIntoId.is_null())
                .order_by_asc(customer::Column::Id)
                .limit(20)
                .all(db)
                .await?
        }
        None => Vec::new(),
    };
    Ok(Created { customer: model, possible_duplicates })
}

/// A change to a customer's own fields. `None` leaves a field as it is;
/// `Some(None)` clears an optional one.
#[derive(Debug, Clone)]
pub struct CustomerPatch {
    pub id: CustomerId,
    /// The version the caller read.
    pub version: i32,
    pub name: Option<CustomerName>,
    pub phone: Option<Option<Phone>>,
    pub gender: Option<Gender>,
    pub birth_date: Option<Option<NaiveDate>>,
    pub city: Option<OptionalText>,
    pub industry: Option<OptionalText>,
    pub channel: Option<OptionalText>,
}

/// Applies a patch if the customer is still at the version the caller read.
///
/// # Errors
/// `NOT_FOUND` outside the scope, `FORBIDDEN` without `customer:update`,
/// `CONFLICT` when the version is stale, `VALIDATION` for bad input or an
/// empty patch.
#[tracing::instrument(skip(db, principal, patch), fields(staff = principal.staff.id, customer = %patch.id))]
pub async fn update(
    db: &DatabaseConnection,
    principal: &Principal,
    patch: CustomerPatch,
) -> AppResult<customer::Model> {
    let current = find_live_in_scope(db, principal, patch.id).await?;
    principal.require(Action::CustomerUpdate, current.org_unit_id)?;
    if let Some(birth_date) = patch.birth_date {
        check_birth_date(birth_date)?;
    }
    let mut changes = customer::ActiveModel { ..Default::default() };
    // field → { from, to } for the audit log (readers see guarded values
    // masked as their field rules say).
    let mut changed = serde_json::Map::new();
    let mut note = |field: &str, from: Value, to: Value| {
        changed.insert(field.to_owned(), json!({ "from": from, "to": to }));
    };
    if let Some(name) = patch.name {
        let name = name.into_inner();
        note("name", json!(current.name), json!(name));
        changes.name = Set(name);
    }
    if let Some(phone) = patch.phone {
        let phone = phone.map(Phone::into_inner);
        note("phone", json!(current.phone), json!(phone));
        changes.phone = Set(phone);
    }
    if let Some(gender) = patch.gender {
        note("gender", json!(current.gender.as_str()), json!(gender.as_str()));
        changes.gender = Set(gender);
    }
    if let Some(birth_date) = patch.birth_date {
        note("birthDate", json!(current.birth_date), json!(birth_date));
        changes.birth_date = Set(birth_date);
    }
    if let Some(city) = patch.city {
        let city = city.into_inner();
        note("city", json!(current.city), json!(city));
        changes.city = Set(city);
    }
    if let Some(industry) = patch.industry {
        let industry = industry.into_inner();
        note("industry", json!(current.industry), json!(industry));
        changes.industry = Set(industry);
    }
    if let Some(channel) = patch.channel {
        let channel = channel.into_inner();
        note("channel", json!(current.channel), json!(channel));
        changes.channel = Set(channel);
    }
    if changed.is_empty() {
        return Err(AppError::validation("input", "nothing to change"));
    }
    changes.updated_at = Set(Utc::now());

    let txn = db.begin().await?;
    let result = customer::Entity::update_many()
        .set(changes)
        .col_expr(customer::Column::Version, Expr::col(customer::Column::Version).add(1))
        .filter(customer::Column::Id.eq(current.id))
        .filter(customer::Column::Version.eq(patch.version))
        .exec(&txn)
        .await?;
    if result.rows_affected == 0 {
        return Err(AppError::Conflict(format!(
            "customer {} was changed by someone else (you read version {}); reload and retry",
            current.id, patch.version
        )));
    }
    crate::store::customer_log::log_customer_change(&txn, current.id).await?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "customer.update", "customer", current.id)
            .in_unit(current.org_unit_id)
            .with_detail(json!({ "changes": changed, "fromVersion": patch.version })),
    )
    .await?;
    let updated = customer::Entity::find_by_id(current.id)
        .one(&txn)
        .await?
        .ok_or_else(|| AppError::not_found("customer", current.id))?;
    txn.commit().await?;
    Ok(updated)
}

/// External identities of the given customers, by customer.
///
/// # Errors
/// Database errors.
pub async fn identities_of(
    db: &impl ConnectionTrait,
    customer_ids: &[i64],
) -> AppResult<HashMap<i64, Vec<customer_identity::Model>>> {
    let rows = customer_identity::Entity::find()
        .filter(customer_identity::Column::CustomerId.is_in(customer_ids.iter().copied()))
        .order_by_asc(customer_identity::Column::Id)
        .all(db)
        .await?;
    let mut out: HashMap<i64, Vec<_>> = HashMap::new();
    for row in rows {
        out.entry(row.customer_id).or_default().push(row);
    }
    Ok(out)
}
