//! What the indexes and audits follow: the logs that record changes in
//! commit order. Services write through here; segment indexes read from
//! here.

pub mod customer_log;
pub mod event_log;

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
pub(crate) const CHUNK: usize = 500;
