//! Authorization: Casbin decides *whether* a principal may perform an action
//! on an object kind in an org unit; code decides *which rows* (the scopes
//! computed here are pushed down into every query).
//!
//! The enforcer only ever sees internal ids (`staff:<id>`), org paths and
//! the names of [`Action`]s, never user-supplied strings.

pub mod adapter;
mod fields;
mod org_tree;
mod principal;
mod table;
pub mod visibility;

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use casbin::{CoreApi, DefaultModel, Enforcer};
use chrono::Utc;
use entity::{app_setting, casbin_rule, staff};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    sea_query::OnConflict,
};
use tokio::sync::Mutex;

pub use fields::{ClassAccess, CustomerField, FIELD_RULES, FieldAccess, FieldRule};
pub use org_tree::OrgTree;
pub use principal::{Principal, RoleBinding, Scope};

use crate::domain::StaffId;
use crate::error::{AppError, AppResult};

/// The Casbin model, compiled in so the binary is self-contained.
pub const MODEL: &str = include_str!("../../policies/model.conf");
/// The default policy, loaded into an empty database on first start.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/policy.csv");

/// Setting key whose value changes whenever the stored policy changes, so
/// that every instance sharing the database reloads on its next request.
const POLICY_REVISION_KEY: &str = "policy_revision";

/// Fixed operations, as (object, action) pairs of the policy. Field and
/// tag-class permissions are built by [`Permission::field`] and
/// [`Permission::tag_class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CustomerRead,
    CustomerCreate,
    CustomerUpdate,
    CustomerTagWrite,
    PersonalTagManage,
    PersonalTagReadAll,
    TagLibraryRead,
    TagLibraryWrite,
    TagLibraryPropose,
    ChangeRequestApprove,
    CustomerTagBulk,
    TagGroupLock,
    AuditLogRead,
    PolicyEdit,
    SegmentRead,
    SegmentWrite,
    StaffRead,
    StaffManage,
    CustomerEventWrite,
    RuleRead,
    RuleWrite,
    RulePropose,
    ReportRead,
    ReportConfigure,
    AlertManage,
    CustomerMerge,
}

impl Action {
    pub const ALL: [Action; 26] = [
        Action::CustomerRead,
        Action::CustomerCreate,
        Action::CustomerUpdate,
        Action::CustomerTagWrite,
        Action::PersonalTagManage,
        Action::PersonalTagReadAll,
        Action::TagLibraryRead,
        Action::TagLibraryWrite,
        Action::TagLibraryPropose,
        Action::ChangeRequestApprove,
        Action::CustomerTagBulk,
        Action::TagGroupLock,
        Action::AuditLogRead,
        Action::PolicyEdit,
        Action::SegmentRead,
        Action::SegmentWrite,
        Action::StaffRead,
        Action::StaffManage,
        Action::CustomerEventWrite,
        Action::RuleRead,
        Action::RuleWrite,
        Action::RulePropose,
        Action::ReportRead,
        Action::ReportConfigure,
        Action::AlertManage,
        Action::CustomerMerge,
    ];

    /// `(object, action)` as written in `policy.csv`.
    pub fn policy_pair(self) -> (&'static str, &'static str) {
        match self {
            Action::CustomerRead => ("customer", "read"),
            Action::CustomerCreate => ("customer", "create"),
            Action::CustomerUpdate => ("customer", "update"),
            Action::CustomerTagWrite => ("customer_tag", "write"),
            Action::PersonalTagManage => ("personal_tag", "manage"),
            Action::PersonalTagReadAll => ("personal_tag", "read_all"),
            Action::TagLibraryRead => ("tag_library", "read"),
            Action::TagLibraryWrite => ("tag_library", "write"),
            Action::TagLibraryPropose => ("tag_library", "propose"),
            Action::ChangeRequestApprove => ("change_request", "approve"),
            Action::CustomerTagBulk => ("customer_tag", "bulk"),
            Action::TagGroupLock => ("tag_group", "lock"),
            Action::AuditLogRead => ("audit_log", "read"),
            Action::PolicyEdit => ("policy", "edit"),
            Action::SegmentRead => ("segment", "read"),
            Action::SegmentWrite => ("segment", "write"),
            Action::StaffRead => ("staff", "read"),
            Action::StaffManage => ("staff", "manage"),
            Action::CustomerEventWrite => ("customer_event", "write"),
            Action::RuleRead => ("rule", "read"),
            Action::RuleWrite => ("rule", "write"),
            Action::RulePropose => ("rule", "propose"),
            Action::ReportRead => ("report", "read"),
            Action::ReportConfigure => ("report", "configure"),
            Action::AlertManage => ("alert", "manage"),
            Action::CustomerMerge => ("customer", "merge"),
        }
    }

    /// `customer:read`: how the action is named to API clients.
    pub fn name(self) -> String {
        Permission::from(self).name()
    }
}

/// One thing a policy can grant: an object (or, in the policy, a pattern
/// of objects) and an action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    pub object: String,
    pub action: String,
}

impl Permission {
    pub fn new(object: impl Into<String>, action: impl Into<String>) -> Self {
        Self { object: object.into(), action: action.into() }
    }

    /// Reading a customer field in full (`read`) or masked (`read_masked`).
    pub fn field(field: CustomerField, action: &str) -> Self {
        Self::new(field.object(), action)
    }

    /// Seeing (`read`) or using (`use`) tags of a visibility class.
    pub fn tag_class(class: &str, access: ClassAccess) -> Self {
        Self::new(format!("tag_class:{class}"), access.as_str())
    }

    /// Binding a role to staff.
    pub fn assign_role(role: &str) -> Self {
        Self::new(format!("role:{role}"), "assign")
    }

    /// `object:action`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.object, self.action)
    }
}

impl From<Action> for Permission {
    fn from(action: Action) -> Self {
        let (object, act) = action.policy_pair();
        Self::new(object, act)
    }
}

fn subject(staff: StaffId) -> String {
    format!("staff:{}", staff.0)
}

/// Role bindings are stored with the domain pattern `<path>*`.
pub(crate) fn domain_pattern(org_path: &str) -> String {
    format!("{org_path}*")
}

/// The shared policy. Cheap to clone.
///
/// The enforcer is immutable once built: a policy change writes the
/// `casbin_rule` rows (in the caller's transaction, with its audit row),
/// bumps the revision, and every instance then builds a fresh enforcer
/// from the database and swaps it in. A request keeps the snapshot it
/// started with, so it sees one consistent policy.
#[derive(Clone)]
pub struct Authz {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    enforcer: RwLock<Arc<Enforcer>>,
    /// The policy revision the current enforcer was built at.
    revision: Mutex<Option<String>>,
}

async fn build_enforcer(db: &DatabaseConnection) -> anyhow::Result<Enforcer> {
    let model = DefaultModel::from_str(MODEL).await.context("parsing policies/model.conf")?;
    let mut enforcer = Enforcer::new(model, adapter::DbAdapter::new(db.clone())).await.context("loading the policy")?;
    enforcer.get_role_manager().write().matching_fn(None, Some(casbin::function_map::key_match));
    enforcer.build_role_links().context("building role links")?;
    Ok(enforcer)
}

impl Authz {
    /// Loads the policy from the database, first storing the default policy
    /// when the database has none.
    pub async fn load(db: &DatabaseConnection) -> anyhow::Result<Self> {
        seed_default_policy(db).await?;
        let revision = read_revision(db).await?;
        let enforcer = build_enforcer(db).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                enforcer: RwLock::new(Arc::new(enforcer)),
                revision: Mutex::new(revision),
            }),
        })
    }

    /// Reloads the policy when it changed (here or on another instance).
    /// Called once per request, so a change applies on the next request on
    /// every instance that shares the database.
    pub async fn refresh(&self) -> AppResult<()> {
        let current = read_revision(&self.inner.db).await.map_err(AppError::internal)?;
        let mut seen = self.inner.revision.lock().await;
        if *seen != current {
            let enforcer = build_enforcer(&self.inner.db).await.map_err(AppError::internal)?;
            *self.inner.enforcer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(enforcer);
            tracing::info!(revision = ?current, "policy reloaded");
            *seen = current;
        }
        Ok(())
    }

    fn snapshot(&self) -> Arc<Enforcer> {
        self.inner.enforcer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Binds `role` to `staff` at the org unit with path `org_path` (and so
    /// at everything below it), with no questions asked: for the seed and
    /// for services that checked the caller's right first. Returns false
    /// when the binding existed.
    pub async fn assign_role(&self, staff: StaffId, role: &str, org_path: &str) -> anyhow::Result<bool> {
        let added =
            store_rule(&self.inner.db, "g", &[subject(staff), role.to_owned(), domain_pattern(org_path)]).await?;
        if added {
            self.changed(&self.inner.db).await?;
        }
        Ok(added)
    }

    /// Marks the stored policy as changed (inside the writer's transaction
    /// when `conn` is one); every instance, this one included, reloads on
    /// its next request.
    pub async fn changed(&self, conn: &impl ConnectionTrait) -> anyhow::Result<()> {
        write_revision(conn, &uuid::Uuid::new_v4().to_string()).await
    }

    /// Every role the policy grants something to, in policy order.
    pub fn roles(&self) -> Vec<String> {
        roles_in_order(&self.permissions())
    }

    /// Every `p` rule: (role, object, action).
    pub fn permissions(&self) -> Vec<(String, Permission)> {
        let enforcer = self.snapshot();
        casbin::MgmtApi::get_policy(enforcer.as_ref())
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone(), Permission::new(r.get(1)?.clone(), r.get(2)?.clone()))))
            .collect()
    }

    /// The permission matrix of the stored policy, as Markdown, for the
    /// given visibility classes and those the policy names.
    pub fn table(&self, classes: &[String]) -> String {
        let classes = with_named_classes(classes, &self.permissions());
        table::render(&self.snapshot(), &self.roles(), &classes)
    }

    /// Resolves a signed-in staff member into a [`Principal`] holding this
    /// moment's policy.
    pub fn principal(&self, staff: staff::Model, org: Arc<OrgTree>) -> Principal {
        let enforcer = self.snapshot();
        let sub = subject(StaffId(staff.id));
        let bindings: Vec<RoleBinding> = casbin::MgmtApi::get_filtered_grouping_policy(enforcer.as_ref(), 0, vec![sub])
            .into_iter()
            .filter_map(|rule| {
                let path = rule.get(2)?.strip_suffix('*')?;
                match org.by_path(path) {
                    Some(unit) => Some(RoleBinding { role: rule[1].clone(), org_unit_id: unit.id }),
                    None => {
                        tracing::warn!(staff = staff.id, domain = %rule[2], "role binding names an unknown org unit");
                        None
                    }
                }
            })
            .collect();
        Principal::new(staff, bindings, org, enforcer)
    }
}

/// Inserts one policy row unless it exists. Returns whether it was added.
pub(crate) async fn store_rule(conn: &impl ConnectionTrait, ptype: &str, values: &[String]) -> anyhow::Result<bool> {
    let exists = casbin_rule::Entity::find().filter(rule_filter(ptype, values)).count(conn).await? > 0;
    if !exists {
        casbin_rule::Entity::insert(adapter::to_active(ptype, values)).exec(conn).await?;
    }
    Ok(!exists)
}

/// The roles that stored `p` rules grant `permission` to, as `conn` sees
/// them (inside a transaction: that transaction's view, not the cached
/// policy).
pub(crate) async fn roles_granting(
    conn: &impl ConnectionTrait,
    permission: &Permission,
) -> anyhow::Result<Vec<String>> {
    let rules = casbin_rule::Entity::find()
        .filter(casbin_rule::Column::Ptype.eq("p"))
        .filter(casbin_rule::Column::V1.eq(permission.object.as_str()))
        .filter(casbin_rule::Column::V2.eq(permission.action.as_str()))
        .all(conn)
        .await?;
    Ok(rules.into_iter().map(|r| r.v0).collect())
}

/// Deletes one policy row. Returns whether it existed.
pub(crate) async fn delete_rule(conn: &impl ConnectionTrait, ptype: &str, values: &[String]) -> anyhow::Result<bool> {
    let removed = casbin_rule::Entity::delete_many().filter(rule_filter(ptype, values)).exec(conn).await?;
    Ok(removed.rows_affected > 0)
}

fn rule_filter(ptype: &str, values: &[String]) -> sea_orm::Condition {
    adapter::rule_condition(ptype, values)
}

/// The subject a staff member has in `g` rules.
pub(crate) fn staff_subject(staff: StaffId) -> String {
    subject(staff)
}

async fn read_revision(db: &impl ConnectionTrait) -> anyhow::Result<Option<String>> {
    Ok(app_setting::Entity::find_by_id(POLICY_REVISION_KEY.to_owned()).one(db).await?.map(|s| s.value))
}

async fn write_revision(db: &impl ConnectionTrait, revision: &str) -> anyhow::Result<()> {
    app_setting::Entity::insert(app_setting::ActiveModel {
        key: Set(POLICY_REVISION_KEY.to_owned()),
        value: Set(revision.to_owned()),
        updated_at: Set(Utc::now()),
    })
    .on_conflict(
        OnConflict::column(app_setting::Column::Key)
            .update_columns([app_setting::Column::Value, app_setting::Column::UpdatedAt])
            .to_owned(),
    )
    .exec(db)
    .await?;
    Ok(())
}

/// Parses `policy.csv` lines (`p, role, obj, act` / `g, sub, role, dom`).
pub fn parse_policy_csv(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split(',').map(|s| s.trim().to_owned());
            let ptype = parts.next()?;
            Some((ptype, parts.collect()))
        })
        .collect()
}

async fn seed_default_policy(db: &DatabaseConnection) -> anyhow::Result<()> {
    if casbin_rule::Entity::find().count(db).await? > 0 {
        return Ok(());
    }
    let rows: Vec<casbin_rule::ActiveModel> = parse_policy_csv(DEFAULT_POLICY)
        .into_iter()
        .map(|(ptype, values)| adapter::to_active(&ptype, &values))
        .collect();
    // Two instances starting on an empty database at once: the unique index
    // makes the second insert fail; what it wanted is there already.
    let inserted = casbin_rule::Entity::insert_many(rows).on_conflict_do_nothing().exec(db).await;
    if let Err(err) = inserted
        && !matches!(err, sea_orm::DbErr::RecordNotInserted)
    {
        return Err(err.into());
    }
    write_revision(db, &uuid::Uuid::new_v4().to_string()).await?;
    tracing::info!("default policy stored");
    Ok(())
}

fn roles_in_order(rules: &[(String, Permission)]) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for (role, _) in rules {
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    roles
}

/// `classes` and the classes the rules name, sorted, without repeats.
fn with_named_classes(classes: &[String], rules: &[(String, Permission)]) -> Vec<String> {
    let mut all: Vec<String> = classes.to_vec();
    all.extend(
        rules.iter().filter_map(|(_, p)| p.object.strip_prefix("tag_class:")).filter(|c| *c != "*").map(str::to_owned),
    );
    all.sort();
    all.dedup();
    all
}

/// The permission matrix of the default policy, with the given classes.
///
/// # Errors
/// A broken `model.conf` or `policy.csv`.
pub async fn default_policy_table(classes: &[String]) -> anyhow::Result<String> {
    let model = DefaultModel::from_str(MODEL).await?;
    let mut enforcer = Enforcer::new(model, casbin::MemoryAdapter::default()).await?;
    let rules: Vec<Vec<String>> =
        parse_policy_csv(DEFAULT_POLICY).into_iter().filter(|(p, _)| p == "p").map(|(_, v)| v).collect();
    let named: Vec<(String, Permission)> =
        rules.iter().map(|r| (r[0].clone(), Permission::new(r[1].clone(), r[2].clone()))).collect();
    casbin::MgmtApi::add_policies(&mut enforcer, rules).await?;
    Ok(table::render(&enforcer, &roles_in_order(&named), &with_named_classes(classes, &named)))
}

#[cfg(test)]
mod tests {
    use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};

    use super::{DEFAULT_POLICY, MODEL, parse_policy_csv};

    async fn enforcer() -> Enforcer {
        let model = DefaultModel::from_str(MODEL).await.unwrap();
        let mut e = Enforcer::new(model, MemoryAdapter::default()).await.unwrap();
        e.get_role_manager().write().matching_fn(None, Some(casbin::function_map::key_match));
        let rules: Vec<Vec<String>> =
            parse_policy_csv(DEFAULT_POLICY).into_iter().filter(|(p, _)| p == "p").map(|(_, v)| v).collect();
        e.add_policies(rules).await.unwrap();
        e.add_grouping_policy(vec!["staff:1".into(), "store_manager".into(), "hq/south/sz01/*".into()]).await.unwrap();
        e.add_grouping_policy(vec!["staff:2".into(), "region_manager".into(), "hq/south/*".into()]).await.unwrap();
        e
    }

    #[tokio::test]
    async fn a_role_bound_at_a_unit_applies_to_its_subtree_only() {
        let e = enforcer().await;
        let may = |sub: &str, dom: &str| e.enforce((sub, dom, "customer", "read")).unwrap();
        assert!(may("staff:1", "hq/south/sz01/"));
        assert!(may("staff:1", "hq/south/sz01/counter/"), "depth may grow");
        assert!(!may("staff:1", "hq/south/"), "not the parent");
        assert!(!may("staff:1", "hq/south/gz01/"), "not a sibling");
        assert!(!may("staff:1", "hq/south/sz012/"), "not a unit whose code merely starts alike");
        assert!(may("staff:2", "hq/south/"));
        assert!(may("staff:2", "hq/south/gz01/"));
        assert!(!may("staff:2", "hq/"));
        assert!(!may("staff:2", "hq/north/bj01/"));
    }

    #[tokio::test]
    async fn roles_grant_only_the_listed_actions() {
        let e = enforcer().await;
        assert!(e.enforce(("staff:1", "hq/south/sz01/", "tag_library", "write")).unwrap());
        assert!(!e.enforce(("staff:1", "hq/south/sz01/", "audit_log", "read")).unwrap());
        assert!(!e.enforce(("staff:3", "hq/south/sz01/", "customer", "read")).unwrap(), "no binding, no access");
    }
}
