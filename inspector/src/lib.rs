//! synscope's userspace: loader, capture sources, wire parsing, outputs, the lab, and the CLI.
//!
//! Dependencies point one way: `wire` → (`flow` → `detect`) → `output`; `capture` only yields
//! packets.

pub mod capture;
pub mod cli;
pub mod demo;
pub mod detect;
pub mod evidence;
pub mod flow;
pub mod lab;
pub mod live;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod replay;
pub mod tap;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C / SIGTERM; long-running commands poll it and shut down cleanly.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C / SIGTERM handler that sets [`STOP`].
pub fn install_stop_handler() -> anyhow::Result<()> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C/SIGTERM handler: {e}"))
}
