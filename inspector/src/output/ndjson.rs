//! NDJSON: one JSON object per line. Endpoints are written `ip:port` (`[v6]:port`), times as
//! RFC 3339 UTC with microseconds.

use std::io::{self, Write};

use serde::Serialize;
use synscope_common::Direction;

use crate::{capture::CapturedPacket, wire::TcpFlags};

/// Formats nanoseconds since the Unix epoch as `2026-11-22T01:02:03.456789Z`.
pub fn rfc3339_micros(unix_ns: i128) -> String {
    const FMT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(FMT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000Z".to_owned())
}

/// One captured packet as `synscope live --json` prints it.
#[derive(Debug, Serialize)]
pub struct PacketLine {
    pub ts: String,
    pub ifindex: u32,
    pub direction: &'static str,
    /// Why the kernel selected it: `control` (SYN/FIN/RST) or `follow` (handshake follow-up).
    pub reason: &'static str,
    pub src: String,
    pub dst: String,
    pub flags: String,
    pub seq: u32,
    /// Null when the ACK flag is not set.
    pub ack: Option<u32>,
    pub window: u16,
    pub tsval: Option<u32>,
    pub tsecr: Option<u32>,
    pub payload_len: u32,
    /// 802.1Q/802.1ad tags in front of the IP header.
    pub vlan_depth: u8,
    pub flow_hash: u32,
}

impl From<&CapturedPacket> for PacketLine {
    fn from(p: &CapturedPacket) -> Self {
        let s = &p.segment;
        Self {
            ts: rfc3339_micros(p.ts_unix_ns),
            ifindex: p.ifindex,
            direction: match p.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            },
            reason: match p.reason {
                synscope_common::Reason::Control => "control",
                synscope_common::Reason::Follow => "follow",
            },
            src: s.src.to_string(),
            dst: s.dst.to_string(),
            flags: s.flags.names(),
            seq: s.seq,
            ack: s.flags.contains(TcpFlags::ACK).then_some(s.ack),
            window: s.window,
            tsval: s.options.timestamps.map(|t| t.0),
            tsecr: s.options.timestamps.map(|t| t.1),
            payload_len: s.payload_len,
            vlan_depth: p.vlan_depth,
            flow_hash: p.flow_hash,
        }
    }
}

/// Writes `value` as one line.
pub fn write_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_microseconds_and_z() {
        assert_eq!(
            rfc3339_micros(1_795_396_923_456_789_123),
            "2026-11-23T01:22:03.456789Z"
        );
    }
}

/// One anomaly event in the envelope of docs/anomalies.md.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    pub ts: String,
    pub kind: &'static str,
    pub severity: &'static str,
    /// Null for aggregate events.
    pub client: Option<String>,
    pub server: Option<String>,
    pub ifindex: u32,
    /// The interface's name (live modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    pub reverse_seen: bool,
    /// Present when the verdict needs a direction this vantage never captured (then `info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_way: Option<&'static str>,
    pub evidence: &'a serde_json::Map<String, serde_json::Value>,
    pub hint: &'static str,
    /// With `--evidence`: the pcap holding the connection's captured packets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_file: Option<String>,
    /// Packets in `evidence_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_packets: Option<usize>,
    /// Set when older packets of the connection had already left the evidence ring.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evidence_partial: bool,
}

impl EventLine<'_> {
    /// Names the interface the event's packets were captured on.
    pub fn with_iface(mut self, iface: Option<&str>) -> Self {
        self.iface = iface.map(str::to_owned);
        self
    }

    /// Names the evidence file written for this event, if any.
    pub fn with_evidence(
        mut self,
        file: Option<&std::path::Path>,
        ev: Option<&crate::output::evidence::Evidence>,
    ) -> Self {
        if let (Some(f), Some(ev)) = (file, ev) {
            self.evidence_file = Some(f.display().to_string());
            self.evidence_packets = Some(ev.packets.len());
            self.evidence_partial = ev.partial;
        }
        self
    }
}

impl<'a> From<&'a crate::detect::Event> for EventLine<'a> {
    fn from(e: &'a crate::detect::Event) -> Self {
        Self {
            ts: rfc3339_micros(i128::from(e.ts_ns)),
            kind: e.kind.as_str(),
            severity: e.severity(),
            client: e.client.map(|c| c.to_string()),
            server: e.server.map(|c| c.to_string()),
            ifindex: e.ifindex,
            iface: None,
            reverse_seen: e.reverse_seen,
            one_way: e.one_way,
            evidence: &e.evidence,
            hint: e.hint(),
            evidence_file: None,
            evidence_packets: None,
            evidence_partial: false,
        }
    }
}
