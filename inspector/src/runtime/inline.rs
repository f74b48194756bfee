//! Inline mode: the selector attached to a live host's interface (XDP or TC ingress, TC
//! egress), one pinned worker per BPF ring buffer. Every packet goes on to the kernel.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use synscope_common::KernelRecord;

use super::{Crew, CrewResult, LiveReport, POLL, Sinks, Source, WorkerCore, WorkerReport};
use crate::{
    capture::{
        decode_record, nstat,
        record::{decode_kernel_record, record_ip_bytes},
        ringbuf,
    },
    detect::{Config, Engine},
    loader::{self, Inline, InlineOptions},
};

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
        ingress_prog_id = inline.prog_ids.0,
        egress_prog_id = inline.prog_ids.1.unwrap_or(0),
        "attached; stop with Ctrl-C"
    );
    // `run` detaches before the workers' last drain; dropping `inline` closes the rest.
    run(
        &mut inline,
        cfg,
        duration,
        &|| stop.load(Ordering::Relaxed),
        sinks,
    )
}

/// Runs the workers on `inline`'s rings until `stop()` or `duration`, writing output as it
/// comes; then drains what is left, joins the workers and reads the kernel counters.
pub fn run(
    inline: &mut Inline,
    cfg: Config,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
    sinks: Sinks<'_>,
) -> anyhow::Result<LiveReport> {
    let deadline = duration.map(|d| Instant::now() + d);
    let cfg = Config {
        kernel_names: inline.kernel_names.clone(),
        host_vantage: true,
        ..cfg
    };
    // The host's own TCP counters (this network namespace's): a baseline now, the rise at
    // the end and, for the events they confirm, at the event.
    let host_tcp_base = nstat::read()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read /proc/net/netstat"))
        .ok();
    if let (Some(m), Some(_)) = (&sinks.metrics, host_tcp_base) {
        super::lock(m).show_host_tcp();
    }
    let leaks = inline
        .sockdiag
        .take()
        .map(|d| super::leaks::LeakWatch::new(d, sinks.reap_leaks));
    let sinks = Sinks {
        host_tcp_base,
        leaks,
        ..sinks
    };
    let crew = Crew::new(&sinks);
    // Connections first seen before egress was attached raise no verdict.
    let cfg = Config {
        watched_from: u64::try_from(crew.clock.to_unix_ns(inline.watched_from_mono)).unwrap_or(0),
        ..cfg
    };
    let mut handles = Vec::new();
    for (i, ring) in std::mem::take(&mut inline.rings).into_iter().enumerate() {
        let mut core = crew.worker(i, &cfg);
        let (quit, pin) = (crew.quit.clone(), crew.core(i));
        let h = thread::Builder::new()
            .name(format!("synscope-w{i}"))
            .spawn(move || {
                core.pin(pin);
                ring_worker(ring, core, &quit)
            })
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    let source = Source {
        kernel: &|| inline.stats().ok(),
        detach: &|| inline.detach(),
        iface: &inline.iface,
        ifindex: inline.ifindex,
    };
    let CrewResult {
        totals,
        reports: workers,
        detection_latency,
        output_errors,
        interface_lost,
        ran,
        leaks,
    } = crew.output(&cfg, handles, deadline, stop, source, sinks)?;
    let host_tcp = host_tcp_base.and_then(|base| {
        let now = nstat::read().ok()?;
        Some(std::array::from_fn(|i| now[i].saturating_sub(base[i])))
    });
    Ok(LiveReport {
        host_tcp,
        leaks,
        detection_latency,
        kernel: inline.stats()?,
        workers,
        totals,
        attach_mode: inline.attach_mode,
        egress: inline.egress,
        output_errors,
        interface_lost,
        ran,
        xsk: Vec::new(),
    })
}

/// An inline-mode worker: drains its ring into its engine until `quit`, then once more.
fn ring_worker(
    mut ring: RingBuf<MapData>,
    mut core: WorkerCore,
    quit: &AtomicBool,
) -> anyhow::Result<(Engine, WorkerReport)> {
    loop {
        let done = quit.load(Ordering::Acquire);
        ringbuf::drain(
            &mut ring,
            if done { Duration::ZERO } else { POLL },
            |bytes| {
                // Kernel-reason records share the ring; they are counted by the engine
                // (`kernel said` in the summary), so `records_read` stays the packets'.
                if bytes.len() == KernelRecord::SIZE {
                    match decode_kernel_record(bytes, |ns| core.unix_ns(ns)) {
                        Ok(f) => core.kernel_fact(&f),
                        Err(e) => *core.report.decode_errors.entry(e.reason()).or_default() += 1,
                    }
                    return;
                }
                core.report.records += 1;
                match decode_record(bytes, |ns| core.unix_ns(ns)) {
                    Ok(p) => {
                        core.keep_evidence(&p, record_ip_bytes(bytes));
                        core.packet(p)
                    }
                    Err(e) => *core.report.decode_errors.entry(e.reason()).or_default() += 1,
                }
            },
        )
        .context("reading the ring buffer")?;
        core.tick();
        if done {
            break;
        }
    }
    Ok(core.finish())
}
