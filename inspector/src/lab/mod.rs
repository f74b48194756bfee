//! A throw-away network lab: two network namespaces joined by a veth pair (optionally with an
//! 802.1Q sub-interface), for the demo and the privileged tests. Addresses exist only inside
//! the namespaces it creates (documentation prefixes 192.0.2.0/24, 198.51.100.0/24,
//! 2001:db8::/64). Dropping a [`Lab`] deletes both namespaces, which also removes the veth pair.

pub mod probe;
pub mod scenarios;

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Lab setup failures name the command that failed and its stderr.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, veth): run as root")]
    NotRoot,
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("`{cmd}` could not start: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {ns}: {source}")]
    Setns {
        ns: String,
        #[source]
        source: io::Error,
    },
}

const NS_PREFIX: &str = "synscope-";
/// Fixed MAC addresses of the lab's veth ends: the ones `wire::emit::ethernet` writes, so
/// injected frames reach the server's TCP stack (it drops frames not addressed to it).
const CLIENT_MAC: &str = "02:00:00:00:00:01";
const SERVER_MAC: &str = "02:00:00:00:00:02";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `client` and `server`, joined by a veth pair.
#[derive(Debug)]
pub struct Lab {
    pub client_ns: String,
    pub server_ns: String,
    /// The client's end of the veth pair (in `client_ns`).
    pub client_if: String,
    /// The server's end of the veth pair (in `server_ns`).
    pub server_if: String,
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
}

/// Runs a command; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<Output, LabError> {
    let line = format!("{cmd} {}", args.join(" "));
    checked(line, Command::new(cmd).args(args).output())
}

/// A finished command's output, or the error naming `line`: it did not start, or exited
/// non-zero (with its stderr).
fn checked(line: String, out: io::Result<Output>) -> Result<Output, LabError> {
    let out = out.map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<(), LabError> {
    let f = File::open(format!("/var/run/netns/{ns}")).map_err(|source| LabError::Setns {
        ns: ns.to_owned(),
        source,
    })?;
    setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Setns {
        ns: ns.to_owned(),
        source: e.into(),
    })
}

/// Runs `f` on a new thread inside namespace `ns` and waits for it.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Starts `f` on a new thread inside namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T, LabError>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter_netns(&ns)?;
        Ok(f())
    })
}

/// Deletes namespaces left by labs whose process is gone (e.g. after `kill -9`).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

impl Lab {
    /// Creates the namespaces, the veth pair and addresses (IPv4, IPv6), and brings them up.
    pub fn create() -> Result<Lab, LabError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        remove_stale();
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let lab = Lab {
            client_ns: format!("{NS_PREFIX}{pid}-{n}-c"),
            server_ns: format!("{NS_PREFIX}{pid}-{n}-s"),
            client_if: format!("ssc{}", (pid * 16 + n) % 10_000_000),
            server_if: format!("sss{}", (pid * 16 + n) % 10_000_000),
            client_v4: Ipv4Addr::new(192, 0, 2, 1),
            server_v4: Ipv4Addr::new(192, 0, 2, 2),
            client_v6: "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST),
            server_v6: "2001:db8::2".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        };
        // From here on, Drop cleans up whatever was created.
        run("ip", &["netns", "add", &lab.client_ns])?;
        run("ip", &["netns", "add", &lab.server_ns])?;
        lab.add_veth()?;
        Ok(lab)
    }

    /// Creates the veth pair between the namespaces (fixed names, MACs and addresses) and brings
    /// it up; again after it was deleted, as an operator or a network manager would.
    pub fn add_veth(&self) -> Result<(), LabError> {
        run(
            "ip",
            &[
                "link",
                "add",
                &self.client_if,
                "netns",
                &self.client_ns,
                "address",
                CLIENT_MAC,
                "type",
                "veth",
                "peer",
                "name",
                &self.server_if,
                "netns",
                &self.server_ns,
                "address",
                SERVER_MAC,
            ],
        )?;
        for (ns, ifname, v4, v6) in [
            (
                &self.client_ns,
                &self.client_if,
                self.client_v4,
                self.client_v6,
            ),
            (
                &self.server_ns,
                &self.server_if,
                self.server_v4,
                self.server_v6,
            ),
        ] {
            for args in [
                vec!["link", "set", "lo", "up"],
                vec!["addr", "add", &format!("{v4}/24"), "dev", ifname],
                vec!["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"],
                vec!["link", "set", ifname, "up"],
            ] {
                let mut full = vec!["-n", ns.as_str()];
                full.extend(args.iter().copied());
                run("ip", &full)?;
            }
        }
        Ok(())
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output, LabError> {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }
}

/// Makes `close()` of `s` send a RST instead of a FIN (SO_LINGER with a zero timeout).
pub fn set_linger_zero(s: &std::net::TcpStream) -> io::Result<()> {
    nix::sys::socket::setsockopt(
        s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .map_err(io::Error::from)
}

impl Lab {
    /// Sends raw Ethernet frames out of `ifname` in namespace `ns` (an AF_PACKET socket, via
    /// Python's standard library), for frames no kernel socket would produce.
    pub fn inject(&self, ns: &str, ifname: &str, frames: &[Vec<u8>]) -> Result<(), LabError> {
        self.inject_paced(ns, ifname, frames, frames.len().max(1), 0)
    }

    /// As [`Lab::inject`], `batch` frames at a time with `pause_ms` between batches (a rate).
    /// Frames travel as hex lines on the helper's stdin.
    pub fn inject_paced(
        &self,
        ns: &str,
        ifname: &str,
        frames: &[Vec<u8>],
        batch: usize,
        pause_ms: u64,
    ) -> Result<(), LabError> {
        use std::io::Write;
        const SCRIPT: &str = "import socket,sys,time\n\
            s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
            s.bind((sys.argv[1],0))\n\
            b,p=int(sys.argv[2]),float(sys.argv[3])/1000\n\
            for i,h in enumerate(sys.stdin):\n\
            \x20if i and i%b==0 and p: time.sleep(p)\n\
            \x20s.send(bytes.fromhex(h.strip()))\n";
        let line = format!(
            "ip netns exec {ns} python3 (inject {} frames)",
            frames.len()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", SCRIPT, ifname])
            .arg(batch.to_string())
            .arg(pause_ms.to_string())
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: line.clone(),
                source,
            })?;
        let mut hex = String::with_capacity(frames.iter().map(|f| 2 * f.len() + 1).sum());
        for f in frames {
            for b in f {
                hex.push_str(&format!("{b:02x}"));
            }
            hex.push('\n');
        }
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(hex.as_bytes());
        }
        checked(line, child.wait_with_output()).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
