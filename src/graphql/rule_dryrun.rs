//! `dryRunRule`: what a rule would do, replayed over the recorded events
//! of a window, writing nothing (see `service::rules::dryrun`).

use async_graphql::{Context, ID, InputObject, Object, Result};
use entity::enums::{CustomerEventKind, TagOp};

use super::customer::Customer;
use super::loaders::TagById;
use super::rules::{RuleActionInput, parse_actions};
use super::tag::Tag;
use super::{DateTime, env};
use crate::domain::{CustomerEventId, CustomerId, OrgUnitId, RuleId};
use crate::error::AppError;
use crate::service::customer::find_in_scope;
use crate::service::rules::dryrun::{
    self, DryRun, DryRunRequest, PredictedChange, SampleCustomer, Subject, UnsavedRule,
};
use crate::state::AppState;

/// A rule not saved (yet) to try.
#[derive(InputObject)]
pub struct UnsavedRuleInput {
    /// The unit whose customers (and those below) it would apply to.
    org_unit_id: ID,
    /// Its name, as explanations would show it.
    #[graphql(default = "试运行")]
    name: String,
    /// The IF, in the rule language.
    condition: String,
    /// The THEN (1 to 10 actions).
    actions: Vec<RuleActionInput>,
    /// Re-add a tag that a person removed from the customer.
    #[graphql(default = false)]
    override_manual_removal: bool,
    /// Lower runs first among rules that do not depend on each other.
    #[graphql(default = 0)]
    priority: i32,
    /// A schedule (`DAILY HH:MM`): a scheduled rule is dry-run as its
    /// daily runs of the window would judge.
    schedule: Option<String>,
}

impl UnsavedRuleInput {
    pub(super) fn parse(self) -> Result<UnsavedRule> {
        Ok(UnsavedRule {
            org_unit_id: OrgUnitId::parse(&self.org_unit_id, "rule.orgUnitId")?.0,
            name: self.name,
            condition: self.condition,
            actions: parse_actions(self.actions)?,
            override_manual_removal: self.override_manual_removal,
            priority: self.priority,
            schedule: self.schedule,
        })
    }
}

/// What to dry-run: a saved rule (`ruleId`, optionally an earlier
/// `version`) or an unsaved one (`rule`), exactly one of the two.
#[derive(InputObject)]
pub struct DryRunRuleInput {
    /// A saved rule.
    rule_id: Option<ID>,
    /// With `ruleId`: this version rather than the current one.
    version: Option<i32>,
    /// An unsaved rule.
    rule: Option<UnsavedRuleInput>,
    /// Start of the window (default: 30 days before `to`).
    from: Option<DateTime>,
    /// End of the window (default: now). At most the configured number of
    /// days (90 by default) after `from`.
    to: Option<DateTime>,
    /// Customers listed with their changes (default 20, at most 100).
    sample: Option<i32>,
}

/// A dry run's answer: how many customers the rule would change, and a
/// sample with the reason for each change.
pub struct RuleDryRun(pub DryRun);

/// A dry run's answer: how many customers the rule would change, and a
/// sample with the reason for each change.
#[Object]
impl RuleDryRun {
    /// The rule tried (none for an unsaved one).
    async fn rule_id(&self) -> Option<ID> {
        self.0.rule_id.map(|id| RuleId(id).into())
    }
    /// Its name.
    async fn rule_name(&self) -> &str {
        &self.0.rule_name
    }
    /// The version tried (0 for an unsaved rule or edit).
    async fn rule_version(&self) -> i32 {
        self.0.rule_version
    }
    /// Start of the window replayed.
    async fn from(&self) -> DateTime {
        self.0.from.into()
    }
    /// End of the window replayed.
    async fn to(&self) -> DateTime {
        self.0.to.into()
    }
    /// Events of the window replayed (of the customers counted).
    async fn events_replayed(&self) -> u64 {
        self.0.events_replayed
    }
    /// Customers with an event in the window, in the rule's unit and
    /// below, that the caller reads.
    async fn customers_replayed(&self) -> u64 {
        self.0.customers_replayed
    }
    /// Customers the rule fires for (a change, or an add held back).
    async fn customers_matched(&self) -> u64 {
        self.0.customers_matched
    }
    /// Customers the rule would put a tag on.
    async fn would_add(&self) -> u64 {
        self.0.would_add
    }
    /// Customers the rule would take a tag off.
    async fn would_remove(&self) -> u64 {
        self.0.would_remove
    }
    /// Adds held back because a person had removed the tag (for a
    /// scheduled rule, each once however many of its runs hold it back).
    async fn held_back(&self) -> u64 {
        self.0.held_back
    }
    /// The first customers (by id) the rule would change.
    async fn sample(&self) -> Vec<DryRunCustomer> {
        self.0.sample.iter().cloned().map(DryRunCustomer).collect()
    }
    /// More customers would change than `sample` lists.
    async fn sample_truncated(&self) -> bool {
        self.0.sample_truncated
    }
}

/// A customer of a dry run's sample.
pub struct DryRunCustomer(SampleCustomer);

/// A customer of a dry run's sample.
#[Object]
impl DryRunCustomer {
    /// The customer's id.
    async fn customer_id(&self) -> ID {
        CustomerId(self.0.customer_id).into()
    }
    /// The customer, when the caller reads it (a dry run shown in a
    /// change request may list customers its reader does not see).
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        let env = env(ctx);
        match find_in_scope(env.db, env.principal, CustomerId(self.0.customer_id)).await {
            Ok(row) => Ok(Some(Customer(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
    /// The changes the rule would make, in order.
    async fn changes(&self) -> Vec<DryRunChange> {
        self.0.changes.iter().cloned().map(DryRunChange).collect()
    }
}

/// A change a dry run predicts.
pub struct DryRunChange(PredictedChange);

/// A change a dry run predicts.
#[Object]
impl DryRunChange {
    /// The tag.
    async fn tag(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        Ok(env(ctx).loaders.load_one(TagById(self.0.tag_id)).await?.map(Tag))
    }
    /// Put on or taken off.
    async fn op(&self) -> TagOp {
        self.0.op
    }
    /// The event that would trigger it (null for a scheduled rule's run).
    async fn event_id(&self) -> Option<ID> {
        self.0.event_id.map(|id| CustomerEventId(id).into())
    }
    /// The event's kind (null for a scheduled rule's run).
    async fn event_kind(&self) -> Option<CustomerEventKind> {
        self.0.event_kind
    }
    /// When the event happened, or the instant a scheduled run judges (a
    /// slot of the window; the latest slot is judged at the window's end).
    async fn occurred_at(&self) -> DateTime {
        self.0.occurred_at.into()
    }
    /// Why, worded as `CustomerTag.why` would word it.
    async fn text(&self) -> &str {
        &self.0.text
    }
}

#[derive(Default)]
pub struct RuleDryRunQuery;

#[Object]
impl RuleDryRunQuery {
    /// Replays the recorded events of a window for a rule, writing
    /// nothing: how many customers it would tag or untag, and a sample
    /// with the reason for each. Counts cover the customers of the rule's
    /// unit and below that the caller reads.
    async fn dry_run_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule and the window.")] input: DryRunRuleInput,
    ) -> Result<RuleDryRun> {
        let env = env(ctx);
        let subject = match (input.rule_id, input.rule) {
            (Some(id), None) => Subject::Saved { id: RuleId::parse(&id, "ruleId")?, version: input.version },
            (None, Some(rule)) => Subject::Unsaved(rule.parse()?),
            _ => return Err(AppError::validation("ruleId", "give exactly one of `ruleId` and `rule`").into()),
        };
        let sample = match input.sample {
            Some(n) if n < 0 => return Err(AppError::validation("sample", "must not be negative").into()),
            n => n.map(|n| n as usize),
        };
        let request = DryRunRequest { subject, from: input.from.map(|d| d.0), to: input.to.map(|d| d.0), sample };
        let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
        Ok(RuleDryRun(dryrun::dry_run(env.db, env.principal, env.limits, offset, request).await?))
    }
}
