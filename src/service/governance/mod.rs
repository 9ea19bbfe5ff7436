//! Governance (审批 and 修改锁): change requests, who decides them and what
//! approving runs, and modification locks.
//!
//! * [`requests`] files and lists requests (the rows live in
//!   `store::change_request`). Library edits and bulk tagging file through
//!   it; it knows neither.
//! * [`approval`] decides requests: who may approve, reject or cancel, and
//!   the one dispatch from a request's kind to the service that applies it.
//! * [`locks`] takes, checks and releases modification locks.

pub mod approval;
pub mod locks;
pub mod requests;
