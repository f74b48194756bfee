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
        err.contains("needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN") && err.contains("run as root"),
        "{err}"
    );
}

/// A config file in a fresh temporary directory.
fn config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("synscope-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("synscope.toml");
    std::fs::write(&f, text).unwrap();
    f
}

#[test]
fn check_config_accepts_a_good_file_and_names_line_and_key_of_a_bad_one() {
    let good = config(
        "good",
        "syn_timeout = 2\n[live]\niface = \"eth0\"\nworkers = 2\n",
    );
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("synscope live --syn-timeout 2 --iface eth0 --workers 2"),
        "{stdout}"
    );
    let bad = config("bad", "syn_timeout = 2\n\n[live]\nworkers = \"many\"\n");
    let (code, err) = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{}:4: key `live.workers`: invalid value 'many'",
            bad.display()
        )),
        "{err}"
    );
    // The same error when the file is used.
    let (code, err) = run(&["live", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(":4: key `live.workers`"), "{err}");
}

#[test]
fn pcap_takes_its_settings_from_the_config_and_the_command_line_wins() {
    let pcap = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pcaps/closed_port.pcap");
    let f = config("pcap", "[pcap]\njson = \"from-config.ndjson\"\n");
    let dir = f.parent().unwrap();
    let status = Command::new(BIN)
        .current_dir(dir)
        .args(["pcap", "--config", f.to_str().unwrap(), pcap])
        .output()
        .unwrap();
    assert!(status.status.success());
    let events = std::fs::read_to_string(dir.join("from-config.ndjson")).unwrap();
    assert_eq!(events.lines().count(), 1, "{events}");
    let status = Command::new(BIN)
        .current_dir(dir)
        .args([
            "pcap",
            "--config",
            f.to_str().unwrap(),
            pcap,
            "--json",
            "flag.ndjson",
        ])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("flag.ndjson")).unwrap(),
        events
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_flow_table_that_cannot_fit_is_refused_before_anything_is_allocated() {
    let pcap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pcaps/clean_connection.pcap"
    );
    let (code, err) = run(&[
        "pcap",
        pcap,
        "--max-flows",
        "16777216",
        "--memory-max",
        "1G",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--max-flows 16777216 x 1 worker(s) needs up to")
            && err.contains("more than --memory-max (1.00 GiB)"),
        "{err}"
    );
    let (code, err) = run(&["pcap", pcap, "--memory-max", "lots"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a size"), "{err}");
    let (code, err) = run(&["pcap", pcap, "--memory-max", "1G"]);
    assert_eq!(code, 0, "the default table fits: {err}");
}

#[test]
fn operator_habits_short_interface_durations_with_units_and_node_exporter_addresses() {
    // -i like tcpdump, a duration with a unit: parsing gets as far as the missing interface.
    let (code, err) = run(&[
        "live",
        "-i",
        "nosuch0",
        "--duration",
        "5m",
        "--interval",
        "500ms",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("interface nosuch0 not found"), "{err}");
    let (code, err) = run(&["live", "-i", "nosuch0", "--duration", "5 parsecs"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown unit") || err.contains("not a duration"),
        "{err}"
    );
    // `:9464` binds every address, as node_exporter's flag does.
    let pcap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pcaps/clean_connection.pcap"
    );
    let (code, err) = run(&["pcap", pcap, "--metrics", "nonsense"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not ADDR:PORT or :PORT"), "{err}");
    // --json and --records together, but not both on stdout.
    let (code, err) = run(&["live", "-i", "lo", "--json", "-", "--records", "-"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would mix in one output"), "{err}");
}

#[test]
fn version_kinds_completions_and_man_page() {
    let (code, out) = run_out(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("synscope {} (", env!("CARGO_PKG_VERSION"))),
        "the commit it was built from: {out}"
    );
    let (code, out) = run_out(&["kinds"]);
    assert_eq!(code, 0);
    for k in ["syn_unanswered", "probe_connection_leak", "syn_flood"] {
        assert!(out.contains(k), "{out}");
    }
    let (code, out) = run_out(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("_synscope()"), "{out}");
    let (code, out) = run_out(&["man"]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH synscope 1"), "{out}");
    let (code, out) = run_out(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("SYNSCOPE_LOG"),
        "{out}"
    );
}

fn run_out(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run synscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_missing_capture_file_is_one_error_before_any_summary() {
    let out = Command::new(BIN)
        .args(["pcap", "/nonexistent.pcap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "no summary of nothing"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "synscope: error: /nonexistent.pcap: cannot open: No such file or directory (os error 2)"
    );
}

#[test]
fn a_port_scan_does_not_bury_the_summary() {
    use synscope::{
        capture::pcap::write,
        wire::{
            TcpFlags,
            emit::{SegmentBuilder, ip_tcp},
        },
    };
    // 60 refused ports, then one service with a half-open connection.
    let mut frames = Vec::new();
    for p in 0..60u16 {
        let syn = SegmentBuilder::v4([192, 0, 2, 1], 40000, [192, 0, 2, 2], 1000 + p)
            .flags(TcpFlags::SYN)
            .seq(7);
        let rst = SegmentBuilder::v4([192, 0, 2, 2], 1000 + p, [192, 0, 2, 1], 40000)
            .flags(TcpFlags(0x14))
            .ack(8);
        frames.push(ip_tcp(&syn));
        frames.push(ip_tcp(&rst));
    }
    let recs: Vec<write::Rec<'_>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                1_800_000_000_000_000_000 + i as u64 * 1_000_000,
                f.len() as u32,
                f.as_slice(),
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!("synscope-scan-{}.pcap", std::process::id()));
    std::fs::write(&path, write::pcap(101, 65535, &recs)).unwrap();
    let out = Command::new(BIN).arg("pcap").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("\nserver ").count() + usize::from(text.starts_with("server ")),
        20,
        "{text}"
    );
    assert!(
        text.contains("... and 40 more server endpoints (40 SYNs;"),
        "{text}"
    );
}

#[test]
fn outputs_that_would_collide_or_be_lost_are_refused_and_a_restart_keeps_old_events() {
    let dir = std::env::temp_dir().join(format!("synscope-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let same = dir.join("same.ndjson");
    let (code, err) = run(&[
        "live",
        "-i",
        "lo",
        "--json",
        same.to_str().unwrap(),
        "--records",
        same.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would mix in one output"), "{err}");
    // A restart (systemd's Restart=) appends: what earlier runs wrote stays.
    let pcap = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pcaps/closed_port.pcap");
    let events = dir.join("events.ndjson");
    for _ in 0..2 {
        let (code, err) = run(&["pcap", pcap, "--json", events.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(std::fs::read_to_string(&events).unwrap().lines().count(), 2);
    // A full stdout is an error (exit 1), never a panic (101).
    let full = Command::new(BIN)
        .arg("kinds")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(full.status.code(), Some(1));
    let full = Command::new(BIN)
        .args(["completions", "zsh"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(full.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_json_logs_even_the_fatal_error_is_a_json_line() {
    let out = Command::new(BIN)
        .args(["pcap", "/nonexistent.pcap", "--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.trim()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent.pcap: cannot open"),
        "{line}"
    );
}
