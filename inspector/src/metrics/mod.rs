//! Prometheus metrics (`--metrics ADDR`): what the workers counted, merged on the output thread,
//! served as OpenMetrics text at `/metrics` by a small HTTP thread.
//!
//! Workers own their engines, so they never touch shared metric state: once a second each sends
//! a [`WorkerSnapshot`] (its cumulative counters and bucketed latencies, a few hundred bytes per
//! server endpoint) to the output thread, which keeps the latest one per worker in
//! [`MetricsState`]. A scrape adds the workers up under a mutex held only by the output thread's
//! updates and the scrape itself.
//!
//! Label cardinality is bounded: `max_endpoints` server endpoints get their own series for as
//! long as the process lives; every other one is added to `server="other"`. (Top-N by volume
//! would move counts between series and break counter monotonicity.) Port scans are daily life
//! on a load balancer, so listeners win the slots: an endpoint that completed a handshake takes
//! any free slot, one that only saw SYNs refused or unanswered (a scanned or closed port, a
//! black-holed one) at most half of them, first come.

mod server;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
pub use server::MetricsServer;
use synscope_common::stats;

use crate::{
    detect::{
        Event, Kind, Phase, RstClass,
        engine::EngineCounters,
        prober::{Pair, ProbeCounters, source_addr},
        stats::{EndpointCounters, LATENCY_BOUNDS_NS, Latency},
    },
    flow::{Endpoint, table::EvictReason},
};

/// Probers with their own series (most probes first); the rest add up as `prober="other"`.
const MAX_PROBER_SERIES: usize = 200;

/// Default bound on server endpoints with their own series.
pub const DEFAULT_MAX_ENDPOINTS: usize = 100;

/// What one worker has counted so far (cumulative).
#[derive(Clone, Debug, Default)]
pub struct WorkerSnapshot {
    pub counters: EngineCounters,
    pub table: crate::flow::TableStats,
    /// Per server endpoint; None is the engine's own overflow bucket.
    pub endpoints: Vec<(Option<Endpoint>, EndpointCounters)>,
    /// Probe counts per (source, server endpoint).
    pub probes: Vec<(Pair, ProbeCounters)>,
    /// Ring records (inline) or frames (tap) read, decode failures, output messages dropped.
    pub records: u64,
    pub decode_errors: u64,
    pub dropped_messages: u64,
}

impl WorkerSnapshot {
    /// The snapshot of an engine plus its worker's own counters (records read, records
    /// that could not be decoded, messages the output could not take).
    pub fn of(
        engine: &crate::detect::Engine,
        records: u64,
        decode_errors: u64,
        dropped: u64,
    ) -> Self {
        Self {
            counters: engine.counters(),
            table: engine.table_stats(),
            endpoints: engine.endpoints().export(),
            probes: engine.probers().export(),
            records,
            decode_errors,
            dropped_messages: dropped,
        }
    }
}

/// Everything `/metrics` shows; owned by the output thread, read by scrapes.
#[derive(Debug)]
pub struct MetricsState {
    mode: &'static str,
    max_endpoints: usize,
    /// Server endpoints with their own series (first come, bounded, never removed).
    named: HashSet<Endpoint>,
    /// Of `named`, endpoints that had completed no handshake when they were named.
    unproven: usize,
    workers: Vec<WorkerSnapshot>,
    /// `syn_flood` / `reset_storm` episodes, which the output thread's aggregator decides, by
    /// the endpoint (flood) or host (storm) label.
    episodes: BTreeMap<(String, Kind), u64>,
    kernel: Option<[u64; stats::COUNT as usize]>,
    /// Inline mode: scrapes also read the host's TCP counters (`capture::nstat`).
    host_tcp: bool,
    /// Inline mode: confirmed probe leaks open now, and reaped, by (server, prober).
    leaks_open: BTreeMap<(Endpoint, std::net::IpAddr), u64>,
    leaks_reaped: BTreeMap<(Endpoint, std::net::IpAddr), u64>,
    pub evidence_files: u64,
    pub evidence_bytes: u64,
    /// Writes to the NDJSON sinks and evidence files that failed.
    pub output_errors: u64,
    /// The interface synscope attached to, and whether it still is.
    attached: Option<(String, bool)>,
    start_unix: f64,
}

impl MetricsState {
    pub fn new(mode: &'static str, max_endpoints: usize, workers: usize) -> Self {
        Self {
            mode,
            max_endpoints,
            named: HashSet::new(),
            unproven: 0,
            workers: vec![WorkerSnapshot::default(); workers],
            episodes: BTreeMap::new(),
            kernel: None,
            host_tcp: false,
            leaks_open: BTreeMap::new(),
            leaks_reaped: BTreeMap::new(),
            evidence_files: 0,
            evidence_bytes: 0,
            output_errors: 0,
            attached: None,
            start_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Takes worker `i`'s latest snapshot; names its endpoints while there is room.
    /// Records whether synscope is attached to `iface`.
    pub fn set_attached(&mut self, iface: &str, attached: bool) {
        self.attached = Some((iface.to_owned(), attached));
    }

    pub fn update_worker(&mut self, i: usize, snap: WorkerSnapshot) {
        // Listeners first, so a snapshot holding a scan and a service names the service.
        let mut fresh: Vec<(&Endpoint, bool)> = snap
            .endpoints
            .iter()
            .filter_map(|(ep, c)| {
                let ep = ep.as_ref().filter(|e| !self.named.contains(e))?;
                (c.syns + c.rsts.iter().flatten().flatten().sum::<u64>() > 0)
                    .then_some((ep, c.established > 0))
            })
            .collect();
        fresh.sort_by_key(|(_, listener)| !listener);
        for (ep, listener) in fresh {
            if self.named.len() >= self.max_endpoints {
                break;
            }
            if listener {
                self.named.insert(*ep);
            } else if self.unproven < self.max_endpoints / 2 {
                self.named.insert(*ep);
                self.unproven += 1;
            }
        }
        if i >= self.workers.len() {
            self.workers.resize_with(i + 1, Default::default);
        }
        self.workers[i] = snap;
    }

    /// Counts the aggregate events (per-connection kinds are counted by the engines).
    pub fn count_event(&mut self, e: &Event) {
        let label = match e.kind {
            Kind::SynFlood => e.server.map(|s| self.label(&s)),
            Kind::ResetStorm => e.ev("host").as_str().map(str::to_owned),
            _ => None,
        };
        if let Some(l) = label {
            *self.episodes.entry((l, e.kind)).or_default() += 1;
        }
    }

    /// Inline mode: the confirmed probe leaks open now and those reaped, by (server, prober).
    pub fn set_leaks(
        &mut self,
        open: BTreeMap<(Endpoint, std::net::IpAddr), u64>,
        reaped: BTreeMap<(Endpoint, std::net::IpAddr), u64>,
    ) {
        self.leaks_open = open;
        self.leaks_reaped = reaped;
    }

    /// Inline mode: scrapes show the host's own TCP counters beside synscope's.
    pub fn show_host_tcp(&mut self) {
        self.host_tcp = true;
    }

    /// The kernel's counters (summed over CPUs), read by the output thread.
    pub fn set_kernel(&mut self, k: [u64; stats::COUNT as usize]) {
        self.kernel = Some(k);
    }

    /// The prober families: every recognised (source, server endpoint) pair, the
    /// [`MAX_PROBER_SERIES`] with the most probes by name, the rest as `prober="other"`.
    fn encode_probers(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let rows = crate::detect::prober::probers(self.workers.iter().flat_map(|w| &w.probes));
        let mut by: BTreeMap<(String, String), ProbeCounters> = BTreeMap::new();
        for (i, ((ip, server), c)) in rows.iter().enumerate() {
            let prober = if i < MAX_PROBER_SERIES {
                source_addr(ip).to_string()
            } else {
                "other".to_owned()
            };
            by.entry((self.label(server), prober)).or_default().add(c);
        }
        for (name, help, ty, m) in [
            (
                "synscope_leaked_sockets",
                "Inline mode: probe-leaked sockets confirmed in the host's socket table and still \
                 open (re-checked every 5 s)",
                MetricType::Gauge,
                &self.leaks_open,
            ),
            (
                "synscope_leaks_reaped",
                "Inline mode: probe-leaked sockets closed by --reap-leaks (SOCK_DESTROY)",
                MetricType::Counter,
                &self.leaks_reaped,
            ),
        ] {
            let series: Vec<([(&str, String); 2], u64)> = m
                .iter()
                .map(|((s, p), n)| ([("server", self.label(s)), ("prober", p.to_string())], *n))
                .collect();
            family(enc, name, help, ty, series)?;
        }
        type Pick = fn(&ProbeCounters) -> u64;
        let fams: [(&str, &str, Pick); 3] = [
            (
                "synscope_probes",
                "Health probes (connect, then RST or FIN within probe_window, no data) by server \
                 endpoint and prober (a source with 3 probes to it, or in --probe-source)",
                |c| c.probes,
            ),
            (
                "synscope_probe_rst_before_ack",
                "Of synscope_probes, RSTs that overtook the handshake's ACK (probe_rst_before_ack)",
                |c| c.rst_before_ack,
            ),
            (
                "synscope_probe_leaks",
                "Of synscope_probes, leaked connections (probe_connection_leak)",
                |c| c.leaks,
            ),
        ];
        for (name, help, f) in fams {
            family(
                enc,
                name,
                help,
                MetricType::Counter,
                by.iter()
                    .map(|((s, p), c)| ([("server", s.as_str()), ("prober", p.as_str())], f(c))),
            )?;
        }
        Ok(())
    }

    fn label(&self, ep: &Endpoint) -> String {
        if self.named.contains(ep) {
            ep.to_string()
        } else {
            "other".to_owned()
        }
    }

    /// Every worker's endpoints added up under their series label.
    pub(crate) fn by_server(&self) -> BTreeMap<String, EndpointCounters> {
        let mut m: BTreeMap<String, EndpointCounters> = BTreeMap::new();
        for w in &self.workers {
            for (ep, c) in &w.endpoints {
                if ep.is_none() && *c == EndpointCounters::default() {
                    continue;
                }
                let l = ep.map_or_else(|| "other".to_owned(), |ep| self.label(&ep));
                m.entry(l).or_default().add(c);
            }
        }
        m
    }

    /// The OpenMetrics exposition (what `/metrics` returns).
    pub fn encode_text(state: &Arc<Mutex<MetricsState>>) -> Result<String, fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Scrape(state.clone())));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &registry)?;
        Ok(s)
    }
}

const NO_LABELS: [(&str, &str); 0] = [];

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that
/// do not ask for OpenMetrics (`curl`, `promtool check metrics`): counter families are named
/// with their `_total` suffix, and `# EOF` / `# UNIT` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The collector a scrape runs: encodes [`MetricsState`] as it is now.
#[derive(Debug)]
struct Scrape(Arc<Mutex<MetricsState>>);

/// Writes one metric family: `series` gives (labels, value) pairs.
fn family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    ty: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in series {
        let f = m.encode_family(&labels)?;
        match ty {
            MetricType::Gauge => ConstGauge::new(v as i64).encode(f)?,
            _ => ConstCounter::new(v).encode(f)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let servers = st.by_server();
        use MetricType::{Counter, Gauge};

        family(
            &mut enc,
            "synscope_build_info",
            "synscope version and capture mode (always 1)",
            Gauge,
            [(
                [("version", env!("CARGO_PKG_VERSION")), ("mode", st.mode)],
                1,
            )],
        )?;
        {
            let m = enc.encode_descriptor(
                "synscope_start_time_seconds",
                "Unix time the process started",
                None,
                Gauge,
            )?;
            ConstGauge::new(st.start_unix).encode(m)?;
        }
        let per_server = |f: fn(&EndpointCounters) -> u64| {
            servers
                .iter()
                .map(move |(s, c)| ([("server", s.as_str())], f(c)))
        };
        family(
            &mut enc,
            "synscope_syns",
            "SYNs (first transmissions and retransmissions) sent to the server endpoint",
            Counter,
            per_server(|c| c.syns),
        )?;
        family(
            &mut enc,
            "synscope_syn_retransmissions",
            "Of synscope_syns, retransmissions of a SYN already seen (same ISN): an early sign \
             of SYNs dropped on the way",
            Counter,
            per_server(|c| c.syn_retransmits),
        )?;
        family(
            &mut enc,
            "synscope_syn_retrying",
            "Connections whose client is retransmitting its SYN right now (no answer yet); a \
             stream that is never answered becomes syn_unanswered when the client gives up",
            Gauge,
            per_server(|c| c.syn_retry_started.saturating_sub(c.syn_retry_ended)),
        )?;
        family(
            &mut enc,
            "synscope_tfo_syns",
            "SYNs carrying a TCP Fast Open option (cookie or cookie request)",
            Counter,
            per_server(|c| c.tfo_syns),
        )?;
        family(
            &mut enc,
            "synscope_tfo_data_accepted",
            "TCP Fast Open handshakes whose SYN data the server acknowledged in its SYN-ACK",
            Counter,
            per_server(|c| c.tfo_data_accepted),
        )?;
        family(
            &mut enc,
            "synscope_connections_established",
            "Handshakes completed (the client's ACK of the SYN-ACK seen)",
            Counter,
            per_server(|c| c.established),
        )?;
        family(
            &mut enc,
            "synscope_connections_closed",
            "Connections closed normally (FIN both ways)",
            Counter,
            per_server(|c| c.closed_normally),
        )?;
        let mut anomalies: Vec<([(&str, &str); 2], u64)> = Vec::new();
        for (s, c) in &servers {
            for k in Kind::ALL {
                let n = c.anomalies[k as usize];
                if n > 0 && k != Kind::Reset {
                    anomalies.push(([("server", s.as_str()), ("kind", k.as_str())], n));
                }
            }
        }
        for ((l, k), n) in &st.episodes {
            anomalies.push(([("server", l.as_str()), ("kind", k.as_str())], *n));
        }
        family(
            &mut enc,
            "synscope_anomalies",
            "Anomaly verdicts by server endpoint and kind (docs/anomalies.md; folded ones included; \
             reset_storm is labelled with the sending host)",
            Counter,
            anomalies,
        )?;
        let mut rsts: Vec<([(&str, &str); 4], u64)> = Vec::new();
        for (s, c) in &servers {
            for class in RstClass::ALL {
                for phase in Phase::ALL {
                    for (from, n) in ["client", "server"]
                        .into_iter()
                        .zip(c.rsts[class as usize][phase as usize])
                    {
                        if n > 0 {
                            rsts.push((
                                [
                                    ("server", s.as_str()),
                                    ("class", class.as_str()),
                                    ("phase", phase.as_str()),
                                    ("from", from),
                                ],
                                n,
                            ));
                        }
                    }
                }
            }
        }
        family(
            &mut enc,
            "synscope_resets",
            "RSTs by server endpoint, class (refused, passive, active, probe_abort, out_of_window), \
             connection phase and sender",
            Counter,
            rsts,
        )?;
        st.encode_probers(&mut enc)?;
        let mut said: Vec<([(&str, &str); 4], u64)> = Vec::new();
        for (s, c) in &servers {
            for (slot, by_host) in c.kernel.iter().enumerate() {
                let (what, reason) = crate::detect::kernel::slot_name(slot);
                for (by, n) in ["client", "server"].into_iter().zip(by_host) {
                    if *n > 0 {
                        said.push((
                            [
                                ("server", s.as_str()),
                                ("said", what.as_str()),
                                ("reason", reason),
                                ("by", by),
                            ],
                            *n,
                        ));
                    }
                }
            }
        }
        family(
            &mut enc,
            "synscope_kernel_said",
            "Inline mode: what the host's TCP stack said about the server endpoint's \
             connections (said: send_reset or drop; reason: the kernel's sk_rst_reason or \
             skb_drop_reason; by: the host that said it)",
            Counter,
            said,
        )?;
        if st.host_tcp
            && let Ok(now) = crate::capture::nstat::read()
        {
            family(
                &mut enc,
                "synscope_host_tcp",
                "Inline mode: the host's own TCP counters (TcpExt in /proc/net/netstat, what \
                 nstat shows): listen queue overflows and drops, PAWS rejections, aborts",
                Counter,
                crate::capture::nstat::WATCHED
                    .iter()
                    .zip(now)
                    .map(|(n, v)| ([("counter", *n)], v)),
            )?;
        }
        {
            let mut m = enc.encode_descriptor(
                "synscope_handshake_latency_seconds",
                "Handshake latencies: syn_to_synack (server response), synack_to_ack (client \
                 round trip), connect_total (first SYN to completing ACK)",
                None,
                MetricType::Histogram,
            )?;
            for (s, c) in &servers {
                for l in Latency::ALL {
                    let b = &c.latency[l as usize];
                    if b.count() == 0 {
                        continue;
                    }
                    // Non-cumulative: the encoder adds them up into `le` buckets.
                    let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_NS
                        .iter()
                        .map(|ns| *ns as f64 / 1e9)
                        .chain([f64::INFINITY])
                        .zip(b.counts)
                        .collect();
                    let labels = [("server", s.as_str()), ("measure", l.as_str())];
                    m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                        b.sum_ns as f64 / 1e9,
                        b.count(),
                        &buckets,
                        None,
                    )?;
                }
            }
        }
        let w = |f: fn(&WorkerSnapshot) -> u64| {
            st.workers
                .iter()
                .enumerate()
                .map(move |(i, s)| ([("worker", i.to_string())], f(s)))
        };
        family(
            &mut enc,
            "synscope_packets",
            "Packets processed by each worker's engine",
            Counter,
            w(|s| s.counters.packets),
        )?;
        family(
            &mut enc,
            "synscope_packets_unmatched",
            "Non-control packets of flows not in the table (pre-existing or expired connections)",
            Counter,
            w(|s| s.counters.unmatched),
        )?;
        family(
            &mut enc,
            "synscope_packets_duplicate",
            "Segments captured twice (mirror ports, -i any): the copy was skipped",
            Counter,
            w(|s| s.counters.duplicates),
        )?;
        family(
            &mut enc,
            "synscope_events",
            "Events emitted by each worker's engine",
            Counter,
            w(|s| s.counters.events),
        )?;
        family(
            &mut enc,
            "synscope_events_folded",
            "Per-connection events folded into a syn_flood / reset_storm episode",
            Counter,
            w(|s| s.counters.folded),
        )?;
        family(
            &mut enc,
            "synscope_events_folded_by_kind",
            "Per-connection events folded into a syn_flood / reset_storm episode, by kind",
            Counter,
            crate::detect::shared::FOLDABLE
                .iter()
                .enumerate()
                .map(|(k, kind)| {
                    let n: u64 = st.workers.iter().map(|s| s.counters.folded_by[k]).sum();
                    ([("kind", kind.as_str().to_string())], n)
                }),
        )?;
        family(
            &mut enc,
            "synscope_records",
            "Ring records (inline) or AF_XDP frames (tap) read by each worker",
            Counter,
            w(|s| s.records),
        )?;
        family(
            &mut enc,
            "synscope_record_decode_errors",
            "Records or frames a worker could not decode",
            Counter,
            w(|s| s.decode_errors),
        )?;
        family(
            &mut enc,
            "synscope_output_dropped",
            "Events or records dropped because the output thread's queue was full",
            Counter,
            w(|s| s.dropped_messages),
        )?;
        family(
            &mut enc,
            "synscope_flows",
            "Connections in each worker's flow table",
            Gauge,
            w(|s| s.table.live),
        )?;
        let mut evicted: Vec<([(&str, String); 2], u64)> = Vec::new();
        for (i, s) in st.workers.iter().enumerate() {
            for (reason, n) in EvictReason::NAMES.iter().zip(s.table.evicted) {
                evicted.push((
                    [("worker", i.to_string()), ("reason", (*reason).to_owned())],
                    n,
                ));
            }
        }
        family(
            &mut enc,
            "synscope_flows_evicted",
            "Connections evicted from a full flow table, by policy step",
            Counter,
            evicted,
        )?;
        if let Some(k) = &st.kernel {
            family(
                &mut enc,
                "synscope_kernel_packets",
                "Kernel-side (XDP/TC) counters, summed over CPUs: packets, selected, ring_full, ...",
                Counter,
                stats::NAMES
                    .iter()
                    .zip(k)
                    .map(|(n, v)| ([("counter", *n)], *v)),
            )?;
        }
        family(
            &mut enc,
            "synscope_evidence_files",
            "Evidence pcap files written",
            Counter,
            [(NO_LABELS, st.evidence_files)],
        )?;
        family(
            &mut enc,
            "synscope_evidence_bytes",
            "Bytes of evidence pcaps on disk",
            Gauge,
            [(NO_LABELS, st.evidence_bytes)],
        )?;
        family(
            &mut enc,
            "synscope_output_errors",
            "Writes to --json/--records files or evidence pcaps that failed (a full disk): \
             detection goes on, those lines or files are lost",
            Counter,
            [(NO_LABELS, st.output_errors)],
        )?;
        if let Some((iface, on)) = &st.attached {
            family(
                &mut enc,
                "synscope_attached",
                "1 while synscope's programs are attached to the interface; 0 once it went \
                 away (synscope then ends non-zero)",
                Gauge,
                [([("iface", iface.as_str())], u64::from(*on))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::stats::Buckets;

    #[test]
    fn classic_text_names_counter_families_with_total_and_drops_eof() {
        let om = "# HELP a_x Xs.\n# TYPE a_x counter\na_x_total{k=\"v\"} 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_x_total Xs.\n# TYPE a_x_total counter\na_x_total{k=\"v\"} 3\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn buckets_place_values_at_their_upper_bound_and_quantiles_name_it() {
        let mut b = Buckets::default();
        for ns in [100_000, 100_001, 3_000_000_000, u64::MAX] {
            b.record(ns);
        }
        assert_eq!(b.counts[3], 1, "100 µs is in le=0.0001");
        assert_eq!(b.counts[4], 1);
        assert_eq!(b.counts[17], 1, "3 s is in le=5");
        assert_eq!(b.counts[20], 1, "+Inf");
        assert_eq!(b.quantile_bound(0.25), Some(100_000));
        assert_eq!(b.quantile_bound(0.5), Some(250_000));
        assert_eq!(b.quantile_bound(0.75), Some(5_000_000_000));
        assert_eq!(b.quantile_bound(1.0), Some(u64::MAX));
        assert_eq!(Buckets::default().quantile_bound(0.5), None);
    }

    #[test]
    fn endpoints_beyond_the_bound_fold_into_other_and_stay_there() {
        let ep = |p: u16| Endpoint::from(std::net::SocketAddr::from(([10, 0, 0, 1], p)));
        let c = EndpointCounters {
            syns: 2,
            ..Default::default()
        };
        let mut m = MetricsState::new("pcap", 2, 1);
        m.update_worker(
            0,
            WorkerSnapshot {
                endpoints: vec![(Some(ep(80)), c), (Some(ep(81)), c)],
                ..Default::default()
            },
        );
        let s = m.by_server();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["10.0.0.1:80", "other"]);
        assert_eq!(s["other"].syns, 2);
        // A later snapshot does not rename a series.
        m.update_worker(
            0,
            WorkerSnapshot {
                endpoints: vec![(Some(ep(81)), c)],
                ..Default::default()
            },
        );
        assert_eq!(m.by_server().keys().collect::<Vec<_>>(), ["other"]);
    }

    #[test]
    fn a_port_scan_before_real_traffic_leaves_slots_for_the_listeners() {
        let ep = |p: u16| Endpoint::from(std::net::SocketAddr::from(([10, 0, 0, 1], p)));
        let refused = EndpointCounters {
            syns: 1,
            ..Default::default()
        };
        let listener = EndpointCounters {
            syns: 5,
            established: 5,
            ..Default::default()
        };
        let mut m = MetricsState::new("live", 5, 1);
        // A 10-port scan first...
        let scan: Vec<_> = (1..=10).map(|p| (Some(ep(p)), refused)).collect();
        m.update_worker(
            0,
            WorkerSnapshot {
                endpoints: scan.clone(),
                ..Default::default()
            },
        );
        // ... then the services.
        let mut all = scan;
        all.push((Some(ep(80)), listener));
        all.push((Some(ep(443)), listener));
        m.update_worker(
            0,
            WorkerSnapshot {
                endpoints: all,
                ..Default::default()
            },
        );
        let s = m.by_server();
        assert!(
            s.contains_key("10.0.0.1:80") && s.contains_key("10.0.0.1:443"),
            "{:?}",
            s.keys()
        );
        assert_eq!(
            s.len(),
            5,
            "2 scanned ports, 2 listeners, other: {:?}",
            s.keys()
        );
        assert_eq!(s["other"].syns, 8);
    }
}
