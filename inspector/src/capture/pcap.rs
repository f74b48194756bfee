//! Offline input: pcap and pcapng files (Ethernet, raw IP, Linux SLL and SLL2; µs and ns
//! timestamps, pcapng `if_tsresol` honoured).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader, blocks::interface_description::InterfaceDescriptionOption},
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
    #[error("{file}: cannot open: {source}")]
    Open {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a pcap or pcapng file ({detail})")]
    Format { file: PathBuf, detail: String },
    #[error(
        "{file}: unsupported link type {link:?}: synscope reads Ethernet, raw IP, Linux SLL/SLL2"
    )]
    LinkType { file: PathBuf, link: DataLink },
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
    pub data: &'a [u8],
}

fn link_type(file: &Path, dl: DataLink) -> Result<LinkType, PcapError> {
    Ok(match dl {
        DataLink::ETHERNET => LinkType::Ethernet,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LinkType::RawIp,
        DataLink::LINUX_SLL => LinkType::LinuxSll,
        DataLink::LINUX_SLL2 => LinkType::LinuxSll2,
        other => {
            return Err(PcapError::LinkType {
                file: file.to_owned(),
                link: other,
            });
        }
    })
}

/// Nanoseconds per pcapng timestamp tick for an `if_tsresol` value (default: µs).
fn tick_ns(tsresol: Option<u8>) -> f64 {
    match tsresol {
        None => 1000.0,
        Some(r) if r & 0x80 != 0 => 1e9 / 2f64.powi(i32::from(r & 0x7f)),
        Some(r) => 1e9 / 10f64.powi(i32::from(r)),
    }
}

/// Reads every frame of `file` in order and hands it to `f`. Returns the number of frames.
pub fn read_file(file: &Path, f: impl FnMut(Frame<'_>)) -> Result<u64, PcapError> {
    let fh = File::open(file).map_err(|source| PcapError::Open {
        file: file.to_owned(),
        source,
    })?;
    read_from(fh, file, f)
}

/// As [`read_file`], from any reader; `file` only names the source in errors.
pub fn read_from(
    source: impl std::io::Read,
    file: &Path,
    mut f: impl FnMut(Frame<'_>),
) -> Result<u64, PcapError> {
    let mut rd = BufReader::new(source);
    let magic = rd
        .fill_buf()
        .map_err(|source| PcapError::Open {
            file: file.to_owned(),
            source,
        })?
        .get(..4)
        .map(|m| [m[0], m[1], m[2], m[3]]);
    let fmt_err = |detail: String| PcapError::Format {
        file: file.to_owned(),
        detail,
    };
    let mut n = 0u64;
    let corrupt = |n: u64, e: pcap_file::PcapError| PcapError::Corrupt {
        file: file.to_owned(),
        packet: n + 1,
        processed: n,
        detail: e.to_string(),
    };
    if magic == Some([0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(rd).map_err(|e| fmt_err(e.to_string()))?;
        let mut links: Vec<(LinkType, f64)> = Vec::new();
        while let Some(block) = r.next_block() {
            match block.map_err(|e| corrupt(n, e))? {
                Block::InterfaceDescription(idb) => {
                    let res = idb.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                        _ => None,
                    });
                    links.push((link_type(file, idb.linktype)?, tick_ns(res)));
                }
                Block::EnhancedPacket(epb) => {
                    let Some(&(link, tick)) = links.get(epb.interface_id as usize) else {
                        return Err(corrupt(
                            n,
                            pcap_file::PcapError::InvalidField("unknown interface id"),
                        ));
                    };
                    // pcap-file hands the raw tick count over as nanoseconds; scale it.
                    let ts_ns = (epb.timestamp.as_nanos() as f64 * tick) as u64;
                    f(Frame {
                        ts_ns,
                        ifindex: epb.interface_id,
                        link,
                        data: &epb.data,
                    });
                    n += 1;
                }
                Block::SimplePacket(spb) => {
                    let Some(&(link, _)) = links.first() else {
                        continue;
                    };
                    f(Frame {
                        ts_ns: 0,
                        ifindex: 0,
                        link,
                        data: &spb.data,
                    });
                    n += 1;
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(rd).map_err(|e| fmt_err(e.to_string()))?;
        let link = link_type(file, r.header().datalink)?;
        while let Some(pkt) = r.next_packet() {
            let pkt = pkt.map_err(|e| corrupt(n, e))?;
            let ts: Duration = pkt.timestamp;
            f(Frame {
                ts_ns: ts.as_nanos() as u64,
                ifindex: 0,
                link,
                data: &pkt.data,
            });
            n += 1;
        }
    }
    Ok(n)
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
    Ok((parse_ip_tcp_in(ip, false, tunnel)?, l2.vlan_tags, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_resolutions() {
        assert_eq!(tick_ns(None), 1000.0);
        assert_eq!(tick_ns(Some(9)), 1.0);
        assert_eq!(tick_ns(Some(6)), 1000.0);
        assert_eq!(tick_ns(Some(0x80 | 10)), 1e9 / 1024.0);
    }
}
