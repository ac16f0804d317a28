//! What `/status` says about a backend that never comes up: why it is down (the probe's
//! failure), not "not probed yet", and the log says it once.

mod api;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use control::status::{BackendStatus, Status};
use dsrgate_tests::daemon::{GatewayConfig, Lab};
use dsrgate_tests::netns::{fabric4, node_host};
use dsrgate_tests::require_privileges_with;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

#[test]
fn a_backend_that_never_comes_up_shows_why() -> Result<()> {
    if !require_privileges_with(
        "daemon_status::a_backend_that_never_comes_up_shows_why",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    lab.stop_service(3);
    let (_bird, mut daemon) = lab.one_gateway(&GatewayConfig::new(1), &[])?;
    let node3 = fabric4(node_host(3));
    let node3_in = |s: &Status| -> Option<BackendStatus> {
        s.vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.address.to_string() == node3)
            .cloned()
    };
    let s = api::wait_status(
        lab.ns("gw1"),
        "node3 probed",
        Duration::from_secs(10),
        |s| node3_in(s).is_some_and(|b| b.health_reason.as_deref() != Some("not probed yet")),
    )?;
    let health = node3_in(&s).context("node3 not in the status")?;
    ensure!(
        health.health == control::status::Health::Down
            // Once `fall` probes went unanswered, with "; no answer to 2 probes in a row".
            && health
                .health_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("connection refused")),
        "{health:?}"
    );
    // Said once, though it keeps failing.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    let said = log
        .lines()
        .filter(|l| l.contains("backend still down") && l.contains(&node3))
        .count();
    ensure!(said == 1, "{said} times:\n{log}");
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
