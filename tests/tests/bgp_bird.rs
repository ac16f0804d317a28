//! The BGP speaker against a real BIRD 2 (AS 65000) in network namespaces.
//!
//! Topology: `dsr_topology(2, 0)`: BIRD runs in `router` (198.51.100.1, 2001:db8:f::1),
//! speakers (AS 65001) in `gw1` (.2) and `gw2` (.3). Each speaker is its own process so
//! that it can be killed or frozen: this test binary re-executes itself, running only
//! [`speaker_process`], which drives `bgp::speaker::Speaker` from commands on stdin.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bgp::speaker::{Config, PeerConfig, RouteAttributes, Routes, Speaker};
use bgp::wire::Prefix;
use dsrgate_tests::bird::{kernel_route, neighbor, Bird, HOLD, ROUTER_AS};
use dsrgate_tests::netns::{
    dsr_topology, fabric4, fabric6, gateway_host, unique_prefix, Net, Netns, Proc, VIP4, VIP6,
};
use dsrgate_tests::require_privileges_with;

/// Set in a re-executed child: the speaker's configuration, `key=value` words.
const CHILD_ENV: &str = "DSRGATE_BGP_SPEAKER";

/// Not a test: the speaker process the other tests start. Without [`CHILD_ENV`] it
/// returns at once. Configuration words: `peer=ADDR remote_as=N local_as=N
/// router_id=ADDR hold=SECS nh6=ADDR [nh4=ADDR] [md5=PASSWORD] [passive=1]
/// [listen=ADDR:PORT]`; a later word overrides an earlier one. Commands on stdin, answered on
/// stdout with lines starting `@`: `routes [PREFIX...]` (the whole desired set),
/// `status`, `shutdown MESSAGE`.
#[test]
fn speaker_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let get = |key: &str| {
        spec.split_whitespace()
            .rev()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    let need = |key: &str| get(key).unwrap_or_else(|| panic!("{CHILD_ENV} lacks {key}"));
    let mut peer = PeerConfig::new(
        need("peer").parse().unwrap(),
        need("local_as").parse().unwrap(),
        need("remote_as").parse().unwrap(),
        need("router_id").parse().unwrap(),
    );
    peer.session.hold_time = need("hold").parse().unwrap();
    peer.session.connect_retry = Duration::from_millis(500);
    peer.session.max_retry = Duration::from_secs(2);
    peer.next_hop_v6 = Some(need("nh6").parse().unwrap());
    peer.next_hop_v4 = get("nh4").map(|a| a.parse().unwrap());
    peer.md5_password = get("md5");
    peer.session.passive = get("passive").is_some();
    let listen = get("listen")
        .into_iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut speaker = Speaker::spawn(Config {
        peers: vec![peer],
        listen,
    })
    .unwrap();
    let stdout = std::io::stdout();
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let mut out = stdout.lock();
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("routes", list) => {
                let routes: Routes = list.split_whitespace().map(route).collect();
                speaker.set_routes(routes);
                writeln!(out, "@ok").unwrap();
            }
            ("status", _) => {
                for p in speaker.peers() {
                    let error = p.last_error.map_or("-".to_string(), |e| e.to_string());
                    writeln!(
                        out,
                        "@peer state={} advertised={} route_refresh={} flaps={} error={error}",
                        p.state,
                        p.prefixes_advertised,
                        p.stats.received.route_refresh,
                        p.stats.flaps
                    )
                    .unwrap();
                }
                writeln!(out, "@end").unwrap();
            }
            ("shutdown", message) => {
                speaker.shutdown(message);
                writeln!(out, "@ok").unwrap();
                return;
            }
            _ => panic!("unknown command {line:?}"),
        }
        out.flush().unwrap();
    }
    speaker.shutdown("stdin closed");
}

/// `PREFIX[;med=N][;c=AS:VALUE][;lc=G:L1:L2]`, attributes repeatable.
fn route(spec: &str) -> (Prefix, RouteAttributes) {
    let mut parts = spec.split(';');
    let prefix = parts.next().unwrap().parse().unwrap();
    let mut attrs = RouteAttributes::default();
    for part in parts {
        match part.split_once('=').unwrap() {
            ("med", v) => attrs.med = Some(v.parse().unwrap()),
            ("c", v) => {
                let (asn, value) = v.split_once(':').unwrap();
                let (asn, value): (u32, u32) = (asn.parse().unwrap(), value.parse().unwrap());
                attrs.communities.push((asn << 16) | value);
            }
            ("lc", v) => attrs.large_communities.push(v.parse().unwrap()),
            (k, _) => panic!("unknown route attribute {k}"),
        }
    }
    (prefix, attrs)
}

/// A speaker process in a gateway namespace.
struct SpeakerProc {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SpeakerProc {
    /// Gateway `i` speaking to BIRD at 198.51.100.1 with `remote_as`; `extra` words
    /// add to or override the configuration.
    fn start(ns: &Netns, gw: u8, remote_as: u32, extra: &str) -> Result<SpeakerProc> {
        let host = gateway_host(gw);
        let spec = format!(
            "peer={} local_as=65001 remote_as={remote_as} router_id={} hold={HOLD} nh6={} {extra}",
            fabric4(1),
            fabric4(host),
            fabric6(host)
        );
        let exe = std::env::current_exe()?;
        let mut cmd = ns.command(exe.to_str().context("test binary path")?);
        cmd.args([
            "--exact",
            "speaker_process",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut proc = ns.spawn_command(cmd)?;
        let stdin = proc.child().stdin.take().context("stdin")?;
        let stdout = BufReader::new(proc.child().stdout.take().context("stdout")?);
        Ok(SpeakerProc {
            proc,
            stdin,
            stdout,
        })
    }

    /// Sends one command; returns the `@` lines of the answer.
    fn cmd(&mut self, line: &str) -> Result<Vec<String>> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = Vec::new();
        loop {
            let mut l = String::new();
            if self.stdout.read_line(&mut l)? == 0 {
                bail!("speaker exited while answering {line:?}");
            }
            let Some(l) = l.trim_end().strip_prefix('@') else {
                continue;
            };
            if l == "ok" || l == "end" {
                return Ok(answer);
            }
            answer.push(l.to_string());
        }
    }

    fn announce(&mut self, prefixes: &[&str]) -> Result<()> {
        self.cmd(&format!("routes {}", prefixes.join(" ")))
            .map(drop)
    }

    fn status(&mut self) -> Result<String> {
        Ok(self.cmd("status")?.join("\n"))
    }

    fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if cond(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; speaker status: {s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What a scenario runs against: the topology and BIRD in its `router` namespace.
struct Lab<'a> {
    net: &'a Net,
    bird: Bird<'a>,
}

impl Lab<'_> {
    fn router(&self) -> &Netns {
        self.net.ns("router")
    }

    /// A speaker on gateway `gw` expecting BIRD in `remote_as`; see [`SpeakerProc::start`].
    fn speaker(&self, gw: u8, remote_as: u32, extra: &str) -> Result<SpeakerProc> {
        SpeakerProc::start(self.net.ns(&format!("gw{gw}")), gw, remote_as, extra)
    }

    /// A speaker on gateway `gw` that has announced `routes` (see [`route`]), returned
    /// once BIRD has them all.
    fn announced(&self, gw: u8, extra: &str, routes: &[&str]) -> Result<SpeakerProc> {
        let mut speaker = self.speaker(gw, ROUTER_AS, extra)?;
        speaker.announce(routes)?;
        for spec in routes {
            let prefix = spec.split_once(';').map_or(*spec, |(prefix, _)| prefix);
            self.bird.wait_route(prefix, true, SETTLE)?;
        }
        Ok(speaker)
    }
}

/// Runs the `body` of test `test` in a fresh `dsr_topology(2, 0)` with BIRD started with
/// `sessions` (see [`neighbor`]). Without root, BIRD or birdc the test is skipped (a
/// failure in CI).
fn scenario(
    test: &str,
    sessions: &[(u8, u32, String)],
    body: impl FnOnce(Lab<'_>) -> Result<()>,
) -> Result<()> {
    scenario_with(test, sessions, "", body)
}

/// [`scenario`] with `bird_extra` in BIRD's session template.
fn scenario_with(
    test: &str,
    sessions: &[(u8, u32, String)],
    bird_extra: &str,
    body: impl FnOnce(Lab<'_>) -> Result<()>,
) -> Result<()> {
    if !require_privileges_with(&format!("bgp_bird::{test}"), &["bird", "birdc"]) {
        return Ok(());
    }
    let net = dsr_topology(2, 0).build(&unique_prefix())?;
    let bird = Bird::start(net.ns("router"), sessions, bird_extra)?;
    body(Lab { net: &net, bird })
}

const SETTLE: Duration = Duration::from_secs(15);

#[test]
fn announce_install_refresh_and_withdraw() -> Result<()> {
    let sessions = [neighbor(1, 65001)];
    scenario("announce_install_refresh_and_withdraw", &sessions, |lab| {
        let (router, bird) = (lab.router(), &lab.bird);
        let mut gw = lab.announced(
            1,
            "",
            &[
                "192.0.2.10/32;med=50;c=65001:42;lc=65001:7:8",
                "2001:db8:100::10/128;c=65001:43;lc=65001:9:10",
            ],
        )?;
        let v4 = bird.route("192.0.2.10/32")?.unwrap();
        assert!(v4.contains("via 198.51.100.2"), "{v4}");
        assert!(v4.contains("BGP.as_path: 65001"), "{v4}");
        // Per-VIP attributes arrive as set.
        assert!(v4.contains("BGP.med: 50"), "{v4}");
        assert!(v4.contains("BGP.community: (65001,42)"), "{v4}");
        assert!(v4.contains("BGP.large_community: (65001, 7, 8)"), "{v4}");
        let v6 = bird.route("2001:db8:100::10/128")?.unwrap();
        assert!(v6.contains("via 2001:db8:f::2"), "{v6}");
        assert!(v6.contains("BGP.community: (65001,43)"), "{v6}");
        assert!(v6.contains("BGP.large_community: (65001, 9, 10)"), "{v6}");
        assert!(!v6.contains("BGP.med"), "{v6}");
        // Installed in the router's kernel table.
        let k4 = kernel_route(router, VIP4)?;
        assert!(
            k4.contains("via 198.51.100.2") && k4.contains("proto bird"),
            "{k4}"
        );
        let k6 = kernel_route(router, VIP6)?;
        assert!(
            k6.contains("via 2001:db8:f::2") && k6.contains("proto bird"),
            "{k6}"
        );
        let s = gw.status()?;
        assert!(
            s.contains("state=Established") && s.contains("advertised=2"),
            "{s}"
        );

        // BIRD asks for the routes again (ROUTE-REFRESH); they stay.
        bird.birdc(&["reload", "in", "gw1"])?;
        gw.wait_status("ROUTE-REFRESH", SETTLE, |s| !s.contains("route_refresh=0"))?;
        assert!(bird.route("192.0.2.10/32")?.is_some());

        // Withdraw: gone from BIRD and the kernel within a second.
        gw.announce(&["2001:db8:100::10/128"])?;
        let took = bird.wait_route("192.0.2.10/32", false, Duration::from_secs(1))?;
        eprintln!("withdraw of 192.0.2.10/32 left BIRD after {took:?}");
        gw.announce(&[])?;
        let took = bird.wait_route("2001:db8:100::10/128", false, Duration::from_secs(1))?;
        eprintln!("withdraw of 2001:db8:100::10/128 left BIRD after {took:?}");
        let deadline = Instant::now() + Duration::from_secs(1);
        while !kernel_route(router, VIP4)?.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(kernel_route(router, VIP4)?, "");
        // The session itself stays up.
        assert!(gw.status()?.contains("state=Established"));

        // Shutdown withdraws, sends Cease with the message, and returns once closed.
        gw.announce(&["192.0.2.10/32"])?;
        bird.wait_route("192.0.2.10/32", true, SETTLE)?;
        let start = Instant::now();
        gw.cmd("shutdown dsrgate maintenance")?;
        eprintln!("speaker shutdown returned after {:?}", start.elapsed());
        bird.wait_route("192.0.2.10/32", false, Duration::from_secs(1))?;
        let protocol = bird.birdc(&["show", "protocols", "all", "gw1"])?;
        assert!(protocol.contains("dsrgate maintenance"), "{protocol}");
        Ok(())
    })
}

#[test]
fn two_speakers_give_ecmp() -> Result<()> {
    let sessions = [neighbor(1, 65001), neighbor(2, 65001)];
    scenario("two_speakers_give_ecmp", &sessions, |lab| {
        let router = lab.router();
        let mut gw1 = lab.speaker(1, ROUTER_AS, "")?;
        let mut gw2 = lab.speaker(2, ROUTER_AS, "")?;
        gw1.announce(&["192.0.2.10/32", "2001:db8:100::10/128"])?;
        gw2.announce(&["192.0.2.10/32", "2001:db8:100::10/128"])?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let k4 = kernel_route(router, VIP4)?;
            let k6 = kernel_route(router, VIP6)?;
            let both = |k: &str, a: &str, b: &str| {
                k.contains(&format!("nexthop via {a} ")) && k.contains(&format!("nexthop via {b} "))
            };
            if both(&k4, "198.51.100.2", "198.51.100.3")
                && both(&k6, "2001:db8:f::2", "2001:db8:f::3")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no ECMP route in the router's kernel:\n{k4}\n{k6}\n{}",
                    lab.bird.birdc(&["show", "route", "all"])?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // One gateway withdraws: a single next hop remains.
        gw2.announce(&[])?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while kernel_route(router, VIP4)?.contains("nexthop") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let k4 = kernel_route(router, VIP4)?;
        assert!(
            k4.contains("via 198.51.100.2") && !k4.contains("198.51.100.3"),
            "{k4}"
        );
        Ok(())
    })
}

#[test]
fn sigkill_drops_the_route_at_once() -> Result<()> {
    let sessions = [neighbor(1, 65001)];
    scenario("sigkill_drops_the_route_at_once", &sessions, |lab| {
        let gw = lab.announced(1, "", &["192.0.2.10/32"])?;
        gw.proc.signal(libc::SIGKILL)?;
        // The kernel closes the connection; no hold timer involved (hold is 6 s).
        let took = lab
            .bird
            .wait_route("192.0.2.10/32", false, Duration::from_secs(2))?;
        eprintln!("SIGKILL: route left BIRD after {took:?}");
        Ok(())
    })
}

#[test]
fn sigstop_drops_the_route_at_hold_expiry() -> Result<()> {
    let sessions = [neighbor(1, 65001)];
    scenario("sigstop_drops_the_route_at_hold_expiry", &sessions, |lab| {
        let bird = &lab.bird;
        let gw = lab.announced(1, "", &["192.0.2.10/32"])?;
        gw.proc.signal(libc::SIGSTOP)?;
        let frozen = Instant::now();
        // Frozen, the TCP connection stays open: the route outlives the keepalive
        // interval and goes only when BIRD's hold timer (6 s) expires.
        std::thread::sleep(Duration::from_secs(u64::from(HOLD) / 2));
        assert!(
            bird.route("192.0.2.10/32")?.is_some(),
            "route dropped before hold expiry"
        );
        bird.wait_route(
            "192.0.2.10/32",
            false,
            Duration::from_secs(u64::from(HOLD) + 3),
        )?;
        let took = frozen.elapsed();
        eprintln!("SIGSTOP: route left BIRD after {took:?} (hold time {HOLD} s)");
        let protocols = bird.birdc(&["show", "protocols", "all", "gw1"])?;
        assert!(protocols.contains("Hold timer expired"), "{protocols}");
        gw.proc.signal(libc::SIGCONT)?;
        Ok(())
    })
}

#[test]
fn bird_restart_is_followed_by_reannouncement() -> Result<()> {
    let sessions = [neighbor(1, 65001)];
    scenario(
        "bird_restart_is_followed_by_reannouncement",
        &sessions,
        |mut lab| {
            let mut gw = lab.announced(1, "", &["192.0.2.10/32", "2001:db8:100::10/128"])?;
            lab.bird.stop()?;
            // BIRD's Cease reaches the speaker.
            gw.wait_status("session down", SETTLE, |s| {
                s.contains("received NOTIFICATION: cease")
            })?;
            let restarted = Instant::now();
            lab.bird.run()?;
            lab.bird.wait_route("192.0.2.10/32", true, SETTLE)?;
            lab.bird.wait_route("2001:db8:100::10/128", true, SETTLE)?;
            eprintln!(
                "routes back in BIRD {:?} after its restart",
                restarted.elapsed()
            );
            gw.wait_status("Established again", SETTLE, |s| {
                s.contains("state=Established") && s.contains("flaps=1")
            })?;
            Ok(())
        },
    )
}

#[test]
fn wrong_remote_as_never_establishes() -> Result<()> {
    // BIRD expects gw1 in AS 65002 (gw1 is 65001); gw2 expects BIRD in AS 65099.
    let sessions = [neighbor(1, 65002), neighbor(2, 65001)];
    scenario("wrong_remote_as_never_establishes", &sessions, |lab| {
        let mut gw1 = lab.speaker(1, ROUTER_AS, "")?;
        let mut gw2 = lab.speaker(2, 65099, "")?;
        gw1.announce(&["192.0.2.10/32"])?;
        gw2.announce(&["192.0.2.10/32"])?;
        // gw1 hears BIRD's NOTIFICATION, gw2 sends its own.
        for (gw, seen) in [
            (&mut gw1, "received NOTIFICATION"),
            (&mut gw2, "sent NOTIFICATION"),
        ] {
            let s = gw.wait_status(seen, SETTLE, |s| s.contains(seen))?;
            assert!(s.contains("OPEN message error / bad peer AS (2/2)"), "{s}");
        }
        // Several retries later, still nothing.
        std::thread::sleep(Duration::from_secs(3));
        for gw in [&mut gw1, &mut gw2] {
            let s = gw.status()?;
            assert!(
                !s.contains("state=Established") && s.contains("flaps=0"),
                "{s}"
            );
        }
        assert!(lab.bird.route("192.0.2.10/32")?.is_none());
        Ok(())
    })
}

#[test]
fn tcp_md5_session() -> Result<()> {
    let sessions = [neighbor(1, 65001), neighbor(2, 65001)];
    let md5 = r#"password "dsrgate-md5";"#;
    scenario_with("tcp_md5_session", &sessions, md5, |lab| {
        let _gw1 = lab.announced(1, "md5=dsrgate-md5", &["192.0.2.10/32"])?;
        // Without the password the kernel drops the segments: no session.
        let mut gw2 = lab.speaker(2, ROUTER_AS, "")?;
        gw2.announce(&["192.0.2.10/32"])?;
        std::thread::sleep(Duration::from_secs(3));
        let s = gw2.status()?;
        assert!(
            !s.contains("state=Established") && s.contains("error=connection"),
            "{s}"
        );
        let route = lab.bird.route("192.0.2.10/32")?.unwrap_or_default();
        assert!(!route.contains("198.51.100.3"), "{route}");
        Ok(())
    })
}

#[test]
fn passive_speaker_and_connection_collision() -> Result<()> {
    let sessions = [neighbor(1, 65001), neighbor(2, 65001)];
    scenario(
        "passive_speaker_and_connection_collision",
        &sessions,
        |lab| {
            // gw1 only listens: BIRD has to connect. gw2 listens and connects, as BIRD
            // does: connections may cross, and collision resolution (RFC 4271 §6.8) must
            // leave exactly one session.
            let listen1 = format!("passive=1 listen={}:179", fabric4(gateway_host(1)));
            let listen2 = format!("listen={}:179", fabric4(gateway_host(2)));
            let mut gw1 = lab.speaker(1, ROUTER_AS, &listen1)?;
            let mut gw2 = lab.speaker(2, ROUTER_AS, &listen2)?;
            gw1.announce(&["192.0.2.10/32"])?;
            gw2.announce(&["192.0.2.10/32"])?;
            for gw in [&mut gw1, &mut gw2] {
                gw.wait_status("Established", SETTLE, |s| s.contains("state=Established"))?;
            }
            let deadline = Instant::now() + SETTLE;
            loop {
                let route = lab.bird.route("192.0.2.10/32")?.unwrap_or_default();
                if route.contains("via 198.51.100.2") && route.contains("via 198.51.100.3") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("BIRD lacks a path: {route}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // One session each, and it stays.
            std::thread::sleep(Duration::from_secs(3));
            for gw in [&mut gw1, &mut gw2] {
                let s = gw.status()?;
                assert!(
                    s.contains("state=Established") && s.contains("flaps=0"),
                    "{s}"
                );
            }
            Ok(())
        },
    )
}

/// The link-local address of the interface of `ns` that has address `global`.
fn link_local_beside(ns: &Netns, global: &str) -> Result<String> {
    let line = ns.ip(&["-6", "-o", "addr", "show", "to", global])?;
    let dev = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no interface has {global}: {line:?}"))?;
    let dev = dev.split('@').next().unwrap_or(dev);
    let ll = ns.ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])?;
    ll.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("no link-local address on {dev}: {ll:?}"))
}

#[test]
fn ipv6_session_carries_both_families() -> Result<()> {
    let sessions = [(1, 65001, fabric6(gateway_host(1)))];
    scenario("ipv6_session_carries_both_families", &sessions, |lab| {
        // Over IPv6 the IPv4 next hop has to be configured; the IPv6 one is the
        // session's own address.
        let extra = format!("peer={} nh4={}", fabric6(1), fabric4(gateway_host(1)));
        let _gw1 = lab.announced(1, &extra, &["192.0.2.10/32", "2001:db8:100::10/128"])?;
        let k4 = kernel_route(lab.router(), VIP4)?;
        assert!(k4.contains("via 198.51.100.2"), "{k4}");
        let k6 = kernel_route(lab.router(), VIP6)?;
        assert!(k6.contains("via 2001:db8:f::2"), "{k6}");
        // The router shares the next hop's link: gw1's link-local address there goes
        // with the global one (RFC 2545 §3), and BIRD still forwards to the global one.
        let global = fabric6(gateway_host(1));
        let link_local = link_local_beside(lab.net.ns("gw1"), &global)?;
        let v6 = lab.bird.route("2001:db8:100::10/128")?.unwrap_or_default();
        assert!(
            v6.contains(&format!("BGP.next_hop: {global} {link_local}")),
            "no link-local next hop {link_local}:\n{v6}"
        );
        Ok(())
    })
}

/// Addresses used above, checked against the shared topology's helpers.
#[test]
fn addresses_match_the_topology() {
    assert_eq!(
        fabric4(gateway_host(1)).parse::<Ipv4Addr>().unwrap(),
        Ipv4Addr::new(198, 51, 100, 2)
    );
    assert_eq!(
        fabric6(gateway_host(2)).parse::<Ipv6Addr>().unwrap(),
        "2001:db8:f::3".parse::<Ipv6Addr>().unwrap()
    );
    assert!(VIP4.parse::<IpAddr>().is_ok() && VIP6.parse::<IpAddr>().is_ok());
}
