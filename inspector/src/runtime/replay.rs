//! `synscope pcap`: files through the same engine as live capture.

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    capture::pcap::{Frame, PcapError, Record, parse_frame},
    detect::{
        Config, Engine, Event,
        aggregate::{Aggregator, Rates},
        engine::Packet,
    },
    output::evidence::{Recorder, Writer, conn_key},
    output::{ndjson::EventLine, sink::LineSink},
};

/// The outcome of a replay: the engine (for the summary), frames read, skipped frames by
/// reason, and the error that stopped it early, if any.
pub struct Replay {
    pub engine: Engine,
    pub frames: u64,
    pub parse_errors: BTreeMap<&'static str, u64>,
    /// Events settled (aggregate episodes included).
    pub events: u64,
    /// The aggregate episodes among them (`syn_flood`, `reset_storm`), for the metrics. The
    /// per-connection events went to the outputs and are not kept: a capture of any size
    /// replays in bounded memory.
    pub episodes: Vec<Event>,
    /// Evidence pcaps written, and those that could not be.
    pub evidence_files: u64,
    pub evidence_errors: u64,
    /// Capture time from the first frame to the last.
    pub span_ns: u64,
    pub error: Option<PcapError>,
}

/// Segments the engine takes at once (see [`Engine::process_batch`]).
const BATCH: usize = 64;

/// Frames in capture order through one engine and the aggregator; settled events are kept and
/// written as NDJSON as they come (the first write error is kept for [`Replayer::finish`]).
pub struct Replayer<'a> {
    engine: Engine,
    agg: Aggregator,
    frames: u64,
    parse_errors: BTreeMap<&'static str, u64>,
    last_ts: u64,
    first_ts: u64,
    /// Parsed segments waiting for the engine, which takes them [`BATCH`] at a time.
    pending: Vec<(crate::wire::Segment, u64, u32)>,
    out: Vec<Event>,
    events: u64,
    episodes: Vec<Event>,
    json: Option<&'a mut LineSink>,
    evidence: Option<(Recorder, Writer)>,
}

impl<'a> Replayer<'a> {
    pub fn new(cfg: Config, json: Option<&'a mut LineSink>) -> Self {
        let rates = Rates::of(&cfg);
        let engine = Engine::new(cfg);
        let agg = Aggregator::new(rates, 1, engine.shared().clone());
        Self {
            engine,
            agg,
            frames: 0,
            parse_errors: BTreeMap::new(),
            last_ts: 0,
            first_ts: 0,
            pending: Vec::with_capacity(BATCH),
            out: Vec::new(),
            events: 0,
            episodes: Vec::new(),
            json,
            evidence: None,
        }
    }

    /// Writes an evidence pcap for every flagged connection (`ring`: bytes of packets kept).
    pub fn with_evidence(mut self, writer: Writer, ring: usize) -> Self {
        self.evidence = Some((Recorder::new(ring), writer));
        self
    }

    /// One record of the capture: a frame, or one the reader skipped (counted by reason).
    pub fn record(&mut self, rec: Record<'_>) {
        match rec {
            Record::Frame(f) => self.frame(&f),
            Record::Skipped(why) => {
                self.frames += 1;
                *self.parse_errors.entry(why).or_default() += 1;
            }
        }
    }

    /// One frame of the capture.
    pub fn frame(&mut self, frame: &Frame<'_>) {
        self.frames += 1;
        if self.first_ts == 0 {
            self.first_ts = frame.ts_ns;
        }
        match parse_frame(frame) {
            Ok((seg, _, ip)) => {
                if let Some((rec, _)) = &mut self.evidence {
                    rec.push(conn_key(&seg.src.into(), &seg.dst.into()), frame.ts_ns, ip);
                }
                // Each packet moves the engine's clock on (never back), as a frame of another
                // protocol does below.
                self.last_ts = self.last_ts.max(frame.ts_ns);
                self.pending.push((seg, frame.ts_ns, frame.ifindex));
                if self.pending.len() >= BATCH {
                    self.flush();
                }
            }
            Err(e) => {
                *self.parse_errors.entry(e.reason()).or_default() += 1;
                // Every frame moves capture time on, TCP or not, so timeouts fire in order.
                self.flush();
                self.last_ts = self.last_ts.max(frame.ts_ns);
                self.engine.advance(self.last_ts, &mut self.out);
                self.settle();
            }
        }
    }

    /// The waiting segments through the engine, then what they settled to the outputs.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: Vec<Packet<'_>> = self
            .pending
            .iter()
            .map(|(seg, ts_ns, ifindex)| Packet {
                ts_ns: *ts_ns,
                ifindex: *ifindex,
                seg,
                egress: false,
                weight: 1,
            })
            .collect();
        self.engine.process_batch(&batch, &mut self.out);
        drop(batch);
        self.pending.clear();
        self.settle();
    }

    /// Runs the aggregator on what the engine finished, and hands every settled event out.
    fn settle(&mut self) {
        let (tallies, watermark) = self.engine.take_tallies();
        self.agg.feed(0, tallies, watermark, &mut self.out);
        for e in self.out.drain(..) {
            let mut file = None;
            let mut ev = None;
            if let Some((rec, w)) = &mut self.evidence {
                ev = rec.for_event(&e);
                if let Some(ev) = &ev {
                    match w.write(&e, ev) {
                        Ok(p) => file = Some(p),
                        Err(err) => {
                            if w.failed == 1 {
                                tracing::error!(error = %err, "cannot write an evidence file; detection goes on");
                            }
                        }
                    }
                }
            }
            if let Some(w) = self.json.as_deref_mut() {
                w.line(&EventLine::from(&e).with_evidence(file.as_deref(), ev.as_ref()));
                w.flush_if_due();
            }
            self.events += 1;
            if matches!(
                e.kind,
                crate::detect::Kind::SynFlood | crate::detect::Kind::ResetStorm
            ) {
                self.episodes.push(e);
            }
        }
    }

    /// End of input: fires what is due at the last capture time, closes open episodes.
    pub fn finish(mut self, error: Option<PcapError>) -> std::io::Result<Replay> {
        self.flush();
        self.engine.finish(self.last_ts, &mut self.out);
        let (tallies, watermark) = self.engine.take_tallies();
        self.agg.feed(0, tallies, watermark, &mut self.out);
        self.agg.finish(&mut self.out);
        self.settle();
        if let Some(w) = self.json {
            w.flush();
        }
        Ok(Replay {
            span_ns: self.last_ts.saturating_sub(self.first_ts),
            evidence_errors: self.evidence.as_ref().map_or(0, |(_, w)| w.failed),
            engine: self.engine,
            frames: self.frames,
            parse_errors: self.parse_errors,
            events: self.events,
            episodes: self.episodes,
            evidence_files: self.evidence.map_or(0, |(_, w)| w.written),
            error,
        })
    }
}

/// Runs `files` in order through one engine; events go to `json` as they are settled, their
/// connections' packets to `evidence` (a writer and the ring size).
pub fn run(
    files: &[PathBuf],
    cfg: Config,
    json: Option<&mut LineSink>,
    evidence: Option<(Writer, usize)>,
) -> std::io::Result<Replay> {
    let mut r = Replayer::new(cfg, json);
    if let Some((w, ring)) = evidence {
        r = r.with_evidence(w, ring);
    }
    // On a terminal, long reads show progress (bytes of bytes, rate, ETA) on stderr.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let total: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec}, {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut error = None;
    for file in files {
        let opened = std::fs::File::open(file).map_err(|source| PcapError::Open {
            file: file.clone(),
            source,
        });
        let result = opened.and_then(|fh| {
            let len = fh.metadata().ok().map(|m| m.len());
            let reader = Progress {
                inner: fh,
                bar: bar.as_ref(),
                unreported: 0,
            };
            let frames = &mut r;
            crate::capture::pcap::read_sized(reader, len, file, |rec| {
                frames.record(rec);
                if let Some(b) = &bar
                    && frames.frames.is_multiple_of(65_536)
                {
                    b.set_message(format!("{} frames", frames.frames));
                }
            })
        });
        if let Err(e) = result {
            error = Some(e);
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r.finish(error)
}

/// A reader that moves a progress bar along (in steps of 1 MiB).
struct Progress<'a, R> {
    inner: R,
    bar: Option<&'a indicatif::ProgressBar>,
    unreported: u64,
}

impl<R: std::io::Read> std::io::Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = self.bar {
            self.unreported += n as u64;
            if self.unreported >= 1 << 20 || n == 0 {
                b.inc(self.unreported);
                self.unreported = 0;
            }
        }
        Ok(n)
    }
}
