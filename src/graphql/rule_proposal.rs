//! `proposeRule`: creating, editing or enabling a rule by change request,
//! for callers with `rule:propose` (see `service::rules::propose`). The
//! request shows the rule's dry run (`ChangeRequest.ruleDryRun`).

use async_graphql::{Context, ID, InputObject, Object, Result};

use super::env;
use super::governance::ChangeRequest;
use super::rules::{CreateRuleInput, UpdateRuleInput};
use crate::domain::RuleId;
use crate::error::AppError;
use crate::service::rules::dryrun::UnsavedRule;
use crate::service::rules::propose::{self, RuleProposal};
use crate::state::AppState;

/// A rule change to file for approval: exactly one of `create`, `update`
/// and `enable`.
#[derive(InputObject)]
pub struct ProposeRuleInput {
    /// A new rule.
    create: Option<CreateRuleInput>,
    /// An edit (its `version` is the version you read).
    update: Option<UpdateRuleInput>,
    /// Turning this disabled rule on.
    enable: Option<ID>,
    /// With `enable`: the version you read.
    version: Option<i32>,
    /// Why (at most 500 characters).
    reason: Option<String>,
}

fn proposal_of(input: ProposeRuleInput) -> Result<(RuleProposal, Option<i32>)> {
    match (input.create, input.update, input.enable) {
        (Some(create), None, None) => {
            let draft = create.draft()?;
            let rule = UnsavedRule {
                org_unit_id: draft.org_unit.0,
                name: draft.name,
                condition: draft.condition,
                actions: draft.actions,
                override_manual_removal: draft.override_manual_removal,
                priority: draft.priority,
                schedule: draft.schedule,
            };
            Ok((RuleProposal::Create { rule, enabled: draft.enabled }, None))
        }
        (None, Some(update), None) => {
            let (id, version, patch) = update.change()?;
            let proposal = RuleProposal::Update {
                rule_id: id.0,
                name: patch.name,
                condition: patch.condition,
                actions: patch.actions,
                override_manual_removal: patch.override_manual_removal,
                priority: patch.priority,
                // `""`: the schedule taken away.
                schedule: patch.schedule.map(Option::unwrap_or_default),
            };
            Ok((proposal, version))
        }
        (None, None, Some(id)) => {
            Ok((RuleProposal::Enable { rule_id: RuleId::parse(&id, "enable")?.0 }, input.version))
        }
        _ => Err(AppError::validation("create", "give exactly one of `create`, `update` and `enable`").into()),
    }
}

#[derive(Default)]
pub struct RuleProposalMutation;

#[Object]
impl RuleProposalMutation {
    /// Files a rule's creation, edit or enabling for approval (with
    /// `rule:propose` at the rule's unit), checked as the direct change
    /// would be and dry-run over the last 30 days; approving applies it.
    async fn propose_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The change.")] input: ProposeRuleInput,
    ) -> Result<ChangeRequest> {
        let env = env(ctx);
        let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
        let reason = input.reason.clone();
        let (proposal, version) = proposal_of(input)?;
        let request =
            propose::propose_rule(env.db, env.principal, env.limits, offset, proposal, version, reason.as_deref())
                .await?;
        Ok(ChangeRequest(request))
    }
}
