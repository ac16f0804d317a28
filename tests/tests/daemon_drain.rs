//! Weight 0 drains a node: its open connections stay on it, new ones go elsewhere, and the
//! VIP stays announced. A healthy weight-0 backend used to leave the snapshot, so the next
//! packet of every flow pinned to it was re-hashed to another node, which reset it.
//!
//! Topology: [`Lab::new`] with one gateway, BIRD on the router, nodes 1-3.

use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{check_client, request, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::{fabric4, node_host};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

#[test]
fn a_weight_zero_node_keeps_its_connections_and_takes_no_new_ones() -> Result<()> {
    if !require_privileges_with(
        "daemon_drain::a_weight_zero_node_keeps_its_connections_and_takes_no_new_ones",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let cfg = GatewayConfig::new(1);
    let (bird, mut daemon) = lab.one_gateway(&cfg, &[])?;
    lab.get_many(3)?;

    // A long-lived connection, pinned to whichever node took it.
    let (mut flow, node, n) = lab.pinned_connection()?;

    // That node drains.
    let addr = fabric4(node_host(n));
    let backend = format!("[[vips.backends]]\naddress = \"{addr}\"\n");
    let text = cfg.toml();
    ensure!(text.contains(&backend), "{text}");
    let from = daemon.log_len();
    let line = daemon.reload(
        &text.replace(&backend, &format!("{backend}weight = 0\n")),
        Duration::from_secs(5),
    )?;
    ensure!(line.contains("config reloaded"), "{line}");
    daemon.wait_log_after(from, &["maglev table rebuilt"], Duration::from_secs(5))?;

    // The open connection goes on with its node, several times over; new connections
    // avoid it.
    lab.drains(&mut flow, &node, "after the drain")?;
    // Still announced: two nodes take new flows.
    bird.wait_route(PREFIX4, true, Duration::from_secs(1))?;
    check_client(&request(&mut flow, false)?)?;
    drop(flow);

    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
