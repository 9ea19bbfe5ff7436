//! A Casbin adapter over our own `casbin_rule` entity.
//!
//! Written by hand because no adapter on crates.io works with sea-orm 2
//! (STACK.md); this one shares the application's connection pool. Rules are
//! stored in the usual layout: `ptype`, then up to six values, unused ones
//! empty.

use async_trait::async_trait;
use casbin::{Adapter, Filter, Model};
use entity::casbin_rule;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};

const VALUES: usize = 6;

pub struct DbAdapter {
    db: DatabaseConnection,
    filtered: bool,
}

impl DbAdapter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, filtered: false }
    }

    /// Every stored rule, in insertion order.
    async fn all_rows(&self) -> casbin::Result<Vec<casbin_rule::Model>> {
        let rows = casbin_rule::Entity::find()
            .order_by_asc(casbin_rule::Column::Id)
            .all(&self.db)
            .await
            .map_err(adapter_err)?;
        Ok(rows.into_iter().filter(|r| !r.ptype.is_empty()).collect())
    }
}

fn adapter_err(err: impl std::error::Error + Send + Sync + 'static) -> casbin::Error {
    casbin::error::AdapterError(Box::new(err)).into()
}

fn values_of(row: &casbin_rule::Model) -> Vec<String> {
    let mut values =
        vec![row.v0.clone(), row.v1.clone(), row.v2.clone(), row.v3.clone(), row.v4.clone(), row.v5.clone()];
    while values.last().is_some_and(String::is_empty) {
        values.pop();
    }
    values
}

/// A rule as a row to insert.
pub(super) fn to_active(ptype: &str, rule: &[String]) -> casbin_rule::ActiveModel {
    let v = |i: usize| Set(rule.get(i).cloned().unwrap_or_default());
    casbin_rule::ActiveModel {
        id: NotSet,
        ptype: Set(ptype.to_owned()),
        v0: v(0),
        v1: v(1),
        v2: v(2),
        v3: v(3),
        v4: v(4),
        v5: v(5),
    }
}

fn value_column(i: usize) -> casbin_rule::Column {
    match i {
        0 => casbin_rule::Column::V0,
        1 => casbin_rule::Column::V1,
        2 => casbin_rule::Column::V2,
        3 => casbin_rule::Column::V3,
        4 => casbin_rule::Column::V4,
        _ => casbin_rule::Column::V5,
    }
}

/// The condition matching exactly one stored rule.
pub(super) fn rule_condition(ptype: &str, rule: &[String]) -> Condition {
    (0..VALUES).fold(Condition::all().add(casbin_rule::Column::Ptype.eq(ptype)), |cond, i| {
        cond.add(value_column(i).eq(rule.get(i).cloned().unwrap_or_default()))
    })
}

fn put_into_model(m: &mut dyn Model, row: &casbin_rule::Model) {
    let sec = &row.ptype[..1];
    if let Some(ast) = m.get_mut_model().get_mut(sec).and_then(|s| s.get_mut(&row.ptype)) {
        ast.get_mut_policy().insert(values_of(row));
    }
}

#[async_trait]
impl Adapter for DbAdapter {
    async fn load_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        for row in &self.all_rows().await? {
            put_into_model(m, row);
        }
        self.filtered = false;
        Ok(())
    }

    async fn load_filtered_policy<'a>(&mut self, m: &mut dyn Model, f: Filter<'a>) -> casbin::Result<()> {
        for row in &self.all_rows().await? {
            let wanted = if row.ptype.starts_with('p') { &f.p } else { &f.g };
            let values = values_of(row);
            let keep = wanted.iter().enumerate().all(|(i, w)| w.is_empty() || values.get(i).is_some_and(|v| v == w));
            if keep {
                put_into_model(m, row);
            } else {
                self.filtered = true;
            }
        }
        Ok(())
    }

    async fn save_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        let mut rows = Vec::new();
        for sec in ["p", "g"] {
            if let Some(section) = m.get_model().get(sec) {
                for (ptype, ast) in section {
                    rows.extend(ast.get_policy().iter().map(|rule| to_active(ptype, rule)));
                }
            }
        }
        let txn = self.db.begin().await.map_err(adapter_err)?;
        casbin_rule::Entity::delete_many().exec(&txn).await.map_err(adapter_err)?;
        if !rows.is_empty() {
            casbin_rule::Entity::insert_many(rows).exec(&txn).await.map_err(adapter_err)?;
        }
        txn.commit().await.map_err(adapter_err)
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        casbin_rule::Entity::delete_many().exec(&self.db).await.map_err(adapter_err)?;
        Ok(())
    }

    fn is_filtered(&self) -> bool {
        self.filtered
    }

    async fn add_policy(&mut self, _sec: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.add_policies(_sec, ptype, vec![rule]).await
    }

    async fn add_policies(&mut self, _sec: &str, ptype: &str, rules: Vec<Vec<String>>) -> casbin::Result<bool> {
        let txn = self.db.begin().await.map_err(adapter_err)?;
        for rule in &rules {
            let exists = casbin_rule::Entity::find()
                .filter(rule_condition(ptype, rule))
                .one(&txn)
                .await
                .map_err(adapter_err)?
                .is_some();
            if !exists {
                casbin_rule::Entity::insert(to_active(ptype, rule)).exec(&txn).await.map_err(adapter_err)?;
            }
        }
        txn.commit().await.map_err(adapter_err)?;
        Ok(true)
    }

    async fn remove_policy(&mut self, _sec: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.remove_policies(_sec, ptype, vec![rule]).await
    }

    async fn remove_policies(&mut self, _sec: &str, ptype: &str, rules: Vec<Vec<String>>) -> casbin::Result<bool> {
        let txn = self.db.begin().await.map_err(adapter_err)?;
        let mut removed = 0;
        for rule in &rules {
            removed += casbin_rule::Entity::delete_many()
                .filter(rule_condition(ptype, rule))
                .exec(&txn)
                .await
                .map_err(adapter_err)?
                .rows_affected;
        }
        txn.commit().await.map_err(adapter_err)?;
        Ok(removed > 0)
    }

    async fn remove_filtered_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        let cond = field_values
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .fold(Condition::all().add(casbin_rule::Column::Ptype.eq(ptype)), |cond, (i, v)| {
                cond.add(value_column(field_index + i).eq(v.clone()))
            });
        let removed = casbin_rule::Entity::delete_many().filter(cond).exec(&self.db).await.map_err(adapter_err)?;
        Ok(removed.rows_affected > 0)
    }
}
