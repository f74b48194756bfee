//! Loading and attaching the embedded BPF programs; detaching is dropping.
//!
//! Inline mode attaches the XDP ingress selector through a bpf_link and the TC egress selector
//! through a tcx link (never the legacy netlink attachments), so the kernel removes both when
//! the process dies, even on `kill -9`.

pub mod btf;
pub mod kernel;

use std::{io, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink,
        tc::SchedClassifierLink,
    },
};
use synscope_common::{MAX_WORKERS, stats};

/// The BPF object built by `build.rs` from `xdp-prog`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synscope-xdp"));

/// Everything that can go wrong while loading and attaching; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "synscope needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach BPF programs \
         (tap mode also CAP_NET_RAW and CAP_IPC_LOCK): run as root, or as a service with \
         deploy/synscope.service's capabilities"
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
    #[error(
        "the kernel attached the TC egress program on {0} without a tcx link (legacy netlink): \
         it would outlive a crashed synscope, so synscope refuses; a kernel with tcx (6.6+) is \
         needed, or run without --egress"
    )]
    NoTcxLink(String),
    #[error("the kernel refused the TC egress attachment on {iface}: {source}")]
    EgressRefused {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "interface {iface} has addresses ({addrs}): it looks like a live host interface, and tap \
         mode would take its selected packets away from its own TCP stack. Use inline mode \
         there; pass --tap-on-addressed-interface only for a capture port that happens to have \
         an address"
    )]
    LiveInterface { iface: String, addrs: String },
    #[error(
        "synscope already runs on {iface} in this network namespace (its lock `@{lock}` is \
         taken): stop it first"
    )]
    AlreadyRunning { iface: String, lock: String },
    #[error("tap mode needs XDP (AF_XDP redirect): --xdp-mode tc is for inline mode")]
    TapNeedsXdp,
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
            Self::UnknownInterface(_)
            | Self::AlreadyAttached { .. }
            | Self::AlreadyRunning { .. }
            | Self::TapNeedsXdp
            | Self::LiveInterface { .. } => 2,
            _ => 1,
        }
    }
}

/// How to attach the ingress program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic with a log line; in inline mode on
    /// virtual devices (veth, bridges, ...), TC ingress instead.
    Auto,
    /// Native XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
    /// TC ingress (tcx link) instead of XDP: inline mode only.
    Tc,
}

/// Inline-mode options.
#[derive(Debug, Clone)]
pub struct InlineOptions {
    pub iface: String,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    pub force: bool,
    pub attach: AttachMode,
    /// Workers (one ring buffer each), 1..=MAX_WORKERS.
    pub workers: u32,
    /// Packets followed after a SYN or SYN-ACK (0 = control packets only).
    pub follow_budget: u32,
    /// Slots of the follow window (a power of two).
    pub follow_slots: u32,
    /// Attach the TC egress selector too (the host's own SYN-ACKs and RSTs).
    pub egress: bool,
    /// Attach the kernel-reason programs (why the host's TCP stack sent a RST or dropped a
    /// packet); without the kernel's BTF or the privilege they are left out with a log line.
    pub kernel_reasons: bool,
    /// SYNs per second to one endpoint above which its SYNs and SYN-ACKs are sampled in the
    /// kernel, exact counts kept (0: never).
    pub flood_sample_rate: u32,
}

impl InlineOptions {
    /// The defaults `synscope live` uses, for `iface`.
    pub fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_owned(),
            ring_bytes: 1 << 22,
            force: false,
            attach: AttachMode::Auto,
            workers: 1,
            follow_budget: synscope_common::DEFAULT_FOLLOW_BUDGET,
            follow_slots: 1 << 18,
            egress: true,
            kernel_reasons: true,
            flood_sample_rate: DEFAULT_FLOOD_SAMPLE_RATE,
        }
    }
}

/// A loaded and attached inline selector. Dropping it detaches everything.
pub struct Inline {
    /// One ring per worker, indexed by worker. Declared first so the maps are released
    /// before the programs and links.
    pub rings: Vec<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    /// The attachments: dropping them detaches (and the kernel does it when we die).
    /// Taken (dropped) by [`Inline::detach`] or with the handle.
    links: std::sync::Mutex<Option<(IngressLink, Option<SchedClassifierLink>)>>,
    _lock: InstanceLock,
    _ebpf: Ebpf,
    pub ifindex: u32,
    /// The interface's name.
    pub iface: String,
    /// `native`, `generic` (XDP) or `tc` (TC ingress).
    pub attach_mode: &'static str,
    /// Whether the TC egress selector is attached.
    pub egress: bool,
    /// Kernel ids of the XDP and (when attached) TC programs, for `bpftool`.
    pub prog_ids: (u32, Option<u32>),
    /// The names of the kernel's reasons, when the kernel-reason programs are attached.
    pub kernel_names: Option<std::sync::Arc<crate::detect::kernel::KernelNames>>,
    /// The host's socket table (sock_diag), opened in the interface's network namespace.
    pub sockdiag: Option<crate::capture::sockdiag::SockDiag>,
    /// CLOCK_MONOTONIC (ns) once both directions were attached: packets before it may have
    /// been seen one way only (ingress goes live before egress).
    pub watched_from_mono: u64,
}

impl Inline {
    /// Detaches the programs (no new records); the rings and counters stay readable, so the
    /// workers can drain what is in flight and the counters add up exactly.
    pub fn detach(&self) {
        drop(self.links.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Sums the per-CPU counters, indexed by `synscope_common::stats`.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], LoadError> {
        read_stats(&self.stats)
    }
}

/// The ingress attachment: an XDP bpf_link or a tcx link; dropping it detaches.
enum IngressLink {
    Xdp(#[allow(dead_code)] FdLink),
    Tc(#[allow(dead_code)] SchedClassifierLink),
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
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| caps & (1 << c) != 0;
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8: only it).
    has(CAP_NET_ADMIN) && (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

/// Whether `iface` is a loopback device (IFF_LOOPBACK in its flags).
pub fn is_loopback(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 0x8 != 0)
}

/// Whether `iface` is a virtual device (no bus device behind it: veth, bridge, bond, ...).
pub fn is_virtual(iface: &str) -> bool {
    !std::path::Path::new(&format!("/sys/class/net/{iface}/device")).exists()
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

/// Checks privileges, resolves the interface, and deals with an XDP program already there.
/// One synscope per interface and network namespace: an abstract unix socket named after the
/// interface, bound for as long as the handle lives (abstract names are per network namespace
/// and vanish with the process, `kill -9` included; no files, no privileges).
pub struct InstanceLock(#[allow(dead_code)] std::os::unix::net::UnixListener);

fn instance_lock(iface: &str, ifindex: u32) -> Result<InstanceLock, LoadError> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("synscope-if{ifindex}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|_| LoadError::UnknownInterface(iface.to_owned()))?;
    std::os::unix::net::UnixListener::bind_addr(&addr)
        .map(InstanceLock)
        .map_err(|_| LoadError::AlreadyRunning {
            iface: iface.to_owned(),
            lock: name,
        })
}

/// The privilege check, then `iface`'s index.
fn privileged_ifindex(iface: &str) -> Result<u32, LoadError> {
    if !has_bpf_privileges() {
        return Err(LoadError::NotPrivileged);
    }
    ifindex(iface)
}

/// Privileges, the interface, the instance lock; with `xdp`, no foreign XDP program (or
/// `--force` removes it).
fn preflight(iface: &str, force: bool, xdp: bool) -> Result<(u32, InstanceLock), LoadError> {
    let ifindex = privileged_ifindex(iface)?;
    let lock = instance_lock(iface, ifindex)?;
    if !xdp {
        return Ok((ifindex, lock));
    }
    if let Some((_, existing)) = attached_xdp(iface) {
        if !force {
            return Err(LoadError::AlreadyAttached {
                iface: iface.to_owned(),
                existing,
            });
        }
        tracing::warn!(%iface, %existing, "--force: detaching the existing XDP program");
        force_detach(iface)?;
    }
    Ok((ifindex, lock))
}

/// The follow-window globals of one load: `FOLLOW_MASK + 1` slots.
struct Follow {
    budget: u32,
    mask: u32,
    /// The flow hash's secret key, drawn per load (worker choice and follow slots).
    hash_key: [u32; 2],
}

/// 64 random bits from the OS (std's hash keys are drawn from it).
fn random_key() -> [u32; 2] {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    [r as u32, (r >> 32) as u32]
}

impl Follow {
    fn new(budget: u32, slots: u32) -> Self {
        Self {
            hash_key: random_key(),
            budget,
            mask: slots.max(1).next_power_of_two() - 1,
        }
    }
}

/// Loads the BPF object with `loader`'s settings plus the follow window.
fn load_object<'a>(loader: &mut EbpfLoader<'a>, follow: &'a Follow) -> Result<Ebpf, LoadError> {
    loader
        .map_max_entries("FOLLOW", follow.mask + 1)
        .override_global("FOLLOW_BUDGET", &follow.budget, true)
        .override_global("FOLLOW_MASK", &follow.mask, true)
        .override_global("HASH_KEY", &follow.hash_key, true)
        .load(BPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == io::ErrorKind::PermissionDenied =>
            {
                LoadError::NotPrivileged
            }
            _ => LoadError::Load(e),
        })
}

/// Loads XDP program `name` and attaches it through a bpf_link (native first in `Auto`);
/// returns its program id and the mode used.
fn attach_xdp(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(u32, &'static str, FdLink), LoadError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(LoadError::Program(ProgramError::NotLoaded))?
        .try_into()?;
    prog.load()?;
    let prog_id = prog.info()?.id();
    let refused = |source| LoadError::AttachRefused {
        iface: iface.to_owned(),
        source,
    };
    let (link_id, attach_mode) = match mode {
        AttachMode::Native => prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map(|id| (id, "native"))
            .map_err(refused)?,
        AttachMode::Generic => prog
            .attach_to_if_index(ifindex, XdpMode::Skb)
            .map(|id| (id, "generic"))
            .map_err(refused)?,
        AttachMode::Tc => return Err(LoadError::TapNeedsXdp),
        AttachMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                tracing::info!(%iface, error = %e, "native XDP refused, using generic mode");
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map(|id| (id, "generic"))
                    .map_err(refused)?
            }
        },
    };
    // Only a bpf_link attachment goes away with the process. Asking the attachment itself
    // (not listing the kernel's links) needs no CAP_SYS_ADMIN.
    match FdLink::try_from(prog.take_link(link_id)?) {
        Ok(link) => Ok((prog_id, attach_mode, link)),
        Err(_) => {
            // A netlink attachment stays when its handle is dropped: remove it.
            force_detach(iface)?;
            Err(LoadError::NoLink(iface.to_owned()))
        }
    }
}

fn take_stats(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    PerCpuArray::try_from(
        ebpf.take_map("STATS")
            .ok_or(LoadError::Program(ProgramError::NotLoaded))?,
    )
    .map_err(|source| LoadError::Map {
        name: "STATS",
        source,
    })
}

/// Sums per-CPU counters, indexed by `synscope_common::stats`.
fn read_stats(
    stats: &PerCpuArray<MapData, u64>,
) -> Result<[u64; stats::COUNT as usize], LoadError> {
    let mut out = [0u64; stats::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = stats.get(&(i as u32), 0).map_err(|source| LoadError::Map {
            name: "STATS",
            source,
        })?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

/// Loads the selector, attaches it to `opts.iface` in the caller's network namespace, and
/// returns the handles userspace reads.
pub fn attach_inline(opts: &InlineOptions) -> Result<Inline, LoadError> {
    // On virtual devices (veth, bridges, ...) XDP is no driver fast path: native XDP on veth
    // copies every cloned TCP skb into a page pool (measured: 25 → 4 Gbit/s through a veth
    // pair), generic XDP copies them too (0.78 of the throughput), while a TC ingress program
    // sees the skb as it is. `auto` picks TC there.
    let mode = match opts.attach {
        AttachMode::Auto if is_virtual(&opts.iface) => {
            tracing::info!(
                iface = %opts.iface,
                "virtual device: TC ingress instead of XDP (XDP on veth copies packets)"
            );
            AttachMode::Tc
        }
        m => m,
    };
    let (ifindex, lock) = preflight(&opts.iface, opts.force, mode != AttachMode::Tc)?;
    // Loopback: every packet leaves through lo's egress and comes back through its ingress,
    // so ingress alone sees each one exactly once (with egress, everything twice).
    let egress = opts.egress && !is_loopback(&opts.iface);
    if opts.egress && !egress {
        tracing::info!(iface = %opts.iface, "loopback: ingress only (it sees every packet once)");
    }
    let workers = opts.workers.clamp(1, MAX_WORKERS);
    let ring_names: Vec<String> = (0..MAX_WORKERS).map(|i| format!("RECORDS_{i}")).collect();
    let follow = Follow::new(opts.follow_budget, opts.follow_slots);
    let layout = opts
        .kernel_reasons
        .then(|| {
            kernel::Layout::from_kernel()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "kernel reasons off: the kernel's BTF does not say what they need")
                })
                .ok()
        })
        .flatten();
    let mut loader = EbpfLoader::new();
    if let Some(l) = &layout {
        l.set_globals(&mut loader);
    }
    for (i, name) in ring_names.iter().enumerate() {
        // Rings beyond the workers in use stay at one page.
        let size = if (i as u32) < workers {
            opts.ring_bytes
        } else {
            4096
        };
        loader.map_max_entries(name, size);
    }
    loader.override_global("NWORKERS", &workers, true);
    // The kernel counts per CPU: each CPU's share of the threshold (RSS spreads a flood).
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    let sample_above = opts.flood_sample_rate.div_ceil(cpus);
    loader.override_global("SAMPLE_ABOVE", &sample_above, true);
    let mut ebpf = load_object(&mut loader, &follow)?;
    let (prog_id, attach_mode, ingress_link) = if mode == AttachMode::Tc {
        let (id, link) = attach_tc(
            &mut ebpf,
            "synscope_ingress_tc",
            &opts.iface,
            TcAttachType::Ingress,
        )?;
        (id, "tc", IngressLink::Tc(link))
    } else {
        let (id, m, link) = attach_xdp(&mut ebpf, "synscope_ingress", &opts.iface, ifindex, mode)?;
        (id, m, IngressLink::Xdp(link))
    };
    let (egress_id, egress_link) = if egress {
        let (id, link) = attach_tc(
            &mut ebpf,
            "synscope_egress",
            &opts.iface,
            TcAttachType::Egress,
        )?;
        (Some(id), Some(link))
    } else {
        (None, None)
    };
    let watched_from_mono = crate::capture::clock::MonoToWall::monotonic_now_ns();
    let mut rings = Vec::with_capacity(workers as usize);
    for name in &ring_names[..workers as usize] {
        let ring = RingBuf::try_from(
            ebpf.take_map(name)
                .ok_or(LoadError::Program(ProgramError::NotLoaded))?,
        )
        .map_err(|source| LoadError::Map {
            name: "RECORDS_<worker>",
            source,
        })?;
        rings.push(ring);
    }
    let stats = take_stats(&mut ebpf)?;
    let kernel_names = layout.and_then(|l| match kernel::attach(&mut ebpf) {
        Ok(()) => Some(l.names),
        Err(e) => {
            tracing::warn!(error = %e, "kernel reasons off: cannot attach to the TCP tracepoints");
            None
        }
    });
    Ok(Inline {
        rings,
        stats,
        links: std::sync::Mutex::new(Some((ingress_link, egress_link))),
        _lock: lock,
        _ebpf: ebpf,
        ifindex,
        iface: opts.iface.clone(),
        attach_mode,
        egress,
        prog_ids: (prog_id, egress_id),
        kernel_names,
        sockdiag: crate::capture::sockdiag::SockDiag::open()
            .inspect_err(|e| tracing::warn!(error = %e, "cannot open sock_diag: probe leaks will not be confirmed against the socket table"))
            .ok(),
        watched_from_mono,
    })
}

/// Default of `--flood-sample-rate`: far above a busy LB's new connections per second to
/// one endpoint, below what fills the rings of a few workers.
pub const DEFAULT_FLOOD_SAMPLE_RATE: u32 = 100_000;

/// Tap-mode options.
#[derive(Debug, Clone)]
pub struct TapOptions {
    pub iface: String,
    pub force: bool,
    pub attach: AttachMode,
    pub follow_budget: u32,
    pub follow_slots: u32,
    /// Pass frames that are not selected to the kernel (else drop them).
    pub pass_rest: bool,
    /// Attach even though the interface has IP addresses (looks like a live host interface).
    pub allow_addressed: bool,
}

/// A loaded and attached tap selector; the AF_XDP sockets go into `xsks`. Dropping it
/// detaches everything.
pub struct Tap {
    pub xsks: aya::maps::XskMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// Taken (dropped) by [`Tap::detach`] or with the handle.
    xdp_link: std::sync::Mutex<Option<FdLink>>,
    _lock: InstanceLock,
    _ebpf: Ebpf,
    pub ifindex: u32,
    /// The interface's name.
    pub iface: String,
    pub attach_mode: &'static str,
    pub prog_id: u32,
}

impl Tap {
    /// Detaches the XDP program before the sockets close: no frame then meets a closed socket
    /// (`tap_no_socket`), and the workers drain what was redirected.
    pub fn detach(&self) {
        drop(
            self.xdp_link
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    /// Sums the per-CPU counters, indexed by `synscope_common::stats`.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], LoadError> {
        read_stats(&self.stats)
    }
}

/// The IP addresses configured on `iface` (as `ip -j addr` reports them).
fn addresses(iface: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .output()
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.get(0)
        .and_then(|l| l.get("addr_info"))
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter(|x| x.get("scope").and_then(|s| s.as_str()) == Some("global"))
                .filter_map(|x| x.get("local").and_then(|l| l.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Loads the tap selector and attaches it to `opts.iface`. Refuses an interface with global
/// addresses unless `allow_addressed`: on a live host, redirecting its control packets to
/// AF_XDP would take them away from its own TCP stack.
pub fn attach_tap(opts: &TapOptions) -> Result<Tap, LoadError> {
    if opts.attach == AttachMode::Tc {
        return Err(LoadError::TapNeedsXdp);
    }
    let (ifindex, lock) = preflight(&opts.iface, opts.force, true)?;
    let addrs = addresses(&opts.iface);
    if !addrs.is_empty() && !opts.allow_addressed {
        return Err(LoadError::LiveInterface {
            iface: opts.iface.clone(),
            addrs: addrs.join(", "),
        });
    }
    let pass_rest = u32::from(opts.pass_rest);
    let follow = Follow::new(opts.follow_budget, opts.follow_slots);
    let mut loader = EbpfLoader::new();
    loader.override_global("TAP_PASS_REST", &pass_rest, true);
    let mut ebpf = load_object(&mut loader, &follow)?;
    let (prog_id, attach_mode, xdp_link) =
        attach_xdp(&mut ebpf, "synscope_tap", &opts.iface, ifindex, opts.attach)?;
    let xsks = aya::maps::XskMap::try_from(
        ebpf.take_map("XSKS")
            .ok_or(LoadError::Program(ProgramError::NotLoaded))?,
    )
    .map_err(|source| LoadError::Map {
        name: "XSKS",
        source,
    })?;
    let stats = take_stats(&mut ebpf)?;
    Ok(Tap {
        xsks,
        stats,
        xdp_link: std::sync::Mutex::new(Some(xdp_link)),
        _lock: lock,
        _ebpf: ebpf,
        ifindex,
        iface: opts.iface.clone(),
        attach_mode,
        prog_id,
    })
}

/// Attaches TC program `name` at `at` through a tcx link (kernel 6.6+). aya falls back to a
/// netlink (clsact) attachment on older kernels; that one would outlive a crashed synscope,
/// so it is refused like the XDP one.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    at: TcAttachType,
) -> Result<(u32, SchedClassifierLink), LoadError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(LoadError::Program(ProgramError::NotLoaded))?
        .try_into()?;
    prog.load()?;
    let prog_id = prog.info()?.id();
    let id = prog
        .attach(iface, at)
        .map_err(|source| LoadError::EgressRefused {
            iface: iface.to_owned(),
            source,
        })?;
    let link = prog.take_link(id)?;
    if <&FdLink>::try_from(&link).is_err() {
        // Dropping the handle of a netlink attachment detaches it.
        drop(link);
        return Err(LoadError::NoTcxLink(iface.to_owned()));
    }
    Ok((prog_id, link))
}

/// A benchmark ceiling (bench/src/capture.rs): a program that only counts, attached at
/// ingress (XDP count-and-drop, or TC count-and-pass).
pub struct Ceiling {
    stats: PerCpuArray<MapData, u64>,
    _link: IngressLink,
    _ebpf: Ebpf,
}

impl Ceiling {
    /// Frames counted so far.
    pub fn packets(&self) -> Result<u64, LoadError> {
        Ok(read_stats(&self.stats)?[stats::PACKETS as usize])
    }
}

/// Attaches the count-and-pass program to `iface`'s TC ingress (a tcx link).
pub fn attach_count_pass(iface: &str) -> Result<Ceiling, LoadError> {
    privileged_ifindex(iface)?;
    let follow = Follow::new(0, 1);
    let mut loader = EbpfLoader::new();
    let mut ebpf = load_object(&mut loader, &follow)?;
    let (_, link) = attach_tc(
        &mut ebpf,
        "synscope_count_pass",
        iface,
        TcAttachType::Ingress,
    )?;
    Ok(Ceiling {
        stats: take_stats(&mut ebpf)?,
        _link: IngressLink::Tc(link),
        _ebpf: ebpf,
    })
}

/// Attaches the count-and-drop program to `iface` (generic XDP on virtual devices). Takes no
/// instance lock: to synscope it is a foreign XDP program (tests use it as one).
pub fn attach_count_drop(iface: &str) -> Result<Ceiling, LoadError> {
    let ifindex = privileged_ifindex(iface)?;
    let follow = Follow::new(0, 1);
    let mut loader = EbpfLoader::new();
    let mut ebpf = load_object(&mut loader, &follow)?;
    let mode = if is_virtual(iface) {
        AttachMode::Generic
    } else {
        AttachMode::Auto
    };
    let (_, _, link) = attach_xdp(&mut ebpf, "synscope_count_drop", iface, ifindex, mode)?;
    Ok(Ceiling {
        stats: take_stats(&mut ebpf)?,
        _link: IngressLink::Xdp(link),
        _ebpf: ebpf,
    })
}
