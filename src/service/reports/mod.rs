//! Governance reports: how the tag library is used and where it needs
//! cleaning up. Every report is read at an org unit, for the caller: tags
//! of the unit's effective library (or, for duplicates, of its whole
//! subtree too), holders counted among the customers the caller may read
//! within the unit's subtree, each tag only where the caller sees its
//! class.
//!
//! - [`usage`]: `tagUsage`, holders from the segment index's bitmaps (SQL
//!   while it builds), recency and sources from one grouped SQL over the
//!   tag event log;
//! - [`zombie`]: tags almost nobody holds or nobody was given lately, and
//!   archiving them through the normal library-edit rules;
//! - [`duplicates`]: pairs of tags that are probably one idea, with a
//!   reason each and the merges that would fold them into one;
//! - [`alerts`]: the governance alerts raised by a refresh, acknowledged
//!   and resolved by staff;
//! - [`time_travel`]: a customer's tags and a segment's members at a past
//!   instant, replayed from the tag event log.
//!
//! The thresholds live in `report_setting`, one row per unit that sets its
//! own; a unit without one inherits its nearest ancestor's, the root the
//! defaults of [`ReportSettings`].

pub mod alerts;
pub mod duplicates;
pub mod rollup;
pub mod time_travel;
pub mod usage;
pub mod zombie;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use entity::{org_unit, report_setting};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use crate::authz::{Action, Principal, Scope};
use crate::domain::OrgUnitId;
use crate::error::{AppError, AppResult};

/// The thresholds of the reports at one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    /// A tag held by less than this share (0..1) of the scope is a zombie.
    pub zombie_share: f64,
    /// A tag nobody was given for this many days is a zombie.
    pub zombie_idle_days: i32,
    /// Holder overlap (Jaccard) from which two tags are probable duplicates.
    pub duplicate_jaccard: f64,
    /// Names at most this many edits apart are probable duplicates.
    pub duplicate_edit_distance: i32,
    /// The unit whose row applies; `None` for the defaults.
    pub set_at: Option<i64>,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            zombie_share: 0.10,
            zombie_idle_days: 90,
            duplicate_jaccard: 0.8,
            duplicate_edit_distance: 1,
            set_at: None,
        }
    }
}

impl ReportSettings {
    /// What a zombie tag is: held by less than the zombie share of the
    /// scope, or given to nobody for the zombie idle days (counted from its
    /// creation when it was never given).
    pub fn is_zombie(
        &self,
        share: f64,
        last_tagged_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let idle_since = last_tagged_at.unwrap_or(created_at).max(created_at);
        share < self.zombie_share || idle_since < now - Duration::days(i64::from(self.zombie_idle_days))
    }
}

impl From<report_setting::Model> for ReportSettings {
    fn from(m: report_setting::Model) -> Self {
        Self {
            zombie_share: m.zombie_share,
            zombie_idle_days: m.zombie_idle_days,
            duplicate_jaccard: m.duplicate_jaccard,
            duplicate_edit_distance: m.duplicate_edit_distance,
            set_at: Some(m.org_unit_id),
        }
    }
}

/// New thresholds for a unit; absent ones keep what the unit has now
/// (its own or inherited).
#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    pub zombie_share: Option<f64>,
    pub zombie_idle_days: Option<i32>,
    pub duplicate_jaccard: Option<f64>,
    pub duplicate_edit_distance: Option<i32>,
}

impl SettingsChange {
    fn check(&self) -> AppResult<()> {
        if self.zombie_share.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
            return Err(AppError::validation("zombieShare", "must be between 0 and 1"));
        }
        if self.zombie_idle_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            return Err(AppError::validation("zombieIdleDays", "must be between 1 and 3650"));
        }
        if self.duplicate_jaccard.is_some_and(|j| !(j > 0.0 && j <= 1.0)) {
            return Err(AppError::validation("duplicateJaccard", "must be above 0 and at most 1"));
        }
        if self.duplicate_edit_distance.is_some_and(|d| !(0..=5).contains(&d)) {
            return Err(AppError::validation("duplicateEditDistance", "must be between 0 and 5"));
        }
        Ok(())
    }
}

/// The unit a report is read at: `NOT_FOUND` when the caller does not know
/// it, `FORBIDDEN` without `report:read` there.
pub(crate) fn report_unit(principal: &Principal, unit: OrgUnitId) -> AppResult<&org_unit::Model> {
    let found = principal
        .org
        .get(unit.0)
        .filter(|u| principal.visible_units().contains(&u.id))
        .ok_or_else(|| AppError::not_found("org unit", unit))?;
    principal.require(Action::ReportRead, found.id)?;
    Ok(found)
}

/// The customers a report at `unit` counts: those the caller may read in
/// the unit's subtree.
pub(crate) fn customer_scope(principal: &Principal, unit: i64) -> Arc<Scope> {
    let subtree: Scope = principal.org.subtree(unit).map(|u| u.id).collect();
    Arc::new(principal.scope(Action::CustomerRead).intersect(&subtree))
}

/// The thresholds in force at a unit: its own row, or its nearest
/// ancestor's, or the defaults.
///
/// # Errors
/// Database errors.
pub async fn settings_in_force(
    db: &impl ConnectionTrait,
    principal: &Principal,
    unit: i64,
) -> AppResult<ReportSettings> {
    let chain: Vec<i64> = principal.org.ancestors_or_self(unit).iter().map(|u| u.id).collect();
    let rows = report_setting::Entity::find()
        .filter(report_setting::Column::OrgUnitId.is_in(chain.iter().copied()))
        .all(db)
        .await?;
    // Nearest first: the chain runs root → unit.
    Ok(chain
        .iter()
        .rev()
        .find_map(|u| rows.iter().find(|r| r.org_unit_id == *u))
        .cloned()
        .map(ReportSettings::from)
        .unwrap_or_default())
}

/// The thresholds of a unit, for a report reader there.
///
/// # Errors
/// As [`report_unit`].
pub async fn settings(db: &DatabaseConnection, principal: &Principal, unit: OrgUnitId) -> AppResult<ReportSettings> {
    let unit = report_unit(principal, unit)?;
    settings_in_force(db, principal, unit.id).await
}

/// Sets a unit's own thresholds (which its subtree inherits), audited.
///
/// # Errors
/// `NOT_FOUND` for an unknown unit, `FORBIDDEN` without `report:configure`
/// there, `VALIDATION` for a threshold out of range (nothing changes).
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn set_settings(
    db: &DatabaseConnection,
    principal: &Principal,
    unit: OrgUnitId,
    change: SettingsChange,
) -> AppResult<ReportSettings> {
    let found = principal
        .org
        .get(unit.0)
        .filter(|u| principal.visible_units().contains(&u.id))
        .ok_or_else(|| AppError::not_found("org unit", unit))?;
    principal.require(Action::ReportConfigure, found.id)?;
    change.check()?;
    let txn = db.begin().await?;
    let before = settings_in_force(&txn, principal, found.id).await?;
    let row = report_setting::ActiveModel {
        org_unit_id: Set(found.id),
        zombie_share: Set(change.zombie_share.unwrap_or(before.zombie_share)),
        zombie_idle_days: Set(change.zombie_idle_days.unwrap_or(before.zombie_idle_days)),
        duplicate_jaccard: Set(change.duplicate_jaccard.unwrap_or(before.duplicate_jaccard)),
        duplicate_edit_distance: Set(change.duplicate_edit_distance.unwrap_or(before.duplicate_edit_distance)),
        updated_by: Set(principal.staff.id),
        updated_at: Set(Utc::now()),
    };
    let saved = if before.set_at == Some(found.id) {
        report_setting::Entity::update(row).exec(&txn).await?
    } else {
        report_setting::Entity::insert(row).exec_with_returning(&txn).await?
    };
    let after = ReportSettings::from(saved);
    let entry = AuditEntry::ok(principal.staff_id(), "report.settings", "org_unit", found.id)
        .in_unit(found.id)
        .with_detail(json!({
            "zombieShare": after.zombie_share,
            "zombieIdleDays": after.zombie_idle_days,
            "duplicateJaccard": after.duplicate_jaccard,
            "duplicateEditDistance": after.duplicate_edit_distance,
        }));
    audit::record(&txn, entry).await?;
    txn.commit().await?;
    Ok(after)
}
