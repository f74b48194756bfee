//! Outputs: NDJSON lines and human-readable summaries. Writers only format; they decide nothing.

pub mod ndjson;
pub mod sink;
pub mod summary;
pub mod view;
