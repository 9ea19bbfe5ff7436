//! Rules about tags that hold everywhere a tag is read: which statuses are
//! in force, what a tag's aliases are, and what a lifecycle stage is.

use entity::{
    enums::{TagCategory, TagStatus},
    org_unit, tag, tag_group,
};

/// An archived tag is retired: its assignments and history stay (restoring
/// it brings them back as they were), but meanwhile no customer shows it,
/// no count counts it, and no filter or segment matches it.
pub fn is_retired(status: TagStatus) -> bool {
    status == TagStatus::Archived
}

/// The stored spelling of the statuses whose assignments are in force, for
/// queries that join `tag`.
pub fn in_force() -> [&'static str; 2] {
    [TagStatus::Active.as_str(), TagStatus::Merged.as_str()]
}

/// The tag's other names (stored as a JSON array of strings).
pub fn aliases_of(t: &tag::Model) -> Vec<String> {
    serde_json::from_value(t.aliases.clone()).unwrap_or_default()
}

/// The one definition of a lifecycle stage (客户阶段): a tag of the HQ
/// lifecycle group, that is a group of category `LIFECYCLE` that is
/// exclusive (a customer is in one stage at a time) and belongs to a root
/// of the organisation (`unit` is the group's org unit). `Customer.lifecycleStage`,
/// the `lifecycleStage` filter and the segment predicate `lifecycle = …`
/// all ask this.
pub fn is_lifecycle_group(group: &tag_group::Model, unit: Option<&org_unit::Model>) -> bool {
    group.category == TagCategory::Lifecycle && group.exclusive && unit.is_some_and(|u| u.parent_id.is_none())
}
