//! Evidence pcaps (`--evidence DIR`): for every flagged connection, the packets synscope
//! captured of it, as a pcap file Wireshark opens.
//!
//! Each worker keeps a [`Recorder`]: a fixed ring of the last packets it saw (IP header on,
//! at most [`SNAP`] bytes each), with each packet linking to the previous packet of the same
//! connection, so an event's packets are found by walking one chain, never by scanning. The
//! ring is bounded (`--evidence-buffer-mb` per worker); a verdict that comes after its oldest
//! packets were overwritten (a busy worker, a long timeout) gets what is left, marked partial.
//! The output thread's [`Writer`] writes one file per event and keeps the directory under
//! `--evidence-max-mb`, removing the oldest files first.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    hash::BuildHasher,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::{detect::Event, flow::Endpoint};

/// Bytes kept of each packet, from its IP header on (what inline mode's records carry).
pub const SNAP: usize = synscope_common::SNAP_LEN;
/// Packets written per event at most (the newest of the connection).
pub const MAX_PACKETS: usize = 64;
/// File names start with this, so the writer only ever removes its own files.
const PREFIX: &str = "synscope-";

/// One captured packet of a connection, as the evidence pcap holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvPacket {
    pub ts_ns: u64,
    /// The packet's IP length (header and payload), which may exceed `data`.
    pub orig_len: u32,
    /// The packet from its IP header on, at most [`SNAP`] bytes.
    pub data: Vec<u8>,
}

/// A connection's packets for one event; `partial` when older ones had been overwritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub packets: Vec<EvPacket>,
    pub partial: bool,
}

#[derive(Clone)]
struct Slot {
    /// Global sequence number + 1 of the packet in this slot (0: empty).
    seq: u64,
    key: u64,
    /// `seq` of the previous packet of the same connection (0: none).
    prev: u64,
    ts_ns: u64,
    orig_len: u32,
    len: u16,
    data: [u8; SNAP],
}

/// The connection key of a packet or an event: the same for both directions.
pub fn conn_key(a: &Endpoint, b: &Endpoint) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    foldhash::fast::FixedState::with_seed(0x5c5c_0e71_de9c_e000).hash_one((lo, hi))
}

/// The IP length field of a packet (v4 total length, v6 payload length + 40), or the bytes
/// at hand when they are too short to say.
fn ip_len(ip: &[u8]) -> u32 {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 4 => u32::from(u16::from_be_bytes([ip[2], ip[3]])),
        Some(6) if ip.len() >= 6 => u32::from(u16::from_be_bytes([ip[4], ip[5]])) + 40,
        _ => ip.len() as u32,
    }
}

/// A worker's ring of recent packets, chained per connection.
pub struct Recorder {
    slots: Vec<Slot>,
    cap: usize,
    next: u64,
    last: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl Recorder {
    /// A ring of `bytes` (rounded down to whole packets, at least 16); memory is taken as the
    /// ring fills.
    pub fn new(bytes: usize) -> Self {
        let cap = (bytes / std::mem::size_of::<Slot>()).max(16);
        Self {
            slots: Vec::new(),
            cap,
            next: 1,
            last: HashMap::default(),
        }
    }

    /// Packets the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Keeps one packet (`ip`: from its IP header on) of the connection `key`.
    pub fn push(&mut self, key: u64, ts_ns: u64, ip: &[u8]) {
        let seq = self.next;
        self.next += 1;
        let i = ((seq - 1) % self.cap as u64) as usize;
        let len = ip.len().min(SNAP);
        let prev = self.last.insert(key, seq).unwrap_or(0);
        if i == self.slots.len() {
            self.slots.push(Slot {
                seq: 0,
                key,
                prev: 0,
                ts_ns: 0,
                orig_len: 0,
                len: 0,
                data: [0; SNAP],
            });
        } else {
            // The overwritten packet was its connection's newest: that connection is gone.
            let old = &self.slots[i];
            if old.key != key && self.last.get(&old.key) == Some(&old.seq) {
                self.last.remove(&old.key);
            }
        }
        // Filled in place: this runs for every packet with `--evidence`.
        let slot = &mut self.slots[i];
        slot.seq = seq;
        slot.key = key;
        slot.prev = prev;
        slot.ts_ns = ts_ns;
        slot.orig_len = ip_len(ip);
        slot.len = len as u16;
        slot.data[..len].copy_from_slice(&ip[..len]);
    }

    /// The packets of connection `key` still in the ring, oldest first (the newest
    /// [`MAX_PACKETS`]).
    pub fn collect(&self, key: u64) -> Evidence {
        let mut ev = Evidence::default();
        let mut seq = self.last.get(&key).copied().unwrap_or(0);
        while seq != 0 {
            let s = &self.slots[((seq - 1) % self.cap as u64) as usize];
            if s.seq != seq || s.key != key {
                ev.partial = true;
                break;
            }
            if ev.packets.len() == MAX_PACKETS {
                ev.partial = true;
                break;
            }
            ev.packets.push(EvPacket {
                ts_ns: s.ts_ns,
                orig_len: s.orig_len,
                data: s.data[..usize::from(s.len)].to_vec(),
            });
            seq = s.prev;
        }
        ev.packets.reverse();
        ev
    }

    /// The evidence of a per-connection event (None for aggregate events or unknown ones).
    pub fn for_event(&self, e: &Event) -> Option<Evidence> {
        let (c, s) = (e.client.as_ref()?, e.server.as_ref()?);
        let ev = self.collect(conn_key(c, s));
        (!ev.packets.is_empty()).then_some(ev)
    }
}

/// Writes evidence files into a directory, bounded in bytes.
pub struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    /// Our files, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
    pub written: u64,
    pub removed: u64,
    /// Files that could not be written (nothing of them is left in the directory).
    pub failed: u64,
}

impl Writer {
    /// Opens (creates) `dir`; files a previous run left there count against `max_bytes` and
    /// `max_files`.
    pub fn new(dir: &Path, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut files: Vec<(PathBuf, u64)> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(PREFIX) && (n.ends_with(".pcap") || n.ends_with(".pcap.tmp"))
            })
            .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
            .collect();
        // A previous run killed mid-write left a temporary file: not evidence.
        files.retain(|(p, _)| {
            let tmp = p.extension().is_some_and(|x| x == "tmp");
            if tmp {
                let _ = fs::remove_file(p);
            }
            !tmp
        });
        // Names start with the event time: name order is age order.
        files.sort();
        let total = files.iter().map(|f| f.1).sum();
        let mut w = Self {
            dir: dir.to_owned(),
            max_bytes,
            max_files: max_files.max(1),
            files: files.into(),
            total,
            written: 0,
            removed: 0,
            failed: 0,
        };
        w.trim();
        Ok(w)
    }

    /// Bytes of evidence in the directory.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Writes `ev` as the pcap of event `e`; returns its path.
    pub fn write(&mut self, e: &Event, ev: &Evidence) -> io::Result<PathBuf> {
        let header = PcapHeader {
            datalink: DataLink::RAW,
            snaplen: SNAP as u32,
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..Default::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).map_err(io::Error::other)?;
        for p in &ev.packets {
            w.write_packet(&PcapPacket::new(
                Duration::from_nanos(p.ts_ns),
                p.orig_len.max(p.data.len() as u32),
                &p.data,
            ))
            .map_err(io::Error::other)?;
        }
        let bytes = w.into_writer();
        let path = self.free_name(e);
        // Written under a temporary name and renamed when whole: a full disk leaves no empty
        // or cut file behind, and the directory never lists one.
        let tmp = path.with_extension("pcap.tmp");
        let r = (|| {
            let mut o = fs::OpenOptions::new();
            o.create(true).write(true).truncate(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
            let mut f = o.open(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            fs::rename(&tmp, &path)
        })();
        if let Err(err) = r {
            let _ = fs::remove_file(&tmp);
            self.failed += 1;
            return Err(err);
        }
        self.files.push_back((path.clone(), bytes.len() as u64));
        self.total += bytes.len() as u64;
        self.written += 1;
        self.trim();
        Ok(path)
    }

    /// `synscope-<UTC time, ns>-<kind>-<client>-<server>.pcap`, made unique.
    fn free_name(&self, e: &Event) -> PathBuf {
        // Nanoseconds, so that name order is event order.
        let micros = crate::output::ndjson::rfc3339_micros(i128::from(e.ts_ns));
        let ts = format!(
            "{}{:03}Z",
            micros.trim_end_matches('Z').replace([':', '-'], ""),
            e.ts_ns % 1000
        );
        let ep = |x: &Option<Endpoint>| {
            x.map_or_else(String::new, |x| {
                x.to_string()
                    .chars()
                    .filter_map(|c| match c {
                        ':' => Some('_'),
                        '[' | ']' => None,
                        c => Some(c),
                    })
                    .collect()
            })
        };
        let stem = format!(
            "{PREFIX}{ts}-{}-{}-{}",
            e.kind.as_str(),
            ep(&e.client),
            ep(&e.server)
        );
        let mut path = self.dir.join(format!("{stem}.pcap"));
        let mut n = 1;
        while path.exists() {
            path = self.dir.join(format!("{stem}.{n}.pcap"));
            n += 1;
        }
        path
    }

    /// Removes the oldest files until the directory is within its bounds in bytes and files
    /// (the newest file stays even when it alone is larger).
    fn trim(&mut self) {
        while (self.total > self.max_bytes || self.files.len() > self.max_files)
            && self.files.len() > 1
        {
            let Some((p, n)) = self.files.pop_front() else {
                break;
            };
            match fs::remove_file(&p) {
                Ok(()) => self.removed += 1,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove an old evidence file")
                }
            }
            self.total -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ep(s: &str) -> Endpoint {
        Endpoint::from(s.parse::<SocketAddr>().unwrap())
    }

    fn ip(tag: u8) -> Vec<u8> {
        let mut v = vec![0x45, 0, 0, 40];
        v.resize(40, tag);
        v
    }

    #[test]
    fn a_connection_is_found_in_both_directions_oldest_first() {
        let (a, b, c) = (ep("10.0.0.1:1000"), ep("10.0.0.2:80"), ep("10.0.0.3:1000"));
        let mut r = Recorder::new(1 << 20);
        r.push(conn_key(&a, &b), 1, &ip(1));
        r.push(conn_key(&c, &b), 2, &ip(2));
        r.push(conn_key(&b, &a), 3, &ip(3));
        let ev = r.collect(conn_key(&a, &b));
        assert!(!ev.partial);
        assert_eq!(
            ev.packets.iter().map(|p| p.ts_ns).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(ev.packets[1].data, ip(3));
        assert_eq!(ev.packets[1].orig_len, 40);
    }

    #[test]
    fn overwritten_packets_make_the_evidence_partial_and_forgotten_connections_empty() {
        let (a, b, c) = (ep("10.0.0.1:1000"), ep("10.0.0.2:80"), ep("10.0.0.3:1000"));
        let mut r = Recorder::new(0); // 16 slots
        let (k1, k2) = (conn_key(&a, &b), conn_key(&c, &b));
        r.push(k1, 0, &ip(0));
        for t in 1..16 {
            r.push(k2, t, &ip(1));
        }
        r.push(k1, 16, &ip(2)); // overwrites k1's first packet
        let ev = r.collect(k1);
        assert!(ev.partial);
        assert_eq!(ev.packets.len(), 1);
        for t in 17..40 {
            r.push(k2, t, &ip(1));
        }
        assert_eq!(r.collect(k1), Evidence::default());
        assert!(r.last.len() <= r.capacity());
    }

    #[test]
    fn the_writer_keeps_the_directory_under_its_bound_oldest_first() {
        let dir = std::env::temp_dir().join(format!("synscope-ev-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = Writer::new(&dir, 500, 1000).unwrap();
        let ev = Evidence {
            packets: vec![EvPacket {
                ts_ns: 5,
                orig_len: 40,
                data: ip(1),
            }],
            partial: false,
        };
        let mut paths = Vec::new();
        for i in 0..10u64 {
            let e = Event {
                ts_ns: 1_795_396_923_000_000_000 + i,
                kind: crate::detect::Kind::SynUnanswered,
                client: Some(ep("10.0.0.1:1000")),
                server: Some(ep("[fd00::2]:80")),
                ifindex: 1,
                reverse_seen: false,
                one_way: None,
                evidence: Default::default(),
            };
            paths.push(w.write(&e, &ev).unwrap());
        }
        // 24 + 16 + 40 = 80 bytes a file: six fit in 500.
        assert_eq!(w.bytes(), 6 * 80);
        assert!(!paths[3].exists() && paths[4].exists() && paths[9].exists());
        assert!(
            paths[9]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with("-syn_unanswered-10.0.0.1_1000-fd00__2_80.pcap"),
            "{paths:?}"
        );
        // A new writer counts what is there.
        assert_eq!(Writer::new(&dir, 500, 1000).unwrap().bytes(), 6 * 80);
        let _ = fs::remove_dir_all(&dir);
    }
}
