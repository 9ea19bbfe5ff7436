//! Staff management: `staff`, `staffMember`, `createStaff`, `updateStaff`,
//! `deactivateStaff`, `reactivateStaff`.

use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};

use super::customer::patch;
use super::env;
use super::org::Staff;
use super::relay::{PageInfo, page_args};
use crate::domain::{Email, IdentityValue, Login, OrgUnitId, Phone, StaffId, StaffName};
use crate::service::staff::{self as service, NewStaff, StaffFilter, StaffPatch};
use crate::state::AppState;

/// A staff member in a page, with its cursor.
#[derive(SimpleObject)]
pub struct StaffEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The staff member.
    node: Staff,
}

/// A page of staff members, newest first.
#[derive(SimpleObject)]
pub struct StaffConnection {
    /// The page's members with their cursors.
    edges: Vec<StaffEdge>,
    /// Where the page stands in the whole list.
    page_info: PageInfo,
}

/// A new staff member.
#[derive(InputObject)]
pub struct CreateStaffInput {
    /// Sign-in name: lower-case letters, digits, `.`, `_`, `-`, `@`; unique.
    login: String,
    /// The name shown to colleagues.
    display_name: String,
    /// The unit the member works in (needs `staff:manage` there).
    home_org_unit_id: ID,
    /// A contact phone number.
    phone: Option<String>,
    /// A contact e-mail address.
    email: Option<String>,
    /// The OIDC provider's value of the configured claim for this person
    /// (without it, the claim is matched against the login).
    oidc_subject: Option<String>,
    /// The person's WeCom user id (`userid`), for WeCom sign-in.
    wecom_user_id: Option<String>,
}

/// Absent fields stay as they are; `null` clears an optional one.
#[derive(InputObject)]
pub struct UpdateStaffInput {
    /// The staff member to change.
    id: ID,
    /// The name shown to colleagues.
    display_name: Option<String>,
    /// Moves the member; role bindings held at the old home unit move with it.
    home_org_unit_id: Option<ID>,
    /// A contact phone number.
    phone: MaybeUndefined<String>,
    /// A contact e-mail address.
    email: MaybeUndefined<String>,
    /// The OIDC provider's value of the configured claim for this person.
    oidc_subject: MaybeUndefined<String>,
    /// The person's WeCom user id (`userid`).
    wecom_user_id: MaybeUndefined<String>,
}

/// Whom to deactivate, and where their customers go.
#[derive(InputObject)]
pub struct DeactivateStaffInput {
    /// The staff member to deactivate.
    id: ID,
    /// Hands the member's customers to this active member; without it they
    /// keep their (now inactive) owner, which flags them for follow-up.
    reassign_customers_to: Option<ID>,
}

/// The staff member after a change.
#[derive(SimpleObject)]
pub struct StaffPayload {
    /// The member as it now is.
    staff: Staff,
}

/// What a deactivation did.
#[derive(SimpleObject)]
pub struct DeactivateStaffPayload {
    /// The member as it now is.
    staff: Staff,
    /// Sessions ended at once.
    sessions_revoked: u64,
    /// Customers handed to `reassignCustomersTo`.
    customers_reassigned: u64,
    /// Customers still owned by the deactivated member.
    customers_kept: u64,
}

#[derive(Default)]
pub struct StaffQuery;

#[Object]
impl StaffQuery {
    /// Staff members whose home unit is where the caller holds
    /// `staff:read`, newest first.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn staff(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only members whose home unit is this unit or below it.")] org_unit_id: Option<ID>,
        #[graphql(desc = "Part of the login or display name, any case.")] search: Option<String>,
        #[graphql(desc = "Only active (true) or deactivated (false) members.")] active: Option<bool>,
        #[graphql(desc = "Page forward: this many members after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many members before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<StaffConnection> {
        let env = env(ctx);
        let filter = StaffFilter {
            org_unit: org_unit_id.map(|id| OrgUnitId::parse(&id, "orgUnitId")).transpose()?,
            search,
            active,
        };
        let page = page_args(ctx, first, after, last, before)?;
        let page = service::list_in_scope(env.db, env.principal, filter, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(StaffConnection {
            edges: page.items.into_iter().map(|(cursor, node)| StaffEdge { cursor, node: Staff(node) }).collect(),
            page_info,
        })
    }

    /// One staff member (`NOT_FOUND` outside the caller's `staff:read` scope).
    async fn staff_member(&self, ctx: &Context<'_>, #[graphql(desc = "The member's id.")] id: ID) -> Result<Staff> {
        let env = env(ctx);
        Ok(Staff(service::find_in_scope(env.db, env.principal, StaffId::parse(&id, "id")?).await?))
    }
}

#[derive(Default)]
pub struct StaffMutation;

fn optional<T>(raw: Option<&str>, parse: impl Fn(&str) -> crate::error::AppResult<T>) -> Result<Option<T>> {
    Ok(raw.map(str::trim).filter(|s| !s.is_empty()).map(parse).transpose()?)
}

#[Object]
impl StaffMutation {
    /// Adds a staff member (needs `staff:manage` at its home unit). Roles
    /// are given with `assignRole`.
    async fn create_staff(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new member.")] input: CreateStaffInput,
    ) -> Result<StaffPayload> {
        let env = env(ctx);
        let new = NewStaff {
            login: Login::parse(&input.login, "login")?,
            display_name: StaffName::parse(&input.display_name, "displayName")?,
            home: OrgUnitId::parse(&input.home_org_unit_id, "homeOrgUnitId")?,
            phone: optional(input.phone.as_deref(), |p| Phone::parse(p, "phone"))?,
            email: optional(input.email.as_deref(), |e| Email::parse(e, "email"))?,
            oidc_subject: optional(input.oidc_subject.as_deref(), |v| IdentityValue::parse(v, "oidcSubject"))?,
            wecom_userid: optional(input.wecom_user_id.as_deref(), |v| IdentityValue::parse(v, "wecomUserId"))?,
        };
        Ok(StaffPayload { staff: Staff(service::create(env.db, env.principal, new).await?) })
    }

    /// Edits a staff member: name, contact, identities, home unit.
    async fn update_staff(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The member and its changes.")] input: UpdateStaffInput,
    ) -> Result<StaffPayload> {
        let env = env(ctx);
        let state = ctx.data_unchecked::<AppState>();
        let parse_patch = |value: MaybeUndefined<String>, parse: &dyn Fn(&str) -> crate::error::AppResult<_>| {
            patch(value).map(|v| optional(v.as_deref(), parse)).transpose()
        };
        let staff_patch = StaffPatch {
            id: StaffId::parse(&input.id, "id")?,
            display_name: input.display_name.as_deref().map(|n| StaffName::parse(n, "displayName")).transpose()?,
            home: input.home_org_unit_id.map(|id| OrgUnitId::parse(&id, "homeOrgUnitId")).transpose()?,
            phone: patch(input.phone).map(|v| optional(v.as_deref(), |p| Phone::parse(p, "phone"))).transpose()?,
            email: patch(input.email).map(|v| optional(v.as_deref(), |e| Email::parse(e, "email"))).transpose()?,
            oidc_subject: parse_patch(input.oidc_subject, &|v| IdentityValue::parse(v, "oidcSubject"))?,
            wecom_userid: parse_patch(input.wecom_user_id, &|v| IdentityValue::parse(v, "wecomUserId"))?,
        };
        let updated = service::update(env.db, &state.authz, env.principal, staff_patch).await?;
        Ok(StaffPayload { staff: Staff(updated) })
    }

    /// Deactivates a staff member: its next request, on every instance, is
    /// refused and its sessions end; everything it did stays on record.
    async fn deactivate_staff(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Whom, and where their customers go.")] input: DeactivateStaffInput,
    ) -> Result<DeactivateStaffPayload> {
        let env = env(ctx);
        let state = ctx.data_unchecked::<AppState>();
        let id = StaffId::parse(&input.id, "id")?;
        let successor = input.reassign_customers_to.map(|s| StaffId::parse(&s, "reassignCustomersTo")).transpose()?;
        let done = service::deactivate(env.db, &state.authz, env.principal, id, successor).await?;
        super::tag::caught_up(ctx).await;
        Ok(DeactivateStaffPayload {
            staff: Staff(done.staff),
            sessions_revoked: done.sessions_revoked,
            customers_reassigned: done.customers_reassigned,
            customers_kept: done.customers_flagged,
        })
    }

    /// Lets a deactivated staff member sign in again (tokens issued before
    /// stay refused).
    async fn reactivate_staff(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The member to reactivate.")] id: ID,
    ) -> Result<StaffPayload> {
        let env = env(ctx);
        let state = ctx.data_unchecked::<AppState>();
        let staff = service::reactivate(env.db, &state.authz, env.principal, StaffId::parse(&id, "id")?).await?;
        Ok(StaffPayload { staff: Staff(staff) })
    }
}
