//! Probe leaks against the host's socket table (inline mode, on the real server): each
//! `probe_connection_leak` is confirmed through sock_diag (`socket_confirmed`, and what the
//! kernel says of the socket), confirmed leaks are re-checked every [`CHECK_EVERY`] until
//! their socket is gone, and with `--reap-leaks AFTER` a leak still open AFTER its detection
//! is closed with `SOCK_DESTROY` — only a socket the leak named (same kernel cookie), still
//! ESTABLISHED and without a byte of payload either way.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    capture::sockdiag::{SockDiag, SocketInfo, TCP_ESTABLISHED},
    detect::{Event, Kind},
    flow::Endpoint,
};

/// How often open leaks are re-checked (and reaped when due).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Leaks watched at most: a re-check costs one netlink round trip each (~20 µs).
pub const MAX_WATCHED: usize = 4096;

/// One confirmed leak.
struct Leak {
    server: SocketAddr,
    client: SocketAddr,
    prober: IpAddr,
    cookie: [u8; 8],
    since: Instant,
}

/// Confirmed leaks of this host.
pub struct LeakWatch {
    diag: SockDiag,
    reap_after: Option<Duration>,
    open: Vec<Leak>,
    last_check: Instant,
    /// Leak events whose socket the table showed / did not show.
    pub confirmed: u64,
    pub unconfirmed: u64,
    /// Confirmed leaks beyond [`MAX_WATCHED`] (confirmed, not re-checked).
    pub unwatched: u64,
    /// Reaped, by (server, prober).
    pub reaped: BTreeMap<(Endpoint, IpAddr), u64>,
    /// A reap failed (logged once).
    reap_failed: bool,
}

impl LeakWatch {
    pub fn new(diag: SockDiag, reap_after: Option<Duration>) -> Self {
        Self {
            diag,
            reap_after,
            open: Vec::new(),
            last_check: Instant::now(),
            confirmed: 0,
            unconfirmed: 0,
            unwatched: 0,
            reaped: BTreeMap::new(),
            reap_failed: false,
        }
    }

    /// For a `probe_connection_leak`: looks its socket up, says what was found in the
    /// evidence (`socket_confirmed`, `socket`), and watches it when confirmed. Returns whether
    /// the set of open leaks changed.
    pub fn confirm(&mut self, e: &mut Event) -> bool {
        let (Kind::ProbeConnectionLeak, Some(client), Some(server)) = (e.kind, e.client, e.server)
        else {
            return false;
        };
        let (server, client) = (server.socket_addr(), client.socket_addr());
        let found = match self.diag.find(server, client) {
            Ok(f) => f,
            Err(err) => {
                tracing::warn!(error = %err, "sock_diag lookup failed");
                None
            }
        };
        let leaked = found
            .as_ref()
            .filter(|s| s.state == TCP_ESTABLISHED && !s.carried_data());
        e.evidence
            .insert("socket_confirmed".into(), Value::Bool(leaked.is_some()));
        if let Some(s) = &found {
            e.evidence.insert("socket".into(), describe(s));
        }
        let Some(s) = leaked else {
            self.unconfirmed += 1;
            return false;
        };
        self.confirmed += 1;
        if self.open.len() >= MAX_WATCHED {
            self.unwatched += 1;
            return false;
        }
        self.open.push(Leak {
            server,
            client,
            prober: client.ip(),
            cookie: s.cookie,
            since: Instant::now(),
        });
        true
    }

    /// Re-checks the open leaks when [`CHECK_EVERY`] has passed (or `now_anyway`), reaping
    /// the ones due. Returns whether the set of open leaks changed.
    pub fn tick(&mut self, now_anyway: bool) -> bool {
        if self.open.is_empty() || !(now_anyway || self.last_check.elapsed() >= CHECK_EVERY) {
            return false;
        }
        self.last_check = Instant::now();
        let before = self.open.len();
        let mut open = std::mem::take(&mut self.open);
        open.retain(|l| self.still_open(l));
        self.open = open;
        self.open.len() != before
    }

    /// Whether leak `l` is still open (after reaping it if due).
    fn still_open(&mut self, l: &Leak) -> bool {
        let s = match self.diag.find(l.server, l.client) {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            // Unknown: keep watching.
            Err(_) => return true,
        };
        if s.cookie != l.cookie || s.state != TCP_ESTABLISHED {
            return false;
        }
        if s.carried_data() {
            tracing::info!(server = %l.server, client = %l.client, "a watched probe leak carried data: an application uses it; no longer a leak");
            return false;
        }
        let Some(after) = self.reap_after else {
            return true;
        };
        if l.since.elapsed() < after {
            return true;
        }
        match self.diag.destroy(l.server, l.client, l.cookie) {
            // Gone meanwhile: closed, not reaped.
            Ok(false) => false,
            Ok(true) => {
                tracing::warn!(server = %l.server, client = %l.client, inode = s.inode, "reaped a leaked probe socket (SOCK_DESTROY)");
                *self
                    .reaped
                    .entry((Endpoint::from(l.server), l.prober))
                    .or_default() += 1;
                false
            }
            Err(err) => {
                if !std::mem::replace(&mut self.reap_failed, true) {
                    tracing::error!(error = %err, "cannot reap leaked probe sockets (SOCK_DESTROY needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY)");
                }
                true
            }
        }
    }

    /// Open leaks by (server, prober).
    pub fn open_by(&self) -> BTreeMap<(Endpoint, IpAddr), u64> {
        let mut m = BTreeMap::new();
        for l in &self.open {
            *m.entry((Endpoint::from(l.server), l.prober)).or_default() += 1;
        }
        m
    }

    /// Leaks open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// What the socket table says of one socket, as evidence.
fn describe(s: &SocketInfo) -> Value {
    json!({
        "state": s.state_name(),
        "inode": s.inode,
        "uid": s.uid,
        "recv_q": s.recv_q,
        "send_q": s.send_q,
        "bytes_received": s.bytes_received,
        "bytes_acked": s.bytes_acked,
    })
}
