//! A gateway whose interface is re-created under its name (a network manager re-creating a
//! bond, VLAN or veth; a NIC re-probed) heals without a restart: `dsrgate run` withdraws
//! its VIPs, rebuilds its packet path on the new interface, announces again and forwards.
//! It never replaces an XDP program someone else put there, waits until a re-created
//! uplink is up, follows a change of its RX queues, shows an uplink MTU raised past what
//! its workers receive (without withdrawing), and SIGTERM still withdraws then detaches.
//!
//! Topology: [`Lab::new`] (or [`Lab::two_arm`]) with one gateway and BIRD on the router;
//! the gateway's veth is deleted, which deletes its peer on the router's bridge
//! ([`Topology::unlink`]), and created again with the lab's addresses and routes
//! ([`Topology::relink`]).

mod api;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use control::status::{render, Status, UplinkMtu};
use dsrgate_tests::bird::{kernel_route, same_session, Bird};
use dsrgate_tests::daemon::{dsrgate_bin, Daemon, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::{
    dsr_topology, two_arm_topology, Arms, Netns, Topology, GW_DOWNLINK, GW_UPLINK, VIP4,
};
use dsrgate_tests::{poll, require_privileges_with};

use api::samples;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
/// `RUST_LOG` (for an `env` wrapper) with the packet path's debug lines.
const DEBUG_FORWARDING: &str = "RUST_LOG=info,control::daemon::forwarding=debug";
/// Re-announcing takes the gateway's BGP session coming back too: a one-arm gateway loses
/// it with its uplink, and its connect retries back off while the link is gone.
const BACK: Duration = Duration::from_secs(60);

fn privileged(what: &str) -> bool {
    require_privileges_with(what, &["bird", "birdc"])
}

/// BIRD and a gateway of `arms` (run under `wrapper`) forwarding the VIP, checked with
/// real requests.
fn gateway<'l>(lab: &'l Lab, arms: Arms, wrapper: &[&str]) -> Result<(Bird<'l>, Daemon)> {
    let mut cfg = GatewayConfig::new(1);
    cfg.arms = arms;
    let (bird, daemon) = lab.one_gateway(&cfg, wrapper)?;
    lab.get_many(3)?;
    Ok((bird, daemon))
}

/// Deletes gw1's `ifname`, waits until the daemon says it waits for it and the router has
/// withdrawn the VIP, and returns the interface's index.
fn delete(
    lab: &Lab,
    topology: &Topology,
    bird: &Bird<'_>,
    daemon: &Daemon,
    ifname: &str,
) -> Result<u32> {
    let index = lab.ns("gw1").ifindex(ifname)?;
    let since = daemon.log_len();
    topology.unlink(&lab.net, "gw1", ifname)?;
    daemon.wait_log_after(
        since,
        &[
            "dataplane unhealthy: withdrawing every VIP",
            &format!("detached from {ifname}"),
        ],
        Duration::from_secs(5),
    )?;
    daemon.wait_log_after(
        since,
        &[&format!("{ifname} does not exist: waiting for it")],
        Duration::from_secs(5),
    )?;
    // A one-arm gateway's session went with the link: BIRD's hold timer (6 s) ends it.
    bird.wait_route(PREFIX4, false, Duration::from_secs(15))?;
    Ok(index)
}

/// gw1's `ifname` was created again under its name: a new interface.
fn recreated(lab: &Lab, topology: &Topology, ifname: &str, old: u32) -> Result<()> {
    topology.relink(&lab.net, "gw1", ifname)?;
    let new = lab.ns("gw1").ifindex(ifname)?;
    ensure!(new != old, "{ifname} kept its index {old}");
    Ok(())
}

/// The daemon re-attached without a restart (logged after `since`, a
/// [`Daemon::log_len`]), and the router routes the VIP through it again, where requests
/// succeed.
fn healed(
    lab: &Lab,
    bird: &Bird<'_>,
    daemon: &mut Daemon,
    ifname: &str,
    since: usize,
) -> Result<()> {
    daemon.wait_log_after(
        since,
        &[&format!(
            "re-attaching to {ifname}: rebuilding the packet path"
        )],
        Duration::from_secs(10),
    )?;
    daemon.wait_log_after(since, &[&format!("re-attached to {ifname}")], BACK)?;
    bird.wait_route(PREFIX4, true, BACK)?;
    lab.wait_routed_via(bird, &[1])?;
    ensure!(daemon.is_running(), "the daemon exited:\n{}", daemon.log());
    lab.get_many(5)?;
    Ok(())
}

/// SIGTERM: the route goes first, then the steering program; nothing stays attached.
fn stops_clean(lab: &Lab, bird: &Bird<'_>, mut daemon: Daemon) -> Result<()> {
    let gw1 = lab.ns("gw1");
    let xdp_anywhere = |gw: &Netns| -> Result<bool> {
        Ok(gw.xdp_attached(GW_UPLINK)?
            || (lab.arms == Arms::Two && gw.xdp_attached(GW_DOWNLINK)?))
    };
    ensure!(xdp_anywhere(gw1)?, "nothing attached before SIGTERM");
    daemon.sigterm_withdraws_then_detaches(
        || Ok(bird.route(PREFIX4)?.is_none()),
        || Ok(!xdp_anywhere(gw1)?),
        Duration::from_secs(20),
    )?;
    daemon.wait_clean_exit(Duration::from_secs(15))?;
    ensure!(!xdp_anywhere(gw1)?, "an XDP program stayed attached");
    ensure!(
        kernel_route(lab.ns("router"), VIP4)?.trim().is_empty(),
        "the router still routes the VIP"
    );
    Ok(())
}

#[test]
fn a_recreated_uplink_is_reattached_and_announced_again() -> Result<()> {
    if !privileged("daemon_uplink::a_recreated_uplink_is_reattached_and_announced_again") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let (bird, mut daemon) = gateway(&lab, Arms::One, &[])?;
    let topology = dsr_topology(1, 3);
    let since = daemon.log_len();
    let old = delete(&lab, &topology, &bird, &daemon, GW_UPLINK)?;
    recreated(&lab, &topology, GW_UPLINK, old)?;
    healed(&lab, &bird, &mut daemon, GW_UPLINK, since)?;
    stops_clean(&lab, &bird, daemon)
}

/// A new MAC address on the uplink (`ip link set address`, a bond's failover) is followed
/// without a rebuild: the steering program steers frames to the new address, the tunnelled
/// frames leave from it, and the VIP keeps forwarding.
#[test]
fn a_changed_uplink_mac_is_followed() -> Result<()> {
    if !privileged("daemon_uplink::a_changed_uplink_mac_is_followed") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let (bird, daemon) = gateway(&lab, Arms::One, &[])?;
    let since = daemon.log_len();
    let mac = "02:00:00:00:99:01";
    lab.ns("gw1")
        .ip(&["link", "set", "dev", GW_UPLINK, "address", mac])?;
    // The router's and the nodes' caches still name the old address: forget it, as a
    // gratuitous ARP (`arp_notify`) would make them.
    for ns in ["router", "node1", "node2", "node3"] {
        lab.ns(ns).ip(&["neigh", "flush", "all"])?;
    }
    for needles in [
        &["uplink MAC address changed"][..],
        &["egress MAC changed", mac],
    ] {
        daemon.wait_log_after(since, needles, Duration::from_secs(10))?;
    }
    ensure!(
        !daemon.log()[since..].contains("rebuilding the packet path"),
        "rebuilt:\n{}",
        daemon.log()
    );
    lab.get_many(5)?;
    stops_clean(&lab, &bird, daemon)
}

/// gw1's `/status` and `/metrics`, fetched until `ok` holds for both: the control loop
/// refreshes them about once a second.
fn wait_shown(gw1: &Netns, what: &str, ok: impl Fn(&Status, &str) -> bool) -> Result<Status> {
    let (status, _) = poll(
        what,
        Duration::from_secs(10),
        || Ok((api::status(gw1)?, api::metrics(gw1)?)),
        |(s, m)| ok(s, m),
        |(s, m)| format!("{}\n{m}", render(s)),
    )?;
    Ok(status)
}

/// The frames the kernel finished sending are shown per worker; an uplink MTU raised past
/// what the workers receive whole (3758 with 4 KiB frames) is shown in `/status`,
/// `dsrgate status` and `/metrics` while it lasts, without withdrawing the VIP: smaller
/// packets still forward.
#[test]
fn completed_frames_and_an_uplink_mtu_over_the_limit_are_shown() -> Result<()> {
    if !privileged("daemon_uplink::completed_frames_and_an_uplink_mtu_over_the_limit_are_shown") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let (bird, daemon) = gateway(&lab, Arms::One, &[])?;
    let gw1 = lab.ns("gw1");
    // The requests made so far went out of the uplink tunnelled: their frames completed.
    let completed = format!("dsrgate_worker_completed_packets_total{{interface=\"{GW_UPLINK}\",");
    let s = wait_shown(gw1, "completed frames", |s, m| {
        s.workers.iter().any(|w| w.completed_packets > 0)
            && samples(m, &completed).sum::<f64>() > 0.0
    })?;
    let before = s.uplink_mtu.context("no uplink MTU in the status")?;
    ensure!(
        before.interface == GW_UPLINK && !before.over_limit(),
        "{before:?}"
    );

    let mtu = |mtu: u32| {
        gw1.ip(&["link", "set", "dev", GW_UPLINK, "mtu", &mtu.to_string()])
            .map(drop)
    };
    let series = format!("dsrgate_uplink_mtu{{interface=\"{GW_UPLINK}\"}} ");
    let limit_series = format!("dsrgate_uplink_mtu_limit{{interface=\"{GW_UPLINK}\"}} ");
    let limit = dataplane::xsk::XskConfig::new(GW_UPLINK).max_mtu();
    ensure!(before.limit == limit, "{before:?}");
    let over = UplinkMtu {
        mtu: 4000,
        ..before.clone()
    };
    ensure!(over.over_limit(), "{over:?}");
    mtu(over.mtu)?;
    let s = wait_shown(gw1, "the uplink MTU over the limit", |s, m| {
        s.uplink_mtu.as_ref() == Some(&over)
            && samples(m, &series).eq([4000.0])
            && samples(m, &limit_series).eq([f64::from(limit)])
    })?;
    let text = render(&s);
    ensure!(
        text.contains(&format!(
            "uplink {GW_UPLINK} has MTU 4000, over the {limit} the AF_XDP workers receive"
        )),
        "{text}"
    );
    // Not a dataplane problem: the VIP stays announced and forwards.
    ensure!(s.dataplane_problem.is_none(), "{text}");
    ensure!(bird.route(PREFIX4)?.is_some(), "withdrawn for the MTU");
    lab.get_many(3)?;

    mtu(before.mtu)?;
    let s = wait_shown(gw1, "the uplink MTU back within the limit", |s, m| {
        s.uplink_mtu.as_ref() == Some(&before) && samples(m, &series).eq([f64::from(before.mtu)])
    })?;
    let text = render(&s);
    ensure!(!text.contains("has MTU"), "{text}");
    stops_clean(&lab, &bird, daemon)
}

#[test]
fn a_recreated_downlink_is_reattached_while_bgp_stays_up() -> Result<()> {
    if !privileged("daemon_uplink::a_recreated_downlink_is_reattached_while_bgp_stays_up") {
        return Ok(());
    }
    let lab = Lab::two_arm(1, NODE_BIN)?;
    let (bird, mut daemon) = gateway(&lab, Arms::Two, &[])?;
    let session = bird.protocol("gw1")?;
    let topology = two_arm_topology(1, 3);
    let since = daemon.log_len();
    let old = delete(&lab, &topology, &bird, &daemon, GW_DOWNLINK)?;
    recreated(&lab, &topology, GW_DOWNLINK, old)?;
    healed(&lab, &bird, &mut daemon, GW_DOWNLINK, since)?;
    // The session over the uplink never went down: its last state change is the same.
    ensure!(
        same_session(&bird.protocol("gw1")?, &session),
        "the BGP session changed state: {session} -> {}",
        bird.protocol("gw1")?
    );
    stops_clean(&lab, &bird, daemon)
}

#[test]
fn a_foreign_xdp_program_on_the_recreated_uplink_is_left_alone() -> Result<()> {
    if !privileged("daemon_uplink::a_foreign_xdp_program_on_the_recreated_uplink_is_left_alone") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    // Debug lines of the packet path too: the repeated failures are logged at that level.
    let (bird, mut daemon) = gateway(&lab, Arms::One, &["env", DEBUG_FORWARDING])?;
    let gw1 = lab.ns("gw1");
    let bin = dsrgate_bin()?;
    let decap = |verb: &str| -> Result<()> {
        let bin = bin.to_str().context("binary path")?;
        gw1.exec(&[bin, "decap", verb, "--iface", GW_UPLINK])
            .map(drop)
    };

    // While the daemon is stopped, the uplink is re-created and someone else's program
    // (the node decapsulator) attached to it before the daemon can look.
    let topology = dsr_topology(1, 3);
    let old = gw1.ifindex(GW_UPLINK)?;
    let since = daemon.log_len();
    daemon.signal(libc::SIGSTOP)?;
    let foreign = topology
        .unlink(&lab.net, "gw1", GW_UPLINK)
        .and_then(|()| recreated(&lab, &topology, GW_UPLINK, old))
        .and_then(|()| decap("attach"));
    daemon.signal(libc::SIGCONT)?;
    foreign?;

    // Every attempt fails, and the program stays: the one the decap command removes. The
    // error is logged at error level once, its repeats at debug.
    let failed = format!("re-attaching to {GW_UPLINK} failed; retrying every 5s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.log()[since..].matches(&failed).count() < 2 {
        if Instant::now() > deadline {
            bail!("fewer than 2 failed attempts:\n{}", daemon.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.log();
    let errors: Vec<&str> = log[since..]
        .lines()
        .filter(|l| l.contains(&failed) && l.contains(" ERROR "))
        .collect();
    ensure!(
        errors.len() == 1,
        "{} failures at error level, not 1:\n{log}",
        errors.len()
    );
    eprintln!("{}", errors[0]);
    // Refused before our program is loaded, naming the one that is there.
    ensure!(
        errors[0].contains(&format!(
            "{GW_UPLINK} runs XDP program \\\"xdp_decap\\\" (id "
        )),
        "the error does not name the program: {}",
        errors[0]
    );
    // BGP runs over the new uplink, but the VIP stays withdrawn.
    let deadline = Instant::now() + BACK;
    while !bird.protocol("gw1")?.contains("Established") {
        if Instant::now() > deadline {
            bail!("no BGP session: {}", bird.protocol("gw1")?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        bird.route(PREFIX4)?.is_none(),
        "announced while another program holds the uplink"
    );
    let since = daemon.log_len();
    decap("detach").context("the foreign program was replaced")?;

    healed(&lab, &bird, &mut daemon, GW_UPLINK, since)?;
    stops_clean(&lab, &bird, daemon)
}

/// Sets the channels (RX and TX queues) of gw1's uplink, as a network manager or an
/// operator's `ethtool -L` does.
fn channels(gw1: &Netns, queues: u32) -> Result<()> {
    let n = queues.to_string();
    gw1.exec(&["ethtool", "-L", GW_UPLINK, "rx", &n, "tx", &n])
        .map(drop)
}

#[test]
fn a_recreated_uplink_is_rebuilt_once_up_and_again_when_its_queues_change() -> Result<()> {
    if !privileged(
        "daemon_uplink::a_recreated_uplink_is_rebuilt_once_up_and_again_when_its_queues_change",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let (bird, mut daemon) = gateway(&lab, Arms::One, &[])?;
    let gw1 = lab.ns("gw1");
    // The uplink comes back with room for two RX queues and its link not yet up (its peer
    // on the router is down: no carrier), and is given one queue, while the daemon is
    // stopped, so that it first sees the uplink so.
    let mut topology = dsr_topology(1, 3);
    let link = topology
        .links
        .iter_mut()
        .find(|l| l.a.ns.as_deref() == Some("gw1") && l.a.ifname == GW_UPLINK)
        .context("no gw1 uplink in the topology")?;
    link.a.queues = Some(2);
    let peer = link.b.clone();
    let peer_ns = lab.ns(peer.ns.as_deref().context("the peer's namespace")?);
    let carrier = |state: &str| {
        peer_ns
            .ip(&["link", "set", "dev", &peer.ifname, state])
            .map(drop)
    };
    let old = gw1.ifindex(GW_UPLINK)?;
    let since = daemon.log_len();
    daemon.signal(libc::SIGSTOP)?;
    let changed = topology
        .unlink(&lab.net, "gw1", GW_UPLINK)
        .and_then(|()| recreated(&lab, &topology, GW_UPLINK, old))
        .and_then(|()| channels(gw1, 1))
        .and_then(|()| carrier("down"));
    daemon.signal(libc::SIGCONT)?;
    changed?;

    // No rebuild while the link is down; one once it is up.
    daemon.wait_log_after(
        since,
        &[&format!("{GW_UPLINK} is down: waiting for it to come up")],
        Duration::from_secs(10),
    )?;
    let up = daemon.log_len();
    ensure!(
        !daemon.log()[since..up].contains("rebuilding the packet path"),
        "rebuilt while the uplink was down:\n{}",
        daemon.log()
    );
    carrier("up")?;
    healed(&lab, &bird, &mut daemon, GW_UPLINK, up)?;
    daemon.wait_log_after(
        up,
        &[&format!("re-attached to {GW_UPLINK}"), "workers=1"],
        Duration::ZERO,
    )?;

    // A second RX queue later: rebuilt with a worker for it, without a restart.
    let more = daemon.log_len();
    channels(gw1, 2)?;
    daemon.wait_log_after(
        more,
        &[
            &format!("re-attaching to {GW_UPLINK}: rebuilding the packet path"),
            "2 RX queues, the workers were started for 1",
        ],
        Duration::from_secs(15),
    )?;
    daemon.wait_log_after(
        more,
        &[&format!("re-attached to {GW_UPLINK}"), "workers=2"],
        Duration::from_secs(15),
    )?;
    bird.wait_route(PREFIX4, true, BACK)?;
    lab.get_many(5)?;
    stops_clean(&lab, &bird, daemon)
}
