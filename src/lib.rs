//! tagbase: the backend of a customer-tag management system (客户标签管理).
//!
//! Layout: `graphql` (API) → `service` (rules of the business) → `entity`
//! crate (data); `authz` holds Casbin and the caller's scopes, `auth` the
//! sign-in, `domain` the types that parse raw input once.

pub mod auth;
pub mod authz;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod graphql;
pub mod http;
pub mod observability;
pub mod playground;
pub mod rate_limit;
pub mod request_id;
pub mod seed;
pub mod segment;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;
