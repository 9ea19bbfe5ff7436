//! The API's own date scalars, so the schema names them `Date` and
//! `DateTime` with a plain description and `@specifiedBy` (the crate's
//! built-in ones are `NaiveDate` and "Implement the DateTime<Utc> scalar").
//! Values on the wire are unchanged.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{NaiveDate, Utc};

/// A calendar date without time zone, `YYYY-MM-DD` (RFC 3339 `full-date`),
/// e.g. `1994-11-13`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub NaiveDate);

/// A calendar date without time zone, `YYYY-MM-DD` (RFC 3339 `full-date`), e.g. `1994-11-13`.
#[Scalar(name = "Date", specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339#section-5.6")]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => Ok(Self(NaiveDate::parse_from_str(s, "%Y-%m-%d")?)),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

/// An instant, as an RFC 3339 `date-time` with an offset
/// (`2026-12-01T08:30:00+00:00`); answers are in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(pub chrono::DateTime<Utc>);

/// An instant, as an RFC 3339 `date-time` with an offset (`2026-12-01T08:30:00+00:00`); answers are in UTC.
#[Scalar(name = "DateTime", specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339#section-5.6")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => Ok(Self(s.parse::<chrono::DateTime<Utc>>()?)),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339())
    }
}

impl From<chrono::DateTime<Utc>> for DateTime {
    fn from(t: chrono::DateTime<Utc>) -> Self {
        Self(t)
    }
}

impl From<NaiveDate> for Date {
    fn from(d: NaiveDate) -> Self {
        Self(d)
    }
}
