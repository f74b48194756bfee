//! `synscope pcap`: files through the same engine as live capture.

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use crate::{
    capture::pcap::{PcapError, parse_frame, read_file},
    detect::{
        Config, Engine, Event,
        aggregate::{Aggregator, Rates},
        engine::Packet,
    },
    output::ndjson::{EventLine, write_line},
};

/// The outcome of a replay: the engine (for the summary), frames read, skipped frames by
/// reason, and the error that stopped it early, if any.
pub struct Replay {
    pub engine: Engine,
    pub frames: u64,
    pub parse_errors: BTreeMap<&'static str, u64>,
    pub events: Vec<Event>,
    pub error: Option<PcapError>,
}

/// Where settled events go: kept for the caller and written as NDJSON as they come. The first
/// write error is kept and returned at the end.
struct Sink<'a> {
    json: Option<&'a mut dyn Write>,
    events: Vec<Event>,
    err: Option<std::io::Error>,
}

impl Sink<'_> {
    fn take(&mut self, out: &mut Vec<Event>) {
        for e in out.drain(..) {
            if let Some(w) = self.json.as_deref_mut()
                && let Err(err) = write_line(w, &EventLine::from(&e))
            {
                self.err.get_or_insert(err);
            }
            self.events.push(e);
        }
    }
}

/// Runs `files` in order through one engine; events go to `json` as they are settled.
pub fn run(
    files: &[PathBuf],
    cfg: Config,
    json: Option<&mut dyn Write>,
) -> std::io::Result<Replay> {
    let rates = Rates::of(&cfg);
    let mut engine = Engine::new(cfg);
    let mut agg = Aggregator::new(rates, 1, engine.shared().clone());
    let mut frames = 0u64;
    let mut parse_errors = BTreeMap::new();
    let mut out = Vec::new();
    let mut sink = Sink {
        json,
        events: Vec::new(),
        err: None,
    };
    let mut last_ts = 0u64;
    let mut error = None;
    let mut aggregate = |engine: &mut Engine, out: &mut Vec<Event>| {
        let (tallies, watermark) = engine.take_tallies();
        agg.feed(0, tallies, watermark, out);
    };
    for file in files {
        let r = read_file(file, |frame| {
            frames += 1;
            // Every frame moves capture time on, TCP or not, so timeouts fire in order.
            last_ts = last_ts.max(frame.ts_ns);
            engine.advance(last_ts, &mut out);
            match parse_frame(&frame) {
                Ok((seg, _)) => {
                    engine.process(
                        &Packet {
                            ts_ns: frame.ts_ns,
                            ifindex: frame.ifindex,
                            seg: &seg,
                        },
                        &mut out,
                    );
                }
                Err(e) => *parse_errors.entry(e.reason()).or_default() += 1,
            }
            aggregate(&mut engine, &mut out);
            sink.take(&mut out);
        });
        if let Err(e) = r {
            error = Some(e);
            break;
        }
    }
    engine.finish(last_ts, &mut out);
    aggregate(&mut engine, &mut out);
    agg.finish(&mut out);
    sink.take(&mut out);
    if let Some(e) = sink.err {
        return Err(e);
    }
    if let Some(w) = sink.json {
        w.flush()?;
    }
    Ok(Replay {
        engine,
        frames,
        parse_errors,
        events: sink.events,
        error,
    })
}
