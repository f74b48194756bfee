//! `--interval SECS`: what happened in the last interval, per server endpoint — rates,
//! anomalies, latency percentiles — and the top offenders (the clients behind warning and
//! critical events, e.g. the sources of leaked probe connections). Redrawn in place on a
//! terminal; plain `key=value` lines otherwise (logs, `journalctl`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    detect::{
        Event, Kind,
        stats::{EndpointCounters, Latency},
    },
    metrics::MetricsState,
    output::ndjson::rfc3339_micros,
};

/// Rows shown at most (the busiest endpoints by SYN rate).
const MAX_ROWS: usize = 20;
/// Offenders shown at most.
const MAX_OFFENDERS: usize = 5;

/// The periodic view's state between two renderings.
pub struct View {
    every: Duration,
    /// stderr (NDJSON has stdout) or stdout.
    to_stderr: bool,
    tty: bool,
    last: Instant,
    prev: BTreeMap<String, EndpointCounters>,
    /// (kind, client address) → events this interval.
    offenders: HashMap<(Kind, IpAddr), u64>,
}

impl View {
    /// A view every `every` on stdout, or on stderr when stdout carries NDJSON; redrawn in
    /// place when that is a terminal.
    pub fn on(every: Duration, to_stderr: bool) -> Self {
        use std::io::IsTerminal;
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Self {
            to_stderr,
            ..Self::new(every, tty)
        }
    }

    /// A view every `every`; `tty` redraws in place.
    pub fn new(every: Duration, tty: bool) -> Self {
        Self {
            every,
            to_stderr: false,
            tty,
            last: Instant::now(),
            prev: BTreeMap::new(),
            offenders: HashMap::new(),
        }
    }

    /// Counts an event's client as an offender (warning and critical kinds).
    pub fn event(&mut self, e: &Event) {
        if e.severity() != "info"
            && let Some(c) = e.client
        {
            *self.offenders.entry((e.kind, c.ip_addr())).or_default() += 1;
        }
    }

    /// Whether an interval has passed.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Renders the interval that ends now and writes it out.
    pub fn show(&mut self, state: &MetricsState, now_unix_ns: i128) {
        use std::io::Write as _;
        let s = self.render(state, now_unix_ns);
        // A closed terminal or pipe is not worth stopping the capture for.
        let _ = if self.to_stderr {
            std::io::stderr().lock().write_all(s.as_bytes())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(s.as_bytes()).and_then(|()| o.flush())
        };
    }

    /// Renders the interval that ends now and starts the next.
    pub fn render(&mut self, state: &MetricsState, now_unix_ns: i128) -> String {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let cur = state.by_server();
        let mut rows: Vec<(&String, EndpointCounters)> = cur
            .iter()
            .map(|(k, c)| (k, c.since(self.prev.get(k).unwrap_or(&Default::default()))))
            .filter(|(_, d)| *d != EndpointCounters::default())
            .collect();
        rows.sort_by(|a, b| b.1.syns.cmp(&a.1.syns).then(a.0.cmp(b.0)));
        let hidden = rows.len().saturating_sub(MAX_ROWS);
        rows.truncate(MAX_ROWS);
        let mut offenders: Vec<((Kind, IpAddr), u64)> = self.offenders.drain().collect();
        offenders.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        offenders.truncate(MAX_OFFENDERS);
        let ts = rfc3339_micros(now_unix_ns);
        let s = if self.tty {
            tty(&ts, secs, &rows, hidden, &offenders)
        } else {
            lines(&ts, secs, &rows, &offenders)
        };
        self.prev = cur;
        s
    }
}

fn rate(n: u64, secs: f64) -> String {
    format!("{:.1}", n as f64 / secs)
}

/// `≤ bound` of a quantile of this interval's latencies, `-` when there were none.
fn pct(d: &EndpointCounters, l: Latency, q: f64) -> String {
    match d.latency[l as usize].quantile_bound(q) {
        None => "-".to_owned(),
        Some(u64::MAX) => ">30s".to_owned(),
        Some(ns) if ns < 1_000_000 => format!("{}us", ns / 1000),
        Some(ns) if ns < 1_000_000_000 => format!("{}ms", ns as f64 / 1e6),
        Some(ns) => format!("{}s", ns as f64 / 1e9),
    }
}

fn rsts(d: &EndpointCounters) -> u64 {
    d.rsts.iter().flatten().flatten().sum()
}

fn anomalies(d: &EndpointCounters) -> String {
    Kind::ALL
        .iter()
        .filter(|k| **k != Kind::Reset && d.anomalies[**k as usize] > 0)
        .map(|k| format!("{}:{}", k.as_str(), d.anomalies[*k as usize]))
        .collect::<Vec<_>>()
        .join(",")
}

fn tty(
    ts: &str,
    secs: f64,
    rows: &[(&String, EndpointCounters)],
    hidden: usize,
    offenders: &[((Kind, IpAddr), u64)],
) -> String {
    // Home, clear screen.
    let mut s = String::from("\x1b[H\x1b[2J");
    let _ = writeln!(
        s,
        "synscope  {ts}  last {secs:.1}s (latency: bucket upper bounds)"
    );
    let _ = writeln!(
        s,
        "{:<28} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}  anomalies",
        "server", "syn/s", "est/s", "rst/s", "p50 resp", "p99 resp", "p99 conn"
    );
    for (name, d) in rows {
        let _ = writeln!(
            s,
            "{:<28} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}  {}",
            name,
            rate(d.syns, secs),
            rate(d.established, secs),
            rate(rsts(d), secs),
            pct(d, Latency::SynToSynack, 0.5),
            pct(d, Latency::SynToSynack, 0.99),
            pct(d, Latency::ConnectTotal, 0.99),
            anomalies(d)
        );
    }
    if hidden > 0 {
        let _ = writeln!(s, "... {hidden} more endpoints");
    }
    if !offenders.is_empty() {
        let _ = writeln!(
            s,
            "\ntop offenders (clients behind warnings/critical events):"
        );
        for ((k, ip), n) in offenders {
            let _ = writeln!(s, "  {:<24} {ip:<40} {n}", k.as_str());
        }
    }
    s
}

fn lines(
    ts: &str,
    secs: f64,
    rows: &[(&String, EndpointCounters)],
    offenders: &[((Kind, IpAddr), u64)],
) -> String {
    let mut s = String::new();
    for (name, d) in rows {
        let _ = writeln!(
            s,
            "{ts} interval={secs:.1}s server={name} syns={} established={} rsts={} syn_per_s={} p50_response<={} p99_response<={} p99_connect<={} anomalies={}",
            d.syns,
            d.established,
            rsts(d),
            rate(d.syns, secs),
            pct(d, Latency::SynToSynack, 0.5),
            pct(d, Latency::SynToSynack, 0.99),
            pct(d, Latency::ConnectTotal, 0.99),
            anomalies(d)
        );
    }
    for ((k, ip), n) in offenders {
        let _ = writeln!(
            s,
            "{ts} interval={secs:.1}s offender={ip} kind={} events={n}",
            k.as_str()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flow::Endpoint, metrics::WorkerSnapshot};

    fn ep(s: &str) -> Endpoint {
        Endpoint::from(s.parse::<std::net::SocketAddr>().unwrap())
    }

    #[test]
    fn intervals_show_what_changed_since_the_last_one() {
        let mut m = MetricsState::new("inline", 10, 1);
        let mut c = EndpointCounters {
            syns: 10,
            established: 9,
            ..Default::default()
        };
        c.anomalies[Kind::SynUnanswered as usize] = 1;
        for _ in 0..9 {
            c.latency[Latency::SynToSynack as usize].record(200_000);
        }
        let snap = |c| WorkerSnapshot {
            endpoints: vec![(Some(ep("10.0.0.2:80")), c)],
            ..Default::default()
        };
        m.update_worker(0, snap(c));
        let mut v = View::new(Duration::from_secs(1), false);
        v.event(&Event {
            ts_ns: 0,
            kind: Kind::SynUnanswered,
            client: Some(ep("10.0.0.9:4000")),
            server: Some(ep("10.0.0.2:80")),
            ifindex: 1,
            reverse_seen: false,
            one_way: None,
            evidence: Default::default(),
        });
        let first = v.render(&m, 0);
        assert!(
            first.contains("server=10.0.0.2:80 syns=10 established=9 rsts=0 ")
                && first.contains("p50_response<=250us")
                && first.contains("anomalies=syn_unanswered:1"),
            "{first}"
        );
        assert!(
            first.contains("offender=10.0.0.9 kind=syn_unanswered events=1"),
            "{first}"
        );
        // Nothing new: no lines.
        assert_eq!(v.render(&m, 0), "");
        c.syns += 5;
        m.update_worker(0, snap(c));
        let third = v.render(&m, 0);
        assert!(third.contains("syns=5 established=0 "), "{third}");
        assert!(third.contains("p50_response<=- "), "{third}");
        let mut t = View::new(Duration::from_secs(1), true);
        let screen = t.render(&m, 0);
        assert!(screen.starts_with("\x1b[H\x1b[2J"), "{screen:?}");
        assert!(screen.contains("10.0.0.2:80"), "{screen}");
    }
}
