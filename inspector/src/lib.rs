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
