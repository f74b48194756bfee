//! Attaching the kernel-reason programs (`synscope_send_reset` on `tcp_send_reset`,
//! `synscope_kfree_skb` on `kfree_skb`, both raw tracepoints): the struct offsets they read and
//! the reason names come from the running kernel's BTF. Raw tracepoints are attached by name
//! (no tracefs, which a service without CAP_DAC_READ_SEARCH cannot read) with the CAP_BPF and
//! CAP_PERFMON inline mode already has.

use std::sync::Arc;

use aya::{EbpfLoader, programs::RawTracePoint};

use super::btf::{Btf, BtfError};
use crate::detect::kernel::{DROP_REASONS, KernelNames};

/// Kernel-reason facts written per second at most, all CPUs together (`kernel_facts_limited`
/// counts the rest).
pub const FACTS_PER_SEC: u32 = 50_000;

/// The globals the programs read, from the kernel's BTF, and the reasons' names.
pub struct Layout {
    offsets: Vec<(&'static str, u32)>,
    drop_mask: [u64; 4],
    pub names: Arc<KernelNames>,
}

impl Layout {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_btf(&Btf::from_sys_fs()?)
    }

    fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let mut offsets = Vec::new();
        for (global, st, member) in [
            ("SKB_HEAD", "sk_buff", "head"),
            ("SKB_NETWORK_HEADER", "sk_buff", "network_header"),
            ("SKB_TRANSPORT_HEADER", "sk_buff", "transport_header"),
            ("SKC_DADDR", "sock_common", "skc_daddr"),
            ("SKC_RCV_SADDR", "sock_common", "skc_rcv_saddr"),
            ("SKC_DPORT", "sock_common", "skc_dport"),
            ("INET_SPORT", "inet_sock", "inet_sport"),
            ("SKC_FAMILY", "sock_common", "skc_family"),
            ("SKC_STATE", "sock_common", "skc_state"),
            ("SKC_V6_DADDR", "sock_common", "skc_v6_daddr"),
            ("SKC_V6_RCV_SADDR", "sock_common", "skc_v6_rcv_saddr"),
            ("SKC_NET", "sock_common", "skc_net"),
            ("SKB_DEV", "sk_buff", "dev"),
            ("SKB_SK", "sk_buff", "sk"),
            ("DEV_ND_NET", "net_device", "nd_net"),
        ] {
            offsets.push((global, btf.offset(st, member)?));
        }
        offsets.push((
            "NET_NS_INUM",
            btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?,
        ));
        // The namespace of the calling thread: the loader runs in the interface's.
        let netns = std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
            .map_err(|e| BtfError::Read("/proc/thread-self/ns/net", e))?;
        offsets.push(("NETNS", netns));
        // A flood of packets the host drops or resets would make two facts a packet: each CPU
        // writes its share of FACTS_PER_SEC a second, the rest is counted.
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
        offsets.push(("FACTS_PER_SEC", (FACTS_PER_SEC / cpus).max(1000)));
        let rst = btf.enum_names("sk_rst_reason", "SK_RST_REASON_")?;
        let drop = btf.enum_names("skb_drop_reason", "SKB_DROP_REASON_")?;
        let mut drop_mask = [0u64; 4];
        for (v, name) in &drop {
            if *v < 256 && DROP_REASONS.contains(&name.as_str()) {
                drop_mask[(*v / 64) as usize] |= 1 << (v % 64);
            }
        }
        let to_map = |v: Vec<(u64, String)>| {
            v.into_iter()
                .filter_map(|(k, n)| Some((u32::try_from(k).ok()?, n)))
                .collect()
        };
        Ok(Self {
            offsets,
            drop_mask,
            names: Arc::new(KernelNames::new(to_map(rst), to_map(drop))),
        })
    }

    /// Sets the programs' globals on `loader` (before the object is loaded).
    pub fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (name, value) in &self.offsets {
            loader.override_global(name, value, true);
        }
        loader.override_global("DROP_REASONS", &self.drop_mask, true);
    }
}

/// Loads and attaches both programs of `ebpf`; the links live as long as `ebpf`.
pub fn attach(ebpf: &mut aya::Ebpf) -> Result<(), aya::programs::ProgramError> {
    for (prog, tracepoint) in [
        ("synscope_send_reset", "tcp_send_reset"),
        ("synscope_kfree_skb", "kfree_skb"),
    ] {
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or(aya::programs::ProgramError::NotLoaded)?
            .try_into()?;
        p.load()?;
        p.attach(tracepoint)?;
    }
    Ok(())
}
