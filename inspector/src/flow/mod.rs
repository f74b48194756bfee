//! Per-flow state: the symmetric key, the bounded per-worker table with its timers.

pub mod index;
pub mod key;
pub mod table;
pub mod wheel;

pub use key::{Endpoint, FlowKey, Side};
pub use table::{EvictReason, FlowTable, TableStats, TimerKind};
