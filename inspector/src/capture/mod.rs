//! Capture sources. Each yields decoded packets with their capture metadata; none of them
//! interprets TCP beyond parsing.

pub mod clock;
pub mod linkwatch;
pub mod nstat;
pub mod pcap;
pub mod record;
pub mod ringbuf;
pub mod sockdiag;

pub use record::{CapturedPacket, RecordError, decode_record};
