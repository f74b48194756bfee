//! The command line's error contract: what a user gets for bad flags, a missing interface or
//! missing privileges (exit 2 for usage, 1 for runtime), with a message that says what to do.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_synscope");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run synscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let (code, err) = run(&["frobnicate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn ring_size_not_a_power_of_two_names_the_flag() {
    let (code, err) = run(&["live", "--iface", "lo", "--ring-size", "5000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ring-size"), "{err}");
    assert!(err.contains("power of two"), "{err}");
}

#[test]
fn missing_interface_says_so_with_exit_2() {
    if !nix::unistd::geteuid().is_root() {
        return; // unprivileged, the privilege check fires first (tested below)
    }
    let (code, err) = run(&["live", "--iface", "nosuchif0", "--duration", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("interface nosuchif0 not found"), "{err}");
}

#[test]
fn without_privileges_it_asks_for_root() {
    // Drop to nobody with no capabilities (setpriv from util-linux), when we can.
    if !nix::unistd::geteuid().is_root() {
        let (code, err) = run(&["live", "--iface", "lo", "--duration", "1"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("run as root"), "{err}");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
        ])
        .args(["live", "--iface", "lo", "--duration", "1"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs CAP_BPF and CAP_NET_ADMIN") && err.contains("run as root"),
        "{err}"
    );
}
