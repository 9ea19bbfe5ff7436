//! Customers: the `Customer` type, the `customers` connection, and the
//! customer mutations.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};
use entity::{customer as customer_entity, enums::Gender};

use super::loaders::{GroupById, IdentitiesOfCustomer, TagById, TagsOfCustomer};
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::segment::{SegmentInput, resolve_segment};
use super::tag::{CustomerTag, Tag, TagEvent, TagEventConnection, TagEventEdge};
use super::{CustomerPrefetch, Date, DateTime, PageInfo, env, page_args, prefetch_customers};
use crate::authz::{FieldAccess, FieldRule};
use crate::domain::tag::is_lifecycle_group;
use crate::domain::{
    CustomerId, CustomerName, ExternalIdentity, OptionalText, OrgUnitId, PageArgs, Phone, TagId, parse_ids,
};
use crate::error::AppError;
use crate::service::customer::{self as service, CustomerFilter, CustomerOrder, CustomerPatch, NewCustomer, SortField};
use crate::service::tagging;

/// A customer (客户).
pub struct Customer(pub customer_entity::Model);

/// A customer (客户).
#[Object]
impl Customer {
    /// Opaque global id (`node(id)` fetches the customer again).
    pub async fn id(&self) -> ID {
        CustomerId(self.0.id).into()
    }
    /// The customer's name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Normalised phone; masked (`138****5678`) where the caller may only
    /// read it masked; `null` with `FORBIDDEN_FIELD` where it may not.
    async fn phone(&self, ctx: &Context<'_>) -> Option<String> {
        let phone = self.0.phone.as_deref()?;
        guarded(ctx, &self.0, "phone", |rule, access| rule.show(access, phone)).flatten()
    }
    /// The customer's gender, `UNKNOWN` when not given.
    async fn gender(&self) -> Gender {
        self.0.gender
    }
    /// Date of birth; `null` with `FORBIDDEN_FIELD` where the caller may not read it.
    async fn birth_date(&self, ctx: &Context<'_>) -> Option<Date> {
        guarded(ctx, &self.0, "birthDate", |_, _| self.0.birth_date.map(Date)).flatten()
    }
    /// City of residence.
    async fn city(&self) -> Option<&str> {
        self.0.city.as_deref()
    }
    /// Industry the customer works in.
    async fn industry(&self) -> Option<&str> {
        self.0.industry.as_deref()
    }
    /// Channel source (渠道来源), e.g. `抖音广告-北京`.
    async fn channel(&self) -> Option<&str> {
        self.0.channel.as_deref()
    }
    /// Total spend in integer cents (分).
    async fn total_spend(&self, ctx: &Context<'_>) -> Option<i64> {
        guarded(ctx, &self.0, "totalSpend", |_, _| self.0.total_spend_cents)
    }
    /// Number of orders placed.
    async fn order_count(&self, ctx: &Context<'_>) -> Option<i32> {
        guarded(ctx, &self.0, "orderCount", |_, _| self.0.order_count)
    }
    /// When the last order was placed.
    async fn last_order_at(&self, ctx: &Context<'_>) -> Option<DateTime> {
        guarded(ctx, &self.0, "lastOrderAt", |_, _| self.0.last_order_at.map(DateTime)).flatten()
    }
    /// When the customer was added.
    async fn added_at(&self) -> DateTime {
        self.0.added_at.into()
    }
    /// When the customer's own fields last changed.
    async fn updated_at(&self) -> DateTime {
        self.0.updated_at.into()
    }
    /// Read it, send it back with `updateCustomer`: a stale version is a
    /// `CONFLICT`.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The org unit the customer belongs to.
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// The staff member who looks after the customer.
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.owner_staff_id).await
    }
    /// The tags the caller may see, oldest first, with their provenance.
    #[graphql(complexity = "super::limits::list_cost(super::limits::TAGS_PER_CUSTOMER, child_complexity)")]
    async fn tags(&self, ctx: &Context<'_>) -> Result<Vec<CustomerTag>> {
        let assignments = env(ctx).loaders.load_one(TagsOfCustomer(self.0.id)).await?.unwrap_or_default();
        Ok(assignments.into_iter().map(CustomerTag).collect())
    }
    /// The customer's tag history, newest first: every add and remove of a
    /// tag the caller may see here, with who, when and from where. Pages
    /// both ways like every connection (`first` defaults to 20). Meant for
    /// one customer's page: it costs three statements per customer.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn tag_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many events after `after` (older ones).")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many events before `before` (newer ones).")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<TagEventConnection> {
        let env = env(ctx);
        let page = page_args(ctx, first, after, last, before)?;
        let page = tagging::visible_events_of(env.db, env.principal, &self.0, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(TagEventConnection {
            edges: page
                .items
                .into_iter()
                .map(|(cursor, event)| TagEventEdge { cursor, node: TagEvent(event) })
                .collect(),
            page_info,
        })
    }
    /// The tags the customer held at an instant that the caller may see on
    /// it, by name: its tag events up to then replayed (exact; one
    /// statement over this customer's events). Tags archived or merged
    /// since show as they are now.
    #[graphql(complexity = "super::limits::list_cost(super::limits::TAGS_PER_CUSTOMER, child_complexity)")]
    async fn tags_at(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The instant.")] at: DateTime,
    ) -> Result<Vec<super::reports::TagAtDate>> {
        let env = env(ctx);
        let tags =
            crate::service::reports::time_travel::tags_at(env.db, env.principal, CustomerId(self.0.id), at.0).await?;
        Ok(tags.into_iter().map(super::reports::TagAtDate::from).collect())
    }
    /// The customer's tag in the HQ lifecycle group (客户阶段), if any.
    async fn lifecycle_stage(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        let env = env(ctx);
        let assignments = env.loaders.load_one(TagsOfCustomer(self.0.id)).await?.unwrap_or_default();
        let tags = env.loaders.load_many(assignments.iter().map(|a| TagById(a.tag_id))).await?;
        let groups = env.loaders.load_many(tags.values().filter_map(|t| t.group_id).map(GroupById)).await?;
        Ok(assignments.iter().find_map(|a| {
            let tag = tags.get(&TagById(a.tag_id))?;
            let group = groups.get(&GroupById(tag.group_id?))?;
            is_lifecycle_group(group, env.principal.org.get(group.org_unit_id)).then(|| Tag(tag.clone()))
        }))
    }
    /// What the customer did, as connectors reported it (automatic
    /// tagging's input), newest recorded first.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many events after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many events before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<super::rules::CustomerEventConnection> {
        super::rules::events_of(ctx, &self.0, first, after, last, before).await
    }
    /// External identities (WeCom, unionid, CRM, shop), as stored
    /// (`provider`, `externalId`). A phone identity shows as the phone
    /// does (masked, or left out where the phone is hidden).
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn external_ids(&self, ctx: &Context<'_>) -> Result<Vec<ExternalId>> {
        let rows = env(ctx).loaders.load_one(IdentitiesOfCustomer(self.0.id)).await?.unwrap_or_default();
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let shown = identity_value(ctx, &self.0, &r.provider, &r.external_id)?;
                Some(ExternalId { provider: r.provider, external_id: shown })
            })
            .collect())
    }
    /// The customer's identities by source: WeCom `external_userid` (per
    /// corp), unionid, phone, order-system id (and `OTHER` systems'). Each
    /// belongs to this customer only. A phone identity shows as the phone
    /// does (masked, or left out where the phone is hidden).
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn identities(&self, ctx: &Context<'_>) -> Result<Vec<super::customer_data::CustomerIdentity>> {
        let rows = env(ctx).loaders.load_one(IdentitiesOfCustomer(self.0.id)).await?.unwrap_or_default();
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let shown = identity_value(ctx, &self.0, &r.provider, &r.external_id)?;
                Some(super::customer_data::CustomerIdentity::of(r, shown))
            })
            .collect())
    }
}

/// An identity's value as the caller may see it: a phone identity is
/// guarded by the phone's field rule (masked, or `None` where hidden).
pub(super) fn identity_value(
    ctx: &Context<'_>,
    customer: &customer_entity::Model,
    provider: &str,
    value: &str,
) -> Option<String> {
    if provider != crate::domain::IdentitySource::Phone.provider() {
        return Some(value.to_owned());
    }
    let rule = FieldRule::by_api("phone")?;
    let access = env(ctx).principal.field_access(rule.field, customer.org_unit_id);
    if access == FieldAccess::Hidden {
        return None;
    }
    rule.show(access, value)
}

/// The value of a field guarded by a row of [`FIELD_RULES`](crate::authz::FIELD_RULES),
/// or `null` and a `FORBIDDEN_FIELD` error at the field's path when the
/// caller may not read it for this customer. `value` gets the row and the
/// access (full or masked).
fn guarded<T>(
    ctx: &Context<'_>,
    customer: &customer_entity::Model,
    api_field: &str,
    value: impl FnOnce(&FieldRule, FieldAccess) -> T,
) -> Option<T> {
    let rule = FieldRule::by_api(api_field);
    let access = match rule {
        Some(rule) => env(ctx).principal.field_access(rule.field, customer.org_unit_id),
        // A guarded field without a rule is a bug: refuse rather than leak.
        None => FieldAccess::Hidden,
    };
    let Some(rule) = rule.filter(|_| access != FieldAccess::Hidden) else {
        let err: async_graphql::Error = AppError::ForbiddenField { field: format!("Customer.{api_field}") }.into();
        ctx.add_error(ctx.set_error_path(err.into_server_error(ctx.item.pos)));
        return None;
    };
    Some(value(rule, access))
}

/// An identity of the customer in another system.
#[derive(SimpleObject, InputObject, Clone)]
#[graphql(input_name = "ExternalIdInput")]
pub struct ExternalId {
    /// `wecom`, `unionid`, `crm`, `shop`, …
    pub(crate) provider: String,
    /// The customer's id in that system.
    pub(crate) external_id: String,
}

/// A customer in a page, with its cursor.
#[derive(SimpleObject)]
pub struct CustomerEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The customer.
    node: Customer,
}

/// A page of customers (`first`/`after` forward, `last`/`before` backward).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CustomerConnection {
    /// The customers of the page, in the list's order.
    edges: Vec<CustomerEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
    #[graphql(skip)]
    filter: CustomerFilter,
}

#[ComplexObject]
impl CustomerConnection {
    /// Customers matching the filter in the caller's scope (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let env = env(ctx);
        let index = &ctx.data_unchecked::<crate::state::AppState>().index;
        Ok(crate::service::listing::count_members(env.db, index, env.principal, &self.filter).await?)
    }
}

/// Which customers to list; given parts must all match.
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

/// What customers are sorted by (ties by id).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum CustomerOrderField {
    /// When the customer was added.
    #[default]
    AddedAt,
    /// When the customer's own fields last changed.
    UpdatedAt,
    /// The name, by code point.
    Name,
    /// Needs `customer.totalSpend:read` over the whole scope listed.
    TotalSpend,
}

/// Sort direction.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum OrderDirection {
    /// Smallest first.
    Asc,
    /// Largest (newest) first.
    #[default]
    Desc,
}

/// The order of a customer list.
#[derive(InputObject, Default)]
pub struct CustomerOrderInput {
    /// The sort key.
    #[graphql(default)]
    field: CustomerOrderField,
    /// The direction.
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
        external_ids: node.field("externalIds").exists() || node.field("identities").exists(),
    }
}

#[derive(Default)]
pub struct CustomerQuery;

#[Object]
impl CustomerQuery {
    /// A customer in the caller's scope; `NOT_FOUND` otherwise (missing and
    /// out-of-scope look the same).
    async fn customer(&self, ctx: &Context<'_>, #[graphql(desc = "The customer's id.")] id: ID) -> Result<Customer> {
        let env = env(ctx);
        let id = CustomerId::parse(&id, "id")?;
        Ok(Customer(service::find_in_scope(env.db, env.principal, id).await?))
    }

    /// Customers in the caller's scope. `first` (or `last`) defaults to 20
    /// and is clamped to 1..=100.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many customers after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many customers before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
        #[graphql(desc = "Which customers.")] filter: Option<CustomerFilterInput>,
        #[graphql(desc = "The order (default: newest added first).")] order_by: Option<CustomerOrderInput>,
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
        let page = page_args(ctx, first, after, last, before)?;
        customer_connection(ctx, filter, order_by, &page).await
    }
}

/// A page of customers matching `filter`, with what its selection needs
/// prefetched.
pub(crate) async fn customer_connection(
    ctx: &Context<'_>,
    filter: CustomerFilter,
    order_by: Option<CustomerOrderInput>,
    page: &PageArgs,
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
    let index = &ctx.data_unchecked::<crate::state::AppState>().index;
    let page = crate::service::listing::list_members(env.db, index, env.principal, &filter, order, page).await?;
    let node = ctx.look_ahead().field("edges").field("node");
    let customers: Vec<_> = page.items.iter().map(|(_, c)| c.clone()).collect();
    prefetch_customers(env.loaders, &customers, prefetch_for(&node)).await?;
    let page_info = PageInfo::of(&page);
    Ok(CustomerConnection {
        edges: page.items.into_iter().map(|(cursor, c)| CustomerEdge { cursor, node: Customer(c) }).collect(),
        page_info,
        filter,
    })
}

/// A new customer.
#[derive(InputObject)]
pub struct CreateCustomerInput {
    /// The org unit the customer belongs to (one the caller may add customers to).
    org_unit_id: ID,
    /// The customer's name.
    name: String,
    /// A mobile number; it is normalised.
    phone: Option<String>,
    /// The customer's gender.
    #[graphql(default_with = "Gender::Unknown")]
    gender: Gender,
    /// Date of birth.
    birth_date: Option<Date>,
    /// City of residence.
    city: Option<String>,
    /// Industry the customer works in.
    industry: Option<String>,
    /// Channel source (渠道来源).
    channel: Option<String>,
    /// Identities in other systems.
    #[graphql(default)]
    external_ids: Vec<ExternalId>,
}

/// The created customer, and possible duplicates of it.
#[derive(SimpleObject)]
pub struct CreateCustomerPayload {
    /// The customer as created.
    customer: Customer,
    /// Customers in the caller's scope with the same phone number.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    possible_duplicates: Vec<Customer>,
}

/// Absent fields stay as they are; `null` clears an optional field.
#[derive(InputObject)]
pub struct UpdateCustomerInput {
    /// The customer's id.
    id: ID,
    /// The version the caller read.
    version: i32,
    /// A new name.
    name: Option<String>,
    /// A new mobile number (`null` clears it).
    phone: MaybeUndefined<String>,
    /// A new gender.
    gender: Option<Gender>,
    /// A new date of birth (`null` clears it).
    birth_date: MaybeUndefined<Date>,
    /// A new city (`null` clears it).
    city: MaybeUndefined<String>,
    /// A new industry (`null` clears it).
    industry: MaybeUndefined<String>,
    /// A new channel source (`null` clears it).
    channel: MaybeUndefined<String>,
}

/// The updated customer.
#[derive(SimpleObject)]
pub struct UpdateCustomerPayload {
    /// The customer as it now is.
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
    async fn create_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new customer.")] input: CreateCustomerInput,
    ) -> Result<CreateCustomerPayload> {
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
            birth_date: input.birth_date.map(|d| d.0),
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
    async fn update_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer, the version read, and the changes.")] input: UpdateCustomerInput,
    ) -> Result<UpdateCustomerPayload> {
        let env = env(ctx);
        let patch = CustomerPatch {
            id: CustomerId::parse(&input.id, "id")?,
            version: input.version,
            name: input.name.as_deref().map(|n| CustomerName::parse(n, "name")).transpose()?,
            phone: patch(input.phone).map(|p| p.map(|p| Phone::parse(&p, "phone")).transpose()).transpose()?,
            gender: input.gender,
            birth_date: patch(input.birth_date).map(|d| d.map(|d| d.0)),
            city: patch(input.city).map(|v| OptionalText::parse(v.as_deref(), "city")).transpose()?,
            industry: patch(input.industry).map(|v| OptionalText::parse(v.as_deref(), "industry")).transpose()?,
            channel: patch(input.channel).map(|v| OptionalText::parse(v.as_deref(), "channel")).transpose()?,
        };
        let customer = service::update(env.db, env.principal, patch).await?;
        super::tag::caught_up(ctx).await;
        Ok(UpdateCustomerPayload { customer: Customer(customer) })
    }
}

#[cfg(test)]
mod tests {
    //! Every way the API reads customer data either is a row of the field
    //! rules or is known to read nothing guarded: a new field that is in
    //! neither list fails here until someone decides which it is.

    use crate::authz::FieldRule;

    /// `Customer` fields that read no guarded data.
    const UNGUARDED_FIELDS: &[&str] = &[
        "id",
        "name",
        "gender",
        "city",
        "industry",
        "channel",
        "addedAt",
        "updatedAt",
        "version",
        "orgUnit",
        "owner",
        "tags",
        // Replayed tags, shown by the same class rule as `tags`
        // (`on_customer_visible` in `service::reports::time_travel`).
        "tagsAt",
        "tagEvents",
        // An order event's amount is guarded as `totalSpend` is, in
        // `graphql::rules::CustomerEvent::amount`.
        "events",
        "lifecycleStage",
        "externalIds",
        // A phone identity's value is shown through the phone's field rule
        // (`identity_value`).
        "identities",
    ];

    /// `CustomerFilterInput` arguments that compare no guarded value.
    /// (`search` matches a whole phone number only in units where the caller
    /// reads phones, at least masked, and is audited and rate-limited there:
    /// see `service::customer::screen_phone_search`.)
    const UNGUARDED_FILTERS: &[&str] = &["orgUnitId", "search", "hasAllTags", "hasAnyTags", "lifecycleStage"];

    /// `CustomerOrderField` values that sort by no guarded value.
    const UNGUARDED_ORDERS: &[&str] = &["ADDED_AT", "UPDATED_AT", "NAME"];

    /// `SegmentInput` fields that read no guarded value.
    const UNGUARDED_PREDICATES: &[&str] = &[
        "text",
        "and",
        "or",
        "not",
        "tag",
        "anyTags",
        "allTags",
        "group",
        "taggedBetween",
        "city",
        "channel",
        "gender",
        "lifecycle",
        "orgUnit",
        "addedBefore",
        "addedAfter",
        "segment",
    ];

    /// The fields (or enum values) of the SDL block that starts with
    /// `header`, descriptions and arguments left out.
    fn members(sdl: &str, header: &str) -> Vec<String> {
        let start = sdl.find(header).unwrap_or_else(|| panic!("the schema has no {header:?}"));
        let block = &sdl[start + header.len()..];
        let block = &block[..block.find("\n}").expect("a closing brace")];
        let mut in_description = false;
        let mut out = Vec::new();
        for line in block.lines() {
            let text = line.trim();
            if text.starts_with("\"\"\"") {
                let one_line = text.len() > 6 && text.ends_with("\"\"\"");
                in_description ^= !one_line;
                continue;
            }
            if in_description || !line.starts_with('\t') || line.starts_with("\t\t") {
                continue;
            }
            let name: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        assert!(!out.is_empty(), "{header:?} has no members");
        out
    }

    #[test]
    fn every_customer_field_that_reads_guarded_data_has_a_row_in_the_field_rules() {
        let sdl = super::super::sdl();
        let unaccounted = |header: &str, known: &[&str], guarded: &dyn Fn(&str) -> bool| -> Vec<String> {
            members(&sdl, header).into_iter().filter(|m| !known.contains(&m.as_str()) && !guarded(m)).collect()
        };
        let checks = [
            unaccounted("type Customer implements Node {", UNGUARDED_FIELDS, &|f| FieldRule::by_api(f).is_some()),
            unaccounted("input CustomerFilterInput {", UNGUARDED_FILTERS, &|f| FieldRule::by_filter(f).is_some()),
            unaccounted("enum CustomerOrderField {", UNGUARDED_ORDERS, &|f| FieldRule::by_order(f).is_some()),
            // The structured input spells `lastOrder` as `lastOrderBefore`
            // and `lastOrderAfter`.
            unaccounted("input SegmentInput @oneOf {", UNGUARDED_PREDICATES, &|f| {
                crate::authz::FIELD_RULES.iter().filter_map(|r| r.segment).any(|p| f.starts_with(p))
            }),
        ];
        for missing in checks {
            assert!(
                missing.is_empty(),
                "{missing:?} read customer data but are neither rows of FIELD_RULES nor known to be unguarded"
            );
        }
    }

    #[test]
    fn every_row_of_the_field_rules_is_a_customer_field_and_its_filters_orders_and_predicates_exist() {
        let sdl = super::super::sdl();
        let fields = members(&sdl, "type Customer implements Node {");
        let filters = members(&sdl, "input CustomerFilterInput {");
        let orders = members(&sdl, "enum CustomerOrderField {");
        let predicates = members(&sdl, "input SegmentInput @oneOf {");
        for rule in crate::authz::FIELD_RULES {
            assert!(fields.iter().any(|f| f == rule.api), "{} is not a Customer field", rule.api);
            for filter in rule.filters {
                assert!(filters.iter().any(|f| f == filter), "{filter} is not a filter argument");
            }
            if let Some(order) = rule.order {
                assert!(orders.iter().any(|o| o == order), "{order} is not an order field");
            }
            if let Some(predicate) = rule.segment {
                assert!(predicates.iter().any(|p| p.starts_with(predicate)), "{predicate} is not a segment input");
            }
        }
    }
}
