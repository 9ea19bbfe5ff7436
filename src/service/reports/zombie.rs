//! Zombie tags (僵尸标签): tags of the effective library that almost
//! nobody in the scope holds (share under the unit's threshold, 10% by
//! default) or that nobody was given for a while (90 days by default,
//! counted from the tag's creation when it was never given; the rule is
//! [`ReportSettings::is_zombie`](super::ReportSettings::is_zombie)). Archiving
//! them goes through the normal library-edit rules, tag by tag: applied at
//! once where the caller may edit the tag's layer, a change request where
//! it may only propose.

use sea_orm::DatabaseConnection;

use super::usage::{self, TagUsage};
use crate::authz::Principal;
use crate::domain::{ObjectKey, OrgUnitId, Reason, TagId};
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;
use crate::service::library::{self, EditContext, EditOutcome, LibraryEdit};

/// The zombie tags of a unit's effective library, least held first.
///
/// # Errors
/// As [`usage::tag_usage`].
#[tracing::instrument(skip(db, index, principal), fields(staff = principal.staff.id))]
pub async fn zombie_tags(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
) -> AppResult<Vec<TagUsage>> {
    let mut rows: Vec<TagUsage> = usage::compute(db, index, principal, unit, usage::Recency::All)
        .await?
        .rows
        .into_iter()
        .filter(|r| r.zombie)
        .collect();
    rows.sort_by(|a, b| a.holders.cmp(&b.holders).then(a.tag.id.cmp(&b.tag.id)));
    Ok(rows)
}

/// Archives zombie tags of a unit's library, each as the normal archive
/// edit (direct or by change request, as the policy decides for the
/// caller and the tag's layer), checked against the version the report
/// read. Every tag must be a zombie of the report now; otherwise nothing
/// is submitted.
///
/// # Errors
/// `VALIDATION` naming a tag that is not a zombie of the unit (nothing
/// changes); the report's errors; the first edit's error (edits before it
/// stay submitted, each in its own transaction, and are in the audit log).
#[tracing::instrument(skip(db, index, principal), fields(staff = principal.staff.id))]
pub async fn archive_zombie_tags(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    unit: OrgUnitId,
    tag_ids: &[TagId],
    reason: Option<Reason>,
) -> AppResult<Vec<EditOutcome>> {
    if tag_ids.is_empty() {
        return Err(AppError::validation("tagIds", "name at least one tag"));
    }
    let zombies = zombie_tags(db, index, principal, unit).await?;
    let mut edits = Vec::with_capacity(tag_ids.len());
    for id in tag_ids {
        let Some(z) = zombies.iter().find(|z| z.tag.id == id.0) else {
            return Err(AppError::validation("tagIds", format!("tag {id} is not a zombie tag of this unit")));
        };
        edits.push((*id, z.tag.version));
    }
    let mut outcomes = Vec::with_capacity(edits.len());
    for (id, version) in edits {
        let ctx = EditContext { expected: [(ObjectKey::tag(id), version)].into(), reason: reason.clone() };
        outcomes.push(library::submit(db, principal, LibraryEdit::ArchiveTag { tag_id: id }, ctx).await?);
    }
    Ok(outcomes)
}
