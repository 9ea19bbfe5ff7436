//! Run-time administration of roles and permissions.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};

use super::env;
use crate::domain::{OrgUnitId, RoleName, StaffId};
use crate::service::admin;
use crate::state::AppState;

/// A role bound to a staff member at an org unit.
#[derive(InputObject)]
pub struct RoleBindingInput {
    /// The staff member.
    staff_id: ID,
    /// The role's name.
    role: String,
    /// The role holds in this org unit and every unit below it.
    org_unit_id: ID,
}

/// A permission of a role.
#[derive(InputObject)]
pub struct PermissionInput {
    /// The role's name.
    role: String,
    /// `customer`, `customer.totalSpend`, `tag_class:value`, `role:sales`, …
    object: String,
    /// `read`, `read_masked`, `use`, `assign`, …
    action: String,
}

/// Whether an administrative change did anything (false when it was already
/// in place). It applies from the next request on, on every instance.
#[derive(SimpleObject)]
pub struct AdminChangePayload {
    /// False when it was already in place.
    changed: bool,
}

/// A role and what it may do.
#[derive(SimpleObject)]
pub struct RoleDefinition {
    /// The role's name.
    role: String,
    /// `object:action` pairs, as in the policy.
    permissions: Vec<String>,
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The roles of the policy and their permissions.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn roles(&self, ctx: &Context<'_>) -> Vec<RoleDefinition> {
        let state = ctx.data_unchecked::<AppState>();
        let permissions = state.authz.permissions();
        state
            .authz
            .roles()
            .into_iter()
            .map(|role| RoleDefinition {
                permissions: permissions.iter().filter(|(r, _)| *r == role).map(|(_, p)| p.name()).collect(),
                role,
            })
            .collect()
    }
}

#[derive(Default)]
pub struct AdminMutation;

async fn set_role(ctx: &Context<'_>, input: RoleBindingInput, bind: bool) -> Result<AdminChangePayload> {
    let env = env(ctx);
    let state = ctx.data_unchecked::<AppState>();
    let change = admin::set_role(
        env.db,
        &state.authz,
        env.principal,
        StaffId::parse(&input.staff_id, "staffId")?,
        RoleName::parse(&input.role, "role")?,
        OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?,
        bind,
    )
    .await?;
    Ok(AdminChangePayload { changed: change.changed })
}

async fn set_permission(ctx: &Context<'_>, input: PermissionInput, grant: bool) -> Result<AdminChangePayload> {
    let env = env(ctx);
    let state = ctx.data_unchecked::<AppState>();
    let role = RoleName::parse(&input.role, "role")?;
    let permission = admin::parse_permission(&input.object, &input.action)?;
    let change = admin::set_permission(env.db, &state.authz, env.principal, role, permission, grant).await?;
    Ok(AdminChangePayload { changed: change.changed })
}

#[Object]
impl AdminMutation {
    /// Binds a role to a staff member at an org unit (needs
    /// `role:<role>:assign` there).
    async fn assign_role(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The binding.")] input: RoleBindingInput,
    ) -> Result<AdminChangePayload> {
        set_role(ctx, input, true).await
    }

    /// Removes a role binding (needs `role:<role>:assign` at the unit).
    async fn revoke_role(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The binding.")] input: RoleBindingInput,
    ) -> Result<AdminChangePayload> {
        set_role(ctx, input, false).await
    }

    /// Grants a permission to a role (needs `policy:edit` at the root).
    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The permission.")] input: PermissionInput,
    ) -> Result<AdminChangePayload> {
        set_permission(ctx, input, true).await
    }

    /// Revokes a permission of a role (needs `policy:edit` at the root).
    async fn revoke_permission(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The permission.")] input: PermissionInput,
    ) -> Result<AdminChangePayload> {
        set_permission(ctx, input, false).await
    }
}
