//! `synscope demo`: the embedded default run. Builds a lab, attaches inline mode (XDP ingress
//! and TC egress) to the server's veth, drives real kernel TCP through the seed scenarios,
//! prints what synscope found for each, and tears the lab down (also on Ctrl-C or failure: the
//! lab is dropped).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    detect::{Config, Event},
    lab::{
        Lab,
        scenarios::{self, Outcome},
        spawn_in_netns,
    },
    loader::{self, InlineOptions},
    output::{
        ndjson::EventLine,
        sink::{JsonSink, LineSink},
    },
    runtime::{LiveReport, Sinks, inline},
};

const BASE_PORT: u16 = 8080;

fn stopped() -> bool {
    crate::STOP.load(Ordering::Relaxed)
}

/// One event as a report line: kind, who, and the evidence that matters.
fn event_line(e: &Event) -> String {
    let ev: Vec<String> = e
        .evidence
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "    {:<22} {} -> {}  {}",
        e.kind.as_str(),
        e.client.map_or_else(|| "*".to_owned(), |c| c.to_string()),
        e.server.map_or_else(|| "*".to_owned(), |c| c.to_string()),
        ev.join(" ")
    )
}

/// Runs the demo; see the module docs.
pub fn run(json: Option<&JsonSink>) -> anyhow::Result<()> {
    if !loader::has_bpf_privileges() {
        return Err(loader::LoadError::NotPrivileged.into());
    }
    let lab = Lab::create().context("building the demo lab")?;
    println!(
        "synscope demo: lab namespaces {} (client {}) and {} (server {}), veth {} <-> {}",
        lab.client_ns, lab.client_v4, lab.server_ns, lab.server_v4, lab.client_if, lab.server_if
    );
    let stop = Arc::new(AtomicBool::new(false));
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let opts = InlineOptions {
        workers: crate::runtime::default_workers(),
        ..InlineOptions::new(&lab.server_if)
    };
    let capture = {
        let (stop, events) = (stop.clone(), events.clone());
        spawn_in_netns(&lab.server_ns, move || -> anyhow::Result<LiveReport> {
            let mut inline = loader::attach_inline(&opts)?;
            let _ = ready_tx.send((inline.attach_mode, inline.rings.len()));
            let stop_fn = || stop.load(Ordering::Relaxed) || stopped();
            let mut collect = |e: &Event| {
                if let Ok(mut v) = events.lock() {
                    v.push(e.clone());
                }
            };
            inline::run(
                &mut inline,
                Config::default(),
                None,
                &stop_fn,
                Sinks {
                    on_event: Some(&mut collect),
                    ..Default::default()
                },
            )
        })
    };
    let (mode, workers) = match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(m) => m,
        Err(_) => {
            let err = match capture.join() {
                Ok(Ok(Err(e))) => e,
                Ok(Err(e)) => e.into(),
                _ => anyhow::anyhow!("the capture thread did not start"),
            };
            return Err(err.context("attaching to the lab's server interface"));
        }
    };
    println!(
        "attached XDP ingress ({mode} mode) and TC egress to {} in {}, {workers} worker(s)",
        lab.server_if, lab.server_ns
    );
    println!(
        "running {} scenarios side by side...\n",
        scenarios::ALL.len()
    );
    let servers_stop = Arc::new(AtomicBool::new(false));
    let runs = scenarios::run_all(&lab, BASE_PORT, servers_stop.clone());
    // Wait for the last verdicts (FIN timeout), unless interrupted.
    let settle = Instant::now() + scenarios::SETTLE;
    while runs.is_ok() && Instant::now() < settle && !stopped() {
        thread::sleep(Duration::from_millis(100));
    }
    // Capture stops first: closing the listeners resets their queued connections, which is
    // teardown, not part of the scenarios.
    stop.store(true, Ordering::Relaxed);
    let report = capture
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"));
    servers_stop.store(true, Ordering::Relaxed);
    let report = report?.context("capture")??;
    let runs = runs?;
    let events = events.lock().map(|v| v.clone()).unwrap_or_default();
    let mut json = json.map(LineSink::open).transpose()?;
    for (
        i,
        Outcome {
            scenario,
            port,
            client_view,
        },
    ) in runs.iter().enumerate()
    {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| e.server.is_some_and(|s| s.port == *port))
            .collect();
        println!("[{}] {} (port {port})", i + 1, scenario.title);
        println!("    client:   {client_view}");
        println!("    expected: {}", scenario.expect);
        if mine.is_empty() {
            println!("    found:    nothing");
        } else {
            println!("    found:");
        }
        for e in &mine {
            println!("{}", event_line(e));
            if let Some(out) = json.as_mut() {
                out.line(&EventLine::from(*e));
            }
        }
        println!();
    }
    if let Some(out) = json.as_mut() {
        out.flush();
    }
    print!("{}", report.render());
    drop(lab);
    println!("lab torn down");
    Ok(())
}
