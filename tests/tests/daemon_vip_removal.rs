//! A VIP that leaves the config (or the Kubernetes API) is withdrawn first and forwarded
//! for the drain time after, as on SIGTERM: the router keeps sending its traffic until
//! it has converged, and those flows and new connections must not fail meanwhile.
//!
//! Topology: [`Lab::new`] with one gateway and BIRD on the router. A static route of the
//! router's own (a worse metric than BIRD's) keeps sending the VIP to gw1 after BGP has
//! withdrawn it: a router that has not converged yet.

mod api;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{check_client, connect, request, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::VIP4;
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

#[test]
fn a_removed_vip_is_withdrawn_then_forwarded_for_the_drain_time() -> Result<()> {
    if !require_privileges_with(
        "daemon_vip_removal::a_removed_vip_is_withdrawn_then_forwarded_for_the_drain_time",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = GatewayConfig::new(1);
    cfg.drain_time = "4s";
    let (bird, mut daemon) = lab.one_gateway(&cfg, &[])?;
    let client = lab.ns("client");
    lab.stale_route(1)?;
    lab.get_many(3)?;
    let mut flow = connect(client, Duration::from_secs(2))?;
    check_client(&request(&mut flow, false)?)?;

    // The VIP moves to another address: the old one is removed.
    let line = daemon.reload(
        &cfg.toml().replace(VIP4, "192.0.2.20"),
        Duration::from_secs(5),
    )?;
    ensure!(line.contains("config reloaded"), "{line}");
    bird.wait_route(PREFIX4, false, Duration::from_secs(5))?;
    let withdrawn = Instant::now();

    // Still forwarded: the open flow and new connections.
    check_client(&request(&mut flow, false)?)?;
    lab.get_many(5)?;
    ensure!(
        withdrawn.elapsed() < Duration::from_secs(3),
        "too slow to tell the drain from its end"
    );
    let line = daemon.wait_log(&["withdrawn: removed, draining"], Duration::from_secs(1))?;
    ensure!(line.contains(VIP4), "{line}");
    let text = api::metrics(lab.ns("gw1"))?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("dsrgate_announce_transitions_total{")
                && l.contains(&format!("vip=\"{VIP4}\""))
                && l.contains("to=\"withdraw\"")
                && l.contains("reason=\"removed\"")
                && l.ends_with(" 1")),
        "{text}"
    );

    // After the drain, the gateway no longer takes it.
    daemon.wait_log(
        &["removed service drained; no longer forwarded"],
        Duration::from_secs(10),
    )?;
    ensure!(
        lab.get(Duration::from_secs(1)).is_err(),
        "still forwarded after the drain"
    );
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
