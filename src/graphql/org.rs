//! Org units, staff and `me`.

use async_graphql::{Context, Enum, ID, Object, Result, SimpleObject};
use entity::{enums::OrgUnitKind, org_unit, staff};

use super::env;
use super::loaders::StaffById;
use crate::auth;
use crate::authz::{Action, ClassAccess, FIELD_RULES, FieldAccess, Permission};
use crate::error::AppError;
use crate::service::{staff as staff_service, tag_library};
use crate::state::AppState;

/// A node of the organisation tree (HQ → region → store).
pub struct OrgUnit(pub org_unit::Model);

#[Object]
impl OrgUnit {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> OrgUnitKind {
        self.0.kind
    }
    /// Codes from the root down, each followed by `/` (`hq/south/sz01/`).
    async fn path(&self) -> &str {
        &self.0.path
    }
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

#[Object]
impl Staff {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn login(&self) -> &str {
        &self.0.login
    }
    async fn display_name(&self) -> &str {
        &self.0.display_name
    }
    async fn active(&self) -> bool {
        self.0.active
    }
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
    method: SignInMethod,
    /// The tagbase session of the access token, if it has one.
    session_id: Option<ID>,
    /// When the bearer token expires.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
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
    role: String,
    org_unit: OrgUnit,
}

/// What the caller may do at one org unit, so front ends can hide what
/// would be refused instead of guessing.
#[derive(SimpleObject)]
pub struct UnitPermissions {
    org_unit: OrgUnit,
    /// `customer:read`, `customer_tag:write`, … as in the policy.
    actions: Vec<String>,
    /// Guarded customer fields the caller may read here, and how.
    fields: Vec<FieldPermission>,
    /// Tag visibility classes the caller may see or use here.
    tag_classes: Vec<TagClassPermission>,
    /// Roles the caller may bind to staff here.
    assignable_roles: Vec<String>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum FieldReadAccess {
    Full,
    Masked,
}

#[derive(SimpleObject)]
pub struct FieldPermission {
    /// The `Customer` field (`phone`, `totalSpend`, …).
    field: String,
    access: FieldReadAccess,
}

#[derive(SimpleObject)]
pub struct TagClassPermission {
    class: String,
    read: bool,
    /// May put tags of the class on customers and take them off.
    #[graphql(name = "use")]
    usable: bool,
}

/// The signed-in staff member.
pub struct Me;

#[Object]
impl Me {
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
            expires_at: sign_in.expires_at,
        })
    }

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
                    .filter_map(|(name, rule)| {
                        let access = match p.field_access(*rule, unit.id) {
                            FieldAccess::Full => FieldReadAccess::Full,
                            FieldAccess::Masked => FieldReadAccess::Masked,
                            FieldAccess::Hidden => return None,
                        };
                        Some(FieldPermission { field: (*name).to_owned(), access })
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
    async fn org_units(&self, ctx: &Context<'_>) -> Vec<OrgUnit> {
        let p = env(ctx).principal;
        let visible = p.visible_units();
        p.org.all().iter().filter(|u| visible.contains(&u.id)).cloned().map(OrgUnit).collect()
    }
}
