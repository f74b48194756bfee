//! `synscope live`: attach, read records until stopped, report.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use synscope_common::stats;

use crate::{
    capture::{CapturedPacket, clock::MonoToWall, decode_record, ringbuf},
    cli::JsonSink,
    loader::{self, Inline, InlineOptions},
    output::ndjson::{PacketLine, write_line},
};

/// What a live run saw, for the summary and for tests.
#[derive(Debug, Default)]
pub struct LiveReport {
    /// Kernel-side counters, indexed by `synscope_common::stats`.
    pub kernel: [u64; stats::COUNT as usize],
    /// Records read from the ring buffer.
    pub records: u64,
    /// Records that could not be decoded, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    /// Attachment mode used (`native` or `generic`).
    pub attach_mode: &'static str,
}

impl LiveReport {
    /// Human-readable counters, one per line.
    pub fn render(&self) -> String {
        let mut s = format!("xdp attach mode: {}\nkernel counters:\n", self.attach_mode);
        for (name, v) in stats::NAMES.iter().zip(self.kernel) {
            s.push_str(&format!("  {name:<24}{v}\n"));
        }
        s.push_str(&format!(
            "userspace:\n  {:<24}{}\n",
            "records_read", self.records
        ));
        for (reason, n) in &self.decode_errors {
            s.push_str(&format!("  {:<24}{n}\n", format!("decode_error_{reason}")));
        }
        s
    }
}

/// Opens the NDJSON destination.
pub fn open_sink(sink: &JsonSink) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        JsonSink::Stdout => Box::new(BufWriter::new(io::stdout())),
        JsonSink::File(p) => {
            Box::new(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create --json file {}", p.display())
            })?))
        }
    })
}

/// Attaches inline mode and captures until `stop` is set or `duration` elapses; see [`capture`].
pub fn run_inline(
    opts: &InlineOptions,
    duration: Option<Duration>,
    stop: &AtomicBool,
    json: Option<&mut dyn Write>,
    on_packet: impl FnMut(&CapturedPacket),
) -> anyhow::Result<LiveReport> {
    let mut inline = loader::attach_inline(opts)?;
    tracing::info!(
        iface = %opts.iface,
        ifindex = inline.ifindex,
        mode = inline.attach_mode,
        "attached; stop with Ctrl-C"
    );
    let report = capture(
        &mut inline,
        duration,
        &|| stop.load(Ordering::Relaxed),
        json,
        on_packet,
    )?;
    drop(inline);
    tracing::info!("detached");
    Ok(report)
}

/// Reads records until `stop()` or `duration`. Every decoded packet goes to `on_packet` (and
/// to `json`, if given); undecodable records are counted by reason.
pub fn capture(
    inline: &mut Inline,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
    mut json: Option<&mut dyn Write>,
    mut on_packet: impl FnMut(&CapturedPacket),
) -> anyhow::Result<LiveReport> {
    let clock = MonoToWall::now();
    let deadline = duration.map(|d| Instant::now() + d);
    let mut report = LiveReport {
        attach_mode: inline.attach_mode,
        ..Default::default()
    };
    let write_err: RefCell<Option<io::Error>> = RefCell::new(None);
    let mut handle = |bytes: &[u8], report: &mut LiveReport| {
        report.records += 1;
        match decode_record(bytes, |ns| clock.to_unix_ns(ns)) {
            Ok(p) => {
                if let Some(out) = json.as_deref_mut()
                    && let Err(e) = write_line(out, &PacketLine::from(&p))
                {
                    write_err.borrow_mut().get_or_insert(e);
                }
                on_packet(&p);
            }
            Err(e) => *report.decode_errors.entry(e.reason()).or_default() += 1,
        }
    };
    loop {
        let done = stop() || deadline.is_some_and(|d| Instant::now() >= d);
        // One last drain after the stop so records already in the ring are not lost.
        ringbuf::drain(
            &mut inline.ring,
            Duration::from_millis(if done { 0 } else { 100 }),
            |b| handle(b, &mut report),
        )
        .context("reading the ring buffer")?;
        if write_err.borrow().is_some() || done {
            break;
        }
    }
    if let Some(e) = write_err.into_inner() {
        // A closed stdout (e.g. `| head`) ends the run; it is not a capture failure.
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e).context("writing NDJSON");
        }
    }
    if let Some(out) = json {
        let _ = out.flush();
    }
    report.kernel = inline.stats()?;
    Ok(report)
}
