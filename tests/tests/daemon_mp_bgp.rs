//! One IPv4 BGP session carries the IPv6 VIP too (MP-BGP, RFC 4760): the real `dsrgate`
//! on gw1 peers with BIRD 2 on the router over IPv4 only, with an ipv4 and an ipv6
//! channel on BIRD's side, and the peer's `next_hop` given per family. BIRD must learn
//! both VIPs over that one session, each with its family's next hop, and lose only the
//! IPv6 one when that VIP loses its backends or leaves the config; both go, with Cease /
//! Peer De-configured, when the `[bgp]` section does.
//!
//! Topology: [`Lab::new`] with one gateway. The IPv4 VIP is on nodes 1 and 2, the IPv6
//! VIP on node 3 alone, so stopping node 3 leaves only the IPv6 VIP without a backend.

mod api;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use dsrgate_tests::bird::{kernel_route, Bird};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4, SETTLE};
use dsrgate_tests::netns::{fabric4, fabric6, gateway_host, node_host, Netns, VIP4, VIP6};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const PREFIX6: &str = "2001:db8:100::10/128";
/// Within interval × fall of the health checks, plus the session's UPDATE.
const WITHDRAW: Duration = Duration::from_secs(5);

/// gw1's config: the shared one (VIP4 on nodes 1 and 2, one IPv4 peer) with a next hop
/// per family on the peer and, if `vip6`, the IPv6 VIP on node 3.
fn config(vip6: bool) -> Result<String> {
    let gw = gateway_host(1);
    let base = GatewayConfig {
        nodes: vec![1, 2],
        ..GatewayConfig::new(1)
    }
    .toml();
    let peer_end = "hold_time = \"6s\"\n";
    ensure!(base.contains(peer_end), "no {peer_end:?} in:\n{base}");
    let next_hop = format!("next_hop = [\"{}\", \"{}\"]\n", fabric4(gw), fabric6(gw));
    let mut toml = base.replacen(peer_end, &format!("{peer_end}{next_hop}"), 1);
    if vip6 {
        toml += &format!(
            r#"
[[vips]]
name = "web6"
address = "{VIP6}"
protocol = "tcp"
ports = [80]

[[vips.backends]]
address = "{}"

[vips.health]
type = "http"
port = 80
path = "/"
interval = "300ms"
timeout = "200ms"
rise = 2
fall = 2
"#,
            fabric6(node_host(3))
        );
    }
    Ok(toml)
}

/// BIRD's BGP session with gw1: its `show protocols` line, whose "since" column changes
/// if the session is reset.
fn session(bird: &Bird<'_>) -> Result<String> {
    let line = bird.protocol("gw1")?;
    ensure!(line.contains("Established"), "session not up: {line}");
    Ok(line)
}

/// Waits until dsrgate's `/status` (refreshed each tick) says it announces `count`
/// prefixes to its one peer.
fn wait_announced(gw: &Netns, count: u32) -> Result<()> {
    let status = api::wait_status(
        gw,
        &format!("{count} prefixes announced"),
        Duration::from_secs(5),
        |s| s.peers.len() != 1 || s.peers[0].prefixes_announced == count,
    )?;
    ensure!(status.peers.len() == 1, "peers: {:?}", status.peers);
    Ok(())
}

/// Both VIPs over the one session, from protocol gw1, via gw1's address of their family.
fn check_both_routes(lab: &Lab, bird: &Bird<'_>) -> Result<()> {
    let (nh4, nh6) = (fabric4(gateway_host(1)), fabric6(gateway_host(1)));
    for (prefix, vip, nh) in [(PREFIX4, VIP4, &nh4), (PREFIX6, VIP6, &nh6)] {
        ensure!(
            bird.has_route_from(prefix, "gw1")?,
            "{prefix} not from gw1:\n{}",
            bird.birdc(&["show", "route", "all"])?
        );
        let route = bird.route(prefix)?.unwrap_or_default();
        ensure!(
            route.contains(&format!("BGP.next_hop: {nh}")),
            "{prefix} should have next hop {nh}:\n{route}"
        );
        let k = kernel_route(lab.ns("router"), vip)?;
        ensure!(
            k.contains(&format!("via {nh} ")) && k.contains("proto bird"),
            "router's route to {vip}: {k:?}"
        );
    }
    Ok(())
}

/// The IPv6 VIP goes from BIRD and the router's kernel; the IPv4 one stays, on the same
/// session.
fn check_only_ipv6_withdrawn(lab: &Lab, bird: &Bird<'_>, before: &str) -> Result<()> {
    bird.wait_route(PREFIX6, false, WITHDRAW)?;
    // Anything withdrawn with it would have come in the same burst of UPDATEs.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        bird.has_route_from(PREFIX4, "gw1")?,
        "{PREFIX4} withdrawn too"
    );
    ensure!(kernel_route(lab.ns("router"), VIP6)?.is_empty());
    ensure!(kernel_route(lab.ns("router"), VIP4)?.contains("proto bird"));
    let after = session(bird)?;
    ensure!(
        after == before,
        "the session was reset: {before} -> {after}"
    );
    wait_announced(lab.ns("gw1"), 1)
}

#[test]
fn one_ipv4_session_carries_the_ipv6_vip() -> Result<()> {
    if !require_privileges_with(
        "daemon_mp_bgp::one_ipv4_session_carries_the_ipv6_vip",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    // BIRD's session template has an ipv4 and an ipv6 channel; the neighbor is gw1's
    // IPv4 address.
    let bird = Bird::start(lab.ns("router"), &[lab.bird_neighbor(1, 65001)], "")?;
    let daemon = Daemon::start(lab.ns("gw1"), &config(true)?, &[])?;
    lab.wait_routed_via(&bird, &[1])?;
    bird.wait_route(PREFIX6, true, SETTLE)?;
    check_both_routes(&lab, &bird)?;
    let before = session(&bird)?;
    wait_announced(lab.ns("gw1"), 2)?;

    // The IPv6 VIP's only backend fails: only its route goes.
    lab.stop_service(3);
    check_only_ipv6_withdrawn(&lab, &bird, &before)?;

    // It comes back over the same session.
    lab.start_service(3)?;
    bird.wait_route(PREFIX6, true, SETTLE)?;
    check_both_routes(&lab, &bird)?;
    ensure!(session(&bird)? == before, "the session was reset");

    // The IPv6 VIP leaves the config on SIGHUP: only its route goes.
    let line = daemon.reload(&config(false)?, Duration::from_secs(5))?;
    ensure!(line.contains("config reloaded"), "{line}");
    check_only_ipv6_withdrawn(&lab, &bird, &before)?;

    // The whole [bgp] section goes: BIRD is told Cease / Peer De-configured (RFC 4486
    // subcode 3), as a removed peer is, not Administrative Shutdown.
    let toml = config(false)?;
    let (start, end) = (toml.find("[bgp]"), toml.find("[[vips]]"));
    let (Some(start), Some(end)) = (start, end) else {
        bail!("no [bgp] before [[vips]] in:\n{toml}");
    };
    let line = daemon.reload(
        &format!("{}{}", &toml[..start], &toml[end..]),
        Duration::from_secs(5),
    )?;
    ensure!(line.contains("config reloaded"), "{line}");
    bird.wait_route(PREFIX4, false, WITHDRAW)?;
    let log = bird.log();
    ensure!(log.contains(" gw1: Received: Peer de-configured"), "{log}");
    ensure!(!log.contains("Received: Administrative shutdown"), "{log}");
    Ok(())
}
