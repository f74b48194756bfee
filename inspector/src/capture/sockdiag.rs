//! The host's socket table through `NETLINK_SOCK_DIAG` (inet_diag: what `ss` reads, no
//! shelling out): one exact 4-tuple at a time, to confirm that a probe leak left an
//! ESTABLISHED socket behind, and `SOCK_DESTROY` (`ss -K`) to close one on request.
//!
//! The socket is bound to the network namespace of the thread that opens it: open it where
//! the watched interface lives.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// TCP states, as the kernel numbers them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u8 = 1;

/// What the kernel says of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    pub inode: u32,
    pub uid: u32,
    /// Bytes waiting to be read / to be acknowledged.
    pub recv_q: u32,
    pub send_q: u32,
    /// The kernel's identity of this socket (a reused 4-tuple is another socket).
    pub cookie: [u8; 8],
    /// Payload bytes the socket received, had acknowledged, and sent (`tcp_info`): all 0 for
    /// a connection that never carried data.
    pub bytes_received: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub bytes_sent: Option<u64>,
}

impl SocketInfo {
    /// The state's name, as `ss` prints it.
    pub fn state_name(&self) -> &'static str {
        const NAMES: [&str; 13] = [
            "UNKNOWN",
            "ESTAB",
            "SYN-SENT",
            "SYN-RECV",
            "FIN-WAIT-1",
            "FIN-WAIT-2",
            "TIME-WAIT",
            "UNCONN",
            "CLOSE-WAIT",
            "LAST-ACK",
            "LISTEN",
            "CLOSING",
            "NEW-SYN-RECV",
        ];
        NAMES
            .get(usize::from(self.state))
            .copied()
            .unwrap_or("UNKNOWN")
    }

    /// Whether the connection carried payload in either direction, sent or queued (or it is
    /// unknown).
    pub fn carried_data(&self) -> bool {
        !(matches!(
            (self.bytes_received, self.bytes_acked, self.bytes_sent),
            (Some(0), Some(0), Some(0))
        ) && self.recv_q == 0
            && self.send_q == 0)
    }
}

/// A `NETLINK_SOCK_DIAG` socket.
pub struct SockDiag {
    socket: Socket,
    seq: u32,
}

impl SockDiag {
    /// Opens one in the calling thread's network namespace (no privilege needed to query;
    /// destroying needs CAP_NET_ADMIN).
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        // SAFETY: the fd belongs to `socket`, alive for the whole call.
        let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &timeval(Duration::from_secs(1)),
        )
        .map_err(io::Error::from)?;
        Ok(Self { socket, seq: 0 })
    }

    /// The TCP socket whose local end is `local` and remote end `remote`, in any state.
    pub fn find(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<SocketInfo>> {
        let req = request(local, remote, [0xff; 8]);
        let replies = self.exchange(SockDiagMessage::InetRequest(req), 0)?;
        for m in replies {
            match m {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    // The kernel's exact lookup falls back to a listener on the local end:
                    // that is not the connection asked for.
                    // A dual-stack socket (`[::]` listener) answers for a v4 peer with its
                    // v4-mapped address: compare unmapped.
                    let (want_local, want_remote) = (unmap(local), unmap(remote));
                    let got_remote = unmap(SocketAddr::new(
                        h.socket_id.destination_address,
                        h.socket_id.destination_port,
                    ));
                    if got_remote != want_remote || h.socket_id.source_port != want_local.port() {
                        return Ok(None);
                    }
                    let info = r.nlas.iter().find_map(|n| match n {
                        Nla::TcpInfo(t) => Some(t),
                        _ => None,
                    });
                    return Ok(Some(SocketInfo {
                        state: h.state,
                        inode: h.inode,
                        uid: h.uid,
                        recv_q: h.recv_queue,
                        send_q: h.send_queue,
                        cookie: h.socket_id.cookie,
                        bytes_received: info.map(|t| t.bytes_received),
                        bytes_acked: info.map(|t| t.bytes_acked),
                        bytes_sent: info.map(|t| t.bytes_sent),
                    }));
                }
                NetlinkPayload::Error(e) => {
                    return match e.code.map(|c| -c.get()) {
                        None | Some(ENOENT) => Ok(None),
                        Some(code) => Err(io::Error::from_raw_os_error(code)),
                    };
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Closes the socket `local` ↔ `remote` whose identity is `cookie` (`ss -K`: the kernel
    /// aborts it, the peer gets a RST). Ok(false) when no such socket exists any more.
    pub fn destroy(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        cookie: [u8; 8],
    ) -> io::Result<bool> {
        let req = request(local, remote, cookie);
        let msg = SockDiagDestroy::new(SockDiagMessage::InetRequest(req));
        for m in self.exchange(msg, NLM_F_ACK)? {
            if let NetlinkPayload::Error(e) = m {
                return match e.code.map(|c| -c.get()) {
                    None => Ok(true),
                    Some(ENOENT) => Ok(false),
                    Some(code) => Err(io::Error::from_raw_os_error(code)),
                };
            }
        }
        Ok(true)
    }

    /// Sends `payload` as one request and reads the replies up to its answer.
    fn exchange<P>(&mut self, payload: P, flags: u16) -> io::Result<Vec<NetlinkPayload<P>>>
    where
        P: NetlinkSerializable + netlink_packet_core::NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<P>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                let mine = m.header.sequence_number == self.seq;
                if mine {
                    let last = !matches!(m.payload, NetlinkPayload::InnerMessage(_))
                        || m.header.flags & netlink_packet_core::NLM_F_MULTIPART == 0;
                    out.push(m.payload);
                    if last {
                        return Ok(out);
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

const ENOENT: i32 = 2;

fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    nix::sys::time::TimeVal::new(d.as_secs() as _, d.subsec_micros() as _)
}

/// A v4-mapped address is a v4 socket's.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::from((v4, v6.port()))),
        v4 => v4,
    }
}

/// An inet_diag request for exactly `local` ↔ `remote` over TCP, in any state.
fn request(local: SocketAddr, remote: SocketAddr, cookie: [u8; 8]) -> InetRequest {
    let (local, remote) = (unmap(local), unmap(remote));
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address: local.ip(),
            destination_address: remote.ip(),
            interface_id: 0,
            cookie,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real listener and connection on loopback: found with its state, not found once
    /// closed; destroying it ends it for its owner too.
    #[test]
    fn finds_and_destroys_a_real_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let mut d = SockDiag::open().unwrap();
        let info = d
            .find(s.local_addr().unwrap(), peer)
            .unwrap()
            .expect("found");
        assert_eq!(info.state_name(), "ESTAB");
        assert!(!info.carried_data());
        assert_ne!(info.inode, 0);
        let unknown = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(d.find(s.local_addr().unwrap(), unknown).unwrap(), None);
        // Destroying needs CAP_NET_ADMIN: only as root.
        if nix::unistd::geteuid().is_root() {
            assert!(
                d.destroy(s.local_addr().unwrap(), peer, info.cookie)
                    .unwrap()
            );
            let gone = d.find(s.local_addr().unwrap(), peer).unwrap();
            assert!(
                gone.as_ref().is_none_or(|g| g.state != TCP_ESTABLISHED),
                "{gone:?}"
            );
        }
        drop(c);
    }

    /// A `[::]` listener's socket for an IPv4 peer is an AF_INET6 socket with v4-mapped
    /// addresses; the wire (and so a leak event) names the IPv4 ones. Found all the same.
    #[test]
    fn finds_a_dual_stack_sockets_ipv4_connection_by_its_ipv4_addresses() {
        let l = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let (local, remote) = (
            SocketAddr::from(([127, 0, 0, 1], port)),
            c.local_addr().unwrap(),
        );
        assert!(remote.is_ipv4());
        let info = SockDiag::open().unwrap().find(local, remote).unwrap();
        assert_eq!(info.map(|i| i.state), Some(TCP_ESTABLISHED));
    }
}
