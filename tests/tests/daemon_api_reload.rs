//! A reload that moves the API between addresses that overlap on one port
//! (`127.0.0.1:9180` and `0.0.0.0:9180`, which Linux does not bind at once) is applied, and
//! the API answers on the new address. One that moved the API and then fails (a BGP
//! listener that cannot bind) moves it back.
//!
//! Topology: [`Lab::new`] with one gateway; no BIRD.

mod api;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, API};
use dsrgate_tests::netns::{gateway_host, Arms, Netns};
use dsrgate_tests::require_privileges;

use api::reloads;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const WAIT: Duration = Duration::from_secs(30);

/// `GET /healthz` at `addr` from inside `gw`.
fn healthz(gw: &Netns, addr: SocketAddr) -> Result<u16> {
    Ok(api::get(gw, addr, "/healthz")??.status)
}

/// Rewrites the config with `api.listen = listen`, sends SIGHUP, and returns the log line
/// of the reload's result.
fn reload(daemon: &Daemon, cfg: &GatewayConfig, listen: &str) -> Result<String> {
    daemon.reload(&with_api(&cfg.toml(), listen), WAIT)
}

fn with_api(toml: &str, listen: &str) -> String {
    toml.replace(
        "listen = \"127.0.0.1:9180\"",
        &format!("listen = \"{listen}\""),
    )
}

#[test]
fn the_api_moves_between_overlapping_addresses_on_one_port() -> Result<()> {
    if !require_privileges(
        "daemon_api_reload::the_api_moves_between_overlapping_addresses_on_one_port",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let cfg = GatewayConfig::new(1);
    let mut daemon = Daemon::start(gw, &cfg.toml(), &[])?;
    daemon.wait_log(&["dsrgate running"], WAIT)?;
    let loopback = API;
    // The gateway's uplink address: only the wildcard address serves it.
    let uplink: SocketAddr = format!("{}:9180", Arms::One.uplink4(gateway_host(1))).parse()?;
    ensure!(healthz(gw, loopback)? == 200);
    ensure!(healthz(gw, uplink).is_err(), "the API answers on {uplink}");

    // The API moves, then the BGP change fails (its passive peer wants the port the API
    // has just taken): rejected whole, and the API is back where it was.
    let passive = with_api(&cfg.toml(), "0.0.0.0:9180").replace(
        "hold_time = \"6s\"",
        "hold_time = \"6s\"\npassive = true\nport = 9180",
    );
    let line = daemon.reload(&passive, WAIT)?;
    ensure!(
        line.contains("config reload rejected") && line.contains("9180"),
        "{line}"
    );
    ensure!(healthz(gw, loopback)? == 200);
    ensure!(healthz(gw, uplink).is_err(), "the API answers on {uplink}");

    let line = reload(&daemon, &cfg, "0.0.0.0:9180")?;
    ensure!(line.contains("config reloaded"), "{line}");
    ensure!(healthz(gw, uplink)? == 200);
    ensure!(healthz(gw, loopback)? == 200);

    // And back.
    let line = reload(&daemon, &cfg, "127.0.0.1:9180")?;
    ensure!(line.contains("config reloaded"), "{line}");
    ensure!(healthz(gw, loopback)? == 200);
    ensure!(
        healthz(gw, uplink).is_err(),
        "the API still answers on {uplink}"
    );

    let text = api::metrics(gw)?;
    ensure!(
        reloads(&text, "ok") == 2 && reloads(&text, "error") == 1,
        "{text}"
    );
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
