//! Decoding the fixed-size records the BPF selectors write (`synscope_common::PacketRecord`).

use std::net::{IpAddr, SocketAddr};

use synscope_common::{
    Direction, KERNEL_DROP, KERNEL_SEND_RESET, KernelRecord, PacketRecord, Reason, SNAP_LEN,
};

use crate::{
    detect::kernel::{KernelFact, Said},
    flow::Endpoint,
    wire::{Segment, WireError, parse_ip_tcp},
};

/// A record that could not be decoded; counted by reason, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes, expected {size}", size = PacketRecord::SIZE)]
    BadSize(usize),
    #[error("record direction {0} unknown")]
    BadDirection(u8),
    #[error("record reason {0} unknown")]
    BadReason(u8),
    #[error("record cap_len {0} beyond the snap length")]
    BadCapLen(u16),
    #[error("kernel-reason record with kind or family {0} unknown")]
    BadKernel(u8),
    #[error("record payload: {0}")]
    Wire(#[from] WireError),
}

impl RecordError {
    /// Stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSize(_) => "record_size",
            Self::BadDirection(_) => "record_direction",
            Self::BadReason(_) => "record_reason",
            Self::BadCapLen(_) => "record_cap_len",
            Self::BadKernel(_) => "record_kernel",
            Self::Wire(w) => w.reason(),
        }
    }
}

/// A captured TCP packet with its capture metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_unix_ns: i128,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub direction: Direction,
    pub reason: Reason,
    pub flow_hash: u32,
    pub wire_len: u16,
    pub vlan_depth: u8,
    /// Packets this record stands for (flood sampling: see `PacketRecord::weight`); ≥ 1.
    pub weight: u32,
    pub segment: Segment,
    /// The packet from its IP header on (at most a snap length), kept only for `--evidence`.
    pub ip: Option<Box<[u8]>>,
}

/// The IP bytes a ring-buffer record carries (empty when the record is malformed).
pub fn record_ip_bytes(bytes: &[u8]) -> &[u8] {
    let at = std::mem::offset_of!(PacketRecord, cap_len);
    let Some(cap) = bytes.get(at..at + 2) else {
        return &[];
    };
    let cap = usize::from(u16::from_ne_bytes([cap[0], cap[1]])).min(SNAP_LEN);
    let start = std::mem::offset_of!(PacketRecord, data);
    bytes.get(start..start + cap).unwrap_or(&[])
}

/// Decodes one ring-buffer record; `to_unix_ns` converts the kernel's monotonic timestamp.
pub fn decode_record(
    bytes: &[u8],
    to_unix_ns: impl Fn(u64) -> i128,
) -> Result<CapturedPacket, RecordError> {
    if bytes.len() != PacketRecord::SIZE {
        return Err(RecordError::BadSize(bytes.len()));
    }
    // The header fields are read where they lie and the packet bytes parsed in place: copying
    // the whole record first cost a 232-byte copy per packet.
    fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        let mut a = [0; N];
        a.copy_from_slice(&bytes[at..at + N]);
        a
    }
    use std::mem::offset_of;
    let byte = |at: usize| bytes[at];
    let direction = Direction::try_from(byte(offset_of!(PacketRecord, direction)))
        .map_err(RecordError::BadDirection)?;
    let reason =
        Reason::try_from(byte(offset_of!(PacketRecord, reason))).map_err(RecordError::BadReason)?;
    let cap_len = u16::from_ne_bytes(field(bytes, offset_of!(PacketRecord, cap_len)));
    let cap = usize::from(cap_len);
    if cap > SNAP_LEN {
        return Err(RecordError::BadCapLen(cap_len));
    }
    let data = offset_of!(PacketRecord, data);
    // Tunnelled packets (recorded from the outer IP header on) decode to the inner segment.
    let segment = parse_ip_tcp(&bytes[data..data + cap])?;
    Ok(CapturedPacket {
        ts_unix_ns: to_unix_ns(u64::from_ne_bytes(field(
            bytes,
            offset_of!(PacketRecord, ts_ns),
        ))),
        ifindex: u32::from_ne_bytes(field(bytes, offset_of!(PacketRecord, ifindex))),
        rx_queue: u32::from_ne_bytes(field(bytes, offset_of!(PacketRecord, rx_queue))),
        direction,
        reason,
        flow_hash: u32::from_ne_bytes(field(bytes, offset_of!(PacketRecord, flow_hash))),
        wire_len: u16::from_ne_bytes(field(bytes, offset_of!(PacketRecord, wire_len))),
        vlan_depth: byte(offset_of!(PacketRecord, vlan_depth)),
        weight: u32::from_ne_bytes(field(bytes, offset_of!(PacketRecord, weight))).max(1),
        segment,
        ip: None,
    })
}

/// Decodes one kernel-reason record ([`KernelRecord`]); `to_unix_ns` converts its timestamp.
pub fn decode_kernel_record(
    bytes: &[u8],
    to_unix_ns: impl Fn(u64) -> i128,
) -> Result<KernelFact, RecordError> {
    if bytes.len() != KernelRecord::SIZE {
        return Err(RecordError::BadSize(bytes.len()));
    }
    // SAFETY: the length equals size_of::<KernelRecord>(), KernelRecord is Pod (every bit
    // pattern valid), and read_unaligned imposes no alignment on the source.
    let rec: KernelRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let said = match rec.kind {
        KERNEL_SEND_RESET => Said::SendReset,
        KERNEL_DROP => Said::Drop,
        other => return Err(RecordError::BadKernel(other)),
    };
    let ep = |a: [u8; 16], port: u16| {
        let ip = match rec.family {
            4 => IpAddr::from([a[0], a[1], a[2], a[3]]),
            _ => IpAddr::from(a),
        };
        Endpoint::from(SocketAddr::new(ip, port))
    };
    if !matches!(rec.family, 4 | 6) {
        return Err(RecordError::BadKernel(rec.family));
    }
    Ok(KernelFact {
        ts_ns: u64::try_from(to_unix_ns(rec.ts_ns)).unwrap_or(0),
        said,
        reason: rec.reason,
        src: ep(rec.saddr, rec.sport),
        dst: ep(rec.daddr, rec.dport),
        tcp_flags: rec.tcp_flags,
    })
}

/// Serializes a record the way the kernel lays it out (for tests and replay tools).
pub fn encode_record(rec: &PacketRecord) -> Vec<u8> {
    let mut out = vec![0u8; PacketRecord::SIZE];
    // SAFETY: `out` has exactly size_of::<PacketRecord>() bytes and write_unaligned imposes no
    // alignment on the destination.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), *rec) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        TcpFlags,
        emit::{SegmentBuilder, ip_tcp},
    };

    fn record_of(ip: &[u8]) -> PacketRecord {
        let mut data = [0u8; SNAP_LEN];
        let n = ip.len().min(SNAP_LEN);
        data[..n].copy_from_slice(&ip[..n]);
        PacketRecord {
            ts_ns: 5_000,
            flow_hash: 7,
            ifindex: 3,
            rx_queue: 0,
            wire_len: (ip.len() + 14) as u16,
            cap_len: n as u16,
            direction: 0,
            reason: 1,
            family: 4,
            vlan_depth: 0,
            weight: 1,
            data,
        }
    }

    fn syn() -> Vec<u8> {
        ip_tcp(
            &SegmentBuilder::v4([192, 0, 2, 1], 40000, [192, 0, 2, 2], 8080)
                .flags(TcpFlags::SYN)
                .seq(42)
                .timestamps(100, 0),
        )
    }

    #[test]
    fn a_kernel_record_decodes_to_its_segment() {
        let bytes = encode_record(&record_of(&syn()));
        let p = decode_record(&bytes, |ns| i128::from(ns) + 1).unwrap();
        assert_eq!(p.ts_unix_ns, 5_001);
        assert_eq!(p.ifindex, 3);
        assert_eq!(p.direction, Direction::Ingress);
        assert_eq!(p.segment.flags, TcpFlags::SYN);
        assert_eq!(p.segment.seq, 42);
        assert_eq!(p.segment.options.timestamps, Some((100, 0)));
    }

    #[test]
    fn a_record_of_a_tunnelled_packet_decodes_to_the_inner_segment() {
        let outer = crate::wire::emit::gre(
            "192.0.2.10".parse().unwrap(),
            "192.0.2.20".parse().unwrap(),
            crate::wire::emit::GreFields {
                key: Some(1),
                ..Default::default()
            },
            0x0800,
            &syn(),
        );
        let p = decode_record(&encode_record(&record_of(&outer)), |n| n.into()).unwrap();
        assert_eq!(p.segment.dst, "192.0.2.2:8080".parse().unwrap());
        assert_eq!(p.segment.seq, 42);
        let t = p.segment.tunnel.unwrap();
        assert_eq!(t.kind.name(), "gre");
        assert_eq!(
            t.outer,
            Some(("192.0.2.10".parse().unwrap(), "192.0.2.20".parse().unwrap()))
        );
    }

    #[test]
    fn short_and_long_records_are_rejected() {
        let bytes = encode_record(&record_of(&syn()));
        assert_eq!(
            decode_record(&bytes[1..], |n| n.into()),
            Err(RecordError::BadSize(PacketRecord::SIZE - 1))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_record(&long, |n| n.into()),
            Err(RecordError::BadSize(PacketRecord::SIZE + 1))
        );
    }

    #[test]
    fn cap_len_cutting_the_tcp_header_is_truncation() {
        let mut rec = record_of(&syn());
        rec.cap_len = 30;
        let err = decode_record(&encode_record(&rec), |n| n.into()).unwrap_err();
        assert_eq!(err, RecordError::Wire(WireError::Truncated));
        assert_eq!(err.reason(), "truncated");
    }

    #[test]
    fn impossible_metadata_is_rejected() {
        let mut rec = record_of(&syn());
        rec.cap_len = SNAP_LEN as u16 + 1;
        assert_eq!(
            decode_record(&encode_record(&rec), |n| n.into()),
            Err(RecordError::BadCapLen(SNAP_LEN as u16 + 1))
        );
        let mut rec = record_of(&syn());
        rec.direction = 9;
        assert_eq!(
            decode_record(&encode_record(&rec), |n| n.into()),
            Err(RecordError::BadDirection(9))
        );
        let mut rec = record_of(&syn());
        rec.reason = 0;
        assert_eq!(
            decode_record(&encode_record(&rec), |n| n.into()),
            Err(RecordError::BadReason(0))
        );
    }

    #[test]
    fn garbage_payload_is_a_counted_error_not_a_panic() {
        let mut rec = record_of(&syn());
        for b in rec.data.iter_mut() {
            *b = 0xff;
        }
        let err = decode_record(&encode_record(&rec), |n| n.into()).unwrap_err();
        assert_eq!(err, RecordError::Wire(WireError::BadVersion(15)));
    }
}
