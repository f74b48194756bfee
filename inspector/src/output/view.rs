//! `--interval DURATION`: what happened in the last interval, per server endpoint — rates,
//! anomalies (this interval and since the start), latency percentiles — and the top offenders
//! (the clients behind warning and critical events, e.g. the sources of leaked probe
//! connections). On a terminal a full-screen view (ratatui, the alternate screen: nothing is
//! left in the scrollback), endpoints with anomalies first, coloured by severity, `q` or
//! Ctrl-C to quit; plain logfmt `key=value` lines otherwise (logs, `journalctl`).

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

/// The full-screen terminal of the view (alternate screen, raw mode), restored when dropped.
struct Screen {
    term: ratatui::Terminal<ratatui::backend::CrosstermBackend<Box<dyn std::io::Write + Send>>>,
}

impl Screen {
    fn open(to_stderr: bool) -> std::io::Result<Self> {
        use ratatui::crossterm::{cursor::Hide, execute, terminal};
        let mut out: Box<dyn std::io::Write + Send> = if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        terminal::enable_raw_mode()?;
        execute!(out, terminal::EnterAlternateScreen, Hide)?;
        // Logs on the same terminal would scribble over the view: they wait until it closes.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            crate::hold_logs(true);
        }
        let term = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(out))?;
        Ok(Self { term })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        use ratatui::crossterm::{cursor::Show, execute, terminal};
        let _ = terminal::disable_raw_mode();
        let _ = execute!(
            self.term.backend_mut(),
            terminal::LeaveAlternateScreen,
            Show
        );
        crate::hold_logs(false);
    }
}

/// The periodic view's state between two renderings.
pub struct View {
    every: Duration,
    /// stderr (NDJSON has stdout) or stdout.
    to_stderr: bool,
    tty: bool,
    screen: Option<Screen>,
    last: Instant,
    prev: BTreeMap<String, EndpointCounters>,
    /// (kind, client address, server endpoint) → events this interval.
    offenders: HashMap<(Kind, IpAddr, String), u64>,
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
        let mut v = Self {
            to_stderr,
            ..Self::new(every, tty)
        };
        if tty {
            match Screen::open(to_stderr) {
                Ok(s) => v.screen = Some(s),
                Err(e) => tracing::warn!(error = %e, "no full-screen view; plain lines instead"),
            }
        }
        v
    }

    /// Whether the operator asked to quit (`q`, Ctrl-C: raw mode turns it into a key).
    pub fn quit_requested(&mut self) -> bool {
        use ratatui::crossterm::event::{self, Event as Ev, KeyCode, KeyModifiers};
        if self.screen.is_none() {
            return false;
        }
        while event::poll(Duration::ZERO).unwrap_or(false) {
            if let Ok(Ev::Key(k)) = event::read() {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || k.code == KeyCode::Char('q') || k.code == KeyCode::Esc {
                    return true;
                }
            }
        }
        false
    }

    /// A view every `every`; `tty` redraws in place.
    pub fn new(every: Duration, tty: bool) -> Self {
        Self {
            every,
            to_stderr: false,
            tty,
            screen: None,
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
            let server = e.server.map_or_else(|| "-".to_owned(), |s| s.to_string());
            *self
                .offenders
                .entry((e.kind, c.ip_addr(), server))
                .or_default() += 1;
        }
    }

    /// Whether an interval has passed.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Renders the interval that ends now and writes it out.
    pub fn show(&mut self, state: &MetricsState, now_unix_ns: i128) {
        use std::io::Write as _;
        if self.screen.is_some() {
            self.draw(state, now_unix_ns);
            return;
        }
        let s = self.render(state, now_unix_ns);
        // A closed terminal or pipe is not worth stopping the capture for.
        let _ = if self.to_stderr {
            std::io::stderr().lock().write_all(s.as_bytes())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(s.as_bytes()).and_then(|()| o.flush())
        };
    }

    /// Draws the full-screen view of the interval that ends now.
    fn draw(&mut self, state: &MetricsState, now_unix_ns: i128) {
        use ratatui::{
            layout::{Constraint, Layout},
            style::{Color, Modifier, Style},
            text::{Line, Span},
            widgets::{Block, Borders, Cell, Paragraph, Row, Table},
        };
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let cur = state.by_server();
        let zero = EndpointCounters::default();
        let mut rows: Vec<(&String, EndpointCounters, &EndpointCounters)> = cur
            .iter()
            .map(|(k, c)| (k, c.since(self.prev.get(k).unwrap_or(&zero)), c))
            .collect();
        let total_anomalies = |c: &EndpointCounters| -> u64 {
            Kind::ALL
                .iter()
                .filter(|k| **k != Kind::Reset)
                .map(|k| c.anomalies[*k as usize])
                .sum()
        };
        // Endpoints with anomalies first (this interval, then since the start), then busy ones.
        rows.sort_by(|a, b| {
            total_anomalies(&b.1)
                .cmp(&total_anomalies(&a.1))
                .then(total_anomalies(b.2).cmp(&total_anomalies(a.2)))
                .then(b.1.syns.cmp(&a.1.syns))
                .then(a.0.cmp(b.0))
        });
        let mut offenders: Vec<((Kind, IpAddr, String), u64)> = self.offenders.drain().collect();
        offenders.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        offenders.truncate(MAX_OFFENDERS);
        let ts = rfc3339_micros(now_unix_ns);
        let (syns, est, anom): (u64, u64, u64) = cur.values().fold((0, 0, 0), |a, c| {
            (a.0 + c.syns, a.1 + c.established, a.2 + total_anomalies(c))
        });
        let severity = |c: &EndpointCounters| -> Style {
            let worst = Kind::ALL
                .iter()
                .filter(|k| **k != Kind::Reset && c.anomalies[**k as usize] > 0)
                .map(|k| k.severity())
                .fold("", |w, s| match (w, s) {
                    ("critical", _) | (_, "critical") => "critical",
                    ("warning", _) | (_, "warning") => "warning",
                    _ => "info",
                });
            match worst {
                "critical" => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                "warning" => Style::default().fg(Color::Yellow),
                _ => Style::default(),
            }
        };
        let prev = &mut self.prev;
        let Some(screen) = self.screen.as_mut() else {
            return;
        };
        let _ = screen.term.draw(|f| {
            let area = f.area();
            let [head, table, foot] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Min(3),
                Constraint::Length(offenders.len() as u16 + 2),
            ])
            .areas(area);
            f.render_widget(
                Paragraph::new(vec![
                    Line::from(vec![
                        Span::styled("synscope ", Style::default().add_modifier(Modifier::BOLD)),
                        Span::raw(format!("{ts}  every {secs:.1}s  q quits")),
                    ]),
                    Line::from(format!(
                        "since start: {syns} SYNs, {est} handshakes, {anom} anomalies; rates and p50/p99 connect: this interval"
                    )),
                ]),
                head,
            );
            let wide = area.width >= 120;
            let last = if wide {
                "anomalies now | since start"
            } else {
                "anomalies (total)"
            };
            let header = Row::new(["server", "syn/s", "est/s", "rst/s", "p50", "p99", last])
                .style(Style::default().add_modifier(Modifier::REVERSED));
            let body = rows.iter().map(|(name, d, c)| {
                let text = if wide {
                    format!("{} | {}", total_anomalies(d), anomalies(c).replace(',', " "))
                } else {
                    format!("{} ({})", total_anomalies(d), total_anomalies(c))
                };
                Row::new(vec![
                    Cell::from(name.as_str()),
                    Cell::from(rate(d.syns, secs)),
                    Cell::from(rate(d.established, secs)),
                    Cell::from(rate(rsts(d), secs)),
                    Cell::from(pct(d, Latency::ConnectTotal, 0.5)),
                    Cell::from(pct(d, Latency::ConnectTotal, 0.99)),
                    Cell::from(text).style(severity(c)),
                ])
            });
            let widths = [
                Constraint::Length(if wide { 40 } else { 21 }),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Fill(1),
            ];
            f.render_widget(Table::new(body, widths).header(header), table);
            let lines: Vec<Line> = offenders
                .iter()
                .map(|((k, ip, srv), n)| {
                    Line::from(format!("  {:<22} {ip} -> {srv}  {n}", k.as_str()))
                })
                .collect();
            f.render_widget(
                Paragraph::new(lines).block(
                    Block::default()
                        .borders(Borders::TOP)
                        .title("top offenders this interval"),
                ),
                foot,
            );
        });
        *prev = cur;
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
        let mut offenders: Vec<((Kind, IpAddr, String), u64)> = self.offenders.drain().collect();
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
    offenders: &[((Kind, IpAddr, String), u64)],
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
        for ((k, ip, srv), n) in offenders {
            let _ = writeln!(s, "  {:<24} {ip:<40} {srv} {n}", k.as_str());
        }
    }
    s
}

fn lines(
    ts: &str,
    secs: f64,
    rows: &[(&String, EndpointCounters)],
    offenders: &[((Kind, IpAddr, String), u64)],
) -> String {
    let mut s = String::new();
    for (name, d) in rows {
        let _ = writeln!(
            s,
            "ts={ts} interval={secs:.1}s server={name} syns={} established={} rsts={} syn_per_s={} p50_response_le={} p99_response_le={} p99_connect_le={} anomalies={}",
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
    for ((k, ip, srv), n) in offenders {
        let _ = writeln!(
            s,
            "ts={ts} interval={secs:.1}s offender={ip} server={srv} kind={} events={n}",
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
                && first.contains("p50_response_le=250us")
                && first.contains("anomalies=syn_unanswered:1"),
            "{first}"
        );
        assert!(
            first.contains("offender=10.0.0.9 server=10.0.0.2:80 kind=syn_unanswered events=1"),
            "{first}"
        );
        // Nothing new: no lines.
        assert_eq!(v.render(&m, 0), "");
        c.syns += 5;
        m.update_worker(0, snap(c));
        let third = v.render(&m, 0);
        assert!(third.contains("syns=5 established=0 "), "{third}");
        assert!(third.contains("p50_response_le=- "), "{third}");
        let mut t = View::new(Duration::from_secs(1), true);
        let screen = t.render(&m, 0);
        assert!(screen.starts_with("\x1b[H\x1b[2J"), "{screen:?}");
        assert!(screen.contains("10.0.0.2:80"), "{screen}");
    }
}
