//! Shutdowns that are not a plain SIGTERM: after a control-loop failure that leaves the
//! dataplane able to forward (here the health checker thread ends), the daemon still
//! withdraws, then drains while forwarding, then detaches, and exits non-zero; and a
//! worker that ends during a SIGTERM drain ends the drain and makes the exit non-zero.
//!
//! Both are set off by fail points of a test build (`FAILPOINTS`). A static route of the
//! router's own (a worse metric than BIRD's) keeps sending the VIP to gw1 after BGP has
//! withdrawn it: a router that has not converged yet, so traffic reaches the drain.

use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::GW_UPLINK;
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

fn privileged(what: &str) -> bool {
    require_privileges_with(what, &["bird", "birdc"])
}

#[test]
fn a_failure_with_a_healthy_dataplane_drains_then_exits_non_zero() -> Result<()> {
    if !privileged(
        "daemon_error_drain::a_failure_with_a_healthy_dataplane_drains_then_exits_non_zero",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = GatewayConfig::new(1);
    cfg.drain_time = "4s";
    // The first target list (at startup) passes; the next one ends the health thread.
    let failpoint = "FAILPOINTS=health-set-targets=1*off->panic(injected health fault)";
    let (bird, mut daemon) = lab.one_gateway(&cfg, &["env", failpoint])?;
    let gw1 = lab.ns("gw1");
    lab.stale_route(1)?;
    lab.get_many(3)?;

    // A reload that changes the services sends a new target list.
    cfg.med = Some(50);
    daemon.write_config(&cfg.toml())?;
    daemon.signal(libc::SIGHUP)?;
    daemon.wait_log(
        &["control loop failed", "the health checker thread ended"],
        Duration::from_secs(5),
    )?;
    bird.wait_route(PREFIX4, false, Duration::from_secs(5))?;
    daemon.wait_log(&["draining while still forwarding"], Duration::from_secs(2))?;
    lab.get_many(5)?;
    ensure!(
        gw1.xdp_attached(GW_UPLINK)?,
        "detached before the drain ended:\n{}",
        daemon.log()
    );
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(!status.success(), "exited with {status}");
    ensure!(!gw1.xdp_attached(GW_UPLINK)?, "left attached");
    Ok(())
}

#[test]
fn a_worker_ending_during_the_drain_makes_the_exit_non_zero() -> Result<()> {
    if !privileged("daemon_error_drain::a_worker_ending_during_the_drain_makes_the_exit_non_zero") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = GatewayConfig::new(1);
    cfg.drain_time = "60s";
    // A worker panics on its first batch of VIP traffic: none is sent before the drain.
    let failpoint = "FAILPOINTS=xsk-worker-batch=panic(injected worker fault)";
    let (bird, mut daemon) = lab.one_gateway(&cfg, &["env", failpoint])?;
    lab.stale_route(1)?;
    daemon.signal(libc::SIGTERM)?;
    bird.wait_route(PREFIX4, false, Duration::from_secs(10))?;
    daemon.wait_log(&["draining while still forwarding"], Duration::from_secs(5))?;
    ensure!(
        lab.get(Duration::from_secs(2)).is_err(),
        "the worker answered"
    );
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(!status.success(), "exited with {status}:\n{}", daemon.log());
    daemon.wait_log(&["ending the drain early"], Duration::from_secs(1))?;
    daemon.wait_log(&["injected worker fault"], Duration::from_secs(1))?;
    Ok(())
}
