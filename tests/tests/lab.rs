//! The lab end to end: `vagrant/lab.sh demo` on a lab that is down (the Quick start's
//! command: it runs `up` first, then the four steps; the demo checks every claim it makes
//! and exits non-zero when one fails, and this test also checks the lines that report
//! them), then `status`, `up` again (idempotent: nothing restarts), then `down`, and
//! nothing left behind: no namespace of the instance, no process the lab started, no XDP
//! program it attached, no state directory.
//!
//! The test runs its own instance of the lab (`DSRGATE_LAB_PREFIX=lt<pid>-`,
//! `DSRGATE_LAB_STATE=/run/dsrgate-lt<pid>`), so it runs whether or not a user's lab
//! (`lab-*`, `/run/dsrgate-lab`) is up, and checks that it leaves that lab as it was. A
//! guard runs `down` even when an assertion fails, and an instance left by a killed test
//! process is removed before the next one starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dsrgate_tests::netns::{
    self, fabric4, fabric6, gateway_host, node_host, CLIENT4, CLIENT6, FABRIC_MTU, VIP4, VIP6,
};
use dsrgate_tests::require_privileges_with;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `vagrant/lab.env` as a map.
fn lab_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("vagrant/lab.env")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The lab's fixed interface is written twice, in the Rust topology (which builds it) and
/// in `lab.env` (which the role scripts and the Vagrantfile read): they must agree.
#[test]
fn lab_env_matches_the_topology_builder() {
    let env = lab_env();
    let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("lab.env has no {k}"));
    assert_eq!(get("LAB_VIP4"), VIP4);
    assert_eq!(get("LAB_VIP6"), VIP6);
    assert_eq!(get("LAB_CLIENT4"), CLIENT4);
    assert_eq!(get("LAB_CLIENT6"), CLIENT6);
    assert_eq!(get("LAB_FABRIC_MTU"), &FABRIC_MTU.to_string());
    assert_eq!(get("LAB_PREFIX"), "lab-");

    let topo = netns::lab_topology();
    let names: Vec<&str> = topo.namespaces.iter().map(|n| n.name.as_str()).collect();
    let gateways: u8 = get("LAB_GATEWAYS").parse().unwrap();
    let nodes: u8 = get("LAB_NODES").parse().unwrap();
    let mut want = vec!["client".to_owned(), "router".to_owned()];
    want.extend((1..=gateways).map(|i| format!("gw{i}")));
    want.extend((1..=nodes).map(|i| format!("node{i}")));
    assert_eq!(names, want);

    let addrs = |ns: &str| -> Vec<String> {
        topo.namespaces
            .iter()
            .find(|n| n.name == ns)
            .unwrap()
            .addresses
            .iter()
            .map(|(_, a)| a.split('/').next().unwrap().to_owned())
            .collect()
    };
    // Host N on the fabric, as lab.sh and the Vagrantfile compute it.
    let host4 = |n: u8| format!("{}.{n}", get("LAB_FABRIC4"));
    let host6 = |n: u8| format!("{}:{n:x}", get("LAB_FABRIC6"));
    let router = addrs("router");
    for a in [
        get("LAB_ROUTER_CLIENT4").clone(),
        get("LAB_ROUTER_CLIENT6").clone(),
        fabric4(1),
        fabric6(1),
    ] {
        assert!(router.contains(&a), "router lacks {a}: {router:?}");
    }
    assert_eq!(host4(1), fabric4(1));
    assert_eq!(host6(1), fabric6(1));
    for i in 1..=gateways {
        let h = gateway_host(i);
        assert_eq!(h, 1 + i, "lab.sh: gateway i is host 1+i");
        assert_eq!(addrs(&format!("gw{i}")), [host4(h), host6(h)]);
    }
    for i in 1..=nodes {
        let h = node_host(i);
        assert_eq!(h, 10 + i, "lab.sh: node i is host 10+i");
        assert_eq!(
            addrs(&format!("node{i}")),
            [host4(h), host6(h), VIP4.into(), VIP6.into()]
        );
    }
    for (vip, pool) in [(VIP4, "LAB_VIP_POOL4"), (VIP6, "LAB_VIP_POOL6")] {
        let pool = get(pool);
        let net = pool
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(['0', ':', '.']);
        assert!(vip.starts_with(net), "{vip} outside {pool}");
    }
}

/// One instance of the lab: its namespace prefix and state directory.
struct Instance {
    prefix: String,
    state: String,
}

impl Instance {
    /// This test process's own instance (short: namespace names end up in messages and
    /// the prefix is limited to 12 characters by lab.sh).
    fn of_pid(pid: u32) -> Instance {
        Instance {
            prefix: format!("lt{pid}-"),
            state: format!("/run/dsrgate-lt{pid}"),
        }
    }

    fn namespaces(&self) -> Vec<String> {
        namespaces_with(&self.prefix)
    }
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Runs `lab.sh ARGS` on instance `inst` with the binaries of this test's own cargo
/// profile; output echoed (cargo shows it for a failing test) and returned.
fn lab(inst: &Instance, args: &[&str]) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/lab-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = if profile_dir.ends_with("release") {
        "release"
    } else {
        "debug"
    };
    let mut cmd = Command::new(repo().join("vagrant/lab.sh"));
    dsrgate_tests::daemon::without_cargo_test_env(&mut cmd);
    cmd.args(args)
        .env("DSRGATE_LAB_PREFIX", &inst.prefix)
        .env("DSRGATE_LAB_STATE", &inst.state)
        .env("DSRGATE_LAB_PROFILE", profile)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null());
    // The cargo running this test, for lab.sh's build step.
    if let Some(dir) = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_owned))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
    }
    let out: Output = cmd.output().expect("running vagrant/lab.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- lab.sh {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// Runs `lab.sh down` when dropped, unless the test did so already.
struct Down<'a> {
    inst: &'a Instance,
    done: bool,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if !self.done {
            let (ok, text) = lab(self.inst, &["down"]);
            if !ok {
                eprintln!("cleanup `lab.sh down` failed:\n{text}");
            }
        }
    }
}

/// Takes down the instances of test processes that no longer run (killed before their
/// guard could), and a stale one of this process's pid.
fn remove_dead_instances() {
    let mut pids: Vec<u32> = netns::list_namespaces()
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_prefix("lt")?.split_once('-')?.0.parse().ok())
        .collect();
    pids.extend(
        std::fs::read_dir("/run")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("dsrgate-lt")?
                    .parse::<u32>()
                    .ok()
            }),
    );
    pids.sort();
    pids.dedup();
    let me = std::process::id();
    for pid in pids {
        if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
            let (ok, text) = lab(&Instance::of_pid(pid), &["down"]);
            assert!(
                ok,
                "removing the instance of dead test process {pid}:\n{text}"
            );
        }
    }
}

/// Pids from a lab's pid files.
fn lab_pids(state: &Path) -> Vec<(String, i32)> {
    let mut pids = Vec::new();
    let Ok(roles) = std::fs::read_dir(state) else {
        return pids;
    };
    for role in roles.flatten().filter(|r| r.path().is_dir()) {
        for f in std::fs::read_dir(role.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "pid") {
                let pid = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
                pids.push((p.display().to_string(), pid));
            }
        }
    }
    pids.sort();
    pids
}

/// The ids of the XDP programs attached to `eth0` of the lab's gateways and nodes.
fn xdp_programs(inst: &Instance) -> Vec<(String, u32)> {
    let mut ids = Vec::new();
    for ns in ["gw1", "gw2", "node1", "node2", "node3"] {
        let out = Command::new("ip")
            .args([
                "-n",
                &format!("{}{ns}", inst.prefix),
                "-o",
                "link",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let id = line
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no XDP program on {}{ns} eth0: {line}", inst.prefix));
        ids.push((ns.to_owned(), id));
    }
    ids
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z"),
        Err(_) => false,
    }
}

/// Processes whose command line mentions a file in the lab's state directory (configs,
/// sockets). With the `/`, so that `/run/dsrgate-lt12` does not match `/run/dsrgate-lt123`.
fn processes_using(state: &str) -> Vec<String> {
    let state = format!("{state}/");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&state) && process_alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
}

#[test]
fn lab_up_demo_down_leaves_nothing() {
    let tools = [
        "bird", "birdc", "clang", "python3", "ss", "setsid", "bpftool", "cargo",
    ];
    if !require_privileges_with("the lab (vagrant/lab.sh)", &tools) {
        return;
    }
    // The user's lab, if one is up: it must be exactly as it was afterwards.
    let env = lab_env();
    let (user_prefix, user_state) = (&env["LAB_PREFIX"], &env["LAB_STATE"]);
    let user_namespaces = namespaces_with(user_prefix);
    let user_pids: Vec<(String, i32)> = lab_pids(Path::new(user_state))
        .into_iter()
        .filter(|(_, pid)| process_alive(*pid))
        .collect();

    remove_dead_instances();
    let inst = Instance::of_pid(std::process::id());
    let state = inst.state.clone();
    assert!(inst.namespaces().is_empty() && !Path::new(&state).exists());
    let mut guard = Down {
        inst: &inst,
        done: false,
    };

    // The Quick start's command: `demo` on a lab that is down brings it up first.
    let (ok, demo) = lab(&inst, &["demo"]);
    assert!(ok, "lab.sh demo failed:\n{demo}");
    assert_has(&demo, "the lab is not up: bringing it up first");
    let p = &inst.prefix;
    assert_has(
        &demo,
        &format!("lab: up ({p}client {p}router {p}gw1 {p}gw2"),
    );
    assert_has(&demo, "announced and routed after");
    assert_has(&demo, "The lab is up.");

    let (ok, status) = lab(&inst, &["status"]);
    assert!(ok, "{status}");
    assert_eq!(status.matches("Established").count(), 4, "{status}");
    for needle in [
        "192.0.2.10/32",
        "2001:db8:100::10/128",
        "nexthop via 198.51.100.2",
        "nexthop via 198.51.100.3",
        "node1: dsrgate-node running",
        "node2: dsrgate-node running",
        "node3: dsrgate-node running",
    ] {
        assert_has(&status, needle);
    }

    for needle in [
        "ok: IPv4: all three nodes served, and every one saw the client's own address",
        "ok: IPv6: all three nodes served, and every one saw the client's own address",
        "ok: UDP: every datagram was echoed, from the VIP itself",
        "ok: both gateways carried client packets (ECMP)",
        "ok: gw1: node2 left the Maglev set",
        "ok: gw2: node2 left the Maglev set",
        "ok: new connections reach node1 and node3 only",
        "connections on node1 and node3 kept going",
        "ok: both gateways withdrew; BIRD and the router's kernel lost both VIPs",
        "ok: a request to 192.0.2.10 now fails",
        "ok: both VIPs are announced and routed through both gateways again",
        "ok: gw1 carries some of them",
        "ok: the router dropped gw1",
        "ok: every connection is on the same node as before",
        "ok: 20 of 20 connections survived the loss of gw1",
        "ok: gw1 is back in the router's ECMP route",
        "Demo finished: every step did what it said.",
    ] {
        assert_has(&demo, needle);
    }
    assert!(!demo.contains("FAILED"), "{demo}");

    // `up` again restarts nothing: same processes, same gateway programs (the nodes'
    // decapsulators are attached again, replacing the old ones).
    let pids = lab_pids(Path::new(&state));
    assert_eq!(pids.len(), 6, "bird, 2 dsrgate, 3 dsrgate-node: {pids:?}");
    let gateways = |p: Vec<(String, u32)>| -> Vec<(String, u32)> {
        p.into_iter()
            .filter(|(ns, _)| ns.starts_with("gw"))
            .collect()
    };
    let before = gateways(xdp_programs(&inst));
    let (ok, again) = lab(&inst, &["up"]);
    assert!(ok, "{again}");
    assert_has(&again, "lab: already up");
    assert_eq!(lab_pids(Path::new(&state)), pids, "up restarted something");
    let programs = xdp_programs(&inst);
    assert_eq!(
        gateways(programs.clone()),
        before,
        "up replaced a gateway's program"
    );

    let (ok, down) = lab(&inst, &["down"]);
    guard.done = true;
    assert!(ok, "lab.sh down failed:\n{down}");
    assert!(inst.namespaces().is_empty(), "{:?}", inst.namespaces());
    assert!(!Path::new(&state).exists(), "{state} left behind");
    for (file, pid) in &pids {
        assert!(!process_alive(*pid), "process {pid} ({file}) still runs");
    }
    assert!(
        processes_using(&state).is_empty(),
        "{:?}",
        processes_using(&state)
    );
    for (ns, id) in &programs {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "XDP program {id} of {p}{ns} is still loaded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The user's lab (if any) is untouched: its namespaces and processes are all there.
    let now = namespaces_with(user_prefix);
    for ns in &user_namespaces {
        assert!(now.contains(ns), "the user's lab lost namespace {ns}");
    }
    for (file, pid) in &user_pids {
        assert!(
            process_alive(*pid),
            "the user's lab lost process {pid} ({file})"
        );
    }
}
