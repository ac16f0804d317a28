//! The BGP speaker's thread ending under a running daemon, set off by fail points of a test
//! build (`FAILPOINTS`): outside a reload, the daemon fails its control loop (withdrawn,
//! detached, non-zero exit) instead of running on with no session and a status that still
//! shows the last one; during a `[bgp]` reload whose new speaker cannot start either (its
//! passive peer wants the API's port), it falls back to a speaker with the running
//! settings, rejects the reload, and the route comes back.
//!
//! Topology ([`Lab`]): client ── router (BIRD 2) ── fabric ── gw1 and node1..node3.

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
fn a_speaker_that_ends_stops_the_daemon() -> Result<()> {
    if !privileged("daemon_speaker_fault::a_speaker_that_ends_stops_the_daemon") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = GatewayConfig::new(1);
    // The first route set (the VIP announced) passes; the next one ends the speaker.
    let failpoint = "FAILPOINTS=bgp-speaker-set-routes=1*off->panic(injected speaker fault)";
    let (bird, mut daemon) = lab.one_gateway(&cfg, &["env", failpoint])?;
    lab.get_many(3)?;

    // A reload that changes the route's attributes sends a new route set.
    cfg.med = Some(50);
    daemon.write_config(&cfg.toml())?;
    daemon.signal(libc::SIGHUP)?;
    daemon.wait_log(
        &["control loop failed", "the BGP speaker thread ended"],
        Duration::from_secs(5),
    )?;
    bird.wait_route(PREFIX4, false, Duration::from_secs(5))?;
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(!status.success(), "exited with {status}");
    ensure!(
        !lab.ns("gw1").xdp_attached(GW_UPLINK)?,
        "left attached:\n{}",
        daemon.log()
    );
    daemon.wait_log(&["injected speaker fault"], Duration::from_secs(1))?;
    Ok(())
}

#[test]
fn a_speaker_that_ends_on_reload_falls_back_to_the_running_settings() -> Result<()> {
    if !privileged(
        "daemon_speaker_fault::a_speaker_that_ends_on_reload_falls_back_to_the_running_settings",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let cfg = GatewayConfig::new(1);
    let failpoint = "FAILPOINTS=bgp-speaker-reconfigure=panic(injected speaker fault)";
    let (bird, daemon) = lab.one_gateway(&cfg, &["env", failpoint])?;
    let config = cfg.toml();

    // The peer made passive on the API's port: reconfiguring ends the speaker, a new one
    // with these settings cannot listen, so one with the running settings takes over.
    let taken = config.replace(
        "hold_time = \"6s\"",
        "hold_time = \"6s\"\npassive = true\nport = 9180",
    );
    ensure!(taken.contains("127.0.0.1:9180"), "{taken}");
    daemon.write_config(&taken)?;
    daemon.signal(libc::SIGHUP)?;
    for line in [
        "injected speaker fault",
        "restarting the speaker",
        "config reload rejected",
    ] {
        daemon.wait_log(&[line], Duration::from_secs(10))?;
    }
    lab.wait_routed_via(&bird, &[1])?;
    ensure!(
        bird.protocol("gw1")?.ends_with("Established"),
        "{}",
        bird.protocol("gw1")?
    );
    lab.get_many(3)?;
    ensure!(
        !daemon.log().contains("control loop failed"),
        "{}",
        daemon.log()
    );

    // The running settings stay in force: a clean reload still goes through.
    let line = daemon.reload(&config, Duration::from_secs(5))?;
    ensure!(line.contains("config reloaded"), "{line}");
    Ok(())
}
