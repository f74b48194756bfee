//! Command line: clap definitions, validation into configs, and the exit-code contract
//! (0 ok, 1 runtime failure, 2 usage error).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

pub mod config;

use crate::{loader::AttachMode, metrics::MetricsState};

/// synscope: finds broken TCP handshakes at line rate.
#[derive(Debug, Parser)]
#[command(
    name = "synscope",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SYNSCOPE_GIT_COMMIT"), ")"),
    about,
    after_help = EXAMPLES,
    propagate_version = true,
    // A flag given twice keeps its last value: the command line overrides `--config`.
    args_override_self = true
)]
pub struct Cli {
    /// Log format on stderr: `text` (default) or `json` (one object per line, for journald
    /// and log shippers). The level comes from SYNSCOPE_LOG (e.g. `debug`, `warn`,
    /// `synscope=debug`; default `info`).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const EXAMPLES: &str = "\
Examples:
  synscope live -i eth0 --json -                      events on stdout, Ctrl-C to stop
  synscope live -i eth0 --json ev.ndjson --duration 10m
  synscope live -i eth0 --metrics :9464 --evidence /var/lib/synscope/evidence --interval 5s
  synscope live -i span0 --mode tap --json -          a mirror port
  synscope pcap capture.pcap --json - | jq .           offline, same engine
  synscope kinds                                      what each anomaly means
  synscope completions bash > /etc/bash_completion.d/synscope

Environment: SYNSCOPE_LOG sets the log level (default info), e.g. SYNSCOPE_LOG=debug.
Exit codes: 0 ok, 1 runtime failure, 2 usage error.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture on a live interface and report what is seen.
    Live(LiveArgs),
    /// Read pcap/pcapng files (tcpdump, tshark) through the detection engine.
    Pcap(PcapArgs),
    /// Build a throw-away lab (network namespaces + veth), drive real TCP through it, capture
    /// it live, print what was found, and tear the lab down.
    Demo(DemoArgs),
    /// Validate a config file and print the flags it gives `live` and `pcap`.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// List the anomaly kinds: severity and what each means.
    Kinds,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout: `synscope man > /usr/share/man/man1/synscope.1`.
    Man,
}

/// Capture mode of `live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP on ingress and TC on egress copy records of control packets (and each handshake's
    /// follow-ups) to per-worker ring buffers; every packet goes on to the kernel.
    Inline,
    /// For a mirror/SPAN port or a `tc mirred` capture interface, never a live host's own
    /// interface: XDP redirects selected frames to AF_XDP sockets (one per RX queue); the
    /// rest are dropped or passed (`--tap-rest`).
    Tap,
}

/// What tap mode does with frames it does not select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TapRest {
    Drop,
    Pass,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Read settings from a TOML file (keys are flag names; flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to.
    #[arg(short = 'i', long, value_name = "IF")]
    pub iface: String,
    /// Capture mode.
    #[arg(long, value_enum, default_value_t = Mode::Inline)]
    pub mode: Mode,
    /// Write anomaly events as NDJSON to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Write every captured packet record as NDJSON to PATH, or to stdout with `-` (what the
    /// kernel selected; for debugging the selection).
    #[arg(long, value_name = "PATH|-")]
    pub records: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Worker threads, one ring buffer each (default: one per 8 usable cores, at least 1: they
    /// share the host's cores with its applications; add workers if `ring_full` grows).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub workers: Option<u32>,
    /// Packets of a flow followed after each SYN and SYN-ACK, both directions (0: control
    /// packets only).
    #[arg(long, value_name = "N", default_value_t = synscope_common::DEFAULT_FOLLOW_BUDGET,
          value_parser = clap::value_parser!(u32).range(0..=255))]
    pub follow: u32,
    /// Slots of the kernel's follow table (rounded up to a power of two; 8 bytes each).
    #[arg(long, value_name = "N", default_value_t = 1 << 18,
          value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub follow_slots: u32,
    /// Tap mode: drop or pass the frames that are not selected.
    #[arg(long, value_enum, default_value_t = TapRest::Drop)]
    pub tap_rest: TapRest,
    /// Tap mode: attach even though the interface has IP addresses (tap mode takes selected
    /// frames away from the kernel: never use it on a live host's interface).
    #[arg(long)]
    pub tap_on_addressed_interface: bool,
    /// Every SECS, show what the last interval saw per server endpoint (rates, anomalies,
    /// latency percentiles, top offenders): redrawn in place on a terminal, plain lines
    /// otherwise; on stderr when stdout carries NDJSON.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub interval: Option<Duration>,
    /// Do not attach the TC egress program (ingress only: the host's own answers are not seen,
    /// so handshake verdicts are off; for one-way vantage points).
    #[arg(long)]
    pub no_egress: bool,
    /// Do not ask the host's TCP stack why it sent a RST or dropped a packet (raw tracepoints
    /// `tcp_send_reset` and `kfree_skb`; they need the kernel's BTF and the CAP_BPF +
    /// CAP_PERFMON inline mode has). Inline mode only.
    #[arg(long)]
    pub no_kernel_reasons: bool,
    /// Close probe-leaked sockets still open DURATION after their leak was confirmed
    /// (`SOCK_DESTROY`, as `ss -K` does; needs CAP_NET_ADMIN, which inline mode has). Only
    /// sockets a `probe_connection_leak` named, confirmed in the socket table, still
    /// ESTABLISHED and without a byte of payload. Off by default. Inline mode only.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub reap_leaks: Option<Duration>,
    /// Flood mode: SYNs per second to one server endpoint above which the kernel records only
    /// a sample of its SYNs and SYN-ACKs (1/n of its flows, n adaptive), keeping exact counts,
    /// so a line-rate flood neither fills the rings nor blinds synscope to other endpoints.
    /// 0: never sample. Inline mode only.
    #[arg(long, value_name = "PER_SEC", default_value_t = crate::loader::DEFAULT_FLOOD_SAMPLE_RATE)]
    pub flood_sample_rate: u32,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Ring buffer size per worker in bytes: a power of two, at least 4096 (K/M suffixes).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Ingress attachment: `auto` is native XDP on real NICs (generic if refused) and, inline
    /// on virtual devices (veth, bridges), a TC ingress program (XDP there copies packets).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Detach an XDP program already attached to the interface instead of refusing.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PcapArgs {
    /// Read settings from a TOML file (keys are flag names; flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Capture files, processed in order as one stream.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write NDJSON events to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// The metrics state the output thread updates and scrapes read.
pub type SharedMetrics = Arc<Mutex<MetricsState>>;

/// Operator outputs shared by `live` and `pcap`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the end-of-run summary as JSON to PATH: per server endpoint the counters,
    /// anomalies, RSTs and the handshake-latency histograms (percentiles and HdrHistogram's
    /// serialized form, for merging and plotting runs).
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464, [::]:9464). With
    /// `pcap`, the process keeps serving after the files are read, until Ctrl-C/SIGTERM.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics: Option<String>,
    /// Server endpoints with their own metric series; later ones are added to `server="other"`.
    #[arg(long, value_name = "N", default_value_t = crate::metrics::DEFAULT_MAX_ENDPOINTS)]
    pub metrics_max_endpoints: usize,
    /// Write the captured packets of every flagged connection to a pcap per event in DIR
    /// (named in the event's `evidence_file`; opens in Wireshark).
    #[arg(long, value_name = "DIR")]
    pub evidence: Option<PathBuf>,
    /// Bound on the evidence directory; the oldest files are removed first.
    #[arg(long, value_name = "MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub evidence_max_mb: u64,
    /// Bound on the evidence directory in files (small files on a busy node exhaust inodes
    /// and make directory listings slow before they fill the bytes bound).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub evidence_max_files: u64,
    /// Recent packets each worker keeps for evidence, in MB (a verdict settled after its
    /// connection's first packets left this ring gets the rest, marked `evidence_partial`).
    #[arg(long, value_name = "MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub evidence_buffer_mb: u64,
}

impl ReportArgs {
    /// Writes `--summary-json` (atomically: a reader never sees half a file).
    pub fn write_summary_json(
        &self,
        totals: &crate::detect::engine::Totals,
        mode: &str,
        input: u64,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<()> {
        let Some(path) = &self.summary_json else {
            return Ok(());
        };
        let mut v = crate::output::summary::json(totals, mode, input);
        if let Some(o) = v.as_object_mut() {
            o.extend(extra);
        }
        // The temporary file sits next to the target (never outside it, whatever the path
        // looks like) and is removed if the write fails.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let r = std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)
            .and_then(|()| std::fs::rename(&tmp, path));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// The evidence writer and per-worker ring size, when `--evidence` is set.
    pub fn evidence(&self) -> anyhow::Result<Option<(crate::output::evidence::Writer, usize)>> {
        let Some(dir) = &self.evidence else {
            return Ok(None);
        };
        let w = crate::output::evidence::Writer::new(
            dir,
            self.evidence_max_mb << 20,
            self.evidence_max_files as usize,
        )
        .map_err(|e| anyhow::anyhow!("cannot use evidence directory {}: {e}", dir.display()))?;
        Ok(Some((w, (self.evidence_buffer_mb << 20) as usize)))
    }

    /// The metrics state — when `--metrics` is set, or `view` needs it — and the HTTP server
    /// of `--metrics`.
    pub fn start_metrics(
        &self,
        mode: &'static str,
        workers: usize,
        view: bool,
    ) -> anyhow::Result<(Option<SharedMetrics>, Option<crate::metrics::MetricsServer>)> {
        if self.metrics.is_none() && !view {
            return Ok((None, None));
        }
        let state = Arc::new(Mutex::new(MetricsState::new(
            mode,
            self.metrics_max_endpoints,
            workers,
        )));
        let server = self
            .metrics
            .as_ref()
            .map(|addr| crate::metrics::MetricsServer::start(addr, state.clone()))
            .transpose()?;
        Ok((Some(state), server))
    }
}

/// Detection settings shared by `live` and `pcap` (defaults from docs/anomalies.md).
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Flow table capacity per worker (connections tracked at once).
    #[arg(long, value_name = "N", default_value_t = 1 << 18,
          value_parser = clap::value_parser!(u64).range(16..=(1 << 26)))]
    pub max_flows: u64,
    /// Least seconds a SYN stream waits for an answer; after a retransmission the wait
    /// follows the client's backoff (2 x the last gap), so `syn_unanswered` comes when the
    /// client gave up (docs/anomalies.md, Timing).
    #[arg(long, value_name = "DURATION", default_value = "3", value_parser = parse_secs)]
    pub syn_timeout: Duration,
    /// The same for the server's SYN-ACK stream before `synack_unacked`.
    #[arg(long, value_name = "DURATION", default_value = "3", value_parser = parse_secs)]
    pub synack_timeout: Duration,
    /// Seconds a reordered packet may still correct a verdict: a probe's late ACK after its
    /// RST, a handshake completing after a RST refused its SYN.
    #[arg(long, value_name = "DURATION", default_value = "0.2", value_parser = parse_secs)]
    pub reorder_window: Duration,
    /// Seconds a FIN may wait for an answer before `fin_unanswered`.
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = parse_secs)]
    pub fin_timeout: Duration,
    /// Memory synscope may plan for (flow tables, rings, evidence buffers of every worker),
    /// e.g. `2G`; default: the cgroup's memory limit (a unit's MemoryMax=), else the
    /// machine's memory. Checked before anything is allocated.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_max: Option<u64>,
    /// Also report a `reset` event for each RST that refuses a SYN (by default it is folded
    /// into the connection's `syn_rejected`, whose evidence carries the RST's details).
    #[arg(long)]
    pub all_resets: bool,
    /// New connections per second to one server endpoint that make a `syn_flood`.
    #[arg(long, value_name = "PER_SEC", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub flood_rate: u64,
    /// RSTs per second from one host that make a `reset_storm`.
    #[arg(long, value_name = "PER_SEC", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rst_rate: u64,
    /// Health-probe sources (LVS directors, load balancers), comma-separated networks: a
    /// source in one is a prober from its first probe; others become probers of an endpoint
    /// after 3 probes (connect, then RST or FIN within 50 ms, no data).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_net)]
    pub probe_source: Vec<ipnet::IpNet>,
}

impl EngineArgs {
    /// The engine configuration these flags describe.
    pub fn config(&self) -> crate::detect::Config {
        crate::detect::Config {
            max_flows: self.max_flows as usize,
            syn_timeout: self.syn_timeout.as_nanos() as u64,
            synack_timeout: self.synack_timeout.as_nanos() as u64,
            reorder_window: self.reorder_window.as_nanos() as u64,
            all_resets: self.all_resets,
            fin_timeout: self.fin_timeout.as_nanos() as u64,
            flood_rate: self.flood_rate,
            rst_rate: self.rst_rate,
            probe_sources: self.probe_source.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Also write the anomaly events as NDJSON to PATH (or `-`), as `live --json` does.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
}

/// A listen address; `:PORT` (as node_exporter takes it) means every address.
fn parse_listen(s: &str) -> Result<String, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("[::]:{port}"),
        None => s.to_owned(),
    };
    full.parse::<std::net::SocketAddr>()
        .map(|_| full.clone())
        .map_err(|_| format!("`{s}` is not ADDR:PORT or :PORT (e.g. 127.0.0.1:9464, :9464)"))
}

/// A network (`10.0.0.0/8`, `2001:db8::/32`) or one address.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let t = s.trim();
    t.parse::<ipnet::IpNet>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not a network or address (e.g. 10.0.0.0/8, 192.0.2.7)"))
}

/// A duration: seconds (`3`, `1.5`) or with a unit (`500ms`, `10s`, `5m`, `2h`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{s}`: unknown unit (use ms, s, m or h)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 3, 1.5s, 500ms, 5m)"))?;
    let secs = v * mult;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("`{s}`: durations must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 512M, 2G)"))
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`),
/// or else the machine's memory.
fn memory_limit() -> Option<(u64, &'static str)> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in cg.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let file = if ctrl.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if ctrl.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v < 1 << 60)
        {
            return Some((v, "the cgroup's memory limit"));
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| (kib * 1024, "the machine's memory"))
}

/// A usage error found after parsing (exit 2): a plan that cannot fit in memory, outputs
/// that would mix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SizeError(String);

/// Checks that `workers` engines of `e.max_flows` flows, plus `per_worker` bytes each
/// (rings, evidence buffers), fit in `--memory-max` or the limit found.
fn check_memory(e: &EngineArgs, workers: u64, per_worker: u64) -> anyhow::Result<()> {
    let table = crate::detect::Engine::table_bound_bytes(e.max_flows as usize) as u64;
    let need = workers.saturating_mul(table.saturating_add(per_worker));
    let (limit, what) = match e.memory_max {
        Some(m) => (m, "--memory-max"),
        None => match memory_limit() {
            Some(l) => l,
            None => return Ok(()),
        },
    };
    if need > limit {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        return Err(SizeError(format!(
            "--max-flows {} x {workers} worker(s) needs up to {:.2} GiB (flow tables {:.2} GiB \
             each at {} bytes per flow, rings and evidence buffers {:.2} GiB each), more than \
             {what} ({:.2} GiB): lower --max-flows or --workers, or raise --memory-max",
            e.max_flows,
            gib(need),
            gib(table),
            table / e.max_flows.max(1),
            gib(per_worker),
            gib(limit)
        ))
        .into());
    }
    Ok(())
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size in bytes"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > (1 << 30) {
        return Err(format!(
            "`{s}`: the ring size must be a power of two between 4K and 1G"
        ));
    }
    Ok(bytes as u32)
}

pub use crate::output::sink::JsonSink;
use crate::output::sink::LineSink;

/// Parses the process's command line, `--config` expanded; exits with clap's usage error (2)
/// or the config file's error (2).
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let argv = match config::expand(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("synscope: error: {e}");
            std::process::exit(2);
        }
    };
    Cli::from_arg_matches(&Cli::command().get_matches_from(argv)).unwrap_or_else(|e| e.exit())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::install_stop_handler()?;
    match cli.command {
        Command::Live(a) => run_live(&a),
        Command::Pcap(a) => run_pcap(&a),
        Command::Demo(a) => crate::demo::run(a.json.as_deref().map(JsonSink::parse).as_ref()),
        Command::CheckConfig { file } => {
            out(&config::check(&file)?)?;
            Ok(())
        }
        Command::Kinds => {
            out(&kinds_text())?;
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failing writer.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "synscope", &mut script);
            out(&String::from_utf8_lossy(&script))
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// `synscope kinds`: every anomaly kind with its severity and what to check.
pub fn kinds_text() -> String {
    use crate::detect::Kind;
    let mut s = String::from(
        "Anomaly kinds (the `kind` of an NDJSON event and the metrics' label; docs/anomalies.md):\n\n",
    );
    for k in Kind::ALL {
        s.push_str(&format!("{:<24}{}\n", k.as_str(), k.severity()));
        s.push_str(&format!("    {}\n\n", k.hint()));
    }
    s
}

/// Prints a human summary on stdout, or on stderr when NDJSON goes to stdout: the two never mix.
fn print_summary(stdout_has_ndjson: bool, summary: &str) -> anyhow::Result<()> {
    if stdout_has_ndjson {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
        Ok(())
    } else {
        out(summary)
    }
}

/// Writes `text` on stdout; a closed or full stdout is an error (a reader gone is no failure:
/// `main` maps EPIPE to success), never a panic.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}

fn run_pcap(a: &PcapArgs) -> anyhow::Result<()> {
    // Every file must open before anything runs: one error, no summary of nothing.
    for f in &a.files {
        std::fs::File::open(f).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", f.display()))?;
    }
    let evidence_ring = if a.report.evidence.is_some() {
        a.report.evidence_buffer_mb << 20
    } else {
        0
    };
    check_memory(&a.engine, 1, evidence_ring)?;
    let sink = a.json.as_deref().map(JsonSink::parse);
    let mut out = sink.as_ref().map(LineSink::open).transpose()?;
    let cfg = a.engine.config();
    let (state, server) = a.report.start_metrics("pcap", 1, false)?;
    let r = crate::runtime::replay::run(&a.files, cfg, out.as_mut(), a.report.evidence()?)?;
    let output_errors = out.as_ref().map_or(0, |o| o.errors) + r.evidence_errors;
    let mut totals = crate::detect::engine::Totals::of([&r.engine]);
    // Aggregate episodes included: the summary counts what the sinks received.
    totals.counters.events = r.events;
    let mut summary = format!(
        "capture: {} file{}, {:.1} s of capture time\n",
        a.files.len(),
        if a.files.len() == 1 { "" } else { "s" },
        r.span_ns as f64 / 1e9
    );
    summary.push_str(&crate::output::summary::render(
        &totals,
        r.frames,
        &r.parse_errors,
    ));
    if output_errors > 0 {
        summary.push_str(&format!(
            "output_errors: {output_errors} (writes that failed; see the log)\n"
        ));
    }
    print_summary(sink == Some(JsonSink::Stdout), &summary)?;
    a.report
        .write_summary_json(&totals, "pcap", r.frames, Default::default())?;
    if let (Some(state), Some(server)) = (state, server) {
        {
            let mut m = crate::runtime::lock(&state);
            let report = crate::runtime::WorkerReport {
                records: r.frames,
                decode_errors: r.parse_errors.clone(),
                ..Default::default()
            };
            m.update_worker(0, report.snapshot(&r.engine));
            r.episodes.iter().for_each(|e| m.count_event(e));
            m.evidence_files = r.evidence_files;
        }
        tracing::info!(addr = %server.addr, "files read; serving metrics until Ctrl-C/SIGTERM");
        while !crate::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    match r.error {
        Some(e) => Err(e.into()),
        None if output_errors > 0 => Err(anyhow::anyhow!(
            "{output_errors} output writes failed (a full disk?); detection completed, the summary above is whole"
        )),
        None => Ok(()),
    }
}

fn run_live(a: &LiveArgs) -> anyhow::Result<()> {
    let opts = crate::loader::InlineOptions {
        ring_bytes: a.ring_size,
        force: a.force,
        attach: a.xdp_mode,
        workers: a.workers.unwrap_or_else(crate::runtime::default_workers),
        follow_budget: a.follow,
        follow_slots: a.follow_slots,
        egress: !a.no_egress,
        kernel_reasons: !a.no_kernel_reasons,
        flood_sample_rate: a.flood_sample_rate,
        ..crate::loader::InlineOptions::new(&a.iface)
    };
    let evidence_ring = if a.report.evidence.is_some() {
        a.report.evidence_buffer_mb << 20
    } else {
        0
    };
    check_memory(
        &a.engine,
        u64::from(opts.workers),
        u64::from(opts.ring_bytes) + evidence_ring,
    )?;
    let events = a.json.as_deref().map(JsonSink::parse);
    let records = a.records.as_deref().map(JsonSink::parse);
    let mut ev_out = events.as_ref().map(LineSink::open).transpose()?;
    let mut rec_out = records.as_ref().map(LineSink::open).transpose()?;
    let mode = match a.mode {
        Mode::Inline => "inline",
        Mode::Tap => "tap",
    };
    let (state, _server) =
        a.report
            .start_metrics(mode, opts.workers as usize, a.interval.is_some())?;
    let ndjson_on_stdout = [&events, &records].contains(&&Some(JsonSink::Stdout));
    if a.reap_leaks.is_some() && matches!(a.mode, Mode::Tap) {
        return Err(SizeError(
            "--reap-leaks closes sockets of the host synscope runs on: it needs inline mode on the real server, not a mirror port".into(),
        )
        .into());
    }
    if events.is_some() && events == records {
        return Err(SizeError(
            "--json and --records would mix in one output: give them different files (or one of them -)".into(),
        )
        .into());
    }
    let sinks = crate::runtime::Sinks {
        events: ev_out.as_mut(),
        records: rec_out.as_mut(),
        on_event: None,
        metrics: state,
        evidence: a.report.evidence()?,
        view: a
            .interval
            .map(|every| crate::output::view::View::on(every, ndjson_on_stdout)),
        events_sent: 0,
        iface: None,
        host_tcp_base: None,
        reap_leaks: a.reap_leaks,
        leaks: None,
    };
    let report = match a.mode {
        Mode::Inline => crate::runtime::inline::run_inline(
            &opts,
            a.engine.config(),
            a.duration,
            &crate::STOP,
            sinks,
        )?,
        #[cfg(not(feature = "tap"))]
        Mode::Tap => anyhow::bail!(
            "this synscope was built without tap mode (cargo feature `tap`, on by default): \
             build it with `cargo build --release`"
        ),
        #[cfg(feature = "tap")]
        Mode::Tap => crate::runtime::tap::run_tap(
            &crate::loader::TapOptions {
                iface: a.iface.clone(),
                force: a.force,
                attach: a.xdp_mode,
                follow_budget: a.follow,
                follow_slots: a.follow_slots,
                pass_rest: a.tap_rest == TapRest::Pass,
                allow_addressed: a.tap_on_addressed_interface,
            },
            a.engine.config(),
            a.duration,
            &crate::STOP,
            sinks,
        )?,
    };
    print_summary(ndjson_on_stdout, &report.render())?;
    a.report
        .write_summary_json(&report.totals, mode, report.records(), report.json_extra())?;
    if report.interface_lost {
        anyhow::bail!(
            "interface {} went away; a supervisor restarting synscope attaches again when it is back",
            a.iface
        );
    }
    if report.output_errors > 0 {
        anyhow::bail!(
            "{} output writes failed (a full disk?); detection went on, the summary above is whole",
            report.output_errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_must_be_powers_of_two_in_range() {
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("3000").is_err());
        assert!(parse_ring_size("6M").is_err());
        assert!(parse_ring_size("2G").is_err());
        assert!(parse_ring_size("x").is_err());
    }

    #[test]
    fn durations_must_be_positive_numbers() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_secs("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_secs("5 parsecs").is_err());
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-3").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
