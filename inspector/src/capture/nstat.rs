//! The host's own TCP counters (`nstat`'s source: `/proc/net/netstat` and `/proc/net/snmp`, of
//! the network namespace synscope runs in), for the ones that name handshake trouble: listen
//! queue overflows and drops, PAWS rejections, aborts.

use std::collections::BTreeMap;

/// The counters synscope reports (TcpExt), in this order.
pub const WATCHED: [&str; 11] = [
    "ListenOverflows",
    "ListenDrops",
    "PAWSActive",
    "PAWSEstab",
    "PAWSTimewait",
    "TCPAbortOnData",
    "TCPAbortOnClose",
    "TCPAbortOnMemory",
    "TCPAbortOnTimeout",
    "TCPAbortOnLinger",
    "TCPAbortFailed",
];

/// Counters by `Group:Name` (e.g. `TcpExt:ListenOverflows`) from `nstat`-format text: pairs of
/// lines, a header of names and a line of values, each starting with the group.
pub fn parse(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((g1, names)), Some((g2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            break;
        };
        if g1 != g2 {
            break;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{g1}:{n}"), v);
            }
        }
    }
    out
}

/// The watched TcpExt counters of this network namespace now.
pub fn read() -> std::io::Result<[u64; WATCHED.len()]> {
    // thread-self: the network namespace of the calling thread (a lab or test may run
    // synscope in a namespace of its own on one of its threads).
    let all = parse(&std::fs::read_to_string("/proc/thread-self/net/netstat")?);
    Ok(WATCHED.map(|n| all.get(&format!("TcpExt:{n}")).copied().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_of_lines_by_group() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        let m = parse(text);
        assert_eq!(m["TcpExt:ListenOverflows"], 7);
        assert_eq!(m["TcpExt:ListenDrops"], 9);
        assert_eq!(m["IpExt:InNoRoutes"], 3);
        assert!(parse("garbage").is_empty());
        // This machine's own file parses and has every watched counter.
        let all = parse(&std::fs::read_to_string("/proc/net/netstat").unwrap());
        for n in WATCHED {
            assert!(all.contains_key(&format!("TcpExt:{n}")), "{n}");
        }
    }
}
