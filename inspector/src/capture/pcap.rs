//! Offline input: pcap and pcapng files, read by `pcap-parser`'s streaming readers (a circular
//! buffer: no allocation per packet). Link types: see [`LinkType::SUPPORTED`]; their upper 16
//! bits (libpcap's FCS length) are ignored, as libpcap does. µs and ns timestamps, pcapng
//! `if_tsresol` and `if_tsoffset` honoured. Records cut by a snap length (caplen < orig_len)
//! are read; a record longer than its file's or interface's snap length is counted and skipped.
//!
//! A pcapng interface of a link type synscope does not read (Wireshark's dumpcap declares every
//! interface of the machine: USB, Bluetooth, ETW) is no error: the packets that use it are
//! counted ([`SKIP_LINK_TYPE`]) and skipped. A legacy pcap file has one link type for all its
//! packets, so there an unsupported one is still an error.
//!
//! A pcapng interface whose clock leaves what 64 bits of nanoseconds since 1970 hold (1970 to
//! 2554: a writer that stored a negative time, PcapPlusPlus's example has µs near 2^64) keeps
//! its intervals instead of being clamped into one instant: its first such packet is placed at
//! the latest time read before it (or, first in the file, at its own time of day on
//! 1970-01-02), and every later packet of the interface by its distance to that one, the tick
//! counter taken modulo 2^64.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use pcap_parser::{
    Block, LegacyPcapReader, PcapBlockOwned, PcapError as ParseError, PcapNGReader,
    traits::{PcapNGPacketBlock, PcapReaderIterator},
};

use crate::wire::{
    Segment, WireError,
    link::{LinkType, ip_offset},
    parse_ip_tcp_in,
    tunnel::{Tunnel, TunnelKind},
};

/// A file that could not be read to its end; says which packet broke.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{file}: cannot open")]
    Open {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a pcap or pcapng file ({detail})")]
    Format { file: PathBuf, detail: String },
    #[error(
        "{file}: unsupported link type {link}: synscope reads {}",
        LinkType::SUPPORTED
    )]
    LinkType { file: PathBuf, link: u16 },
    #[error(
        "{file}: packet {packet} is truncated or corrupt ({detail}); {processed} packets before it were processed"
    )]
    Corrupt {
        file: PathBuf,
        packet: u64,
        processed: u64,
        detail: String,
    },
}

/// One frame read from a file, before parsing.
pub struct Frame<'a> {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub link: LinkType,
    /// The frame's length on the wire; more than `data` holds when a snap length cut it.
    pub orig_len: u32,
    pub data: &'a [u8],
}

impl Frame<'_> {
    /// Whether the whole frame was captured (no snap length cut it).
    pub fn whole(&self) -> bool {
        self.data.len() as u64 >= u64::from(self.orig_len)
    }
}

/// A capture record, in file order: a frame, or a record that was counted and skipped.
pub enum Record<'a> {
    Frame(Frame<'a>),
    /// The record's stable skip reason ([`SKIP_CAPLEN`], [`SKIP_NO_INTERFACE`]).
    Skipped(&'static str),
}

/// A record holding more bytes than its file's (or pcapng interface's) snap length.
pub const SKIP_CAPLEN: &str = "caplen_over_snaplen";
/// A pcapng simple packet block before any interface description.
pub const SKIP_NO_INTERFACE: &str = "no_interface";
/// A pcapng packet on an interface whose link type synscope does not read.
pub const SKIP_LINK_TYPE: &str = "unsupported_link_type";

/// The reader's buffer: it must hold one whole record, and grows by doubling up to
/// [`MAX_BUFFER`] for a longer one.
const BUFFER: usize = 1 << 20;
const MAX_BUFFER: usize = 64 << 20;
/// Bytes read before choosing a reader (the readers parse the file header from their first
/// read, which must hold it whole).
const HEAD: u64 = 64 << 10;

/// Reads every record of `file` in order and hands it to `f`. Returns the number of records.
pub fn read_file(file: &Path, f: impl FnMut(Record<'_>)) -> Result<u64, PcapError> {
    let fh = File::open(file).map_err(|source| PcapError::Open {
        file: file.to_owned(),
        source,
    })?;
    let len = fh.metadata().ok().map(|m| m.len());
    read_sized(fh, len, file, f)
}

/// A pcapng interface.
struct Iface {
    /// Its framing, or the number of a link type synscope does not read (its packets are
    /// counted and skipped; the first one is logged).
    link: Result<LinkType, u16>,
    snaplen: u32,
    /// Timestamp units per second (`if_tsresol`).
    units: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset: i64,
    /// Set when the interface's clock left the range of a `u64` of ns since 1970: the ticks of
    /// its first packet outside, and the time that packet was given. Every later packet of the
    /// interface is placed by its distance to it.
    anchor: Option<(u64, u64)>,
    /// A packet on an unsupported link type was logged.
    warned: bool,
}

/// Timestamp units per second of an `if_tsresol` byte: 10^n, or 2^n with the top bit set;
/// `None` beyond 64 bits. (`pcap-parser` 0.17 refuses every binary one: it compares the byte,
/// top bit included, with 63.)
fn ts_units(tsresol: u8) -> Option<u64> {
    let n = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(n)
    } else {
        1u64.checked_shl(n)
    }
}

const NS: i128 = 1_000_000_000;
const DAY_NS: i128 = 86_400 * NS;

impl Iface {
    /// A packet's time in ns since 1970, from its timestamp in `if_tsresol` units; `latest` is
    /// the latest time read before it (for an interface whose clock is out of range).
    fn ts_ns(&mut self, file: &Path, ifindex: u32, ticks: u64, latest: u64) -> u64 {
        let units = i128::from(self.units);
        if let Some((t0, ns0)) = self.anchor {
            // Modulo 2^64: a counter that wraps past 2^64 steps forward.
            let rel = i128::from(ticks.wrapping_sub(t0) as i64) * NS / units;
            return (i128::from(ns0) + rel).clamp(0, i128::from(u64::MAX)) as u64;
        }
        let ns = i128::from(ticks) * NS / units + i128::from(self.offset) * NS;
        if let Ok(ns) = u64::try_from(ns) {
            return ns;
        }
        // A writer's bug (a negative time stored unsigned, a wrong resolution): clamping would
        // put every packet at the same instant and fire every timer at once. Keep the
        // interface's intervals, starting where the file's clock is.
        let at = if latest > 0 {
            latest
        } else {
            (ns.rem_euclid(DAY_NS) + DAY_NS) as u64
        };
        tracing::warn!(
            file = %file.display(),
            interface = ifindex,
            ticks,
            units_per_s = self.units,
            "pcapng interface's timestamps lie outside 1970-2554 (a writer's bug): its packets \
             keep their intervals from the first one, placed at {} ns since 1970",
            at
        );
        self.anchor = Some((ticks, at));
        at
    }
}

/// The reading state shared by both formats.
struct State<'p, F> {
    file: &'p Path,
    f: F,
    /// The reader's buffer size at the start, and how far it may grow.
    start: usize,
    limit: usize,
    /// Records handed out (frames and skipped ones).
    n: u64,
    /// Legacy pcap: link type, nanosecond timestamps, snap length.
    legacy: Option<(LinkType, bool, u32)>,
    /// pcapng: the current section's interfaces.
    ifaces: Vec<Iface>,
    /// The latest packet time handed out.
    latest: u64,
}

impl<F: FnMut(Record<'_>)> State<'_, F> {
    fn corrupt(&self, detail: impl Into<String>) -> PcapError {
        PcapError::Corrupt {
            file: self.file.to_owned(),
            packet: self.n + 1,
            processed: self.n,
            detail: detail.into(),
        }
    }

    fn emit(&mut self, r: Record<'_>) {
        if let Record::Frame(f) = &r {
            self.latest = self.latest.max(f.ts_ns);
        }
        (self.f)(r);
        self.n += 1;
    }

    /// The framing of pcapng interface `i`, or `None` after counting the packet as skipped
    /// (an interface of a link type synscope does not read; the first such packet is logged).
    fn iface_link(&mut self, i: usize) -> Option<LinkType> {
        match self.ifaces[i].link {
            Ok(link) => Some(link),
            Err(n) => {
                if !std::mem::replace(&mut self.ifaces[i].warned, true) {
                    tracing::warn!(
                        file = %self.file.display(),
                        interface = i,
                        link_type = n,
                        "a packet uses a pcapng interface of a link type synscope does not read; \
                         such packets are counted as {SKIP_LINK_TYPE} and skipped (synscope reads {})",
                        LinkType::SUPPORTED
                    );
                }
                self.emit(Record::Skipped(SKIP_LINK_TYPE));
                None
            }
        }
    }

    fn block(&mut self, block: PcapBlockOwned<'_>) -> Result<(), PcapError> {
        match block {
            PcapBlockOwned::LegacyHeader(h) => {
                // One link type for every packet of the file: one synscope does not read is an
                // error.
                let link =
                    LinkType::from_linktype(h.network.0).map_err(|link| PcapError::LinkType {
                        file: self.file.to_owned(),
                        link,
                    })?;
                self.legacy = Some((link, h.is_nanosecond_precision(), h.snaplen));
            }
            PcapBlockOwned::Legacy(b) => {
                let Some((link, nanos, snaplen)) = self.legacy else {
                    return Err(self.corrupt("packet before the file header"));
                };
                if snaplen != 0 && b.caplen > snaplen {
                    self.emit(Record::Skipped(SKIP_CAPLEN));
                    return Ok(());
                }
                let frac = u64::from(b.ts_usec) * if nanos { 1 } else { 1000 };
                self.emit(Record::Frame(Frame {
                    ts_ns: u64::from(b.ts_sec) * 1_000_000_000 + frac,
                    ifindex: 0,
                    link,
                    orig_len: b.origlen,
                    data: b.data,
                }));
            }
            PcapBlockOwned::NG(Block::SectionHeader(_)) => self.ifaces.clear(),
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                // Checked when a packet uses it: dumpcap declares every interface of the
                // machine, most never used.
                let link = LinkType::from_linktype(idb.linktype.0);
                let Some(units) = ts_units(idb.if_tsresol) else {
                    return Err(self.corrupt(format!(
                        "interface with an impossible if_tsresol {}",
                        idb.if_tsresol
                    )));
                };
                self.ifaces.push(Iface {
                    link,
                    snaplen: idb.snaplen,
                    units,
                    offset: idb.if_tsoffset,
                    anchor: None,
                    warned: false,
                });
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                let n = epb.if_id as usize;
                if n >= self.ifaces.len() {
                    return Err(self.corrupt(format!("unknown interface id {}", epb.if_id)));
                }
                let Some(link) = self.iface_link(n) else {
                    return Ok(());
                };
                let (latest, file) = (self.latest, self.file);
                let i = &mut self.ifaces[n];
                if i.snaplen != 0 && epb.caplen > i.snaplen {
                    self.emit(Record::Skipped(SKIP_CAPLEN));
                    return Ok(());
                }
                let ticks = u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low);
                let frame = Frame {
                    ts_ns: i.ts_ns(file, epb.if_id, ticks, latest),
                    ifindex: epb.if_id,
                    link,
                    orig_len: epb.origlen,
                    data: epb.packet_data(),
                };
                self.emit(Record::Frame(frame));
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                if self.ifaces.is_empty() {
                    self.emit(Record::Skipped(SKIP_NO_INTERFACE));
                    return Ok(());
                }
                let Some(link) = self.iface_link(0) else {
                    return Ok(());
                };
                let frame = Frame {
                    ts_ns: 0,
                    ifindex: 0,
                    link,
                    orig_len: spb.origlen,
                    data: spb.packet_data(),
                };
                self.emit(Record::Frame(frame));
            }
            PcapBlockOwned::NG(_) => {}
        }
        Ok(())
    }

    /// Drives a reader to the end of its input.
    fn run(&mut self, r: &mut impl PcapReaderIterator) -> Result<(), PcapError> {
        let mut cap = self.start;
        loop {
            match r.next() {
                Ok((offset, block)) => {
                    self.block(block)?;
                    r.consume(offset);
                }
                Err(ParseError::Eof) => return Ok(()),
                Err(ParseError::Incomplete(_)) => {
                    if r.refill().is_err() {
                        return Err(self.corrupt("read error"));
                    }
                }
                Err(ParseError::BufferTooSmall) if cap < self.limit => {
                    cap *= 2;
                    r.grow(cap);
                }
                Err(e) => {
                    let detail = describe(&e);
                    return Err(self.corrupt(detail));
                }
            }
        }
    }
}

fn describe<I>(e: &ParseError<I>) -> String {
    match e {
        ParseError::UnexpectedEof | ParseError::Incomplete(_) | ParseError::Eof => {
            "the file ends inside it".to_owned()
        }
        ParseError::BufferTooSmall => format!("a record longer than {} MiB", MAX_BUFFER >> 20),
        ParseError::ReadError => "read error".to_owned(),
        ParseError::HeaderNotRecognized => "header not recognized".to_owned(),
        ParseError::NomError(_, k) | ParseError::OwnedNomError(_, k) => {
            format!("malformed block: {}", k.description())
        }
    }
}

/// As [`read_file`], from any reader; `file` only names the source in errors.
pub fn read_from(
    source: impl Read,
    file: &Path,
    f: impl FnMut(Record<'_>),
) -> Result<u64, PcapError> {
    read_sized(source, None, file, f)
}

/// As [`read_from`], knowing the input is at most `len` bytes: the reader's buffer then never
/// grows beyond what the input can hold (a record claiming 60 MiB in a 1 KiB input is
/// corrupt, not a reason to allocate 64 MiB).
pub fn read_sized(
    mut source: impl Read,
    len: Option<u64>,
    file: &Path,
    f: impl FnMut(Record<'_>),
) -> Result<u64, PcapError> {
    let fits = len.map_or(MAX_BUFFER, |l| {
        usize::try_from(l)
            .unwrap_or(MAX_BUFFER)
            .saturating_add(1)
            .next_power_of_two()
    });
    let (start, limit) = (
        fits.clamp(64 << 10, BUFFER),
        fits.clamp(64 << 10, MAX_BUFFER),
    );
    let mut head = Vec::new();
    (&mut source)
        .take(HEAD)
        .read_to_end(&mut head)
        .map_err(|source| PcapError::Open {
            file: file.to_owned(),
            source,
        })?;
    let fmt_err = |detail: String| PcapError::Format {
        file: file.to_owned(),
        detail,
    };
    let mut st = State {
        file,
        f,
        start,
        limit,
        n: 0,
        legacy: None,
        ifaces: Vec::new(),
        latest: 0,
    };
    let input = std::io::Cursor::new(head.as_slice()).chain(source);
    if head.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNGReader::new(start, input).map_err(|e| fmt_err(describe(&e)))?;
        st.run(&mut r)?;
    } else {
        let mut r = LegacyPcapReader::new(start, input).map_err(|e| {
            fmt_err(match e {
                ParseError::Incomplete(_) => "shorter than a file header".to_owned(),
                ParseError::HeaderNotRecognized
                | ParseError::NomError(..)
                | ParseError::OwnedNomError(..) => "unknown magic number".to_owned(),
                e => describe(&e),
            })
        })?;
        st.run(&mut r)?;
    }
    Ok(st.n)
}

/// Parses a frame down to its TCP segment; returns the VLAN depth and the packet's bytes from
/// its IP header on (for evidence) too.
/// The innermost segment of a tunnelled frame; the IP bytes are the outer packet's.
pub fn parse_frame<'a>(frame: &Frame<'a>) -> Result<(Segment, u8, &'a [u8]), WireError> {
    let l2 = ip_offset(frame.link, frame.data)?;
    let ip = frame.data.get(l2.ip..).ok_or(WireError::Truncated)?;
    let tunnel = (l2.mpls_labels > 0).then_some(Tunnel {
        kind: TunnelKind::Mpls,
        outer: None,
        depth: 1,
    });
    Ok((
        parse_ip_tcp_in(ip, frame.whole(), tunnel)?,
        l2.vlan_tags,
        ip,
    ))
}

/// Capture files built in memory, for tests and tools: pcap (nanosecond timestamps) and
/// pcapng (one section, one interface), little-endian.
pub mod write {
    /// A record: timestamp (ns), length on the wire, captured bytes.
    pub type Rec<'a> = (u64, u32, &'a [u8]);

    /// A pcap file with link type `link` and snap length `snaplen`.
    pub fn pcap(link: u32, snaplen: u32, recs: &[Rec<'_>]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&snaplen.to_le_bytes());
        f.extend_from_slice(&link.to_le_bytes());
        for (ts, orig, data) in recs {
            f.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
            f.extend_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&orig.to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    fn block(f: &mut Vec<u8>, ty: u32, body: &[u8]) {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(body);
        f.extend_from_slice(&[0; 3][..pad]);
        f.extend_from_slice(&len.to_le_bytes());
    }

    /// A pcapng file: one interface (`link`, `snaplen`, `if_tsresol` = `tsresol`, decimal
    /// exponents only) and enhanced packet blocks.
    pub fn pcapng(link: u16, snaplen: u32, tsresol: u8, recs: &[Rec<'_>]) -> Vec<u8> {
        assert!(
            tsresol & 0x80 == 0 && tsresol <= 9,
            "decimal tsresol up to ns"
        );
        let per_tick = 10u64.pow(9 - u32::from(tsresol));
        let iface = Iface {
            link,
            snaplen,
            tsresol,
            tsoffset: 0,
        };
        let epbs: Vec<Epb<'_>> = recs
            .iter()
            .map(|&(ts, orig, data)| (0, ts / per_tick, orig, data))
            .collect();
        pcapng_ifaces(&[iface], &epbs)
    }

    /// An interface description block's fields.
    #[derive(Clone, Copy, Debug)]
    pub struct Iface {
        pub link: u16,
        pub snaplen: u32,
        /// `if_tsresol`, written as it is.
        pub tsresol: u8,
        /// `if_tsoffset` in seconds; not written when 0.
        pub tsoffset: i64,
    }

    /// An enhanced packet block: interface id, timestamp in the interface's units (as the file
    /// holds it), length on the wire, captured bytes.
    pub type Epb<'a> = (u32, u64, u32, &'a [u8]);

    /// A pcapng file of one section: `ifaces`, then `epbs` as they are.
    pub fn pcapng_ifaces(ifaces: &[Iface], epbs: &[Epb<'_>]) -> Vec<u8> {
        let mut f = Vec::new();
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        block(&mut f, 0x0a0d_0d0a, &shb);
        for i in ifaces {
            let mut idb = i.link.to_le_bytes().to_vec();
            idb.extend_from_slice(&[0, 0]);
            idb.extend_from_slice(&i.snaplen.to_le_bytes());
            idb.extend_from_slice(&[9, 0, 1, 0, i.tsresol, 0, 0, 0]);
            if i.tsoffset != 0 {
                idb.extend_from_slice(&[14, 0, 8, 0]);
                idb.extend_from_slice(&i.tsoffset.to_le_bytes());
            }
            idb.extend_from_slice(&[0, 0, 0, 0]);
            block(&mut f, 1, &idb);
        }
        for &(id, ticks, orig, data) in epbs {
            let mut epb = id.to_le_bytes().to_vec();
            epb.extend_from_slice(&((ticks >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(ticks as u32).to_le_bytes());
            epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            epb.extend_from_slice(&orig.to_le_bytes());
            epb.extend_from_slice(data);
            block(&mut f, 6, &epb);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        TcpFlags,
        emit::{SegmentBuilder, ethernet},
    };

    /// A record as the tests see it: (ts, orig_len, captured length) or the skip reason.
    type Seen = Result<(u64, u32, usize), &'static str>;

    /// Every record of `bytes`, and how reading ended.
    fn records(bytes: &[u8]) -> (Vec<Seen>, Result<u64, String>) {
        let mut v = Vec::new();
        let r = read_from(bytes, Path::new("t.pcap"), |r| {
            v.push(match r {
                Record::Frame(f) => Ok((f.ts_ns, f.orig_len, f.data.len())),
                Record::Skipped(why) => Err(why),
            })
        });
        (v, r.map_err(|e| e.to_string()))
    }

    fn frame(payload: usize) -> Vec<u8> {
        ethernet(
            &SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
                .flags(TcpFlags::ACK)
                .payload(&vec![0; payload]),
            &[],
        )
    }

    #[test]
    fn snapped_records_are_read_and_oversized_ones_skipped() {
        let big = frame(1400);
        let f = write::pcap(
            1,
            96,
            &[
                (1_000_000_001, big.len() as u32, &big[..96]),
                (2_000_000_000, big.len() as u32, &big[..]),
                (3_000_000_000, 60, &big[..60]),
            ],
        );
        let (v, r) = records(&f);
        assert_eq!(
            v,
            [
                Ok((1_000_000_001, 1454, 96)),
                Err(SKIP_CAPLEN),
                Ok((3_000_000_000, 60, 60))
            ]
        );
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn pcapng_resolution_offset_and_snap_length() {
        let big = frame(200);
        let recs: [write::Rec<'_>; 2] = [
            (1_700_000_000_123_456_000, 254, &big[..96]),
            (1_700_000_001_000_000_000, 254, &big[..]),
        ];
        let (v, r) = records(&write::pcapng(1, 96, 6, &recs));
        assert_eq!(
            v,
            [Ok((1_700_000_000_123_456_000, 254, 96)), Err(SKIP_CAPLEN)]
        );
        assert_eq!(r, Ok(2));
        let (v, _) = records(&write::pcapng(1, 0, 9, &recs));
        assert_eq!(
            v,
            [
                Ok((1_700_000_000_123_456_000, 254, 96)),
                Ok((1_700_000_001_000_000_000, 254, 254))
            ]
        );
    }

    #[test]
    fn a_cut_file_yields_the_packets_before_the_cut_then_names_the_broken_one() {
        let a = frame(10);
        let f = write::pcap(1, 65535, &[(1, 64, &a), (2, 64, &a), (3, 64, &a)]);
        let (v, r) = records(&f[..f.len() - 5]);
        assert_eq!(v.len(), 2);
        assert_eq!(
            r,
            Err("t.pcap: packet 3 is truncated or corrupt (the file ends inside it); 2 packets before it were processed".to_owned())
        );
        let ng = write::pcapng(1, 0, 6, &[(1000, 64, &a), (2000, 64, &a)]);
        let (v, r) = records(&ng[..ng.len() - 1]);
        assert_eq!(v.len(), 1);
        assert!(r.unwrap_err().contains("packet 2 is truncated or corrupt"));
    }

    #[test]
    fn unknown_link_types_and_non_captures_are_clear_errors() {
        let (_, r) = records(&write::pcap(147, 65535, &[]));
        let e = r.unwrap_err();
        assert!(
            e.starts_with("t.pcap: unsupported link type 147: synscope reads Ethernet (1)"),
            "{e}"
        );
        assert!(e.contains("NFLOG (239)"), "{e}");
        let (_, r) = records(b"hello, this is not a capture file at all");
        assert_eq!(
            r,
            Err("t.pcap: not a pcap or pcapng file (unknown magic number)".to_owned())
        );
        let (_, r) = records(&[0xd4, 0xc3]);
        assert_eq!(
            r,
            Err("t.pcap: not a pcap or pcapng file (shorter than a file header)".to_owned())
        );
    }

    fn iface(link: u16, tsresol: u8) -> write::Iface {
        write::Iface {
            link,
            snaplen: 0,
            tsresol,
            tsoffset: 0,
        }
    }

    #[test]
    fn an_interface_of_an_unread_link_type_fails_only_the_packets_that_use_it() {
        // dumpcap declares every interface of the machine (here one of type 274, unread);
        // packets use Ethernet and SLL.
        let a = frame(10);
        let ifaces = [iface(1, 6), iface(274, 6), iface(113, 6)];
        let sll = [
            &[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 8, 0][..],
            &a[14..],
        ]
        .concat();
        let f = write::pcapng_ifaces(&ifaces, &[(0, 1, 64, &a), (2, 2, 64, &sll), (0, 3, 64, &a)]);
        let (v, r) = records(&f);
        assert_eq!(
            v,
            [Ok((1000, 64, 64)), Ok((2000, 64, 66)), Ok((3000, 64, 64))]
        );
        assert_eq!(r, Ok(3));
        // A packet on the unread interface is counted and skipped, not the end of the file.
        let f = write::pcapng_ifaces(
            &ifaces,
            &[
                (0, 1, 64, &a),
                (1, 2, 64, &a),
                (1, 3, 64, &a),
                (0, 4, 64, &a),
            ],
        );
        let (v, r) = records(&f);
        assert_eq!(
            v,
            [
                Ok((1000, 64, 64)),
                Err(SKIP_LINK_TYPE),
                Err(SKIP_LINK_TYPE),
                Ok((4000, 64, 64))
            ]
        );
        assert_eq!(r, Ok(4));
    }

    #[test]
    fn fcs_length_bits_are_link_type_1_and_the_fcs_is_no_payload() {
        // 0x3000_0001 (tcpdump's own test captures) and 0x5000_0001 (4-byte FCS present).
        let seg = SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
            .flags(TcpFlags::ACK | TcpFlags::PSH)
            .payload(&[7; 10]);
        let mut eth = ethernet(&seg, &[]);
        eth.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let mut raw6 = crate::wire::emit::ip_tcp(
            &SegmentBuilder::new(
                "2001:db8::1".parse().unwrap(),
                1,
                "2001:db8::2".parse().unwrap(),
                2,
            )
            .flags(TcpFlags::ACK)
            .payload(&[7; 10]),
        );
        raw6.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        for (link, data, want) in [
            (0x3000_0001, &eth, LinkType::Ethernet),
            (0x5000_0001, &eth, LinkType::Ethernet),
            (0x3000_00e5, &raw6, LinkType::RawIp),
        ] {
            let f = write::pcap(link, 65535, &[(1, data.len() as u32, data)]);
            let mut seen = Vec::new();
            let r = read_from(&f[..], Path::new("t.pcap"), |r| {
                let Record::Frame(fr) = r else {
                    panic!("skipped")
                };
                let (seg, _, _) = parse_frame(&fr).expect("parses");
                seen.push((fr.link, seg.payload_len, fr.whole()));
            });
            assert_eq!(r.map_err(|e| e.to_string()), Ok(1), "{link:#x}");
            assert_eq!(seen, [(want, 10, true)], "{link:#x}");
        }
        // The link type named in an error is the masked one.
        let (_, r) = records(&write::pcap(0x3000_00bd, 65535, &[]));
        assert!(r.unwrap_err().contains("unsupported link type 189:"));
    }

    #[test]
    fn timestamps_beyond_2554_keep_their_intervals() {
        let a = frame(0);
        let ts = |f: &[u8]| -> Vec<u64> {
            let (v, r) = records(f);
            assert!(r.is_ok(), "{r:?}");
            v.into_iter().map(|x| x.unwrap().0).collect()
        };
        // PcapPlusPlus's example: µs near 2^64 (a negative time stored unsigned), a SYN and
        // its RST 22 µs apart. Clamped, both were u64::MAX ns.
        let t = 18_446_744_073_204_160_194u64;
        let v = ts(&write::pcapng_ifaces(
            &[iface(1, 6)],
            &[
                (0, t, 54, &a),
                (0, t + 22, 54, &a),
                (0, t + 1_000_000, 54, &a),
            ],
        ));
        // First in the file: its own time of day and fraction, on 1970-01-02.
        let first = (i128::from(t) * 1000).rem_euclid(DAY_NS) + DAY_NS;
        assert_eq!(first, 114_804_160_194_000);
        let first = first as u64;
        assert_eq!(v, [first, first + 22_000, first + 1_000_000_000]);
        // A counter wrapping past 2^64 steps forward.
        let v = ts(&write::pcapng_ifaces(
            &[iface(1, 6)],
            &[(0, u64::MAX - 9, 54, &a), (0, 12, 54, &a)],
        ));
        assert_eq!(v[1] - v[0], 22_000);
        // Behind a sane interface: placed where the file's clock is, the sane one unchanged.
        let sane = 1_422_528_033_092_194_163u64;
        let v = ts(&write::pcapng_ifaces(
            &[iface(1, 9), iface(1, 6)],
            &[
                (0, sane, 54, &a),
                (1, t, 54, &a),
                (1, t + 22, 54, &a),
                (0, sane + 50_000, 54, &a),
            ],
        ));
        assert_eq!(v, [sane, sane, sane + 22_000, sane + 50_000]);
        // A negative if_tsoffset putting the clock before 1970: the same.
        let before = write::Iface {
            tsoffset: -2_000_000_000,
            ..iface(1, 6)
        };
        let v = ts(&write::pcapng_ifaces(
            &[before],
            &[(0, 1_000_000, 54, &a), (0, 1_000_022, 54, &a)],
        ));
        assert_eq!(v[1] - v[0], 22_000);
        assert!(v[0] > 0);
    }

    #[test]
    fn a_binary_if_tsresol_and_if_tsoffset_are_honoured() {
        // 2^-20 s units (pcap-parser 0.17 refused every binary if_tsresol), 1.5 s of them.
        let a = frame(0);
        let bin = write::Iface {
            tsoffset: 1_700_000_000,
            ..iface(1, 0x80 | 20)
        };
        let (v, r) = records(&write::pcapng_ifaces(&[bin], &[(0, 3 << 19, 54, &a)]));
        assert_eq!(r, Ok(1));
        assert_eq!(v, [Ok((1_700_000_001_500_000_000, 54, 54))]);
        assert_eq!(ts_units(6), Some(1_000_000));
        assert_eq!(ts_units(19), Some(10_000_000_000_000_000_000));
        assert_eq!(ts_units(20), None);
        assert_eq!(ts_units(0x80 | 63), Some(1 << 63));
        assert_eq!(ts_units(0x80 | 64), None);
        let (_, r) = records(&write::pcapng_ifaces(&[iface(1, 20)], &[]));
        assert!(r.unwrap_err().contains("impossible if_tsresol 20"));
    }

    #[test]
    fn a_record_longer_than_the_buffer_grows_it() {
        let big = vec![0u8; 3 << 20];
        let f = write::pcap(1, 0, &[(1, big.len() as u32, &big), (2, 4, &[1, 2, 3, 4])]);
        let (v, r) = records(&f);
        assert_eq!(v, [Ok((1, 3 << 20, 3 << 20)), Ok((2, 4, 4))]);
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn parse_frame_decodes_the_inner_segment_and_keeps_the_outer_ip_bytes() {
        use crate::wire::emit::{eth_frame, ip_tcp, ipip, mpls};
        let inner = ip_tcp(
            &SegmentBuilder::v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80).flags(TcpFlags::SYN),
        );
        let outer = ipip(
            "192.0.2.10".parse().unwrap(),
            "192.0.2.20".parse().unwrap(),
            &inner,
        );
        let f = eth_frame(0x0800, &outer);
        let frame = Frame {
            ts_ns: 0,
            ifindex: 0,
            link: LinkType::Ethernet,
            orig_len: f.len() as u32,
            data: &f,
        };
        let (seg, tags, ip) = parse_frame(&frame).unwrap();
        assert_eq!(seg.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(seg.tunnel.unwrap().kind, TunnelKind::IpIp);
        assert_eq!(tags, 0);
        assert_eq!(ip, &outer[..]);
        // MPLS on the link: the tunnel has no outer IP header; evidence starts at the IP one.
        let m = eth_frame(0x8847, &mpls(&[100, 200], &inner));
        let frame = Frame {
            data: &m,
            orig_len: m.len() as u32,
            ..frame
        };
        let (seg, _, ip) = parse_frame(&frame).unwrap();
        assert_eq!(
            seg.tunnel,
            Some(Tunnel {
                kind: TunnelKind::Mpls,
                outer: None,
                depth: 1
            })
        );
        assert_eq!(ip, &inner[..]);
    }

    #[test]
    fn a_whole_frame_is_one_no_snap_length_cut() {
        let a = frame(10);
        let mk = |orig| Frame {
            ts_ns: 0,
            ifindex: 0,
            link: LinkType::Ethernet,
            orig_len: orig,
            data: &a,
        };
        assert!(mk(a.len() as u32).whole());
        assert!(!mk(a.len() as u32 + 1).whole());
    }
}
