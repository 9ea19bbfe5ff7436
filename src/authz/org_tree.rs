//! A snapshot of the organisation tree, loaded once per request.
//!
//! The tree is small (thousands of units at most), so subtree and ancestor
//! questions are answered in memory from the materialised paths instead of
//! with recursive SQL.

use std::collections::HashMap;

use entity::org_unit;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QueryOrder};

#[derive(Debug, Clone)]
pub struct OrgTree {
    units: Vec<org_unit::Model>,
    by_id: HashMap<i64, usize>,
}

impl OrgTree {
    pub async fn load(db: &impl ConnectionTrait) -> Result<Self, DbErr> {
        let units = org_unit::Entity::find().order_by_asc(org_unit::Column::Path).all(db).await?;
        Ok(Self::new(units))
    }

    pub fn new(units: Vec<org_unit::Model>) -> Self {
        let by_id = units.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
        Self { units, by_id }
    }

    pub fn get(&self, id: i64) -> Option<&org_unit::Model> {
        self.by_id.get(&id).map(|&i| &self.units[i])
    }

    pub fn by_path(&self, path: &str) -> Option<&org_unit::Model> {
        self.units.iter().find(|u| u.path == path)
    }

    pub fn by_code(&self, code: &str) -> Option<&org_unit::Model> {
        self.units.iter().find(|u| u.code == code)
    }

    /// All units, ordered by path (a parent before its children).
    pub fn all(&self) -> &[org_unit::Model] {
        &self.units
    }

    /// The unit and everything below it.
    pub fn subtree(&self, id: i64) -> impl Iterator<Item = &org_unit::Model> {
        let root = self.get(id).map(|u| u.path.clone());
        self.units.iter().filter(move |u| root.as_deref().is_some_and(|p| u.path.starts_with(p)))
    }

    /// The chain from the root down to the unit, both included.
    pub fn ancestors_or_self(&self, id: i64) -> Vec<&org_unit::Model> {
        let Some(unit) = self.get(id) else { return Vec::new() };
        // Paths sort parents first, so the filtered order is root → unit.
        self.units.iter().filter(|u| unit.path.starts_with(&u.path)).collect()
    }

    /// The lowest unit that is `unit` or above it for every given unit;
    /// `None` for no units or unknown ones.
    pub fn common_ancestor(&self, units: impl IntoIterator<Item = i64>) -> Option<i64> {
        let mut chain: Option<Vec<i64>> = None;
        for unit in units {
            let mine: Vec<i64> = self.ancestors_or_self(unit).iter().map(|u| u.id).collect();
            chain = Some(match chain {
                None => mine,
                Some(c) => c.into_iter().filter(|u| mine.contains(u)).collect(),
            });
        }
        chain?.last().copied()
    }

    /// True when `unit` is `root` or below it.
    pub fn is_within(&self, unit: i64, root: i64) -> bool {
        match (self.get(unit), self.get(root)) {
            (Some(u), Some(r)) => u.path.starts_with(&r.path),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::enums::OrgUnitKind;

    fn unit(id: i64, code: &str, parent: Option<i64>, path: &str) -> org_unit::Model {
        org_unit::Model {
            id,
            code: code.into(),
            name: code.into(),
            kind: OrgUnitKind::Store,
            parent_id: parent,
            path: path.into(),
            created_at: chrono::Utc::now(),
        }
    }

    fn tree() -> OrgTree {
        OrgTree::new(vec![
            unit(1, "hq", None, "hq/"),
            unit(2, "south", Some(1), "hq/south/"),
            unit(3, "sz01", Some(2), "hq/south/sz01/"),
            unit(4, "north", Some(1), "hq/north/"),
            // A code that is a prefix of a sibling's must not be mistaken for it.
            unit(5, "sz", Some(2), "hq/south/sz/"),
        ])
    }

    #[test]
    fn subtree_uses_whole_path_segments() {
        let t = tree();
        let ids: Vec<i64> = t.subtree(5).map(|u| u.id).collect();
        assert_eq!(ids, vec![5]);
        let mut south: Vec<i64> = t.subtree(2).map(|u| u.id).collect();
        south.sort();
        assert_eq!(south, vec![2, 3, 5]);
    }

    #[test]
    fn ancestors_run_from_root_to_unit() {
        let t = tree();
        let chain: Vec<&str> = t.ancestors_or_self(3).iter().map(|u| u.code.as_str()).collect();
        assert_eq!(chain, vec!["hq", "south", "sz01"]);
        assert!(t.is_within(3, 1));
        assert!(!t.is_within(3, 4));
        assert!(!t.is_within(1, 3));
    }
}
