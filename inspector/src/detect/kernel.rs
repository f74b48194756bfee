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

/// The names of the running kernel's reasons (from its BTF): numbers change between kernels.
#[derive(Clone, Debug, Default)]
pub struct KernelNames {
    pub rst: BTreeMap<u32, String>,
    pub drop: BTreeMap<u32, String>,
}

impl KernelNames {
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
