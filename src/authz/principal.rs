//! The caller of a request, resolved once: who it is, where its roles are
//! bound, and for each action the set of org units where it is allowed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use entity::staff;
use sea_orm::{ColumnTrait, Condition, sea_query::IntoCondition};

use super::{Action, OrgTree};
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

    /// `column IN (<units>)`; on an empty scope a condition that is false.
    pub fn condition(&self, column: impl ColumnTrait) -> Condition {
        column.is_in(self.units.iter().copied()).into_condition()
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub staff: staff::Model,
    pub bindings: Vec<RoleBinding>,
    pub org: Arc<OrgTree>,
    scopes: HashMap<Action, Scope>,
    /// Units whose tag-library layer the caller may read: the units where it
    /// may read the library, and their ancestors (a store sees HQ + region +
    /// store layers).
    library_layers: BTreeSet<i64>,
}

impl Principal {
    /// Builds the scopes from the bindings. `allowed(path, action)` answers
    /// whether the caller may perform `action` at the unit with that path;
    /// since a role bound at a unit applies to its whole subtree, asking at
    /// each binding's unit is enough.
    pub(super) fn resolve(
        staff: staff::Model,
        bindings: Vec<RoleBinding>,
        org: Arc<OrgTree>,
        allowed: impl Fn(&str, Action) -> bool,
    ) -> Self {
        let mut scopes: HashMap<Action, Scope> = HashMap::new();
        for action in Action::ALL {
            let scope = scopes.entry(action).or_default();
            for binding in &bindings {
                let Some(unit) = org.get(binding.org_unit_id) else { continue };
                if allowed(&unit.path, action) {
                    scope.units.extend(org.subtree(unit.id).map(|u| u.id));
                }
            }
        }
        let mut library_layers = BTreeSet::new();
        for unit in scopes[&Action::TagLibraryRead].unit_ids() {
            library_layers.extend(org.ancestors_or_self(unit).iter().map(|u| u.id));
        }
        Self { staff, bindings, org, scopes, library_layers }
    }

    pub fn staff_id(&self) -> StaffId {
        StaffId(self.staff.id)
    }

    /// Where the caller may perform `action`.
    pub fn scope(&self, action: Action) -> &Scope {
        static EMPTY: Scope = Scope { units: BTreeSet::new() };
        self.scopes.get(&action).unwrap_or(&EMPTY)
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
        if self.may(action, org_unit_id) {
            return Ok(());
        }
        let unit = self.org.get(org_unit_id).map(|u| u.name.as_str()).unwrap_or("this org unit");
        Err(AppError::Forbidden(format!("you may not {} in {unit}", action.name())))
    }

    /// True when the tag-library layer of the unit is visible to the caller.
    pub fn may_read_library_layer(&self, org_unit_id: i64) -> bool {
        self.library_layers.contains(&org_unit_id)
    }

    /// Units the caller should know exist: its scopes and their ancestors.
    pub fn visible_units(&self) -> BTreeSet<i64> {
        let mut units = self.library_layers.clone();
        for scope in self.scopes.values() {
            units.extend(scope.unit_ids());
        }
        units
    }
}
