//! Least privilege: `dsrgate run` as the unprivileged user `nobody` with only the
//! capabilities the shipped systemd unit grants forwards and announces; without one of them
//! it fails at startup, naming the capability.
//!
//! The capability set below was found empirically: a build whose startup check was
//! disabled, run as `nobody` with one capability removed at a time, failed each time:
//! without CAP_NET_ADMIN creating the XSKMAP is refused (and the next-hop resolution's
//! `RTM_NEWNEIGH`); without CAP_NET_RAW the AF_XDP UMEM registration; without CAP_BPF map
//! creation; without CAP_PERFMON the verifier rejects the steering program ("pointer
//! arithmetic with it prohibited for !root"); without CAP_IPC_LOCK the 16 MiB UMEM exceeds
//! the default 8 MiB `RLIMIT_MEMLOCK` (ENOBUFS). It matches `caps::DATAPLANE` and
//! `packaging/dsrgate.service` (plus CAP_NET_BIND_SERVICE there, for passive BGP peers).

use std::time::Duration;

use anyhow::Result;
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

/// What a one-arm gateway with an active BGP peer and the API on port 9180 needs.
const CAPS: &[&str] = &["net_admin", "net_raw", "bpf", "perfmon", "ipc_lock"];

/// `setpriv` arguments: become nobody with exactly `caps` (inheritable and ambient, so
/// they survive the exec of `dsrgate` as its effective set).
fn as_nobody(caps: &[&str]) -> Vec<String> {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        "--reuid=nobody".into(),
        "--regid=nogroup".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
}

fn privileged(what: &str) -> bool {
    require_privileges_with(what, &["bird", "birdc", "setpriv"])
}

#[test]
fn runs_as_nobody_with_only_its_capabilities() -> Result<()> {
    if !privileged("daemon_caps::runs_as_nobody_with_only_its_capabilities") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let wrapper = as_nobody(CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (_bird, daemon) = lab.one_gateway(&GatewayConfig::new(1), &wrapper)?;
    let nodes = lab.get_many(10)?;
    assert_eq!(nodes.len(), 10);
    // This daemon's own process: `pgrep` would see the other tests' daemons too (a
    // namespace isolates the network, not process ids).
    let st = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()?))?;
    assert!(
        st.lines().any(|l| l == "Name:\tdsrgate"),
        "not the daemon: {st}"
    );
    let uid = st
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    drop(daemon);
    Ok(())
}

#[test]
fn names_a_missing_capability_at_startup() -> Result<()> {
    if !privileged("daemon_caps::names_a_missing_capability_at_startup") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    for missing in CAPS {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| c != missing).collect();
        let wrapper = as_nobody(&caps);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut daemon = Daemon::start(lab.ns("gw1"), &GatewayConfig::new(1).toml(), &wrapper)?;
        let status = daemon.wait_exit(Duration::from_secs(10))?;
        assert!(!status.success(), "started without {missing}");
        let name = format!("CAP_{}", missing.to_ascii_uppercase());
        let log = daemon.log();
        assert!(
            log.contains("missing capabilities") && log.contains(&name),
            "without {missing}: {log}"
        );
        // Nothing was attached.
        let link = lab.ns("gw1").ip(&["-o", "link", "show", "dev", "eth0"])?;
        assert!(!link.contains(" xdp"), "{link}");
    }
    Ok(())
}
