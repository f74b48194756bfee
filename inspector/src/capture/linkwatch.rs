//! Watches rtnetlink link events for the interface synscope is attached to. When it is
//! deleted (or moved to another network namespace, which looks the same from here) the
//! programs went with it and synscope would be blind: the run must say so at once and end
//! non-zero, so that a supervisor (systemd's `Restart=on-failure`) starts it again and it
//! attaches when an interface of that name is back.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};

/// rtnetlink multicast group of link changes.
const RTMGRP_LINK: u32 = 1;
const RTM_DELLINK: u16 = 17;
const NLMSG_HDRLEN: usize = 16;

/// A non-blocking subscription to link events, for one interface.
pub struct LinkWatch {
    fd: OwnedFd,
    ifindex: u32,
    /// The interface was already gone when the subscription started.
    gone_already: bool,
}

impl LinkWatch {
    /// Subscribes to link events (no privilege needed) for `iface`, index `ifindex`. An
    /// interface deleted before the subscription (between attach and here) is caught too: its
    /// name no longer names that index.
    pub fn new(iface: &str, ifindex: u32) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
        let gone_already = nix::net::if_::if_nametoindex(iface).ok() != Some(ifindex);
        Ok(Self {
            fd,
            ifindex,
            gone_already,
        })
    }

    /// Whether the interface went away since the last call (reads every pending message).
    pub fn gone(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut gone = std::mem::take(&mut self.gone_already);
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(_) => return gone,
                Ok(n) => gone |= deleted(&buf[..n], self.ifindex),
            }
        }
    }
}

/// Whether the netlink messages in `buf` include an RTM_DELLINK for `ifindex`.
fn deleted(mut buf: &[u8], ifindex: u32) -> bool {
    let mut found = false;
    while buf.len() >= NLMSG_HDRLEN + 8 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        if ty == RTM_DELLINK {
            // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change.
            let p = &buf[NLMSG_HDRLEN..];
            let index = i32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            found |= u32::try_from(index) == Ok(ifindex);
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, index: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&32u32.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 1, 0]);
        m.extend_from_slice(&index.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m
    }

    #[test]
    fn only_a_dellink_of_our_interface_counts() {
        let mut b = msg(16, 7); // RTM_NEWLINK
        b.extend(msg(RTM_DELLINK, 3));
        assert!(!deleted(&b, 7));
        b.extend(msg(RTM_DELLINK, 7));
        assert!(deleted(&b, 7));
        assert!(!deleted(&b[..20], 7), "a cut message is ignored");
    }
}
