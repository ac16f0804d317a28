//! A reload that changes what only a restart applies (the interfaces, the worker cores,
//! the flow table's size) is refused whole: the error names each such field and says a
//! restart applies it, the reload counts as an error, and nothing else in that file is
//! applied (here, a new API address). The running config stays, so a later reload that
//! keeps those settings goes through.
//!
//! Topology: [`Lab::new`] with one gateway; no BIRD.

mod api;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab};
use dsrgate_tests::netns::{Netns, GW_UPLINK};
use dsrgate_tests::require_privileges;

use api::reloads;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const WAIT: Duration = Duration::from_secs(30);

/// Whether the API answers `/healthz` at `addr` from inside `gw`.
fn answers(gw: &Netns, addr: &str) -> Result<bool> {
    let addr: SocketAddr = addr.parse()?;
    Ok(api::get(gw, addr, "/healthz")?.is_ok_and(|r| r.status == 200))
}

#[test]
fn a_reload_that_needs_a_restart_is_refused_whole() -> Result<()> {
    if !require_privileges("daemon_reload_restart::a_reload_that_needs_a_restart_is_refused_whole")
    {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let toml = GatewayConfig::new(1).toml();
    let mut daemon = Daemon::start(gw, &toml, &[])?;
    daemon.wait_log(&["dsrgate running"], WAIT)?;
    let path = daemon.config_path().display().to_string();
    let moved = toml.replace("127.0.0.1:9180", "127.0.0.1:9181");

    // A bigger flow table, and the API elsewhere.
    let line = daemon.reload(
        &moved.replace("flow_table_size = 4096", "flow_table_size = 8192"),
        WAIT,
    )?;
    ensure!(
        line.contains("config reload rejected")
            && line.contains(&format!("{path}: `dataplane.flow_table_size`: changed from 4096 to 8192: only a restart applies it")),
        "{line}"
    );
    ensure!(
        answers(gw, "127.0.0.1:9180")?,
        "the API left its running address"
    );
    ensure!(!answers(gw, "127.0.0.1:9181")?, "the API moved");

    // Another uplink (the gateway's loopback exists), and the API elsewhere.
    let line = daemon.reload(
        &moved.replace(
            &format!("upstream_interface = \"{GW_UPLINK}\""),
            "upstream_interface = \"lo\"",
        ),
        WAIT,
    )?;
    ensure!(
        line.contains("config reload rejected")
            && line.contains(&format!(
                "`dataplane.upstream_interface`: changed from \\\"{GW_UPLINK}\\\" to \\\"lo\\\""
            ))
            && !line.contains("flow_table_size"),
        "{line}"
    );
    ensure!(!answers(gw, "127.0.0.1:9181")?, "the API moved");

    // The same move without a restart-only change goes through.
    let line = daemon.reload(&moved, WAIT)?;
    ensure!(line.contains("config reloaded"), "{line}");
    ensure!(answers(gw, "127.0.0.1:9181")?, "the API did not move");

    let text = api::metrics_at(gw, "127.0.0.1:9181".parse()?)?;
    ensure!(
        reloads(&text, "ok") == 1 && reloads(&text, "error") == 2,
        "{text}"
    );
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
