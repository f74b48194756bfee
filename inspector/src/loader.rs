//! Loading and attaching the embedded BPF programs; detaching is dropping.
//!
//! Inline mode attaches the XDP selector through a bpf_link (never the legacy netlink
//! attachment), so the kernel removes it when the process dies, even on `kill -9`.

use std::{io, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode, links::LinkType},
};
use synscope_common::stats;

/// The BPF object built by `build.rs` from `xdp-prog`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synscope-xdp"));

/// Everything that can go wrong while loading and attaching; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "synscope needs CAP_BPF and CAP_NET_ADMIN to load and attach BPF programs: run as root"
    )]
    NotPrivileged,
    #[error("interface {0} not found: check `ip link` (inside the right network namespace)")]
    UnknownInterface(String),
    #[error(
        "interface {iface} already has an XDP program attached ({existing}); synscope will not \
         replace it: pass --force to detach it first"
    )]
    AlreadyAttached { iface: String, existing: String },
    #[error(
        "interface {iface} has an XDP program attached through a bpf_link ({existing}) that only \
         its owner can remove: stop that process first"
    )]
    OwnedByLink { iface: String, existing: String },
    #[error(
        "the kernel refused the XDP attachment on {iface} in native and generic mode: {source}"
    )]
    AttachRefused {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the kernel attached XDP on {0} without a bpf_link (legacy netlink): it would outlive a \
         crashed synscope, so synscope detached it again; a kernel with XDP bpf_link support \
         (5.9+) is needed"
    )]
    NoLink(String),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program or map setup failed: {0}")]
    Program(#[from] ProgramError),
    #[error("BPF map {name} unusable: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("detaching the existing XDP program from {iface} failed: {detail}")]
    ForceDetach { iface: String, detail: String },
}

impl LoadError {
    /// Exit code: 2 for what the user typed wrong, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::UnknownInterface(_) | Self::AlreadyAttached { .. } => 2,
            _ => 1,
        }
    }
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic with a log line.
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// Inline-mode options.
#[derive(Debug, Clone)]
pub struct InlineOptions {
    pub iface: String,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    pub force: bool,
    pub attach: AttachMode,
}

/// A loaded and attached inline selector. Dropping it detaches everything.
pub struct Inline {
    /// Declared first so the maps are released before the programs and links.
    pub ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    _ebpf: Ebpf,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub attach_mode: &'static str,
}

impl Inline {
    /// Sums the per-CPU counters, indexed by `synscope_common::stats`.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], LoadError> {
        let mut out = [0u64; stats::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|source| LoadError::Map {
                    name: "STATS",
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// Whether the effective capabilities allow loading and attaching XDP programs.
pub fn has_bpf_privileges() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
        return false;
    };
    let Ok(caps) = u64::from_str_radix(hex.trim(), 16) else {
        return false;
    };
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    caps & (1 << CAP_NET_ADMIN) != 0 && caps & ((1 << CAP_BPF) | (1 << CAP_SYS_ADMIN)) != 0
}

/// Resolves an interface name in the caller's network namespace.
pub fn ifindex(iface: &str) -> Result<u32, LoadError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| LoadError::UnknownInterface(iface.to_owned()))
}

/// The XDP program currently attached to `iface`, as `ip` reports it: (prog id, description).
pub fn attached_xdp(iface: &str) -> Option<(u32, String)> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    let prog = xdp
        .get("prog")
        .or_else(|| xdp.get("attached")?.get(0)?.get("prog"))?;
    let id = prog.get("id")?.as_u64()? as u32;
    let name = prog.get("name").and_then(|n| n.as_str()).unwrap_or("?");
    Some((id, format!("prog id {id}, name {name}")))
}

fn force_detach(iface: &str) -> Result<(), LoadError> {
    for kind in ["xdp", "xdpgeneric", "xdpdrv"] {
        let _ = Command::new("ip")
            .args(["link", "set", "dev", iface, kind, "off"])
            .status();
    }
    match attached_xdp(iface) {
        None => Ok(()),
        Some((_, existing)) => Err(LoadError::OwnedByLink {
            iface: iface.to_owned(),
            existing,
        }),
    }
}

/// Loads the selector, attaches it to `opts.iface` in the caller's network namespace, and
/// returns the handles userspace reads.
pub fn attach_inline(opts: &InlineOptions) -> Result<Inline, LoadError> {
    if !has_bpf_privileges() {
        return Err(LoadError::NotPrivileged);
    }
    let ifindex = ifindex(&opts.iface)?;
    if let Some((_, existing)) = attached_xdp(&opts.iface) {
        if !opts.force {
            return Err(LoadError::AlreadyAttached {
                iface: opts.iface.clone(),
                existing,
            });
        }
        tracing::warn!(iface = %opts.iface, %existing, "--force: detaching the existing XDP program");
        force_detach(&opts.iface)?;
    }
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("RECORDS", opts.ring_bytes)
        .load(BPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == io::ErrorKind::PermissionDenied =>
            {
                LoadError::NotPrivileged
            }
            _ => LoadError::Load(e),
        })?;
    let prog: &mut Xdp = ebpf
        .program_mut("synscope_ingress")
        .ok_or(LoadError::Program(ProgramError::NotLoaded))?
        .try_into()?;
    prog.load()?;
    let prog_id = prog.info()?.id();
    let attach_mode = match opts.attach {
        AttachMode::Native => prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map(|_| "native")
            .map_err(|source| LoadError::AttachRefused {
                iface: opts.iface.clone(),
                source,
            })?,
        AttachMode::Generic => prog
            .attach_to_if_index(ifindex, XdpMode::Skb)
            .map(|_| "generic")
            .map_err(|source| LoadError::AttachRefused {
                iface: opts.iface.clone(),
                source,
            })?,
        AttachMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(_) => "native",
            Err(e) => {
                tracing::info!(iface = %opts.iface, error = %e, "native XDP refused, using generic mode");
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map(|_| "generic")
                    .map_err(|source| LoadError::AttachRefused {
                        iface: opts.iface.clone(),
                        source,
                    })?
            }
        },
    };
    let has_link = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .any(|l| l.program_id() == prog_id && matches!(l.link_type(), Ok(LinkType::Xdp)));
    if !has_link {
        drop(ebpf);
        return Err(LoadError::NoLink(opts.iface.clone()));
    }
    let ring = RingBuf::try_from(
        ebpf.take_map("RECORDS")
            .ok_or(LoadError::Program(ProgramError::NotLoaded))?,
    )
    .map_err(|source| LoadError::Map {
        name: "RECORDS",
        source,
    })?;
    let stats = PerCpuArray::try_from(
        ebpf.take_map("STATS")
            .ok_or(LoadError::Program(ProgramError::NotLoaded))?,
    )
    .map_err(|source| LoadError::Map {
        name: "STATS",
        source,
    })?;
    Ok(Inline {
        ring,
        stats,
        _ebpf: ebpf,
        ifindex,
        attach_mode,
    })
}
