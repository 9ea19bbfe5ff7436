//! Scheduled rules' runs: `ruleRuns(ruleId)` and `Rule.runs`.

use async_graphql::{Context, ID, Object, Result, SimpleObject};
use entity::{enums::RuleRunStatus, rule_run};

use super::rules::Rule;
use super::{DateTime, PageInfo, env, page_args};
use crate::domain::RuleId;
use crate::error::AppError;
use crate::service::rules::{explain, schedule, store};

/// One run of a scheduled rule, for one slot of its schedule (each slot
/// runs once, whichever instance runs it).
pub struct RuleRun(pub rule_run::Model);

/// One run of a scheduled rule, for one slot of its schedule (each slot
/// runs once, whichever instance runs it).
#[Object]
impl RuleRun {
    /// The run's number (`#12` in explanations).
    async fn number(&self) -> i64 {
        self.0.id
    }
    /// The rule, when the caller may read it.
    async fn rule(&self, ctx: &Context<'_>) -> Result<Option<Rule>> {
        let env = env(ctx);
        match store::find_rule(env.db, env.principal, RuleId(self.0.rule_id)).await {
            Ok(row) => Ok(Some(Rule(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
    /// The rule's version the run judged with.
    async fn rule_version(&self) -> i32 {
        self.0.rule_version
    }
    /// The slot, in the organisation's offset: `2026-12-02T03:00+08:00`.
    async fn schedule_key(&self) -> &str {
        &self.0.schedule_key
    }
    /// Running, succeeded or failed.
    async fn status(&self) -> RuleRunStatus {
        self.0.status
    }
    /// The instant the rule was judged at (later than the slot when a
    /// missed slot was caught up).
    async fn evaluated_at(&self) -> DateTime {
        self.0.evaluated_at.into()
    }
    /// When the run began.
    async fn started_at(&self) -> DateTime {
        self.0.started_at.into()
    }
    /// When it ended; none while it runs.
    async fn finished_at(&self) -> Option<DateTime> {
        self.0.finished_at.map(Into::into)
    }
    /// Customers of the rule's unit and below that were judged.
    async fn customers_scanned(&self) -> i64 {
        self.0.customers_scanned
    }
    /// Customers whose tags the run changed.
    async fn customers_changed(&self) -> i64 {
        self.0.customers_changed
    }
    /// Tags put on or taken off.
    async fn tag_changes(&self) -> i64 {
        self.0.tag_changes
    }
    /// Changes refused by a modification lock, kept to apply when it ends.
    async fn deferred(&self) -> i64 {
        self.0.deferred
    }
    /// Adds left out because a person had removed the tag.
    async fn held_back(&self) -> i64 {
        self.0.held_back
    }
    /// How many times an instance took the run up (more than one when an
    /// instance died during it).
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// Why it failed (code and message).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// How its changes explain themselves, e.g. `规则 流失客户 v2:
    /// scheduled run #12 at 2026-12-02 03:00 (+08:00)` (without the rule's
    /// name when the caller may not read the rule).
    async fn why(&self, ctx: &Context<'_>) -> Result<String> {
        let env = env(ctx);
        let name = match store::find_rule(env.db, env.principal, RuleId(self.0.rule_id)).await {
            Ok(row) => row.name,
            Err(AppError::NotFound { .. }) => "?".to_owned(),
            Err(err) => return Err(err.into()),
        };
        Ok(explain::run_sentence(&name, self.0.rule_version, self.0.id, &self.0.schedule_key))
    }
}

/// A run in a page, with its cursor.
#[derive(SimpleObject)]
pub struct RuleRunEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The run.
    node: RuleRun,
}

/// A page of a rule's runs, newest first.
#[derive(SimpleObject)]
pub struct RuleRunConnection {
    /// The runs of the page.
    edges: Vec<RuleRunEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
}

/// `ruleRuns` and `Rule.runs`.
pub(super) async fn runs_of(
    ctx: &Context<'_>,
    rule_id: RuleId,
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
) -> Result<RuleRunConnection> {
    let env = env(ctx);
    let page = page_args(ctx, first, after, last, before)?;
    let page = schedule::runs_of(env.db, env.principal, rule_id, &page).await?;
    Ok(RuleRunConnection {
        page_info: PageInfo::of(&page),
        edges: page.items.into_iter().map(|(cursor, r)| RuleRunEdge { cursor, node: RuleRun(r) }).collect(),
    })
}

#[derive(Default)]
pub struct RuleRunQuery;

#[Object]
impl RuleRunQuery {
    /// The runs of a scheduled rule, newest first (`rule:read` where the
    /// rule applies).
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn rule_runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] rule_id: ID,
        #[graphql(desc = "Page forward: this many runs after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many runs before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<RuleRunConnection> {
        runs_of(ctx, RuleId::parse(&rule_id, "ruleId")?, first, after, last, before).await
    }
}
