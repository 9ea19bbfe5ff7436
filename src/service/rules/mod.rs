//! Automatic tagging (自动打标): customer events in, IF-THEN rules over
//! them, and the tag changes the rules make, each with its explanation.
//!
//! - [`event`]: the events connectors send, parsed once.
//! - [`condition`]: the rule condition language (parser).
//! - [`eval`]: the evaluator, a pure function shared by the event-driven
//!   path, recomputation and dry runs.
//! - [`facts`]: what rules judge customers on (events, held tags, tag
//!   events), read for many customers at once; shared by all three paths.
//! - [`library`]: what a rule may name, and stored rules compiled.
//! - [`store`]: rules as versioned library objects.
//! - [`record`]: `recordEvents`, and the rules run in its transaction.
//! - [`explain`]: why an automatic tag is there.
//! - [`dryrun`]: what a rule would do, replayed over recorded events.
//! - [`propose`]: rule changes by change request, with their dry run.
//! - [`slot`]: a rule's schedule (`DAILY HH:MM`) and its slots.
//! - [`schedule`]: scheduled rules, their runs, and the expiry sweep.
//! - [`deferred`]: rule actions a modification lock deferred, applied
//!   when it ends.

pub mod condition;
pub mod deferred;
pub mod dryrun;
pub mod eval;
pub mod event;
pub mod explain;
pub mod facts;
pub mod library;
pub mod propose;
pub mod record;
pub mod schedule;
pub mod slot;
pub mod store;
