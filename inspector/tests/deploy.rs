//! `deploy/`: the files an operator installs, checked with the real programs — the service
//! unit with `systemd-analyze verify` and by running synscope with exactly its capabilities as
//! an unprivileged user, the alert rules with `promtool check rules` / `promtool test rules`,
//! the example config with `synscope check-config`, and every dashboard query against a real
//! Prometheus scraping synscope.

mod support;

use std::{path::Path, process::Command, thread, time::Duration};

use support::*;
use synscope::lab::Lab;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const PCAPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pcaps");

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn alert_rules_are_valid_and_fire_on_the_series_they_are_about() {
    let check = ok(Command::new("promtool")
        .args(["check", "rules"])
        .arg(Path::new(DEPLOY).join("alerts.yml")));
    assert!(check.contains("SUCCESS: 15 rules found"), "{check}");
    let test = ok(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(DEPLOY));
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn the_service_unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("synscope.service")).unwrap();
    let dir = std::env::temp_dir().join(format!("synscope-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The unit names the installed binary; verify it against the one under test.
    let f = dir.join("synscope.service");
    std::fs::write(&f, unit.replace("/usr/bin/synscope", BIN)).unwrap();
    let out = ok(Command::new("systemd-analyze").arg("verify").arg(&f));
    // Unknown keys are only warnings to systemd: none allowed here.
    assert_eq!(out, "", "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_service_unit_is_rated_at_most_2_0_by_systemd_analyze_security() {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("synscope.service")).unwrap();
    let dir = std::env::temp_dir().join(format!("synscope-unit-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("synscope.service");
    std::fs::write(&f, unit.replace("/usr/bin/synscope", BIN)).unwrap();
    let out = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&f));
    let _ = std::fs::remove_dir_all(&dir);
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for synscope.service: ")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(level <= 2.0, "exposure {level}: {out}");
    for needed in [
        "UMask=0077",
        "SystemCallFilter=@system-service bpf",
        "IPAddressDeny=any",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let out = ok(Command::new(BIN)
        .arg("check-config")
        .arg(Path::new(DEPLOY).join("synscope.toml")));
    assert!(out.contains("--iface eth0"), "{out}");
    assert!(out.contains("--metrics 127.0.0.1:9464"), "{out}");
}

/// The capabilities the unit grants (AmbientCapabilities), as setpriv wants them.
fn unit_caps() -> String {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("synscope.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    assert_eq!(line, bounding);
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn synscope_runs_unprivileged_with_only_the_units_capabilities() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let caps = unit_caps();
    assert_eq!(caps, "+bpf,+perfmon,+net_admin");
    let dir = std::env::temp_dir().join(format!("synscope-svc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    nix::unistd::chown(&dir, Some(65534.into()), Some(65534.into())).unwrap();
    let config = Path::new(DEPLOY).join("synscope.toml");
    let (inh, amb) = (
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
    );
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &inh,
        &amb,
    ];
    // The shipped config, with this lab's interface and a writable evidence directory.
    let live = Live::wrapped(
        &lab.server_ns,
        &wrapper,
        &lab.server_if,
        &[
            "--config",
            config.to_str().unwrap(),
            "--evidence",
            dir.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:9464",
        ],
    );
    let refused = synscope::lab::in_netns(&lab.client_ns, || {
        std::net::TcpStream::connect_timeout(&(lab.server_v4, 9400).into(), Duration::from_secs(3))
            .is_err()
    })
    .unwrap();
    assert!(refused);
    // Workers send their counters once a second: scrape until the refusal is in.
    let mut metrics = String::new();
    for _ in 0..30 {
        thread::sleep(Duration::from_millis(200));
        metrics = scrape(Some(&lab.server_ns), "127.0.0.1:9464").expect("metrics");
        if metrics.contains("synscope_kernel_said_total{") {
            break;
        }
    }
    let (events, code, stderr) = live.stop();
    assert_eq!(code, 0, "{stderr}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["syn_rejected"], "{stderr}");
    // The kernel-reason tracepoints attach with the same capabilities (BTF is world-readable).
    assert_eq!(
        events[0]["evidence"]["kernel"][0]["reason"], "NO_SOCKET",
        "{stderr}"
    );
    assert_evidence_files(&events);
    assert!(metrics.contains("synscope_build_info{"), "{metrics}");
    // What the kernel said, per endpoint, and the host's own counters beside it.
    let said = format!(
        "synscope_kernel_said_total{{server=\"{}:9400\",said=\"send_reset\",reason=\"NO_SOCKET\",by=\"server\"}} 1",
        lab.server_v4
    );
    assert!(metrics.contains(&said), "{said} in {metrics}");
    assert!(
        metrics.contains("synscope_host_tcp_total{counter=\"ListenOverflows\"} "),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_dashboard_query_runs_and_the_leak_alert_fires_on_a_real_prometheus() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DEPLOY).join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    assert_eq!(exprs.len(), 19);
    // Two real servers' synscope (the probe-leak capture, its prober configured), one
    // Prometheus scraping both: the fleet view.
    let addrs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _children = Kill(
        addrs
            .iter()
            .map(|addr| {
                Command::new(BIN)
                    .args([
                        "pcap",
                        &format!("{PCAPS}/probe_leak.pcap"),
                        "--probe-source",
                        "192.0.2.1",
                        "--metrics",
                        addr,
                    ])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let rules = Path::new(DEPLOY).join("alerts.yml");
    let targets: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let prom = Prometheus::start_fleet(None, free_port(), &targets, Some(&rules));
    prom.wait_for("synscope_anomalies_total");
    // A few scrapes, so range functions have samples.
    thread::sleep(Duration::from_millis(2500));
    for e in &exprs {
        prom.query(e); // asserts the query is valid
    }
    let leak = prom.query(&exprs[3]);
    assert_eq!(leak.len(), 2, "one per instance: {leak:?}");
    assert!(
        leak.iter().all(|l| l.0["server"] == "192.0.2.2:9007"),
        "{leak:?}"
    );
    // The fleet's recording rules add the prober's leaks up across both real servers.
    let mut fleet = Vec::new();
    for _ in 0..100 {
        fleet = prom.wait_for("prober:synscope_probe_leaks:sum");
        if fleet.first().is_some_and(|f| f.1 == 2.0) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert_eq!(fleet[0].0["prober"], "192.0.2.1");
    assert_eq!(fleet[0].1, 2.0);
    let probes = prom.wait_for("prober:synscope_probes:sum");
    assert_eq!(probes[0].1, 2.0, "{probes:?}");
    // The shipped alert rules, evaluated by this Prometheus on what it scraped: the probe leak
    // fires per real server and per prober, and nothing else.
    let mut firing = Vec::new();
    for _ in 0..50 {
        firing = prom.firing();
        if firing.len() >= 3 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut names: Vec<&str> = firing.iter().map(|f| f.0.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SynscopeProbeConnectionLeak",
            "SynscopeProbeConnectionLeak",
            "SynscopeProberLeaks"
        ],
        "{firing:?}"
    );
    for (name, labels) in &firing {
        assert_eq!(labels["severity"], "critical");
        if name == "SynscopeProberLeaks" {
            assert_eq!(labels["prober"], "192.0.2.1");
        } else {
            assert_eq!(labels["server"], "192.0.2.2:9007");
        }
    }
}

#[test]
fn the_logrotate_snippet_rotates_and_signals_synscope_to_reopen() {
    // The shipped snippet, pointed at a temporary file, run by the real logrotate with a
    // postrotate that records what it would do.
    let dir = std::env::temp_dir().join(format!("synscope-logrotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.ndjson");
    std::fs::write(&events, "{\"kind\":\"syn_rejected\"}\n").unwrap();
    let marker = dir.join("hup");
    let conf = std::fs::read_to_string(Path::new(DEPLOY).join("logrotate.synscope"))
        .unwrap()
        .replace("/var/lib/synscope/events.ndjson", events.to_str().unwrap())
        .replace(
            "systemctl kill --signal=HUP synscope.service >/dev/null 2>&1 || true",
            &format!("touch {}", marker.display()),
        );
    let conf_path = dir.join("synscope.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let out = ok(Command::new("logrotate")
        .args(["--force", "--state"])
        .arg(dir.join("state"))
        .arg(&conf_path));
    assert!(
        !events.exists(),
        "moved away (nocreate: synscope creates it): {out}"
    );
    assert!(dir.join("events.ndjson.1").exists(), "{out}");
    assert!(marker.exists(), "postrotate ran: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The .deb (cargo-deb, from the binary this test run built): installs the binary, unit,
/// config and fleet rules where operators expect them, all of which work from there, and
/// purging it leaves nothing behind.
#[test]
fn the_deb_installs_what_operators_need_and_purges_cleanly() {
    if !require_root() {
        return;
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "synscope"])
        .output()
        .expect("dpkg-query");
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains("installed"),
        "a synscope package is already installed on this machine: not touching it"
    );
    // cargo-deb takes the binary this run built (its profile's directory), without building.
    let profile = if BIN.contains("/release/") {
        "release"
    } else {
        "dev"
    };
    let dir = std::env::temp_dir().join(format!("synscope-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Purge(std::path::PathBuf);
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "synscope"]).output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _purge = Purge(dir.clone());
    ok(Command::new("cargo")
        .args([
            "deb",
            "-p",
            "synscope",
            "--no-build",
            "--no-strip",
            "--profile",
            profile,
        ])
        .arg("--output")
        .arg(&dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let files = ok(Command::new("dpkg").args(["-L", "synscope"]));
    for f in [
        "/usr/bin/synscope",
        "/lib/systemd/system/synscope.service",
        "/etc/synscope/synscope.toml",
        "/etc/logrotate.d/synscope",
        "/usr/share/synscope/prometheus/alerts.yml",
        "/usr/share/synscope/grafana-dashboard.json",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in {files}");
        assert!(Path::new(f).exists(), "{f}");
    }
    let conf = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "synscope"]));
    assert!(conf.contains("/etc/synscope/synscope.toml"), "{conf}");
    // The installed pieces work together.
    assert!(ok(Command::new("/usr/bin/synscope").arg("--version")).contains("synscope"));
    ok(Command::new("/usr/bin/synscope").args(["check-config", "/etc/synscope/synscope.toml"]));
    ok(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/synscope.service"]));
    ok(Command::new("promtool").args([
        "check",
        "rules",
        "/usr/share/synscope/prometheus/alerts.yml",
    ]));
    ok(Command::new("dpkg").args(["--purge", "synscope"]));
    for f in [
        "/usr/bin/synscope",
        "/lib/systemd/system/synscope.service",
        "/etc/synscope/synscope.toml",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
}
