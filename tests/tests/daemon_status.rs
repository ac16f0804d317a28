//! What `/status` says about a backend that never comes up: why it is down (the probe's
//! failure), not "not probed yet", and the log says it once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
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
    let api: SocketAddr = "127.0.0.1:9180".parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let s = lab
            .ns("gw1")
            .enter(|| control::status::fetch(api, Duration::from_secs(2)))??;
        let b = s
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.address.to_string() == node3)
            .cloned();
        if let Some(b) = b.filter(|b| b.health_reason.as_deref() != Some("not probed yet")) {
            break b;
        }
        if Instant::now() > deadline {
            bail!("node3 still not probed:\n{}", control::status::render(&s));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        health.health == control::status::Health::Down
            && health.health_reason.as_deref() == Some("connection refused"),
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
