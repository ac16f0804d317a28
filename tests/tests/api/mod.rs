//! The daemon's HTTP API as the daemon tests read it, from inside the gateway's namespace:
//! `/status`, `/metrics`, and waits for them to show something (the control loop refreshes
//! them about once a second). Here and not in `dsrgate_tests::daemon` because it decodes
//! with `control`, which that library does not depend on.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use control::api::HttpResponse;
use control::status::{render, Status};
use dsrgate_tests::daemon::API;
use dsrgate_tests::netns::Netns;
use dsrgate_tests::poll;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` from `addr` inside `gw`: `Err` if the namespace cannot be entered, `Ok(Err)`
/// if nothing answers there.
pub fn get(gw: &Netns, addr: SocketAddr, path: &str) -> Result<io::Result<HttpResponse>> {
    gw.enter(|| control::api::get(addr, path, TIMEOUT))
}

/// The daemon's `/status`.
pub fn status(gw: &Netns) -> Result<Status> {
    gw.enter(|| control::status::fetch(API, TIMEOUT))?
}

/// `/metrics` from the API at `addr`, as text.
pub fn metrics_at(gw: &Netns, addr: SocketAddr) -> Result<String> {
    let r = get(gw, addr, "/metrics")??;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// The daemon's `/metrics`, as text.
pub fn metrics(gw: &Netns) -> Result<String> {
    metrics_at(gw, API)
}

/// The status once `ok` holds for it; after `timeout` an error naming `what`, with the
/// last status rendered as `dsrgate status` prints it.
pub fn wait_status(
    gw: &Netns,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Status) -> bool,
) -> Result<Status> {
    poll(what, timeout, || status(gw), ok, render)
}

/// The values of the samples in `metrics` whose series starts with `prefix`.
pub fn samples<'m>(metrics: &'m str, prefix: &'m str) -> impl Iterator<Item = f64> + 'm {
    metrics
        .lines()
        .filter(move |l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The reloads with `result` (`ok` or `error`) that `metrics` counts.
pub fn reloads(metrics: &str, result: &str) -> u64 {
    let series = format!("dsrgate_config_reloads_total{{result=\"{result}\"}} ");
    samples(metrics, &series).sum::<f64>() as u64
}
