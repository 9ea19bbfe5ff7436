//! Authorization: Casbin decides *whether* a principal may perform an action
//! on an object kind in an org unit; code decides *which rows* (the scopes
//! computed here are pushed down into every query).
//!
//! The enforcer only ever sees internal ids (`staff:<id>`), org paths and
//! the names of [`Action`]s, never user-supplied strings.

pub mod adapter;
mod org_tree;
mod principal;

use std::sync::Arc;

use anyhow::Context as _;
use casbin::{CoreApi, DefaultModel, Enforcer, MgmtApi};
use chrono::Utc;
use entity::{app_setting, casbin_rule, staff};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, PaginatorTrait, sea_query::OnConflict};
use tokio::sync::{Mutex, RwLock};

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

/// What a caller may do, as (object kind, action) pairs of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CustomerRead,
    CustomerCreate,
    CustomerUpdate,
    CustomerTagWrite,
    PersonalTagManage,
    TagLibraryRead,
    TagLibraryWrite,
    AuditLogRead,
    /// Read a customer's phone in full; without it the API masks it.
    CustomerPhoneRead,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::CustomerRead,
        Action::CustomerCreate,
        Action::CustomerUpdate,
        Action::CustomerTagWrite,
        Action::PersonalTagManage,
        Action::TagLibraryRead,
        Action::TagLibraryWrite,
        Action::AuditLogRead,
        Action::CustomerPhoneRead,
    ];

    /// `(object kind, action)` as written in `policy.csv`.
    pub fn policy_pair(self) -> (&'static str, &'static str) {
        match self {
            Action::CustomerRead => ("customer", "read"),
            Action::CustomerCreate => ("customer", "create"),
            Action::CustomerUpdate => ("customer", "update"),
            Action::CustomerTagWrite => ("customer_tag", "write"),
            Action::PersonalTagManage => ("personal_tag", "manage"),
            Action::TagLibraryRead => ("tag_library", "read"),
            Action::TagLibraryWrite => ("tag_library", "write"),
            Action::AuditLogRead => ("audit_log", "read"),
            Action::CustomerPhoneRead => ("customer.phone", "read"),
        }
    }

    /// `customer:read`: how the action is named to API clients.
    pub fn name(self) -> String {
        let (obj, act) = self.policy_pair();
        format!("{obj}:{act}")
    }
}

fn subject(staff: StaffId) -> String {
    format!("staff:{}", staff.0)
}

/// Role bindings are stored with the domain pattern `<path>*`.
fn domain_pattern(org_path: &str) -> String {
    format!("{org_path}*")
}

/// The shared enforcer. Cheap to clone.
#[derive(Clone)]
pub struct Authz {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    enforcer: RwLock<Enforcer>,
    /// The policy revision the in-memory enforcer was loaded at.
    revision: Mutex<Option<String>>,
}

impl Authz {
    /// Loads the policy from the database, first storing the default policy
    /// when the database has none.
    pub async fn load(db: &DatabaseConnection) -> anyhow::Result<Self> {
        seed_default_policy(db).await?;
        let model = DefaultModel::from_str(MODEL).await.context("parsing policies/model.conf")?;
        let mut enforcer =
            Enforcer::new(model, adapter::DbAdapter::new(db.clone())).await.context("loading the policy")?;
        enforcer.get_role_manager().write().matching_fn(None, Some(casbin::function_map::key_match));
        enforcer.build_role_links().context("building role links")?;
        let revision = read_revision(db).await?;
        Ok(Self {
            inner: Arc::new(Inner { db: db.clone(), enforcer: RwLock::new(enforcer), revision: Mutex::new(revision) }),
        })
    }

    /// Reloads the policy when another process (or instance) changed it.
    /// Called once per request, so a change applies on the next request on
    /// every instance that shares the database.
    pub async fn refresh(&self) -> AppResult<()> {
        let current = read_revision(&self.inner.db).await.map_err(AppError::internal)?;
        let mut seen = self.inner.revision.lock().await;
        if *seen != current {
            let mut enforcer = self.inner.enforcer.write().await;
            enforcer.load_policy().await.map_err(AppError::internal)?;
            enforcer.build_role_links().map_err(AppError::internal)?;
            tracing::info!(revision = ?current, "policy reloaded");
            *seen = current;
        }
        Ok(())
    }

    /// Binds `role` to `staff` at the org unit with path `org_path` (and so
    /// at everything below it). Returns false when the binding existed.
    pub async fn assign_role(&self, staff: StaffId, role: &str, org_path: &str) -> anyhow::Result<bool> {
        let added = {
            let mut enforcer = self.inner.enforcer.write().await;
            enforcer.add_grouping_policy(vec![subject(staff), role.to_owned(), domain_pattern(org_path)]).await?
        };
        if added {
            self.bump_revision().await?;
        }
        Ok(added)
    }

    /// The roles known to the policy (those that grant something).
    pub async fn roles(&self) -> Vec<String> {
        let enforcer = self.inner.enforcer.read().await;
        let mut roles = enforcer.get_all_subjects();
        roles.sort();
        roles.dedup();
        roles
    }

    /// Resolves a signed-in staff member into a [`Principal`]: role bindings
    /// and, per action, the org units where it is allowed.
    pub async fn principal(&self, staff: staff::Model, org: Arc<OrgTree>) -> Principal {
        let sub = subject(StaffId(staff.id));
        let enforcer = self.inner.enforcer.read().await;
        let bindings: Vec<RoleBinding> = enforcer
            .get_filtered_grouping_policy(0, vec![sub.clone()])
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
        let allowed = |unit_path: &str, action: Action| {
            let (obj, act) = action.policy_pair();
            enforcer.enforce((sub.as_str(), unit_path, obj, act)).unwrap_or_else(|err| {
                tracing::error!(error = %err, "policy evaluation failed; denying");
                false
            })
        };
        Principal::resolve(staff, bindings, org, allowed)
    }

    async fn bump_revision(&self) -> anyhow::Result<()> {
        let revision = uuid::Uuid::new_v4().to_string();
        write_revision(&self.inner.db, &revision).await?;
        // This instance already holds the new policy.
        *self.inner.revision.lock().await = Some(revision);
        Ok(())
    }
}

async fn read_revision(db: &DatabaseConnection) -> anyhow::Result<Option<String>> {
    Ok(app_setting::Entity::find_by_id(POLICY_REVISION_KEY.to_owned()).one(db).await?.map(|s| s.value))
}

async fn write_revision(db: &DatabaseConnection, revision: &str) -> anyhow::Result<()> {
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
