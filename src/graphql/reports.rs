//! Governance reports and alerts: `tagUsage`, `zombieTags`,
//! `duplicateTags`, `reportSettings`, `alerts`, and the mutations that act
//! on them. Rules in `service::reports`.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use entity::{
    enums::{AlertStatus, GovernanceAlertKind, TagSource},
    governance_alert,
};
use serde_json::Value;

use super::customer::OrderDirection;
use super::governance::tag_payload;
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::tag::{Tag, TagGroup, TagPayload, caught_up};
use super::{DateTime, PageInfo, env, page_args};
use crate::domain::{AlertId, OrgUnitId, PageArgs, Reason, TagId, parse_ids};
use crate::service::reports::{
    self, SettingsChange, alerts, duplicates,
    usage::{self, UsageFilter, UsageOrder, UsageOrderField},
    zombie,
};
use crate::state::AppState;

fn index<'a>(ctx: &'a Context<'_>) -> &'a crate::segment::SegmentIndex {
    &ctx.data_unchecked::<AppState>().index
}

/// How many holders of a tag a source gave it to.
#[derive(SimpleObject)]
pub struct SourceCount {
    /// What put the tag on them.
    source: TagSource,
    /// Customers of the scope holding the tag now whose assignment came
    /// from this source.
    count: u64,
}

/// The tags of one report response, whose sources are counted together
/// the first time a `bySource` of any of them is asked (one statement for
/// the page, none when no client asks).
pub struct SourceBatch {
    unit: i64,
    tags: Vec<(i64, Option<String>)>,
    counts: tokio::sync::OnceCell<HashMap<i64, Vec<(TagSource, u64)>>>,
}

impl SourceBatch {
    fn of<'a>(unit: i64, rows: impl IntoIterator<Item = &'a usage::TagUsage>) -> Arc<Self> {
        let mut tags: Vec<(i64, Option<String>)> =
            rows.into_iter().map(|r| (r.tag.id, Some(r.group.visibility_class.clone()))).collect();
        tags.sort();
        tags.dedup();
        Arc::new(Self { unit, tags, counts: tokio::sync::OnceCell::new() })
    }
}

/// One tag's usage among the customers of a report's scope.
pub struct TagUsage(usage::TagUsage, Arc<SourceBatch>);

/// One tag's usage among the customers the caller may read in the
/// report's org unit (and below), counting the tag only where the caller
/// sees its class.
#[Object]
impl TagUsage {
    /// The tag.
    async fn tag(&self) -> Tag {
        Tag(self.0.tag.clone())
    }
    /// Its group.
    async fn group(&self) -> TagGroup {
        TagGroup(self.0.group.clone())
    }
    /// Customers of the scope holding it.
    async fn holders(&self) -> u64 {
        self.0.holders
    }
    /// Customers of the scope.
    async fn scope_customers(&self) -> u64 {
        self.0.scope_customers
    }
    /// `holders / scopeCustomers` (0 to 1; 0 for an empty scope).
    async fn share(&self) -> f64 {
        self.0.share
    }
    /// The last time a customer of the scope was given the tag.
    async fn last_tagged_at(&self) -> Option<DateTime> {
        self.0.last_tagged_at.map(DateTime)
    }
    /// Times a customer of the scope was given the tag in the last 30 days.
    async fn tagged_last_30_days(&self) -> u64 {
        self.0.tagged_last_30_days
    }
    /// Times a customer of the scope was given the tag in the last 90 days.
    async fn tagged_last_90_days(&self) -> u64 {
        self.0.tagged_last_90_days
    }
    /// What put the tag on the customers of the scope holding it now
    /// (manual, rule, bulk, import, …: the source of each assignment), most
    /// first; the counts add up to `holders`.
    async fn by_source(&self, ctx: &Context<'_>) -> Result<Vec<SourceCount>> {
        let env = env(ctx);
        let batch = &self.1;
        let counts = batch
            .counts
            .get_or_try_init(|| usage::holders_by_source(env.db, env.principal, batch.unit, &batch.tags))
            .await?;
        Ok(counts
            .get(&self.0.tag.id)
            .map(|by| by.iter().map(|(source, count)| SourceCount { source: *source, count: *count }).collect())
            .unwrap_or_default())
    }
    /// Under the zombie thresholds in force at the unit.
    async fn zombie(&self) -> bool {
        self.0.zombie
    }
}

/// An item of `tagUsage`.
#[derive(SimpleObject)]
pub struct TagUsageEdge {
    /// Pass it as `after` to page from here.
    cursor: String,
    /// The tag's usage.
    node: TagUsage,
}

/// A page of `tagUsage`.
#[derive(SimpleObject)]
pub struct TagUsageConnection {
    /// The tags of the page, in the order asked.
    edges: Vec<TagUsageEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
}

/// A key `tagUsage` sorts by.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum TagUsageOrderField {
    /// Holders (and so share).
    #[default]
    Holders,
    /// Tag name.
    Name,
    /// Last tagged.
    LastTagged,
    /// Tagged in the last 30 days.
    TaggedLast30Days,
}

/// The order of `tagUsage` (ties by tag id).
#[derive(InputObject, Default)]
pub struct TagUsageOrderInput {
    /// The sort key.
    #[graphql(default)]
    field: TagUsageOrderField,
    /// The direction.
    #[graphql(default)]
    direction: OrderDirection,
}

/// Which tags `tagUsage` lists.
#[derive(InputObject, Default)]
pub struct TagUsageFilterInput {
    /// Only zombie tags (`true`) or only the others (`false`).
    zombie: Option<bool>,
}

/// The report thresholds in force at an org unit.
pub struct ReportSettings(reports::ReportSettings);

/// The thresholds of the governance reports at an org unit: its own, or
/// inherited from the nearest unit above that sets them, or the defaults.
#[Object]
impl ReportSettings {
    /// A tag held by less than this share (0 to 1) of the scope is a zombie.
    async fn zombie_share(&self) -> f64 {
        self.0.zombie_share
    }
    /// A tag nobody was given for this many days is a zombie.
    async fn zombie_idle_days(&self) -> i32 {
        self.0.zombie_idle_days
    }
    /// Tags whose holders overlap at least this much (Jaccard) are probable duplicates.
    async fn duplicate_jaccard(&self) -> f64 {
        self.0.duplicate_jaccard
    }
    /// Tags whose names are at most this many edits apart are probable duplicates.
    async fn duplicate_edit_distance(&self) -> i32 {
        self.0.duplicate_edit_distance
    }
    /// The unit whose settings apply; `null` for the defaults.
    async fn set_at(&self, ctx: &Context<'_>) -> Result<Option<OrgUnit>> {
        self.0.set_at.map(|u| org_unit(ctx, u)).transpose()
    }
}

/// Why two tags are probably one.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum DuplicateReason {
    /// Equal names (after normalising width, case and spaces) in different layers.
    SameName,
    /// A name or alias of one is an alias of the other.
    AliasCollision,
    /// Names a small edit distance apart.
    SimilarName,
    /// Their holders overlap above the threshold (Jaccard).
    HolderOverlap,
}

impl From<duplicates::DuplicateReason> for DuplicateReason {
    fn from(r: duplicates::DuplicateReason) -> Self {
        match r {
            duplicates::DuplicateReason::SameName => Self::SameName,
            duplicates::DuplicateReason::AliasCollision => Self::AliasCollision,
            duplicates::DuplicateReason::SimilarName => Self::SimilarName,
            duplicates::DuplicateReason::HolderOverlap => Self::HolderOverlap,
        }
    }
}

/// One merge of a proposal: `source` into `target` (the `mergeTags` edit).
#[derive(SimpleObject)]
pub struct ProposedMerge {
    /// The tag that stays.
    target: Tag,
    /// The tag merged into it.
    source: Tag,
}

/// Two tags that are probably one idea.
pub struct DuplicateTagPair(duplicates::DuplicatePair, Arc<SourceBatch>);

/// Two tags that are probably one idea, why, and how to fold them into one.
#[Object]
impl DuplicateTagPair {
    /// One tag, with its usage.
    async fn a(&self) -> TagUsage {
        TagUsage(self.0.a.clone(), self.1.clone())
    }
    /// The other tag, with its usage.
    async fn b(&self) -> TagUsage {
        TagUsage(self.0.b.clone(), self.1.clone())
    }
    /// Why they are probably one, strongest first.
    async fn reasons(&self) -> Vec<DuplicateReason> {
        self.0.reasons.iter().map(|r| (*r).into()).collect()
    }
    /// Edit distance between the names (characters).
    async fn edit_distance(&self) -> u64 {
        u64::try_from(self.0.edit_distance).unwrap_or(u64::MAX)
    }
    /// How much their holders overlap (Jaccard, 0 to 1); `null` while the
    /// segment index builds.
    async fn jaccard(&self) -> Option<f64> {
        self.0.jaccard
    }
    /// Neither tag's layer contains the other's (two regions, two stores).
    async fn sibling_scopes(&self) -> bool {
        self.0.sibling_scopes
    }
    /// The tag the pair would become; `null` when no merge can fold them
    /// (see `note`).
    async fn canonical(&self) -> Option<Tag> {
        self.0.canonical.clone().map(Tag)
    }
    /// The merges that fold the pair into `canonical`, in order: each is a
    /// `mergeTags` edit (or `mergeDuplicateTags` for all), applied or filed
    /// as a change request as the policy decides.
    async fn merges(&self) -> Vec<ProposedMerge> {
        self.0
            .merges
            .iter()
            .map(|m| ProposedMerge { target: Tag(m.target.clone()), source: Tag(m.source.clone()) })
            .collect()
    }
    /// Why there is no proposal, when there is none.
    async fn note(&self) -> Option<&str> {
        self.0.note.as_deref()
    }
}

/// A governance alert.
pub struct GovernanceAlert(pub governance_alert::Model);

/// A condition of the library or the customer base that needs somebody.
#[Object]
impl GovernanceAlert {
    /// Opaque global id.
    async fn id(&self) -> ID {
        AlertId(self.0.id).into()
    }
    /// What it is about.
    async fn kind(&self) -> GovernanceAlertKind {
        self.0.kind
    }
    /// Open, acknowledged or resolved.
    async fn status(&self) -> AlertStatus {
        self.0.status
    }
    /// The unit it belongs to (who sees it).
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// `tag:5`, `tags:3,7`, `customer:9`, `lock:4`.
    async fn subject(&self) -> &str {
        &self.0.subject
    }
    /// What the refresh found (tag names and shares, counts, lock details).
    async fn detail(&self) -> Json<Value> {
        Json(self.0.detail.clone())
    }
    /// When it was raised.
    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }
    /// Who acknowledged it.
    async fn acknowledged_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.acknowledged_by).await
    }
    /// When it was acknowledged.
    async fn acknowledged_at(&self) -> Option<DateTime> {
        self.0.acknowledged_at.map(DateTime)
    }
    /// Who resolved it; `null` when a refresh found its condition gone.
    async fn resolved_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.resolved_by).await
    }
    /// When it was resolved.
    async fn resolved_at(&self) -> Option<DateTime> {
        self.0.resolved_at.map(DateTime)
    }
}

/// An item of `alerts`.
#[derive(SimpleObject)]
pub struct GovernanceAlertEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The alert.
    node: GovernanceAlert,
}

/// A page of alerts, newest first.
#[derive(SimpleObject)]
pub struct GovernanceAlertConnection {
    /// The alerts of the page, newest first.
    edges: Vec<GovernanceAlertEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
}

/// What `refreshAlerts` did.
#[derive(SimpleObject)]
pub struct RefreshAlertsPayload {
    /// Alerts raised now.
    raised: u64,
    /// Alerts resolved because their condition went away.
    resolved: u64,
    /// Conditions found (raised now or before).
    open: u64,
}

#[derive(Default)]
pub struct ReportQuery;

#[Object]
impl ReportQuery {
    /// Per tag of the org unit's effective library: holders among the
    /// customers the caller may read in the unit (and below), their share,
    /// when and how often it was given lately, and by what. Needs
    /// `report:read` at the unit.
    #[allow(clippy::too_many_arguments)]
    async fn tag_usage(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit whose library and customers are reported.")] org_unit_id: ID,
        #[graphql(desc = "This many tags after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "The order (default: most held first).")] order_by: Option<TagUsageOrderInput>,
        #[graphql(desc = "Which tags to list.")] filter: Option<TagUsageFilterInput>,
    ) -> Result<TagUsageConnection> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let page: PageArgs = page_args(ctx, first, after, None, None)?;
        let order_by = order_by.unwrap_or_default();
        let order = UsageOrder {
            field: match order_by.field {
                TagUsageOrderField::Holders => UsageOrderField::Holders,
                TagUsageOrderField::Name => UsageOrderField::Name,
                TagUsageOrderField::LastTagged => UsageOrderField::LastTagged,
                TagUsageOrderField::TaggedLast30Days => UsageOrderField::TaggedLast30Days,
            },
            descending: order_by.direction == OrderDirection::Desc,
        };
        let filter = UsageFilter { zombie: filter.unwrap_or_default().zombie };
        let page = usage::tag_usage(env.db, index(ctx), env.principal, unit, filter, order, &page).await?;
        let page_info = PageInfo::of(&page);
        let batch = SourceBatch::of(unit.0, page.items.iter().map(|(_, u)| u));
        Ok(TagUsageConnection {
            edges: page
                .items
                .into_iter()
                .map(|(cursor, u)| TagUsageEdge { cursor, node: TagUsage(u, batch.clone()) })
                .collect(),
            page_info,
        })
    }

    /// The zombie tags of the org unit's effective library (held by less
    /// than the unit's share of its customers, or given to nobody for its
    /// number of days), least held first.
    async fn zombie_tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit.")] org_unit_id: ID,
    ) -> Result<Vec<TagUsage>> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let rows = zombie::zombie_tags(env.db, index(ctx), env.principal, unit).await?;
        let batch = SourceBatch::of(unit.0, &rows);
        Ok(rows.into_iter().map(|r| TagUsage(r, batch.clone())).collect())
    }

    /// Pairs of tags that are probably one idea, in the unit's effective
    /// library and the layers below it, each with its reasons and the
    /// merges that would fold it into one tag.
    async fn duplicate_tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit.")] org_unit_id: ID,
    ) -> Result<Vec<DuplicateTagPair>> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let pairs = duplicates::duplicate_tags(env.db, index(ctx), env.principal, unit).await?;
        let batch = SourceBatch::of(unit.0, pairs.iter().flat_map(|p| [&p.a, &p.b]));
        Ok(pairs.into_iter().map(|p| DuplicateTagPair(p, batch.clone())).collect())
    }

    /// The report thresholds in force at an org unit.
    async fn report_settings(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit.")] org_unit_id: ID,
    ) -> Result<ReportSettings> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        Ok(ReportSettings(reports::settings(env.db, env.principal, unit).await?))
    }

    /// Governance alerts of the units where the caller reads reports,
    /// newest first.
    #[allow(clippy::too_many_arguments)]
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only alerts in this state.")] status: Option<AlertStatus>,
        #[graphql(desc = "Only alerts of this kind.")] kind: Option<GovernanceAlertKind>,
        #[graphql(desc = "Page forward: this many alerts after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many alerts before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<GovernanceAlertConnection> {
        let env = env(ctx);
        let page = page_args(ctx, first, after, last, before)?;
        let page = alerts::list(env.db, env.principal, status, kind, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(GovernanceAlertConnection {
            edges: page
                .items
                .into_iter()
                .map(|(cursor, a)| GovernanceAlertEdge { cursor, node: GovernanceAlert(a) })
                .collect(),
            page_info,
        })
    }
}

/// New report thresholds for an org unit (and the units below it that set
/// none); absent ones keep their value.
#[derive(InputObject)]
pub struct SetReportSettingsInput {
    /// The org unit.
    org_unit_id: ID,
    /// Zombie share threshold, 0 to 1.
    zombie_share: Option<f64>,
    /// Zombie idle days, 1 to 3650.
    zombie_idle_days: Option<i32>,
    /// Duplicate holder overlap (Jaccard), above 0 and at most 1.
    duplicate_jaccard: Option<f64>,
    /// Duplicate name edit distance, 0 to 5.
    duplicate_edit_distance: Option<i32>,
}

/// Zombie tags to archive.
#[derive(InputObject)]
pub struct ArchiveZombieTagsInput {
    /// The org unit whose zombie report names the tags.
    org_unit_id: ID,
    /// The tags: each must be a zombie tag of the unit now.
    tag_ids: Vec<ID>,
    /// Why: recorded, and shown to approvers when a request is filed.
    reason: Option<String>,
}

/// The merges that fold probable duplicates into one tag.
#[derive(InputObject)]
pub struct MergeDuplicateTagsInput {
    /// The tag that stays.
    canonical_tag_id: ID,
    /// The version of it the caller read.
    canonical_expected_version: i32,
    /// The tags merged into it, each with the version the caller read.
    sources: Vec<MergeSourceInput>,
    /// Why: recorded, and shown to approvers when requests are filed.
    reason: Option<String>,
}

/// A tag to merge, with the version read.
#[derive(InputObject)]
pub struct MergeSourceInput {
    /// The tag.
    tag_id: ID,
    /// The version of it the caller read.
    expected_version: i32,
}

#[derive(Default)]
pub struct ReportMutation;

#[Object]
impl ReportMutation {
    /// Sets an org unit's report thresholds (inherited by the units below
    /// that set none). Needs `report:configure` there; audited.
    async fn set_report_settings(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The unit and the thresholds.")] input: SetReportSettingsInput,
    ) -> Result<ReportSettings> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?;
        let change = SettingsChange {
            zombie_share: input.zombie_share,
            zombie_idle_days: input.zombie_idle_days,
            duplicate_jaccard: input.duplicate_jaccard,
            duplicate_edit_distance: input.duplicate_edit_distance,
        };
        Ok(ReportSettings(reports::set_settings(env.db, env.principal, unit, change).await?))
    }

    /// Archives zombie tags, each through the normal library-edit rules:
    /// at once where the caller may edit the tag's layer, as a change
    /// request where it may only propose. One payload per tag, in order.
    async fn archive_zombie_tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The unit, the tags and why.")] input: ArchiveZombieTagsInput,
    ) -> Result<Vec<TagPayload>> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?;
        let tags = parse_ids(&input.tag_ids, "tagIds", TagId::parse)?;
        let reason = Reason::parse(input.reason.as_deref(), "reason")?;
        let outcomes = zombie::archive_zombie_tags(env.db, index(ctx), env.principal, unit, &tags, reason).await?;
        if outcomes.iter().any(|o| o.applied) {
            caught_up(ctx).await;
        }
        Ok(outcomes.into_iter().map(tag_payload).collect())
    }

    /// Merges probable duplicates into their canonical tag: one `mergeTags`
    /// edit per source, in order, each applied or filed as a change request
    /// as the policy decides. One payload per source.
    async fn merge_duplicate_tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The canonical tag and the tags merged into it.")] input: MergeDuplicateTagsInput,
    ) -> Result<Vec<TagPayload>> {
        let env = env(ctx);
        let canonical = TagId::parse(&input.canonical_tag_id, "canonicalTagId")?;
        let mut sources = Vec::with_capacity(input.sources.len());
        for s in &input.sources {
            sources.push((TagId::parse(&s.tag_id, "sources.tagId")?, s.expected_version));
        }
        let reason = Reason::parse(input.reason.as_deref(), "reason")?;
        let outcomes = duplicates::merge_duplicates(
            env.db,
            env.principal,
            (canonical, input.canonical_expected_version),
            &sources,
            reason,
        )
        .await?;
        if outcomes.iter().any(|o| o.applied) {
            caught_up(ctx).await;
        }
        Ok(outcomes.into_iter().map(tag_payload).collect())
    }

    /// Raises the alerts of what is wrong at an org unit now and resolves
    /// those whose condition went away. Needs `alert:manage` there; audited.
    async fn refresh_alerts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit.")] org_unit_id: ID,
    ) -> Result<RefreshAlertsPayload> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let o = alerts::refresh(env.db, index(ctx), env.principal, unit).await?;
        Ok(RefreshAlertsPayload { raised: o.raised, resolved: o.resolved, open: o.open })
    }

    /// Acknowledges an open alert. Needs `alert:manage` in its unit; audited.
    async fn acknowledge_alert(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The alert.")] id: ID,
    ) -> Result<GovernanceAlert> {
        let env = env(ctx);
        let id = AlertId::parse(&id, "id")?;
        Ok(GovernanceAlert(alerts::acknowledge(env.db, env.principal, id).await?))
    }

    /// Resolves an open or acknowledged alert. Needs `alert:manage` in its
    /// unit; audited.
    async fn resolve_alert(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The alert.")] id: ID,
    ) -> Result<GovernanceAlert> {
        let env = env(ctx);
        let id = AlertId::parse(&id, "id")?;
        Ok(GovernanceAlert(alerts::resolve(env.db, env.principal, id).await?))
    }
}

/// A tag a customer held at an instant.
#[derive(SimpleObject)]
pub struct TagAtDate {
    /// The tag (as it is now).
    tag: Tag,
    /// When it was last given before the instant.
    tagged_at: DateTime,
    /// What gave it then.
    source: TagSource,
}

impl From<crate::service::reports::time_travel::TagAt> for TagAtDate {
    fn from(t: crate::service::reports::time_travel::TagAt) -> Self {
        Self { tag: Tag(t.tag), tagged_at: DateTime(t.tagged_at), source: t.source }
    }
}
