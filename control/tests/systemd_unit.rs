//! The shipped systemd unit (packaging/dsrgate.service): it grants exactly the
//! capabilities the daemon checks for at startup, and `systemd-analyze verify` accepts it
//! without a single warning.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use control::caps::{self, Cap};

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/dsrgate.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("reading packaging/dsrgate.service")
}

/// All values of `key` in the `[Service]` section, in order.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    values.push(v.trim().to_owned());
                }
            }
        }
    }
    values
}

fn one(unit: &str, key: &str) -> String {
    let v = service_values(unit, key);
    assert_eq!(v.len(), 1, "{key} set {} times", v.len());
    v[0].clone()
}

#[test]
fn grants_exactly_the_capabilities_the_daemon_requires() {
    let unit = unit();
    let required: BTreeSet<&str> = caps::DATAPLANE
        .iter()
        .chain(&[Cap::NetBindService])
        .map(|c| c.name())
        .collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let granted: BTreeSet<String> = one(&unit, key)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let granted: BTreeSet<&str> = granted.iter().map(String::as_str).collect();
        assert_eq!(granted, required, "{key}");
    }
    assert_eq!(one(&unit, "User"), "dsrgate");
    assert_eq!(one(&unit, "NoNewPrivileges"), "yes");
    assert_eq!(one(&unit, "LimitMEMLOCK"), "infinity");
    assert_eq!(
        one(&unit, "RestrictAddressFamilies"),
        "AF_INET AF_INET6 AF_NETLINK AF_XDP AF_UNIX"
    );
}

#[test]
fn runs_reloads_and_stops_the_daemon() {
    let unit = unit();
    assert_eq!(
        one(&unit, "ExecStart"),
        "/usr/local/bin/dsrgate run --config /etc/dsrgate/dsrgate.toml"
    );
    let reload = service_values(&unit, "ExecReload");
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID")
    );
    assert_eq!(one(&unit, "KillSignal"), "SIGTERM");
    // The stop timeout must outlast the default drain time with room to withdraw and detach.
    let stop: u64 = one(&unit, "TimeoutStopSec").parse().unwrap();
    let drain = control::config::Daemon::default().drain_time.as_secs();
    assert!(
        stop >= 2 * drain + 10,
        "TimeoutStopSec={stop}, drain {drain} s"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !dsrgate_tests::require_privileges_with("systemd unit check", &["systemd-analyze"]) {
        return;
    }
    // verify checks that the executables exist: point them at the binary just built.
    let dir = std::env::temp_dir().join(format!("dsrgate-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dsrgate.service");
    std::fs::write(
        &copy,
        unit().replace("/usr/local/bin/dsrgate", env!("CARGO_BIN_EXE_dsrgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("running systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    // verify exits 0 even for unknown keys or values it ignores: any output is a problem.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
