//! What a rule may name: the enterprise tags of its unit's library (the
//! unit's layer and the layers above), and how stored rules become
//! [`CompiledRule`]s.

use std::collections::{BTreeSet, HashMap};

use entity::{enums::TagStatus, rule, tag, tag_group};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::condition::{self, Condition, TagName};
use super::eval::{Action, CompiledRule, Exclusive};
use crate::authz::OrgTree;
use crate::error::{AppError, AppResult};

/// The enterprise tags in force in a unit's library, with their groups.
pub struct UnitLibrary {
    pub tags: HashMap<i64, (tag::Model, tag_group::Model)>,
}

impl UnitLibrary {
    /// Loads the library of `unit` (its layer and those above).
    ///
    /// # Errors
    /// Database errors.
    pub async fn load(db: &impl ConnectionTrait, org: &OrgTree, unit: i64) -> AppResult<Self> {
        let units: Vec<i64> = org.ancestors_or_self(unit).iter().map(|u| u.id).collect();
        let groups: HashMap<i64, tag_group::Model> = tag_group::Entity::find()
            .filter(tag_group::Column::OrgUnitId.is_in(units))
            .all(db)
            .await?
            .into_iter()
            .map(|g| (g.id, g))
            .collect();
        let tags = tag::Entity::find()
            .filter(tag::Column::GroupId.is_in(groups.keys().copied()))
            .filter(tag::Column::Status.eq(TagStatus::Active))
            .all(db)
            .await?;
        let tags = tags
            .into_iter()
            .filter_map(|t| {
                let group = groups.get(&t.group_id?)?.clone();
                Some((t.id, (t, group)))
            })
            .collect();
        Ok(Self { tags })
    }

    /// The tag a condition names: by id, or by name or alias.
    ///
    /// # Errors
    /// A message for an unknown name or id, or a name several tags answer
    /// to (listing them with their ids).
    pub fn resolve(&self, name: &TagName) -> Result<i64, String> {
        match name {
            TagName::Id(id) => {
                if self.tags.contains_key(id) {
                    Ok(*id)
                } else {
                    Err(format!("no tag #{id} in this unit's tag library"))
                }
            }
            TagName::Name(name) => {
                let mut hits: Vec<&(tag::Model, tag_group::Model)> = self
                    .tags
                    .values()
                    .filter(|(t, _)| {
                        t.name == *name
                            || t.aliases.as_array().is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
                    })
                    .collect();
                hits.sort_by_key(|(t, _)| t.id);
                match hits.as_slice() {
                    [] => Err(format!("no tag {name:?} in this unit's tag library")),
                    [(t, _)] => Ok(t.id),
                    many => Err(format!(
                        "{name:?} names several tags: {}; write #id to pick one",
                        many.iter().map(|(t, g)| format!("#{} in {}", t.id, g.name)).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }
    }

    /// Resolves every tag of a condition.
    ///
    /// # Errors
    /// `VALIDATION` on `field` with the column of the first tag that does
    /// not resolve.
    pub fn resolve_condition(&self, field: &str, condition: &Condition) -> AppResult<HashMap<TagName, i64>> {
        let mut out = HashMap::new();
        for tag in condition.tags() {
            let id = self
                .resolve(&tag.name)
                .map_err(|message| AppError::validation(field, format!("at column {}: {message}", tag.column)))?;
            out.insert(tag.name.clone(), id);
        }
        Ok(out)
    }

    /// The exclusive groups of `tags`, with every tag of those groups.
    pub fn exclusive_of(&self, tags: impl IntoIterator<Item = i64>) -> Exclusive {
        let groups: BTreeSet<i64> = tags
            .into_iter()
            .filter_map(|t| self.tags.get(&t))
            .filter(|(_, g)| g.exclusive)
            .map(|(_, g)| g.id)
            .collect();
        let mut exclusive = Exclusive::default();
        for (t, g) in self.tags.values() {
            if groups.contains(&g.id) {
                exclusive.group_of.insert(t.id, g.id);
                exclusive.members.entry(g.id).or_default().push(t.id);
            }
        }
        for members in exclusive.members.values_mut() {
            members.sort_unstable();
        }
        exclusive
    }
}

/// The actions stored with a rule.
///
/// # Errors
/// `INTERNAL` when the stored JSON is not a list of actions.
pub fn stored_actions(row: &rule::Model) -> AppResult<Vec<Action>> {
    serde_json::from_value(row.actions.clone()).map_err(|e| AppError::internal(anyhow::anyhow!("rule {}: {e}", row.id)))
}

/// Compiles a stored rule against its unit's library. A rule whose tags no
/// longer resolve (archived or renamed since it was saved) is left out
/// with a warning rather than failing the events that reach it.
pub fn compile(row: &rule::Model, library: &UnitLibrary) -> Option<CompiledRule> {
    let compiled = (|| -> Result<CompiledRule, String> {
        let condition = condition::parse(&row.condition).map_err(|e| e.to_string())?;
        let mut tag_ids = HashMap::new();
        for tag in condition.tags() {
            tag_ids.insert(tag.name.clone(), library.resolve(&tag.name)?);
        }
        let actions = stored_actions(row).map_err(|e| e.message())?;
        CompiledRule::new(
            row.id,
            row.version,
            row.name.clone(),
            row.priority,
            condition,
            tag_ids,
            actions,
            row.override_manual_removal,
        )
    })();
    match compiled {
        Ok(rule) => Some(rule),
        Err(err) => {
            tracing::warn!(rule = row.id, error = %err, "rule cannot be evaluated; skipped");
            None
        }
    }
}
