//! RST classification (seed 004): refused, passive, active, probe_abort, out_of_window, and
//! the connection phase it hit.

/// Class of a RST; `as_str` is the stable `rst_class` value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum RstClass {
    Refused = 0,
    Passive = 1,
    Active = 2,
    ProbeAbort = 3,
    OutOfWindow = 4,
}

impl RstClass {
    pub const ALL: [RstClass; 5] = [
        Self::Refused,
        Self::Passive,
        Self::Active,
        Self::ProbeAbort,
        Self::OutOfWindow,
    ];
    pub fn as_str(self) -> &'static str {
        [
            "refused",
            "passive",
            "active",
            "probe_abort",
            "out_of_window",
        ][self as usize]
    }
}

/// Where in its life the connection was when the RST came.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Phase {
    Handshake = 0,
    JustEstablished = 1,
    Established = 2,
    Closing = 3,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Self::Handshake,
        Self::JustEstablished,
        Self::Established,
        Self::Closing,
    ];
    pub fn as_str(self) -> &'static str {
        ["handshake", "just_established", "established", "closing"][self as usize]
    }
}

/// The last segment seen from one side (for the passive-RST rule).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LastSeg {
    pub seq: u32,
    pub ack: u32,
    pub has_ack: bool,
    /// Sequence space the segment used: payload plus one for SYN and for FIN.
    pub seq_len: u32,
}

/// What the classifier needs to know about the RST and its connection.
#[derive(Clone, Copy, Debug)]
pub struct RstInput {
    pub from_client: bool,
    pub has_ack: bool,
    pub seq: u32,
    pub ack: u32,
    /// The RST answers the client's SYN (the server never sent a SYN-ACK).
    pub answers_syn: bool,
    /// The sender's next sequence number as the receiver expects it, when known.
    pub expected_seq: Option<u32>,
    /// Whether every segment of the flow is visible (pcap, tap): then a RST whose seq is not
    /// exactly the expected one is out of window (RFC 5961 §3.2). Inline mode sees only
    /// control packets, so only a seq *behind* the expected one is.
    pub full_visibility: bool,
    pub peer_last: Option<LastSeg>,
    /// ns since the completing ACK, if the handshake completed.
    pub since_established: Option<u64>,
    pub closing: bool,
    pub data_seen: bool,
}

/// Windows of the classification (ns).
#[derive(Clone, Copy, Debug)]
pub struct RstWindows {
    pub probe_window: u64,
    pub race_window: u64,
}

/// Classifies a RST. Rules in order: refused (answers a SYN); probe_abort (client RST within
/// `probe_window` of the completing ACK, no data); out_of_window; passive (RST without ACK
/// whose seq is the ack of the peer's last segment, or RST+ACK acking exactly a peer segment
/// that had no ACK); otherwise active with ACK, passive without.
pub fn classify(r: &RstInput, w: &RstWindows) -> (RstClass, Phase) {
    let phase = match r.since_established {
        None => Phase::Handshake,
        Some(_) if r.closing => Phase::Closing,
        Some(d) if d <= w.race_window => Phase::JustEstablished,
        Some(_) => Phase::Established,
    };
    if r.answers_syn && !r.from_client {
        return (RstClass::Refused, Phase::Handshake);
    }
    if r.from_client && !r.data_seen && r.since_established.is_some_and(|d| d <= w.probe_window) {
        return (RstClass::ProbeAbort, phase);
    }
    if let Some(exp) = r.expected_seq {
        let out = if r.full_visibility {
            r.seq != exp
        } else {
            super::seq::seq_lt(r.seq, exp)
        };
        if out {
            return (RstClass::OutOfWindow, phase);
        }
    }
    if let Some(p) = r.peer_last {
        if !r.has_ack && p.has_ack && r.seq == p.ack {
            return (RstClass::Passive, phase);
        }
        if r.has_ack && !p.has_ack && r.ack == p.seq.wrapping_add(p.seq_len) {
            return (RstClass::Passive, phase);
        }
    }
    (
        if r.has_ack {
            RstClass::Active
        } else {
            RstClass::Passive
        },
        phase,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: RstWindows = RstWindows {
        probe_window: 50_000_000,
        race_window: 1_000_000,
    };

    fn base() -> RstInput {
        RstInput {
            from_client: false,
            has_ack: true,
            seq: 1000,
            ack: 2000,
            answers_syn: false,
            expected_seq: Some(1000),
            full_visibility: true,
            peer_last: None,
            since_established: Some(10_000_000_000),
            closing: false,
            data_seen: true,
        }
    }

    #[test]
    fn rst_answering_a_syn_is_refused() {
        let r = RstInput {
            answers_syn: true,
            since_established: None,
            ..base()
        };
        assert_eq!(classify(&r, &W), (RstClass::Refused, Phase::Handshake));
    }

    #[test]
    fn rst_ack_on_established_is_active() {
        assert_eq!(
            classify(&base(), &W),
            (RstClass::Active, Phase::Established)
        );
    }

    #[test]
    fn rst_without_ack_at_the_peers_ack_is_passive() {
        let r = RstInput {
            has_ack: false,
            peer_last: Some(LastSeg {
                seq: 5,
                ack: 1000,
                has_ack: true,
                seq_len: 10,
            }),
            ..base()
        };
        assert_eq!(classify(&r, &W), (RstClass::Passive, Phase::Established));
    }

    #[test]
    fn client_rst_right_after_handshake_without_data_is_a_probe_abort() {
        let r = RstInput {
            from_client: true,
            data_seen: false,
            since_established: Some(2_000_000),
            ..base()
        };
        assert_eq!(classify(&r, &W), (RstClass::ProbeAbort, Phase::Established));
        let late = RstInput {
            since_established: Some(60_000_000),
            ..r
        };
        assert_eq!(
            classify(&late, &W).0,
            RstClass::Active,
            "outside the probe window"
        );
    }

    #[test]
    fn server_passive_rst_within_the_race_window_is_just_established() {
        let r = RstInput {
            has_ack: false,
            since_established: Some(500_000),
            peer_last: Some(LastSeg {
                seq: 5,
                ack: 1000,
                has_ack: true,
                seq_len: 0,
            }),
            ..base()
        };
        assert_eq!(
            classify(&r, &W),
            (RstClass::Passive, Phase::JustEstablished)
        );
    }

    #[test]
    fn wrong_seq_is_out_of_window_with_full_visibility_only_if_behind_without() {
        let ahead = RstInput {
            seq: 1500,
            ..base()
        };
        assert_eq!(classify(&ahead, &W).0, RstClass::OutOfWindow);
        let ahead_inline = RstInput {
            full_visibility: false,
            ..ahead
        };
        assert_eq!(
            classify(&ahead_inline, &W).0,
            RstClass::Active,
            "unseen data may explain it"
        );
        let behind_inline = RstInput {
            seq: 500,
            full_visibility: false,
            ..base()
        };
        assert_eq!(classify(&behind_inline, &W).0, RstClass::OutOfWindow);
    }

    #[test]
    fn rst_after_fin_is_in_the_closing_phase() {
        let r = RstInput {
            closing: true,
            ..base()
        };
        assert_eq!(classify(&r, &W), (RstClass::Active, Phase::Closing));
    }
}
