//! A `[bgp]` change on SIGHUP touches only the sessions whose settings changed: the real
//! `dsrgate` on gw1 peers twice with one BIRD 2 (AS 65000) in the router, once per router
//! address; a reload that changes only peer B's hold time leaves peer A's session up with
//! its route, and brings B's back with the new hold time. A second reload makes B
//! passive, which gives the speaker a listening socket it did not have: the listener
//! changes in place, BIRD's connection to it brings B back, and A is still untouched. A
//! third reload wants a port that is taken: it is rejected whole, and nothing moves.
//! Another test takes the whole `[bgp]` section away on reload, and gives it back.
//!
//! Topology ([`dsr_topology`] through [`Lab`]): client ── router ── fabric ── gw1 and
//! node1..node3; the router has a second fabric address for session B.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use dsrgate_tests::bird::{same_session, Bird, ROUTER_AS};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4, SETTLE};
use dsrgate_tests::netns::{fabric4, gateway_host};
use dsrgate_tests::{require_privileges_with, settled};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

/// The router's second fabric address, session B's end (no other host uses it).
const ROUTER_B_HOST: u8 = 250;

/// Where gw1 awaits B once B is passive.
const B_PORT: u16 = 1179;

/// gw1's config with two peers: the router's usual address (A, hold time 6 s as in
/// [`GatewayConfig`]) and its second one (B, hold time `hold_b`, and the lines `b_extra`).
fn two_peers(hold_b: &str, b_extra: &str) -> String {
    let first = "hold_time = \"6s\"\n";
    let config = GatewayConfig::new(1).toml();
    assert!(config.contains(first), "{config}");
    let b = format!(
        "{first}\n[[bgp.peers]]\naddress = \"{}\"\nremote_as = {ROUTER_AS}\nhold_time = \"{hold_b}\"\n{b_extra}",
        fabric4(ROUTER_B_HOST)
    );
    config.replacen(first, &b, 1)
}

/// BIRD's sessions `a` and `b` toward gw1, each at its own router address so that BIRD
/// tells gw1's two connections apart. BIRD runs one session per neighbour address and
/// port, so `b` names gw1's port [`B_PORT`]: while B is active nothing listens there, so
/// gw1 connects and BIRD never does; once B is passive, gw1 listens there.
fn bird_protocols() -> String {
    let gw = fabric4(gateway_host(1));
    [("a", 1, 179), ("b", ROUTER_B_HOST, B_PORT)]
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

/// BIRD's `show protocols` line for `name` once it has not changed for half a second, so
/// that the session is up and its routes are in before the reload.
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
    let daemon = Daemon::start(lab.ns("gw1"), &two_peers("6s", ""), &[])?;
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

    reload_keeping_a(&bird, &daemon, &two_peers("3s", ""), 1, |bird| {
        Ok(hold_time(bird, "b")? == Some(3))
    })?;
    // BIRD was told why: Cease / Other Configuration Change (RFC 4486 subcode 6).
    let log = bird.log();
    assert!(
        log.contains(" b: Received: Other configuration change"),
        "{log}"
    );

    // B passive: gw1 stops connecting and listens on B_PORT, a socket it did not have.
    let passive = format!("passive = true\nport = {B_PORT}\n");
    reload_keeping_a(&bird, &daemon, &two_peers("3s", &passive), 2, |_| Ok(true))?;
    daemon.wait_log(&["BGP listeners moved"], Duration::from_secs(1))?;
    // The session is BIRD's connection to gw1's new listener.
    let sessions = lab.ns("gw1").exec(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "src",
        &format!("{}:{B_PORT}", fabric4(gateway_host(1))),
    ])?;
    ensure!(
        // A dual-stack listener: the router shows as `[::ffff:198.51.100.250]:port`.
        sessions.contains(&format!("{}]:", fabric4(ROUTER_B_HOST))),
        "no connection from the router to gw1's port {B_PORT}: {sessions:?}"
    );

    // A listening address that is taken (the daemon's own API port): the reload is
    // rejected whole, B's listener is bound again, and neither session moves.
    let api_port = 9180;
    let config = two_peers("3s", &format!("passive = true\nport = {api_port}\n"));
    assert!(
        config.contains(&format!("127.0.0.1:{api_port}")),
        "{config}"
    );
    let (a, b) = (settled_protocol(&bird, "a")?, settled_protocol(&bird, "b")?);
    let line = daemon.reload(&config, Duration::from_secs(5))?;
    ensure!(
        line.contains("config reload rejected")
            && line.contains(&format!("cannot listen for BGP on [::]:{api_port}")),
        "{line}"
    );
    ensure!(
        same_session(&bird.protocol("a")?, &a),
        "session A moved:\n{}",
        daemon.log()
    );
    ensure!(
        same_session(&bird.protocol("b")?, &b),
        "session B moved:\n{}",
        daemon.log()
    );
    let listening = lab
        .ns("gw1")
        .exec(&["ss", "-Hltn", "sport", "=", &format!(":{B_PORT}")])?;
    ensure!(
        !listening.trim().is_empty(),
        "gw1 no longer listens on {B_PORT}:\n{}",
        daemon.log()
    );
    Ok(())
}

/// Reloads gw1 with `config` (its `n`th reload) and watches BIRD until session B is
/// back, Established and `ready`, while session A and its route never waver. Then the
/// daemon must have changed its peers in place, not restarted its speaker.
fn reload_keeping_a(
    bird: &Bird<'_>,
    daemon: &Daemon,
    config: &str,
    n: usize,
    ready: impl Fn(&Bird<'_>) -> Result<bool>,
) -> Result<()> {
    let a_before = settled_protocol(bird, "a")?;
    let b_before = settled_protocol(bird, "b")?;
    assert!(a_before.ends_with("Established"), "{a_before}");
    // BIRD's "since" has a resolution of a second or better: a session re-established
    // after this pause shows a different one.
    std::thread::sleep(Duration::from_millis(1100));

    daemon.write_config(config)?;
    daemon.signal(libc::SIGHUP)?;
    // Until B is back, A's session and route never waver.
    let deadline = Instant::now() + SETTLE;
    loop {
        let a = bird.protocol("a")?;
        ensure!(
            same_session(&a, &a_before),
            "session A changed: {a:?}, was {a_before:?}\n{}",
            daemon.log()
        );
        ensure!(
            bird.has_route_from(PREFIX4, "a")?,
            "the VIP left session A:\n{}",
            bird.birdc(&["show", "route", "all"])?
        );
        let b = bird.protocol("b")?;
        if !same_session(&b, &b_before) && b.ends_with("Established") && ready(bird)? {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "session B not re-established as configured: {b:?}\n{}\n{}",
                bird.birdc(&["show", "protocols", "all", "b"])?,
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log();
    let reloads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("BGP peers reconfigured"))
        .collect();
    ensure!(reloads.len() == n, "{n} reloads expected:\n{log}");
    assert!(
        reloads[n - 1].contains(&fabric4(ROUTER_B_HOST)),
        "{}",
        reloads[n - 1]
    );
    assert!(!log.contains("restarting the speaker"), "{log}");
    bird.wait_route(PREFIX4, true, SETTLE)?;
    ensure!(bird.has_route_from(PREFIX4, "b")?, "no route from B");
    Ok(())
}

/// Taking a gateway out of BGP without stopping it: a reload without `[bgp]` withdraws
/// its route and closes the session with Cease / Peer De-configured (RFC 4486 subcode 3),
/// while the dataplane keeps running; a section whose speaker cannot start is rejected;
/// a reload with the section back announces again.
#[test]
fn removing_the_bgp_section_withdraws_and_adding_it_back_announces() -> Result<()> {
    if !require_privileges_with(
        "daemon_bgp_reload::removing_the_bgp_section_withdraws_and_adding_it_back_announces",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gateway = GatewayConfig::new(1);
    let config = gateway.toml();
    let (bird, daemon) = lab.one_gateway(&gateway, &[])?;

    let (start, end) = (
        config.find("[bgp]").unwrap(),
        config.find("[[vips]]").unwrap(),
    );
    let without = format!("{}{}", &config[..start], &config[end..]);
    daemon.write_config(&without)?;
    daemon.signal(libc::SIGHUP)?;
    bird.wait_route(PREFIX4, false, SETTLE)?;
    daemon.wait_log(&["BGP section removed"], Duration::from_secs(5))?;
    let log = bird.log();
    ensure!(log.contains("Received: Peer de-configured"), "{log}");
    ensure!(
        !bird.protocol("gw1")?.ends_with("Established"),
        "{}",
        bird.protocol("gw1")?
    );
    // The daemon runs on, its steering program still attached.
    ensure!(daemon.log().contains("config reloaded"), "{}", daemon.log());
    ensure!(
        lab.ns("gw1")
            .xdp_attached(dsrgate_tests::netns::GW_UPLINK)?,
        "the steering program left with the [bgp] section"
    );

    // A `[bgp]` section whose speaker cannot start (its passive peer wants the API's
    // port): the reload is rejected, and the gateway stays out of BGP.
    let taken = config.replace(
        "hold_time = \"6s\"",
        "hold_time = \"6s\"\npassive = true\nport = 9180",
    );
    assert!(taken.contains("127.0.0.1:9180"), "{taken}");
    let line = daemon.reload(&taken, Duration::from_secs(5))?;
    ensure!(
        line.contains("config reload rejected") && line.contains("restarting the BGP speaker"),
        "{line}"
    );
    ensure!(
        bird.route(PREFIX4)?.is_none(),
        "announced by a rejected config"
    );

    daemon.write_config(&config)?;
    daemon.signal(libc::SIGHUP)?;
    lab.wait_routed_via(&bird, &[1])?;
    ensure!(bird.protocol("gw1")?.ends_with("Established"));
    Ok(())
}
