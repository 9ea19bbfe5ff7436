use sea_orm::entity::prelude::*;

use crate::enums::CustomerEventKind;

/// Something a customer did, as reported by a connector (WeCom callbacks,
/// an order system). Append-only; `event_key` is unique.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customer_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub customer_id: i64,
    /// The customer's unit when the event was recorded.
    pub org_unit_id: i64,
    pub kind: CustomerEventKind,
    pub event_key: String,
    /// SHA-256 (hex) of the event as given: a repeat of the key with the
    /// same fingerprint is the same event.
    pub fingerprint: String,
    /// The kind's fields (`text`, `url`, `title`, `amount`, …).
    #[sea_orm(column_type = "Json")]
    pub payload: Json,
    pub occurred_at: DateTimeUtc,
    pub recorded_at: DateTimeUtc,
    pub recorded_by: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
