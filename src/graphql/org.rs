//! Org units, staff and `me`.

use async_graphql::{Context, Enum, ID, Object, Result, SimpleObject};
use entity::{enums::OrgUnitKind, org_unit, staff};

use super::env;
use super::loaders::StaffById;
use crate::auth;
use crate::authz::{Action, ClassAccess, FIELD_RULES, FieldAccess, Permission};
use crate::domain::{OrgUnitId, StaffId};
use crate::error::AppError;
use crate::service::{staff as staff_service, tag_library};
use crate::state::AppState;

/// A node of the organisation tree (HQ → region → store).
pub struct OrgUnit(pub org_unit::Model);

/// A node of the organisation tree (HQ → region → store).
#[Object]
impl OrgUnit {
    /// Opaque global id (`node(id)` fetches the unit again).
    pub async fn id(&self) -> ID {
        OrgUnitId(self.0.id).into()
    }
    /// Short code, unique among its siblings (`sz01`).
    async fn code(&self) -> &str {
        &self.0.code
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// HQ, region or store.
    async fn kind(&self) -> OrgUnitKind {
        self.0.kind
    }
    /// Codes from the root down, each followed by `/` (`hq/south/sz01/`).
    async fn path(&self) -> &str {
        &self.0.path
    }
    /// The unit above; none for the root.
    async fn parent(&self, ctx: &Context<'_>) -> Option<OrgUnit> {
        let env = env(ctx);
        self.0.parent_id.and_then(|p| env.principal.org.get(p)).cloned().map(OrgUnit)
    }
}

/// Resolves an org unit the caller knows of.
pub(crate) fn org_unit(ctx: &Context<'_>, id: i64) -> Result<OrgUnit> {
    let env = env(ctx);
    env.principal.org.get(id).cloned().map(OrgUnit).ok_or_else(|| AppError::not_found("org unit", id).into())
}

/// A staff member.
pub struct Staff(pub staff::Model);

/// A staff member.
#[Object]
impl Staff {
    /// Opaque global id (`node(id)` fetches the staff member again).
    pub async fn id(&self) -> ID {
        StaffId(self.0.id).into()
    }
    /// Sign-in name.
    async fn login(&self) -> &str {
        &self.0.login
    }
    /// Name shown to others.
    async fn display_name(&self) -> &str {
        &self.0.display_name
    }
    /// False once the staff member has left (it can no longer sign in).
    async fn active(&self) -> bool {
        self.0.active
    }
    /// The unit the staff member works in.
    async fn home_org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.home_org_unit_id)
    }
    /// Work phone; `null` unless the caller is the member or holds
    /// `staff:read` at its home unit.
    async fn phone(&self, ctx: &Context<'_>) -> Option<&str> {
        self.readable_by(ctx, Action::StaffRead).then_some(self.0.phone.as_deref()).flatten()
    }
    /// Work e-mail; visible as `phone`.
    async fn email(&self, ctx: &Context<'_>) -> Option<&str> {
        self.readable_by(ctx, Action::StaffRead).then_some(self.0.email.as_deref()).flatten()
    }
    /// Sign-in identities (`oidc_sub`, `wecom_userid`); empty unless the
    /// caller is the member or holds `staff:manage` at its home unit.
    async fn identities(&self, ctx: &Context<'_>) -> Result<Vec<StaffIdentity>> {
        if !self.readable_by(ctx, Action::StaffManage) {
            return Ok(Vec::new());
        }
        let rows = staff_service::identities_of(env(ctx).db, self.0.id).await?;
        Ok(rows.into_iter().map(|r| StaffIdentity { kind: r.kind, value: r.value }).collect())
    }
}

impl Staff {
    fn readable_by(&self, ctx: &Context<'_>, action: Action) -> bool {
        let p = env(ctx).principal;
        p.staff.id == self.0.id || p.may(action, self.0.home_org_unit_id)
    }
}

/// How an identity provider's user maps to a staff member.
#[derive(SimpleObject)]
pub struct StaffIdentity {
    /// `oidc_sub` or `wecom_userid`.
    kind: String,
    /// The provider's value for this person (subject or WeCom user id).
    value: String,
}

/// How a caller signed in.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum SignInMethod {
    /// A development token printed by `tagbase token`.
    DevToken,
    /// A token of the OIDC provider, or a session opened with one.
    Oidc,
    /// A session opened by WeCom sign-in.
    #[graphql(name = "WECOM")]
    WeCom,
}

/// The sign-in behind the current request.
#[derive(SimpleObject)]
pub struct SignIn {
    /// How the caller signed in.
    method: SignInMethod,
    /// The tagbase session of the access token, if it has one.
    session_id: Option<ID>,
    /// When the bearer token expires.
    expires_at: Option<super::scalars::DateTime>,
}

/// Loads a staff member by id through the request's loader.
pub(crate) async fn staff_by_id(ctx: &Context<'_>, id: Option<i64>) -> Result<Option<Staff>> {
    match id {
        None => Ok(None),
        Some(id) => Ok(env(ctx).loaders.load_one(StaffById(id)).await?.map(Staff)),
    }
}

/// A role bound to the caller at an org unit (and its subtree).
#[derive(SimpleObject)]
pub struct RoleBinding {
    /// The role's name.
    role: String,
    /// Where it holds (and below).
    org_unit: OrgUnit,
}

/// What the caller may do at one org unit, so front ends can hide what
/// would be refused instead of guessing.
#[derive(SimpleObject)]
pub struct UnitPermissions {
    /// The unit.
    org_unit: OrgUnit,
    /// `customer:read`, `customer_tag:write`, … as in the policy.
    actions: Vec<String>,
    /// Guarded customer fields the caller may read here, and how.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    fields: Vec<FieldPermission>,
    /// Tag visibility classes the caller may see or use here.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    tag_classes: Vec<TagClassPermission>,
    /// Roles the caller may bind to staff here.
    assignable_roles: Vec<String>,
}

/// How a guarded field reads.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum FieldReadAccess {
    /// The whole value.
    Full,
    /// A masked value (`138****5678`).
    Masked,
}

/// How the caller reads one guarded customer field.
#[derive(SimpleObject)]
pub struct FieldPermission {
    /// The `Customer` field (`phone`, `totalSpend`, …).
    field: String,
    /// Whole or masked.
    access: FieldReadAccess,
}

/// What the caller may do with tags of one visibility class.
#[derive(SimpleObject)]
pub struct TagClassPermission {
    /// The visibility class (`basic`, `value`, …).
    class: String,
    /// May see tags of the class on customers.
    read: bool,
    /// May put tags of the class on customers and take them off.
    #[graphql(name = "use")]
    usable: bool,
}

/// The signed-in staff member.
pub struct Me;

/// The signed-in staff member, its roles and what it may do.
#[Object]
impl Me {
    /// The staff member.
    async fn staff(&self, ctx: &Context<'_>) -> Staff {
        Staff(env(ctx).principal.staff.clone())
    }

    /// How the caller signed in: method, session, expiry.
    async fn sign_in(&self, ctx: &Context<'_>) -> Option<SignIn> {
        let sign_in = ctx.data_opt::<auth::SignIn>()?;
        Some(SignIn {
            method: match sign_in.method {
                auth::SignInMethod::DevToken => SignInMethod::DevToken,
                auth::SignInMethod::Oidc => SignInMethod::Oidc,
                auth::SignInMethod::WeCom => SignInMethod::WeCom,
            },
            session_id: sign_in.session_id.clone().map(ID),
            expires_at: sign_in.expires_at.map(Into::into),
        })
    }

    /// The roles bound to it, and where.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn roles(&self, ctx: &Context<'_>) -> Vec<RoleBinding> {
        let p = env(ctx).principal;
        p.bindings
            .iter()
            .filter_map(|b| {
                let unit = p.org.get(b.org_unit_id)?.clone();
                Some(RoleBinding { role: b.role.clone(), org_unit: OrgUnit(unit) })
            })
            .collect()
    }

    /// Per org unit where the caller may do anything: the actions allowed,
    /// the guarded fields it reads, the tag classes it sees and uses.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn permissions(&self, ctx: &Context<'_>) -> Result<Vec<UnitPermissions>> {
        let env = env(ctx);
        let p = env.principal;
        let classes = tag_library::visibility_classes(env.db).await?;
        let roles = ctx.data_unchecked::<AppState>().authz.roles();
        Ok(p.org
            .all()
            .iter()
            .filter_map(|unit| {
                let actions: Vec<String> =
                    Action::ALL.iter().filter(|a| p.may(**a, unit.id)).map(|a| a.name()).collect();
                if actions.is_empty() {
                    return None;
                }
                let fields = FIELD_RULES
                    .iter()
                    .filter_map(|rule| {
                        let access = match p.field_access(rule.field, unit.id) {
                            FieldAccess::Full => FieldReadAccess::Full,
                            FieldAccess::Masked => FieldReadAccess::Masked,
                            FieldAccess::Hidden => return None,
                        };
                        Some(FieldPermission { field: rule.api.to_owned(), access })
                    })
                    .collect();
                let tag_classes = classes
                    .iter()
                    .map(|class| TagClassPermission {
                        class: class.clone(),
                        read: p.class_scope(class, ClassAccess::Read).contains(unit.id),
                        usable: p.class_scope(class, ClassAccess::Use).contains(unit.id),
                    })
                    .filter(|c| c.read || c.usable)
                    .collect();
                let assignable_roles = roles
                    .iter()
                    .filter(|r| p.scope_of(&Permission::assign_role(r)).contains(unit.id))
                    .cloned()
                    .collect();
                Some(UnitPermissions {
                    org_unit: OrgUnit(unit.clone()),
                    actions,
                    fields,
                    tag_classes,
                    assignable_roles,
                })
            })
            .collect())
    }
}

#[derive(Default)]
pub struct OrgQuery;

#[Object]
impl OrgQuery {
    /// The signed-in staff member, its roles and what it may do.
    async fn me(&self) -> Me {
        Me
    }

    /// The org units the caller can see: those in its scopes and their
    /// ancestors, parents first.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn org_units(&self, ctx: &Context<'_>) -> Vec<OrgUnit> {
        let p = env(ctx).principal;
        let visible = p.visible_units();
        p.org.all().iter().filter(|u| visible.contains(&u.id)).cloned().map(OrgUnit).collect()
    }
}
