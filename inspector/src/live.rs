//! `synscope live`: attach, run one pinned worker per ring buffer, merge their output, report.
//!
//! Threads: N workers, each owning one ring buffer (the kernel puts a flow's records in ring
//! `flow_hash % N`) and one engine, pinned to a core; the calling thread is the output thread.
//! Workers send events (and, for `--records`, the decoded records) over one bounded
//! `crossbeam` channel; when it is full the message is dropped and counted, so a slow output
//! never stalls a worker (a stalled worker would overflow its ring instead).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use synscope_common::stats;

use crate::{
    capture::{CapturedPacket, clock::MonoToWall, decode_record, ringbuf},
    cli::JsonSink,
    detect::{
        Config, Engine, Event,
        aggregate::{Aggregator, Rates, Tally},
        engine::{Packet, Totals},
    },
    loader::{self, Inline, InlineOptions},
    output::{
        ndjson::{EventLine, PacketLine, write_line},
        summary,
    },
};

/// Capacity of the worker → output channel.
const CHANNEL_CAP: usize = 1 << 16;
/// How long a worker waits on its ring before it looks at the clock and the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Records can still be in flight in the ring when a worker advances its clock: timers fire
/// only for deadlines older than this, so a late-read answer is never judged missing.
const CLOCK_SLACK_NS: u64 = 200_000_000;

/// What one worker did.
#[derive(Debug, Default)]
pub struct WorkerReport {
    pub records: u64,
    /// Records that could not be decoded, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    /// Events and records lost because the output channel was full.
    pub dropped_messages: u64,
    /// The core the worker was pinned to, if pinning succeeded.
    pub core: Option<usize>,
}

/// What a live run saw, for the summary and for tests.
pub struct LiveReport {
    /// Kernel-side counters, indexed by `synscope_common::stats`.
    pub kernel: [u64; stats::COUNT as usize],
    pub workers: Vec<WorkerReport>,
    /// The workers' engines added up.
    pub totals: Totals,
    /// Attachment mode used (`native` or `generic`).
    pub attach_mode: &'static str,
    pub egress: bool,
}

impl LiveReport {
    /// Records read by all workers.
    pub fn records(&self) -> u64 {
        self.workers.iter().map(|w| w.records).sum()
    }

    /// Human-readable report: the engine summary, then kernel and worker counters, one per line.
    pub fn render(&self) -> String {
        let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
        for w in &self.workers {
            for (k, v) in &w.decode_errors {
                *errors.entry(*k).or_default() += v;
            }
        }
        let mut s = summary::render(&self.totals, self.records(), &BTreeMap::new());
        s.push_str(&format!(
            "xdp attach mode: {}, tc egress: {}\nkernel counters:\n",
            self.attach_mode,
            if self.egress { "attached" } else { "off" }
        ));
        for (name, v) in stats::NAMES.iter().zip(self.kernel) {
            s.push_str(&format!("  {name:<24}{v}\n"));
        }
        s.push_str(&format!(
            "userspace:\n  {:<24}{}\n  {:<24}{}\n  {:<24}{}\n",
            "records_read",
            self.records(),
            "workers",
            self.workers.len(),
            "dropped_messages",
            self.workers.iter().map(|w| w.dropped_messages).sum::<u64>()
        ));
        s.push_str(&format!(
            "  {:<24}{}\n  {:<24}{}\n",
            "events", self.totals.counters.events, "events_folded", self.totals.counters.folded
        ));
        for (reason, n) in &errors {
            s.push_str(&format!("  {:<24}{n}\n", format!("decode_error_{reason}")));
        }
        for (i, w) in self.workers.iter().enumerate() {
            s.push_str(&format!(
                "  worker {i}: {} records, core {}\n",
                w.records,
                w.core
                    .map_or_else(|| "unpinned".to_owned(), |c| c.to_string())
            ));
        }
        s
    }
}

/// Opens an NDJSON destination.
pub fn open_sink(sink: &JsonSink) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        JsonSink::Stdout => Box::new(BufWriter::new(io::stdout())),
        JsonSink::File(p) => {
            Box::new(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create output file {}", p.display())
            })?))
        }
    })
}

/// Where a live run's output goes.
#[derive(Default)]
pub struct Sinks<'a> {
    /// Anomaly events, NDJSON in the envelope of ANOMALIES.md.
    pub events: Option<&'a mut dyn Write>,
    /// Every decoded record, NDJSON (debugging; what the kernel selected).
    pub records: Option<&'a mut dyn Write>,
    /// Called with every event (the demo, tests).
    pub on_event: Option<&'a mut dyn FnMut(&Event)>,
}

enum Msg {
    Event(Event),
    Record(Box<CapturedPacket>),
    /// A worker's finished per-second counts and its watermark, for the aggregate anomalies.
    Tally {
        worker: usize,
        tallies: Vec<Tally>,
        watermark: u64,
    },
}

/// Attaches inline mode and runs until `stop` is set or `duration` elapses; see [`run`].
pub fn run_inline(
    opts: &InlineOptions,
    cfg: Config,
    duration: Option<Duration>,
    stop: &AtomicBool,
    sinks: Sinks<'_>,
) -> anyhow::Result<LiveReport> {
    let mut inline = loader::attach_inline(opts)?;
    tracing::info!(
        iface = %opts.iface,
        ifindex = inline.ifindex,
        mode = inline.attach_mode,
        egress = inline.egress,
        workers = inline.rings.len(),
        xdp_prog_id = inline.prog_ids.0,
        egress_prog_id = inline.prog_ids.1.unwrap_or(0),
        "attached; stop with Ctrl-C"
    );
    let report = run(
        &mut inline,
        cfg,
        duration,
        &|| stop.load(Ordering::Relaxed),
        sinks,
    );
    drop(inline);
    tracing::info!("detached");
    report
}

/// The cores workers are pinned to: worker i gets the i-th usable core (wrapping).
fn cores() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Default worker count: one per usable core, within what the kernel side provides.
pub fn default_workers() -> u32 {
    (cores().len().max(1) as u32).min(synscope_common::MAX_WORKERS)
}

/// Runs the workers on `inline`'s rings until `stop()` or `duration`, writing output as it
/// comes; then drains what is left, joins the workers and reads the kernel counters.
pub fn run(
    inline: &mut Inline,
    cfg: Config,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
    mut sinks: Sinks<'_>,
) -> anyhow::Result<LiveReport> {
    let clock = MonoToWall::now();
    let deadline = duration.map(|d| Instant::now() + d);
    let (tx, rx) = bounded::<Msg>(CHANNEL_CAP);
    let quit = Arc::new(AtomicBool::new(false));
    let want_records = sinks.records.is_some();
    let cores = cores();
    let shared = Arc::new(crate::detect::shared::Shared::new());
    let workers_n = inline.rings.len();
    let mut agg = Aggregator::new(Rates::of(&cfg), workers_n, shared.clone());
    let mut handles = Vec::new();
    for (i, ring) in std::mem::take(&mut inline.rings).into_iter().enumerate() {
        let (tx, quit, cfg, shared) = (tx.clone(), quit.clone(), cfg.clone(), shared.clone());
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let h = thread::Builder::new()
            .name(format!("synscope-w{i}"))
            .spawn(move || worker(i, ring, cfg, shared, clock, tx, want_records, &quit, core))
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(tx);
    let mut write_err: Option<io::Error> = None;
    loop {
        if stop() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                if let Err(e) = deliver(m, &mut agg, &mut sinks) {
                    write_err.get_or_insert(e);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every worker has ended (an error): stop and report it below.
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if write_err.is_some() {
            break;
        }
    }
    quit.store(true, Ordering::Release);
    // Workers do a last drain of their rings and exit; take everything they still send.
    drain_until_closed(&rx, |m| {
        if let Err(e) = deliver(m, &mut agg, &mut sinks) {
            write_err.get_or_insert(e);
        }
    });
    // Episodes still open when the capture stops end with it.
    let mut last = Vec::new();
    agg.finish(&mut last);
    for e in last {
        if let Err(e) = deliver(Msg::Event(e), &mut agg, &mut sinks) {
            write_err.get_or_insert(e);
        }
    }
    let mut workers = Vec::new();
    let mut engines = Vec::new();
    for h in handles {
        let (engine, report) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
            .context("worker")?;
        engines.push(engine);
        workers.push(report);
    }
    if let Some(e) = write_err
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        // A closed stdout (e.g. `| head`) ends the run; it is not a capture failure.
        return Err(e).context("writing NDJSON");
    }
    for w in [sinks.events, sinks.records].into_iter().flatten() {
        let _ = w.flush();
    }
    Ok(LiveReport {
        kernel: inline.stats()?,
        workers,
        totals: Totals::of(&engines),
        attach_mode: inline.attach_mode,
        egress: inline.egress,
    })
}

/// Hands one worker message to the sinks (tallies through the aggregator).
fn deliver(m: Msg, agg: &mut Aggregator, sinks: &mut Sinks<'_>) -> io::Result<()> {
    match m {
        Msg::Event(e) => {
            if let Some(f) = sinks.on_event.as_deref_mut() {
                f(&e);
            }
            match sinks.events.as_deref_mut() {
                Some(w) => write_line(w, &EventLine::from(&e)),
                None => Ok(()),
            }
        }
        Msg::Record(p) => match sinks.records.as_deref_mut() {
            Some(w) => write_line(w, &PacketLine::from(&*p)),
            None => Ok(()),
        },
        Msg::Tally {
            worker,
            tallies,
            watermark,
        } => {
            let mut out = Vec::new();
            agg.feed(worker, tallies, watermark, &mut out);
            out.into_iter()
                .try_for_each(|e| deliver(Msg::Event(e), agg, sinks))
        }
    }
}

fn drain_until_closed(rx: &Receiver<Msg>, mut f: impl FnMut(Msg)) {
    while let Ok(m) = rx.recv() {
        f(m);
    }
}

fn send(tx: &Sender<Msg>, m: Msg, dropped: &mut u64) {
    match tx.try_send(m) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => *dropped += 1,
        // The output thread is gone: nothing to report to.
        Err(TrySendError::Disconnected(_)) => {}
    }
}

#[expect(clippy::too_many_arguments, reason = "everything a worker thread owns")]
/// One worker: drains its ring into its engine until `quit`, then drains once more.
fn worker(
    index: usize,
    mut ring: RingBuf<MapData>,
    mut cfg: Config,
    shared: Arc<crate::detect::shared::Shared>,
    clock: MonoToWall,
    tx: Sender<Msg>,
    want_records: bool,
    quit: &AtomicBool,
    core: Option<core_affinity::CoreId>,
) -> anyhow::Result<(Engine, WorkerReport)> {
    let mut report = WorkerReport {
        core: core
            .filter(|c| core_affinity::set_for_current(*c))
            .map(|c| c.id),
        ..Default::default()
    };
    // Inline mode sees control packets and each handshake's follow-ups, not every segment.
    cfg.full_visibility = false;
    let mut engine = Engine::with_shared(cfg, shared);
    let mut out = Vec::new();
    let mut last_watermark = 0;
    loop {
        let done = quit.load(Ordering::Acquire);
        ringbuf::drain(
            &mut ring,
            if done { Duration::ZERO } else { POLL },
            |bytes| {
                report.records += 1;
                match decode_record(bytes, |ns| clock.to_unix_ns(ns)) {
                    Ok(p) => {
                        engine.process(
                            &Packet {
                                ts_ns: u64::try_from(p.ts_unix_ns).unwrap_or(0),
                                ifindex: p.ifindex,
                                seg: &p.segment,
                            },
                            &mut out,
                        );
                        if want_records {
                            send(&tx, Msg::Record(Box::new(p)), &mut report.dropped_messages);
                        }
                    }
                    Err(e) => *report.decode_errors.entry(e.reason()).or_default() += 1,
                }
            },
        )
        .context("reading the ring buffer")?;
        // Time passes without packets too: fire what is due.
        let now = clock.to_unix_ns(MonoToWall::monotonic_now_ns());
        let now = u64::try_from(now).unwrap_or(0);
        engine.advance(now.saturating_sub(CLOCK_SLACK_NS), &mut out);
        for e in out.drain(..) {
            send(&tx, Msg::Event(e), &mut report.dropped_messages);
        }
        let (tallies, watermark) = engine.take_tallies();
        if !tallies.is_empty() || watermark != last_watermark {
            last_watermark = watermark;
            // Blocking: the aggregate needs every worker's count of every second.
            let _ = tx.send(Msg::Tally {
                worker: index,
                tallies,
                watermark,
            });
        }
        if done {
            break;
        }
    }
    Ok((engine, report))
}
