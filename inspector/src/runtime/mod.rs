//! The machinery every capture mode shares: pinned workers each running an engine (a
//! [`WorkerCore`]), one output thread ([`Crew::output`]) that merges their events, tallies and
//! snapshots into the sinks, and the reports. The modes are peers on top of it: [`inline`]
//! (BPF ring buffers on a live host), [`tap`] (AF_XDP on a mirror port) and [`replay`]
//! (capture files, one engine on the caller's thread).
//!
//! Threads (inline): N workers, each owning one ring buffer (the kernel puts a flow's records in ring
//! `flow_hash % N`) and one engine, pinned to a core; the calling thread is the output thread.
//! Workers send events (and, for `--records`, the decoded records) over one bounded
//! `crossbeam` channel; when it is full the message is dropped and counted, so a slow output
//! never stalls a worker (a stalled worker would overflow its ring instead).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use hdrhistogram::Histogram;
use synscope_common::stats;

pub mod inline;
pub mod leaks;
pub mod replay;
#[cfg(feature = "tap")]
pub mod tap;

use crate::{
    capture::{CapturedPacket, clock::MonoToWall, nstat},
    detect::{
        Config, Engine, Event, Kind,
        aggregate::{Aggregator, Rates, Tally},
        engine::{Packet, Totals},
    },
    metrics::{MetricsState, WorkerSnapshot},
    output::evidence::{self, Evidence},
    output::{
        ndjson::{EventLine, PacketLine},
        sink::{FLUSH_EVERY, LineSink},
        summary,
    },
};

/// Capacity of the worker → output channel.
const CHANNEL_CAP: usize = 1 << 16;
/// How long a worker waits on its ring before it looks at the clock and the stop flag. The
/// kernel side wakes a worker only once its backlog is ~32 KiB, so this is also how long a
/// record may wait at low rates (bench/RESULTS.md: detection latency).
const POLL: Duration = Duration::from_millis(5);
/// Records can still be in flight in the ring when a worker advances its clock: timers fire
/// only for deadlines older than this, so a late-read answer is never judged missing.
const CLOCK_SLACK_NS: u64 = 200_000_000;
/// How often workers send their counters to the output thread (metrics) and it reads the
/// kernel's.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

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

impl WorkerReport {
    /// What `/metrics` shows of this worker and its engine.
    pub fn snapshot(&self, engine: &Engine) -> WorkerSnapshot {
        WorkerSnapshot::of(
            engine,
            self.records,
            self.decode_errors.values().sum(),
            self.dropped_messages,
        )
    }
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
    /// Writes to `--json`/`--records`/`--evidence` that failed (a full disk): the run went on.
    pub output_errors: u64,
    /// The interface went away during the run (the run ended there).
    pub interface_lost: bool,
    /// How long the capture ran.
    pub ran: Duration,
    /// Tap mode: one entry per AF_XDP socket (RX queue).
    pub xsk: Vec<XskReport>,
    /// From the capture time of the packet (or deadline) that settled each event to the
    /// event leaving the output thread, µs.
    pub detection_latency: Histogram<u64>,
    /// Inline mode: how much the host's watched TCP counters (`capture::nstat::WATCHED`) rose
    /// during the run.
    pub host_tcp: Option<[u64; nstat::WATCHED.len()]>,
    /// Inline mode: the probe leaks confirmed against the socket table.
    pub leaks: Option<LeakSummary>,
}

/// One AF_XDP socket of tap mode: its mode and the kernel's `XDP_STATISTICS`.
#[derive(Debug, Default, Clone)]
pub struct XskReport {
    pub queue: u32,
    /// `zero-copy` or `copy`.
    pub bind_mode: &'static str,
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_invalid_descs: u64,
    /// Frames a worker handed to the worker that owns their flow.
    pub handed_over: u64,
    /// Hand-overs lost because the owner's queue was full.
    pub handover_full: u64,
}

impl LiveReport {
    /// What `--summary-json` carries of a live run besides the engines' totals: the kernel's
    /// counters (`ring_full` and the other drops included), the host's TCP counters, the
    /// userspace drops and the confirmed leaks, as the text summary shows them.
    pub fn json_extra(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::{Value, json};
        // Counter names beside their values, as one JSON object.
        let named = |names: &[&str], values: &[u64]| -> Value {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| ((*n).to_string(), Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let mut m = serde_json::Map::new();
        m.insert("ran_s".into(), json!(self.ran.as_secs_f64()));
        m.insert("kernel".into(), named(&stats::NAMES, &self.kernel));
        m.insert(
            "dropped_messages".into(),
            json!(self.workers.iter().map(|w| w.dropped_messages).sum::<u64>()),
        );
        m.insert("output_errors".into(), json!(self.output_errors));
        if let Some(d) = &self.host_tcp {
            m.insert("host_tcp_counters".into(), named(&nstat::WATCHED, d));
        }
        if let Some(l) = &self.leaks {
            m.insert(
                "leaks".into(),
                json!({"confirmed": l.confirmed, "unconfirmed": l.unconfirmed,
                       "open_at_exit": l.open_at_exit, "reaped": l.reaped}),
            );
        }
        m
    }

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
        let mut s = format!("ran {:.1} s\n", self.ran.as_secs_f64());
        s.push_str(&summary::render(
            &self.totals,
            self.records(),
            &BTreeMap::new(),
        ));
        if self.output_errors > 0 {
            s.push_str(&format!(
                "output_errors: {} (writes that failed; see the log)\n",
                self.output_errors
            ));
        }
        if let Some(l) = &self.leaks
            && l.confirmed + l.unconfirmed > 0
        {
            s.push_str(&format!(
                "probe leaks in the socket table: {} confirmed ({} not found), {} still open at exit, {} reaped\n",
                l.confirmed, l.unconfirmed, l.open_at_exit, l.reaped
            ));
        }
        if let Some(d) = &self.host_tcp {
            s.push_str("host TCP counters during the run (nstat):");
            for (n, v) in nstat::WATCHED.iter().zip(d) {
                s.push_str(&format!(" {n} {v}"));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "ingress attach mode: {}, tc egress: {}\nkernel counters:\n",
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
        for x in &self.xsk {
            s.push_str(&format!(
                "  xsk queue {}: {} mode, rx_dropped {}, rx_ring_full {}, rx_invalid_descs {}, handed over {}, hand-over queue full {}\n",
                x.queue,
                x.bind_mode,
                x.rx_dropped,
                x.rx_ring_full,
                x.rx_invalid_descs,
                x.handed_over,
                x.handover_full
            ));
        }
        let h = &self.detection_latency;
        if !h.is_empty() {
            s.push_str(&format!(
                "  detection latency (packet or deadline -> event out): p50 {} us, p99 {} us, max {} us (n={})\n",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                h.len()
            ));
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

/// Where a live run's output goes.
#[derive(Default)]
pub struct Sinks<'a> {
    /// Anomaly events, NDJSON in the envelope of docs/anomalies.md.
    pub events: Option<&'a mut LineSink>,
    /// Every decoded record, NDJSON (debugging; what the kernel selected).
    pub records: Option<&'a mut LineSink>,
    /// Called with every event (the demo, tests).
    pub on_event: Option<&'a mut dyn FnMut(&Event)>,
    /// `--metrics`: the state `/metrics` serves, kept current by the output thread.
    pub metrics: Option<Arc<Mutex<MetricsState>>>,
    /// `--evidence`: where flagged connections' packets go, and each worker's ring size.
    pub evidence: Option<(evidence::Writer, usize)>,
    /// `--interval`: the periodic view (needs `metrics` for the workers' counters).
    pub view: Option<crate::output::view::View>,
    /// Events handed to the sinks (per-connection verdicts and aggregate episodes).
    pub events_sent: u64,
    /// The interface events are captured on (set by the output thread).
    pub iface: Option<String>,
    /// Inline mode: the host's TCP counters when the run started (`capture::nstat`), so
    /// `accept_queue_overflow` and `paws_nat_collision` can say what the kernel counted since.
    pub host_tcp_base: Option<[u64; nstat::WATCHED.len()]>,
    /// Inline mode: `--reap-leaks AFTER`.
    pub reap_leaks: Option<Duration>,
    /// Inline mode: probe leaks confirmed against the host's socket table.
    pub leaks: Option<leaks::LeakWatch>,
}

/// What became of the probe leaks of a run (inline mode).
#[derive(Clone, Copy, Debug, Default)]
pub struct LeakSummary {
    pub confirmed: u64,
    pub unconfirmed: u64,
    pub open_at_exit: usize,
    pub reaped: u64,
}

/// Shows the open and reaped leaks in the metrics.
fn publish_leaks(sinks: &Sinks<'_>) {
    if let (Some(m), Some(l)) = (&sinks.metrics, &sinks.leaks) {
        lock(m).set_leaks(l.open_by(), l.reaped.clone());
    }
}

pub(crate) enum Msg {
    /// An event and, with `--evidence`, its connection's packets.
    Event(Event, Option<Evidence>),
    Record(Box<CapturedPacket>),
    /// A worker's cumulative counters, once a second when metrics are on.
    Snapshot {
        worker: usize,
        snap: Box<WorkerSnapshot>,
    },
    /// A worker's finished per-second counts and its watermark, for the aggregate anomalies.
    Tally {
        worker: usize,
        tallies: Vec<Tally>,
        watermark: u64,
    },
}

/// The cores workers are pinned to: worker i gets the i-th usable core (wrapping).
fn cores() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Cores per default worker. Inline workers share the host's cores with its applications and
/// one worker keeps up with several hundred thousand selected packets per second; measured on
/// 2 vCPUs, a second worker cost the host's connection rate 17% instead of 6%
/// (bench/RESULTS.md).
const CORES_PER_WORKER: usize = 8;

/// Default worker count: one per [`CORES_PER_WORKER`] usable cores, at least one, within what
/// the kernel side provides.
pub fn default_workers() -> u32 {
    ((cores().len() / CORES_PER_WORKER).max(1) as u32).min(synscope_common::MAX_WORKERS)
}

/// The attached kernel side, as the output thread sees it.
pub(crate) struct Source<'a> {
    /// The kernel's counters, summed over CPUs.
    pub kernel: &'a dyn Fn() -> Option<[u64; stats::COUNT as usize]>,
    /// Detaches the programs (before the workers' last drain).
    pub detach: &'a dyn Fn(),
    /// The interface attached to.
    pub iface: &'a str,
    pub ifindex: u32,
}

/// What every capture mode's workers share: the output channel, the quit flag, the
/// cross-flow state, the clock and the core list.
pub(crate) struct Crew {
    pub tx: Sender<Msg>,
    pub rx: Receiver<Msg>,
    pub quit: Arc<AtomicBool>,
    pub shared: Arc<crate::detect::shared::Shared>,
    pub clock: MonoToWall,
    pub cores: Vec<core_affinity::CoreId>,
    pub want_records: bool,
    pub want_snapshots: bool,
    /// Bytes of each worker's evidence ring (None: no `--evidence`).
    pub evidence_ring: Option<usize>,
    /// When the run started (the summary says how long it ran).
    pub started: Instant,
}

impl Crew {
    /// Workers send records and snapshots only when `sinks` has a use for them.
    pub fn new(sinks: &Sinks<'_>) -> Self {
        let (tx, rx) = bounded::<Msg>(CHANNEL_CAP);
        Self {
            tx,
            rx,
            quit: Arc::new(AtomicBool::new(false)),
            shared: Arc::new(crate::detect::shared::Shared::new()),
            clock: MonoToWall::now(),
            cores: cores(),
            want_records: sinks.records.is_some(),
            want_snapshots: sinks.metrics.is_some(),
            evidence_ring: sinks.evidence.as_ref().map(|e| e.1),
            started: Instant::now(),
        }
    }

    /// The core worker `i` is pinned to.
    pub fn core(&self, i: usize) -> Option<core_affinity::CoreId> {
        (!self.cores.is_empty()).then(|| self.cores[i % self.cores.len()])
    }

    /// A worker's engine-side state, for worker `index`. Live captures (inline and tap) see
    /// control packets and each handshake's follow-ups, not every segment.
    pub fn worker(&self, index: usize, cfg: &Config) -> WorkerCore {
        let cfg = Config {
            full_visibility: false,
            ..cfg.clone()
        };
        WorkerCore {
            index,
            engine: Engine::with_shared(cfg, self.shared.clone()),
            pending: Vec::with_capacity(BATCH),
            out: Vec::new(),
            tx: self.tx.clone(),
            clock: self.clock,
            want_records: self.want_records,
            want_snapshots: self.want_snapshots,
            recorder: self.evidence_ring.map(evidence::Recorder::new),
            last_snapshot: Instant::now(),
            last_watermark: 0,
            report: WorkerReport::default(),
        }
    }

    /// The output thread's loop (the caller's thread): delivers worker messages until
    /// `stop()`, `deadline` or every worker has ended; then tells the workers to quit, takes
    /// what they still send, closes open aggregate episodes, and joins them.
    pub fn output(
        self,
        cfg: &Config,
        handles: Vec<thread::JoinHandle<anyhow::Result<(Engine, WorkerReport)>>>,
        deadline: Option<Instant>,
        stop: &dyn Fn() -> bool,
        source: Source<'_>,
        mut sinks: Sinks<'_>,
    ) -> anyhow::Result<CrewResult> {
        let Crew {
            tx,
            rx,
            quit,
            shared,
            clock,
            started,
            ..
        } = self;
        drop(tx);
        // Inline: the engines check an overflow verdict against the host's own counters.
        let mut listen = sinks.host_tcp_base.map(|base| {
            shared.hear_listen_counters();
            (shared.clone(), listen_drops(&base), Instant::now())
        });
        let mut agg = Aggregator::new(Rates::of(cfg), handles.len(), shared);
        let mut latency = latency_histogram();
        let mut take = |m: Msg, agg: &mut Aggregator, sinks: &mut Sinks<'_>| {
            if let Msg::Event(e, _) = &m {
                let now =
                    u64::try_from(clock.to_unix_ns(MonoToWall::monotonic_now_ns())).unwrap_or(0);
                let _ =
                    latency.record((now.saturating_sub(e.ts_ns) / 1000).clamp(1, 3_600_000_000));
            }
            deliver(m, agg, sinks);
            // Every line reaches its sink within FLUSH_EVERY of being written.
            for w in [&mut sinks.events, &mut sinks.records]
                .into_iter()
                .flatten()
            {
                w.flush_if_due();
            }
        };
        let mut kernel_read = Instant::now();
        let mut watch = match crate::capture::linkwatch::LinkWatch::new(
            source.iface,
            source.ifindex,
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch link events: the loss of the interface would go unnoticed");
                None
            }
        };
        if let Some(m) = &sinks.metrics {
            lock(m).set_attached(source.iface, true);
        }
        sinks.iface = Some(source.iface.to_owned());
        let mut interface_lost = false;
        loop {
            if stop() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if watch.as_mut().is_some_and(|w| w.gone()) {
                tracing::error!(
                    iface = source.iface,
                    ifindex = source.ifindex,
                    "the interface went away: synscope is blind; ending non-zero so a supervisor \
                     (systemd Restart=on-failure) starts it again and it attaches when the \
                     interface is back"
                );
                interface_lost = true;
                if let Some(m) = &sinks.metrics {
                    lock(m).set_attached(source.iface, false);
                }
                break;
            }
            if let Some((shared, last, at)) = &mut listen
                && at.elapsed() >= LISTEN_READ_EVERY
            {
                *at = Instant::now();
                if let Ok(now) = nstat::read() {
                    let n = listen_drops(&now);
                    if n > *last {
                        *last = n;
                        let t = clock.to_unix_ns(MonoToWall::monotonic_now_ns());
                        shared.listen_counters_rose(u64::try_from(t).unwrap_or(0));
                    }
                }
            }
            if let Some(m) = &sinks.metrics
                && kernel_read.elapsed() >= SNAPSHOT_EVERY
            {
                kernel_read = Instant::now();
                if let Some(k) = (source.kernel)() {
                    lock(m).set_kernel(k);
                }
            }
            // The full-screen view takes `q` and Ctrl-C (raw mode makes them keys).
            if sinks.view.as_mut().is_some_and(|v| v.quit_requested()) {
                crate::STOP.store(true, Ordering::Relaxed);
                break;
            }
            if let (Some(v), Some(m)) = (&mut sinks.view, &sinks.metrics)
                && v.due()
            {
                v.show(&lock(m), clock.to_unix_ns(MonoToWall::monotonic_now_ns()));
            }
            if sinks.leaks.as_mut().is_some_and(|l| l.tick(false)) {
                publish_leaks(&sinks);
            }
            if crate::REOPEN.swap(false, Ordering::Relaxed) {
                for w in [&mut sinks.events, &mut sinks.records]
                    .into_iter()
                    .flatten()
                {
                    w.reopen();
                }
            }
            match rx.recv_timeout(FLUSH_EVERY / 2) {
                Ok(m) => take(m, &mut agg, &mut sinks),
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: whatever is buffered goes out now.
                    for w in [&mut sinks.events, &mut sinks.records]
                        .into_iter()
                        .flatten()
                    {
                        w.flush();
                    }
                }
                // Every worker has ended (an error): stop and report it below.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // A closed stdout (e.g. `| head`) ends the run, as for tcpdump.
            if [&sinks.events, &sinks.records]
                .into_iter()
                .flatten()
                .any(|w| w.closed)
            {
                tracing::info!("the NDJSON reader went away; stopping");
                break;
            }
        }
        // Stop the source first, then let the workers drain what is in flight: the kernel's
        // counters and the workers' then add up exactly.
        (source.detach)();
        tracing::info!("detached");
        quit.store(true, Ordering::Release);
        // Workers do a last drain and exit; take everything they still send.
        while let Ok(m) = rx.recv() {
            take(m, &mut agg, &mut sinks);
        }
        // Episodes still open when the capture stops end with it.
        let mut last = Vec::new();
        agg.finish(&mut last);
        for e in last {
            take(Msg::Event(e, None), &mut agg, &mut sinks);
        }
        let mut engines = Vec::new();
        let mut reports = Vec::new();
        for h in handles {
            let (engine, report) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
                .context("worker")?;
            engines.push(engine);
            reports.push(report);
        }
        if let Some(m) = &sinks.metrics {
            let mut m = lock(m);
            for (i, (e, r)) in engines.iter().zip(&reports).enumerate() {
                m.update_worker(i, r.snapshot(e));
            }
            if let Some(k) = (source.kernel)() {
                m.set_kernel(k);
            }
        }
        // The leaks' state at exit (reaping what is due).
        let leaks = sinks.leaks.as_mut().map(|l| {
            l.tick(true);
            LeakSummary {
                confirmed: l.confirmed,
                unconfirmed: l.unconfirmed,
                open_at_exit: l.open(),
                reaped: l.reaped.values().sum(),
            }
        });
        publish_leaks(&sinks);
        let mut output_errors = sinks.evidence.as_ref().map_or(0, |(w, _)| w.failed);
        let mut totals = Totals::of(&engines);
        // What the sinks received, aggregate episodes included.
        totals.counters.events = sinks.events_sent;
        for w in [sinks.events, sinks.records].into_iter().flatten() {
            w.flush();
            output_errors += w.errors;
        }
        Ok(CrewResult {
            totals,
            reports,
            detection_latency: latency,
            output_errors,
            interface_lost,
            ran: started.elapsed(),
            leaks,
        })
    }
}

/// What the output thread hands back when a run ends.
pub(crate) struct CrewResult {
    /// The workers' engines added up; `events` counts what the sinks received.
    pub totals: Totals,
    pub reports: Vec<WorkerReport>,
    pub detection_latency: Histogram<u64>,
    /// Failed writes to the sinks and evidence files.
    pub output_errors: u64,
    /// The interface was deleted during the run.
    pub interface_lost: bool,
    /// How long the run lasted.
    pub ran: Duration,
    /// Inline mode: the probe leaks confirmed against the socket table.
    pub leaks: Option<LeakSummary>,
}

/// Packets a worker hands its engine at once: enough for the engine to overlap the flow
/// lookups' cache misses, few enough that a tick never waits on a long queue.
const BATCH: usize = 64;

/// One worker's engine and what it reports; the capture loop around it is the mode's own.
pub(crate) struct WorkerCore {
    index: usize,
    engine: Engine,
    /// Packets waiting for the engine: it takes them [`BATCH`] at a time.
    pending: Vec<CapturedPacket>,
    out: Vec<Event>,
    tx: Sender<Msg>,
    clock: MonoToWall,
    want_records: bool,
    want_snapshots: bool,
    recorder: Option<evidence::Recorder>,
    last_snapshot: Instant,
    last_watermark: u64,
    pub report: WorkerReport,
}

impl WorkerCore {
    /// Pins the calling thread to `core` (recorded in the report when it worked).
    pub fn pin(&mut self, core: Option<core_affinity::CoreId>) {
        self.report.core = core
            .filter(|c| core_affinity::set_for_current(*c))
            .map(|c| c.id);
    }

    /// Converts a kernel (CLOCK_MONOTONIC) timestamp to Unix ns.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        self.clock.to_unix_ns(mono_ns)
    }

    /// Whether packets should carry their IP bytes (`--evidence`; tap mode asks).
    #[cfg(feature = "tap")]
    pub fn keeps_evidence(&self) -> bool {
        self.recorder.is_some()
    }

    /// Keeps `ip` (the packet's bytes from its IP header on) in the evidence ring, with
    /// `--evidence`.
    pub fn keep_evidence(&mut self, p: &CapturedPacket, ip: &[u8]) {
        if let Some(r) = self.recorder.as_mut() {
            let key = evidence::conn_key(&p.segment.src.into(), &p.segment.dst.into());
            r.push(key, u64::try_from(p.ts_unix_ns).unwrap_or(0), ip);
        }
    }

    /// One captured packet through the engine (and to `--records`, and — for packets that
    /// carry their bytes, i.e. tap mode's — the evidence ring). The engine takes packets in
    /// batches ([`Engine::process_batch`]); [`WorkerCore::tick`] hands it the rest first.
    pub fn packet(&mut self, mut p: CapturedPacket) {
        if let Some(ip) = p.ip.take() {
            self.keep_evidence(&p, &ip);
        }
        self.pending.push(p);
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    /// What the kernel said about a packet (inline mode): after the packets before it, so the
    /// engine sees both in ring order.
    pub fn kernel_fact(&mut self, f: &crate::detect::kernel::KernelFact) {
        self.flush();
        self.engine.kernel_fact(f);
    }

    /// The waiting packets through the engine, in order, then to `--records`.
    fn flush(&mut self) {
        let batch: Vec<Packet<'_>> = self
            .pending
            .iter()
            .map(|p| Packet {
                ts_ns: u64::try_from(p.ts_unix_ns).unwrap_or(0),
                ifindex: p.ifindex,
                seg: &p.segment,
                egress: p.direction == synscope_common::Direction::Egress,
                weight: p.weight,
            })
            .collect();
        self.engine.process_batch(&batch, &mut self.out);
        for p in self.pending.drain(..) {
            if self.want_records {
                send(
                    &self.tx,
                    Msg::Record(Box::new(p)),
                    &mut self.report.dropped_messages,
                );
            }
        }
    }

    /// Time passes without packets too: fires what is due, sends events and tallies.
    pub fn tick(&mut self) {
        self.tick_or_end(false);
    }

    /// `tick`, or at the end of the run (`end`): then the engine also settles what the end
    /// of input decides (handshakes still waiting for an answer, RSTs held for reordering).
    fn tick_or_end(&mut self, end: bool) {
        self.flush();
        let now = self.clock.to_unix_ns(MonoToWall::monotonic_now_ns());
        let now = u64::try_from(now)
            .unwrap_or(0)
            .saturating_sub(CLOCK_SLACK_NS);
        if end {
            self.engine.finish(now, &mut self.out);
        } else {
            self.engine.advance(now, &mut self.out);
        }
        for e in self.out.drain(..) {
            let ev = self.recorder.as_ref().and_then(|r| r.for_event(&e));
            send(
                &self.tx,
                Msg::Event(e, ev),
                &mut self.report.dropped_messages,
            );
        }
        let (tallies, watermark) = self.engine.take_tallies();
        if !tallies.is_empty() || watermark != self.last_watermark {
            self.last_watermark = watermark;
            // Blocking: the aggregate needs every worker's count of every second.
            let _ = self.tx.send(Msg::Tally {
                worker: self.index,
                tallies,
                watermark,
            });
        }
        if self.want_snapshots && (end || self.last_snapshot.elapsed() >= SNAPSHOT_EVERY) {
            self.last_snapshot = Instant::now();
            let snap = Box::new(self.report.snapshot(&self.engine));
            send(
                &self.tx,
                Msg::Snapshot {
                    worker: self.index,
                    snap,
                },
                &mut self.report.dropped_messages,
            );
        }
    }

    /// The end of the run: settles and sends what the end decides, hands the engine back.
    pub fn finish(mut self) -> (Engine, WorkerReport) {
        self.tick_or_end(true);
        (self.engine, self.report)
    }
}

/// How often the output thread reads the host's listen-queue counters (inline mode): well
/// within the second an overflow verdict takes at the least.
const LISTEN_READ_EVERY: Duration = Duration::from_millis(100);

/// TcpExtListenOverflows + TcpExtListenDrops of a reading of the watched counters.
fn listen_drops(c: &[u64; nstat::WATCHED.len()]) -> u64 {
    nstat::WATCHED
        .iter()
        .zip(c)
        .filter(|(n, _)| matches!(**n, "ListenOverflows" | "ListenDrops"))
        .map(|(_, v)| *v)
        .sum()
}

/// The host counters that confirm `e` (inline mode): for an accept-queue overflow the
/// listen-queue overflows and drops, for a PAWS collision the PAWS rejections, each as risen
/// since the run started.
fn host_counters(e: &mut Event, base: &[u64; nstat::WATCHED.len()]) {
    let names: &[&str] = match e.kind {
        Kind::AcceptQueueOverflow => &["ListenOverflows", "ListenDrops"],
        Kind::PawsNatCollision => &["PAWSActive", "PAWSEstab", "PAWSTimewait"],
        _ => return,
    };
    let Ok(now) = nstat::read() else { return };
    let mut m = serde_json::Map::new();
    for (i, n) in nstat::WATCHED.iter().enumerate() {
        if names.contains(n) {
            m.insert((*n).into(), now[i].saturating_sub(base[i]).into());
        }
    }
    e.evidence
        .insert("host_counters_since_start".into(), m.into());
}

/// Hands one worker message to the sinks (tallies through the aggregator).
fn deliver(m: Msg, agg: &mut Aggregator, sinks: &mut Sinks<'_>) {
    match m {
        Msg::Snapshot { worker, snap } => {
            if let Some(m) = &sinks.metrics {
                lock(m).update_worker(worker, *snap);
            }
        }
        Msg::Event(mut e, ev) => {
            sinks.events_sent += 1;
            if let Some(l) = &mut sinks.leaks
                && l.confirm(&mut e)
            {
                publish_leaks(sinks);
            }
            if let Some(base) = &sinks.host_tcp_base {
                host_counters(&mut e, base);
            }
            let file = match (&mut sinks.evidence, &ev) {
                (Some((w, _)), Some(ev)) => match w.write(&e, ev) {
                    Ok(p) => Some(p),
                    Err(err) => {
                        if w.failed == 1 {
                            tracing::error!(error = %err, "cannot write an evidence file; detection goes on");
                        }
                        None
                    }
                },
                _ => None,
            };
            if let Some(m) = &sinks.metrics {
                let mut m = lock(m);
                m.count_event(&e);
                if let Some((w, _)) = &sinks.evidence {
                    m.evidence_files = w.written;
                    m.evidence_bytes = w.bytes();
                }
                m.output_errors = sinks.events.as_ref().map_or(0, |s| s.errors)
                    + sinks.records.as_ref().map_or(0, |s| s.errors)
                    + sinks.evidence.as_ref().map_or(0, |(w, _)| w.failed);
            }
            if let Some(v) = &mut sinks.view {
                v.event(&e);
            }
            if let Some(f) = sinks.on_event.as_deref_mut() {
                f(&e);
            }
            if let Some(w) = sinks.events.as_deref_mut() {
                w.line(
                    &EventLine::from(&e)
                        .with_evidence(file.as_deref(), ev.as_ref())
                        .with_iface(sinks.iface.as_deref()),
                );
            }
        }
        Msg::Record(p) => {
            if let Some(w) = sinks.records.as_deref_mut() {
                w.line(&PacketLine::from(&*p));
            }
        }
        Msg::Tally {
            worker,
            tallies,
            watermark,
        } => {
            let mut out = Vec::new();
            agg.feed(worker, tallies, watermark, &mut out);
            for e in out {
                deliver(Msg::Event(e, None), agg, sinks);
            }
        }
    }
}

/// µs, 1 µs to an hour, 2 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| unreachable!())
}

/// Locks the metrics state; a scrape that panicked leaves it usable.
pub(crate) fn lock(m: &Mutex<MetricsState>) -> std::sync::MutexGuard<'_, MetricsState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(tx: &Sender<Msg>, m: Msg, dropped: &mut u64) {
    match tx.try_send(m) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => *dropped += 1,
        // The output thread is gone: nothing to report to.
        Err(TrySendError::Disconnected(_)) => {}
    }
}
