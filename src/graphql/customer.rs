//! Customers: the `Customer` type, the `customers` connection, and the
//! customer mutations.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};
use entity::{customer as customer_entity, enums::Gender, enums::TagCategory};

use super::loaders::{GroupById, IdentitiesOfCustomer, TagById, TagsOfCustomer};
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::segment::{SegmentInput, resolve_segment};
use super::tag::{CustomerTag, Tag, TagEvent};
use super::{CustomerPrefetch, env, prefetch_customers};
use crate::authz::{FIELD_RULES, FieldAccess};
use crate::domain::{
    CustomerId, CustomerName, EventSeq, ExternalIdentity, OptionalText, OrgUnitId, PageSize, Phone, TagId, parse_ids,
};
use crate::error::AppError;
use crate::service::customer::{self as service, CustomerFilter, CustomerOrder, CustomerPatch, NewCustomer, SortField};
use crate::service::tagging;

/// A customer (客户).
pub struct Customer(pub customer_entity::Model);

#[Object]
impl Customer {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Normalised phone; masked (`138****5678`) where the caller may only
    /// read it masked; `null` with `FORBIDDEN_FIELD` where it may not.
    async fn phone(&self, ctx: &Context<'_>) -> Option<String> {
        let phone = self.0.phone.as_deref()?;
        guarded(ctx, &self.0, "phone", |access| match access {
            FieldAccess::Full => Some(phone.to_owned()),
            _ => Some(Phone::mask(phone)),
        })
        .flatten()
    }
    async fn gender(&self) -> Gender {
        self.0.gender
    }
    async fn birth_date(&self, ctx: &Context<'_>) -> Option<NaiveDate> {
        guarded(ctx, &self.0, "birthDate", |_| self.0.birth_date).flatten()
    }
    async fn city(&self) -> Option<&str> {
        self.0.city.as_deref()
    }
    async fn industry(&self) -> Option<&str> {
        self.0.industry.as_deref()
    }
    /// Channel source (渠道来源), e.g. `抖音广告-北京`.
    async fn channel(&self) -> Option<&str> {
        self.0.channel.as_deref()
    }
    /// Total spend in integer cents (分).
    async fn total_spend(&self, ctx: &Context<'_>) -> Option<i64> {
        guarded(ctx, &self.0, "totalSpend", |_| self.0.total_spend_cents)
    }
    async fn order_count(&self, ctx: &Context<'_>) -> Option<i32> {
        guarded(ctx, &self.0, "orderCount", |_| self.0.order_count)
    }
    async fn last_order_at(&self, ctx: &Context<'_>) -> Option<DateTime<Utc>> {
        guarded(ctx, &self.0, "lastOrderAt", |_| self.0.last_order_at).flatten()
    }
    async fn added_at(&self) -> DateTime<Utc> {
        self.0.added_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Read it, send it back with `updateCustomer`: a stale version is a
    /// `CONFLICT`.
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.owner_staff_id).await
    }
    /// The tags the caller may see, oldest first, with their provenance.
    async fn tags(&self, ctx: &Context<'_>) -> Result<Vec<CustomerTag>> {
        let assignments = env(ctx).loaders.load_one(TagsOfCustomer(self.0.id)).await?.unwrap_or_default();
        Ok(assignments.into_iter().map(CustomerTag).collect())
    }
    /// The customer's tag history, newest first: every add and remove of a
    /// tag the caller may see here, with who, when and from where. Page
    /// back with `before`: the `id` of the last event you have. Meant for
    /// one customer's page: it costs three statements per customer.
    async fn tag_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
        before: Option<ID>,
    ) -> Result<Vec<TagEvent>> {
        let env = env(ctx);
        let first = PageSize::parse(Some(first), env.limits)?;
        let before = before.map(|b| EventSeq::parse(&b, "before")).transpose()?;
        let events =
            tagging::visible_events_of(env.db, env.principal, &self.0, first.get(), before.map(|b| b.0)).await?;
        Ok(events.into_iter().map(TagEvent).collect())
    }
    /// The customer's tag in the HQ lifecycle group (客户阶段), if any.
    async fn lifecycle_stage(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        let env = env(ctx);
        let assignments = env.loaders.load_one(TagsOfCustomer(self.0.id)).await?.unwrap_or_default();
        let tags = env.loaders.load_many(assignments.iter().map(|a| TagById(a.tag_id))).await?;
        let groups = env.loaders.load_many(tags.values().filter_map(|t| t.group_id).map(GroupById)).await?;
        let root_units: Vec<i64> =
            env.principal.org.all().iter().filter(|u| u.parent_id.is_none()).map(|u| u.id).collect();
        Ok(assignments.iter().find_map(|a| {
            let tag = tags.get(&TagById(a.tag_id))?;
            let group = groups.get(&GroupById(tag.group_id?))?;
            (group.category == TagCategory::Lifecycle && group.exclusive && root_units.contains(&group.org_unit_id))
                .then(|| Tag(tag.clone()))
        }))
    }
    /// External identities (WeCom, unionid, CRM, shop).
    async fn external_ids(&self, ctx: &Context<'_>) -> Result<Vec<ExternalId>> {
        let rows = env(ctx).loaders.load_one(IdentitiesOfCustomer(self.0.id)).await?.unwrap_or_default();
        Ok(rows.into_iter().map(|r| ExternalId { provider: r.provider, external_id: r.external_id }).collect())
    }
}

/// The value of a field guarded by a rule of [`FIELD_RULES`], or `null` and
/// a `FORBIDDEN_FIELD` error at the field's path when the caller may not
/// read it for this customer. `value` gets the access (full or masked).
fn guarded<T>(
    ctx: &Context<'_>,
    customer: &customer_entity::Model,
    api_field: &str,
    value: impl FnOnce(FieldAccess) -> T,
) -> Option<T> {
    let rule = FIELD_RULES.iter().find(|(name, _)| *name == api_field).map(|(_, rule)| *rule);
    let access = match rule {
        Some(rule) => env(ctx).principal.field_access(rule, customer.org_unit_id),
        // A guarded field without a rule is a bug: refuse rather than leak.
        None => FieldAccess::Hidden,
    };
    if access == FieldAccess::Hidden {
        let err: async_graphql::Error = AppError::ForbiddenField { field: format!("Customer.{api_field}") }.into();
        ctx.add_error(ctx.set_error_path(err.into_server_error(ctx.item.pos)));
        return None;
    }
    Some(value(access))
}

#[derive(SimpleObject, InputObject, Clone)]
#[graphql(input_name = "ExternalIdInput")]
pub struct ExternalId {
    /// `wecom`, `unionid`, `crm`, `shop`, …
    provider: String,
    external_id: String,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

impl PageInfo {
    pub fn new(has_next_page: bool, end_cursor: Option<String>) -> Self {
        Self { has_next_page, end_cursor }
    }
}

#[derive(SimpleObject)]
pub struct CustomerEdge {
    cursor: String,
    node: Customer,
}

/// A page of customers (forward paging with `first`/`after`).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CustomerConnection {
    edges: Vec<CustomerEdge>,
    page_info: PageInfo,
    #[graphql(skip)]
    filter: CustomerFilter,
}

#[ComplexObject]
impl CustomerConnection {
    /// Customers matching the filter in the caller's scope (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let env = env(ctx);
        Ok(service::count_in_scope(env.db, env.principal, &self.filter).await?)
    }
}

#[derive(InputObject, Default)]
pub struct CustomerFilterInput {
    /// Customers of this org unit and the units below it.
    org_unit_id: Option<ID>,
    /// Part of the name, or a whole phone number.
    search: Option<String>,
    /// Customers holding every one of these tags.
    has_all_tags: Option<Vec<ID>>,
    /// Customers holding at least one of these tags.
    has_any_tags: Option<Vec<ID>>,
    /// A tag of the lifecycle group (客户阶段).
    lifecycle_stage: Option<ID>,
    /// Total spend at least this many cents (needs `customer.totalSpend:read`).
    total_spend_min: Option<i64>,
    /// Total spend at most this many cents (needs `customer.totalSpend:read`).
    total_spend_max: Option<i64>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum CustomerOrderField {
    #[default]
    AddedAt,
    UpdatedAt,
    Name,
    /// Needs `customer.totalSpend:read` over the whole scope listed.
    TotalSpend,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum OrderDirection {
    Asc,
    #[default]
    Desc,
}

#[derive(InputObject, Default)]
pub struct CustomerOrderInput {
    #[graphql(default)]
    field: CustomerOrderField,
    #[graphql(default)]
    direction: OrderDirection,
}

fn parse_filter(input: Option<CustomerFilterInput>) -> Result<CustomerFilter> {
    let input = input.unwrap_or_default();
    Ok(CustomerFilter {
        org_unit: input.org_unit_id.map(|id| OrgUnitId::parse(&id, "filter.orgUnitId")).transpose()?,
        search: input.search,
        has_all_tags: parse_ids(&input.has_all_tags.unwrap_or_default(), "filter.hasAllTags", TagId::parse)?,
        has_any_tags: parse_ids(&input.has_any_tags.unwrap_or_default(), "filter.hasAnyTags", TagId::parse)?,
        lifecycle_stage: input.lifecycle_stage.map(|id| TagId::parse(&id, "filter.lifecycleStage")).transpose()?,
        total_spend_min: input.total_spend_min,
        total_spend_max: input.total_spend_max,
        segment: None,
    })
}

/// What a selection of `Customer` fields will load.
fn prefetch_for(node: &async_graphql::Lookahead<'_>) -> CustomerPrefetch {
    let tags = node.field("tags").exists() || node.field("lifecycleStage").exists();
    CustomerPrefetch {
        tags,
        staff: node.field("owner").exists() || node.field("tags").field("taggedBy").exists(),
        external_ids: node.field("externalIds").exists(),
    }
}

#[derive(Default)]
pub struct CustomerQuery;

#[Object]
impl CustomerQuery {
    /// A customer in the caller's scope; `NOT_FOUND` otherwise (missing and
    /// out-of-scope look the same).
    async fn customer(&self, ctx: &Context<'_>, id: ID) -> Result<Customer> {
        let env = env(ctx);
        let id = CustomerId::parse(&id, "id")?;
        Ok(Customer(service::find_in_scope(env.db, env.principal, id).await?))
    }

    /// Customers in the caller's scope. `first` defaults to 20 and is
    /// clamped to 1..=100.
    async fn customers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<CustomerFilterInput>,
        order_by: Option<CustomerOrderInput>,
        #[graphql(desc = "Only members of this segment (structured or `{ text: \"…\" }`).")] segment: Option<
            SegmentInput,
        >,
    ) -> Result<CustomerConnection> {
        let mut filter = parse_filter(filter)?;
        let env = env(ctx);
        service::screen_phone_search(env.db, env.principal, env.limits, &filter).await?;
        if let Some(segment) = segment {
            filter.segment = Some(resolve_segment(ctx, segment).await?);
        }
        customer_connection(ctx, filter, order_by, first, after).await
    }
}

/// A page of customers matching `filter`, with what its selection needs
/// prefetched.
pub(crate) async fn customer_connection(
    ctx: &Context<'_>,
    filter: CustomerFilter,
    order_by: Option<CustomerOrderInput>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<CustomerConnection> {
    let env = env(ctx);
    let order_by = order_by.unwrap_or_default();
    let order = CustomerOrder {
        field: match order_by.field {
            CustomerOrderField::AddedAt => SortField::AddedAt,
            CustomerOrderField::UpdatedAt => SortField::UpdatedAt,
            CustomerOrderField::Name => SortField::Name,
            CustomerOrderField::TotalSpend => SortField::TotalSpend,
        },
        descending: order_by.direction == OrderDirection::Desc,
    };
    let first = PageSize::parse(first, env.limits)?;
    let index = &ctx.data_unchecked::<crate::state::AppState>().index;
    let page =
        crate::service::segment::list_members(env.db, index, env.principal, &filter, order, first, after.as_deref())
            .await?;
    let node = ctx.look_ahead().field("edges").field("node");
    let customers: Vec<_> = page.items.iter().map(|(_, c)| c.clone()).collect();
    prefetch_customers(env.loaders, &customers, prefetch_for(&node)).await?;
    let end_cursor = page.items.last().map(|(c, _)| c.clone());
    Ok(CustomerConnection {
        edges: page.items.into_iter().map(|(cursor, c)| CustomerEdge { cursor, node: Customer(c) }).collect(),
        page_info: PageInfo { has_next_page: page.has_next_page, end_cursor },
        filter,
    })
}

#[derive(InputObject)]
pub struct CreateCustomerInput {
    org_unit_id: ID,
    name: String,
    phone: Option<String>,
    #[graphql(default_with = "Gender::Unknown")]
    gender: Gender,
    birth_date: Option<NaiveDate>,
    city: Option<String>,
    industry: Option<String>,
    channel: Option<String>,
    #[graphql(default)]
    external_ids: Vec<ExternalId>,
}

#[derive(SimpleObject)]
pub struct CreateCustomerPayload {
    customer: Customer,
    /// Customers in the caller's scope with the same phone number.
    possible_duplicates: Vec<Customer>,
}

/// Absent fields stay as they are; `null` clears an optional field.
#[derive(InputObject)]
pub struct UpdateCustomerInput {
    id: ID,
    /// The version the caller read.
    version: i32,
    name: Option<String>,
    phone: MaybeUndefined<String>,
    gender: Option<Gender>,
    birth_date: MaybeUndefined<NaiveDate>,
    city: MaybeUndefined<String>,
    industry: MaybeUndefined<String>,
    channel: MaybeUndefined<String>,
}

#[derive(SimpleObject)]
pub struct UpdateCustomerPayload {
    customer: Customer,
}

/// Absent → no change; `null` → clear; a value → set.
pub(super) fn patch<T>(value: MaybeUndefined<T>) -> Option<Option<T>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(v)),
    }
}

#[derive(Default)]
pub struct CustomerMutation;

#[Object]
impl CustomerMutation {
    /// Creates a customer owned by the caller.
    async fn create_customer(&self, ctx: &Context<'_>, input: CreateCustomerInput) -> Result<CreateCustomerPayload> {
        let env = env(ctx);
        let identities = input
            .external_ids
            .iter()
            .map(|e| ExternalIdentity::parse(&e.provider, &e.external_id, "externalIds"))
            .collect::<Result<Vec<_>, _>>()?;
        let new = NewCustomer {
            org_unit: OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?,
            name: CustomerName::parse(&input.name, "name")?,
            phone: input.phone.as_deref().map(|p| Phone::parse(p, "phone")).transpose()?,
            gender: input.gender,
            birth_date: input.birth_date,
            city: OptionalText::parse(input.city.as_deref(), "city")?,
            industry: OptionalText::parse(input.industry.as_deref(), "industry")?,
            channel: OptionalText::parse(input.channel.as_deref(), "channel")?,
            identities,
        };
        let created = service::create(env.db, env.principal, new).await?;
        super::tag::caught_up(ctx).await;
        Ok(CreateCustomerPayload {
            customer: Customer(created.customer),
            possible_duplicates: created.possible_duplicates.into_iter().map(Customer).collect(),
        })
    }

    /// Changes a customer's own fields, if nobody changed it since the
    /// caller read `version` (otherwise `CONFLICT`).
    async fn update_customer(&self, ctx: &Context<'_>, input: UpdateCustomerInput) -> Result<UpdateCustomerPayload> {
        let env = env(ctx);
        let patch = CustomerPatch {
            id: CustomerId::parse(&input.id, "id")?,
            version: input.version,
            name: input.name.as_deref().map(|n| CustomerName::parse(n, "name")).transpose()?,
            phone: patch(input.phone).map(|p| p.map(|p| Phone::parse(&p, "phone")).transpose()).transpose()?,
            gender: input.gender,
            birth_date: patch(input.birth_date),
            city: patch(input.city).map(|v| OptionalText::parse(v.as_deref(), "city")).transpose()?,
            industry: patch(input.industry).map(|v| OptionalText::parse(v.as_deref(), "industry")).transpose()?,
            channel: patch(input.channel).map(|v| OptionalText::parse(v.as_deref(), "channel")).transpose()?,
        };
        let customer = service::update(env.db, env.principal, patch).await?;
        super::tag::caught_up(ctx).await;
        Ok(UpdateCustomerPayload { customer: Customer(customer) })
    }
}
