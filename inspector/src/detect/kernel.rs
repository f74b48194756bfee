//! The kernel's own word on a connection (inline mode, on the host itself): a RST its TCP
//! stack sent, with the reason (`sk_rst_reason`), or a TCP packet it dropped, with the reason
//! (`skb_drop_reason`). The capture layer delivers them in order with the flow's packets; the
//! engine keeps the first few per connection and every event of that connection carries them
//! (`evidence.kernel`), and a `reset` the host sent carries its `kernel_reason`.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Value, json};

use super::{
    conn::{C, Conn},
    engine::Engine,
};
use crate::flow::{Endpoint, FlowKey};

/// What the kernel said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Said {
    /// It sent a RST.
    SendReset,
    /// It dropped a TCP packet.
    Drop,
}

impl Said {
    pub fn as_str(self) -> &'static str {
        match self {
            Said::SendReset => "send_reset",
            Said::Drop => "drop",
        }
    }
}

/// One thing the kernel said about one packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFact {
    /// Capture-clock time (Unix ns).
    pub ts_ns: u64,
    pub said: Said,
    /// The reason as this kernel numbers it ([`KernelNames`] has the names).
    pub reason: u32,
    /// The packet concerned: the RST sent, or the packet dropped.
    pub src: Endpoint,
    pub dst: Endpoint,
    /// The dropped packet's TCP flags (0 for a RST sent).
    pub tcp_flags: u8,
}

/// The RST reasons (`sk_rst_reason` without its prefix) counted per server endpoint; MPTCP's
/// and any this list does not know count as `other`.
pub const RST_REASONS: &[&str] = &[
    "NOT_SPECIFIED",
    "NO_SOCKET",
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_RFC7323_PAWS",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
    "TCP_FLAGS",
    "TCP_OLD_ACK",
    "TCP_ABORT_ON_DATA",
    "TCP_TIMEWAIT_SOCKET",
    "INVALID_SYN",
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
    "TCP_STATE",
    "TCP_KEEPALIVE_TIMEOUT",
    "TCP_DISCONNECT_WITH_DATA",
];

/// The drop reasons (`skb_drop_reason` without its prefix) taken from the kernel — the ones
/// a handshake, a RST or a PAWS check can meet; the kernel program filters out the rest (every
/// dropped packet of every protocol) — and counted per server endpoint.
pub const DROP_REASONS: &[&str] = &[
    "NO_SOCKET",
    "SOCKET_BACKLOG",
    "TCP_FLAGS",
    "TCP_RFC7323_PAWS",
    "TCP_RFC7323_PAWS_ACK",
    "TCP_RFC7323_TW_PAWS",
    "TCP_RFC7323_TSECR",
    "TCP_LISTEN_OVERFLOW",
    "TCP_OLD_SEQUENCE",
    "TCP_INVALID_SEQUENCE",
    "TCP_INVALID_END_SEQUENCE",
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_RESET",
    "TCP_INVALID_SYN",
    "TCP_CLOSE",
    "TCP_OLD_ACK",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
    "TCP_MINTTL",
];

/// Per-endpoint counter slots of what the kernel said: every RST reason, `other` RST, every
/// drop reason, `other` drop ([`slot_name`]).
pub const SLOTS: usize = RST_REASONS.len() + DROP_REASONS.len() + 2;

/// What slot `i` counts: what was said and the reason's name.
pub fn slot_name(i: usize) -> (Said, &'static str) {
    let r = RST_REASONS.len();
    match i {
        _ if i < r => (Said::SendReset, RST_REASONS[i]),
        _ if i == r => (Said::SendReset, "other"),
        _ if i - r - 1 < DROP_REASONS.len() => (Said::Drop, DROP_REASONS[i - r - 1]),
        _ => (Said::Drop, "other"),
    }
}

/// The slot of a reason named `name`.
fn slot_of(said: Said, name: &str) -> usize {
    let r = RST_REASONS.len();
    match said {
        Said::SendReset => RST_REASONS.iter().position(|n| *n == name).unwrap_or(r),
        Said::Drop => DROP_REASONS
            .iter()
            .position(|n| *n == name)
            .map_or(SLOTS - 1, |i| r + 1 + i),
    }
}

/// The names of the running kernel's reasons (from its BTF): numbers change between kernels.
#[derive(Clone, Debug, Default)]
pub struct KernelNames {
    pub rst: BTreeMap<u32, String>,
    pub drop: BTreeMap<u32, String>,
    /// Each known number's counter slot.
    slots: BTreeMap<(Said, u32), u8>,
}

impl KernelNames {
    /// The names by number of the RST and drop reasons.
    pub fn new(rst: BTreeMap<u32, String>, drop: BTreeMap<u32, String>) -> Self {
        let slots = (rst.iter().map(|(v, n)| ((Said::SendReset, *v), n)))
            .chain(drop.iter().map(|(v, n)| ((Said::Drop, *v), n)))
            .map(|(k, n)| (k, slot_of(k.0, n) as u8))
            .collect();
        Self { rst, drop, slots }
    }

    /// The counter slot of `reason` ([`slot_name`]).
    pub fn slot(&self, said: Said, reason: u32) -> usize {
        self.slots
            .get(&(said, reason))
            .map_or_else(|| slot_of(said, ""), |&s| usize::from(s))
    }

    /// The name of `reason` for `said` (its number when unknown).
    pub fn name(&self, said: Said, reason: u32) -> String {
        let m = match said {
            Said::SendReset => &self.rst,
            Said::Drop => &self.drop,
        };
        m.get(&reason)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }
}

/// What a connection keeps of the kernel's word: which host spoke (the client's or the
/// server's role), what, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Note {
    pub by: usize,
    pub said: Said,
    pub reason: u32,
    pub tcp_flags: u8,
}

/// Notes kept per connection at most (the first ones: what set things off).
const MAX_NOTES: usize = 4;

/// The notes of `conn` as evidence (`None` without any).
pub(super) fn evidence(conn: &Conn, names: Option<&Arc<KernelNames>>) -> Option<Value> {
    let notes = conn.rare.as_ref().map(|r| r.kernel.as_slice())?;
    if notes.is_empty() {
        return None;
    }
    let default = KernelNames::default();
    let names = names.map_or(&default, |n| n.as_ref());
    Some(Value::Array(
        notes
            .iter()
            .map(|n| {
                let mut v = json!({
                    "said": n.said.as_str(),
                    "reason": names.name(n.said, n.reason),
                    "by": if n.by == C { "client" } else { "server" },
                });
                if n.said == Said::Drop {
                    v["flags"] = json!(crate::wire::TcpFlags(n.tcp_flags).names());
                }
                v
            })
            .collect(),
    ))
}

/// The reason of the RST `role` sent, if the kernel named it.
pub(super) fn reset_reason(
    conn: &Conn,
    role: usize,
    names: Option<&Arc<KernelNames>>,
) -> Option<String> {
    let notes = conn.rare.as_ref().map(|r| r.kernel.as_slice())?;
    let n = notes
        .iter()
        .rev()
        .find(|n| n.said == Said::SendReset && n.by == role)?;
    Some(names.map_or_else(|| n.reason.to_string(), |m| m.name(n.said, n.reason)))
}

impl Engine {
    /// Takes what the kernel said about a packet: kept with its connection when the flow is in
    /// the table, counted either way.
    pub fn kernel_fact(&mut self, f: &KernelFact) {
        *self.ctx.kernel_said.entry((f.said, f.reason)).or_default() += 1;
        let (key, side) = FlowKey::of(f.src, f.dst);
        let Some(slot) = self.table.find(&key) else {
            self.ctx.counters.kernel_unmatched += 1;
            return;
        };
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        // The host that spoke: the RST's sender, or the dropped packet's receiver.
        let sender = conn.role_of(side);
        let by = match f.said {
            Said::SendReset => sender,
            Said::Drop => 1 - sender,
        };
        let slot = self
            .ctx
            .cfg
            .kernel_names
            .as_ref()
            .map_or_else(|| slot_of(f.said, ""), |n| n.slot(f.said, f.reason));
        let server = key.get(conn.client.peer());
        self.ctx.stats(conn, server).kernel[slot][by] += 1;
        let notes = &mut conn.rare_mut().kernel;
        if notes.len() < MAX_NOTES {
            notes.push(Note {
                by,
                said: f.said,
                reason: f.reason,
                tcp_flags: f.tcp_flags,
            });
        }
        self.ctx.counters.kernel_joined += 1;
    }
}
