//! `dsrgate run` refuses to start, and says where in which file, when its config cannot
//! work on this host: an interface that does not exist, a worker core this process may not
//! run on, a BGP listening address that cannot be bound. Each error is shaped
//! `FILE: `field`: message`, and the exit is non-zero.
//!
//! Topology: [`Lab::new`] with one gateway; no BIRD (the daemon never gets as far as a
//! session).

use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab};
use dsrgate_tests::netns::{Netns, GW_UPLINK};
use dsrgate_tests::require_privileges;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const WAIT: Duration = Duration::from_secs(30);

/// Runs the daemon on `config` in `gw` until it exits, which must be a failure; returns
/// its log and the config file's path.
fn failed_start(gw: &Netns, config: &str) -> Result<(String, String)> {
    let mut daemon = Daemon::start(gw, config, &[])?;
    let status = daemon.wait_exit(WAIT)?;
    let log = daemon.log();
    ensure!(!status.success(), "dsrgate started: {status}\n{log}");
    ensure!(!log.contains("dsrgate running"), "{log}");
    let path = daemon.config_path().display().to_string();
    Ok((log, path))
}

/// The first CPU below 1024 (the most a config may name) that this process may not run
/// on: the daemon, started from here, inherits the same affinity.
fn unavailable_core() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..1024)
        .rev()
        // SAFETY: `cpu` is below CPU_SETSIZE (1024).
        .find(|&cpu| !unsafe { libc::CPU_ISSET(cpu, &set) })
        .expect("a host with 1024 CPUs")
}

#[test]
fn startup_errors_name_the_file_and_the_field() -> Result<()> {
    if !require_privileges("daemon_startup::startup_errors_name_the_file_and_the_field") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let toml = GatewayConfig::new(1).toml();

    // An interface that is not there.
    let missing = toml.replace(
        &format!("upstream_interface = \"{GW_UPLINK}\""),
        "upstream_interface = \"nosuch0\"",
    );
    let (log, path) = failed_start(gw, &missing)?;
    ensure!(
        log.contains(&format!("{path}: `dataplane.upstream_interface`: "))
            && log.contains("no network interface")
            && log.contains("nosuch0"),
        "{log}"
    );

    // A worker core this process may not run on: refused before a worker runs unpinned.
    let core = unavailable_core();
    let cores = toml.replace(
        "flow_table_size = 4096",
        &format!("flow_table_size = 4096\nworker_cores = [0, {core}]"),
    );
    let (log, path) = failed_start(gw, &cores)?;
    ensure!(
        log.contains(&format!(
            "{path}: `dataplane.worker_cores[1]`: core {core} is not available \
             (this process may run on "
        )),
        "{log}"
    );

    // A passive peer awaited on an address this host does not have.
    let listener = toml.replace(
        "hold_time = \"6s\"",
        "hold_time = \"6s\"\npassive = true\nlocal_address = \"192.0.2.99\"",
    );
    let (log, path) = failed_start(gw, &listener)?;
    ensure!(
        log.contains(&format!(
            "{path}: `bgp.peers[0].local_address`: cannot listen for BGP on 192.0.2.99:179: "
        )) && log.contains("os error 99"),
        "{log}"
    );
    ensure!(
        !gw.xdp_attached(GW_UPLINK)?,
        "the steering program stayed on {GW_UPLINK}"
    );
    Ok(())
}
