//! Anomaly events: the stable kinds of docs/anomalies.md, their severity and operator hints.

use serde_json::{Map, Value};

use crate::flow::Endpoint;

/// Event kinds; `as_str` gives the stable NDJSON `kind` / metric label.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Kind {
    SynUnanswered,
    SynRetransmitted,
    SynRejected,
    SynackUnacked,
    SynackWrongAck,
    AcceptQueueOverflow,
    ProbeRstBeforeAck,
    ProbeConnectionLeak,
    PawsNatCollision,
    SynTupleReuse,
    FinUnanswered,
    Reset,
    SynFlood,
    ResetStorm,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::SynUnanswered,
        Kind::SynRetransmitted,
        Kind::SynRejected,
        Kind::SynackUnacked,
        Kind::SynackWrongAck,
        Kind::AcceptQueueOverflow,
        Kind::ProbeRstBeforeAck,
        Kind::ProbeConnectionLeak,
        Kind::PawsNatCollision,
        Kind::SynTupleReuse,
        Kind::FinUnanswered,
        Kind::Reset,
        Kind::SynFlood,
        Kind::ResetStorm,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SynUnanswered => "syn_unanswered",
            Kind::SynRetransmitted => "syn_retransmitted",
            Kind::SynRejected => "syn_rejected",
            Kind::SynackUnacked => "synack_unacked",
            Kind::SynackWrongAck => "synack_wrong_ack",
            Kind::AcceptQueueOverflow => "accept_queue_overflow",
            Kind::ProbeRstBeforeAck => "probe_rst_before_ack",
            Kind::ProbeConnectionLeak => "probe_connection_leak",
            Kind::PawsNatCollision => "paws_nat_collision",
            Kind::SynTupleReuse => "syn_tuple_reuse",
            Kind::FinUnanswered => "fin_unanswered",
            Kind::Reset => "reset",
            Kind::SynFlood => "syn_flood",
            Kind::ResetStorm => "reset_storm",
        }
    }

    /// Bit for "already reported on this connection" (`Conn::reported` is a u32: the
    /// assertion below stops a 33rd kind at compile time instead of overflowing the shift).
    pub fn bit(self) -> u32 {
        const _: () = assert!(Kind::ALL.len() <= u32::BITS as usize);
        1 << (self as u32)
    }

    /// How much an operator should care.
    pub fn severity(self) -> &'static str {
        match self {
            Kind::ProbeConnectionLeak | Kind::AcceptQueueOverflow | Kind::SynFlood => "critical",
            Kind::Reset | Kind::SynRetransmitted | Kind::ProbeRstBeforeAck => "info",
            _ => "warning",
        }
    }

    /// What to check, per docs/anomalies.md.
    pub fn hint(self) -> &'static str {
        match self {
            Kind::SynUnanswered => {
                "SYN dropped before the listener. Firewall: trace the port (iptables-nft, Debian 12's default: iptables -t raw -A PREROUTING -p tcp --dport PORT --syn -j TRACE, then xtables-monitor --trace; nftables: a rule with meta nftrace set 1, then nft monitor trace; legacy iptables: the TRACE lines go to dmesg). Else SYN backlog drops (nstat -az TcpExtListenDrops TcpExtListenOverflows), PAWS rejects of a SYN meeting TIME_WAIT (nstat -az TcpExtPAWSTimewait; kernels before 4.12 with tcp_tw_recycle count TcpExtPAWSPassive), or routing (ip route get CLIENT from SERVER)"
            }
            Kind::SynRetransmitted => {
                "each SYN retransmission adds at least 1 s to connect time: something drops SYNs intermittently"
            }
            Kind::SynRejected => {
                "nothing listens on the port, or a firewall REJECT --reject-with tcp-reset"
            }
            Kind::SynackUnacked => {
                "half-open: spoofed SYN / SYN flood, the client dropped the SYN-ACK (e.g. an OUTPUT rule), or asymmetric routing"
            }
            Kind::SynackWrongAck => {
                "stale or foreign SYN-ACK (TIME_WAIT reuse, middlebox); the client will answer with RST"
            }
            Kind::AcceptQueueOverflow => {
                "the listener's accept queue is full: the application does not accept() fast enough. Check nstat TcpExtListenOverflows TcpExtListenDrops and ss -lnt (Recv-Q vs Send-Q), or a rate-limiting firewall rule"
            }
            Kind::ProbeRstBeforeAck => {
                "typical of LVS/keepalived TCP health probes (connect, then RST) reordered on the way"
            }
            Kind::ProbeConnectionLeak => {
                "the server now holds an ESTABLISHED socket nobody will close (fills the accept queue, leaks memory). Kernels 3.18-4.10 send TSval 0 in linger-close RSTs (7faee5c0d514, fixed by 675ee231d960). Check netstat -s 'packets rejected in established connections because of timestamp' (TcpExtPAWSEstab); fix the prober or the reordering"
            }
            Kind::PawsNatCollision => {
                "several hosts behind one NAT address and port: the server still holds TIME_WAIT for the previous connection on this tuple and PAWS rejects the SYN's older timestamp. Kernels >= 4.12 answer with the old connection's bare ACK (server_answer: bare_ack; nstat TcpExtPAWSTimewait) until the client's RST ends TIME_WAIT; servers with tcp_tw_recycle=1 (< 4.12) drop such SYNs from any port (PAWSPassive; set it to 0). Fix: a NAT that keeps timestamps consistent per address, or more source ports"
            }
            Kind::SynTupleReuse => {
                "port reuse collision: client port exhaustion, tcp_tw_reuse, or NAT/DNAT mapping two flows onto one tuple"
            }
            Kind::FinUnanswered => {
                "closed with error: the peer crashed, is stuck, or the path died"
            }
            Kind::Reset => {
                "see rst_class: refused, passive (no socket), active (abort), probe_abort, out_of_window"
            }
            Kind::SynFlood => {
                "new half-open connections above flood_rate: a SYN flood (many distinct sources, mostly unanswered or never completed) or a connection storm from clients; check nstat TcpExtSyncookiesSent TcpExtListenDrops, and net.ipv4.tcp_syncookies. Per-connection handshake verdicts of this endpoint (syn_unanswered, synack_unacked, syn_rejected, accept_queue_overflow) are folded into the episode while it lasts"
            }
            Kind::ResetStorm => {
                "one host sends RSTs above rst_rate: see dominant_rst_class (refused: a scan or clients hammering a closed port; passive: a restarted service or NAT/conntrack mismatch; active: an application aborting connections). Its per-RST reset events are folded into the episode while it lasts"
            }
        }
    }
}

/// One anomaly verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Capture time (ns since the Unix epoch) of the packet or deadline that settled it.
    pub ts_ns: u64,
    pub kind: Kind,
    /// None for aggregate events (many clients).
    pub client: Option<Endpoint>,
    /// None for `reset_storm` (the host is in the evidence).
    pub server: Option<Endpoint>,
    pub ifindex: u32,
    /// Whether a packet from the other host of the pair (the one this verdict says did not
    /// answer, or the receiver of the RST) was captured: across flows and workers.
    pub reverse_seen: bool,
    /// Set when the verdict needs a direction this vantage never captured: the reason. The
    /// event is then `info`, whatever its kind's severity.
    pub one_way: Option<&'static str>,
    pub evidence: Map<String, Value>,
}

impl Event {
    /// `info`, `warning` or `critical`: the kind's, or `info` for a one-way verdict.
    pub fn severity(&self) -> &'static str {
        if self.one_way.is_some() {
            "info"
        } else {
            self.kind.severity()
        }
    }

    /// What to check, for this event: a `reset` says what its class means.
    pub fn hint(&self) -> &'static str {
        if self.kind == Kind::ProbeRstBeforeAck && self.ev("vantage") == "prober" {
            return "this host is the prober: its own stack sent the RST before the handshake's ACK left (seen on its egress), so the reordering is made here, not on the way. Fix the probe client: let connect() complete (the ACK sent) before closing with SO_LINGER 0, or close without linger; a kernel that sends TSval 0 in linger-close RSTs (3.18-4.10) makes the real server keep the socket";
        }
        if self.kind != Kind::Reset {
            return self.kind.hint();
        }
        match self.ev("rst_class").as_str() {
            Some("refused") => {
                "refused: nothing listens on the port, or a firewall REJECT --reject-with tcp-reset"
            }
            Some("passive") => {
                "passive: the sender had no socket for its peer's segment (tcp_v4_send_reset): a restarted service, a conntrack/NAT mismatch, a listener gone, or an ehash lookup race right after the handshake"
            }
            Some("active") => {
                "active: the sender's application aborted the connection (SO_LINGER 0 close, close with unread data, an orphan or memory pressure)"
            }
            Some("probe_abort") => {
                "probe_abort: the client reset right after its handshake without data: a health check that connects and resets"
            }
            Some("out_of_window") => {
                "out_of_window: the receiver did not take this RST (see effect: a challenge ACK or ignored); the connection lives on unless a later RST ends it"
            }
            _ => self.kind.hint(),
        }
    }

    /// The evidence field `name`, or Null.
    pub fn ev(&self, name: &str) -> &Value {
        self.evidence.get(name).unwrap_or(&Value::Null)
    }
}

/// Builds an evidence map from `(name, value)` pairs.
#[macro_export]
macro_rules! evidence {
    ($($k:literal => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_owned(), serde_json::json!($v)); )*
        m
    }};
}

#[cfg(test)]
mod tests {
    use super::Kind;

    /// The kinds of the contract's tables (docs/anomalies.md: per-connection and aggregate),
    /// the first cell of each row.
    fn documented() -> Vec<String> {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/anomalies.md"));
        let mut kinds = Vec::new();
        let mut in_table = false;
        for line in doc.lines() {
            if line.starts_with("| kind |") {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
                continue;
            }
            if in_table
                && let Some(name) = line
                    .strip_prefix("| `")
                    .and_then(|r| r.split_once('`'))
                    .map(|(n, _)| n.to_owned())
            {
                kinds.push(name);
            }
        }
        kinds
    }

    #[test]
    fn the_contract_documents_exactly_the_kinds_the_engine_emits() {
        let mut doc = documented();
        doc.sort();
        let mut code: Vec<String> = Kind::ALL.iter().map(|k| k.as_str().to_owned()).collect();
        code.sort();
        assert_eq!(doc, code, "docs/anomalies.md tables vs Kind::ALL");
    }

    #[test]
    fn every_kind_has_its_own_reported_bit() {
        let mut seen = 0u32;
        for k in Kind::ALL {
            assert_eq!(seen & k.bit(), 0, "{k:?}");
            seen |= k.bit();
        }
    }
}
