//! synscope's userspace: loader, capture sources, wire parsing, outputs, the lab, and the CLI.
//!
//! Dependencies point one way: `wire` → (`flow` → `detect`) → `output`; `capture` only yields
//! packets.

pub mod capture;
pub mod cli;
pub mod demo;
pub mod detect;
pub mod flow;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod runtime;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C / SIGTERM; long-running commands poll it and shut down cleanly.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the signal handlers: SIGINT (Ctrl-C) and SIGTERM set [`STOP`], SIGHUP sets
/// [`REOPEN`] (it must not stop the run: logrotate sends it).
pub fn install_stop_handler() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || STOP.store(true, Ordering::Relaxed)) }
            .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C/SIGTERM handler: {e}"))?;
    }
    signal_hook::flag::register(SIGHUP, REOPEN.clone())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    Ok(())
}

/// Set by SIGHUP: reopen the `--json`/`--records` files (logrotate's `postrotate`).
pub static REOPEN: std::sync::LazyLock<std::sync::Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(AtomicBool::new(false)));

/// While the full-screen view owns the terminal, log lines wait here instead of writing over
/// it; they are printed when it closes (at most the last 256 KiB).
pub static LOGS_HELD: AtomicBool = AtomicBool::new(false);
static HELD: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// The log writer (`tracing_subscriber::fmt().with_writer(synscope::LogWriter)`): stderr, or
/// the hold buffer while the full-screen view is on.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if LOGS_HELD.load(Ordering::Relaxed) {
            let mut h = HELD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h.extend_from_slice(buf);
            if h.len() > 256 * 1024 {
                let cut = h.len() - 256 * 1024;
                h.drain(..cut);
            }
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Holds log lines (`true`) or releases the held ones to stderr (`false`).
pub fn hold_logs(hold: bool) {
    LOGS_HELD.store(hold, Ordering::Relaxed);
    if !hold {
        let held = std::mem::take(
            &mut *HELD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), &held);
    }
}
