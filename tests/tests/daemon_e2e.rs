//! `dsrgate run` end to end: the real binary on a gateway namespace, BIRD 2 as the router,
//! nodes with the XDP decapsulator and `dsrgate-node`, and real TCP from a client.
//!
//! Topology ([`dsr_topology`]): client ── router (BIRD, AS 65000) ── fabric ── gw1 (gw2)
//! and node1..node3. The router learns the VIP only from the gateways' BGP sessions.

mod api;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dsrgate_tests::bird::{kernel_route, neighbor, Bird};
use dsrgate_tests::daemon::{
    check_client, connect, node_of, request, wait_routed_via, Daemon, GatewayConfig, Lab, PREFIX4,
};
use dsrgate_tests::netns::{fabric4, gateway_host, node_host, Netns, GW_UPLINK, VIP4};
use dsrgate_tests::require_privileges_with;

use api::{metrics, reloads, status, wait_status};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");

fn privileged(what: &str) -> bool {
    require_privileges_with(what, &["bird", "birdc"])
}

fn gateway_config(gw: u8) -> GatewayConfig {
    GatewayConfig::new(gw)
}

/// Whether an XDP program is attached to the gateway's uplink in `ns`.
fn xdp_attached(ns: &Netns) -> Result<bool> {
    ns.xdp_attached(GW_UPLINK)
}

/// Fresh GETs in a loop on a background thread until stopped; collects failures.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    ok: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Netns) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let ok = Arc::new(Mutex::new(0));
        let client = Netns::existing(client.name()).expect("client namespace");
        let thread = std::thread::spawn({
            let (stop, failures, ok) = (stop.clone(), failures.clone(), ok.clone());
            move || {
                // Bounded: at most 20 000 requests, each bounded by its timeouts.
                for i in 0..20_000 {
                    // Relaxed: the flag carries no data; the results come back under their
                    // mutexes after `join`.
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let started = Instant::now();
                    let r = connect(&client, Duration::from_secs(2))
                        .and_then(|mut s| request(&mut s, true))
                        .and_then(|body| check_client(&body));
                    match r {
                        Ok(()) => *ok.lock().unwrap() += 1,
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("request {i} after {:?}: {e:#}", started.elapsed())),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Load {
            stop,
            failures,
            ok,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (successes, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ok = *self.ok.lock().unwrap();
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (ok, failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn announcement_follows_backend_health() -> Result<()> {
    if !privileged("daemon_e2e::announcement_follows_backend_health") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let router = lab.ns("router");
    let cfg = gateway_config(1);
    let (bird, daemon) = lab.one_gateway(&cfg, &[])?;
    // The VIP is announced as soon as one backend is up: wait for all three to hold slots
    // before looking at the spread.
    wait_status(
        lab.ns("gw1"),
        "every backend in the Maglev set",
        Duration::from_secs(10),
        |s| {
            s.vips
                .iter()
                .all(|v| v.backends.iter().all(|b| b.slots > 0))
        },
    )?;

    // Traffic is balanced, and the nodes see the real client.
    let nodes = lab.get_many(30)?;
    let distinct: std::collections::BTreeSet<&String> = nodes.iter().collect();
    assert!(
        distinct.len() >= 2,
        "all 30 connections went to {distinct:?}"
    );

    // Long-lived connections, one per node reached.
    let mut kept: Vec<(String, TcpStream)> = Vec::new();
    for _ in 0..30 {
        let mut s = connect(lab.ns("client"), Duration::from_secs(2))?;
        let node = node_of(&request(&mut s, false)?);
        if !kept.iter().any(|(n, _)| *n == node) {
            kept.push((node, s));
        }
    }

    // node1 fails: it leaves the set, connections on the other nodes carry on, and new
    // connections go only to the others.
    lab.stop_service(1);
    wait_status(lab.ns("gw1"), "node1 down", Duration::from_secs(5), |s| {
        s.vips.iter().all(|v| {
            v.backends
                .iter()
                .any(|b| b.address.to_string() == fabric4(11) && b.slots == 0)
        })
    })?;
    for (node, s) in kept.iter_mut().filter(|(n, _)| n != "node1") {
        let again =
            node_of(&request(s, false).with_context(|| format!("kept connection to {node}"))?);
        assert_eq!(&again, node, "a kept connection moved");
    }
    let after = lab.get_many(20)?;
    assert!(after.iter().all(|n| n != "node1"), "{after:?}");
    assert!(
        bird.route(PREFIX4)?.is_some(),
        "the VIP still has two backends"
    );

    // Every backend fails: the route goes within interval × fall + 1 s.
    let load = Load::start(lab.ns("client"));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    lab.stop_service(2);
    lab.stop_service(3);
    let limit = Duration::from_millis(300) * cfg.fall + Duration::from_secs(1);
    bird.wait_route(PREFIX4, false, limit + Duration::from_secs(5))?;
    let took = t0.elapsed();
    eprintln!("last backend down -> route gone from BIRD after {took:?} (limit {limit:?})");
    assert!(took <= limit, "withdraw took {took:?}, more than {limit:?}");
    let (_, failures) = load.finish();
    eprintln!(
        "{} requests failed while the backends went down (expected)",
        failures.len()
    );
    daemon.wait_log(&["withdrawn: 0 healthy backends"], Duration::from_secs(1))?;
    // Each backend that went down rebuilt the port's Maglev table, logged with the slots
    // that changed backend.
    let moved: Vec<u64> = daemon
        .log()
        .lines()
        .filter(|l| l.contains("maglev table rebuilt") && l.contains("192.0.2.10:80/tcp"))
        .filter_map(|l| {
            l.split("changed_slots=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(moved.iter().any(|&n| n > 0), "rebuilds logged: {moved:?}");

    // One backend comes back: the route returns, traffic flows to it.
    let t0 = Instant::now();
    lab.start_service(2)?;
    wait_routed_via(router, &bird, &[1])?;
    eprintln!("backend up -> route back in BIRD after {:?}", t0.elapsed());
    let back = lab.get_many(10)?;
    assert!(back.iter().all(|n| n == "node2"), "{back:?}");

    // The status shows the traffic: per-VIP and per-backend counters and flows in the
    // worker's table. Workers publish counters on a batch, every 100 ms at most: keep a
    // little traffic going until every node that served port 80 shows its share.
    let served: Vec<String> = distinct
        .iter()
        .map(|n| n.as_str())
        .chain(["node2"])
        .map(|n| fabric4(10 + n.trim_start_matches("node").parse::<u8>().expect("nodeN")))
        .collect();
    let shown = |s: &control::status::Status| {
        s.vips.iter().filter(|v| v.port == 80).all(|v| {
            served.iter().all(|a| {
                v.backends
                    .iter()
                    .any(|b| b.address.to_string() == *a && b.packets > 0)
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = status(lab.ns("gw1"))?;
        if shown(&s) || Instant::now() > deadline {
            break s;
        }
        lab.get_many(1)?;
        std::thread::sleep(Duration::from_millis(50));
    };
    let web = s
        .vips
        .iter()
        .find(|v| v.port == 80)
        .context("no port 80 in status")?;
    assert!(web.packets > 0 && web.bytes > 0, "{web:?}");
    // Per-backend counters: each node that served port 80 shows its traffic, attributed
    // across the snapshots published as nodes went down and came back.
    for a in &served {
        let b = web
            .backends
            .iter()
            .find(|b| b.address.to_string() == *a)
            .with_context(|| format!("{a} not in {web:?}"))?;
        assert!(b.packets > 0 && b.bytes > b.packets, "{a}: {b:?}");
    }
    assert!(
        s.workers.iter().any(|w| w.flow_entries > 0),
        "{:?}",
        s.workers
    );
    // The steering program handed the VIP traffic to the workers, and passed the rest
    // (BGP, ARP, health checks) to the kernel.
    assert!(
        s.steering
            .iter()
            .any(|st| st.redirected > 0 && st.passed > 0),
        "{:?}",
        s.steering
    );
    // `dsrgate status` prints the same as tables.
    let bin = dsrgate_tests::daemon::dsrgate_bin()?;
    let table = lab
        .ns("gw1")
        .exec(&[bin.to_str().context("path")?, "status"])?;
    for want in [
        "VIPs",
        "192.0.2.10:80/tcp",
        "198.51.100.12",
        "BGP peers",
        "Established",
        "Steering",
        "REDIRECTED",
    ] {
        assert!(table.contains(want), "no {want:?} in:\n{table}");
    }
    for l in daemon
        .log()
        .lines()
        .filter(|l| l.contains("snapshot published") || l.contains("first worker batch"))
    {
        eprintln!("{l}");
    }
    Ok(())
}

#[test]
fn sighup_with_a_broken_config_keeps_forwarding_and_sigint_exits_cleanly() -> Result<()> {
    if !privileged(
        "daemon_e2e::sighup_with_a_broken_config_keeps_forwarding_and_sigint_exits_cleanly",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = gateway_config(1);
    let (bird, mut daemon) = lab.one_gateway(&cfg, &[])?;
    lab.get_many(5)?;

    let load = Load::start(lab.ns("client"));
    // A port out of range: rejected, naming the file and the field.
    let broken = cfg.toml().replace("ports = [80, 7]", "ports = [80, 70000]");
    let line = daemon.reload(&broken, Duration::from_secs(5))?;
    assert!(line.contains("config reload rejected"), "{line}");
    assert!(line.contains("vips[0].ports[1]"), "{line}");
    assert!(line.contains("dsrgate.toml"), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.is_running());
    assert!(bird.route(PREFIX4)?.is_some());

    // A valid change is applied while forwarding: the route gets its new MED. The new file
    // also has a VIP without a health check, which is accepted with a warning.
    assert!(!daemon.log().contains("config warning"), "{}", daemon.log());
    cfg.med = Some(50);
    let unchecked = format!(
        "{}\n[[vips]]\naddress = \"{VIP4}\"\nport = 8080\n\n[[vips.backends]]\naddress = \"{}\"\n",
        cfg.toml(),
        fabric4(node_host(1))
    );
    let line = daemon.reload(&unchecked, Duration::from_secs(5))?;
    assert!(line.contains("config reloaded"), "{line}");
    let line = daemon.wait_log(&["config warning"], Duration::from_secs(1))?;
    assert!(
        line.contains("dsrgate.toml") && line.contains("`vips[1].health`: no health check"),
        "{line}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bird
        .route(PREFIX4)?
        .unwrap_or_default()
        .contains("BGP.med: 50")
    {
        if Instant::now() > deadline {
            bail!("MED not updated: {:?}", bird.route(PREFIX4)?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{ok} ok, failures: {failures:#?}");
    assert!(ok > 10, "only {ok} requests in the reload window");
    let text = metrics(lab.ns("gw1"))?;
    assert!(reloads(&text, "error") == 1, "{text}");
    assert!(reloads(&text, "ok") == 1, "{text}");
    // The requests above went through the steering program to a worker.
    let redirected: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("dsrgate_steering_packets_total{") && l.contains("verdict=\"redirected\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(redirected > 0.0, "{text}");

    // A valid config whose BGP listener cannot bind (a passive peer's port is taken)
    // changes nothing, though it also moves the API: the speaker keeps its session, and
    // the API stays where it was.
    let gw1 = lab.ns("gw1");
    let _port_179 = gw1.enter(|| std::net::TcpListener::bind("[::]:179"))??;
    let taken = cfg
        .toml()
        .replace("hold_time = \"6s\"", "hold_time = \"6s\"\npassive = true")
        .replace("127.0.0.1:9180", "127.0.0.1:9181");
    let line = daemon.reload(&taken, Duration::from_secs(10))?;
    assert!(
        line.contains("config reload rejected")
            && line.contains("cannot listen for BGP on [::]:179"),
        "{line}"
    );
    assert!(
        !daemon.log().contains("restarting the speaker"),
        "{}",
        daemon.log()
    );
    bird.wait_route(PREFIX4, true, Duration::from_secs(20))?;
    let text = metrics(gw1)?;
    assert!(reloads(&text, "error") == 2, "{text}");
    assert!(
        api::get(gw1, SocketAddr::from(([127, 0, 0, 1], 9181)), "/metrics")?.is_err(),
        "the API moved to the rejected config's address"
    );

    // SIGINT (Ctrl-C in a terminal) stops the daemon as SIGTERM does: the route goes first,
    // the program stays attached through the drain, then it is detached and the exit is clean.
    assert!(xdp_attached(gw1)?, "no XDP program on gw1 before SIGINT");
    daemon.signal(libc::SIGINT)?;
    bird.wait_route(PREFIX4, false, Duration::from_secs(10))?;
    assert!(
        xdp_attached(gw1)?,
        "detached before the drain ended:\n{}",
        daemon.log()
    );
    daemon.wait_clean_exit(Duration::from_secs(10))?;
    let line = daemon.wait_log(&["shutting down", "signal"], Duration::from_secs(1))?;
    assert!(line.contains("signal=2"), "{line}");
    assert!(
        !xdp_attached(gw1)?,
        "XDP program left attached after SIGINT"
    );
    Ok(())
}

#[test]
fn sigterm_withdraws_before_detaching_while_another_gateway_serves() -> Result<()> {
    if !privileged("daemon_e2e::sigterm_withdraws_before_detaching_while_another_gateway_serves") {
        return Ok(());
    }
    let lab = Lab::new(2, NODE_BIN)?;
    let router = lab.ns("router");
    let bird = Bird::start(router, &[neighbor(1, 65001), neighbor(2, 65001)], "")?;
    let mut gw1 = Daemon::start(lab.ns("gw1"), &gateway_config(1).toml(), &[])?;
    let _gw2 = Daemon::start(lab.ns("gw2"), &gateway_config(2).toml(), &[])?;
    wait_routed_via(router, &bird, &[1, 2])?;
    lab.get_many(10)?;

    let load = Load::start(lab.ns("client"));
    std::thread::sleep(Duration::from_millis(500));
    let xdp_on_gw1 = || xdp_attached(lab.ns("gw1"));
    assert!(xdp_on_gw1()?, "no XDP program on gw1 before the test");
    let via_gw1 = format!("via {} ", fabric4(gateway_host(1)));

    gw1.sigterm_withdraws_then_detaches(
        || Ok(!kernel_route(router, VIP4)?.contains(&via_gw1)),
        || Ok(!xdp_on_gw1()?),
        Duration::from_secs(15),
    )?;
    gw1.wait_clean_exit(Duration::from_secs(10))?;

    // gw2 alone carries the VIP; nothing failed on the way.
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{ok} ok, failures: {failures:#?}");
    assert!(ok > 20, "only {ok} requests during the shutdown");
    let k = kernel_route(router, VIP4)?;
    assert!(
        k.contains(&format!("via {}", fabric4(gateway_host(2)))),
        "{k}"
    );
    Ok(())
}

/// Someone else takes the steering program off the uplink (here `bpftool link detach`):
/// VIP traffic now reaches the kernel, which does not balance it, so the gateway must stop
/// attracting it. The daemon withdraws every VIP and says why, then heals: it attaches the
/// program again, and the VIP is announced and forwarded again.
#[test]
fn steering_detached_from_outside_withdraws_every_vip_until_it_is_back() -> Result<()> {
    // bpftool detaches the program from outside.
    if !require_privileges_with(
        "daemon_e2e::steering_detached_from_outside_withdraws_every_vip_until_it_is_back",
        &["bird", "birdc", "bpftool"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let (bird, mut daemon) = lab.one_gateway(&gateway_config(1), &[])?;
    let gw1 = lab.ns("gw1");
    let withdrawn = bird.withdrawals_received("gw1")?;

    // The program's id from the interface, then the bpf_link holding it (ids are global, so
    // this is our link and no other test's).
    let link = gw1.ip(&["-o", "link", "show", "dev", GW_UPLINK])?;
    let prog: u32 = link
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no XDP program id in {link:?}"))?;
    // `bpftool link show`: one "ID: TYPE  prog PROG_ID" line per link, details indented.
    let out = std::process::Command::new("bpftool")
        .args(["link", "show"])
        .output()?;
    let links = String::from_utf8_lossy(&out.stdout);
    let id: u32 = links
        .lines()
        .find(|l| {
            l.split_whitespace().skip_while(|w| *w != "prog").nth(1) == Some(&prog.to_string())
        })
        .and_then(|l| l.split(':').next()?.trim().parse().ok())
        .with_context(|| format!("no bpf_link for program {prog} in:\n{links}"))?;
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()?;
    ensure!(out.status.success(), "bpftool link detach: {out:?}");

    // The problem is logged with its cause, and the router is sent the withdrawal (counted
    // by BIRD: the route may be back before a look at its table would see it gone).
    let log = daemon.wait_log(
        &["dataplane unhealthy: withdrawing every VIP"],
        Duration::from_secs(10),
    )?;
    assert!(log.contains("XDP program detached from eth0"), "{log}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bird.withdrawals_received("gw1")? == withdrawn {
        ensure!(Instant::now() < deadline, "BIRD was sent no withdrawal");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then it heals: a program of its own again, the route back, traffic forwarded.
    daemon.wait_log(&["re-attached to eth0"], Duration::from_secs(30))?;
    bird.wait_route(PREFIX4, true, Duration::from_secs(30))?;
    assert!(xdp_attached(gw1)?, "no XDP program after the re-attach");
    lab.get_many(5)?;
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}

/// A worker thread that panics cannot heal: its RX queue's VIP traffic would go into a
/// closed socket. The daemon withdraws the VIP, then detaches the steering program, and exits
/// non-zero so that its supervisor restarts it. The panic is a fail point in the worker loop
/// (a test build), set off by the first batch of VIP traffic.
#[test]
fn a_worker_panic_withdraws_then_detaches_and_exits_non_zero() -> Result<()> {
    if !privileged("daemon_e2e::a_worker_panic_withdraws_then_detaches_and_exits_non_zero") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let failpoint = "FAILPOINTS=xsk-worker-batch=panic(injected worker fault)";
    let (bird, mut daemon) = lab.one_gateway(&gateway_config(1), &["env", failpoint])?;
    let gw1 = lab.ns("gw1");
    assert!(xdp_attached(gw1)?, "no XDP program before the fault");
    // The worker dies on this connection's first packet, so it gets no answer.
    assert!(lab.get(Duration::from_secs(2)).is_err());
    daemon.withdraws_then_detaches(
        "a worker panic",
        || Ok(bird.route(PREFIX4)?.is_none()),
        || Ok(!xdp_attached(gw1)?),
        Duration::from_secs(20),
    )?;
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(
        !status.success(),
        "exited with {status} after a worker panic"
    );
    daemon.wait_log(&["injected worker fault"], Duration::from_secs(1))?;
    daemon.wait_log(&["dsrgate failed", "panicked"], Duration::from_secs(1))?;
    Ok(())
}

/// During the drain after SIGTERM (routes withdrawn, flows still forwarded) health checks
/// go on: a backend that fails then leaves the Maglev set, as it would before. A second
/// signal ends the drain.
#[test]
fn a_backend_failing_during_the_drain_leaves_the_tables() -> Result<()> {
    if !privileged("daemon_e2e::a_backend_failing_during_the_drain_leaves_the_tables") {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let mut cfg = gateway_config(1);
    cfg.drain_time = "60s";
    let (bird, mut daemon) = lab.one_gateway(&cfg, &[])?;
    let gw1 = lab.ns("gw1");
    let node1 = fabric4(node_host(1));
    let slots_of_node1 = |s: &control::status::Status| -> u32 {
        s.vips
            .iter()
            .flat_map(|v| &v.backends)
            .filter(|b| b.address.to_string() == node1)
            .map(|b| b.slots)
            .sum()
    };
    wait_status(gw1, "node1 in the tables", Duration::from_secs(10), |s| {
        slots_of_node1(s) > 0
    })?;

    daemon.signal(libc::SIGTERM)?;
    bird.wait_route(PREFIX4, false, Duration::from_secs(10))?;
    daemon.wait_log(&["draining while still forwarding"], Duration::from_secs(5))?;
    lab.stop_service(1);
    wait_status(
        gw1,
        "node1 out of the tables during the drain",
        Duration::from_secs(10),
        |s| slots_of_node1(s) == 0,
    )?;
    assert!(
        daemon.is_running(),
        "the drain ended early:\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_log(
        &["second signal: ending the drain early"],
        Duration::from_secs(5),
    )?;
    daemon.wait_clean_exit(Duration::from_secs(15))
}
