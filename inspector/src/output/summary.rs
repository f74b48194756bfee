//! The human summary: per server endpoint, then engine counters.

use std::{collections::BTreeMap, fmt::Write};

use crate::detect::{
    Kind, RstClass,
    engine::Totals,
    stats::{EndpointStats, Latency},
};
use crate::flow::table::EvictReason;

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Health probers per server endpoint (docs/anomalies.md, "Probers"), most probes first.
fn probers_block(
    s: &mut String,
    pairs: &[(
        crate::detect::prober::Pair,
        crate::detect::prober::ProbeCounters,
    )],
) {
    use crate::detect::prober::{probers, source_addr};
    let rows = probers(pairs);
    if rows.is_empty() {
        return;
    }
    s.push_str("probers (connect, then RST or FIN within probe_window, no data):\n");
    for ((ip, server), c) in rows.iter().take(LISTED) {
        let _ = writeln!(
            s,
            "  {} -> {server}: {} probe{}, {} RST before ACK, {} leak{} ({:.1}%){}",
            source_addr(ip),
            c.probes,
            plural(c.probes),
            c.rst_before_ack,
            c.leaks,
            plural(c.leaks),
            100.0 * c.leaks as f64 / c.probes.max(1) as f64,
            if c.configured { ", --probe-source" } else { "" }
        );
    }
    if rows.len() > LISTED {
        let _ = writeln!(
            s,
            "  ... and {} more (every one: /metrics)",
            rows.len() - LISTED
        );
    }
}

fn endpoint_block(s: &mut String, name: &str, st: &EndpointStats) {
    let _ = writeln!(
        s,
        "server {name}: {} SYN{} ({} connection attempt{}, {} retransmission{}), {} established, {} closed normally",
        st.syns,
        plural(st.syns),
        st.syns - st.syn_retransmits,
        plural(st.syns - st.syn_retransmits),
        st.syn_retransmits,
        plural(st.syn_retransmits),
        st.established,
        st.closed_normally
    );
    if st.tfo_syns > 0 {
        let _ = writeln!(
            s,
            "  TCP Fast Open: {} SYN{} with the option, {} with data accepted",
            st.tfo_syns,
            plural(st.tfo_syns),
            st.tfo_data_accepted
        );
    }
    let anomalies: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| **k != Kind::Reset && st.anomalies[**k as usize] > 0)
        .map(|k| format!("{} {}", k.as_str(), st.anomalies[*k as usize]))
        .collect();
    if !anomalies.is_empty() {
        let _ = writeln!(s, "  anomalies: {}", anomalies.join(", "));
    }
    let rsts: Vec<String> = RstClass::ALL
        .iter()
        .filter(|c| st.rsts_of(**c) > 0)
        .map(|c| format!("{} {}", c.as_str(), st.rsts_of(*c)))
        .collect();
    if !rsts.is_empty() {
        let _ = writeln!(s, "  resets: {}", rsts.join(", "));
    }
    let passive_race = st.rsts[RstClass::Passive as usize][1][1];
    if passive_race > 0 {
        let _ = writeln!(
            s,
            "  ! {passive_race} passive RST(s) from the server right after the handshake (ehash race / DNAT early demux?)"
        );
    }
    for l in Latency::ALL {
        let h = &st.latency[l as usize];
        if h.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<14} µs  p50 {}  p90 {}  p99 {}  max {}  (n={})",
            l.as_str(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    }
}

/// Endpoints listed in the text summary; the rest are counted in one line (all of them are in
/// `--summary-json` and the metrics).
const LISTED: usize = 20;

/// Renders the summary of an engine run (one engine, or every worker's added up), with the
/// parse errors seen before it.
pub fn render(t: &Totals, frames: u64, parse_errors: &BTreeMap<&'static str, u64>) -> String {
    let mut s = String::new();
    // The endpoints with the most anomalies first, then the busiest: a port scan's hundreds of
    // refused ports must not bury the service that has a problem.
    let mut eps: Vec<_> = t.endpoints.iter().collect();
    eps.sort_by_key(|(ep, st)| {
        let anomalies: u64 = Kind::ALL
            .iter()
            .filter(|k| **k != Kind::Reset)
            .map(|k| st.anomalies[*k as usize])
            .sum();
        (
            std::cmp::Reverse(anomalies),
            std::cmp::Reverse(st.syns),
            ep.copied(),
        )
    });
    for (ep, st) in eps.iter().take(LISTED) {
        let name = ep.map_or_else(|| "other".to_owned(), |e| e.to_string());
        endpoint_block(&mut s, &name, st);
    }
    if eps.len() > LISTED {
        let rest = &eps[LISTED..];
        let syns: u64 = rest.iter().map(|(_, st)| st.syns).sum();
        let _ = writeln!(
            s,
            "... and {} more server endpoints ({} SYN{}; every endpoint: --summary-json, /metrics)",
            rest.len(),
            syns,
            plural(syns)
        );
    }
    if s.is_empty() {
        s.push_str("no TCP handshakes seen\n");
    }
    probers_block(&mut s, &t.probes);
    let c = &t.counters;
    if c.sampled_syns + c.sampled_synacks > 0 {
        let _ = writeln!(
            s,
            "flood sampling: {} SYNs and {} SYN-ACKs the kernel did not record are counted through the sampled records that carried them",
            c.sampled_syns, c.sampled_synacks
        );
    }
    if !t.kernel.is_empty() {
        let said: Vec<String> = t
            .kernel
            .iter()
            .map(|((what, reason), n)| format!("{what} {reason} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "kernel said: {} ({} kept with their connection, {} for flows not tracked)",
            said.join(", "),
            c.kernel_joined,
            c.kernel_unmatched
        );
    }
    let t = &t.table;
    let _ = writeln!(
        s,
        "engine: {frames} frames, {} TCP packets, {} unmatched, {} duplicates, {} events, {} folded into floods/storms, {} routine probe RSTs counted, {} verdicts of connections begun before both directions were watched, {} handshakes undecided at the end; flows {} live, {} created, evicted {}",
        c.packets,
        c.unmatched,
        c.duplicates,
        c.events,
        c.folded,
        c.probe_resets,
        c.unwatched,
        c.undecided,
        t.live,
        t.created,
        EvictReason::NAMES
            .iter()
            .zip(t.evicted)
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    if c.folded > 0 {
        let by: Vec<String> = crate::detect::shared::FOLDABLE
            .iter()
            .zip(c.folded_by)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        let _ = writeln!(s, "folded into floods/storms: {}", by.join(", "));
    }
    if !parse_errors.is_empty() {
        let errs: Vec<String> = parse_errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "skipped frames: {}", errs.join(", "));
    }
    s
}

/// The end-of-run summary for machines (`--summary-json PATH`): per server endpoint its
/// counters, anomalies, RSTs and the three handshake-latency histograms, each with
/// percentiles (µs) and in HdrHistogram's standard form (V2, deflate-compressed, base64: what
/// `HistogramLogProcessor` and the `hdrhistogram` crates' deserializers read, so runs and
/// nodes can be merged and plotted). Field names are stable; new ones may be added.
pub fn json(t: &Totals, mode: &str, frames_or_records: u64) -> serde_json::Value {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    use serde_json::{Map, Value, json};
    let hist = |h: &hdrhistogram::Histogram<u64>| -> Value {
        let mut buf = Vec::new();
        let hdr = V2DeflateSerializer::new()
            .serialize(h, &mut buf)
            .map(|_| base64::engine::general_purpose::STANDARD.encode(&buf))
            .ok();
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        json!({
            "unit": "us",
            "count": h.len(),
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": (!h.is_empty()).then(|| h.max()),
            "hdr": hdr,
        })
    };
    let endpoints: Vec<Value> = t
        .endpoints
        .iter()
        .map(|(ep, st)| {
            let anomalies: Map<String, Value> = Kind::ALL
                .iter()
                .filter(|k| **k != Kind::Reset && st.anomalies[**k as usize] > 0)
                .map(|k| {
                    (
                        k.as_str().to_owned(),
                        Value::from(st.anomalies[*k as usize]),
                    )
                })
                .collect();
            let resets: Map<String, Value> = RstClass::ALL
                .iter()
                .filter(|c| st.rsts_of(**c) > 0)
                .map(|c| (c.as_str().to_owned(), Value::from(st.rsts_of(*c))))
                .collect();
            let latency: Map<String, Value> = Latency::ALL
                .iter()
                .map(|l| (l.as_str().to_owned(), hist(&st.latency[*l as usize])))
                .collect();
            json!({
                "server": ep.map_or_else(|| "other".to_owned(), |e| e.to_string()),
                "syns": st.syns,
                "syn_retransmissions": st.syn_retransmits,
                "connection_attempts": st.syns - st.syn_retransmits,
                "established": st.established,
                "closed_normally": st.closed_normally,
                "tfo_syns": st.tfo_syns,
                "tfo_data_accepted": st.tfo_data_accepted,
                "anomalies": anomalies,
                "resets": resets,
                "latency": latency,
            })
        })
        .collect();
    let c = &t.counters;
    json!({
        "synscope_version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "input": frames_or_records,
        "packets": c.packets,
        "duplicates": c.duplicates,
        "events": c.events,
        "events_folded": c.folded,
        "unwatched": c.unwatched,
        "probe_resets": c.probe_resets,
        "probers": crate::detect::prober::probers(&t.probes)
            .iter()
            .map(|((ip, server), p)| json!({
                "source": crate::detect::prober::source_addr(ip).to_string(),
                "server": server.to_string(),
                "probes": p.probes,
                "rst_before_ack": p.rst_before_ack,
                "leaks": p.leaks,
                "configured": p.configured,
            }))
            .collect::<Vec<_>>(),
        "events_folded_by_kind": crate::detect::shared::FOLDABLE
            .iter()
            .zip(c.folded_by)
            .map(|(k, n)| (k.as_str().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "undecided": c.undecided,
        "endpoints": endpoints,
    })
}
