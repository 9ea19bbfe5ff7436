//! Rules by change request: a caller with `rule:propose` but not
//! `rule:write` at a unit files the creation, edit or enabling of a rule
//! there for approval, as library edits are filed. The rule is checked as
//! a direct change would be, and dry-run over the last 30 days when the
//! request is filed; the request carries that dry run for its approver.
//! Approving applies the change as the requester (its rights then), in
//! the approval's transaction; a rule that changed since the request was
//! filed makes the request `STALE`.

use chrono::FixedOffset;
use entity::{change_request, enums::RuleStatus, rule};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dryrun::{DryRun, DryRunRequest, Subject, UnsavedRule, dry_run};
use super::eval::Action;
use super::library::stored_actions;
use super::store::{
    RuleDraft, RulePatch, check_name, create_rule_in, find_rule, name_taken, set_status_in, update_rule_in, validate,
};
use crate::authz::{Action as Permit, Principal};
use crate::config::Limits;
use crate::domain::{OrgUnitId, Reason, RuleId};
use crate::error::{AppError, AppResult};
use crate::service::governance::requests::{self, ChangeRequestKind, NewRequest, RequestTarget};

/// A rule change filed for approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum RuleProposal {
    /// A new rule.
    #[serde(rename_all = "camelCase")]
    Create { rule: UnsavedRule, enabled: bool },
    /// An edit; absent parts stay.
    #[serde(rename_all = "camelCase")]
    Update {
        rule_id: i64,
        name: Option<String>,
        condition: Option<String>,
        actions: Option<Vec<Action>>,
        override_manual_removal: Option<bool>,
        priority: Option<i32>,
        /// A new schedule; `""` takes the schedule away.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schedule: Option<String>,
    },
    /// Turning a disabled rule on.
    #[serde(rename_all = "camelCase")]
    Enable { rule_id: i64 },
}

impl RuleProposal {
    fn kind(&self) -> ChangeRequestKind {
        match self {
            Self::Create { .. } => ChangeRequestKind::RuleCreate,
            Self::Update { .. } => ChangeRequestKind::RuleUpdate,
            Self::Enable { .. } => ChangeRequestKind::RuleEnable,
        }
    }
}

/// What a request of a rule change stores.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    proposal: RuleProposal,
    /// None only in requests filed before scheduled rules were dry-run.
    #[serde(default)]
    dry_run: Option<DryRun>,
}

/// A proposal's schedule change as the store takes it (`""` removes).
fn schedule_patch(schedule: Option<String>) -> Option<Option<String>> {
    schedule.map(|s| (!s.trim().is_empty()).then_some(s))
}

/// The rule the request is against and the version it was read at.
async fn current(db: &impl ConnectionTrait, principal: &Principal, id: i64) -> AppResult<rule::Model> {
    let row = find_rule(db, principal, RuleId(id)).await?;
    principal.require(Permit::RulePropose, row.org_unit_id)?;
    if row.status == RuleStatus::Archived {
        return Err(AppError::validation("id", "an archived rule cannot change"));
    }
    Ok(row)
}

/// Checks a proposal as the direct change would be checked, and says what
/// the rule would be: its unit, the rule to dry-run, the version it was
/// read at.
async fn check(
    db: &impl ConnectionTrait,
    principal: &Principal,
    proposal: &RuleProposal,
    expected_version: Option<i32>,
) -> AppResult<(i64, Subject, Option<rule::Model>)> {
    match proposal {
        RuleProposal::Create { rule, .. } => {
            let unit = rule.org_unit_id;
            if principal.org.get(unit).is_none() {
                return Err(AppError::not_found("org unit", OrgUnitId(unit)));
            }
            principal.require(Permit::RulePropose, unit)?;
            let name = check_name(&rule.name)?;
            name_taken(db, unit, &name, 0).await?;
            super::store::check_schedule(rule.schedule.as_deref())?;
            validate(db, principal, unit, 0, &rule.condition, &rule.actions).await?;
            Ok((unit, Subject::Unsaved(rule.clone()), None))
        }
        RuleProposal::Update { rule_id, name, condition, actions, override_manual_removal, priority, schedule } => {
            let row = current(db, principal, *rule_id).await?;
            check_expected(&row, expected_version)?;
            let mut next = row.clone();
            if let Some(name) = name {
                next.name = check_name(name)?;
                name_taken(db, next.org_unit_id, &next.name, next.id).await?;
            }
            if let Some(condition) = condition {
                next.condition = condition.trim().to_owned();
            }
            if let Some(actions) = actions {
                next.actions = serde_json::to_value(actions).unwrap_or_default();
            }
            if let Some(o) = override_manual_removal {
                next.override_manual_removal = *o;
            }
            if let Some(p) = priority {
                next.priority = *p;
            }
            if let Some(schedule) = schedule_patch(schedule.clone()) {
                next.schedule = super::store::check_schedule(schedule.as_deref())?;
            }
            let parsed = stored_actions(&next)?;
            validate(db, principal, next.org_unit_id, next.id, &next.condition, &parsed).await?;
            next.version = row.version + 1;
            Ok((row.org_unit_id, Subject::Proposed(next), Some(row)))
        }
        RuleProposal::Enable { rule_id } => {
            let row = current(db, principal, *rule_id).await?;
            check_expected(&row, expected_version)?;
            if row.status == RuleStatus::Enabled {
                return Err(AppError::validation("id", "the rule is enabled already"));
            }
            let parsed = stored_actions(&row)?;
            validate(db, principal, row.org_unit_id, row.id, &row.condition, &parsed).await?;
            Ok((row.org_unit_id, Subject::Saved { id: RuleId(row.id), version: None }, Some(row)))
        }
    }
}

fn check_expected(row: &rule::Model, expected: Option<i32>) -> AppResult<()> {
    match expected {
        Some(v) if v != row.version => {
            Err(AppError::Conflict(format!("the rule is at version {}, not {v}; read it again", row.version)))
        }
        _ => Ok(()),
    }
}

/// Files a rule change for approval, with its dry run over the last 30
/// days (counted over the customers the requester reads).
///
/// # Errors
/// `FORBIDDEN` without `rule:propose` at the rule's unit (or the use of an
/// action's tag there); `VALIDATION` as the direct change would be
/// refused, and for enabling an enabled rule; `CONFLICT` when
/// `expected_version` is not the rule's; `NOT_FOUND` for a rule or unit
/// the caller may not read.
#[tracing::instrument(skip(db, principal, limits, proposal, reason), fields(staff = principal.staff.id))]
pub async fn propose_rule(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    offset: FixedOffset,
    proposal: RuleProposal,
    expected_version: Option<i32>,
    reason: Option<&str>,
) -> AppResult<change_request::Model> {
    let reason = Reason::parse(reason, "reason")?;
    let (unit, subject, base) = check(db, principal, &proposal, expected_version).await?;
    // A scheduled rule's dry run predicts its daily runs of the window.
    let request = DryRunRequest { subject, from: None, to: None, sample: None };
    let run = Some(dry_run(db, principal, limits, offset, request).await?);
    let txn = db.begin().await?;
    let request = requests::file(
        &txn,
        principal,
        NewRequest {
            kind: proposal.kind(),
            target: RequestTarget::Rule(base.as_ref().map(|r| r.id)),
            base_versions: base.as_ref().map_or_else(|| json!({}), |r| json!({ "rule": r.version })),
            payload: serde_json::to_value(Payload { proposal, dry_run: run }).map_err(AppError::internal)?,
            scope: unit,
            reason,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(request)
}

/// The dry run a rule change request carries; `None` for other requests.
pub fn dry_run_of(request: &change_request::Model) -> Option<DryRun> {
    serde_json::from_value(request.payload.get("dryRun")?.clone()).ok().flatten()
}

/// True when the rule a request is against is still at the version it was
/// filed against (always for a new rule).
///
/// # Errors
/// Database errors.
pub async fn still_current(txn: &DatabaseTransaction, request: &change_request::Model) -> AppResult<bool> {
    let Some(base) = request.base_versions.get("rule").and_then(Value::as_i64) else { return Ok(true) };
    let Some(id) = request.target_id else { return Ok(true) };
    let row = rule::Entity::find_by_id(id).one(txn).await?;
    Ok(row.is_some_and(|r| i64::from(r.version) == base))
}

/// Applies an approved rule change as its requester, in the approval's
/// transaction: the rule's new version (or the new rule) is written with
/// its version row and audit row, as a direct change would be.
///
/// # Errors
/// `INTERNAL` for a damaged request; the change's own errors (the rule
/// no longer passes the checks, the requester lost `rule:propose`).
pub async fn apply_approved(
    txn: &DatabaseTransaction,
    requester: &Principal,
    request: &change_request::Model,
) -> AppResult<rule::Model> {
    let payload: Payload = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
    let base = request.base_versions.get("rule").and_then(Value::as_i64).map(|v| v as i32);
    match payload.proposal {
        RuleProposal::Create { rule, enabled } => {
            let draft = RuleDraft {
                org_unit: OrgUnitId(rule.org_unit_id),
                name: rule.name,
                condition: rule.condition,
                actions: rule.actions,
                override_manual_removal: rule.override_manual_removal,
                priority: rule.priority,
                enabled,
                schedule: rule.schedule,
            };
            create_rule_in(txn, requester, draft, Permit::RulePropose).await
        }
        RuleProposal::Update { rule_id, name, condition, actions, override_manual_removal, priority, schedule } => {
            let schedule = schedule_patch(schedule);
            let patch = RulePatch { name, condition, actions, override_manual_removal, priority, schedule };
            update_rule_in(txn, requester, RuleId(rule_id), base, patch, Permit::RulePropose).await
        }
        RuleProposal::Enable { rule_id } => {
            set_status_in(txn, requester, RuleId(rule_id), base, RuleStatus::Enabled, Permit::RulePropose).await
        }
    }
}
