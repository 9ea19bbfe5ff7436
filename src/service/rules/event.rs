//! Customer events as connectors send them, parsed once into
//! [`NewEvent`]: a known kind, the kind's fields and nothing else, a time
//! that is neither in the future nor ancient, bounded texts and JSON.

use chrono::{DateTime, Duration, Utc};
use entity::enums::CustomerEventKind;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::domain::CustomerId;
use crate::error::{AppError, AppResult};

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4_000;
/// Longest URL, in characters.
pub const MAX_URL_CHARS: usize = 2_048;
/// Longest short text (title, group, channel, form, order id, name).
pub const MAX_SHORT_CHARS: usize = 200;
/// Longest event key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Largest JSON value (`answers`, `properties`), serialised, in bytes.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Deepest nesting of a JSON value.
pub const MAX_JSON_DEPTH: usize = 8;
/// How far ahead of the server's clock an event may be (clock skew).
pub const MAX_FUTURE: Duration = Duration::minutes(5);
/// How old an event may be.
pub const MAX_AGE: Duration = Duration::days(3_650);
/// Largest order amount, in cents (分).
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000;

/// Whom an event is about: a customer id, or an identity in another system
/// (`provider` `wecom`, `external_id` a WeCom `external_userid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomerRef {
    Id(CustomerId),
    External { provider: String, external_id: String },
}

/// One event as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct RawEvent {
    pub customer_id: Option<String>,
    pub external_id: Option<(String, String)>,
    pub kind: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub key: String,
    pub text: Option<String>,
    pub url: Option<String>,
    pub title: Option<String>,
    pub group: Option<String>,
    pub amount: Option<i64>,
    pub order_id: Option<String>,
    pub channel: Option<String>,
    pub form: Option<String>,
    pub answers: Option<Value>,
    pub name: Option<String>,
    pub properties: Option<Value>,
}

/// A checked event, its customer not yet looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub customer: CustomerRef,
    pub kind: CustomerEventKind,
    pub occurred_at: DateTime<Utc>,
    pub key: String,
    /// The kind's fields, as stored.
    pub payload: Value,
}

impl NewEvent {
    /// What tells a repeat of this event from another event under the same
    /// key, once its customer is known.
    pub fn fingerprint(&self, customer_id: i64) -> String {
        let canonical = json!({
            "customer": customer_id,
            "kind": self.kind.as_str(),
            "occurredAt": self.occurred_at.timestamp_micros(),
            "payload": sorted(&self.payload),
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Objects with their keys in order, at every level, so that key order
/// makes no difference to a fingerprint.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            // Serialised as an array of pairs: stays ordered whatever map
            // type serde_json was built with.
            Value::Array(keys.into_iter().map(|k| json!([k, sorted(&map[k])])).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Parses a kind as the API spells it (`MESSAGE_RECEIVED`).
pub fn parse_kind(raw: &str) -> Option<CustomerEventKind> {
    use sea_orm::Iterable;
    CustomerEventKind::iter().find(|k| k.as_str().eq_ignore_ascii_case(raw.trim()))
}

fn kinds_list() -> String {
    use sea_orm::Iterable;
    CustomerEventKind::iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

/// The fields each kind takes: (API name, required).
fn fields_of(kind: CustomerEventKind) -> &'static [(&'static str, bool)] {
    use CustomerEventKind::*;
    match kind {
        MessageReceived => &[("text", true)],
        LinkClicked => &[("url", true), ("title", false)],
        GroupJoined | GroupLeft => &[("group", false)],
        OrderPaid => &[("amount", true), ("orderId", false)],
        CustomerAdded => &[("channel", false)],
        FormSubmitted => &[("form", true), ("answers", false)],
        Custom => &[("name", true), ("properties", false)],
    }
}

fn text_field(field: &str, value: &str, max: usize) -> AppResult<Value> {
    if value.trim().is_empty() {
        return Err(AppError::validation(field, "must not be blank"));
    }
    if value.chars().count() > max {
        return Err(AppError::validation(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(AppError::validation(field, "must not contain control characters"));
    }
    Ok(Value::String(value.to_owned()))
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_field(field: &str, value: &Value) -> AppResult<Value> {
    if !value.is_object() {
        return Err(AppError::validation(field, "must be a JSON object"));
    }
    if depth(value) > MAX_JSON_DEPTH {
        return Err(AppError::validation(field, format!("must nest at most {MAX_JSON_DEPTH} levels")));
    }
    if value.to_string().len() > MAX_JSON_BYTES {
        return Err(AppError::validation(field, format!("must be at most {MAX_JSON_BYTES} bytes as JSON")));
    }
    Ok(value.clone())
}

impl RawEvent {
    /// The fields given, by API name.
    fn given(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("text", self.text.is_some()),
            ("url", self.url.is_some()),
            ("title", self.title.is_some()),
            ("group", self.group.is_some()),
            ("amount", self.amount.is_some()),
            ("orderId", self.order_id.is_some()),
            ("channel", self.channel.is_some()),
            ("form", self.form.is_some()),
            ("answers", self.answers.is_some()),
            ("name", self.name.is_some()),
            ("properties", self.properties.is_some()),
        ]
    }

    fn field_value(&self, field: &str) -> AppResult<Option<Value>> {
        let short = |v: &Option<String>| v.as_deref().map(|v| text_field(field, v, MAX_SHORT_CHARS)).transpose();
        match field {
            "text" => self.text.as_deref().map(|v| text_field(field, v, MAX_TEXT_CHARS)).transpose(),
            "url" => self.url.as_deref().map(|v| text_field(field, v, MAX_URL_CHARS)).transpose(),
            "title" => short(&self.title),
            "group" => short(&self.group),
            "orderId" => short(&self.order_id),
            "channel" => short(&self.channel),
            "form" => short(&self.form),
            "name" => self.name.as_deref().map(|v| text_field(field, v, 64)).transpose(),
            "amount" => self
                .amount
                .map(|a| {
                    if (0..=MAX_AMOUNT_CENTS).contains(&a) {
                        Ok(Value::from(a))
                    } else {
                        Err(AppError::validation(field, format!("must be between 0 and {MAX_AMOUNT_CENTS} cents")))
                    }
                })
                .transpose(),
            "answers" => self.answers.as_ref().map(|v| json_field(field, v)).transpose(),
            "properties" => self.properties.as_ref().map(|v| json_field(field, v)).transpose(),
            _ => Ok(None),
        }
    }

    /// Checks the event against `now`.
    ///
    /// # Errors
    /// `VALIDATION` naming the field: an unknown kind, a field the kind
    /// does not take or a missing one, a blank or too long text, a JSON
    /// value that is not an object or too large, a time in the future or
    /// too far back, a missing or doubled customer reference.
    pub fn parse(&self, now: DateTime<Utc>) -> AppResult<NewEvent> {
        let customer = match (&self.customer_id, &self.external_id) {
            (Some(id), None) => CustomerRef::Id(CustomerId::parse(id, "customerId")?),
            (None, Some((provider, external_id))) => {
                if provider.trim().is_empty() || external_id.trim().is_empty() {
                    return Err(AppError::validation("externalId", "needs a provider and an id"));
                }
                CustomerRef::External {
                    provider: provider.trim().to_owned(),
                    external_id: external_id.trim().to_owned(),
                }
            }
            _ => return Err(AppError::validation("customerId", "give exactly one of customerId and externalId")),
        };
        let kind = parse_kind(&self.kind).ok_or_else(|| {
            AppError::validation("kind", format!("unknown kind {:?}; kinds are {}", self.kind, kinds_list()))
        })?;
        let key = self.key.trim();
        if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
            return Err(AppError::validation("key", format!("must be 1 to {MAX_KEY_CHARS} characters")));
        }
        let occurred_at = self.occurred_at.ok_or_else(|| AppError::validation("occurredAt", "is required"))?;
        if occurred_at > now + MAX_FUTURE {
            return Err(AppError::validation("occurredAt", "is in the future"));
        }
        if occurred_at < now - MAX_AGE {
            return Err(AppError::validation("occurredAt", "is more than ten years ago"));
        }
        let takes = fields_of(kind);
        let mut payload = Map::new();
        for (field, given) in self.given() {
            match takes.iter().find(|(f, _)| *f == field) {
                None if given => {
                    return Err(AppError::validation(field, format!("is not a field of {} events", kind.as_str())));
                }
                None => {}
                Some((_, required)) => match self.field_value(field)? {
                    Some(value) => {
                        payload.insert(field.to_owned(), value);
                    }
                    None if *required => {
                        return Err(AppError::validation(field, format!("is required for {} events", kind.as_str())));
                    }
                    None => {}
                },
            }
        }
        Ok(NewEvent { customer, kind, occurred_at, key: key.to_owned(), payload: Value::Object(payload) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> RawEvent {
        RawEvent {
            customer_id: Some("7".into()),
            kind: "MESSAGE_RECEIVED".into(),
            occurred_at: Some(Utc::now()),
            key: "k1".into(),
            text: Some(text.into()),
            ..RawEvent::default()
        }
    }

    fn field_of(err: AppError) -> String {
        match err {
            AppError::Validation { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_message_parses_into_its_kind_and_text() {
        let event = message("想询价").parse(Utc::now()).unwrap();
        assert_eq!(event.kind, CustomerEventKind::MessageReceived);
        assert_eq!(event.payload, json!({ "text": "想询价" }));
        assert_eq!(event.customer, CustomerRef::Id(CustomerId(7)));
    }

    #[test]
    fn unknown_kinds_foreign_fields_and_missing_fields_are_named() {
        let mut raw = message("x");
        raw.kind = "MESSAGE_SENT".into();
        assert_eq!(field_of(raw.parse(Utc::now()).unwrap_err()), "kind");
        let mut raw = message("x");
        raw.url = Some("https://example.com".into());
        assert_eq!(field_of(raw.parse(Utc::now()).unwrap_err()), "url");
        let mut raw = message("x");
        raw.text = None;
        assert_eq!(field_of(raw.parse(Utc::now()).unwrap_err()), "text");
    }

    #[test]
    fn future_and_ancient_times_are_refused_but_clock_skew_is_not() {
        let now = Utc::now();
        let mut raw = message("x");
        raw.occurred_at = Some(now + Duration::minutes(4));
        assert!(raw.parse(now).is_ok());
        raw.occurred_at = Some(now + Duration::hours(1));
        assert_eq!(field_of(raw.parse(now).unwrap_err()), "occurredAt");
        raw.occurred_at = Some(now - Duration::days(4_000));
        assert_eq!(field_of(raw.parse(now).unwrap_err()), "occurredAt");
    }

    #[test]
    fn huge_texts_and_bad_json_are_refused() {
        let raw = message(&"询".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(field_of(raw.parse(Utc::now()).unwrap_err()), "text");
        let custom = |properties: Value| RawEvent {
            customer_id: Some("7".into()),
            kind: "CUSTOM".into(),
            occurred_at: Some(Utc::now()),
            key: "k".into(),
            name: Some("试驾".into()),
            properties: Some(properties),
            ..RawEvent::default()
        };
        assert!(custom(json!({ "car": "Model 3" })).parse(Utc::now()).is_ok());
        assert_eq!(field_of(custom(json!([1, 2])).parse(Utc::now()).unwrap_err()), "properties");
        let mut deep = json!(1);
        for _ in 0..10 {
            deep = json!({ "a": deep });
        }
        assert_eq!(field_of(custom(deep).parse(Utc::now()).unwrap_err()), "properties");
        let big = json!({ "x": "y".repeat(MAX_JSON_BYTES) });
        assert_eq!(field_of(custom(big).parse(Utc::now()).unwrap_err()), "properties");
    }

    #[test]
    fn the_fingerprint_ignores_key_order_but_not_content() {
        let now = Utc::now();
        let a = NewEvent {
            customer: CustomerRef::Id(CustomerId(1)),
            kind: CustomerEventKind::Custom,
            occurred_at: now,
            key: "k".into(),
            payload: serde_json::from_str(r#"{"name":"n","properties":{"a":1,"b":2}}"#).unwrap(),
        };
        let mut b = a.clone();
        b.payload = serde_json::from_str(r#"{"properties":{"b":2,"a":1},"name":"n"}"#).unwrap();
        assert_eq!(a.fingerprint(1), b.fingerprint(1));
        b.payload = json!({ "name": "n", "properties": { "a": 1, "b": 3 } });
        assert_ne!(a.fingerprint(1), b.fingerprint(1));
        assert_ne!(a.fingerprint(1), a.fingerprint(2));
    }
}
