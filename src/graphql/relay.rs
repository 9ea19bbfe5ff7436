//! Relay conventions: the `Node` interface with `node(id)` and `nodes(ids)`,
//! and the `PageInfo` of every connection.

use async_graphql::{Context, ID, Interface, Object, Result, SimpleObject};

use super::audit::AuditLogEntry;
use super::customer::Customer;
use super::env;
use super::governance::{ChangeRequest, ModificationLock};
use super::org::{OrgUnit, Staff};
use super::segment::Segment;
use super::tag::{Tag, TagEvent, TagGroup};
use crate::domain::{
    AuditEntryId, ChangeRequestId, CustomerId, EventSeq, LockId, OrgUnitId, Page, PageArgs, SegmentId, StaffId,
    TagGroupId, TagId, decode_global,
};
use crate::error::{AppError, AppResult};
use crate::service;

/// An object with a global id, which `node(id)` fetches again.
// A segment carries its resolved filter; nodes are few per request, so
// boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "Opaque global id, unique across types; pass it to `node(id)`."))]
pub enum Node {
    Customer(Customer),
    Tag(Tag),
    TagGroup(TagGroup),
    OrgUnit(OrgUnit),
    Staff(Staff),
    Segment(Segment),
    ChangeRequest(ChangeRequest),
    ModificationLock(ModificationLock),
    AuditLogEntry(AuditLogEntry),
    TagEvent(TagEvent),
}

/// Where a page sits in its list. Page forward with `first` and
/// `after: endCursor`, backward with `last` and `before: startCursor`.
#[derive(SimpleObject)]
pub struct PageInfo {
    /// More items follow the page (going backward: true when `before` was given).
    has_next_page: bool,
    /// Items precede the page (going forward: true when `after` was given).
    has_previous_page: bool,
    /// The cursor of the page's first item; none for an empty page.
    start_cursor: Option<String>,
    /// The cursor of the page's last item; none for an empty page.
    end_cursor: Option<String>,
}

impl PageInfo {
    pub fn of<T>(page: &Page<T>) -> Self {
        Self {
            has_next_page: page.has_next_page,
            has_previous_page: page.has_previous_page,
            start_cursor: page.start_cursor(),
            end_cursor: page.end_cursor(),
        }
    }
}

/// Checks the Relay paging arguments of a connection field.
pub(crate) fn page_args(
    ctx: &Context<'_>,
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
) -> Result<PageArgs> {
    Ok(PageArgs::parse(first, after, last, before, env(ctx).limits)?)
}

/// The object of a global id, read by the same service function as the
/// type's own query, so the same scope and visibility apply.
async fn load(ctx: &Context<'_>, raw: &ID, field: &str) -> AppResult<Node> {
    let env = env(ctx);
    let (db, p) = (env.db, env.principal);
    let (type_name, id) = decode_global(raw)
        .ok_or_else(|| AppError::validation(field, format!("{:?} is not a global id", raw.as_str())))?;
    Ok(match type_name.as_str() {
        CustomerId::TYPE_NAME => {
            Node::Customer(Customer(service::customer::find_in_scope(db, p, CustomerId(id)).await?))
        }
        TagId::TYPE_NAME => Node::Tag(Tag(service::tag_library::find_tag(db, p, TagId(id)).await?)),
        TagGroupId::TYPE_NAME => {
            Node::TagGroup(TagGroup(service::tag_library::find_group(db, p, TagGroupId(id)).await?))
        }
        OrgUnitId::TYPE_NAME => {
            // As `orgUnits`: the units in the caller's scopes and their ancestors.
            let unit = p.org.get(id).filter(|u| p.visible_units().contains(&u.id));
            Node::OrgUnit(OrgUnit(unit.cloned().ok_or_else(|| AppError::not_found("org unit", id))?))
        }
        StaffId::TYPE_NAME => Node::Staff(Staff(service::staff::find_in_scope(db, p, StaffId(id)).await?)),
        SegmentId::TYPE_NAME => Node::Segment(Segment::new(service::segment::find(db, p, id).await?)),
        ChangeRequestId::TYPE_NAME => {
            Node::ChangeRequest(ChangeRequest(service::governance::requests::find(db, p, ChangeRequestId(id)).await?))
        }
        LockId::TYPE_NAME => {
            Node::ModificationLock(ModificationLock(service::governance::locks::find(db, p, LockId(id)).await?))
        }
        AuditEntryId::TYPE_NAME => {
            Node::AuditLogEntry(AuditLogEntry(service::audit::find(db, p, AuditEntryId(id)).await?))
        }
        EventSeq::TYPE_NAME => Node::TagEvent(TagEvent(service::tagging::find_event(db, p, EventSeq(id)).await?)),
        other => return Err(AppError::validation(field, format!("{other} objects are not nodes"))),
    })
}

#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// The object of a global id, as its own query answers it: `NOT_FOUND`
    /// (and `null`) when it is missing or the caller may not see it.
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A global id from any `id` field.")] id: ID,
    ) -> Result<Option<Node>> {
        Ok(Some(load(ctx, &id, "id").await?))
    }

    /// The objects of several global ids, in the order given: `null` for
    /// each one missing or invisible to the caller. At most the maximum
    /// page size of ids (`LIMIT_EXCEEDED` beyond).
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Global ids from `id` fields.")] ids: Vec<ID>,
    ) -> Result<Vec<Option<Node>>> {
        let max = env(ctx).limits.max_page_size as usize;
        if ids.len() > max {
            return Err(AppError::LimitExceeded(format!("`nodes` takes at most {max} ids")).into());
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            match load(ctx, id, "ids").await {
                Ok(node) => out.push(Some(node)),
                Err(AppError::NotFound { .. }) => out.push(None),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(out)
    }
}
