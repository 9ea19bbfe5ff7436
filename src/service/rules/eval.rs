//! The evaluator: a pure function of a customer's events, attributes and
//! tags, the rules that apply to the customer, and an instant, to the tag
//! changes the rules make. No database, no clock: the event-driven path,
//! a from-scratch recomputation and a dry run all call [`fire`].
//!
//! Every event predicate looks at the events that happened at or before
//! the instant of evaluation (the triggering event's `occurredAt`), so an
//! event that arrives late is judged by what was true when it happened.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Timelike, Utc};
use entity::enums::{CustomerEventKind, Gender, TagOp};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::condition::{Condition, EventFilter, FieldMatch, NumberAttr, TagName};

/// One recorded customer event, as the evaluator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFact {
    pub id: i64,
    pub kind: CustomerEventKind,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
    /// When it was recorded (and first judged): a late event's replay
    /// leaves alone what people changed since (`record`).
    pub recorded_at: DateTime<Utc>,
}

impl EventFact {
    /// A field of the payload as text (numbers printed).
    fn field(&self, name: &str) -> Option<String> {
        match self.payload.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

/// The customer's attributes that conditions may test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    pub city: Option<String>,
    pub channel: Option<String>,
    pub gender: Option<Gender>,
    pub spend_cents: i64,
    pub orders: i64,
    pub birth_date: Option<NaiveDate>,
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionOp {
    /// Puts the tag on (replacing a tag of its exclusive group, if any).
    Add,
    /// Takes the tag off.
    Remove,
    /// Moves the customer to this tag of an exclusive group.
    Move,
}

/// One THEN of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub op: ActionOp,
    pub tag_id: i64,
    /// The assignment lapses this long after it is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// A rule ready to evaluate: its condition with tag names resolved.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: i64,
    pub version: i32,
    pub name: String,
    pub priority: i32,
    pub condition: Condition,
    /// Tag names (and `#ids`) of the condition → tag ids.
    pub tag_ids: HashMap<TagName, i64>,
    pub actions: Vec<Action>,
    pub override_manual_removal: bool,
    regexes: HashMap<String, Regex>,
    /// The condition's event kinds and the tags it reads, worked out once:
    /// [`fire`] asks for them for every rule on every event.
    kinds: Vec<CustomerEventKind>,
    read_tags: BTreeSet<i64>,
}

impl CompiledRule {
    /// # Errors
    /// A message when a tag of the condition is not in `tag_ids` or a
    /// regular expression does not compile (both are checked at save
    /// time, so this means the stored rule is damaged).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        version: i32,
        name: String,
        priority: i32,
        condition: Condition,
        tag_ids: HashMap<TagName, i64>,
        actions: Vec<Action>,
        override_manual_removal: bool,
    ) -> Result<Self, String> {
        let mut regexes = HashMap::new();
        let mut missing = None;
        condition.walk(&mut |c| match c {
            Condition::MessageMatches(p) => {
                if let Ok(re) = regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                    regexes.insert(p.clone(), re);
                } else {
                    missing = Some(format!("regular expression {p:?}"));
                }
            }
            Condition::Tag(t) if !tag_ids.contains_key(&t.name) => missing = Some(format!("tag {:?}", t.name)),
            _ => {}
        });
        if let Some(what) = missing {
            return Err(format!("rule {id}: {what} cannot be evaluated"));
        }
        let kinds = condition.event_kinds();
        let read_tags = tag_ids.values().copied().collect();
        Ok(Self {
            id,
            version,
            name,
            priority,
            condition,
            tag_ids,
            actions,
            override_manual_removal,
            regexes,
            kinds,
            read_tags,
        })
    }

    /// Tags the condition reads.
    pub fn reads(&self) -> BTreeSet<i64> {
        self.read_tags.clone()
    }

    /// Event kinds that may change the condition's value.
    fn kinds(&self) -> &[CustomerEventKind] {
        &self.kinds
    }
}

/// Tags of exclusive groups that actions touch: adding one takes the
/// others off.
#[derive(Debug, Clone, Default)]
pub struct Exclusive {
    /// Tag → its exclusive group.
    pub group_of: HashMap<i64, i64>,
    /// Exclusive group → its tags.
    pub members: HashMap<i64, Vec<i64>>,
}

impl Exclusive {
    pub(crate) fn siblings(&self, tag: i64) -> impl Iterator<Item = i64> + '_ {
        self.group_of
            .get(&tag)
            .and_then(|g| self.members.get(g))
            .into_iter()
            .flatten()
            .copied()
            .filter(move |t| *t != tag)
    }

    /// Tags an action may change: its own, and for an add or a move the
    /// other tags of the exclusive group.
    pub fn affected(&self, action: &Action) -> Vec<i64> {
        let mut out = vec![action.tag_id];
        if action.op != ActionOp::Remove {
            out.extend(self.siblings(action.tag_id));
        }
        out
    }
}

/// The rules that apply to a customer, in evaluation order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
    pub exclusive: Exclusive,
}

/// Rules `a` → `b` when an action of `a` may change a tag that `b`'s
/// condition reads (a rule reading its own tags is no edge: it runs once
/// per event).
fn edges(rules: &[CompiledRule], exclusive: &Exclusive) -> Vec<Vec<usize>> {
    let reads: Vec<BTreeSet<i64>> = rules.iter().map(CompiledRule::reads).collect();
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let affects: HashSet<i64> = rule.actions.iter().flat_map(|a| exclusive.affected(a)).collect();
            (0..rules.len()).filter(|j| *j != i && reads[*j].iter().any(|t| affects.contains(t))).collect()
        })
        .collect()
}

/// A chain of rules that would loop (each changes a tag the next one
/// reads, and the last one's change reaches the first), as rule ids.
pub fn find_cycle(rules: &[CompiledRule], exclusive: &Exclusive) -> Option<Vec<i64>> {
    let edges = edges(rules, exclusive);
    // 0 unvisited, 1 on the path, 2 done.
    let mut state = vec![0u8; rules.len()];
    let mut path = Vec::new();
    fn visit(n: usize, edges: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[n] = 1;
        path.push(n);
        for &m in &edges[n] {
            if state[m] == 1 {
                let start = path.iter().position(|p| *p == m).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(m);
                return Some(cycle);
            }
            if state[m] == 0
                && let Some(cycle) = visit(m, edges, state, path)
            {
                return Some(cycle);
            }
        }
        state[n] = 2;
        path.pop();
        None
    }
    for n in 0..rules.len() {
        if state[n] == 0
            && let Some(cycle) = visit(n, &edges, &mut state, &mut path)
        {
            return Some(cycle.into_iter().map(|i| rules[i].id).collect());
        }
    }
    None
}

impl RuleSet {
    /// Orders the rules: a rule runs after every rule whose actions may
    /// change a tag it reads; otherwise by priority, then by id. A loop
    /// (refused at save time) falls back to priority order for its rules.
    pub fn new(mut rules: Vec<CompiledRule>, exclusive: Exclusive) -> Self {
        rules.sort_by_key(|r| (r.priority, r.id));
        let edges = edges(&rules, &exclusive);
        let mut indegree = vec![0usize; rules.len()];
        for targets in &edges {
            for &t in targets {
                indegree[t] += 1;
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..rules.len()).filter(|i| indegree[*i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(rules.len());
        let mut placed = vec![false; rules.len()];
        while order.len() < rules.len() {
            let next = match ready.pop() {
                Some(Reverse(i)) => i,
                // A loop: take the first rule not placed yet.
                None => match placed.iter().position(|p| !p) {
                    Some(i) => i,
                    None => break,
                },
            };
            if placed[next] {
                continue;
            }
            placed[next] = true;
            order.push(next);
            for &t in &edges[next] {
                indegree[t] = indegree[t].saturating_sub(1);
                if indegree[t] == 0 && !placed[t] {
                    ready.push(Reverse(t));
                }
            }
        }
        let mut slots: Vec<Option<CompiledRule>> = rules.into_iter().map(Some).collect();
        let rules = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Self { rules, exclusive }
    }
}

/// What the evaluator knows of one customer.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The customer's events, oldest first (by time, then id).
    pub events: &'a [EventFact],
    pub attributes: &'a Attributes,
    /// The tags the customer holds.
    pub tags: BTreeSet<i64>,
    /// Tags a person took off the customer (and nobody put back since).
    pub manual_removals: BTreeSet<i64>,
    /// The organisation's time zone.
    pub offset: FixedOffset,
}

/// A tag change a rule makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub rule_id: i64,
    pub rule_version: i32,
    pub tag_id: i64,
    pub op: TagOp,
    pub ttl_seconds: Option<i64>,
}

/// What [`fire`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firing {
    /// The changes, in order.
    pub changes: Vec<Planned>,
    /// The tags the customer holds afterwards.
    pub tags: BTreeSet<i64>,
    /// Adds left out because a person had removed the tag.
    pub held_back: Vec<Planned>,
}

/// Runs the rules of `set` for one customer at instant `at`. With a
/// `trigger`, only rules that look at events of its kind (or at no event
/// at all, or at tags an earlier rule just changed) run; without one,
/// every rule runs (a scheduled or from-scratch evaluation).
pub fn fire(set: &RuleSet, facts: &Facts<'_>, trigger: Option<&EventFact>, at: DateTime<Utc>) -> Firing {
    let events: Vec<&EventFact> = facts.events.iter().filter(|e| e.occurred_at <= at).collect();
    let mut firing = Firing { tags: facts.tags.clone(), ..Firing::default() };
    let mut changed: BTreeSet<i64> = BTreeSet::new();
    for rule in &set.rules {
        let kinds = rule.kinds();
        let relevant = trigger.is_none_or(|t| kinds.is_empty() || kinds.contains(&t.kind))
            || rule.read_tags.iter().any(|t| changed.contains(t));
        if !relevant {
            continue;
        }
        let ctx = Ctx { rule, events: &events, facts, tags: &firing.tags, at };
        if !ctx.holds(&rule.condition) {
            continue;
        }
        for action in &rule.actions {
            let planned = |tag_id: i64, op: TagOp| Planned {
                rule_id: rule.id,
                rule_version: rule.version,
                tag_id,
                op,
                ttl_seconds: if op == TagOp::Add { action.ttl_seconds } else { None },
            };
            match action.op {
                ActionOp::Remove => {
                    if firing.tags.remove(&action.tag_id) {
                        firing.changes.push(planned(action.tag_id, TagOp::Remove));
                        changed.insert(action.tag_id);
                    }
                }
                ActionOp::Add | ActionOp::Move => {
                    if firing.tags.contains(&action.tag_id) {
                        continue;
                    }
                    if facts.manual_removals.contains(&action.tag_id) && !rule.override_manual_removal {
                        firing.held_back.push(planned(action.tag_id, TagOp::Add));
                        continue;
                    }
                    let replaced: Vec<i64> =
                        set.exclusive.siblings(action.tag_id).filter(|t| firing.tags.contains(t)).collect();
                    for old in replaced {
                        firing.tags.remove(&old);
                        firing.changes.push(planned(old, TagOp::Remove));
                        changed.insert(old);
                    }
                    firing.tags.insert(action.tag_id);
                    firing.changes.push(planned(action.tag_id, TagOp::Add));
                    changed.insert(action.tag_id);
                }
            }
        }
    }
    firing
}

struct Ctx<'a> {
    rule: &'a CompiledRule,
    events: &'a [&'a EventFact],
    facts: &'a Facts<'a>,
    tags: &'a BTreeSet<i64>,
    at: DateTime<Utc>,
}

/// Minutes after local midnight.
fn minute_of_day(at: DateTime<Utc>, offset: FixedOffset) -> u32 {
    let local = at.with_timezone(&offset);
    local.hour() * 60 + local.minute()
}

fn local_date(at: DateTime<Utc>, offset: FixedOffset) -> NaiveDate {
    at.with_timezone(&offset).date_naive()
}

impl Ctx<'_> {
    fn newest(&self, kind: CustomerEventKind) -> Option<&EventFact> {
        self.events.iter().rev().find(|e| e.kind == kind).copied()
    }

    fn in_window(&self, window: Duration) -> impl Iterator<Item = &EventFact> {
        let from = self.at - window;
        self.events.iter().copied().filter(move |e| e.occurred_at > from)
    }

    fn holds(&self, c: &Condition) -> bool {
        let f = self.facts;
        match c {
            Condition::And(items) => items.iter().all(|i| self.holds(i)),
            Condition::Or(items) => items.iter().any(|i| self.holds(i)),
            Condition::Not(inner) => !self.holds(inner),
            Condition::Tag(t) => self.rule.tag_ids.get(&t.name).is_some_and(|id| self.tags.contains(id)),
            Condition::City(city) => f.attributes.city.as_deref() == Some(city.as_str()),
            Condition::Channel(channel) => f.attributes.channel.as_deref() == Some(channel.as_str()),
            Condition::Gender(gender) => f.attributes.gender == Some(*gender),
            Condition::Number(attr, cmp, n) => {
                let value = match attr {
                    NumberAttr::Spend => Some(f.attributes.spend_cents),
                    NumberAttr::Orders => Some(f.attributes.orders),
                    NumberAttr::Age => f.attributes.birth_date.map(|born| {
                        let today = local_date(self.at, f.offset);
                        let mut age = i64::from(today.year() - born.year());
                        if (today.month(), today.day()) < (born.month(), born.day()) {
                            age -= 1;
                        }
                        age
                    }),
                };
                value.is_some_and(|v| cmp.holds(v, *n))
            }
            Condition::MessageContains(needle) => self
                .newest(CustomerEventKind::MessageReceived)
                .and_then(|e| e.field("text"))
                .is_some_and(|text| text.to_lowercase().contains(&needle.to_lowercase())),
            Condition::MessageMatches(pattern) => self
                .newest(CustomerEventKind::MessageReceived)
                .and_then(|e| e.field("text"))
                .is_some_and(|text| self.rule.regexes.get(pattern).is_some_and(|re| re.is_match(&text))),
            Condition::Count { filter, window, cmp, n } => {
                let count = self.in_window(*window).filter(|e| matches(filter, e)).count() as i64;
                cmp.holds(count, *n)
            }
            Condition::Streak { kind, days } => {
                let today = local_date(self.at, f.offset);
                let seen: HashSet<NaiveDate> = self
                    .in_window(Duration::days(*days + 1))
                    .filter(|e| e.kind == *kind)
                    .map(|e| local_date(e.occurred_at, f.offset))
                    .collect();
                (0..*days).all(|back| seen.contains(&(today - Duration::days(back))))
            }
            Condition::Absent { kind, window } => !self.in_window(*window).any(|e| e.kind == *kind),
            Condition::TimeOfDay { kind, from, to } => self.newest(*kind).is_some_and(|e| {
                let m = minute_of_day(e.occurred_at, f.offset);
                if from < to { *from <= m && m < *to } else { m >= *from || m < *to }
            }),
        }
    }
}

fn matches(filter: &EventFilter, event: &EventFact) -> bool {
    event.kind == filter.kind
        && filter.field.as_ref().is_none_or(|(field, how)| {
            event.field(field).is_some_and(|value| match how {
                FieldMatch::Equals(want) => value == *want,
                FieldMatch::Contains(part) => value.to_lowercase().contains(&part.to_lowercase()),
            })
        })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::super::condition::parse;
    use super::*;

    const INQUIRY: i64 = 1;
    const ACTIVE: i64 = 2;
    const EVENING: i64 = 3;
    const PROSPECT: i64 = 10;
    const PAYING: i64 = 11;

    fn shanghai() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }

    /// Local time in Shanghai.
    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        shanghai().with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().with_timezone(&Utc)
    }

    fn rule(id: i64, condition: &str, actions: Vec<Action>) -> CompiledRule {
        let condition = parse(condition).unwrap();
        let names = [("询价", INQUIRY), ("活跃客户", ACTIVE), ("潜在客户", PROSPECT), ("付费客户", PAYING)];
        let tag_ids = condition
            .tags()
            .into_iter()
            .map(|t| {
                let id = match &t.name {
                    TagName::Name(n) => names.iter().find(|(name, _)| name == n).unwrap().1,
                    TagName::Id(id) => *id,
                };
                (t.name.clone(), id)
            })
            .collect();
        CompiledRule::new(id, 1, format!("rule {id}"), 0, condition, tag_ids, actions, false).unwrap()
    }

    fn add(tag_id: i64) -> Action {
        Action { op: ActionOp::Add, tag_id, ttl_seconds: None }
    }

    fn event(id: i64, kind: CustomerEventKind, at: DateTime<Utc>, payload: Value) -> EventFact {
        EventFact { id, kind, occurred_at: at, payload, recorded_at: at }
    }

    fn lifecycle() -> Exclusive {
        Exclusive {
            group_of: HashMap::from([(PROSPECT, 100), (PAYING, 100)]),
            members: HashMap::from([(100, vec![PROSPECT, PAYING])]),
        }
    }

    /// Runs `rules` on the newest of `events`, as the event-driven path does.
    fn run(rules: Vec<CompiledRule>, events: &[EventFact], tags: &[i64], removed: &[i64]) -> Firing {
        let set = RuleSet::new(rules, lifecycle());
        let attributes = Attributes::default();
        let facts = Facts {
            events,
            attributes: &attributes,
            tags: tags.iter().copied().collect(),
            manual_removals: removed.iter().copied().collect(),
            offset: shanghai(),
        };
        let trigger = events.last().unwrap();
        fire(&set, &facts, Some(trigger), trigger.occurred_at)
    }

    fn added(firing: &Firing) -> Vec<i64> {
        firing.changes.iter().filter(|c| c.op == TagOp::Add).map(|c| c.tag_id).collect()
    }

    #[test]
    fn a_message_with_the_keyword_adds_the_tag_and_others_do_not() {
        let r = || vec![rule(1, r#"message contains "询价""#, vec![add(INQUIRY)])];
        let msg = |text: &str| vec![event(1, CustomerEventKind::MessageReceived, Utc::now(), json!({ "text": text }))];
        assert_eq!(added(&run(r(), &msg("你好，想询价一下"), &[], &[])), vec![INQUIRY]);
        assert!(added(&run(r(), &msg("你好"), &[], &[])).is_empty());
    }

    #[test]
    fn three_consecutive_days_make_a_streak_and_a_gap_breaks_it() {
        let joined = |id, at| event(id, CustomerEventKind::GroupJoined, at, json!({}));
        let r = || vec![rule(1, "streak(group_joined, 3d)", vec![add(ACTIVE)])];
        // 23:59 and 00:00 at +08:00 are different days.
        let straight = [
            joined(1, local(2026, 3, 1, 23, 59)),
            joined(2, local(2026, 3, 2, 0, 0)),
            joined(3, local(2026, 3, 3, 9, 0)),
        ];
        assert_eq!(added(&run(r(), &straight, &[], &[])), vec![ACTIVE]);
        let gap = [
            joined(1, local(2026, 3, 1, 10, 0)),
            joined(2, local(2026, 3, 2, 10, 0)),
            joined(3, local(2026, 3, 4, 10, 0)),
        ];
        assert!(added(&run(r(), &gap, &[], &[])).is_empty());
        // Two joins on one local day (00:30 local is the previous UTC day) are one day.
        let same_day = [
            joined(1, local(2026, 3, 2, 0, 30)),
            joined(2, local(2026, 3, 2, 23, 0)),
            joined(3, local(2026, 3, 3, 8, 0)),
        ];
        assert!(added(&run(r(), &same_day, &[], &[])).is_empty());
    }

    #[test]
    fn time_of_day_is_read_in_the_organisations_time_zone() {
        let r = || vec![rule(1, "customer_added at 18:00–24:00", vec![add(EVENING)])];
        let at = |h, m| [event(1, CustomerEventKind::CustomerAdded, local(2026, 3, 1, h, m), json!({}))];
        assert!(added(&run(r(), &at(17, 59), &[], &[])).is_empty());
        assert_eq!(added(&run(r(), &at(18, 1), &[], &[])), vec![EVENING]);
        assert_eq!(added(&run(r(), &at(23, 59), &[], &[])), vec![EVENING]);
        assert!(added(&run(r(), &at(0, 0), &[], &[])).is_empty());
        let night = || vec![rule(1, "message at 22:00-06:00", vec![add(EVENING)])];
        let msg =
            |h, m| [event(1, CustomerEventKind::MessageReceived, local(2026, 3, 1, h, m), json!({ "text": "x" }))];
        assert_eq!(added(&run(night(), &msg(2, 0), &[], &[])), vec![EVENING]);
        assert!(added(&run(night(), &msg(12, 0), &[], &[])).is_empty());
    }

    #[test]
    fn counts_look_at_the_window_ending_at_the_event() {
        let r = || vec![rule(1, r#"count(click where title = "产品介绍", 7d) >= 2"#, vec![add(INQUIRY)])];
        let click =
            |id, at, title: &str| event(id, CustomerEventKind::LinkClicked, at, json!({ "url": "u", "title": title }));
        let t = local(2026, 3, 10, 12, 0);
        let two_in_window = [click(1, t - Duration::days(6), "产品介绍"), click(2, t, "产品介绍")];
        assert_eq!(added(&run(r(), &two_in_window, &[], &[])), vec![INQUIRY]);
        let one_too_old = [click(1, t - Duration::days(8), "产品介绍"), click(2, t, "产品介绍")];
        assert!(added(&run(r(), &one_too_old, &[], &[])).is_empty());
        let other_title = [click(1, t - Duration::days(1), "价格表"), click(2, t, "产品介绍")];
        assert!(added(&run(r(), &other_title, &[], &[])).is_empty());
    }

    #[test]
    fn a_late_event_is_judged_by_what_was_true_when_it_happened() {
        let r = vec![rule(1, "no order_paid for 30d", vec![add(INQUIRY)])];
        let t = local(2026, 3, 10, 12, 0);
        // The order came after the click: at the click, no order in 30 days.
        let events = [
            event(2, CustomerEventKind::OrderPaid, t + Duration::days(1), json!({ "amount": 100 })),
            event(1, CustomerEventKind::OrderPaid, t - Duration::days(40), json!({ "amount": 100 })),
        ];
        let set = RuleSet::new(r, Exclusive::default());
        let attributes = Attributes::default();
        let mut sorted = events.to_vec();
        sorted.sort_by_key(|e| (e.occurred_at, e.id));
        let facts = Facts {
            events: &sorted,
            attributes: &attributes,
            tags: BTreeSet::new(),
            manual_removals: BTreeSet::new(),
            offset: shanghai(),
        };
        assert_eq!(added(&fire(&set, &facts, None, t)), vec![INQUIRY]);
        assert!(added(&fire(&set, &facts, None, t + Duration::days(2))).is_empty());
    }

    #[test]
    fn a_tag_a_person_removed_is_not_added_back_unless_the_rule_says_so() {
        let msg = [event(1, CustomerEventKind::MessageReceived, Utc::now(), json!({ "text": "询价" }))];
        let firing = run(vec![rule(1, r#"message contains "询价""#, vec![add(INQUIRY)])], &msg, &[], &[INQUIRY]);
        assert!(firing.changes.is_empty());
        assert_eq!(firing.held_back.len(), 1);
        let mut insistent = rule(1, r#"message contains "询价""#, vec![add(INQUIRY)]);
        insistent.override_manual_removal = true;
        assert_eq!(added(&run(vec![insistent], &msg, &[], &[INQUIRY])), vec![INQUIRY]);
    }

    #[test]
    fn a_move_replaces_the_other_tag_of_the_exclusive_group() {
        let paid = [event(1, CustomerEventKind::OrderPaid, Utc::now(), json!({ "amount": 1 }))];
        let firing = run(
            vec![rule(
                1,
                "count(order_paid, 1d) >= 1",
                vec![Action { op: ActionOp::Move, tag_id: PAYING, ttl_seconds: None }],
            )],
            &paid,
            &[PROSPECT],
            &[],
        );
        assert_eq!(
            firing.changes.iter().map(|c| (c.tag_id, c.op)).collect::<Vec<_>>(),
            vec![(PROSPECT, TagOp::Remove), (PAYING, TagOp::Add)]
        );
        assert_eq!(firing.tags, BTreeSet::from([PAYING]));
    }

    #[test]
    fn a_rule_that_reads_a_tag_runs_after_the_rule_that_adds_it() {
        // Rule 1 (priority first) reads 询价, which rule 2 adds.
        let reader = rule(1, r#"tag("询价")"#, vec![add(ACTIVE)]);
        let writer = rule(2, r#"message contains "询价""#, vec![add(INQUIRY)]);
        let msg = [event(1, CustomerEventKind::MessageReceived, Utc::now(), json!({ "text": "询价" }))];
        assert_eq!(added(&run(vec![reader, writer], &msg, &[], &[])), vec![INQUIRY, ACTIVE]);
    }

    #[test]
    fn rules_that_feed_each_other_are_found_as_a_loop() {
        let a = rule(1, r#"tag("询价")"#, vec![add(ACTIVE)]);
        let b =
            rule(2, r#"tag("活跃客户")"#, vec![Action { op: ActionOp::Remove, tag_id: INQUIRY, ttl_seconds: None }]);
        assert_eq!(find_cycle(&[a.clone(), b], &Exclusive::default()), Some(vec![1, 2, 1]));
        let own = rule(3, r#"NOT tag("询价") AND message contains "询价""#, vec![add(INQUIRY)]);
        assert_eq!(find_cycle(&[a, own], &Exclusive::default()), None, "reading one's own tag is no loop");
    }
}
