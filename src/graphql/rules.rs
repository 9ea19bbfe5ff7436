//! Automatic tagging: `recordEvents`, customer events, rules and their
//! versions, and why an automatic tag is there.

use async_graphql::{
    ComplexObject, Context, Enum, ID, InputObject, Json, MaybeUndefined, Object, Result, SimpleObject,
};
use entity::{
    customer as customer_entity, customer_event,
    enums::{CustomerEventKind, RuleStatus, TagSource},
    rule, rule_version,
};
use serde_json::Value;

use super::customer::ExternalId;
use super::loaders::TagById;
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::tag::{Tag, caught_up};
use super::{DateTime, PageInfo, env, page_args};
use crate::domain::{CustomerEventId, OrgUnitId, RuleId, TagId};
use crate::error::AppError;
use crate::service::rules::{
    eval::{Action as RuleActionModel, ActionOp},
    event::RawEvent,
    explain,
    library::stored_actions,
    record::{self, ItemResult},
    store::{self, RuleDraft, RulePatch},
};
use crate::state::AppState;

/// Something a customer did, as a connector reported it, with the org unit
/// of its customer (an order's amount is guarded as the customer's spend
/// is, at that unit).
pub struct CustomerEvent(pub customer_event::Model, pub i64);

impl CustomerEvent {
    fn text_field(&self, name: &str) -> Option<String> {
        self.0.payload.get(name).and_then(Value::as_str).map(str::to_owned)
    }
}

/// Something a customer did, as a connector reported it.
#[Object]
impl CustomerEvent {
    /// Opaque global id.
    async fn id(&self) -> ID {
        CustomerEventId(self.0.id).into()
    }
    /// What happened.
    async fn kind(&self) -> CustomerEventKind {
        self.0.kind
    }
    /// When it happened.
    async fn occurred_at(&self) -> DateTime {
        self.0.occurred_at.into()
    }
    /// When tagbase recorded it.
    async fn recorded_at(&self) -> DateTime {
        self.0.recorded_at.into()
    }
    /// The connector's key (one key, one event).
    async fn key(&self) -> &str {
        &self.0.event_key
    }
    /// `MESSAGE_RECEIVED`: the message.
    async fn text(&self) -> Option<String> {
        self.text_field("text")
    }
    /// `LINK_CLICKED`: the link.
    async fn url(&self) -> Option<String> {
        self.text_field("url")
    }
    /// `LINK_CLICKED`: the link's title.
    async fn title(&self) -> Option<String> {
        self.text_field("title")
    }
    /// `GROUP_JOINED`, `GROUP_LEFT`: the group chat.
    async fn group(&self) -> Option<String> {
        self.text_field("group")
    }
    /// `ORDER_PAID`: the amount in cents (分). Guarded as the customer's
    /// `totalSpend`: `null` and a `FORBIDDEN_FIELD` error for a caller who
    /// may not read spend at the customer's unit.
    async fn amount(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        let amount = self.0.payload.get("amount").and_then(Value::as_i64);
        if amount.is_some()
            && env(ctx).principal.field_access(crate::authz::CustomerField::TotalSpend, self.1)
                == crate::authz::FieldAccess::Hidden
        {
            // `null` at the field's path with the error beside it, as the
            // customer's guarded fields answer.
            let err: async_graphql::Error =
                AppError::ForbiddenField { field: "CustomerEvent.amount".to_owned() }.into();
            ctx.add_error(ctx.set_error_path(err.into_server_error(ctx.item.pos)));
            return Ok(None);
        }
        Ok(amount)
    }
    /// `ORDER_PAID`: the order's id in the order system.
    async fn order_id(&self) -> Option<String> {
        self.text_field("orderId")
    }
    /// `CUSTOMER_ADDED`: the channel (渠道).
    async fn channel(&self) -> Option<String> {
        self.text_field("channel")
    }
    /// `FORM_SUBMITTED`: the form.
    async fn form(&self) -> Option<String> {
        self.text_field("form")
    }
    /// `FORM_SUBMITTED`: the answers.
    async fn answers(&self) -> Option<Json<Value>> {
        self.0.payload.get("answers").cloned().map(Json)
    }
    /// `CUSTOM`: the event's name.
    async fn name(&self) -> Option<String> {
        self.text_field("name")
    }
    /// `CUSTOM`: its properties.
    async fn properties(&self) -> Option<Json<Value>> {
        self.0.payload.get("properties").cloned().map(Json)
    }
}

/// A customer event in a page, with its cursor.
#[derive(SimpleObject)]
pub struct CustomerEventEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The event.
    node: CustomerEvent,
}

/// A page of a customer's events, newest recorded first.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CustomerEventConnection {
    /// The events of the page.
    edges: Vec<CustomerEventEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
    #[graphql(skip)]
    customer_id: i64,
}

#[ComplexObject]
impl CustomerEventConnection {
    /// The customer's events (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        Ok(record::count_events_of(env(ctx).db, self.customer_id).await?)
    }
}

/// `Customer.events`: the customer was read in the caller's scope.
pub(crate) async fn events_of(
    ctx: &Context<'_>,
    customer: &customer_entity::Model,
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
) -> Result<CustomerEventConnection> {
    let env = env(ctx);
    let page = page_args(ctx, first, after, last, before)?;
    let page = record::events_of(env.db, env.principal, customer, &page).await?;
    Ok(CustomerEventConnection {
        page_info: PageInfo::of(&page),
        edges: page
            .items
            .into_iter()
            .map(|(cursor, e)| CustomerEventEdge { cursor, node: CustomerEvent(e, customer.org_unit_id) })
            .collect(),
        customer_id: customer.id,
    })
}

/// One customer event to record. Give the customer by `customerId` or by
/// `externalId` (e.g. provider `wecom`, a WeCom `external_userid`), and the
/// fields of its kind:
///
/// | kind | fields |
/// |---|---|
/// | `MESSAGE_RECEIVED` | `text` |
/// | `LINK_CLICKED` | `url`, `title`? |
/// | `GROUP_JOINED`, `GROUP_LEFT` | `group`? |
/// | `ORDER_PAID` | `amount` (cents), `orderId`? |
/// | `CUSTOMER_ADDED` | `channel`? |
/// | `FORM_SUBMITTED` | `form`, `answers`? (JSON object) |
/// | `CUSTOM` | `name`, `properties`? (JSON object) |
#[derive(InputObject)]
pub struct CustomerEventInput {
    /// The customer.
    customer_id: Option<ID>,
    /// Or the customer's identity in another system.
    external_id: Option<ExternalId>,
    /// `MESSAGE_RECEIVED`, `LINK_CLICKED`, `GROUP_JOINED`, `GROUP_LEFT`,
    /// `ORDER_PAID`, `CUSTOMER_ADDED`, `FORM_SUBMITTED` or `CUSTOM`. A string,
    /// so that an unknown kind refuses only its own event.
    kind: String,
    /// When it happened (at most 5 minutes ahead, at most 10 years back).
    occurred_at: DateTime,
    /// Your key for the event: the same key again has no second effect;
    /// the same key for a different event is refused (`CONFLICT`).
    key: String,
    /// `MESSAGE_RECEIVED`: the message (at most 4,000 characters).
    text: Option<String>,
    /// `LINK_CLICKED`: the link.
    url: Option<String>,
    /// `LINK_CLICKED`: the link's title.
    title: Option<String>,
    /// `GROUP_JOINED`, `GROUP_LEFT`: the group chat.
    group: Option<String>,
    /// `ORDER_PAID`: the amount in cents (分).
    amount: Option<i64>,
    /// `ORDER_PAID`: the order's id in the order system.
    order_id: Option<String>,
    /// `CUSTOMER_ADDED`: the channel (渠道).
    channel: Option<String>,
    /// `FORM_SUBMITTED`: the form.
    form: Option<String>,
    /// `FORM_SUBMITTED`: the answers (a JSON object).
    answers: Option<Json<Value>>,
    /// `CUSTOM`: the event's name.
    name: Option<String>,
    /// `CUSTOM`: its properties (a JSON object).
    properties: Option<Json<Value>>,
}

/// A batch of customer events.
#[derive(InputObject)]
pub struct RecordEventsInput {
    /// At most the configured batch size (1,000 by default).
    events: Vec<CustomerEventInput>,
}

/// What happened to one event of a batch.
#[derive(Enum, Copy, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Recorded now.
    Recorded,
    /// Its key was recorded before for the same event: nothing done.
    Duplicate,
    /// Refused: see `errors`.
    Refused,
}

/// One event's outcome.
#[derive(SimpleObject)]
pub struct EventResult {
    /// Its position in the batch, from 0.
    index: i32,
    /// Recorded, duplicate or refused.
    outcome: EventOutcome,
    /// The recorded event (for a duplicate, the one recorded before).
    event_id: Option<ID>,
}

/// Why one event of a batch was refused.
#[derive(SimpleObject)]
pub struct EventError {
    /// Its position in the batch, from 0.
    index: i32,
    /// `VALIDATION`, `NOT_FOUND` (no such customer in your scope) or
    /// `CONFLICT` (its key names another event).
    code: String,
    /// The input field at fault, when one is.
    field: Option<String>,
    /// What is wrong.
    message: String,
}

/// What `recordEvents` did. Bad events are refused one by one; the good
/// ones of the batch are recorded.
#[derive(SimpleObject)]
pub struct RecordEventsPayload {
    /// Events recorded now.
    recorded: i32,
    /// Events whose key was already recorded for the same event.
    duplicates: i32,
    /// One per event, in the batch's order.
    results: Vec<EventResult>,
    /// The refused events.
    errors: Vec<EventError>,
    /// Tags put on or taken off by rules.
    tag_changes: i32,
    /// Adds left out because a person had removed the tag from the customer,
    /// on this call's own events (a late event's replay of earlier events
    /// does not count theirs again).
    held_back: i32,
    /// Changes refused by a modification lock, kept to apply when it ends.
    deferred: i32,
}

fn raw_event(input: CustomerEventInput) -> RawEvent {
    RawEvent {
        customer_id: input.customer_id.map(|id| id.0),
        external_id: input.external_id.map(|e| (e.provider, e.external_id)),
        kind: input.kind,
        occurred_at: Some(input.occurred_at.0),
        key: input.key,
        text: input.text,
        url: input.url,
        title: input.title,
        group: input.group,
        amount: input.amount,
        order_id: input.order_id,
        channel: input.channel,
        form: input.form,
        answers: input.answers.map(|j| j.0),
        name: input.name,
        properties: input.properties.map(|j| j.0),
    }
}

/// A rule's action.
#[derive(Enum, Copy, Clone, PartialEq, Eq)]
pub enum RuleActionOp {
    /// Put the tag on (replacing another tag of its exclusive group).
    Add,
    /// Take the tag off.
    Remove,
    /// Move to this tag of an exclusive group.
    Move,
}

impl From<RuleActionOp> for ActionOp {
    fn from(op: RuleActionOp) -> Self {
        match op {
            RuleActionOp::Add => ActionOp::Add,
            RuleActionOp::Remove => ActionOp::Remove,
            RuleActionOp::Move => ActionOp::Move,
        }
    }
}

impl From<ActionOp> for RuleActionOp {
    fn from(op: ActionOp) -> Self {
        match op {
            ActionOp::Add => RuleActionOp::Add,
            ActionOp::Remove => RuleActionOp::Remove,
            ActionOp::Move => RuleActionOp::Move,
        }
    }
}

/// A THEN of a rule.
#[derive(InputObject)]
pub struct RuleActionInput {
    /// Add, remove or move.
    op: RuleActionOp,
    /// The tag (of the rule's unit's library).
    tag_id: ID,
    /// The assignment lapses this many seconds after it is made.
    ttl_seconds: Option<i64>,
}

pub(super) fn parse_actions(input: Vec<RuleActionInput>) -> Result<Vec<RuleActionModel>> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(RuleActionModel {
                op: a.op.into(),
                tag_id: TagId::parse(&a.tag_id, &format!("actions[{i}].tagId"))?.0,
                ttl_seconds: a.ttl_seconds,
            })
        })
        .collect()
}

/// A THEN of a rule.
pub struct RuleAction(RuleActionModel);

/// A THEN of a rule.
#[Object]
impl RuleAction {
    /// Add, remove or move.
    async fn op(&self) -> RuleActionOp {
        self.0.op.into()
    }
    /// The tag.
    async fn tag(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        Ok(env(ctx).loaders.load_one(TagById(self.0.tag_id)).await?.map(Tag))
    }
    /// The assignment lapses this many seconds after it is made.
    async fn ttl_seconds(&self) -> Option<i64> {
        self.0.ttl_seconds
    }
}

fn actions_of(json: &Value, id: i64) -> Result<Vec<RuleAction>> {
    let row = rule::Model {
        id,
        org_unit_id: 0,
        name: String::new(),
        status: RuleStatus::Disabled,
        version: 0,
        condition: String::new(),
        actions: json.clone(),
        override_manual_removal: false,
        priority: 0,
        schedule: None,
        created_by: 0,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    Ok(stored_actions(&row)?.into_iter().map(RuleAction).collect())
}

/// An automatic-tagging rule (自动打标规则): IF `condition` THEN `actions`,
/// for the customers of its org unit and the units below.
pub struct Rule(pub rule::Model);

/// An automatic-tagging rule (自动打标规则): IF `condition` THEN `actions`,
/// for the customers of its org unit and the units below.
#[Object]
impl Rule {
    /// Opaque global id.
    async fn id(&self) -> ID {
        RuleId(self.0.id).into()
    }
    /// The unit whose customers (and those below) it applies to.
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// Unique in its unit.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Enabled, disabled or archived.
    async fn status(&self) -> RuleStatus {
        self.0.status
    }
    /// Grows by one with every change.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The IF, in the rule language (see docs/rules.md).
    async fn condition(&self) -> &str {
        &self.0.condition
    }
    /// The THEN.
    async fn actions(&self) -> Result<Vec<RuleAction>> {
        actions_of(&self.0.actions, self.0.id)
    }
    /// Re-add a tag that a person removed from the customer.
    async fn override_manual_removal(&self) -> bool {
        self.0.override_manual_removal
    }
    /// Lower runs first among rules that do not depend on each other.
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    /// `DAILY HH:MM` (organisation's time zone) for a scheduled rule, which
    /// runs on its schedule instead of on events; none for a rule that
    /// runs on events.
    async fn schedule(&self) -> Option<&str> {
        self.0.schedule.as_deref()
    }
    /// Its scheduled runs, newest first.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many runs after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many runs before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<super::rule_runs::RuleRunConnection> {
        super::rule_runs::runs_of(ctx, RuleId(self.0.id), first, after, last, before).await
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime {
        self.0.updated_at.into()
    }
}

/// One version of a rule.
pub struct RuleVersion(pub rule_version::Model);

/// One version of a rule.
#[Object]
impl RuleVersion {
    /// The version number.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// `create`, `update`, `enable`, `disable`, `archive` or `rollback`.
    async fn change(&self) -> &str {
        &self.0.change
    }
    /// The rule's name in this version.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Its status after the change.
    async fn status(&self) -> RuleStatus {
        self.0.status
    }
    /// The IF in this version.
    async fn condition(&self) -> &str {
        &self.0.condition
    }
    /// The THEN in this version.
    async fn actions(&self) -> Result<Vec<RuleAction>> {
        actions_of(&self.0.actions, self.0.rule_id)
    }
    /// Re-add a tag that a person removed, in this version.
    async fn override_manual_removal(&self) -> bool {
        self.0.override_manual_removal
    }
    /// The priority in this version.
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    /// The schedule in this version (none: it ran on events).
    async fn schedule(&self) -> Option<&str> {
        self.0.schedule.as_deref()
    }
    /// Who made the change.
    async fn changed_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, Some(self.0.changed_by)).await
    }
    /// When.
    async fn changed_at(&self) -> DateTime {
        self.0.changed_at.into()
    }
}

/// Why an automatic tag change happened.
pub struct TagExplanation(explain::Explanation);

/// Why an automatic tag change happened.
#[Object]
impl TagExplanation {
    /// E.g. `规则 晚间咨询 v3: customer_added at 19:04 (+08:00), event #8812`.
    async fn text(&self) -> &str {
        &self.0.text
    }
    /// The rule's version that made the change.
    async fn rule_version(&self) -> i32 {
        self.0.rule.version
    }
    /// The rule, when the caller may read rules there.
    async fn rule(&self, ctx: &Context<'_>) -> Result<Option<Rule>> {
        let env = env(ctx);
        match store::find_rule(env.db, env.principal, RuleId(self.0.rule.rule_id)).await {
            Ok(row) => Ok(Some(Rule(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
    /// The event that triggered the rule.
    async fn event(&self) -> Option<CustomerEvent> {
        let org_unit = self.0.customer_org_unit?;
        self.0.event.clone().map(|e| CustomerEvent(e, org_unit))
    }
    /// The scheduled run that made the change.
    async fn run(&self) -> Option<super::rule_runs::RuleRun> {
        self.0.run.clone().map(super::rule_runs::RuleRun)
    }
}

/// `CustomerTag.why` and `TagEvent.why`: the explanation of a change with
/// this provenance, or none when no rule made it.
pub(crate) async fn why(
    ctx: &Context<'_>,
    customer_id: i64,
    source: TagSource,
    source_ref: Option<&str>,
) -> Result<Option<TagExplanation>> {
    let state = ctx.data_unchecked::<AppState>();
    let explanation = explain::explain(&state.db, state.settings.utc_offset, customer_id, source, source_ref).await?;
    Ok(explanation.map(TagExplanation))
}

#[derive(Default)]
pub struct RuleQuery;

#[Object]
impl RuleQuery {
    /// The rules that apply to the customers of the unit: its own and
    /// those of the units above it; by unit (root first), then name.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn rules(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit.")] org_unit_id: ID,
        #[graphql(default = false, desc = "Also archived rules.")] include_archived: bool,
    ) -> Result<Vec<Rule>> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let rows = store::rules_of_unit(env.db, env.principal, unit, include_archived).await?;
        Ok(rows.into_iter().map(Rule).collect())
    }
    /// One rule.
    async fn rule(&self, ctx: &Context<'_>, #[graphql(desc = "The rule's id.")] id: ID) -> Result<Rule> {
        let env = env(ctx);
        Ok(Rule(store::find_rule(env.db, env.principal, RuleId::parse(&id, "id")?).await?))
    }
    /// Every version of a rule, newest first.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn rule_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] rule_id: ID,
    ) -> Result<Vec<RuleVersion>> {
        let env = env(ctx);
        let rows = store::rule_history(env.db, env.principal, RuleId::parse(&rule_id, "ruleId")?).await?;
        Ok(rows.into_iter().map(RuleVersion).collect())
    }
}

/// A new rule.
#[derive(InputObject)]
pub struct CreateRuleInput {
    /// The unit whose customers (and those below) it applies to.
    org_unit_id: ID,
    /// Unique in its unit (at most 64 characters).
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
    /// Rules start disabled: dry-run them first.
    #[graphql(default = false)]
    enabled: bool,
    /// `DAILY HH:MM` (organisation's time zone): the rule runs on this
    /// schedule instead of on events (for conditions that become true with
    /// time, such as `no order_paid for 180d`).
    schedule: Option<String>,
}

/// A change to a rule; absent fields stay.
#[derive(InputObject)]
pub struct UpdateRuleInput {
    /// The rule's id.
    id: ID,
    /// The version you read: a rule changed since is `CONFLICT`.
    version: Option<i32>,
    /// A new name.
    name: Option<String>,
    /// A new IF.
    condition: Option<String>,
    /// New THENs (replacing all of them).
    actions: Option<Vec<RuleActionInput>>,
    /// Re-add a tag that a person removed from the customer.
    override_manual_removal: Option<bool>,
    /// A new priority.
    priority: Option<i32>,
    /// A new schedule (`DAILY HH:MM`); `null` takes the schedule away (the
    /// rule runs on events again).
    schedule: MaybeUndefined<String>,
}

impl CreateRuleInput {
    pub(super) fn draft(self) -> Result<RuleDraft> {
        Ok(RuleDraft {
            org_unit: OrgUnitId::parse(&self.org_unit_id, "orgUnitId")?,
            name: self.name,
            condition: self.condition,
            actions: parse_actions(self.actions)?,
            override_manual_removal: self.override_manual_removal,
            priority: self.priority,
            enabled: self.enabled,
            schedule: self.schedule,
        })
    }
}

impl UpdateRuleInput {
    /// The rule, the version read, and the change.
    pub(super) fn change(self) -> Result<(RuleId, Option<i32>, RulePatch)> {
        let id = RuleId::parse(&self.id, "id")?;
        let patch = RulePatch {
            name: self.name,
            condition: self.condition,
            actions: self.actions.map(parse_actions).transpose()?,
            override_manual_removal: self.override_manual_removal,
            priority: self.priority,
            schedule: match self.schedule {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(s) => Some(Some(s)),
            },
        };
        Ok((id, self.version, patch))
    }
}

#[derive(Default)]
pub struct RuleMutation;

async fn set_status(ctx: &Context<'_>, id: ID, version: Option<i32>, status: RuleStatus) -> Result<Rule> {
    let env = env(ctx);
    let id = RuleId::parse(&id, "id")?;
    Ok(Rule(store::set_status(env.db, env.principal, id, version, status).await?))
}

#[Object]
impl RuleMutation {
    /// Records customer events (idempotent by key) and runs the rules they
    /// trigger, in one transaction. Bad events are refused one by one
    /// (`errors`); the others are recorded.
    async fn record_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The events.")] input: RecordEventsInput,
    ) -> Result<RecordEventsPayload> {
        let env = env(ctx);
        let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
        let raws = input.events.into_iter().map(raw_event).collect();
        let outcome = record::record_events(env.db, env.principal, env.limits, offset, raws).await?;
        if outcome.tag_changes > 0 {
            caught_up(ctx).await;
        }
        Ok(RecordEventsPayload {
            recorded: outcome.recorded() as i32,
            duplicates: outcome.duplicates() as i32,
            results: outcome
                .results
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let (outcome, id) = match r {
                        ItemResult::Recorded(id) => (EventOutcome::Recorded, Some(*id)),
                        ItemResult::Duplicate(id) => (EventOutcome::Duplicate, Some(*id)),
                        ItemResult::Refused => (EventOutcome::Refused, None),
                    };
                    EventResult { index: index as i32, outcome, event_id: id.map(|id| CustomerEventId(id).into()) }
                })
                .collect(),
            errors: outcome
                .errors
                .iter()
                .map(|e| EventError {
                    index: e.index as i32,
                    code: e.error.code().as_str().to_owned(),
                    field: match &e.error {
                        AppError::Validation { field, .. } => Some(field.clone()),
                        _ => None,
                    },
                    message: e.error.message(),
                })
                .collect(),
            tag_changes: outcome.tag_changes as i32,
            held_back: outcome.held_back as i32,
            deferred: outcome.deferred as i32,
        })
    }

    /// Creates a rule (disabled unless `enabled`).
    async fn create_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule.")] input: CreateRuleInput,
    ) -> Result<Rule> {
        let env = env(ctx);
        Ok(Rule(store::create_rule(env.db, env.principal, input.draft()?).await?))
    }

    /// Changes a rule: a new version.
    async fn update_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The change.")] input: UpdateRuleInput,
    ) -> Result<Rule> {
        let env = env(ctx);
        let (id, version, patch) = input.change()?;
        Ok(Rule(store::update_rule(env.db, env.principal, id, version, patch).await?))
    }

    /// Turns a rule on: it fires on the events that follow.
    async fn enable_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] id: ID,
        #[graphql(desc = "The version you read: a rule changed since is `CONFLICT`.")] version: Option<i32>,
    ) -> Result<Rule> {
        set_status(ctx, id, version, RuleStatus::Enabled).await
    }

    /// Turns a rule off; it stays, with its history.
    async fn disable_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] id: ID,
        #[graphql(desc = "The version you read: a rule changed since is `CONFLICT`.")] version: Option<i32>,
    ) -> Result<Rule> {
        set_status(ctx, id, version, RuleStatus::Disabled).await
    }

    /// Retires a rule for good; its history and explanations stay.
    async fn archive_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] id: ID,
        #[graphql(desc = "The version you read: a rule changed since is `CONFLICT`.")] version: Option<i32>,
    ) -> Result<Rule> {
        set_status(ctx, id, version, RuleStatus::Archived).await
    }

    /// Makes an earlier version the rule's next version (its status stays).
    async fn rollback_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule's id.")] id: ID,
        #[graphql(desc = "The version to bring back.")] to_version: i32,
    ) -> Result<Rule> {
        let env = env(ctx);
        Ok(Rule(store::rollback_rule(env.db, env.principal, RuleId::parse(&id, "id")?, to_version).await?))
    }
}
