//! SeaORM entities of tagbase: the shape of the data, nothing else.
//! Behaviour lives in the `tagbase` crate's services.

pub mod app_setting;
pub mod audit_log;
pub mod casbin_rule;
pub mod change_request;
pub mod customer;
pub mod customer_change;
pub mod customer_event;
pub mod customer_identity;
pub mod customer_tag;
pub mod enums;
pub mod governance_alert;
pub mod import_row;
pub mod job;
pub mod job_customer;
pub mod library_version;
pub mod modification_lock;
pub mod modification_lock_customer;
pub mod org_unit;
pub mod report_setting;
pub mod rule;
pub mod rule_deferred_action;
pub mod rule_run;
pub mod rule_version;
pub mod segment;
pub mod segment_member;
pub mod segment_reference;
pub mod staff;
pub mod staff_identity;
pub mod staff_refresh_token;
pub mod staff_session;
pub mod tag;
pub mod tag_alert;
pub mod tag_event;
pub mod tag_group;
