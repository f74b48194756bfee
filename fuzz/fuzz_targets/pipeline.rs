//! The whole userspace path on arbitrary bytes: as a capture file (pcap/pcapng reader, link
//! layers, IP/TCP parsing, engine, aggregator, NDJSON), and as kernel ring-buffer records. Any
//! panic, overflow or hang is a bug: bad input must be a counted skip or an error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use synscope_common::PacketRecord;
use synscope::{
    capture::{decode_record, pcap::read_sized},
    detect::Config,
    runtime::replay::Replayer,
};

fuzz_target!(|data: &[u8]| {
    let mut json = synscope::output::sink::LineSink::memory();
    let cfg = Config {
        max_flows: 64,
        flood_rate: 3,
        rst_rate: 3,
        ..Config::default()
    };
    let mut r = Replayer::new(cfg, Some(&mut json));
    let err = read_sized(data, Some(data.len() as u64), Path::new("fuzz.pcap"), |rec| {
        r.record(rec)
    })
    .err();
    let _ = r.finish(err);
    // The same bytes as ring-buffer records (the kernel's side of the contract).
    for chunk in data.chunks(PacketRecord::SIZE) {
        let _ = decode_record(chunk, i128::from);
    }
});
