//! Why a tag is there: a rule's change records the rule, its version and
//! the triggering event in the assignment's and the tag event's
//! `sourceRef` (`rule:12@v3/event:8812`), and this turns it back into a
//! sentence: `规则 晚间咨询 v3: customer_added at 19:04 (+08:00), event #8812`.

use chrono::{DateTime, FixedOffset, Utc};
use entity::{customer_event, enums::CustomerEventKind, enums::TagSource, rule_run, rule_version};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::error::AppResult;

/// The `sourceRef` of a rule's change.
pub fn source_ref(rule_id: i64, version: i32, event_id: i64) -> String {
    format!("rule:{rule_id}@v{version}/event:{event_id}")
}

/// The `sourceRef` of a change a scheduled run of a rule made.
pub fn run_source_ref(rule_id: i64, version: i32, run_id: i64) -> String {
    format!("rule:{rule_id}@v{version}/run:{run_id}")
}

/// A parsed rule `sourceRef`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_id: i64,
    pub version: i32,
    pub event_id: Option<i64>,
    /// The scheduled run that made the change.
    pub run_id: Option<i64>,
}

/// Reads a `sourceRef` written by [`source_ref`] or [`run_source_ref`];
/// `None` for anything else.
pub fn parse_source_ref(raw: &str) -> Option<RuleRef> {
    let rest = raw.strip_prefix("rule:")?;
    let (rule, event, run) = match rest.split_once('/') {
        Some((rule, tail)) => match (tail.strip_prefix("event:"), tail.strip_prefix("run:")) {
            (Some(event), _) => (rule, Some(event.parse().ok()?), None),
            (None, Some(run)) => (rule, None, Some(run.parse().ok()?)),
            (None, None) => return None,
        },
        None => (rest, None, None),
    };
    let (id, version) = rule.split_once("@v")?;
    Some(RuleRef { rule_id: id.parse().ok()?, version: version.parse().ok()?, event_id: event, run_id: run })
}

/// The name the rule language gives an event kind.
pub fn kind_word(kind: CustomerEventKind) -> &'static str {
    match kind {
        CustomerEventKind::MessageReceived => "message",
        CustomerEventKind::LinkClicked => "click",
        CustomerEventKind::GroupJoined => "group_joined",
        CustomerEventKind::GroupLeft => "group_left",
        CustomerEventKind::OrderPaid => "order_paid",
        CustomerEventKind::CustomerAdded => "customer_added",
        CustomerEventKind::FormSubmitted => "form_submitted",
        CustomerEventKind::Custom => "custom",
    }
}

/// Why an automatic assignment or change happened.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub rule: RuleRef,
    pub rule_name: Option<String>,
    pub event: Option<customer_event::Model>,
    /// The scheduled run that made the change.
    pub run: Option<rule_run::Model>,
    /// The org unit of the event's customer (an order amount is guarded
    /// there as spend is).
    pub customer_org_unit: Option<i64>,
    pub text: String,
}

/// The explanation of a change with this provenance on this customer;
/// `None` for changes no rule made.
///
/// # Errors
/// Database errors.
pub async fn explain(
    db: &impl ConnectionTrait,
    offset: FixedOffset,
    customer_id: i64,
    source: TagSource,
    source_ref: Option<&str>,
) -> AppResult<Option<Explanation>> {
    let Some(rule) = source_ref.filter(|_| source == TagSource::Rule).and_then(parse_source_ref) else {
        return Ok(None);
    };
    let version = rule_version::Entity::find()
        .filter(rule_version::Column::RuleId.eq(rule.rule_id))
        .filter(rule_version::Column::Version.eq(rule.version))
        .one(db)
        .await?;
    let event = match rule.event_id {
        Some(id) => customer_event::Entity::find_by_id(id).one(db).await?.filter(|e| e.customer_id == customer_id),
        None => None,
    };
    let customer_org_unit = match &event {
        Some(_) => entity::customer::Entity::find_by_id(customer_id).one(db).await?.map(|c| c.org_unit_id),
        None => None,
    };
    let run = match rule.run_id {
        Some(id) => rule_run::Entity::find_by_id(id).one(db).await?.filter(|r| r.rule_id == rule.rule_id),
        None => None,
    };
    let rule_name = version.map(|v| v.name);
    let name = rule_name.as_deref().unwrap_or("?");
    let text = match &run {
        Some(run) => run_sentence(name, rule.version, run.id, &run.schedule_key),
        None => sentence(name, rule.version, event.as_ref().map(|e| (e.kind, e.occurred_at, e.id)), offset),
    };
    Ok(Some(Explanation { rule, rule_name, event, run, customer_org_unit, text }))
}

/// The explanation's text: `规则 晚间咨询 v3: customer_added at 19:04
/// (+08:00), event #8812`, the event's time in the organisation's offset.
/// A dry run words its predictions the same way.
pub fn sentence(
    rule_name: &str,
    version: i32,
    trigger: Option<(CustomerEventKind, DateTime<Utc>, i64)>,
    offset: FixedOffset,
) -> String {
    let mut text = format!("规则 {rule_name} v{version}");
    if let Some((kind, at, id)) = trigger {
        let local = at.with_timezone(&offset);
        text.push_str(&format!(": {} at {} ({offset}), event #{id}", kind_word(kind), local.format("%H:%M")));
    }
    text
}

/// The explanation of a scheduled run's change: `规则 流失客户 v2:
/// scheduled run #12 at 2026-12-02 03:00 (+08:00)`, the slot as its key
/// writes it (in the organisation's offset).
pub fn run_sentence(rule_name: &str, version: i32, run_id: i64, schedule_key: &str) -> String {
    let slot = match schedule_key.split_once('T') {
        Some((date, rest)) if rest.len() > 5 => format!("{date} {} ({})", &rest[..5], &rest[5..]),
        _ => schedule_key.to_owned(),
    };
    format!("规则 {rule_name} v{version}: scheduled run #{run_id} at {slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_ref_round_trips_and_others_are_not_rules() {
        let raw = source_ref(12, 3, 8812);
        assert_eq!(raw, "rule:12@v3/event:8812");
        assert_eq!(
            parse_source_ref(&raw),
            Some(RuleRef { rule_id: 12, version: 3, event_id: Some(8812), run_id: None })
        );
        assert_eq!(
            parse_source_ref("rule:12@v3"),
            Some(RuleRef { rule_id: 12, version: 3, event_id: None, run_id: None })
        );
        assert_eq!(
            parse_source_ref(&run_source_ref(12, 2, 7)),
            Some(RuleRef { rule_id: 12, version: 2, event_id: None, run_id: Some(7) })
        );
        assert_eq!(
            run_sentence("流失客户", 2, 12, "2026-12-02T03:00+08:00"),
            "规则 流失客户 v2: scheduled run #12 at 2026-12-02 03:00 (+08:00)"
        );
        for other in ["import:7", "rule:x@v1", "rule:1@v1/evt:2", ""] {
            assert_eq!(parse_source_ref(other), None, "{other}");
        }
    }
}
