//! Black-box and in-process tests of the tagbase API. One test binary (one
//! link) with a module per area; every database test runs on SQLite and on
//! PostgreSQL.

mod helpers;

mod archived_tags;
mod audit;
mod bench;
mod cli;
mod constraints;
mod customer_data;
mod customers;
mod governance;
mod http;
mod http_protocol;
mod index_screens;
mod jobs;
mod limits;
mod n_plus_one;
mod observability;
mod otel_export;
mod permission_matrix;
mod playground;
mod races;
mod relay;
mod reports;
mod rules;
mod rules_bench;
mod rules_dryrun;
mod rules_late;
mod rules_property;
mod rules_schedule;
mod schema_drift;
mod seed;
mod segment_index;
mod segments;
mod sign_in;
mod sign_in_cache;
mod staff;
mod subscriptions;
mod tag_library;
mod tagging;
mod visibility;
mod write_path;
