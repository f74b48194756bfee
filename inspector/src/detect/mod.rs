//! Detection: pure functions of (flow state, packet, now) and the engine that drives them.
//! No I/O, no clocks, no threads: the same code serves live capture, pcap replay, benchmarks
//! and tests.

pub mod aggregate;
pub mod engine;
pub mod event;
pub mod reset;
pub mod seq;
pub mod shared;
pub mod stats;

pub use engine::{Config, Engine, EngineCounters};
pub use event::{Event, Kind};
pub use reset::{Phase, RstClass};
