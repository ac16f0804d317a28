//! `dsrgate run` with `topology = "two-arm"`: the real binary on a gateway whose uplink
//! ([`GW_UPLINK`]) faces the router on its own segment and whose downlink ([`GW_DOWNLINK`])
//! shares the fabric with the nodes; BIRD 2 as the router, nodes with the XDP decapsulator
//! and `dsrgate-node`, real TCP from a client.
//!
//! Topology ([`dsrgate_tests::netns::two_arm_topology`]):
//! client ── router (BIRD) ── upstream ── eth0 gw1 eth1 ── fabric ── node1..node3,
//! and the router is on the fabric too, so the nodes' replies go straight to the client.

mod api;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::bird::{kernel_route, Bird};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::{gateway_host, upstream4, Arms, Netns, GW_DOWNLINK, GW_UPLINK, VIP4};
use dsrgate_tests::{require_privileges_with, settled};

use api::{status, wait_status};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
/// Fresh client connections through the gateway.
const CONNECTIONS: usize = 200;
/// Packets the client sends toward the VIP on each connection at least: SYN, the ACK of
/// the handshake, the request.
const MIN_PACKETS_PER_CONNECTION: u64 = 3;

/// Frames the workers sent toward the nodes, once the count has stopped moving (workers
/// publish their counters per batch and the status is refreshed every control-loop turn).
fn settled_worker_tx(gw: &Netns) -> Result<u64> {
    let total = |s: control::status::Status| s.workers.iter().map(|w| w.tx_packets).sum();
    settled(
        "worker TX count",
        Duration::from_millis(600),
        Duration::from_secs(15),
        || status(gw).map(total),
    )
}

/// The gateway's kernel TX packet counters: (uplink, downlink).
fn tx_packets(gw: &Netns) -> Result<(u64, u64)> {
    Ok((
        gw.link_stat(GW_UPLINK, "tx_packets")?,
        gw.link_stat(GW_DOWNLINK, "tx_packets")?,
    ))
}

/// Whether an XDP program is on either of the gateway's links.
fn xdp_on_either(gw: &Netns) -> Result<bool> {
    Ok(gw.xdp_attached(GW_UPLINK)? || gw.xdp_attached(GW_DOWNLINK)?)
}

#[test]
fn two_arm_tunnels_out_of_the_downlink_peers_over_the_uplink_and_exits_clean() -> Result<()> {
    if !require_privileges_with(
        "daemon_two_arm::two_arm_tunnels_out_of_the_downlink_peers_over_the_uplink_and_exits_clean",
        &["bird", "birdc", "ss"],
    ) {
        return Ok(());
    }
    let lab = Lab::two_arm(1, NODE_BIN)?;
    let (router, gw) = (lab.ns("router"), lab.ns("gw1"));
    let bird = Bird::start(router, &[lab.bird_neighbor(1, 65001)], "")?;
    let mut cfg = GatewayConfig::new(1);
    cfg.arms = Arms::Two;
    let mut daemon = Daemon::start(gw, &cfg.toml(), &[])?;
    lab.wait_routed_via(&bird, &[1])?;
    daemon.wait_log(&["dsrgate running", "egress=eth1"], Duration::from_secs(1))?;

    // The VIP is announced over the uplink: the router routes it to the gateway's uplink
    // address on its upstream bridge, and the gateway's BGP session runs from that address.
    let uplink_addr = upstream4(gateway_host(1));
    let route = kernel_route(router, VIP4)?;
    ensure!(
        route.contains(&format!("via {uplink_addr} dev upstream")),
        "the router's route to the VIP is not via the uplink: {route:?}"
    );
    let bgp = gw.exec(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ])?;
    ensure!(
        bgp.contains(&format!("{uplink_addr}:")) && bgp.contains(&format!("{}:179", upstream4(1))),
        "the BGP session does not run over the uplink: {bgp:?}"
    );

    // Every backend holds Maglev slots, its next hop resolved through the downlink.
    let downlink = gw.ifindex(GW_DOWNLINK)?;
    wait_status(
        gw,
        &format!("every backend in the Maglev set via {GW_DOWNLINK} (ifindex {downlink})"),
        Duration::from_secs(20),
        |s| {
            s.vips.iter().all(|v| {
                v.backends
                    .iter()
                    .all(|b| b.slots > 0 && b.next_hop.ifindex == Some(downlink))
            })
        },
    )?;

    // Client connections: all succeed, spread over the nodes, and each node sees the
    // client's own address (checked per response by `get_many`).
    let worker_tx0 = settled_worker_tx(gw)?;
    let (up0, down0) = tx_packets(gw)?;
    let answered = lab.get_many(CONNECTIONS)?;
    let worker_tx1 = settled_worker_tx(gw)?;
    let (up1, down1) = tx_packets(gw)?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &answered {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    let (forwarded, up, down) = (worker_tx1 - worker_tx0, up1 - up0, down1 - down0);
    eprintln!(
        "{CONNECTIONS} connections per node: {per_node:?}; frames the workers sent: \
         {forwarded}; kernel TX packets: {GW_UPLINK} +{up}, {GW_DOWNLINK} +{down}"
    );
    assert_eq!(
        per_node.keys().copied().collect::<Vec<_>>(),
        ["node1", "node2", "node3"],
        "not every node served: {per_node:?}"
    );

    // The tunnelled frames left on the downlink: its TX grew by at least what the workers
    // sent, which is at least what the client sent. The uplink carried only the kernel's
    // own traffic (BGP keepalives, ARP), far less than one frame per forwarded packet.
    let sent_by_client = MIN_PACKETS_PER_CONNECTION * CONNECTIONS as u64;
    assert!(
        forwarded >= sent_by_client,
        "the workers sent {forwarded} frames for {CONNECTIONS} connections"
    );
    assert!(
        down >= forwarded,
        "{GW_DOWNLINK} sent {down} packets, the workers {forwarded} frames"
    );
    assert!(
        up * 4 < forwarded,
        "{GW_UPLINK} sent {up} packets while the workers forwarded {forwarded} frames"
    );
    let s = status(gw)?;
    assert!(
        s.steering
            .iter()
            .any(|st| st.interface == GW_UPLINK && st.redirected >= sent_by_client),
        "{:?}",
        s.steering
    );

    // SIGTERM: the route goes first, then the steering program; nothing stays attached on
    // either link.
    assert!(
        gw.xdp_attached(GW_UPLINK)?,
        "no XDP program on {GW_UPLINK} before SIGTERM"
    );
    eprintln!(
        "XDP on {GW_DOWNLINK} while running: {}",
        gw.xdp_attached(GW_DOWNLINK)?
    );
    daemon.sigterm_withdraws_then_detaches(
        || Ok(bird.route(PREFIX4)?.is_none()),
        || Ok(!xdp_on_either(gw)?),
        Duration::from_secs(20),
    )?;
    daemon.wait_clean_exit(Duration::from_secs(15))?;
    for link in [GW_UPLINK, GW_DOWNLINK] {
        assert!(
            !gw.xdp_attached(link)?,
            "XDP program left attached on {link}"
        );
    }
    ensure!(
        kernel_route(router, VIP4)?.trim().is_empty(),
        "the router still routes the VIP"
    );
    Ok(())
}
