//! Detection: pure functions of (flow state, packet, now) and the engine that drives them.
//! No I/O, no clocks, no threads: the same code serves live capture, pcap replay, benchmarks
//! and tests.

pub mod aggregate;
mod close;
mod conn;
pub mod engine;
pub mod event;
mod handshake;
pub mod kernel;
mod overflow;
mod paws;
mod probe;
pub mod prober;
pub mod reset;
pub mod seq;
pub mod shared;
pub mod stats;

pub use engine::{Config, Engine, EngineCounters};
pub use event::{Event, Kind};
pub use reset::{Effect, Phase, RstClass};
