//! A `[bgp]` change on SIGHUP touches only the sessions whose settings changed: the real
//! `dsrgate` on gw1 peers twice with one BIRD 2 (AS 65000) in the router, once per router
//! address; a reload that changes only peer B's hold time leaves peer A's session up with
//! its route, and brings B's back with the new hold time.
//!
//! Topology ([`dsr_topology`] through [`Lab`]): client ── router ── fabric ── gw1 and
//! node1..node3; the router has a second fabric address for session B.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use dsrgate_tests::bird::{Bird, ROUTER_AS};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4, SETTLE};
use dsrgate_tests::netns::{fabric4, gateway_host};
use dsrgate_tests::{require_privileges_with, settled};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

/// The router's second fabric address, session B's end (no other host uses it).
const ROUTER_B_HOST: u8 = 250;

/// gw1's config with two peers: the router's usual address (A, hold time 6 s as in
/// [`GatewayConfig`]) and its second one (B, hold time `hold_b`).
fn two_peers(hold_b: &str) -> String {
    let first = "hold_time = \"6s\"\n";
    let config = GatewayConfig::new(1).toml();
    assert!(config.contains(first), "{config}");
    let b = format!(
        "{first}\n[[bgp.peers]]\naddress = \"{}\"\nremote_as = {ROUTER_AS}\nhold_time = \"{hold_b}\"\n",
        fabric4(ROUTER_B_HOST)
    );
    config.replacen(first, &b, 1)
}

/// BIRD's sessions `a` and `b` toward gw1, each at its own router address so that BIRD
/// tells gw1's two connections apart. BIRD runs one session per neighbour address and
/// port, so `b` names a port of gw1 that nothing listens on: gw1 connects, BIRD never does.
fn bird_protocols() -> String {
    let gw = fabric4(gateway_host(1));
    [("a", 1, 179), ("b", ROUTER_B_HOST, 1179)]
        .iter()
        .map(|(name, host, port)| {
            format!(
                "protocol bgp {name} from speakers {{ neighbor {gw} port {port} as 65001; local {} as {ROUTER_AS}; }}\n",
                fabric4(*host)
            )
        })
        .collect()
}

/// The hold time BIRD negotiated on protocol `name`, from `show protocols all`.
fn hold_time(bird: &Bird<'_>, name: &str) -> Result<Option<u32>> {
    let out = bird.birdc(&["show", "protocols", "all", name])?;
    Ok(out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Hold timer:"))
        .and_then(|t| t.trim().rsplit('/').next()?.parse().ok()))
}

/// BIRD's `show protocols` line for `name` once it has not changed for half a second:
/// its "since" can still move a millisecond after the session is Established and the
/// routes are in (seen once in CI), which is BIRD's bookkeeping, not a reset.
fn settled_protocol(bird: &Bird<'_>, name: &str) -> Result<String> {
    settled(
        &format!("protocol {name}"),
        Duration::from_millis(500),
        SETTLE,
        || bird.protocol(name),
    )
}

#[test]
fn a_changed_peer_is_reset_and_the_others_stay_up() -> Result<()> {
    if !require_privileges_with(
        "daemon_bgp_reload::a_changed_peer_is_reset_and_the_others_stay_up",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let router = lab.ns("router");
    router.ip(&[
        "addr",
        "add",
        &format!("{}/24", fabric4(ROUTER_B_HOST)),
        "dev",
        "fabric",
    ])?;
    let bird = Bird::with_protocols(router, &bird_protocols(), "")?;
    let daemon = Daemon::start(lab.ns("gw1"), &two_peers("6s"), &[])?;
    lab.wait_routed_via(&bird, &[1])?;
    let deadline = Instant::now() + SETTLE;
    while !(bird.has_route_from(PREFIX4, "a")? && bird.has_route_from(PREFIX4, "b")?) {
        ensure!(
            Instant::now() < deadline,
            "the VIP not from both sessions:\n{}\n{}",
            bird.birdc(&["show", "route", "all"])?,
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hold_time(&bird, "b")?, Some(6));
    let a_before = settled_protocol(&bird, "a")?;
    let b_before = settled_protocol(&bird, "b")?;
    assert!(a_before.ends_with("Established"), "{a_before}");
    // BIRD's "since" has a resolution of a second or better: a session re-established
    // after this pause shows a different one.
    std::thread::sleep(Duration::from_millis(1100));

    daemon.write_config(&two_peers("3s"))?;
    daemon.signal(libc::SIGHUP)?;
    // Until B is back with its new hold time, A's session and route never waver.
    let deadline = Instant::now() + SETTLE;
    loop {
        let a = bird.protocol("a")?;
        ensure!(
            a == a_before,
            "session A changed: {a:?}, was {a_before:?}\n{}",
            daemon.log()
        );
        ensure!(
            bird.has_route_from(PREFIX4, "a")?,
            "the VIP left session A:\n{}",
            bird.birdc(&["show", "route", "all"])?
        );
        let b = bird.protocol("b")?;
        if b != b_before && b.ends_with("Established") && hold_time(&bird, "b")? == Some(3) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "session B not re-established with hold time 3: {b:?}\n{}\n{}",
                bird.birdc(&["show", "protocols", "all", "b"])?,
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.wait_log(&["config reloaded"], Duration::from_secs(5))?;
    let line = daemon.wait_log(&["BGP peers reconfigured"], Duration::from_secs(1))?;
    assert!(line.contains(&fabric4(ROUTER_B_HOST)), "{line}");
    assert!(
        !daemon.log().contains("restarting the speaker"),
        "{}",
        daemon.log()
    );
    // BIRD was told why: Cease / Other Configuration Change (RFC 4486 subcode 6).
    let log = bird.log();
    assert!(
        log.contains(" b: Received: Other configuration change"),
        "{log}"
    );
    bird.wait_route(PREFIX4, true, SETTLE)?;
    assert!(bird.has_route_from(PREFIX4, "b")?);
    Ok(())
}
