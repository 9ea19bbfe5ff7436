//! Demo data (SPEC §12): the organisation, staff and tag library of the
//! articles, and about 2,000 customers with plausible attributes, tags and
//! tag history.
//!
//! Deterministic and idempotent: everything is generated from a fixed seed
//! and a fixed anchor date *before* the database is looked at, then
//! upserted by natural keys (org code, login, group and tag names, the
//! customers' `demo` external id). A second run changes nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::Context as _;
use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use entity::{
    customer, customer_identity, customer_tag,
    enums::{Gender, OrgUnitKind, SegmentKind, TagCategory, TagOp, TagSource, TagStatus},
    org_unit, segment, staff, staff_identity, tag, tag_event, tag_group,
};
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};

use crate::authz::Authz;
use crate::domain::StaffId;

const SEED: u64 = 20_261_123;
/// Customers per store of the full demo (four stores: 2,000 in all).
pub const DEMO_CUSTOMERS_PER_STORE: usize = 500;
const DEMO_PROVIDER: &str = "demo";

/// The instant the demo data is anchored at (its "now").
fn anchor() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single().expect("valid anchor")
}

/// What a run changed.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub org_units: usize,
    pub staff: usize,
    pub role_bindings: usize,
    pub tag_groups: usize,
    pub tags: usize,
    pub customers_created: usize,
    pub customers_updated: usize,
    pub assignments: usize,
    pub segments: usize,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created {} org units, {} staff, {} role bindings, {} tag groups, {} tags, {} segments, {} customers ({} updated), {} tag assignments",
            self.org_units,
            self.staff,
            self.role_bindings,
            self.tag_groups,
            self.tags,
            self.segments,
            self.customers_created,
            self.customers_updated,
            self.assignments
        )
    }
}

const ORG: &[(&str, &str, OrgUnitKind, Option<&str>)] = &[
    ("hq", "总部", OrgUnitKind::Hq, None),
    ("north", "华北区", OrgUnitKind::Region, Some("hq")),
    ("bj01", "北京朝阳店", OrgUnitKind::Store, Some("north")),
    ("tj01", "天津滨海店", OrgUnitKind::Store, Some("north")),
    ("south", "华南区", OrgUnitKind::Region, Some("hq")),
    ("sz01", "深圳南山店", OrgUnitKind::Store, Some("south")),
    ("gz01", "广州天河店", OrgUnitKind::Store, Some("south")),
];

/// login, display name, home unit, role, unit the role is bound at.
const STAFF: &[(&str, &str, &str, &str, &str)] = &[
    ("admin", "总部管理员", "hq", "hq_admin", "hq"),
    ("hq.marketing", "总部市场-林晓", "hq", "marketing", "hq"),
    ("hq.auditor", "总部审计-周敏", "hq", "auditor", "hq"),
    ("north.manager", "华北区经理-王强", "north", "region_manager", "north"),
    ("south.manager", "华南区经理-陈静", "south", "region_manager", "south"),
    ("sz01.manager", "南山店长-刘洋", "sz01", "store_manager", "sz01"),
    ("sz01.sales", "南山销售-张伟", "sz01", "sales", "sz01"),
    ("sz01.service", "南山客服-李娜", "sz01", "customer_service", "sz01"),
    ("bj01.sales", "朝阳销售-赵磊", "bj01", "sales", "bj01"),
    // A salesperson who left: deactivated after the seed, with customers,
    // tags and audit rows that stay (see `seed_former_staff`).
    (FORMER_SALES, "天河销售-孙磊(已离职)", "gz01", "sales", "gz01"),
];

/// The demo's former employee.
pub const FORMER_SALES: &str = "gz01.former";

/// Demo WeCom identities (login, WeCom `userid`).
const WECOM_IDS: &[(&str, &str)] = &[("sz01.sales", "ZhangWei"), ("sz01.manager", "LiuYang")];

struct GroupSpec {
    unit: &'static str,
    name: &'static str,
    category: TagCategory,
    class: &'static str,
    exclusive: bool,
    pattern: Option<&'static str>,
    /// (name, canonical tag as (group, name) at a higher layer)
    tags: &'static [(&'static str, Option<(&'static str, &'static str)>)],
}

const fn g(
    unit: &'static str,
    name: &'static str,
    category: TagCategory,
    class: &'static str,
    exclusive: bool,
    tags: &'static [(&'static str, Option<(&'static str, &'static str)>)],
) -> GroupSpec {
    GroupSpec { unit, name, category, class, exclusive, pattern: None, tags }
}

const GROUPS: &[GroupSpec] = &[
    g(
        "hq",
        "客户阶段",
        TagCategory::Lifecycle,
        "lifecycle",
        true,
        &[("潜在客户", None), ("试听客户", None), ("付费客户", None), ("流失客户", None)],
    ),
    g(
        "hq",
        "消费等级",
        TagCategory::Value,
        "value",
        true,
        &[("S级", None), ("A级", None), ("B级", None), ("C级", None), ("D级", None)],
    ),
    g(
        "hq",
        "资产状况",
        TagCategory::Value,
        "value",
        false,
        &[("房贷用户", None), ("有车一族", None), ("年消费5万+", None)],
    ),
    g(
        "hq",
        "品类偏好",
        TagCategory::Interest,
        "interest",
        false,
        &[
            ("母婴用品", None),
            ("童装", None),
            ("美妆护肤", None),
            ("运动户外", None),
            ("数码家电", None),
            ("生鲜食品", None),
        ],
    ),
    g(
        "hq",
        "渠道来源",
        TagCategory::Basic,
        "basic",
        false,
        &[
            ("抖音广告-北京", None),
            ("抖音广告-深圳", None),
            ("线下展会", None),
            ("老带新", None),
            ("企业微信活码", None),
            ("小红书种草", None),
        ],
    ),
    g(
        "hq",
        "行业",
        TagCategory::Basic,
        "basic",
        false,
        &[("汽车行业", None), ("教育行业", None), ("金融行业", None), ("互联网", None)],
    ),
    GroupSpec {
        unit: "hq",
        name: "年龄",
        category: TagCategory::Basic,
        class: "basic",
        exclusive: true,
        pattern: Some(r"^年龄_\d+-\d+$"),
        tags: &[("年龄_18-25", None), ("年龄_26-35", None), ("年龄_36-45", None), ("年龄_46-60", None)],
    },
    g(
        "hq",
        "家庭情况",
        TagCategory::Basic,
        "basic",
        false,
        &[("孩子0-3岁", None), ("孩子3-6岁", None), ("孩子6-12岁", None), ("本地居民", None)],
    ),
    g("hq", "教育需求", TagCategory::Interest, "interest", false, &[("升学咨询", None), ("小升初需求", None)]),
    g("hq", "健康关注", TagCategory::Predictive, "sensitive", false, &[("孕期", None), ("过敏体质", None)]),
    g(
        "hq",
        "服务需求",
        TagCategory::Service,
        "service",
        false,
        &[("投诉记录", None), ("售后咨询", None), ("催单", None)],
    ),
    g(
        "hq",
        "活动",
        TagCategory::Behavior,
        "behavior",
        false,
        &[
            ("试驾预约", None),
            ("已完成交易", None),
            ("晚间咨询", None),
            ("询价", None),
            ("购车意向", None),
            ("资金需求", None),
        ],
    ),
    g(
        "north",
        "华北区域标签",
        TagCategory::Interest,
        "interest",
        false,
        &[("北方肤质", None), ("黄金会员", Some(("消费等级", "A级")))],
    ),
    g(
        "south",
        "华南区域标签",
        TagCategory::Interest,
        "interest",
        false,
        &[("南方气候", None), ("黄金会员", Some(("消费等级", "B级")))],
    ),
    g("sz01", "门店专属", TagCategory::Service, "service", false, &[("特殊护理需求", None)]),
];

/// The visibility classes of the demo library, sorted.
pub fn demo_visibility_classes() -> Vec<String> {
    let mut classes: Vec<String> = GROUPS.iter().map(|g| g.class.to_owned()).collect();
    classes.sort();
    classes.dedup();
    classes
}

/// owner login, tag name, share of that owner's store customers holding it.
const PERSONAL: &[(&str, &str, f64)] =
    &[("sz01.sales", "急性子", 0.04), ("sz01.sales", "爱砍价", 0.03), ("bj01.sales", "老客户转介绍", 0.04)];

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "罗",
    "高",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "霞",
    "平", "刚", "桂英", "晓东", "思远", "雨桐", "子涵", "梓萱", "浩然",
];
const INDUSTRIES: &[&str] = &["汽车行业", "教育行业", "金融行业", "互联网"];
const CHANNELS: &[&str] = &["抖音广告-北京", "抖音广告-深圳", "线下展会", "老带新", "企业微信活码", "小红书种草"];

/// A generated customer with the tags it should hold.
struct DemoCustomer {
    external_id: String,
    store: &'static str,
    owner: Option<&'static str>,
    name: String,
    phone: String,
    gender: Gender,
    birth_date: NaiveDate,
    city: String,
    industry: Option<String>,
    channel: String,
    total_spend_cents: i64,
    order_count: i32,
    last_order_at: Option<DateTime<Utc>>,
    added_at: DateTime<Utc>,
    /// ((group name or `@owner` for personal tags, tag name), source, tagged at)
    tags: Vec<((String, &'static str), TagSource, DateTime<Utc>)>,
}

fn store_city(store: &str) -> &'static str {
    match store {
        "bj01" => "北京",
        "tj01" => "天津",
        "sz01" => "深圳",
        _ => "广州",
    }
}

fn store_owner(store: &str) -> Option<&'static str> {
    match store {
        "sz01" => Some("sz01.sales"),
        "bj01" => Some("bj01.sales"),
        "gz01" => Some(FORMER_SALES),
        _ => None,
    }
}

fn between(rng: &mut ChaCha8Rng, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
    let span = (to - from).num_seconds().max(1);
    from + Duration::seconds(rng.random_range(0..span))
}

/// Generates every demo customer, in a fixed order, from the fixed seed.
fn generate_customers(per_store: usize) -> Vec<DemoCustomer> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let now = anchor();
    let mut out = Vec::new();
    let mut n = 0;
    for store in ["bj01", "tj01", "sz01", "gz01"] {
        let region_group = if matches!(store, "bj01" | "tj01") { "华北区域标签" } else { "华南区域标签" };
        for _ in 0..per_store {
            n += 1;
            let gender = if rng.random_bool(0.58) { Gender::Female } else { Gender::Male };
            let name =
                format!("{}{}", SURNAMES.choose(&mut rng).expect("names"), GIVEN.choose(&mut rng).expect("names"));
            let phone = format!("1{}{:09}", rng.random_range(3..=9), rng.random_range(0..1_000_000_000u32));
            let birth_date = NaiveDate::from_ymd_opt(
                rng.random_range(1966..=2006),
                rng.random_range(1..=12),
                rng.random_range(1..=28),
            )
            .expect("valid date");
            let local = rng.random_bool(0.85);
            let city = if local {
                store_city(store).to_owned()
            } else {
                ["上海", "杭州", "成都", "武汉"].choose(&mut rng).expect("cities").to_string()
            };
            let channel = CHANNELS.choose(&mut rng).expect("channels").to_string();
            let industry = rng.random_bool(0.3).then(|| INDUSTRIES.choose(&mut rng).expect("industries").to_string());
            let added_at = between(&mut rng, now - Duration::days(730), now - Duration::days(3));
            let stage = match rng.random_range(0..100) {
                0..30 => "潜在客户",
                30..45 => "试听客户",
                45..90 => "付费客户",
                _ => "流失客户",
            };
            let paying = matches!(stage, "付费客户" | "流失客户");
            // Spend is heavy-tailed: most pay little, a few pay a lot.
            let (total_spend_cents, order_count, last_order_at) = if paying {
                let yuan = (200.0 * (rng.random_range(0.0f64..1.0) * 6.0).exp()) as i64;
                let orders = rng.random_range(1..=30);
                let last = if stage == "流失客户" {
                    between(&mut rng, now - Duration::days(600), now - Duration::days(190))
                } else {
                    between(&mut rng, now - Duration::days(150), now - Duration::days(1))
                };
                (yuan * 100, orders, Some(last.max(added_at)))
            } else {
                (0, 0, None)
            };
            let mut tags: Vec<((String, &'static str), TagSource, DateTime<Utc>)> = Vec::new();
            macro_rules! add {
                ($rng:expr, $group:expr, $tag:expr, $source:expr) => {{
                    let at = between($rng, added_at, now);
                    tags.push((($group.to_owned(), $tag), $source, at));
                }};
            }
            add!(&mut rng, "客户阶段", stage, TagSource::Rule);
            if paying {
                let yuan = total_spend_cents / 100;
                let tier = match yuan {
                    50_000.. => "S级",
                    20_000.. => "A级",
                    5_000.. => "B级",
                    1_000.. => "C级",
                    _ => "D级",
                };
                add!(&mut rng, "消费等级", tier, TagSource::Rule);
                if yuan >= 50_000 {
                    add!(&mut rng, "资产状况", "年消费5万+", TagSource::Rule);
                }
                let gold = if region_group == "华北区域标签" {
                    matches!(tier, "S级" | "A级")
                } else {
                    matches!(tier, "S级" | "A级" | "B级")
                };
                if gold {
                    add!(&mut rng, region_group, "黄金会员", TagSource::Rule);
                }
                if rng.random_bool(0.3) {
                    add!(&mut rng, "活动", "已完成交易", TagSource::Manual);
                }
            }
            for (tag, p) in [("房贷用户", 0.25), ("有车一族", 0.3)] {
                if rng.random_bool(p) {
                    add!(&mut rng, "资产状况", tag, TagSource::Manual);
                }
            }
            let prefs = ["母婴用品", "童装", "美妆护肤", "运动户外", "数码家电", "生鲜食品"];
            let how_many = rng.random_range(1..=2);
            for tag in prefs.choose_multiple(&mut rng, how_many) {
                add!(&mut rng, "品类偏好", tag, TagSource::Manual);
            }
            let channel_tag = CHANNELS.iter().find(|c| **c == channel).copied().expect("channel tag");
            tags.push((("渠道来源".to_owned(), channel_tag), TagSource::Import, added_at));
            if let Some(industry) = &industry {
                let tag = INDUSTRIES.iter().find(|i| *i == industry).copied().expect("industry tag");
                add!(&mut rng, "行业", tag, TagSource::Import);
            }
            let age = now.year() - birth_date.year();
            let age_tag = match age {
                ..=25 => "年龄_18-25",
                26..=35 => "年龄_26-35",
                36..=45 => "年龄_36-45",
                _ => "年龄_46-60",
            };
            add!(&mut rng, "年龄", age_tag, TagSource::Rule);
            if (26..=45).contains(&age) && rng.random_bool(0.45) {
                let kid = ["孩子0-3岁", "孩子3-6岁", "孩子6-12岁"].choose(&mut rng).expect("kids");
                add!(&mut rng, "家庭情况", kid, TagSource::Manual);
            }
            if local {
                add!(&mut rng, "家庭情况", "本地居民", TagSource::Import);
            }
            for (group, tag, p) in [
                ("教育需求", "升学咨询", 0.05),
                ("教育需求", "小升初需求", 0.05),
                ("健康关注", "孕期", 0.03),
                ("健康关注", "过敏体质", 0.05),
                ("服务需求", "投诉记录", 0.04),
                ("服务需求", "售后咨询", 0.1),
                ("活动", "试驾预约", 0.08),
                ("活动", "晚间咨询", 0.1),
                ("活动", "询价", 0.15),
            ] {
                if rng.random_bool(p) {
                    add!(&mut rng, group, tag, TagSource::Manual);
                }
            }
            // The article's case: tagged 购车 about six months ago and
            // 资金需求 this month.
            if rng.random_bool(0.08) {
                let at = between(&mut rng, now - Duration::days(195), now - Duration::days(165)).max(added_at);
                tags.push((("活动".to_owned(), "购车意向"), TagSource::Manual, at));
                if rng.random_bool(0.5) {
                    let at = between(&mut rng, now - Duration::days(20), now).max(added_at);
                    tags.push((("活动".to_owned(), "资金需求"), TagSource::Manual, at));
                }
            } else if rng.random_bool(0.04) {
                add!(&mut rng, "活动", "资金需求", TagSource::Manual);
            }
            let regional =
                if region_group == "华北区域标签" { ("北方肤质", 0.15) } else { ("南方气候", 0.2) };
            if rng.random_bool(regional.1) {
                add!(&mut rng, region_group, regional.0, TagSource::Manual);
            }
            if store == "sz01" && rng.random_bool(0.05) {
                add!(&mut rng, "门店专属", "特殊护理需求", TagSource::Manual);
            }
            for (owner, tag, p) in PERSONAL {
                if store_owner(store) == Some(*owner) && rng.random_bool(*p) {
                    add!(&mut rng, &format!("@{owner}"), tag, TagSource::Manual);
                }
            }
            out.push(DemoCustomer {
                external_id: format!("demo-{n:04}"),
                store,
                owner: store_owner(store),
                name,
                phone,
                gender,
                birth_date,
                city,
                industry,
                channel,
                total_spend_cents,
                order_count,
                last_order_at,
                added_at,
                tags,
            });
        }
    }
    out
}

/// Loads (or completes) the demo data.
///
/// # Errors
/// Database errors; nothing of a failed run's customer part is committed.
pub async fn seed_demo(db: &DatabaseConnection, authz: &Authz, offset: FixedOffset) -> anyhow::Result<SeedReport> {
    let mut report = seed_demo_sized(db, authz, DEMO_CUSTOMERS_PER_STORE, offset).await?;
    seed_demo_rules(db, authz, offset, &mut report).await?;
    Ok(report)
}

/// The automatic-tagging rules of the articles, enabled at HQ, and
/// customer events (by the customers' `demo` external ids, with fixed
/// keys) that make each of them fire on some customers. Only in the full
/// demo: the small seed of the tests keeps no rules and no events.
/// Idempotent: rules are found by name, events by key.
async fn seed_demo_rules(
    db: &DatabaseConnection,
    authz: &Authz,
    offset: FixedOffset,
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    use crate::service::rules::{eval, event::RawEvent, record, store};

    let units = org_unit::Entity::find().order_by_asc(org_unit::Column::Path).all(db).await?;
    let hq = units.iter().find(|u| u.code == "hq").context("no hq unit")?.id;
    let admin = staff::Entity::find().filter(staff::Column::Login.eq("admin")).one(db).await?.context("no admin")?;
    let err = |e: crate::error::AppError| anyhow::anyhow!(e.message());
    // The seed bound the demo roles a moment ago: act under that policy.
    authz.refresh().await.map_err(err)?;
    let principal = authz.principal(admin, std::sync::Arc::new(crate::authz::OrgTree::new(units)));

    // Tags that only rules put on, in a group of their own.
    let group = match tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.eq(hq))
        .filter(tag_group::Column::Name.eq(AUTO_GROUP))
        .one(db)
        .await?
    {
        Some(group) => group,
        None => {
            report.tag_groups += 1;
            tag_group::ActiveModel {
                id: NotSet,
                org_unit_id: Set(hq),
                name: Set(AUTO_GROUP.to_owned()),
                description: Set("由自动打标规则维护".to_owned()),
                category: Set(TagCategory::Behavior),
                visibility_class: Set("behavior".to_owned()),
                exclusive: Set(false),
                naming_pattern: Set(None),
                version: Set(1),
                created_at: Set(anchor()),
                updated_at: Set(anchor()),
            }
            .insert(db)
            .await?
        }
    };
    for name in ["活跃客户", "产品兴趣"] {
        upsert_tag(db, Some(group.id), None, name, None, report).await?;
    }
    let tag_of = |group: &'static str, name: &'static str| async move {
        let group = tag_group::Entity::find()
            .filter(tag_group::Column::OrgUnitId.eq(hq))
            .filter(tag_group::Column::Name.eq(group))
            .one(db)
            .await?
            .with_context(|| format!("no group {group}"))?;
        let tag = tag::Entity::find()
            .filter(tag::Column::GroupId.eq(group.id))
            .filter(tag::Column::Name.eq(name))
            .one(db)
            .await?
            .with_context(|| format!("no tag {name}"))?;
        anyhow::Ok(tag.id)
    };
    for DemoRule { name, condition, op, tag: (group, tag), enabled, schedule } in DEMO_RULES {
        let exists = entity::rule::Entity::find()
            .filter(entity::rule::Column::OrgUnitId.eq(hq))
            .filter(entity::rule::Column::Name.eq(*name))
            .one(db)
            .await?;
        if exists.is_some() {
            continue;
        }
        let draft = store::RuleDraft {
            org_unit: crate::domain::OrgUnitId(hq),
            name: (*name).to_owned(),
            condition: (*condition).to_owned(),
            actions: vec![eval::Action { op: *op, tag_id: tag_of(group, tag).await?, ttl_seconds: None }],
            override_manual_removal: false,
            priority: 0,
            enabled: *enabled,
            schedule: schedule.map(str::to_owned),
        };
        store::create_rule(db, &principal, draft).await.map_err(err)?;
    }

    let identities = customer_identity::Entity::find()
        .filter(customer_identity::Column::Provider.eq(DEMO_PROVIDER))
        .order_by_asc(customer_identity::Column::Id)
        .all(db)
        .await?;
    let last_orders: HashMap<i64, Option<DateTime<Utc>>> = customer::Entity::find()
        .filter(customer::Column::Id.is_in(identities.iter().map(|i| i.customer_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c.last_order_at))
        .collect();
    let last_order_of: Vec<Option<DateTime<Utc>>> =
        identities.iter().map(|i| last_orders.get(&i.customer_id).copied().flatten()).collect();
    let externals: Vec<String> = identities.into_iter().map(|i| i.external_id).collect();
    let day = |back: i64, hour: u32, minute: u32| {
        let date = anchor().with_timezone(&offset).date_naive() - Duration::days(back);
        offset.from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap_or_default()).single().map(|t| t.to_utc())
    };
    let mut events = Vec::new();
    let mut event = |customer: &str, key: String, kind: &str, at: Option<DateTime<Utc>>| {
        events.push(RawEvent {
            external_id: Some((DEMO_PROVIDER.to_owned(), customer.to_owned())),
            kind: kind.to_owned(),
            occurred_at: at,
            key,
            ..RawEvent::default()
        });
        events.len() - 1
    };
    let mut texts: Vec<(usize, &str, &str)> = Vec::new();
    for (i, customer) in externals.iter().enumerate() {
        match i % 10 {
            // 询价 in a chat; a plain hello for comparison.
            0 => {
                let e = event(customer, format!("demo-msg-{i}"), "MESSAGE_RECEIVED", day(2, 10, 30));
                texts.push((e, "text", if i % 20 == 0 { "你好，这款车现在什么价格？想询价" } else { "你好" }));
            }
            // 产品介绍 clicked.
            1 => {
                let e = event(customer, format!("demo-click-{i}"), "LINK_CLICKED", day(3, 14, 0));
                texts.push((e, "url", "https://demo.example.com/intro"));
                texts.push((e, "title", if i % 20 == 1 { "产品介绍" } else { "门店地址" }));
            }
            // Group joins: three days in a row, or with a gap.
            2 => {
                let days: &[i64] = if i % 20 == 2 { &[3, 2, 1] } else { &[4, 2, 1] };
                for d in days {
                    let e = event(customer, format!("demo-group-{i}-{d}"), "GROUP_JOINED", day(*d, 20, 0));
                    texts.push((e, "group", "新品体验群"));
                }
            }
            // Added at 17:59 or at 18:01.
            3 => {
                let (h, m) = if i % 20 == 3 { (18, 1) } else { (17, 59) };
                event(customer, format!("demo-added-{i}"), "CUSTOMER_ADDED", day(5, h, m));
            }
            // Paid.
            4 if i % 20 == 4 => {
                let e = event(customer, format!("demo-paid-{i}"), "ORDER_PAID", day(1, 12, 0));
                texts.push((e, "orderId", "SO-DEMO"));
            }
            // Bought once, long ago, and never again: the scheduled
            // absence rule finds them (流失客户).
            5 if i % 20 == 5 && last_order_of[i].is_none() => {
                let e = event(customer, format!("demo-old-order-{i}"), "ORDER_PAID", day(250, 15, 0));
                texts.push((e, "orderId", "SO-OLD"));
            }
            // The order system's record of the last order: what the
            // scheduled value tiers (消费等级) read for recency.
            6 => {
                if let Some(at) = last_order_of[i] {
                    let e = event(customer, format!("demo-order-{i}"), "ORDER_PAID", Some(at));
                    texts.push((e, "orderId", "SO-LAST"));
                }
            }
            _ => {}
        }
    }
    for (e, field, value) in texts {
        let value = Some(value.to_owned());
        match field {
            "text" => events[e].text = value,
            "url" => events[e].url = value,
            "title" => events[e].title = value,
            "group" => events[e].group = value,
            _ => events[e].order_id = value,
        }
    }
    for e in events.iter_mut().filter(|e| e.kind == "ORDER_PAID") {
        e.amount = Some(29_900);
    }
    let limits = crate::config::Limits::default();
    let mut changes = 0;
    let mut rest = events;
    while !rest.is_empty() {
        let batch: Vec<RawEvent> = rest.drain(..rest.len().min(limits.max_events_per_batch)).collect();
        let outcome = record::record_events(db, &principal, &limits, offset, batch).await.map_err(err)?;
        if let Some(first) = outcome.errors.first() {
            anyhow::bail!("demo event {} refused: {}", first.index, first.error.message());
        }
        changes += outcome.tag_changes;
    }
    tracing::info!(tag_changes = changes, "demo events recorded");

    // The scheduled rules run once now, so that they have fired too (a
    // second seed finds today's slot run).
    let scheduler = crate::service::rules::schedule::Scheduler {
        db: db.clone(),
        index: None,
        limits,
        offset,
        instance: "seed-demo".to_owned(),
    };
    for run in scheduler.run_due(Utc::now()).await.map_err(err)? {
        tracing::info!(rule = run.rule_id, customers_changed = run.customers_changed, status = ?run.status, "demo scheduled run");
    }
    Ok(())
}

/// The group of the tags only rules put on (full demo).
const AUTO_GROUP: &str = "自动标签";

/// One of the articles' rules.
struct DemoRule {
    name: &'static str,
    condition: &'static str,
    op: crate::service::rules::eval::ActionOp,
    /// (group, tag) at HQ.
    tag: (&'static str, &'static str),
    enabled: bool,
    /// `DAILY HH:MM` for a scheduled rule.
    schedule: Option<&'static str>,
}

const fn demo_rule(
    name: &'static str,
    condition: &'static str,
    op: crate::service::rules::eval::ActionOp,
    tag: (&'static str, &'static str),
    enabled: bool,
) -> DemoRule {
    DemoRule { name, condition, op, tag, enabled, schedule: None }
}

/// A scheduled demo rule, enabled: every day at `at`.
const fn scheduled(
    name: &'static str,
    condition: &'static str,
    tag: (&'static str, &'static str),
    at: &'static str,
) -> DemoRule {
    DemoRule {
        name,
        condition,
        op: crate::service::rules::eval::ActionOp::Move,
        tag,
        enabled: true,
        schedule: Some(at),
    }
}

/// The articles' rules.
const DEMO_RULES: &[DemoRule] = {
    use crate::service::rules::eval::ActionOp::{Add, Move};
    &[
        demo_rule("询价关键词", "message contains \"询价\"", Add, ("活动", "询价"), true),
        demo_rule(
            "产品介绍点击",
            "count(click where title = \"产品介绍\", 7d) >= 1",
            Add,
            (AUTO_GROUP, "产品兴趣"),
            true,
        ),
        demo_rule("连续三天入群", "streak(group_joined, 3d)", Add, (AUTO_GROUP, "活跃客户"), true),
        demo_rule("晚间咨询", "customer_added at 18:00–24:00", Add, ("活动", "晚间咨询"), true),
        demo_rule("订单支付", "count(order_paid, 1d) >= 1", Add, ("活动", "已完成交易"), true),
        // Every demo customer has a seeded stage, which a second seed puts
        // back beside a moved one: the stage move stays disabled in the demo.
        demo_rule("付费客户", "count(order_paid, 1d) >= 1", Move, ("客户阶段", "付费客户"), false),
        // Absence becomes true with time and no event: a scheduled rule,
        // over customers who ordered at all.
        scheduled(
            "流失客户",
            "count(order_paid, 3650d) >= 1 AND no order_paid for 180d",
            ("客户阶段", "流失客户"),
            "DAILY 03:00",
        ),
        // Value tiers from recency (an order in the last 90 days), frequency
        // (orders) and money (spend, in cents), recomputed daily; the five
        // conditions cover every customer with an order, once each.
        scheduled(
            "消费等级 S",
            "count(order_paid, 90d) >= 1 AND spend >= 2000000 AND orders >= 5",
            ("消费等级", "S级"),
            "DAILY 03:30",
        ),
        scheduled(
            "消费等级 A",
            "count(order_paid, 90d) >= 1 AND spend >= 500000 AND NOT (spend >= 2000000 AND orders >= 5)",
            ("消费等级", "A级"),
            "DAILY 03:30",
        ),
        scheduled("消费等级 B", "count(order_paid, 90d) >= 1 AND spend < 500000", ("消费等级", "B级"), "DAILY 03:30"),
        scheduled(
            "消费等级 C",
            "count(order_paid, 365d) >= 1 AND NOT count(order_paid, 90d) >= 1",
            ("消费等级", "C级"),
            "DAILY 03:30",
        ),
        scheduled(
            "消费等级 D",
            "count(order_paid, 3650d) >= 1 AND no order_paid for 365d",
            ("消费等级", "D级"),
            "DAILY 03:30",
        ),
    ]
};

/// [`seed_demo`] with `per_store` customers in each store (tests use a few).
///
/// # Errors
/// As [`seed_demo`].
pub async fn seed_demo_sized(
    db: &DatabaseConnection,
    authz: &Authz,
    per_store: usize,
    offset: FixedOffset,
) -> anyhow::Result<SeedReport> {
    let mut report = SeedReport::default();
    let units = seed_org(db, &mut report).await?;
    let staff = seed_staff(db, authz, &units, &mut report).await?;
    let tags = seed_library(db, &units, &staff, &mut report).await?;
    seed_segments(db, &units, &staff, &tags, offset, &mut report).await?;
    let customers = generate_customers(per_store);
    let txn = db.begin().await?;
    seed_customers(&txn, &customers, &units, &staff, &tags, &mut report).await?;
    seed_former_staff(&txn, &staff).await?;
    txn.commit().await?;
    Ok(report)
}

/// WeCom identities of two demo members, and the former employee's
/// departure: deactivated by the admin, with an audit row; the customers
/// stay with their inactive owner until a manager hands them on.
async fn seed_former_staff(
    txn: &DatabaseTransaction,
    staff: &HashMap<&'static str, staff::Model>,
) -> anyhow::Result<()> {
    for (login, userid) in WECOM_IDS {
        staff_identity::Entity::insert(staff_identity::ActiveModel {
            id: NotSet,
            staff_id: Set(staff[login].id),
            kind: Set(crate::auth::IDENTITY_WECOM.to_owned()),
            value: Set((*userid).to_owned()),
            created_at: Set(anchor()),
        })
        .on_conflict_do_nothing_on([staff_identity::Column::Kind, staff_identity::Column::Value])
        .exec_without_returning(txn)
        .await?;
    }
    let former = &staff[FORMER_SALES];
    let left = staff::Entity::update_many()
        .col_expr(staff::Column::Active, sea_orm::sea_query::Expr::value(false))
        .filter(staff::Column::Id.eq(former.id))
        .filter(staff::Column::Active.eq(true))
        .exec(txn)
        .await?
        .rows_affected;
    if left > 0 {
        crate::service::audit::record(
            txn,
            crate::service::audit::AuditEntry::ok(StaffId(staff["admin"].id), "staff.deactivate", "staff", former.id)
                .in_unit(former.home_org_unit_id)
                .with_detail(serde_json::json!({ "login": former.login, "customersKept": "all" })),
        )
        .await?;
    }
    Ok(())
}

async fn seed_org(
    db: &DatabaseConnection,
    report: &mut SeedReport,
) -> anyhow::Result<HashMap<&'static str, org_unit::Model>> {
    let mut units: HashMap<&'static str, org_unit::Model> = HashMap::new();
    for (code, name, kind, parent) in ORG {
        let existing = org_unit::Entity::find().filter(org_unit::Column::Code.eq(*code)).one(db).await?;
        let unit = match existing {
            Some(unit) => unit,
            None => {
                let parent = parent.map(|p| units[p].clone());
                report.org_units += 1;
                org_unit::ActiveModel {
                    id: NotSet,
                    code: Set((*code).to_owned()),
                    name: Set((*name).to_owned()),
                    kind: Set(*kind),
                    parent_id: Set(parent.as_ref().map(|p| p.id)),
                    path: Set(format!("{}{code}/", parent.as_ref().map(|p| p.path.as_str()).unwrap_or(""))),
                    created_at: Set(anchor()),
                }
                .insert(db)
                .await?
            }
        };
        units.insert(code, unit);
    }
    Ok(units)
}

async fn seed_staff(
    db: &DatabaseConnection,
    authz: &Authz,
    units: &HashMap<&'static str, org_unit::Model>,
    report: &mut SeedReport,
) -> anyhow::Result<HashMap<&'static str, staff::Model>> {
    let mut out = HashMap::new();
    for (login, display, home, role, bound_at) in STAFF {
        let existing = staff::Entity::find().filter(staff::Column::Login.eq(*login)).one(db).await?;
        let member = match existing {
            Some(member) => member,
            None => {
                report.staff += 1;
                staff::ActiveModel {
                    id: NotSet,
                    login: Set((*login).to_owned()),
                    display_name: Set((*display).to_owned()),
                    home_org_unit_id: Set(units[home].id),
                    active: Set(true),
                    created_at: Set(anchor()),
                    ..Default::default()
                }
                .insert(db)
                .await?
            }
        };
        if authz.assign_role(StaffId(member.id), role, &units[bound_at].path).await? {
            report.role_bindings += 1;
        }
        out.insert(*login, member);
    }
    Ok(out)
}

/// Saved segments of the articles, at HQ, by the HQ marketer. Stored with
/// tags by id, as the API stores them.
async fn seed_segments(
    db: &DatabaseConnection,
    units: &HashMap<&'static str, org_unit::Model>,
    staff: &HashMap<&'static str, staff::Model>,
    tags: &TagIndex,
    offset: FixedOffset,
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    let t = |group: &str, name: &str| format!("#{}", tags[&(group.to_owned(), name.to_owned())]);
    let specs = [
        (
            "母亲节促销",
            "母亲节活动：本地、有3-6岁孩子的女性客户",
            format!("gender = FEMALE AND tag({}) AND tag({})", t("家庭情况", "孩子3-6岁"), t("家庭情况", "本地居民")),
        ),
        (
            "房贷有车深圳客户",
            "交叉分析：深圳的房贷 + 有车客户，不含流失客户",
            format!(
                "tag({}) AND tag({}) AND NOT tag({}) AND city = \"深圳\"",
                t("资产状况", "房贷用户"),
                t("资产状况", "有车一族"),
                t("客户阶段", "流失客户")
            ),
        ),
        ("高价值客户", "消费等级 S 或 A", format!("anyTag({}, {})", t("消费等级", "S级"), t("消费等级", "A级"))),
        (
            "购车后资金需求",
            "半年前标记购车意向、本月标记资金需求",
            format!(
                "taggedBetween({}, \"2026-04-15\", \"2026-05-20\") AND taggedBetween({}, \"2026-10-10\", \"2026-11-01\")",
                t("活动", "购车意向"),
                t("活动", "资金需求")
            ),
        ),
    ];
    let hq = units["hq"].id;
    for (name, description, expression) in specs {
        let exists = segment::Entity::find()
            .filter(segment::Column::OrgUnitId.eq(hq))
            .filter(segment::Column::Name.eq(name))
            .one(db)
            .await?
            .is_some();
        if exists {
            continue;
        }
        report.segments += 1;
        segment::ActiveModel {
            id: NotSet,
            org_unit_id: Set(hq),
            name: Set(name.to_owned()),
            description: Set(description.to_owned()),
            kind: Set(SegmentKind::Dynamic),
            expression: Set(stored_form(&expression, offset)?),
            owner_staff_id: Set(staff["hq.marketing"].id),
            member_count: Set(None),
            created_at: Set(anchor()),
            updated_at: Set(anchor()),
        }
        .insert(db)
        .await?;
    }
    Ok(())
}

/// The stored form of a demo expression written with the organisation's
/// dates: a date bound is midnight at `offset`, stored as a UTC instant
/// (stored expressions read dates in UTC).
fn stored_form(text: &str, offset: FixedOffset) -> anyhow::Result<String> {
    let expr = crate::segment::text::parse(text, offset).map_err(|e| anyhow::anyhow!("demo segment {text}: {e}"))?;
    Ok(crate::segment::text::print(&expr, &|_, _| None, FixedOffset::east_opt(0).context("UTC")?))
}

/// Tag ids by (group name, or `@login` for personal tags; tag name).
type TagIndex = HashMap<(String, String), i64>;

async fn seed_library(
    db: &DatabaseConnection,
    units: &HashMap<&'static str, org_unit::Model>,
    staff: &HashMap<&'static str, staff::Model>,
    report: &mut SeedReport,
) -> anyhow::Result<TagIndex> {
    let mut index = TagIndex::new();
    for spec in GROUPS {
        let unit = &units[spec.unit];
        let existing = tag_group::Entity::find()
            .filter(tag_group::Column::OrgUnitId.eq(unit.id))
            .filter(tag_group::Column::Name.eq(spec.name))
            .one(db)
            .await?;
        let group = match existing {
            Some(group) => group,
            None => {
                report.tag_groups += 1;
                tag_group::ActiveModel {
                    id: NotSet,
                    org_unit_id: Set(unit.id),
                    name: Set(spec.name.to_owned()),
                    description: Set(String::new()),
                    category: Set(spec.category),
                    visibility_class: Set(spec.class.to_owned()),
                    exclusive: Set(spec.exclusive),
                    naming_pattern: Set(spec.pattern.map(str::to_owned)),
                    version: Set(1),
                    created_at: Set(anchor()),
                    updated_at: Set(anchor()),
                }
                .insert(db)
                .await?
            }
        };
        for (name, canonical) in spec.tags {
            let canonical_id = canonical.map(|(g, t)| index[&(g.to_owned(), t.to_owned())]);
            let id = upsert_tag(db, Some(group.id), None, name, canonical_id, report).await?;
            index.insert((spec.name.to_owned(), (*name).to_owned()), id);
        }
    }
    for (owner, name, _) in PERSONAL {
        let id = upsert_tag(db, None, Some(staff[owner].id), name, None, report).await?;
        index.insert((format!("@{owner}"), (*name).to_owned()), id);
    }
    Ok(index)
}

async fn upsert_tag(
    db: &DatabaseConnection,
    group_id: Option<i64>,
    owner: Option<i64>,
    name: &str,
    canonical: Option<i64>,
    report: &mut SeedReport,
) -> anyhow::Result<i64> {
    let mut query = tag::Entity::find().filter(tag::Column::Name.eq(name));
    query = match (group_id, owner) {
        (Some(g), _) => query.filter(tag::Column::GroupId.eq(g)),
        (None, Some(o)) => query.filter(tag::Column::OwnerStaffId.eq(o)),
        (None, None) => anyhow::bail!("a tag needs a group or an owner"),
    };
    if let Some(existing) = query.one(db).await? {
        return Ok(existing.id);
    }
    report.tags += 1;
    let created = tag::ActiveModel {
        id: NotSet,
        group_id: Set(group_id),
        owner_staff_id: Set(owner),
        name: Set(name.to_owned()),
        description: Set(String::new()),
        status: Set(TagStatus::Active),
        aliases: Set(serde_json::json!([])),
        canonical_tag_id: Set(canonical),
        merged_into_id: Set(None),
        ttl_seconds: Set(None),
        version: Set(1),
        created_at: Set(anchor()),
        updated_at: Set(anchor()),
    }
    .insert(db)
    .await?;
    Ok(created.id)
}

async fn seed_customers(
    txn: &DatabaseTransaction,
    customers: &[DemoCustomer],
    units: &HashMap<&'static str, org_unit::Model>,
    staff: &HashMap<&'static str, staff::Model>,
    tags: &TagIndex,
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    let identities: HashMap<String, i64> = customer_identity::Entity::find()
        .filter(customer_identity::Column::Provider.eq(DEMO_PROVIDER))
        .all(txn)
        .await?
        .into_iter()
        .map(|i| (i.external_id, i.customer_id))
        .collect();
    let existing: HashMap<i64, customer::Model> = customer::Entity::find()
        .filter(customer::Column::Id.is_in(identities.values().copied()))
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();

    let mut ids = Vec::with_capacity(customers.len());
    for demo in customers {
        let wanted = customer::Model {
            id: 0,
            org_unit_id: units[demo.store].id,
            owner_staff_id: demo.owner.map(|o| staff[o].id),
            name: demo.name.clone(),
            phone: Some(demo.phone.clone()),
            gender: demo.gender,
            birth_date: Some(demo.birth_date),
            city: Some(demo.city.clone()),
            industry: demo.industry.clone(),
            channel: Some(demo.channel.clone()),
            total_spend_cents: demo.total_spend_cents,
            order_count: demo.order_count,
            last_order_at: demo.last_order_at,
            added_at: demo.added_at,
            updated_at: demo.added_at,
            version: 1,
            merged_into_id: None,
            merged_at: None,
        };
        let current = identities.get(&demo.external_id).and_then(|id| existing.get(id));
        let id = match current {
            Some(current) => {
                let same = customer::Model {
                    id: current.id,
                    version: current.version,
                    updated_at: current.updated_at,
                    ..wanted.clone()
                };
                if *current != same {
                    report.customers_updated += 1;
                    let mut active: customer::ActiveModel = same.into();
                    active.id = sea_orm::ActiveValue::Unchanged(current.id);
                    active.version = Set(current.version + 1);
                    active.updated_at = Set(Utc::now());
                    active.reset_all().update(txn).await?;
                }
                current.id
            }
            None => {
                report.customers_created += 1;
                let mut active: customer::ActiveModel = wanted.into();
                active.id = NotSet;
                let created = active.insert(txn).await?;
                customer_identity::ActiveModel {
                    id: NotSet,
                    customer_id: Set(created.id),
                    provider: Set(DEMO_PROVIDER.to_owned()),
                    external_id: Set(demo.external_id.clone()),
                    created_at: Set(demo.added_at),
                }
                .insert(txn)
                .await?;
                created.id
            }
        };
        ids.push(id);
    }

    let held: HashSet<(i64, i64)> = customer_tag::Entity::find()
        .filter(customer_tag::Column::CustomerId.is_in(ids.iter().copied()))
        .all(txn)
        .await?
        .into_iter()
        .map(|a| (a.customer_id, a.tag_id))
        .collect();
    // A rule may have moved a customer within an exclusive group (客户阶段,
    // 消费等级) since the last seed: the seeded tag is not put back beside
    // the one it holds.
    let exclusive_group_of: HashMap<i64, &str> = tags
        .iter()
        .filter(|((group, _), _)| GROUPS.iter().any(|g| g.exclusive && g.name == group.as_str()))
        .map(|((group, _), id)| (*id, group.as_str()))
        .collect();
    let holds_in_group: HashSet<(i64, &str)> =
        held.iter().filter_map(|(c, t)| exclusive_group_of.get(t).map(|g| (*c, *g))).collect();
    let mut assignments = Vec::new();
    let mut events = Vec::new();
    for (demo, id) in customers.iter().zip(&ids) {
        let tagger = demo.owner.map(|o| staff[o].id);
        for ((group, name), source, at) in &demo.tags {
            let tag_id =
                *tags.get(&(group.clone(), (*name).to_owned())).with_context(|| format!("demo tag {group}/{name}"))?;
            if held.contains(&(*id, tag_id))
                || holds_in_group.contains(&(*id, group.as_str()))
                || assignments
                    .iter()
                    .any(|a: &customer_tag::ActiveModel| a.customer_id.as_ref() == id && a.tag_id.as_ref() == &tag_id)
            {
                continue;
            }
            let tagged_by = if *source == TagSource::Manual { tagger } else { None };
            assignments.push(customer_tag::ActiveModel {
                customer_id: Set(*id),
                tag_id: Set(tag_id),
                source: Set(*source),
                source_ref: Set((*source != TagSource::Manual).then(|| "seed-demo".to_owned())),
                tagged_by: Set(tagged_by),
                tagged_at: Set(*at),
                expires_at: Set(None),
            });
            events.push(tag_event::ActiveModel {
                seq: NotSet,
                customer_id: Set(*id),
                tag_id: Set(tag_id),
                op: Set(TagOp::Add),
                source: Set(*source),
                source_ref: Set(Some("seed-demo".to_owned())),
                actor_staff_id: Set(tagged_by),
                occurred_at: Set(*at),
            });
        }
    }
    report.assignments = assignments.len();
    // Events in time order, so the log reads as the history it stands for.
    events.sort_by_key(|e| *e.occurred_at.as_ref());
    for chunk in assignments.chunks(500) {
        customer_tag::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
    }
    for chunk in events.chunks(500) {
        tag_event::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
    }
    Ok(())
}
