//! A VIP's health probe changes (a reload with another path; for a Kubernetes Service, an
//! `externalTrafficPolicy` flip) on nodes that stay up: the VIP keeps its backends and stays
//! announced. The new probes used to start down, so the gateway emptied the VIP's table and
//! withdrew it until they had risen.
//!
//! Topology: [`Lab::new`] with one gateway, BIRD on the router, nodes 1-3.

use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

#[test]
fn a_changed_probe_on_up_nodes_never_withdraws() -> Result<()> {
    if !require_privileges_with(
        "daemon_probe_change::a_changed_probe_on_up_nodes_never_withdraws",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let cfg = GatewayConfig::new(1);
    let (bird, mut daemon) = lab.one_gateway(&cfg, &[])?;
    lab.get_many(3)?;

    let text = cfg.toml();
    let probe = "path = \"/\"\n";
    ensure!(text.contains(probe), "{text}");
    let from = daemon.log_len();
    let line = daemon.reload(
        &text.replace(probe, "path = \"/healthz\"\n"),
        Duration::from_secs(5),
    )?;
    ensure!(line.contains("config reloaded"), "{line}");
    let line = daemon.wait_log_after(from, &["/healthz starts up"], Duration::from_secs(1))?;
    ensure!(line.contains(":80/ which it replaces"), "{line}");
    // New connections go on at once, and nothing is withdrawn while the new probes run
    // (well past their `rise`).
    lab.get_many(6)?;
    std::thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    let after = log.get(from..).unwrap_or_default();
    ensure!(
        !after.contains("withdrawn"),
        "withdrawn on a probe change:\n{after}"
    );
    bird.wait_route(PREFIX4, true, Duration::from_secs(1))?;
    lab.get_many(3)?;
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
