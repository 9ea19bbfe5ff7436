//! When a scheduled rule runs (`DAILY HH:MM`), parsed once: a value the
//! rule store checks at save time and the scheduler turns into slots.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Utc};

use crate::error::{AppError, AppResult};

/// When a scheduled rule runs: every day at a time of day in the
/// organisation's time zone. Written `DAILY 03:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Minutes after local midnight.
    minute: u32,
}

impl Schedule {
    /// Parses `DAILY HH:MM` (any case, `H:MM` too).
    ///
    /// # Errors
    /// `VALIDATION` on `field`, saying what is expected.
    pub fn parse(field: &str, text: &str) -> AppResult<Self> {
        let bad = || {
            AppError::validation(
                field,
                format!("expected `DAILY HH:MM` (a time of day in the organisation's time zone), found {text:?}"),
            )
        };
        let mut words = text.split_whitespace();
        let (Some(kind), Some(time), None) = (words.next(), words.next(), words.next()) else { return Err(bad()) };
        if !kind.eq_ignore_ascii_case("DAILY") {
            return Err(bad());
        }
        let (h, m) = time.split_once(':').ok_or_else(bad)?;
        let digits = |s: &str, len: std::ops::RangeInclusive<usize>| {
            len.contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
        };
        if !digits(h, 1..=2) || !digits(m, 2..=2) {
            return Err(bad());
        }
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(Self { minute: h * 60 + m })
    }

    /// The canonical text, as stored: `DAILY 03:00`.
    pub fn text(&self) -> String {
        format!("DAILY {:02}:{:02}", self.minute / 60, self.minute % 60)
    }

    /// The slot of a local date.
    pub fn slot_on(&self, date: NaiveDate, offset: FixedOffset) -> DateTime<Utc> {
        let local = date.and_hms_opt(self.minute / 60, self.minute % 60, 0).unwrap_or_default();
        (local - Duration::seconds(i64::from(offset.local_minus_utc()))).and_utc()
    }

    /// The latest slot at or before `now`.
    pub fn latest_slot(&self, offset: FixedOffset, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = now.with_timezone(&offset).date_naive();
        let slot = self.slot_on(today, offset);
        if slot <= now { slot } else { self.slot_on(today - Duration::days(1), offset) }
    }
}
