//! `synscope pcap`: files through the same engine as live capture.

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use crate::{
    capture::pcap::{PcapError, parse_frame, read_file},
    detect::{Config, Engine, Event, engine::Packet},
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

/// Runs `files` in order through one engine; events go to `json` as they are settled.
pub fn run(
    files: &[PathBuf],
    cfg: Config,
    mut json: Option<&mut dyn Write>,
) -> std::io::Result<Replay> {
    let mut engine = Engine::new(cfg);
    let mut frames = 0u64;
    let mut parse_errors = BTreeMap::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut last_ts = 0u64;
    let mut error = None;
    let mut io_err = None;
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
            for e in out.drain(..) {
                if let Some(w) = json.as_deref_mut()
                    && let Err(err) = write_line(w, &EventLine::from(&e))
                {
                    io_err.get_or_insert(err);
                }
                events.push(e);
            }
        });
        if let Err(e) = r {
            error = Some(e);
            break;
        }
    }
    engine.finish(last_ts, &mut out);
    for e in out.drain(..) {
        if let Some(w) = json.as_deref_mut() {
            write_line(w, &EventLine::from(&e))?;
        }
        events.push(e);
    }
    if let Some(e) = io_err {
        return Err(e);
    }
    if let Some(w) = json {
        w.flush()?;
    }
    Ok(Replay {
        engine,
        frames,
        parse_errors,
        events,
        error,
    })
}
