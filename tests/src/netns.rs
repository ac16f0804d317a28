//! Network namespaces, veth links, bridges, addresses and routes: the one topology builder
//! shared by the integration tests, the benchmarks and the lab (`vagrant/lab.sh` drives it
//! through the `dsrgate-topo` binary).
//!
//! A [`Topology`] is plain data (namespaces with their sysctls, addresses and routes,
//! bridges, veth links) using short logical names; [`Topology::build`] creates it under a
//! name prefix and returns a [`Net`] guard that deletes every namespace (killing the
//! processes inside) when dropped. Tests use [`unique_prefix`] so they run in parallel;
//! the lab uses the fixed prefix `lab-`.
//!
//! Everything is done by shelling out to `ip` (and `ethtool`), which is robust and easy
//! to reproduce by hand. Interface names inside a namespace are local to it, so they can
//! be short and fixed (`eth0`); only links into the root namespace get prefixed names.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Linux limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// A prefix no other test in this or a concurrent test process uses: `d<pid>x<n>-`.
///
/// The first call also deletes what killed test processes left: every `d<pid>x<n>-`
/// namespace whose pid is not running (its processes are killed with it), and those of
/// this process's own pid (a dead process had it before; this one has made none yet).
pub fn unique_prefix() -> String {
    // Relaxed is enough: the counter only has to hand out distinct values.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_dead_test_namespaces);
    format!(
        "d{}x{}-",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid in a [`unique_prefix`] namespace name (`d<pid>x<n>-...`).
fn test_namespace_pid(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix('d')?.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// See [`unique_prefix`]. Best effort: errors (for example without root) are ignored.
fn sweep_dead_test_namespaces() {
    let Ok(names) = list_namespaces() else {
        return;
    };
    let me = std::process::id();
    for name in names {
        if let Some(pid) = test_namespace_pid(&name) {
            if pid == me || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = destroy_namespace(&name);
            }
        }
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// One network namespace, deleted on drop (after killing every process inside it).
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `/run/netns/<name>`; fails if it exists already.
    pub fn create(name: &str) -> Result<Netns> {
        ensure!(
            !name.is_empty() && !name.contains('/'),
            "bad namespace name {name:?}"
        );
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
            owned: true,
        };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        // Test links are private, so duplicate addresses cannot happen: skip DAD for the
        // link-local addresses too (global ones get `nodad`), or the first IPv6 packets
        // after a build race it.
        for conf in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
        }
        Ok(ns)
    }

    /// A handle on an existing namespace that is NOT deleted on drop.
    pub fn existing(name: &str) -> Result<Netns> {
        ensure!(
            std::path::Path::new("/run/netns").join(name).exists(),
            "no network namespace {name:?}"
        );
        Ok(Netns {
            name: name.to_owned(),
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec`).
    /// Note that `ip netns exec` gives the program its own mount namespace with a fresh
    /// `/sys`.
    ///
    /// The program is killed (SIGKILL) when the thread that spawned it exits
    /// (`PR_SET_PDEATHSIG`; `ip netns exec` execs the program, which keeps the setting), so
    /// a test process that is killed (Ctrl-C, a CI timeout) leaves no daemon or BIRD
    /// running. A background process must therefore be spawned by the thread that owns
    /// its guard ([`Proc`]), as the tests do, not by a short-lived helper thread.
    pub fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        // SAFETY: getpid is async-signal-safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, raise); it allocates nothing.
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody is left to
                // deliver the signal, so take it now.
                if libc::getppid() != parent {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }
        c
    }

    /// Runs `args` inside the namespace and returns stdout; fails on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
        run(self.command(prog).args(rest))
    }

    /// Runs `args` inside the namespace and returns the raw output, whatever the status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let mut cmd = self.command(prog);
        cmd.args(rest).stdin(Stdio::null());
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    /// Starts `args` in the background inside the namespace (stdout discarded, stderr
    /// inherited). The returned guard kills it on drop.
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let mut cmd = self.command(prog);
        cmd.args(rest).stdin(Stdio::null()).stdout(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Starts a command made with [`Netns::command`] (own stdio choices); killed on drop.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Proc { child })
    }

    /// Writes a sysctl (`net.ipv4.ip_forward` style key) in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        ensure!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "bad sysctl key {key:?}"
        );
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // `sh` rather than `sysctl`: procps is not installed everywhere.
        self.exec(&["sh", "-c", &format!("echo '{value}' > {path}")])
            .with_context(|| format!("setting {key}={value} in {}", self.name))?;
        Ok(())
    }

    /// Turns off TX checksum offload: a kernel socket sending on a veth otherwise leaves
    /// partial checksums, which an XDP program or AF_XDP socket then sees as wrong.
    pub fn tx_offload_off(&self, ifname: &str) -> Result<()> {
        self.exec(&["ethtool", "-K", ifname, "tx", "off"])?;
        Ok(())
    }

    /// The interface index of `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let line = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let idx = line.split(':').next().unwrap_or_default().trim();
        idx.parse()
            .with_context(|| format!("parsing ifindex from {line:?}"))
    }

    /// The MAC address of `ifname` inside this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let line = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let text = line
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(|| anyhow!("no link/ether in {line:?}"))?;
        parse_mac(text)
    }

    /// Whether an XDP program is attached to `ifname` (in any mode).
    pub fn xdp_attached(&self, ifname: &str) -> Result<bool> {
        let link = self.ip(&["-o", "link", "show", "dev", ifname])?;
        Ok(link.contains(" xdp") || link.contains("prog/xdp"))
    }

    /// A kernel counter of `ifname` (`tx_packets`, `rx_bytes`, ... in
    /// `/sys/class/net/IF/statistics/`).
    pub fn link_stat(&self, ifname: &str, stat: &str) -> Result<u64> {
        ensure!(
            !ifname.contains('/') && !stat.contains('/'),
            "bad interface or counter name {ifname:?}/{stat:?}"
        );
        // `ip netns exec` mounts this namespace's /sys for the command.
        let path = format!("/sys/class/net/{ifname}/statistics/{stat}");
        let text = self.exec(&["cat", &path])?;
        text.trim()
            .parse()
            .with_context(|| format!("parsing {path} in {}: {text:?}", self.name))
    }

    /// The pids of all processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = ip(&["netns", "pids", &self.name])?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Runs `f` on a fresh thread that has joined this network namespace, and returns its
    /// result. Sockets created inside `f` stay in this namespace after it returns.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                // SAFETY: `file` is an open namespace file descriptor; setns only changes
                // this thread's network namespace, and the thread ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {}", self.name));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Keeps the namespace after this guard is dropped (for the lab).
    pub fn keep(mut self) {
        self.owned = false;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = destroy_namespace(&self.name);
        }
    }
}

fn destroy_namespace(name: &str) -> Result<()> {
    let out = ip(&["netns", "pids", name]).unwrap_or_default();
    for pid in out.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: plain kill(2); the pid was just listed as living in our namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    ip(&["netns", "del", name]).map(drop)
}

/// Deletes every namespace whose name starts with `prefix`, killing its processes
/// (`dsrgate-topo down lab-`). Returns the names deleted.
pub fn destroy_prefix(prefix: &str) -> Result<Vec<String>> {
    ensure!(
        !prefix.is_empty(),
        "refusing to delete every namespace (empty prefix)"
    );
    let mut gone = Vec::new();
    for name in list_namespaces()? {
        if name.starts_with(prefix) {
            destroy_namespace(&name)?;
            gone.push(name);
        }
    }
    Ok(gone)
}

/// Names of all namespaces in `/run/netns`.
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A background process in a namespace, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: plain kill(2) to our own unreaped child, so the pid cannot be reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `grace` for the exit status (SIGKILL after that).
    pub fn terminate(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(|| anyhow!("short MAC {text:?}"))?;
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {text:?}"))?;
    }
    ensure!(parts.next().is_none(), "long MAC {text:?}");
    Ok(mac)
}

// ---------------------------------------------------------------------------------------
// The data-driven spec.

/// A whole topology in logical names (namespace names without the prefix).
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub namespaces: Vec<NsSpec>,
    pub bridges: Vec<BridgeSpec>,
    pub links: Vec<LinkSpec>,
}

/// One namespace: sysctls (applied first), addresses (after links exist), routes (last).
#[derive(Clone, Debug, Default)]
pub struct NsSpec {
    pub name: String,
    /// `("net.ipv4.ip_forward", "1")`.
    pub sysctls: Vec<(String, String)>,
    /// `("eth0", "198.51.100.2/24")`; IPv6 addresses get `nodad`.
    pub addresses: Vec<(String, String)>,
    /// Arguments to `ip route add`, e.g. `"default via 198.51.100.1"`; `-6` is added when
    /// the route mentions an IPv6 address.
    pub routes: Vec<String>,
}

/// A Linux bridge device living in namespace `ns` (an L2 segment).
#[derive(Clone, Debug)]
pub struct BridgeSpec {
    pub ns: String,
    pub name: String,
    pub mtu: Option<u32>,
}

/// A veth pair.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    pub a: Port,
    pub b: Port,
    pub mtu: Option<u32>,
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct Port {
    /// Logical namespace name; `None` is the root namespace (the interface name then gets
    /// the prefix, compacted, prepended, so parallel tests don't collide).
    pub ns: Option<String>,
    pub ifname: String,
    /// Name of a bridge (in the same namespace) to enslave this end to.
    pub master: Option<String>,
    /// Turn off TX checksum offload (for kernel-socket senders; see [`Netns::tx_offload_off`]).
    pub tx_off: bool,
    /// TX and RX queues of this end (veth's default is one of each).
    pub queues: Option<u32>,
}

impl Port {
    pub fn new(ns: &str, ifname: &str) -> Port {
        Port {
            ns: Some(ns.into()),
            ifname: ifname.into(),
            master: None,
            tx_off: false,
            queues: None,
        }
    }
    pub fn root(ifname: &str) -> Port {
        Port {
            ns: None,
            ifname: ifname.into(),
            master: None,
            tx_off: false,
            queues: None,
        }
    }
    pub fn bridged(mut self, bridge: &str) -> Port {
        self.master = Some(bridge.into());
        self
    }
    pub fn tx_off(mut self) -> Port {
        self.tx_off = true;
        self
    }
    /// Gives this end `n` TX and `n` RX queues: a sender then spreads flows over its TX
    /// queues by hash, and each lands on the peer's RX queue of the same number.
    pub fn queues(mut self, n: u32) -> Port {
        self.queues = Some(n);
        self
    }
}

impl Topology {
    /// Adds (or returns) the namespace `name`.
    pub fn ns(&mut self, name: &str) -> &mut NsSpec {
        if let Some(i) = self.namespaces.iter().position(|n| n.name == name) {
            return &mut self.namespaces[i];
        }
        self.namespaces.push(NsSpec {
            name: name.into(),
            ..NsSpec::default()
        });
        self.namespaces.last_mut().expect("just pushed")
    }

    pub fn bridge(&mut self, ns: &str, name: &str, mtu: Option<u32>) -> &mut Self {
        self.bridges.push(BridgeSpec {
            ns: ns.into(),
            name: name.into(),
            mtu,
        });
        self
    }

    pub fn link(&mut self, a: Port, b: Port, mtu: Option<u32>) -> &mut Self {
        self.links.push(LinkSpec { a, b, mtu });
        self
    }

    /// Checks names and references without touching the system.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let mut names = BTreeSet::new();
        for ns in &self.namespaces {
            ensure!(
                names.insert(ns.name.as_str()),
                "namespace {} listed twice",
                ns.name
            );
        }
        let mut ifaces = BTreeSet::new();
        let mut check_if = |ns: Option<&str>, ifname: &str| -> Result<()> {
            if let Some(ns) = ns {
                ensure!(
                    names.contains(ns),
                    "unknown namespace {ns} (interface {ifname})"
                );
            }
            let full = match ns {
                Some(_) => ifname.to_owned(),
                None => root_ifname(prefix, ifname),
            };
            ensure!(
                !full.is_empty() && full.len() <= IFNAME_MAX,
                "interface name {full:?} is longer than {IFNAME_MAX} characters"
            );
            ensure!(
                ifaces.insert((ns.map(str::to_owned), full.clone())),
                "interface {full} defined twice in {}",
                ns.unwrap_or("the root namespace")
            );
            Ok(())
        };
        for b in &self.bridges {
            check_if(Some(&b.ns), &b.name)?;
        }
        for l in &self.links {
            check_if(l.a.ns.as_deref(), &l.a.ifname)?;
            check_if(l.b.ns.as_deref(), &l.b.ifname)?;
            for p in [&l.a, &l.b] {
                if let Some(m) = &p.master {
                    ensure!(
                        self.bridges
                            .iter()
                            .any(|b| &b.name == m && Some(&b.ns) == p.ns.as_ref()),
                        "port {} wants bridge {m}, which is not in its namespace",
                        p.ifname
                    );
                }
            }
        }
        Ok(())
    }

    /// Creates everything under `prefix` (namespace `client` becomes `<prefix>client`).
    /// On error, whatever was created is removed again.
    pub fn build(&self, prefix: &str) -> Result<Net> {
        self.validate(prefix)?;
        let mut net = Net {
            prefix: prefix.to_owned(),
            namespaces: Vec::new(),
            root_links: Vec::new(),
        };
        for spec in &self.namespaces {
            let ns = Netns::create(&format!("{prefix}{}", spec.name))?;
            net.namespaces.push((spec.name.clone(), ns));
        }
        for spec in &self.namespaces {
            let ns = net.ns(&spec.name);
            for (k, v) in &spec.sysctls {
                ns.sysctl(k, v)?;
            }
        }
        for b in &self.bridges {
            let ns = net.ns(&b.ns);
            // No multicast snooping: with no MLD querier on the segment, a snooping bridge
            // can withhold neighbour solicitations from ports it has not yet heard a report
            // from, which makes IPv6 reachability right after a build flaky.
            ns.ip(&[
                "link",
                "add",
                "name",
                &b.name,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            if let Some(mtu) = b.mtu {
                ns.ip(&["link", "set", "dev", &b.name, "mtu", &mtu.to_string()])?;
            }
            ns.ip(&["link", "set", "dev", &b.name, "up"])?;
        }
        for l in &self.links {
            let mut roots = Vec::new();
            let built = Self::build_link(&net, l, &mut roots);
            net.root_links.extend(roots);
            built?;
        }
        for spec in &self.namespaces {
            for (ifname, addr) in &spec.addresses {
                add_address(net.ns(&spec.name), ifname, addr)?;
            }
        }
        for spec in &self.namespaces {
            for route in &spec.routes {
                ip_route(net.ns(&spec.name), "add", route)?;
            }
        }
        Ok(net)
    }

    /// The veth with `ifname` in namespace `ns`, if both its ends are in namespaces.
    fn link_of(&self, ns: &str, ifname: &str) -> Result<&LinkSpec> {
        let l = self
            .links
            .iter()
            .find(|l| {
                [&l.a, &l.b]
                    .iter()
                    .any(|p| p.ns.as_deref() == Some(ns) && p.ifname == ifname)
            })
            .with_context(|| format!("no link {ifname} in namespace {ns}"))?;
        ensure!(
            l.a.ns.is_some() && l.b.ns.is_some(),
            "the link of {ifname} in {ns} goes into the root namespace"
        );
        Ok(l)
    }

    /// Deletes the veth with `ifname` in namespace `ns` (and so its peer), as a network
    /// manager does before it re-creates an interface ([`Topology::relink`]). A bridge
    /// takes the lowest MAC of its ports unless one was set, so the peer's bridge keeps
    /// the one it has, as a real router would: its neighbours would otherwise go on
    /// sending to a MAC it no longer answers to.
    pub fn unlink(&self, net: &Net, ns: &str, ifname: &str) -> Result<()> {
        let l = self.link_of(ns, ifname)?;
        for p in [&l.a, &l.b] {
            if let (Some(ns), Some(bridge)) = (&p.ns, &p.master) {
                let ns = net.ns(ns);
                let mac = ns.mac(bridge)?.map(|b| format!("{b:02x}")).join(":");
                ns.ip(&["link", "set", "dev", bridge, "address", &mac])?;
            }
        }
        net.ns(ns).ip(&["link", "del", ifname]).map(drop)
    }

    /// Creates the veth with `ifname` in namespace `ns` again, as [`Topology::build`] did,
    /// after [`Topology::unlink`]: both ends, their addresses, and their namespaces'
    /// routes (replaced, so that routes through other interfaces stay).
    pub fn relink(&self, net: &Net, ns: &str, ifname: &str) -> Result<()> {
        let l = self.link_of(ns, ifname)?;
        Self::build_link(net, l, &mut Vec::new())?;
        for p in [&l.a, &l.b] {
            for spec in self
                .namespaces
                .iter()
                .filter(|n| p.ns.as_ref() == Some(&n.name))
            {
                let netns = net.ns(&spec.name);
                for (_, addr) in spec.addresses.iter().filter(|(i, _)| *i == p.ifname) {
                    add_address(netns, &p.ifname, addr)?;
                }
                for route in &spec.routes {
                    ip_route(netns, "replace", route)?;
                }
            }
        }
        Ok(())
    }

    /// Creates the veth pair of `l` and sets both ends up; the names of its ends in the
    /// root namespace go to `roots` as soon as they exist.
    fn build_link(net: &Net, l: &LinkSpec, roots: &mut Vec<String>) -> Result<()> {
        // Create from the root end if there is one (`ip -n NS` would put a peer without
        // `netns` in NS), so that a root-namespace name is only taken for a root port.
        let (a, b) = if l.b.ns.is_none() {
            (&l.b, &l.a)
        } else {
            (&l.a, &l.b)
        };
        let a_name = net.ifname(a);
        let b_name = net.ifname(b);
        let mut args: Vec<String> = Vec::new();
        if let Some(ns) = &a.ns {
            args.extend(["-n".into(), net.ns(ns).name().to_owned()]);
        }
        let queues = |p: &Port| -> Vec<String> {
            p.queues.map_or_else(Vec::new, |n| {
                ["numtxqueues", &n.to_string(), "numrxqueues", &n.to_string()]
                    .map(String::from)
                    .to_vec()
            })
        };
        args.extend(["link", "add", "name", &a_name].map(String::from));
        args.extend(queues(a));
        args.extend(["type", "veth", "peer", "name", &b_name].map(String::from));
        args.extend(queues(b));
        if let Some(ns) = &b.ns {
            args.extend(["netns".into(), net.ns(ns).name().to_owned()]);
        }
        ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        for (p, name) in [(a, &a_name), (b, &b_name)] {
            if p.ns.is_none() {
                roots.push(name.clone());
            }
            let run_ip = |args: &[&str]| match &p.ns {
                Some(ns) => net.ns(ns).ip(args),
                None => ip(args),
            };
            if let Some(mtu) = l.mtu {
                run_ip(&["link", "set", "dev", name, "mtu", &mtu.to_string()])?;
            }
            if let Some(m) = &p.master {
                run_ip(&["link", "set", "dev", name, "master", m])?;
            }
            run_ip(&["link", "set", "dev", name, "up"])?;
            if p.tx_off {
                match &p.ns {
                    Some(ns) => net.ns(ns).tx_offload_off(name)?,
                    None => {
                        run(Command::new("ethtool").args(["-K", name, "tx", "off"])).map(drop)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Adds `addr` to `ifname` in `ns`; IPv6 without duplicate address detection.
fn add_address(ns: &Netns, ifname: &str, addr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", addr, "dev", ifname];
    if addr.contains(':') {
        args.push("nodad");
    }
    ns.ip(&args).map(drop)
}

/// `ip route VERB ROUTE` in `ns`, with `-6` when the route mentions an IPv6 address.
fn ip_route(ns: &Netns, verb: &str, route: &str) -> Result<()> {
    let mut args: Vec<&str> = Vec::new();
    if route.contains(':') {
        args.push("-6");
    }
    args.extend(["route", verb]);
    args.extend(route.split_whitespace());
    ns.ip(&args).map(drop)
}

/// The root-namespace name of a port: the prefix without dashes, then the port name.
fn root_ifname(prefix: &str, ifname: &str) -> String {
    let tag: String = prefix.chars().filter(|c| *c != '-').collect();
    format!("{tag}{ifname}")
}

/// A built topology. Dropping it deletes its namespaces (killing their processes) and its
/// root-namespace veths.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    namespaces: Vec<(String, Netns)>,
    root_links: Vec<String>,
}

impl Net {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace with logical name `name`; panics if the topology has none (a bug in
    /// the caller's spec, not a runtime condition).
    pub fn ns(&self, name: &str) -> &Netns {
        self.get(name)
            .unwrap_or_else(|| panic!("topology {} has no namespace {name}", self.prefix))
    }

    pub fn get(&self, name: &str) -> Option<&Netns> {
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
    }

    /// The actual interface name of a port (prefixed when it lives in the root namespace).
    pub fn ifname(&self, port: &Port) -> String {
        match port.ns {
            Some(_) => port.ifname.clone(),
            None => root_ifname(&self.prefix, &port.ifname),
        }
    }

    /// Leaves everything in place after this guard is gone (the lab's `up`); remove it
    /// later with [`destroy_prefix`].
    pub fn keep(mut self) {
        self.root_links.clear();
        for (_, ns) in std::mem::take(&mut self.namespaces) {
            ns.keep();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in &self.root_links {
            let _ = ip(&["link", "del", name]);
        }
        // Namespaces are deleted by their own guards, in reverse creation order.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The DSR topology (issue 6 lab; a smaller variant for the dataplane tests).

/// The IPv4 VIP of the lab and the tests.
pub const VIP4: &str = "192.0.2.10";
/// The IPv6 VIP of the lab and the tests.
pub const VIP6: &str = "2001:db8:100::10";
/// The client's addresses.
pub const CLIENT4: &str = "203.0.113.10";
pub const CLIENT6: &str = "2001:db8:c::10";
/// MTU of the fabric: room for the largest encapsulation (IPv6 + UDP + GUE) of a
/// 1500-byte client packet.
pub const FABRIC_MTU: u32 = 1600;

/// Fabric IPv4 address of host number `host` (router 1, gateway i is 1+i, node i is 10+i).
pub fn fabric4(host: u8) -> String {
    format!("198.51.100.{host}")
}

/// Fabric IPv6 address of host number `host` (same host numbers as [`fabric4`]).
pub fn fabric6(host: u8) -> String {
    format!("2001:db8:f::{host:x}")
}

/// Host number of gateway `i` (1-based) on the fabric.
pub fn gateway_host(i: u8) -> u8 {
    1 + i
}

/// Host number of node `i` (1-based) on the fabric.
pub fn node_host(i: u8) -> u8 {
    10 + i
}

/// Upstream-segment IPv4 address of host `host` in the two-arm topology (router 1, gateway
/// i is 1+i, as on the fabric).
pub fn upstream4(host: u8) -> String {
    format!("198.18.0.{host}")
}

/// Upstream-segment IPv6 address of host `host` (same host numbers as [`upstream4`]).
pub fn upstream6(host: u8) -> String {
    format!("2001:db8:e::{host:x}")
}

/// A gateway's interface toward the router: VIP traffic in, BGP, and (one-arm) tunnelled
/// frames out.
pub const GW_UPLINK: &str = "eth0";
/// A two-arm gateway's interface toward the nodes: tunnelled frames out, health checks.
pub const GW_DOWNLINK: &str = "eth1";

/// How the gateways are cabled (the daemon's `[dataplane] topology`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arms {
    /// [`GW_UPLINK`] on the fabric, next to the nodes.
    #[default]
    One,
    /// [`GW_UPLINK`] on a separate upstream segment with the router, [`GW_DOWNLINK`] on
    /// the fabric with the nodes.
    Two,
}

impl Arms {
    /// IPv4 address of host `host` on the segment where the router sends VIP traffic to
    /// the gateways and peers with them over BGP.
    pub fn uplink4(self, host: u8) -> String {
        self.uplink().v4(host)
    }

    /// IPv6 address of host `host` on the same segment as [`Arms::uplink4`].
    pub fn uplink6(self, host: u8) -> String {
        self.uplink().v6(host)
    }

    /// The router-side bridge of that segment.
    pub fn uplink_bridge(self) -> &'static str {
        self.uplink().bridge
    }

    fn uplink(self) -> &'static Segment {
        match self {
            Arms::One => &FABRIC,
            Arms::Two => &UPSTREAM,
        }
    }
}

/// An L2 segment: a bridge in the router, which is host 1 on it.
struct Segment {
    bridge: &'static str,
    /// Prefix of the router's bridge ports (`p-` + the namespace name).
    port: &'static str,
    v4: fn(u8) -> String,
    v6: fn(u8) -> String,
    mtu: Option<u32>,
}

/// Router, gateways (one-arm) or their downlinks (two-arm), and nodes.
const FABRIC: Segment = Segment {
    bridge: "fabric",
    port: "p-",
    v4: fabric4,
    v6: fabric6,
    mtu: Some(FABRIC_MTU),
};

/// Two-arm only: router and gateway uplinks. It carries client packets unencapsulated.
const UPSTREAM: Segment = Segment {
    bridge: "upstream",
    port: "u-",
    v4: upstream4,
    v6: upstream6,
    mtu: None,
};

impl Segment {
    fn v4(&self, host: u8) -> String {
        (self.v4)(host)
    }

    fn v6(&self, host: u8) -> String {
        (self.v6)(host)
    }

    /// The bridge in the router, with the router's addresses on it.
    fn add_router(&self, t: &mut Topology) {
        t.bridge("router", self.bridge, self.mtu);
        self.address(t.ns("router"), self.bridge, 1);
    }

    /// Cables `ifname` of namespace `ns` into the segment as host `host`.
    fn attach(&self, t: &mut Topology, ns: &str, ifname: &str, host: u8) {
        self.address(t.ns(ns), ifname, host);
        t.link(
            Port::new(ns, ifname),
            Port::new("router", &format!("{}{ns}", self.port)).bridged(self.bridge),
            self.mtu,
        );
    }

    fn address(&self, ns: &mut NsSpec, ifname: &str, host: u8) {
        ns.addresses
            .push((ifname.into(), format!("{}/24", self.v4(host))));
        ns.addresses
            .push((ifname.into(), format!("{}/64", self.v6(host))));
    }

    /// Default routes (both families) via the router.
    fn default_route(&self, ns: &mut NsSpec) {
        ns.routes.push(format!("default via {}", self.v4(1)));
        ns.routes.push(format!("default via {}", self.v6(1)));
    }
}

/// The DSR topology with `gateways` gateways (`gw1`..) and `nodes` nodes (`node1`..):
///
/// ```text
///  client eth0 ──── eth-client router ── bridge "fabric" (in router) ── eth0 gwN / nodeN
///  203.0.113.10/24        .1              198.51.100.1/24                .1+N / .10+N
///  2001:db8:c::10/64      ::1             2001:db8:f::1/64
/// ```
///
/// The router forwards (v4 and v6) with an L4 multipath hash; nodes hold both VIPs on
/// `lo`, route by default via the router (so replies never pass a gateway) and have
/// `rp_filter` off; the client's veth has TX checksum offload off. Every namespace has
/// an `eth0` facing the router. Fabric links have MTU [`FABRIC_MTU`]. Routes to the VIPs
/// on the router are not included: BIRD installs them in the lab, tests add static ones
/// (see [`dsr_test_topology`]).
pub fn dsr_topology(gateways: u8, nodes: u8) -> Topology {
    dsr_topology_with(Arms::One, gateways, nodes)
}

/// [`dsr_topology`] with two-arm gateways: each gateway's [`GW_UPLINK`] is on a separate
/// segment with the router (bridge "upstream", [`upstream4`]/[`upstream6`], default route
/// that way), and its [`GW_DOWNLINK`] is on the fabric with the nodes at the gateway's
/// usual fabric address. The router is on both segments, so nodes still reply straight to
/// the client through it.
///
/// ```text
///  client ── router ── bridge "upstream" ── eth0 gwN ── eth1 ── bridge "fabric" ── nodeN
///                      198.18.0.1/24         .1+N      198.51.100.1+N   (router .1) .10+N
/// ```
pub fn two_arm_topology(gateways: u8, nodes: u8) -> Topology {
    dsr_topology_with(Arms::Two, gateways, nodes)
}

fn dsr_topology_with(arms: Arms, gateways: u8, nodes: u8) -> Topology {
    let mut t = Topology::default();
    let loose = |ns: &mut NsSpec| {
        for conf in ["all", "default"] {
            ns.sysctls
                .push((format!("net.ipv4.conf.{conf}.rp_filter"), "0".into()));
        }
    };

    let c = t.ns("client");
    c.addresses.push(("eth0".into(), format!("{CLIENT4}/24")));
    c.addresses.push(("eth0".into(), format!("{CLIENT6}/64")));
    c.routes.push("default via 203.0.113.1".into());
    c.routes.push("default via 2001:db8:c::1".into());

    let r = t.ns("router");
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv6.fib_multipath_hash_policy", "1"),
    ] {
        r.sysctls.push((k.into(), v.into()));
    }
    loose(r);
    r.addresses
        .push(("eth-client".into(), "203.0.113.1/24".into()));
    r.addresses
        .push(("eth-client".into(), "2001:db8:c::1/64".into()));
    FABRIC.add_router(&mut t);
    if arms == Arms::Two {
        UPSTREAM.add_router(&mut t);
    }
    t.link(
        Port::new("client", "eth0").tx_off(),
        Port::new("router", "eth-client"),
        None,
    );

    for i in 1..=gateways {
        let name = format!("gw{i}");
        let up = arms.uplink();
        up.attach(&mut t, &name, GW_UPLINK, gateway_host(i));
        up.default_route(t.ns(&name));
        if arms == Arms::Two {
            FABRIC.attach(&mut t, &name, GW_DOWNLINK, gateway_host(i));
        }
    }
    for i in 1..=nodes {
        let name = format!("node{i}");
        FABRIC.attach(&mut t, &name, "eth0", node_host(i));
        let ns = t.ns(&name);
        FABRIC.default_route(ns);
        loose(ns);
        ns.addresses.push(("lo".into(), format!("{VIP4}/32")));
        ns.addresses.push(("lo".into(), format!("{VIP6}/128")));
    }
    t
}

/// The lab of issue 6: two gateways and three nodes (build it with the prefix `lab-`).
pub fn lab_topology() -> Topology {
    dsr_topology(2, 3)
}

/// The dataplane tests' topology: one gateway (`gw1`), three nodes, and static routes on
/// the router sending both VIPs to `gw1`.
pub fn dsr_test_topology() -> Topology {
    let mut t = dsr_topology(1, 3);
    let r = t.ns("router");
    r.routes
        .push(format!("{VIP4}/32 via {}", fabric4(gateway_host(1))));
    r.routes
        .push(format!("{VIP6}/128 via {}", fabric6(gateway_host(1))));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_match_the_issue_and_fit() {
        let t = lab_topology();
        t.validate("lab-").unwrap();
        let names: Vec<_> = t
            .namespaces
            .iter()
            .map(|n| format!("lab-{}", n.name))
            .collect();
        assert_eq!(
            names,
            [
                "lab-client",
                "lab-router",
                "lab-gw1",
                "lab-gw2",
                "lab-node1",
                "lab-node2",
                "lab-node3"
            ]
        );
        assert_eq!(fabric6(13), "2001:db8:f::d");
        dsr_test_topology().validate(&unique_prefix()).unwrap();
    }

    /// Two-arm: the gateway's uplink is on the upstream bridge, its downlink and the nodes
    /// on the fabric, and the router on both.
    #[test]
    fn two_arm_gateways_have_an_uplink_and_a_downlink() {
        let t = two_arm_topology(1, 2);
        t.validate(&unique_prefix()).unwrap();
        let bridge_of = |ns: &str, ifname: &str| {
            t.links
                .iter()
                .find(|l| l.a.ns.as_deref() == Some(ns) && l.a.ifname == ifname)
                .and_then(|l| l.b.master.clone())
        };
        assert_eq!(bridge_of("gw1", GW_UPLINK).as_deref(), Some("upstream"));
        assert_eq!(bridge_of("gw1", GW_DOWNLINK).as_deref(), Some("fabric"));
        assert_eq!(bridge_of("node2", "eth0").as_deref(), Some("fabric"));
        let gw = t.namespaces.iter().find(|n| n.name == "gw1").unwrap();
        assert!(gw
            .addresses
            .contains(&(GW_UPLINK.into(), format!("{}/24", upstream4(2)))));
        assert!(gw
            .addresses
            .contains(&(GW_DOWNLINK.into(), format!("{}/24", fabric4(2)))));
        assert!(gw.routes.contains(&format!("default via {}", upstream4(1))));
        assert_eq!(Arms::Two.uplink4(1), upstream4(1));
        assert_eq!(Arms::One.uplink4(3), fabric4(3));
        let router = t.namespaces.iter().find(|n| n.name == "router").unwrap();
        for bridge in ["fabric", "upstream"] {
            assert!(
                router.addresses.iter().any(|(i, _)| i == bridge),
                "{bridge}"
            );
        }
        // One-arm has no upstream segment.
        assert!(dsr_topology(1, 1)
            .bridges
            .iter()
            .all(|b| b.name == "fabric"));
    }

    #[test]
    fn validate_rejects_bad_specs() {
        // Namespace `a` and a link between `ends`: refused, saying `why`.
        let rejects = |ends: (Port, Port), why: &str| {
            let mut t = Topology::default();
            t.ns("a");
            t.link(ends.0, ends.1, None);
            let err = t.validate("p-").unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        };
        rejects(
            (Port::new("a", "x"), Port::new("b", "y")),
            "unknown namespace b",
        );
        rejects(
            (Port::new("a", "waytoolonginterface"), Port::root("r")),
            "longer than 15",
        );
        rejects(
            (Port::new("a", "x").bridged("br"), Port::root("r")),
            "bridge br",
        );
    }

    #[test]
    fn test_namespace_pids_are_parsed() {
        assert_eq!(test_namespace_pid("d123x4-client"), Some(123));
        assert_eq!(
            test_namespace_pid(&format!("{}gw1", unique_prefix())),
            Some(std::process::id())
        );
        for other in [
            "dsr-client",
            "lab-gw1",
            "dx1-a",
            "d12x-a",
            "d12y3-a",
            "lt12-node1",
        ] {
            assert_eq!(test_namespace_pid(other), None, "{other}");
        }
    }

    /// A process spawned in a namespace dies with the thread that spawned it: a killed test
    /// process leaves none running.
    #[test]
    fn spawned_processes_die_with_their_spawner() {
        if !crate::require_privileges("netns pdeathsig test") {
            return;
        }
        let net = {
            let mut t = Topology::default();
            t.ns("a");
            t.build(&unique_prefix()).unwrap()
        };
        let a = net.ns("a");
        let pid = std::thread::scope(|s| {
            s.spawn(|| {
                let p = a.spawn(&["sleep", "300"]).unwrap();
                let pid = p.pid() as i32;
                // Not killed by the guard: only the spawner's death can end it.
                std::mem::forget(p);
                pid
            })
            .join()
            .unwrap()
        });
        let gone = |pid: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.contains(") Z")
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            gone(pid),
            "process {pid} outlived the thread that spawned it"
        );
        // Reap the zombie (our child).
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(root_ifname(&a, "abc").len() <= IFNAME_MAX, "{a}");
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01").unwrap(),
            [2, 0, 10, 255, 16, 1]
        );
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("02:00:0a:ff:10:01:07").is_err());
    }

    /// The DSR test topology routes client <-> nodes through the router in both families,
    /// sends the VIPs to gw1, and `keep` + `destroy_prefix` (the lab's up/down) work.
    #[test]
    fn dsr_topology_routes_and_lab_style_teardown() {
        if !crate::require_privileges("DSR topology test") {
            return;
        }
        let prefix = unique_prefix();
        let net = dsr_test_topology().build(&prefix).unwrap();
        let client = net.ns("client");
        for node in [node_host(1), node_host(3)] {
            client
                .exec(&["ping", "-c1", "-W2", &fabric4(node)])
                .unwrap();
            client
                .exec(&["ping", "-c1", "-W2", &fabric6(node)])
                .unwrap();
        }
        let lo = net.ns("node2").ip(&["addr", "show", "dev", "lo"]).unwrap();
        assert!(lo.contains(VIP4) && lo.contains(VIP6), "{lo}");
        let route = net.ns("router").ip(&["route", "get", VIP4]).unwrap();
        assert!(
            route.contains(&format!("via {}", fabric4(gateway_host(1)))),
            "{route}"
        );
        let router_fabric = net
            .ns("router")
            .ip(&["-o", "link", "show", "dev", "fabric"])
            .unwrap();
        assert!(
            router_fabric.contains(&format!("mtu {FABRIC_MTU}")),
            "{router_fabric}"
        );

        net.keep();
        let mine = || {
            list_namespaces()
                .unwrap()
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .count()
        };
        assert_eq!(mine(), 6);
        let gone = destroy_prefix(&prefix).unwrap();
        assert_eq!(gone.len(), 6);
        assert_eq!(mine(), 0);
    }

    /// Builds two hosts on a bridge plus a root link, pings across in v4 and v6, runs a
    /// process, and checks that everything is gone after drop.
    #[test]
    fn builds_pings_and_cleans_up() {
        if !crate::require_privileges("netns builder test") {
            return;
        }
        let prefix = unique_prefix();
        let mut t = Topology::default();
        t.ns("sw");
        for (name, host) in [("a", 1), ("b", 2)] {
            let ns = t.ns(name);
            ns.addresses
                .push(("eth0".into(), format!("10.9.0.{host}/24")));
            ns.addresses
                .push(("eth0".into(), format!("fd00:9::{host}/64")));
            t.link(
                Port::new(name, "eth0").tx_off(),
                Port::new("sw", name).bridged("br0"),
                Some(1600),
            );
        }
        t.bridge("sw", "br0", None);
        t.ns("a")
            .addresses
            .push(("uplink".into(), "10.9.1.1/24".into()));
        t.ns("a").routes.push("10.9.2.0/24 via 10.9.1.2".into());
        t.link(Port::new("a", "uplink"), Port::root("r"), None);

        let net = t.build(&prefix).unwrap();
        let a = net.ns("a");
        a.exec(&["ping", "-c1", "-W2", "10.9.0.2"]).unwrap();
        a.exec(&["ping", "-c1", "-W2", "fd00:9::2"]).unwrap();
        assert!(a
            .ip(&["route"])
            .unwrap()
            .contains("10.9.2.0/24 via 10.9.1.2"));
        assert!(a
            .ip(&["-o", "link", "show", "eth0"])
            .unwrap()
            .contains("mtu 1600"));
        assert!(a
            .exec(&["ethtool", "-k", "eth0"])
            .unwrap()
            .contains("tx-checksumming: off"));
        let idx = a.ifindex("eth0").unwrap();
        assert!(idx > 1);
        let mac = net.ns("b").mac("eth0").unwrap();
        assert_ne!(mac, [0; 6]);
        let root_if = net.ifname(&Port::root("r"));
        assert!(ip(&["link", "show", &root_if]).is_ok());

        // enter(): the thread sees the namespace's interfaces.
        let dev = a
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default())
            .unwrap();
        assert!(dev.contains("eth0:") && dev.contains("uplink:"), "{dev}");

        let mut sleeper = a.spawn(&["sleep", "300"]).unwrap();
        assert!(sleeper.is_running());
        let orphan_pid = a.spawn(&["sleep", "300"]).unwrap();
        // `ip netns exec` enters the namespace after the fork: give it a moment.
        let in_ns = (0..100).any(|_| {
            let found = a.pids().unwrap().contains(&(orphan_pid.pid() as i32));
            if !found {
                std::thread::sleep(Duration::from_millis(20));
            }
            found
        });
        assert!(in_ns, "spawned process never showed up in the namespace");
        let pid = orphan_pid.pid() as i32;
        std::mem::forget(orphan_pid); // the namespace guard must kill it anyway
        drop(sleeper);

        let names: Vec<String> = net
            .namespaces
            .iter()
            .map(|(_, n)| n.name().to_owned())
            .collect();
        drop(net);
        let left = list_namespaces().unwrap();
        for n in &names {
            assert!(!left.contains(n), "{n} left behind");
        }
        assert!(
            ip(&["link", "show", &root_if]).is_err(),
            "{root_if} left behind"
        );
        // The forgotten child stays a zombie until reaped: check its state, not existence.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "process {pid} still alive: {state}"
        );
    }
}
