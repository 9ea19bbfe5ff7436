//! The edit model of the tag library: the eight edits as applied or stored
//! in a change request, the changes they carry, the full states that each
//! version stores, and what an edit returns.

use chrono::{DateTime, Utc};
use entity::{
    change_request,
    enums::{TagCategory, TagStatus},
    tag, tag_group,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{ChangeRequestId, ObjectKey, ObjectKind, OrgUnitId, Reason, StaffId, TagGroupId, TagId, Versions};
use crate::store::change_request::{ChangeRequestKind, RequestTarget};

/// `Some(None)` for an explicit `null` (clear the field), `None` when the
/// field is absent (keep it).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Changes to a tag group; absent fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<TagCategory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub naming_pattern: Option<Option<String>>,
}

/// Changes to a tag; absent fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TagChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub canonical_tag_id: Option<Option<TagId>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub ttl_seconds: Option<Option<i64>>,
    /// Moves the tag to another group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<TagGroupId>,
    /// Only rollbacks set the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TagStatus>,
}

/// One edit of the library, as applied directly or stored in a change
/// request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "edit", rename_all = "camelCase")]
pub enum LibraryEdit {
    #[serde(rename_all = "camelCase")]
    UpdateTagGroup { group_id: TagGroupId, changes: GroupChanges },
    #[serde(rename_all = "camelCase")]
    UpdateTag { tag_id: TagId, changes: TagChanges },
    #[serde(rename_all = "camelCase")]
    ArchiveTag { tag_id: TagId },
    #[serde(rename_all = "camelCase")]
    RestoreTag { tag_id: TagId },
    /// Merges `source_id` (B) into `target_id` (A).
    #[serde(rename_all = "camelCase")]
    MergeTags { target_id: TagId, source_id: TagId },
    #[serde(rename_all = "camelCase")]
    RollbackTag { tag_id: TagId, version: i32 },
    /// A new enterprise tag in a group.
    #[serde(rename_all = "camelCase")]
    CreateTag { group_id: TagGroupId, tag: NewTagSpec },
    /// A new tag group in a library layer.
    #[serde(rename_all = "camelCase")]
    CreateTagGroup { org_unit_id: OrgUnitId, group: NewGroupSpec },
}

/// The group a `CreateTagGroup` edit creates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewGroupSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: TagCategory,
    pub visibility_class: String,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub naming_pattern: Option<String>,
}

/// The tag a `CreateTag` edit creates, as checked when it was submitted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewTagSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub canonical_tag_id: Option<TagId>,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

impl LibraryEdit {
    /// The change-request kind, also the audit action.
    pub fn kind(&self) -> ChangeRequestKind {
        match self {
            Self::UpdateTagGroup { .. } => ChangeRequestKind::TagGroupUpdate,
            Self::UpdateTag { .. } => ChangeRequestKind::TagUpdate,
            Self::ArchiveTag { .. } => ChangeRequestKind::TagArchive,
            Self::RestoreTag { .. } => ChangeRequestKind::TagRestore,
            Self::MergeTags { .. } => ChangeRequestKind::TagMerge,
            Self::RollbackTag { .. } => ChangeRequestKind::TagRollback,
            Self::CreateTag { .. } => ChangeRequestKind::TagCreate,
            Self::CreateTagGroup { .. } => ChangeRequestKind::TagGroupCreate,
        }
    }

    /// The existing object the edit changes (none for creations).
    pub fn edited(&self) -> Option<ObjectKey> {
        match self {
            Self::UpdateTagGroup { group_id, .. } => Some(ObjectKey::tag_group(*group_id)),
            Self::UpdateTag { tag_id, .. }
            | Self::ArchiveTag { tag_id }
            | Self::RestoreTag { tag_id }
            | Self::RollbackTag { tag_id, .. } => Some(ObjectKey::tag(*tag_id)),
            Self::MergeTags { target_id, .. } => Some(ObjectKey::tag(*target_id)),
            Self::CreateTag { .. } | Self::CreateTagGroup { .. } => None,
        }
    }

    /// What a change request for the edit is about: the edited object, or
    /// the group a new tag goes to (nothing yet for a new group).
    pub fn request_target(&self) -> RequestTarget {
        match (self, self.edited()) {
            (_, Some(key)) => RequestTarget::Library(key.kind, Some(key.id)),
            (Self::CreateTag { group_id, .. }, None) => RequestTarget::Library(ObjectKind::TagGroup, Some(group_id.0)),
            (_, None) => RequestTarget::Library(ObjectKind::TagGroup, None),
        }
    }
}

/// The full state of a tag, as stored in each of its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TagState {
    pub group_id: Option<i64>,
    pub name: String,
    pub description: String,
    pub aliases: Vec<String>,
    pub canonical_tag_id: Option<i64>,
    pub ttl_seconds: Option<i64>,
    pub status: TagStatus,
    pub merged_into_id: Option<i64>,
}

impl From<&tag::Model> for TagState {
    fn from(t: &tag::Model) -> Self {
        Self {
            group_id: t.group_id,
            name: t.name.clone(),
            description: t.description.clone(),
            aliases: aliases_of(t),
            canonical_tag_id: t.canonical_tag_id,
            ttl_seconds: t.ttl_seconds,
            status: t.status,
            merged_into_id: t.merged_into_id,
        }
    }
}

/// The full state of a tag group, as stored in each of its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    pub org_unit_id: i64,
    pub name: String,
    pub description: String,
    pub category: TagCategory,
    pub visibility_class: String,
    pub exclusive: bool,
    pub naming_pattern: Option<String>,
}

impl From<&tag_group::Model> for GroupState {
    fn from(g: &tag_group::Model) -> Self {
        Self {
            org_unit_id: g.org_unit_id,
            name: g.name.clone(),
            description: g.description.clone(),
            category: g.category,
            visibility_class: g.visibility_class.clone(),
            exclusive: g.exclusive,
            naming_pattern: g.naming_pattern.clone(),
        }
    }
}

pub use crate::domain::tag::aliases_of;

/// What an edit did: applied (with the objects as they now are) or turned
/// into a pending change request.
#[derive(Debug, Clone, Default)]
pub struct EditOutcome {
    pub applied: bool,
    pub tag: Option<tag::Model>,
    pub group: Option<tag_group::Model>,
    pub change_request: Option<change_request::Model>,
}

/// What the caller read and why it edits.
#[derive(Debug, Clone, Default)]
pub struct EditContext {
    /// The versions the caller read, by key; each must still be current.
    pub expected: Versions,
    pub reason: Option<Reason>,
}

/// Who made a change, through which request, when.
pub(crate) struct Author {
    pub actor: StaffId,
    pub change_request: Option<ChangeRequestId>,
    pub at: DateTime<Utc>,
}
