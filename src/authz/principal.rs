//! The caller of a request, resolved once: who it is, where its roles are
//! bound, and, asked lazily and remembered for the request, the set of org
//! units where each permission holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use casbin::{CoreApi, Enforcer};
use entity::staff;
use sea_orm::{ColumnTrait, Condition, sea_query::IntoCondition};

use super::{Action, ClassAccess, CustomerField, FieldAccess, OrgTree, Permission};
use crate::domain::StaffId;
use crate::error::{AppError, AppResult};

/// A role bound to the caller at an org unit (and so at its subtree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleBinding {
    pub role: String,
    pub org_unit_id: i64,
}

/// A set of org units: the value that every repository read ANDs into its
/// query. An empty scope matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    units: BTreeSet<i64>,
}

impl Scope {
    pub fn contains(&self, org_unit_id: i64) -> bool {
        self.units.contains(&org_unit_id)
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn unit_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.units.iter().copied()
    }

    /// True when every unit of `other` is in this scope.
    pub fn covers(&self, other: &Scope) -> bool {
        other.units.is_subset(&self.units)
    }

    pub fn intersect(&self, other: &Scope) -> Scope {
        Scope { units: self.units.intersection(&other.units).copied().collect() }
    }

    /// `column IN (<units>)`; on an empty scope a condition that is false.
    pub fn condition(&self, column: impl ColumnTrait) -> Condition {
        column.is_in(self.units.iter().copied()).into_condition()
    }
}

impl FromIterator<i64> for Scope {
    fn from_iter<T: IntoIterator<Item = i64>>(iter: T) -> Self {
        Scope { units: iter.into_iter().collect() }
    }
}

pub struct Principal {
    pub staff: staff::Model,
    pub bindings: Vec<RoleBinding>,
    pub org: Arc<OrgTree>,
    /// The policy as it was when the request started.
    enforcer: Arc<Enforcer>,
    scopes: Mutex<HashMap<Permission, Arc<Scope>>>,
}

impl Principal {
    pub(super) fn new(
        staff: staff::Model,
        bindings: Vec<RoleBinding>,
        org: Arc<OrgTree>,
        enforcer: Arc<Enforcer>,
    ) -> Self {
        Self { staff, bindings, org, enforcer, scopes: Mutex::new(HashMap::new()) }
    }

    pub fn staff_id(&self) -> StaffId {
        StaffId(self.staff.id)
    }

    /// The units where `permission` holds. A role bound at a unit holds
    /// everywhere below it, so asking at each binding's unit is enough.
    pub fn scope_of(&self, permission: &Permission) -> Arc<Scope> {
        if let Some(scope) = self.scopes.lock().unwrap_or_else(|e| e.into_inner()).get(permission) {
            return scope.clone();
        }
        let sub = format!("staff:{}", self.staff.id);
        let mut units = BTreeSet::new();
        for binding in &self.bindings {
            let Some(unit) = self.org.get(binding.org_unit_id) else { continue };
            let allowed = self
                .enforcer
                .enforce((sub.as_str(), unit.path.as_str(), permission.object.as_str(), permission.action.as_str()))
                .unwrap_or_else(|err| {
                    tracing::error!(error = %err, "policy evaluation failed; denying");
                    false
                });
            if allowed {
                units.extend(self.org.subtree(unit.id).map(|u| u.id));
            }
        }
        let scope = Arc::new(Scope { units });
        self.scopes.lock().unwrap_or_else(|e| e.into_inner()).insert(permission.clone(), scope.clone());
        scope
    }

    /// Where the caller may perform `action`.
    pub fn scope(&self, action: Action) -> Arc<Scope> {
        self.scope_of(&action.into())
    }

    pub fn may(&self, action: Action, org_unit_id: i64) -> bool {
        self.scope(action).contains(org_unit_id)
    }

    /// True when the caller may perform `action` somewhere.
    pub fn may_anywhere(&self, action: Action) -> bool {
        !self.scope(action).is_empty()
    }

    /// `FORBIDDEN` unless the caller may perform `action` at the unit.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] naming the action and the unit.
    pub fn require(&self, action: Action, org_unit_id: i64) -> AppResult<()> {
        self.require_permission(&action.into(), org_unit_id)
    }

    /// As [`require`](Self::require), for any permission.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] naming the permission and the unit.
    pub fn require_permission(&self, permission: &Permission, org_unit_id: i64) -> AppResult<()> {
        if self.scope_of(permission).contains(org_unit_id) {
            return Ok(());
        }
        let unit = self.org.get(org_unit_id).map(|u| u.name.as_str()).unwrap_or("this org unit");
        Err(AppError::Forbidden(format!("you may not {} in {unit}", permission.name())))
    }

    /// How the caller may read `field` of a customer of the unit.
    pub fn field_access(&self, field: CustomerField, org_unit_id: i64) -> FieldAccess {
        if self.scope_of(&Permission::field(field, "read")).contains(org_unit_id) {
            FieldAccess::Full
        } else if field.maskable() && self.scope_of(&Permission::field(field, "read_masked")).contains(org_unit_id) {
            FieldAccess::Masked
        } else {
            FieldAccess::Hidden
        }
    }

    /// Units whose customers' `field` the caller may read in full: what a
    /// filter or an ordering on the field may cover.
    pub fn field_scope(&self, field: CustomerField) -> Arc<Scope> {
        self.scope_of(&Permission::field(field, "read"))
    }

    /// Units where the caller may see (or use) tags of a visibility class.
    pub fn class_scope(&self, class: &str, access: ClassAccess) -> Arc<Scope> {
        self.scope_of(&Permission::tag_class(class, access))
    }

    /// True when the caller sees other people's personal tags.
    pub fn reads_all_personal_tags(&self) -> bool {
        self.may_anywhere(Action::PersonalTagReadAll)
    }

    /// True when the tag-library layer of the unit is visible to the caller:
    /// the unit is where it may read the library, or above such a unit.
    pub fn may_read_library_layer(&self, org_unit_id: i64) -> bool {
        let Some(layer) = self.org.get(org_unit_id) else { return false };
        self.scope(Action::TagLibraryRead)
            .unit_ids()
            .filter_map(|u| self.org.get(u))
            .any(|u| u.path.starts_with(&layer.path))
    }

    /// Units the caller should know exist: where a role is bound, what is
    /// below, and the ancestors (a store sees HQ + region + store).
    pub fn visible_units(&self) -> BTreeSet<i64> {
        let mut units = BTreeSet::new();
        for binding in &self.bindings {
            units.extend(self.org.subtree(binding.org_unit_id).map(|u| u.id));
            units.extend(self.org.ancestors_or_self(binding.org_unit_id).iter().map(|u| u.id));
        }
        units
    }
}
