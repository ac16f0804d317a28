//! Running the real `dsrgate` binary in a test topology: finding (and if needed building)
//! it, writing a gateway's config, starting it in a namespace with its log captured, and
//! the node side (decapsulator plus `dsrgate-node`) that the end-to-end tests share.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::bird::{kernel_route, Bird};
use crate::netns::{
    dsr_topology, fabric4, gateway_host, node_host, two_arm_topology, unique_prefix, Arms, Net,
    Netns, Proc, Topology, CLIENT4, GW_DOWNLINK, GW_UPLINK, VIP4,
};

/// The VIP's BGP prefix.
pub const PREFIX4: &str = "192.0.2.10/32";
/// Where [`GatewayConfig::toml`] has the daemon's API listen, in the gateway's namespace.
pub const API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);
/// Session setup, first health rise, first announcement.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The `dsrgate` binary of the profile this test was built with, with its `failpoints`
/// feature. Cargo only builds a package's binaries for that package's own tests, so it is
/// built here once per test process (a no-op when it is fresh), next to the test executable.
pub fn dsrgate_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_dsrgate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Removes the variables cargo set for the running test (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, ...) from a command that runs cargo: build scripts that watch them
/// would otherwise rebuild their crates now, and again at the next ordinary build.
pub fn without_cargo_test_env(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            cmd.env_remove(key);
        }
    }
}

fn build_dsrgate() -> Result<PathBuf> {
    // target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable outside a target directory")?;
    let target_dir = profile_dir
        .parent()
        .context("test executable outside a target directory")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let mut cmd = std::process::Command::new(cargo);
    without_cargo_test_env(&mut cmd);
    cmd.current_dir(workspace)
        // With the fail points some tests inject faults through (`FAILPOINTS`); they do
        // nothing unless that variable names them.
        .args(["build", "--quiet", "-p", "control", "--bin", "dsrgate"])
        .args(["--features", "failpoints"])
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build for dsrgate")?;
    if !status.success() {
        bail!("cargo build -p control --bin dsrgate --features failpoints failed: {status}");
    }
    let bin = profile_dir.join("dsrgate");
    if !bin.exists() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(bin)
}

/// The settings of one gateway's config that the tests vary.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Gateway number (1-based) in [`crate::netns::dsr_topology`] (or its two-arm
    /// variant, see `arms`).
    pub gateway: u8,
    /// One-arm on [`GW_UPLINK`], or two-arm with [`GW_DOWNLINK`] toward the nodes.
    pub arms: Arms,
    /// Node numbers that back the VIP.
    pub nodes: Vec<u8>,
    pub drain_time: &'static str,
    pub health_interval: &'static str,
    pub health_timeout: &'static str,
    pub rise: u32,
    pub fall: u32,
    /// MED of the VIP's route, if any.
    pub med: Option<u32>,
}

impl GatewayConfig {
    /// Gateway `gateway` in front of nodes 1..=3, quick health checks, a short drain.
    pub fn new(gateway: u8) -> GatewayConfig {
        GatewayConfig {
            gateway,
            arms: Arms::One,
            nodes: vec![1, 2, 3],
            drain_time: "2s",
            health_interval: "300ms",
            health_timeout: "200ms",
            rise: 2,
            fall: 2,
            med: None,
        }
    }

    /// The config file: one-arm on [`GW_UPLINK`] (or two-arm, tunnelling out of
    /// [`GW_DOWNLINK`]), peering with BIRD on the router (AS 65000) over the uplink, VIP4 TCP
    /// ports 80 (HTTP, health-checked) and 7 (echo) on the nodes.
    pub fn toml(&self) -> String {
        let me = self.arms.uplink4(gateway_host(self.gateway));
        let interfaces = match self.arms {
            Arms::One => format!("upstream_interface = \"{GW_UPLINK}\""),
            Arms::Two => format!(
                "topology = \"two-arm\"\nupstream_interface = \"{GW_UPLINK}\"\n\
                 downstream_interface = \"{GW_DOWNLINK}\""
            ),
        };
        let mut s = format!(
            r#"[daemon]
drain_time = "{drain}"

[dataplane]
{interfaces}
flow_table_size = 4096

[api]
listen = "{API}"

[bgp]
local_as = 65001
router_id = "{me}"

[[bgp.peers]]
address = "{router}"
remote_as = {router_as}
hold_time = "6s"

[[vips]]
name = "web"
address = "{VIP4}"
protocol = "tcp"
ports = [80, 7]
"#,
            drain = self.drain_time,
            router = self.arms.uplink4(1),
            router_as = crate::bird::ROUTER_AS,
        );
        if let Some(med) = self.med {
            s += &format!("\n[vips.bgp]\nmed = {med}\n");
        }
        for n in &self.nodes {
            s += &format!(
                "\n[[vips.backends]]\naddress = \"{}\"\n",
                fabric4(node_host(*n))
            );
        }
        s += &format!(
            r#"
[vips.health]
type = "http"
port = 80
path = "/"
interval = "{}"
timeout = "{}"
rise = {}
fall = {}
"#,
            self.health_interval, self.health_timeout, self.rise, self.fall
        );
        s
    }
}

/// A `dsrgate run` process in a namespace. Its config and log live in a directory that is
/// removed on drop, after the process is killed.
pub struct Daemon {
    proc: Option<Proc>,
    dir: PathBuf,
}

impl Daemon {
    /// Writes `config` and starts `[wrapper...] dsrgate run --config FILE` in `ns`, with
    /// stderr (the log) going to a file.
    pub fn start(ns: &Netns, config: &str, wrapper: &[&str]) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("dsrgate-daemon-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let mut d = Daemon { proc: None, dir };
        d.write_config(config)?;
        let log = File::create(d.log_path())?;
        let bin = dsrgate_bin()?;
        let bin = bin.to_str().context("binary path")?;
        let config_path = d.config_path();
        let config_path = config_path.to_str().context("config path")?;
        let args: Vec<&str> = wrapper
            .iter()
            .copied()
            .chain([bin, "run", "--config", config_path])
            .collect();
        let mut cmd = ns.command(args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        d.proc = Some(ns.spawn_command(cmd)?);
        Ok(d)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("dsrgate.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dsrgate.log")
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(self.config_path(), text).context("writing the config")
    }

    /// Writes `text` as the config, sends SIGHUP, and returns the log line of the reload's
    /// result (`config reloaded` or `config reload rejected`), waiting up to `timeout`.
    pub fn reload(&self, text: &str, timeout: Duration) -> Result<String> {
        let from = self.log_len();
        self.write_config(text)?;
        self.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(l) = log
                .get(from..)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("config reloaded") || l.contains("config reload rejected"))
            {
                return Ok(l.to_owned());
            }
            ensure!(Instant::now() < deadline, "no reload result:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `needles`; returns it.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        self.wait_log_after(0, needles, timeout)
    }

    /// Where the log's complete lines end now: [`Daemon::wait_log_after`] it to look only
    /// at lines written from here on (a line being written counts as after).
    pub fn log_len(&self) -> usize {
        self.log().rfind('\n').map_or(0, |i| i + 1)
    }

    /// [`Daemon::wait_log`] over the lines from `offset` (a [`Daemon::log_len`]) on, so
    /// that a line an earlier event logged does not count.
    pub fn wait_log_after(
        &self,
        offset: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .log()
                .get(offset..)
                .unwrap_or_default()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Ok(l.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no log line with {needles:?} after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id: the daemon's own, since `ip netns exec` and a wrapper such as
    /// `setpriv` exec rather than fork.
    pub fn pid(&self) -> Result<u32> {
        Ok(self.proc.as_ref().context("daemon already exited")?.pid())
    }

    pub fn signal(&self, sig: i32) -> Result<()> {
        self.proc
            .as_ref()
            .context("daemon already exited")?
            .signal(sig)
    }

    /// Sends SIGTERM and watches the shutdown order (see [`Daemon::withdraws_then_detaches`]).
    pub fn sigterm_withdraws_then_detaches(
        &self,
        withdrawn: impl Fn() -> Result<bool>,
        detached: impl Fn() -> Result<bool>,
        limit: Duration,
    ) -> Result<(Duration, Duration)> {
        self.signal(libc::SIGTERM)?;
        self.withdraws_then_detaches("SIGTERM", withdrawn, detached, limit)
    }

    /// Watches a shutdown that `cause` has begun: polls `withdrawn` (the route is gone at
    /// the router) and `detached` (no XDP program left) until both hold, fails after
    /// `limit` or if the program went first, and returns when each was first seen.
    pub fn withdraws_then_detaches(
        &self,
        cause: &str,
        withdrawn: impl Fn() -> Result<bool>,
        detached: impl Fn() -> Result<bool>,
        limit: Duration,
    ) -> Result<(Duration, Duration)> {
        let t0 = Instant::now();
        let (mut w, mut d) = (None, None);
        while w.is_none() || d.is_none() {
            if w.is_none() && withdrawn()? {
                w = Some(t0.elapsed());
            }
            if d.is_none() && detached()? {
                d = Some(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!(
                    "after {limit:?}: withdrawn {w:?}, detached {d:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (w, d) = (w.unwrap_or_default(), d.unwrap_or_default());
        eprintln!("{cause} -> route gone after {w:?}, XDP detached after {d:?}");
        ensure!(w < d, "detached ({d:?}) before the withdraw ({w:?})");
        Ok((w, d))
    }

    /// Waits for the process to exit on its own, successfully, having logged its last line.
    pub fn wait_clean_exit(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        ensure!(
            status.success(),
            "dsrgate exited with {status}:\n{}",
            self.log()
        );
        self.wait_log(&["dsrgate stopped"], Duration::from_secs(1))?;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let proc = self.proc.as_mut().context("daemon already reaped")?;
        loop {
            if let Some(status) = proc.child().try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "dsrgate still running after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    /// Kills the daemon and prints its log (cargo shows it for failed tests only).
    fn drop(&mut self) {
        drop(self.proc.take());
        eprintln!(
            "--- dsrgate log ({}) ---\n{}",
            self.dir.display(),
            self.log()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Puts the decapsulator on every node's `eth0` (`dsrgate decap attach`); the program
/// stays until the namespace goes.
pub fn attach_decap(net: &Net, nodes: &[u8]) -> Result<()> {
    let bin = dsrgate_bin()?;
    let bin = bin.to_str().context("binary path")?;
    for n in nodes {
        net.ns(&format!("node{n}"))
            .exec(&[bin, "decap", "attach", "--iface", "eth0"])
            .with_context(|| format!("attaching decap on node{n}"))?;
    }
    Ok(())
}

/// Starts `dsrgate-node` (binary `node_bin`) on node `n`: HTTP on 80, echo on 7. Waits
/// until it answers on its own address.
pub fn start_service(net: &Net, node_bin: &str, n: u8) -> Result<Proc> {
    let name = format!("node{n}");
    let ns = net.ns(&name);
    let mut cmd = ns.command(node_bin);
    cmd.args(["--name", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = ns.spawn_command(cmd)?;
    let addr: std::net::SocketAddr = format!("{}:80", fabric4(node_host(n))).parse()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let up = ns.enter(|| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("dsrgate-node on {name} does not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The topology with `gateways` gateways and three nodes, decapsulators attached and a
/// service on every node.
pub struct Lab {
    pub net: Net,
    pub arms: Arms,
    node_bin: String,
    services: RefCell<Vec<Option<Proc>>>,
}

impl Lab {
    /// One-arm gateways ([`dsr_topology`]).
    pub fn new(gateways: u8, node_bin: &str) -> Result<Lab> {
        Lab::build(Arms::One, dsr_topology(gateways, 3), node_bin)
    }

    /// Two-arm gateways ([`two_arm_topology`]).
    pub fn two_arm(gateways: u8, node_bin: &str) -> Result<Lab> {
        Lab::build(Arms::Two, two_arm_topology(gateways, 3), node_bin)
    }

    fn build(arms: Arms, topology: Topology, node_bin: &str) -> Result<Lab> {
        let net = topology.build(&unique_prefix())?;
        attach_decap(&net, &[1, 2, 3])?;
        let services = (1..=3)
            .map(|n| start_service(&net, node_bin, n).map(Some))
            .collect::<Result<_>>()?;
        Ok(Lab {
            net,
            arms,
            node_bin: node_bin.to_owned(),
            services: RefCell::new(services),
        })
    }

    /// BIRD's session toward gateway `gw` (AS `asn`) at its uplink address, for
    /// [`Bird::start`].
    pub fn bird_neighbor(&self, gw: u8, asn: u32) -> (u8, u32, String) {
        (gw, asn, self.arms.uplink4(gateway_host(gw)))
    }

    /// BIRD in the router peered with gateway 1, and `dsrgate` on gateway 1 running
    /// `config` (under `wrapper`, e.g. a capability-dropping one), returned once the router
    /// routes the VIP through it.
    pub fn one_gateway(
        &self,
        config: &GatewayConfig,
        wrapper: &[&str],
    ) -> Result<(Bird<'_>, Daemon)> {
        let bird = Bird::start(self.ns("router"), &[self.bird_neighbor(1, 65001)], "")?;
        let daemon = Daemon::start(self.ns("gw1"), &config.toml(), wrapper)?;
        self.wait_routed_via(&bird, &[1])?;
        Ok((bird, daemon))
    }

    /// [`wait_routed_via`] for this lab's cabling.
    pub fn wait_routed_via(&self, bird: &Bird<'_>, gateways: &[u8]) -> Result<()> {
        wait_routed_over(self.ns("router"), bird, self.arms, gateways)
    }

    pub fn ns(&self, name: &str) -> &Netns {
        self.net.ns(name)
    }

    /// A static route of the router's own for the VIP via gateway `gw`, worse (metric 4000)
    /// than BIRD's: once BGP has withdrawn the VIP it still sends the VIP to `gw`, as a
    /// router that has not converged yet does.
    pub fn stale_route(&self, gw: u8) -> Result<()> {
        let via = self.arms.uplink4(gateway_host(gw));
        self.ns("router").ip(&[
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &via,
            "metric",
            "4000",
        ])?;
        Ok(())
    }

    pub fn stop_service(&self, n: u8) {
        self.services.borrow_mut()[usize::from(n) - 1] = None;
    }

    pub fn start_service(&self, n: u8) -> Result<()> {
        let p = start_service(&self.net, &self.node_bin, n)?;
        self.services.borrow_mut()[usize::from(n) - 1] = Some(p);
        Ok(())
    }

    /// A long-lived connection from the client, its first answer checked: the connection
    /// and the node that answered (`nodeN`) with its number.
    pub fn pinned_connection(&self) -> Result<(TcpStream, String, u8)> {
        let mut flow = connect(self.ns("client"), Duration::from_secs(2))?;
        let body = request(&mut flow, false)?;
        check_client(&body)?;
        let node = node_of(&body);
        let n = node
            .strip_prefix("node")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no node number in {body:?}"))?;
        Ok((flow, node, n))
    }

    /// What a draining `node` does: it keeps its open connection `flow`, several requests
    /// over, while new connections go to the other nodes. `since` says what began the
    /// drain, for the error.
    pub fn drains(&self, flow: &mut TcpStream, node: &str, since: &str) -> Result<()> {
        for i in 0..5 {
            let body = request(flow, false)
                .with_context(|| format!("request {i} on the open connection {since}"))?;
            check_client(&body)?;
            ensure!(
                node_of(&body) == node,
                "the open connection moved from {node}: {body:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let nodes = self.get_many(12)?;
        ensure!(
            !nodes.iter().any(|n| n == node),
            "a new connection went to the draining {node}: {nodes:?}"
        );
        Ok(())
    }

    /// One fresh connection from the client: `GET /`, the body (`node=.. client=..`).
    pub fn get(&self, timeout: Duration) -> Result<String> {
        let mut s = connect(self.ns("client"), timeout)?;
        request(&mut s, true)
    }

    /// `count` fresh GETs that must all succeed; the nodes that answered, in order.
    pub fn get_many(&self, count: usize) -> Result<Vec<String>> {
        (0..count)
            .map(|i| {
                let body = self
                    .get(Duration::from_secs(2))
                    .with_context(|| format!("GET {i} of {count}"))?;
                check_client(&body)?;
                Ok(node_of(&body))
            })
            .collect()
    }
}

pub fn connect(client: &Netns, timeout: Duration) -> Result<TcpStream> {
    let addr: SocketAddr = format!("{VIP4}:80").parse()?;
    let s = client.enter(|| TcpStream::connect_timeout(&addr, timeout))??;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One HTTP/1.1 request on `s`; returns the body.
pub fn request(s: &mut TcpStream, close: bool) -> Result<String> {
    let head = if close {
        "GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nHost: vip\r\n\r\n"
    };
    s.write_all(head.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn node_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .unwrap_or_default()
        .to_owned()
}

/// DSR keeps the client's address: the node saw the real client, not the gateway.
pub fn check_client(body: &str) -> Result<()> {
    if !body.contains(&format!("client={CLIENT4}:")) {
        bail!("the node did not see the client's address: {body:?}");
    }
    Ok(())
}

/// Waits until BIRD has the VIP and the router's kernel routes it via exactly `gateways`
/// (one-arm).
pub fn wait_routed_via(router: &Netns, bird: &Bird<'_>, gateways: &[u8]) -> Result<()> {
    wait_routed_over(router, bird, Arms::One, gateways)
}

/// [`wait_routed_via`] with the gateways cabled as `arms`: the router's route goes via
/// each gateway's uplink address.
pub fn wait_routed_over(
    router: &Netns,
    bird: &Bird<'_>,
    arms: Arms,
    gateways: &[u8],
) -> Result<()> {
    bird.wait_route(PREFIX4, true, SETTLE)?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let k = kernel_route(router, VIP4)?;
        let all = gateways
            .iter()
            .all(|g| k.contains(&format!("via {} ", arms.uplink4(gateway_host(*g)))));
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "router's route to {VIP4} is {k:?}, wanted via gateways {gateways:?}:\n{}",
                bird.birdc(&["show", "route", "all"])?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
