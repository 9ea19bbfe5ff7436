//! Benchmarks: tables printed by `tagbase bench …`, never part of the
//! tests' assertions on time.
//!
//! - [`segments`]: the segment index against plain SQL, in process.
//! - [`bulk`]: bulk tagging jobs at 10k–1M customers, in process.
//! - [`import`]: a 100,000-row GBK customer import, as a job, in process.
//! - [`api`]: the API over real HTTP, from a separate client, against a
//!   server started as a child process.
//! - [`rules`]: automatic tagging over HTTP: ingest, event → segment
//!   latency, a 30-day dry run, memory.

pub mod api;
pub mod bulk;
pub mod import;
pub mod rules;
pub mod segments;

pub use segments::{BenchSize, run};
