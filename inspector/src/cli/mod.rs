//! Command line: clap definitions, validation into configs, and the exit-code contract
//! (0 ok, 1 runtime failure, 2 usage error).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::loader::AttachMode;

/// synscope: finds broken TCP handshakes at line rate.
#[derive(Debug, Parser)]
#[command(name = "synscope", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture on a live interface and report what is seen.
    Live(LiveArgs),
    /// Read pcap/pcapng files (tcpdump, tshark) through the detection engine.
    Pcap(PcapArgs),
    /// Build a throw-away lab (network namespaces + veth), drive real TCP through it, capture
    /// it live, print what was found, and tear the lab down.
    Demo(DemoArgs),
}

/// Capture mode of `live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP on ingress copies records of control packets to a ring buffer; every packet goes on
    /// to the kernel.
    Inline,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Interface to attach to.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// Capture mode.
    #[arg(long, value_enum, default_value_t = Mode::Inline)]
    pub mode: Mode,
    /// Write NDJSON lines to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Ring buffer size in bytes: a power of two, at least 4096 (K/M suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// XDP attachment mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Detach an XDP program already attached to the interface instead of refusing.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PcapArgs {
    /// Capture files, processed in order as one stream.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write NDJSON events to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Flow table capacity (connections tracked at once).
    #[arg(long, value_name = "N", default_value_t = 1 << 18)]
    pub max_flows: usize,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Also write the captured packets as NDJSON to PATH (or `-`).
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(format!("`{s}`: seconds must be positive"));
    }
    Ok(Duration::from_secs_f64(v))
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

/// Where NDJSON goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonSink {
    Stdout,
    File(PathBuf),
}

impl JsonSink {
    /// `-` is stdout; anything else a file path.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::install_stop_handler()?;
    match cli.command {
        Command::Live(a) => run_live(&a),
        Command::Pcap(a) => run_pcap(&a),
        Command::Demo(a) => crate::demo::run(&a),
    }
}

/// Prints a human summary on stdout, or on stderr when NDJSON goes to stdout: the two never mix.
fn print_summary(sink: Option<&JsonSink>, summary: &str) {
    if sink == Some(&JsonSink::Stdout) {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
}

fn run_pcap(a: &PcapArgs) -> anyhow::Result<()> {
    let sink = a.json.as_deref().map(JsonSink::parse);
    let mut out = sink.as_ref().map(crate::live::open_sink).transpose()?;
    let cfg = crate::detect::Config {
        max_flows: a.max_flows,
        ..Default::default()
    };
    let r = crate::replay::run(
        &a.files,
        cfg,
        out.as_mut().map(|w| w as &mut dyn std::io::Write),
    )?;
    let summary = crate::output::summary::render(&r.engine, r.frames, &r.parse_errors);
    print_summary(sink.as_ref(), &summary);
    match r.error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn run_live(a: &LiveArgs) -> anyhow::Result<()> {
    let opts = crate::loader::InlineOptions {
        iface: a.iface.clone(),
        ring_bytes: a.ring_size,
        force: a.force,
        attach: a.xdp_mode,
    };
    let sink = a.json.as_deref().map(JsonSink::parse);
    let mut out = sink.as_ref().map(crate::live::open_sink).transpose()?;
    let report = crate::live::run_inline(
        &opts,
        a.duration,
        &crate::STOP,
        out.as_mut().map(|w| w as &mut dyn std::io::Write),
        |_| {},
    )?;
    print_summary(sink.as_ref(), &report.render());
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
