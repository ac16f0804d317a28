//! A VIP address is first announced only once every backend it health-checks has a verdict
//! as the health checker settles it (up, or down after `fall` failures in a row). Announced
//! at the first backend up, a starting gateway (or a VIP a reload adds) published a table of
//! only the backends up so far: the flows that ECMP moved to it reached other backends than
//! on the other gateways, and were reset. Taking one failed probe as a verdict did the same
//! to a backend whose first probe failed by chance.
//!
//! Topology: [`Lab::new`] with one gateway, BIRD on the router, nodes 1-3 all serving.
//! Health: HTTP every 2 s, `rise = 2`, `fall = 5`. The gateway starts with VIP 192.0.2.10
//! on nodes 1-2; a reload adds 192.0.2.11 on nodes 1-3. Nodes 1 and 2 are up already (their
//! probes are shared), node 3 is new, and its server is stopped until its first probe has
//! failed: the code before the hold announced .11 at once, with node 3 not probed yet, and
//! the code that took one failure as a verdict announced it at that failure, without node 3.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use control::status::{Health, Status, VipStatus};
use dsrgate_tests::bird::Bird;
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, SETTLE};
use dsrgate_tests::netns::{fabric4, node_host};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const ADDED: &str = "192.0.2.11";

#[test]
fn a_vip_is_first_announced_with_every_verdict_in() -> Result<()> {
    if !require_privileges_with(
        "daemon_first_verdicts::a_vip_is_first_announced_with_every_verdict_in",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let cfg = GatewayConfig {
        nodes: vec![1, 2],
        health_interval: "2s",
        health_timeout: "1s",
        rise: 2,
        // Room to start node 3's server between its first failed probe and its verdict.
        fall: 5,
        ..GatewayConfig::new(1)
    };
    let _bird = Bird::start(lab.ns("router"), &[lab.bird_neighbor(1, 65001)], "")?;
    let mut daemon = Daemon::start(lab.ns("gw1"), &cfg.toml(), &[])?;
    let (status, _) = first_announced(&lab, "web")?;
    all_up(&status, "web")?;

    // A new address on nodes 1-3, probed as the first VIP is (its probes of nodes 1-2 are
    // the same targets).
    let text = cfg.toml();
    let health = &text[text.find("[vips.health]").context("no health")?..];
    let mut added = format!(
        "[[vips]]\nname = \"added\"\naddress = \"{ADDED}\"\nprotocol = \"tcp\"\nports = [80]\n"
    );
    for n in 1..=3 {
        added += &format!(
            "\n[[vips.backends]]\naddress = \"{}\"\n",
            fabric4(node_host(n))
        );
    }
    added += &format!("\n{health}");
    // Node 3 answers only after its first probe has failed (a server starting late, or a
    // first probe lost): one failure is no verdict, .11 waits for node 3 to be up.
    lab.stop_service(3);
    let line = daemon.reload(&format!("{text}\n{added}"), Duration::from_secs(5))?;
    ensure!(line.contains("config reloaded"), "{line}\n{added}");
    let node3: IpAddr = fabric4(node_host(3)).parse()?;
    let status = first_failure(&lab, "added", node3)?;
    let v = vip(&status, "added").context("no such VIP")?;
    ensure!(
        v.reason.contains("waiting for first health verdicts"),
        "{ADDED} not held after one failed probe of node 3:\n{}",
        control::status::render(&status)
    );
    lab.start_service(3)?;
    let (status, waited) = first_announced(&lab, "added")?;
    all_up(&status, "added")?;
    ensure!(
        waited,
        "never said it waits for verdicts:\n{}",
        control::status::render(&status)
    );
    daemon.wait_log(
        &[ADDED, "first health verdicts in: announcing"],
        Duration::from_secs(1),
    )?;
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}

/// Polls `/status` until VIP `name` is wanted (announced, or about to be): that status, and
/// whether it said before that it waits for the first health verdicts.
fn first_announced(lab: &Lab, name: &str) -> Result<(Status, bool)> {
    let mut waited = false;
    let s = poll_status(lab, &format!("{name} never announced"), |s| {
        let Some(v) = vip(s, name) else {
            return false;
        };
        waited |= v.reason.contains("waiting for first health verdicts");
        v.reason.starts_with("announced") || v.reason.starts_with("wanted")
    })?;
    Ok((s, waited))
}

/// Polls `/status` until VIP `name`'s backend `addr` has failed a probe (down for a reason
/// other than not being probed yet): that status.
fn first_failure(lab: &Lab, name: &str, addr: IpAddr) -> Result<Status> {
    poll_status(lab, &format!("no failed probe of {addr} in {name}"), |s| {
        vip(s, name)
            .and_then(|v| v.backends.iter().find(|b| b.address == addr))
            .is_some_and(|b| {
                b.health == Health::Down
                    && b.health_reason
                        .as_deref()
                        .is_some_and(|r| r != "not probed yet")
            })
    })
}

/// Polls `/status` until `done` holds for it, within [`SETTLE`] (else fails with `what`).
fn poll_status(lab: &Lab, what: &str, mut done: impl FnMut(&Status) -> bool) -> Result<Status> {
    let api: SocketAddr = "127.0.0.1:9180".parse()?;
    let deadline = Instant::now() + SETTLE;
    loop {
        // Not answering yet while the daemon starts.
        let fetched = lab
            .ns("gw1")
            .enter(|| control::status::fetch(api, Duration::from_secs(2)))?;
        if let Ok(s) = fetched {
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{what}:\n{}", control::status::render(&s));
            }
        } else if Instant::now() > deadline {
            bail!("no status: {fetched:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vip<'a>(s: &'a Status, name: &str) -> Option<&'a VipStatus> {
    s.vips.iter().find(|v| v.name == name)
}

/// Every backend of VIP `name` is up: none was left out of its first announced table.
fn all_up(s: &Status, name: &str) -> Result<()> {
    let v = vip(s, name).context("no such VIP")?;
    ensure!(
        v.backends.iter().all(|b| b.health == Health::Up),
        "{name} announced before every backend had a verdict:\n{}",
        control::status::render(s)
    );
    Ok(())
}
