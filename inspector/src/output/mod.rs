//! Outputs: NDJSON lines, their sinks, evidence pcaps, human-readable summaries and the live
//! view. Writers only format and store; they decide nothing.

pub mod evidence;
pub mod ndjson;
pub mod sink;
pub mod summary;
pub mod view;
