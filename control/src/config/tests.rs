use super::*;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../dsrgate.example.toml");

const MINIMAL: &str = r#"
[dataplane]
upstream_interface = "eth0"

[[vips]]
address = "203.0.113.10"
port = 80

[[vips.backends]]
address = "10.0.0.1"
"#;

fn file() -> &'static Path {
    Path::new("test.toml")
}

/// The problems of an invalid config, as (path, line, message).
fn problems(text: &str) -> Vec<Problem> {
    match parse(text, file()) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => {
            // Every message names the file.
            assert!(e.to_string().starts_with("test.toml"), "{e}");
            e.problems().to_vec()
        }
    }
}

/// Asserts exactly one problem at `path` whose message contains `needle`, and returns it.
fn one_problem(text: &str, path: &str, needle: &str) -> Problem {
    let ps = problems(text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, path, "{ps:#?}");
    assert!(
        ps[0].message.contains(needle),
        "{:?} lacks {needle:?}",
        ps[0].message
    );
    ps[0].clone()
}

#[test]
fn example_config_parses_and_validates() {
    let c = parse(EXAMPLE, Path::new("dsrgate.example.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dataplane.topology, Topology::TwoArm);
    assert_eq!(c.vips.len(), 2);
    assert_eq!(c.vips[0].port_list(), [80, 443]);
    assert_eq!(c.vips[0].backends[0].weight, 2);
    assert_eq!(c.vips[0].backends[1].weight, 1);
    assert_eq!(
        c.vips[0].bgp.communities,
        [Community((65000 << 16) | 100), Community(0xFFFF_FF01)]
    );
    assert_eq!(c.vips[1].encap, EncapKind::Gue);
    assert_eq!(c.vips[1].protocol, Protocol::Udp);
    let h = c.vips[0].health.as_ref().unwrap();
    assert_eq!((h.kind, h.rise, h.fall), (ProbeKind::Http, 2, 3));
    let k = c.kubernetes.as_ref().unwrap();
    assert_eq!(k.address_pool.len(), 2);
    assert_eq!(k.load_balancer_class.as_deref(), Some("dsrgate.io/dsr"));
    assert_eq!(
        c.bgp.as_ref().unwrap().peers[0].hold_time,
        Duration::from_secs(90)
    );
}

#[test]
fn example_config_loads_from_disk() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsrgate.example.toml");
    load(&path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn defaults() {
    let c = parse(MINIMAL, file()).unwrap();
    assert_eq!(c.daemon.drain_time, Duration::from_secs(5));
    assert_eq!(c.api.listen, DEFAULT_API_LISTEN);
    assert!(c.api.listen.ip().is_loopback());
    assert_eq!(c.dataplane.maglev, Maglev { m: 65537, seed: 0 });
    assert_eq!(c.dataplane.topology, Topology::OneArm);
    assert_eq!(c.vips[0].hash, HashMode::FiveTuple);
    assert_eq!(c.vips[0].encap, EncapKind::Ipip);
    assert_eq!(c.vips[0].min_healthy_backends, 1);
    assert!(c.vips[0].health.is_none());
    assert!(c.bgp.is_none() && c.kubernetes.is_none());
}

#[test]
fn missing_file_names_the_file() {
    let e = load(Path::new("/nonexistent/dsrgate.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/dsrgate.toml"), "{e}");
}

#[test]
fn missing_file_states_the_cause_once() {
    let path = Path::new("/nonexistent/dsrgate.toml");
    let cause = std::fs::read_to_string(path).unwrap_err().to_string();
    let e = load(path).unwrap_err();
    // The reload log prints `{e}`; `dsrgate check` and `run` print the chain, `{e:#}`.
    let plain = e.to_string();
    let chain = format!("{:#}", anyhow::Error::from(e));
    for shown in [&plain, &chain] {
        assert_eq!(shown.matches(cause.as_str()).count(), 1, "{shown}");
        assert!(
            shown.starts_with("/nonexistent/dsrgate.toml: cannot read: "),
            "{shown}"
        );
    }
}

#[test]
fn unknown_key_names_path_and_line() {
    let text = MINIMAL.replace("port = 80", "port = 80\nprot = 81");
    let p = one_problem(&text, "vips[0].prot", "unknown field `prot`");
    assert_eq!(p.location, Some((8, 1)));
    let e = parse(&text, file()).unwrap_err().to_string();
    assert!(
        e.starts_with("test.toml:8:1: `vips[0].prot`: unknown field `prot`"),
        "{e}"
    );
}

#[test]
fn unknown_section() {
    one_problem(
        &format!("{MINIMAL}\n[bpg]\nlocal_as = 1\n"),
        "bpg",
        "unknown field `bpg`",
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let text = MINIMAL.replace("port = 80", "port = = 80");
    let p = problems(&text).remove(0);
    assert_eq!(p.location.map(|l| l.0), Some(7));
    assert_eq!(p.path, "vips[0].port");
}

#[test]
fn syntax_error_path_follows_table_headers() {
    let text = "[dataplane]\nupstream_interface = \"eth0\"\n[[vips]]\naddress = \"203.0.113.1\"\n[[vips.backends]]\naddress = \"10.0.0.1\"\n[[vips]]\naddress = \"203.0.113.2\"\n[[vips.backends]]\naddress = \"10.0.0.2\"\n[[vips.backends]]\nweight = 1x\n";
    let p = problems(text).remove(0);
    assert_eq!(p.path, "vips[1].backends[1].weight");
    assert_eq!(p.location.map(|l| l.0), Some(12));
    assert_eq!(
        syntax_path("[a]\n[[b.c]]\n[[b.c]]\n\"k\" = ", 25),
        "b.c[1].k"
    );
    assert_eq!(syntax_path("x = ", 2), "x");
    assert_eq!(syntax_path("", 0), "");
}

#[test]
fn bad_address() {
    let text = MINIMAL.replace("203.0.113.10", "203.0.113.300");
    let p = one_problem(&text, "vips[0].address", "invalid IP address");
    assert_eq!(p.location, Some((6, 11)));
}

#[test]
fn port_out_of_range_in_type() {
    let text = MINIMAL.replace("port = 80", "port = 70000");
    let p = one_problem(&text, "vips[0].port", "70000");
    assert_eq!(p.location.map(|l| l.0), Some(7));
}

#[test]
fn port_zero_and_second_vip() {
    let text = format!("{MINIMAL}\n[[vips]]\naddress = \"203.0.113.11\"\nports = [443, 0]\n[[vips.backends]]\naddress = \"10.0.0.1\"\n");
    let p = one_problem(&text, "vips[1].ports[1]", "out of range");
    assert_eq!(p.location.map(|l| l.0), Some(14));
}

#[test]
fn non_prime_maglev_m() {
    let text = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\nmaglev = { m = 65536 }",
    );
    one_problem(&text, "dataplane.maglev.m", "not a prime");
}

#[test]
fn duplicate_vip() {
    let text = format!("{MINIMAL}\n[[vips]]\naddress = \"203.0.113.10\"\nports = [443, 80]\n[[vips.backends]]\naddress = \"10.0.0.2\"\n");
    let p = one_problem(&text, "vips[1].ports[1]", "already defined by vips[0]");
    assert!(p.message.contains("203.0.113.10 tcp/80"), "{}", p.message);
    // Same address and port over UDP is a different VIP.
    parse(
        &text.replace("ports = [443, 80]", "ports = [443, 80]\nprotocol = \"udp\""),
        file(),
    )
    .unwrap();
}

/// The steering map's limit, checked over every VIP together: a config past it used to be
/// accepted, and the daemon then died on the map update.
#[test]
fn service_ports_over_the_steering_limit() {
    let ports = |from: usize, n: usize| {
        (from..from + n)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = dataplane::bpf::steer::MAX_VIPS;
    let text = |n| {
        format!("{MINIMAL}\n[[vips]]\naddress = \"203.0.113.11\"\nports = [{}]\n[[vips.backends]]\naddress = \"10.0.0.2\"\n", ports(1, n))
    };
    // The first VIP's one port plus these: exactly the limit, then one more.
    parse(&text(max - 1), file()).unwrap();
    let p = one_problem(&text(max), "vips", "at most 4096");
    assert!(p.message.starts_with("4097 service ports"), "{}", p.message);
}

#[test]
fn rise_fall_zero() {
    let text = format!("{MINIMAL}[vips.health]\ntype = \"tcp\"\nrise = 0\nfall = 0\n");
    let ps = problems(&text);
    let paths: Vec<_> = ps.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["vips[0].health.rise", "vips[0].health.fall"]);
}

/// As the module says: serde stops at the first shape problem; the rules are all
/// reported once the shape is right.
#[test]
fn shape_problems_stop_at_the_first() {
    let text = MINIMAL.replace("port = 80", "port = 70000\nbogus = 1");
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert!(["vips[0].port", "vips[0].bogus"].contains(&ps[0].path.as_str()));
}

#[test]
fn many_problems_reported_at_once() {
    let text = r#"
[dataplane]
upstream_interface = "this-name-is-far-too-long"
flow_table_size = 1000
maglev = { m = 100 }

[bgp]
local_as = 0
router_id = "0.0.0.0"
[[bgp.peers]]
address = "192.0.2.1"
remote_as = 65000
hold_time = "2s"
md5_password = ""

[[vips]]
address = "0.0.0.0"
port = 80
ports = [81]
gue_port = 6080
min_healthy_backends = 3
backends = [{ address = "10.0.0.1", weight = 70000 }, { address = "10.0.0.1" }]
health = { type = "tcp", path = "/x", timeout = "5s", interval = "1s" }
"#;
    let ps = problems(text);
    let paths: Vec<_> = ps.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "dataplane.upstream_interface",
            "dataplane.flow_table_size",
            "dataplane.maglev.m",
            "bgp.local_as",
            "bgp.router_id",
            "bgp.peers[0].hold_time",
            "bgp.peers[0].md5_password",
            "vips[0].address",
            "vips[0].ports",
            "vips[0].gue_port",
            "vips[0].min_healthy_backends",
            "vips[0].backends[0].weight",
            "vips[0].backends[1].address",
            "vips[0].health.path",
            "vips[0].health.timeout",
        ]
    );
    assert!(ps.iter().all(|p| p.location.is_some()), "{ps:#?}");
}

#[test]
fn topology_rules() {
    let two = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\ntopology = \"two-arm\"",
    );
    one_problem(&two, "dataplane.downstream_interface", "needs a downstream");
    let one = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\ndownstream_interface = \"eth1\"",
    );
    one_problem(&one, "dataplane.downstream_interface", "two-arm");
    let bad = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\ntopology = \"three-arm\"",
    );
    one_problem(&bad, "dataplane.topology", "unknown variant");
}

#[test]
fn durations_must_have_units() {
    let text = format!("[daemon]\ndrain_time = 5\n{MINIMAL}");
    one_problem(&text, "daemon.drain_time", "string");
    let text = format!("[daemon]\ndrain_time = \"5 seconds\"\n{MINIMAL}");
    one_problem(&text, "daemon.drain_time", "invalid duration");
}

#[test]
fn kubernetes_section() {
    let text = format!("{MINIMAL}\n[kubernetes]\naddress_pool = [\"203.0.113.0/28\", \"203.0.113.8-203.0.113.20\"]\nencap = \"ipip\"\n");
    let ps = problems(&text);
    let paths: Vec<_> = ps
        .iter()
        .map(|p| (p.path.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths[0].0 == "kubernetes.address_pool[0]"
            && paths[0].1.contains("static VIP 203.0.113.10")
    );
    assert!(
        paths[1].0 == "kubernetes.address_pool[1]"
            && paths[1].1.contains("overlaps address_pool[0]")
    );
    assert!(paths[2].0 == "kubernetes.address_pool[1]" && paths[2].1.contains("static VIP"));
    let ok = format!("{MINIMAL}\n[kubernetes]\naddress_pool = [\"198.51.100.0/28\"]\n");
    let c = parse(&ok, file()).unwrap();
    let k = c.kubernetes.unwrap();
    assert_eq!(k.kubeconfig, None);
    assert_eq!(k.kube_proxy_health_port, 10256);
    assert_eq!(k.health, Timing::default());
    one_problem(
        &format!("{MINIMAL}\n[kubernetes]\naddress_pool = [\"10.0.0.1/24\"]\n"),
        "kubernetes.address_pool[0]",
        "host bits",
    );
}

#[test]
fn outer_prefix_family_mismatch() {
    let text = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\nouter_source_prefix = \"2001:db8::/64\"",
    );
    one_problem(&text, "vips[0].backends[0].address", "has no IPv4 prefix");
    // One prefix per family serves backends of both.
    let both = MINIMAL.replace(
        "upstream_interface = \"eth0\"",
        "upstream_interface = \"eth0\"\nouter_source_prefix = [\"2001:db8::/64\", \"192.0.2.128/28\"]",
    ) + "\n[[vips]]\naddress = \"2001:db8:100::10\"\nport = 80\n\n[[vips.backends]]\naddress = \"2001:db8:1::1\"\n";
    let c = parse(&both, file()).unwrap();
    assert_eq!(c.dataplane.outer_source_prefix.iter().count(), 2);
    one_problem(
        &MINIMAL.replace(
            "upstream_interface = \"eth0\"",
            "upstream_interface = \"eth0\"\nouter_source_prefix = [\"192.0.2.0/28\", \"192.0.2.16/28\"]",
        ),
        "dataplane.outer_source_prefix",
        "two prefixes of one family",
    );
}

/// An IPv6 VIP with an IPv4 backend was accepted, then never announced: the backend was
/// left out of every publish.
#[test]
fn an_ipv6_vip_with_an_ipv4_backend_is_refused() {
    let text = MINIMAL.replace("203.0.113.10", "2001:db8:100::10");
    one_problem(
        &text,
        "vips[0].backends[0].address",
        "no tunnel carries IPv6 in IPv4",
    );
    // The other way round is IPv4-in-IPv6, which is carried.
    parse(&MINIMAL.replace("10.0.0.1", "2001:db8:1::1"), file()).unwrap();
}

/// `MINIMAL` with `n` communities and `m` large communities on its VIP, or on
/// `[kubernetes]`.
fn with_communities(n: usize, m: usize, med: bool, kube: bool) -> String {
    let list = |k: usize, f: &dyn Fn(usize) -> String| {
        (0..k)
            .map(|i| format!("\"{}\"", f(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bgp = format!(
        "{}communities = [{}]\nlarge_communities = [{}]\n",
        if med { "med = 10\n" } else { "" },
        list(n, &|i| format!("65000:{i}")),
        list(m, &|i| format!("4200000000:{i}:1")),
    );
    if kube {
        format!("{MINIMAL}\n[kubernetes]\n[kubernetes.bgp]\n{bgp}")
    } else {
        MINIMAL.replace("port = 80\n", &format!("port = 80\n[vips.bgp]\n{bgp}"))
    }
}

/// Whether a route with `b`'s attributes goes out in UPDATEs of at most 4096 octets
/// on every kind of session: eBGP or iBGP, 2- or 4-octet AS numbers with a narrow or
/// a wide local AS, IPv4 or IPv6 (a global and a link-local next hop, the longest).
fn announced_everywhere(b: &VipBgp) -> bool {
    use bgp::speaker::{AdjRibOut, Export, Routes};
    use bgp::wire::{Context, Family, Message};
    for internal in [false, true] {
        for four_octet_as in [false, true] {
            for local_as in [65000, 4_200_000_000] {
                let e = Export {
                    local_as,
                    internal,
                    ctx: Context { four_octet_as },
                    families: Family::ALL.to_vec(),
                    next_hop_v4: Some("192.0.2.1".parse().unwrap()),
                    next_hop_v6: Some("2001:db8::1".parse().unwrap()),
                    next_hop_v6_link_local: Some("fe80::1".parse().unwrap()),
                };
                for p in ["203.0.113.10/32", "2001:db8:100::10/128"] {
                    let routes = Routes::from([(p.parse().unwrap(), b.route_attributes())]);
                    let c = AdjRibOut::default().sync(&routes, &e);
                    if !c.refused.is_empty() {
                        return false;
                    }
                    for u in c.updates {
                        Message::Update(u).to_bytes(e.ctx).unwrap();
                    }
                }
            }
        }
    }
    true
}

#[test]
fn communities_must_fit_one_update() {
    let p = one_problem(
        &with_communities(2000, 0, false, false),
        "vips[0].bgp.communities",
        "4096",
    );
    assert!(p.location.is_some());
    one_problem(
        &with_communities(0, 400, false, true),
        "kubernetes.bgp.large_communities",
        "4096",
    );
    // The largest list that fits is accepted, one more is not.
    let fits = (0..2000)
        .take_while(|&n| parse(&with_communities(n, 0, true, false), file()).is_ok())
        .last()
        .unwrap();
    assert!(fits > 900, "{fits}");
    let c = parse(&with_communities(fits, 0, true, false), file()).unwrap();
    assert!(announced_everywhere(&c.vips[0].bgp));
    one_problem(
        &with_communities(fits + 1, 0, true, false),
        "vips[0].bgp.communities",
        "remove at least 1 ",
    );
}

#[test]
fn communities_of_vips_sharing_an_address_must_fit_together() {
    // Two VIPs on one address are one route carrying both lists.
    let half = (0..700)
        .map(|i| format!("\"65000:{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let other = (700..1400)
        .map(|i| format!("\"65000:{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "{}\n[[vips]]\naddress = \"203.0.113.10\"\nport = 443\nbgp = {{ communities = [{other}] }}\n[[vips.backends]]\naddress = \"10.0.0.1\"\n",
        MINIMAL.replace("port = 80\n", &format!("port = 80\nbgp = {{ communities = [{half}] }}\n"))
    );
    one_problem(&text, "vips[1].bgp.communities", "vips[0]");
    // The same lists on two addresses are two routes: fine.
    parse(&text.replacen("203.0.113.10", "203.0.113.11", 1), file()).unwrap();
}

/// A static VIP's address never goes to a Service (`ServiceSet::merge`), so no route
/// carries a static VIP's communities and `[kubernetes.bgp]`'s together: each list need
/// only fit on its own (the config used to be refused for their union).
#[test]
fn static_and_kubernetes_communities_are_never_one_route() {
    let list = |r: std::ops::Range<u32>| {
        r.map(|i| format!("\"65000:{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = |kube: &str| {
        format!(
            "{}\n[kubernetes]\n[kubernetes.bgp]\ncommunities = [{kube}]\n",
            MINIMAL.replace(
                "port = 80\n",
                &format!("port = 80\nbgp = {{ communities = [{}] }}\n", list(0..700))
            )
        )
    };
    parse(&config(&list(700..1400)), file()).unwrap();
    // Kubernetes's list alone must still fit.
    one_problem(
        &config(&list(700..1800)),
        "kubernetes.bgp.communities",
        "remove at least ",
    );
}

/// Configs that need different tunnel MTUs: IPv6 VIPs (IP-in-IP and GUE), a
/// `[kubernetes]` section (its Services may be IPv6, in either tunnel), an IPv4 VIP
/// on IPv6 nodes, and IPv4 only.
const MTU_SCENARIOS: [&str; 6] = [
    "[[vips]]\naddress = \"2001:db8:100::10\"\nport = 80\nbackends = [{ address = \"2001:db8:1::1\" }]\n",
    "[[vips]]\naddress = \"2001:db8:100::10\"\nport = 80\nencap = \"gue\"\nbackends = [{ address = \"2001:db8:1::1\" }]\n",
    "[kubernetes]\n",
    "[kubernetes]\nencap = \"gue\"\n",
    "[[vips]]\naddress = \"203.0.113.10\"\nport = 80\nencap = \"gue\"\nbackends = [{ address = \"2001:db8:1::1\" }]\n",
    "[[vips]]\naddress = \"203.0.113.10\"\nport = 80\nencap = \"gue\"\nbackends = [{ address = \"10.0.0.1\" }]\n",
];

fn mtu_config(scenario: &str, mtu: u16) -> String {
    format!(
        "[dataplane]\nupstream_interface = \"eth0\"\ntunnel_mtu = {mtu}\nmaglev = {{ m = 251 }}\nouter_source_prefix = [\"192.0.2.128/28\", \"2001:db8:f::/64\"]\n\n{scenario}"
    )
}

/// Builds the dataplane snapshot the daemon would build from `c`: its static VIPs,
/// and with `[kubernetes]` an IPv6 Service (ipFamilies, its status, or
/// loadBalancerIP may give one an IPv6 address).
fn build_snapshot(c: &Config) -> Result<(), dataplane::snapshot::SnapshotError> {
    use crate::publish::{desired, Params};
    use crate::sources::{static_list, BackendSpec, Origin, VipSpec};
    use dataplane::snapshot::{Snapshot, SourcePrefix};
    let mut set = static_list::service_set(c);
    if let Some(k) = &c.kubernetes {
        set.vips.push(VipSpec {
            name: "ns/v6".into(),
            origin: Origin::Static,
            addr: "2001:db8:200::1".parse().unwrap(),
            proto: Protocol::Tcp,
            ports: vec![80],
            hash: k.hash,
            encap: static_list::encap(k.encap, k.gue_port),
            min_healthy: k.min_healthy_backends,
            bgp: k.bgp.clone(),
            backends: vec![BackendSpec {
                addr: "2001:db8:1::9".parse().unwrap(),
                weight: 1,
            }],
            health: None,
        });
    }
    let outer = c.dataplane.outer_source_prefix;
    let params = Params {
        maglev_size: c.dataplane.maglev.m,
        maglev_seed: c.dataplane.maglev.seed,
        tunnel_mtu: c.dataplane.tunnel_mtu,
        outer_src_v4: outer.v4.map(|n| SourcePrefix {
            addr: n.addr(),
            len: n.prefix_len(),
        }),
        outer_src_v6: outer.v6.map(|n| SourcePrefix {
            addr: n.addr(),
            len: n.prefix_len(),
        }),
        local_mac: [2, 0, 0, 0, 0, 1],
    };
    let d = desired(
        &set,
        |i| set.vips[i].backends.clone(),
        &HashMap::new(),
        &params,
    );
    Snapshot::new(&d.config).map(|_| ())
}

#[test]
fn every_accepted_tunnel_mtu_builds_a_snapshot() {
    for (i, scenario) in MTU_SCENARIOS.iter().enumerate() {
        let mut lowest_accepted = None;
        let mut lowest_built = None;
        for mtu in (560..1400).chain([9216]) {
            let text = mtu_config(scenario, mtu);
            let Ok(c) = parse(&text, file()) else {
                continue;
            };
            lowest_accepted.get_or_insert(mtu);
            if let Err(e) = build_snapshot(&c) {
                panic!("scenario {i}: tunnel_mtu {mtu} accepted, but: {e}");
            }
            lowest_built.get_or_insert(mtu);
        }
        assert!(lowest_accepted.is_some(), "scenario {i}");
        // Where IPv6 VIPs may exist, the bound is exactly what the dataplane needs.
        if i < 4 {
            let mut c = parse(&mtu_config(scenario, 1500), file()).unwrap();
            c.dataplane.tunnel_mtu = lowest_accepted.unwrap() - 1;
            assert!(build_snapshot(&c).is_err(), "scenario {i}: {c:?}");
        }
    }
    let p = one_problem(
        &mtu_config(MTU_SCENARIOS[1], 1320),
        "dataplane.tunnel_mtu",
        "1332",
    );
    assert!(p.message.contains("IPv6"), "{p:?}");
    one_problem(
        &mtu_config(MTU_SCENARIOS[2], 1280),
        "dataplane.tunnel_mtu",
        "kubernetes",
    );
}

/// A config whose only VIPs come from a pool of one range.
fn pool(range: &str) -> String {
    format!("[dataplane]\nupstream_interface = \"eth0\"\n\n[kubernetes]\naddress_pool = [\"{range}\"]\n")
}

/// Edges of the blocks a VIP address may not be in (IPv4, IPv6): unspecified and
/// 0.0.0.0/8, loopback, IPv4-mapped (::ffff:0:0/96), link-local (fe80::/10), multicast,
/// broadcast; and some ordinary addresses.
const POOL_EDGES: [(u128, u128); 12] = [
    (0, 0),
    (1, 1),
    (0x00ff_ffff, 0xffff_0000_0000),
    (0x0100_0000, 0xffff_ffff_ffff),
    (0x7f00_0000, 2),
    (0x8000_0000, 0x2001_0db8 << 96),
    (0xcb00_7100, 0xfe80 << 112),
    (0xcb00_7200, 0xfec0 << 112),
    (0xe000_0000, 0xff00 << 112),
    (0xf000_0000, 0xff02 << 112),
    (0xffff_fffe, u128::MAX - 1),
    (0xffff_ffff, u128::MAX),
];

#[test]
fn pool_ranges_must_hold_only_unicast_addresses() {
    for bad in [
        "0.0.0.1-223.255.255.254",
        "126.255.255.255-128.0.0.0",
        "223.255.255.0-224.0.0.5",
        "255.255.255.0/24",
        "::-::5",
        "::1/128",
        "::/127",
        "fe00::-ffff::",
        "0.255.255.255-1.0.0.0",
        "0.1.2.0/24",
        "::2-fe80::",
        "::ffff:192.0.2.0/120",
        "::fffe:ffff:ffff-::ffff:0:0",
        "fe80::/64",
        "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff-fe80::",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff-fec0::1",
    ] {
        one_problem(&pool(bad), "kubernetes.address_pool[0]", "not unicast");
    }
    for good in [
        "1.0.0.0-126.255.255.255",
        "128.0.0.0-223.255.255.255",
        "::2-::fffe:ffff:ffff",
        "::1:0:0:0-fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fec0::-fec0::ff",
        "2001:db8::/32",
    ] {
        parse(&pool(good), file()).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

/// A link-local address (fe80::/10) is forwarded by no router and names a host only on
/// one link: as a VIP no client could reach it, as a backend the tunnel would leave by
/// whichever interface routes fe80::/10. Refused for VIPs, backends and the outer source
/// (a pool range over it is refused by `pool_ranges_must_hold_only_unicast_addresses`); a
/// peer or a next hop keeps its own, more specific message (tested with them).
#[test]
fn link_local_addresses_are_refused() {
    let msg = "fe80::10 is link-local (fe80::/10): routers do not forward it and it names a host only on one link; use a global address";
    let vip = MINIMAL
        .replace("203.0.113.10", "fe80::10")
        .replace("10.0.0.1", "fd00::1");
    one_problem(&vip, "vips[0].address", msg);
    let backend = MINIMAL
        .replace("203.0.113.10", "2001:db8::10")
        .replace("10.0.0.1", "fe80::10");
    let ps = problems(&backend);
    assert!(
        ps.iter()
            .any(|p| p.path == "vips[0].backends[0].address" && p.message == msg),
        "{ps:#?}"
    );
    let outer = MINIMAL.replace(
        "[dataplane]",
        "[dataplane]\nouter_source_prefix = \"fe80::/64\"",
    );
    let ps = problems(&outer);
    assert!(
        ps.iter().any(|p| p.path == "dataplane.outer_source_prefix"),
        "{ps:#?}"
    );
}

/// 0.0.0.0/8 names no host on the wire (RFC 1122 §3.2.1.3), and `::ffff:a.b.c.d` is the
/// IPv4 address a.b.c.d inside a host, never on the wire (RFC 4291 §2.5.5.2; the dataplane
/// keys IPv4 addresses so): neither is a VIP, a backend, a peer nor a next hop, and the
/// problem names the field.
#[test]
fn this_network_and_ipv4_mapped_addresses_are_refused() {
    for (vip, backend, msg) in [
        ("0.1.2.3", "10.0.0.1", "0.1.2.3 is not a unicast address"),
        (
            "::ffff:203.0.113.10",
            "fd00::1",
            "::ffff:203.0.113.10 is an IPv4-mapped IPv6 address (::ffff:0:0/96), never an address on the wire; write the IPv4 address 203.0.113.10",
        ),
    ] {
        let text = MINIMAL
            .replace("203.0.113.10", vip)
            .replace("10.0.0.1", backend);
        one_problem(&text, "vips[0].address", msg);
    }
    for backend in ["0.0.0.1", "::ffff:10.0.0.1"] {
        let text = MINIMAL.replace("10.0.0.1", backend);
        let ps = problems(&text);
        assert!(
            ps.iter().any(|p| p.path == "vips[0].backends[0].address"
                && (p.message.contains("not a unicast address")
                    || p.message.contains("IPv4-mapped"))),
            "{backend}: {ps:#?}"
        );
    }
    for peer in ["0.0.0.9", "::ffff:192.0.2.1"] {
        let text = format!(
            "{MINIMAL}\n[bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.254\"\n\n[[bgp.peers]]\naddress = \"{peer}\"\nremote_as = 65000\n"
        );
        let ps = problems(&text);
        assert!(
            ps.iter().any(|p| p.path == "bgp.peers[0].address"),
            "{peer}: {ps:#?}"
        );
    }
    // Their neighbours are ordinary addresses.
    for ok in ["1.0.0.0", "::fffe:cb00:710a", "::1:ffff:cb00:710a"] {
        let text = MINIMAL.replace("203.0.113.10", ok);
        let found = match parse(&text, file()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        };
        assert!(
            !found.iter().any(|p| p.path == "vips[0].address"),
            "{ok}: {found:#?}"
        );
    }
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    assert_eq!(line_col("ab", 99), (1, 3));
    assert_eq!(line_col("é", 1), (1, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}", at in any::<usize>()) {
        let _ = parse(&text, file());
        let _ = syntax_path(&text, at);
    }

    /// TOML-ish text built from the config's own vocabulary reaches deeper.
    #[test]
    fn tomlish_text_never_panics(lines in proptest::collection::vec(
        prop_oneof![
            Just("[dataplane]".to_owned()), Just("[[vips]]".to_owned()), Just("[[vips.backends]]".to_owned()),
            Just("[vips.health]".to_owned()), Just("[kubernetes]".to_owned()), Just("[bgp]".to_owned()), Just("[[bgp.peers]]".to_owned()),
            ("[a-z_]{1,20}", prop_oneof![
                Just("\"eth0\"".to_owned()), Just("\"203.0.113.1\"".to_owned()), Just("\"2s\"".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()), Just("[1, 2]".to_owned()), Just("true".to_owned()),
                Just("\"1.2.3.4/33\"".to_owned()), Just("{ m = 7 }".to_owned()), "\"[^\"\\\\]{0,10}\"",
            ]).prop_map(|(k, v)| format!("{k} = {v}")),
        ], 0..25)) {
        let _ = parse(&lines.join("\n"), file());
    }

    /// Mutations of the example (a byte replaced, deleted, or a line dropped)
    /// never panic, and every error names the file.
    #[test]
    fn mutated_example_never_panics(pos in 0usize..EXAMPLE.len(), byte in any::<u8>(), op in 0u8..3) {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        match op {
            0 => bytes[pos] = byte,
            1 => { bytes.remove(pos); }
            _ => {
                let b = EXAMPLE.as_bytes();
                let start = b[..pos].iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
                let end = b[pos..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| pos + i);
                bytes.drain(start..end);
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse(&text, file()) {
            prop_assert!(e.to_string().starts_with("test.toml"));
            prop_assert!(!e.problems().is_empty());
        }
    }

    /// Any integer in any numeric field never panics and is either accepted or named.
    #[test]
    fn numeric_fields(m in any::<i64>(), port in any::<i64>(), rise in any::<i64>()) {
        let text = format!("[dataplane]\nupstream_interface = \"eth0\"\nmaglev = {{ m = {m} }}\n[[vips]]\naddress = \"203.0.113.1\"\nport = {port}\nbackends = [{{ address = \"10.0.0.1\" }}]\nhealth = {{ type = \"tcp\", rise = {rise} }}\n");
        if let Err(e) = parse(&text, file()) {
            for p in e.problems() {
                prop_assert!(!p.path.is_empty(), "{}", e);
                prop_assert!(p.location.is_some());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A pool range is accepted exactly when every address in it would be accepted
    /// as a VIP address. The refused addresses form blocks whose edges are listed
    /// here, so checking the range's ends and every address next to an edge inside
    /// it checks them all; the ranges span from near one edge to near another.
    #[test]
    fn pool_ranges_agree_with_the_address_check(
        v6: bool,
        a in 0usize..POOL_EDGES.len(),
        b in 0usize..POOL_EDGES.len(),
        da in -3i128..3,
        db in -3i128..3,
    ) {
        let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let at = |i: usize, d: i128| {
            let e = if v6 { POOL_EDGES[i].1 } else { POOL_EDGES[i].0 };
            e.saturating_add_signed(d).min(max)
        };
        let (first, last) = {
            let (x, y) = (at(a, da), at(b, db));
            (x.min(y), x.max(y))
        };
        let ip = |n: u128| -> std::net::IpAddr {
            if v6 {
                std::net::Ipv6Addr::from(n).into()
            } else {
                std::net::Ipv4Addr::from(n as u32).into()
            }
        };
        let usable = |n: u128| {
            let text = MINIMAL.replace("203.0.113.10", &ip(n).to_string());
            // The VIP address check, not the backend's family rules.
            parse(&text, file()).map_or_else(
                |e| !e.problems().iter().any(|p| p.path == "vips[0].address"),
                |_| true,
            )
        };
        let mut probes = vec![first, last];
        for i in 0..POOL_EDGES.len() {
            for d in -1..=1 {
                let n = at(i, d);
                if (first..=last).contains(&n) {
                    probes.push(n);
                }
            }
        }
        let all_ok = probes.into_iter().all(usable);
        let range = format!("{}-{}", ip(first), ip(last));
        prop_assert_eq!(parse(&pool(&range), file()).is_ok(), all_ok, "{}", range);
    }


    /// Every accepted community list goes out on every session; a refused one could
    /// not on some.
    #[test]
    fn accepted_communities_always_fit_an_update(
        n in 0usize..1100,
        m in 0usize..380,
        med: bool,
        kube: bool,
    ) {
        let text = with_communities(n, m, med, kube);
        let b = match parse(&text, file()) {
            Ok(c) if kube => c.kubernetes.unwrap().bgp,
            Ok(c) => c.vips[0].bgp.clone(),
            Err(e) => {
                let ps = e.problems();
                prop_assert_eq!(ps.len(), 1);
                prop_assert!(ps[0].path.contains("communities"), "{:?}", ps);
                let b = VipBgp {
                    med: med.then_some(10),
                    communities: (0..n as u32).map(|i| Community((65000 << 16) | i)).collect(),
                    large_communities: (0..m as u32).map(|i| LargeCommunity(4_200_000_000, i, 1)).collect(),
                };
                // Refused only if some session could not send it.
                prop_assert!(!announced_everywhere(&b));
                return Ok(());
            }
        };
        prop_assert!(announced_everywhere(&b));
    }
}

#[test]
fn services_sharing_an_address_merge_their_route_settings() {
    let bgp = |med, c: &[u32], l: &[u32]| VipBgp {
        med,
        communities: c.iter().map(|&c| Community(c)).collect(),
        large_communities: l.iter().map(|&l| LargeCommunity(1, l, 0)).collect(),
    };
    let mut a = bgp(Some(10), &[1, 2], &[]);
    a.merge(&bgp(Some(5), &[2, 3], &[7]));
    assert_eq!(a, bgp(Some(5), &[1, 2, 3], &[7]));
    a.merge(&bgp(Some(20), &[], &[7, 8]));
    assert_eq!(a, bgp(Some(5), &[1, 2, 3], &[7, 8]));
    let mut none = bgp(None, &[], &[]);
    none.merge(&bgp(Some(7), &[], &[]));
    assert_eq!(none.med, Some(7));
    none.merge(&bgp(None, &[], &[]));
    assert_eq!(none.med, Some(7));
}

/// `MINIMAL` with one BGP peer (`peer` are its extra lines) and `extra` appended.
fn with_peer(peer: &str, extra: &str) -> String {
    format!("{MINIMAL}\n[bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n\n[[bgp.peers]]\naddress = \"192.0.2.254\"\nremote_as = 65000\n{peer}\n{extra}")
}

const VIP6: &str =
    "[[vips]]\naddress = \"2001:db8:100::10\"\nport = 80\n\n[[vips.backends]]\naddress = \"2001:db8:1::1\"\n";

#[test]
fn next_hop_is_one_address_or_one_per_family() {
    let c = parse(&with_peer("next_hop = \"192.0.2.1\"", ""), file()).unwrap();
    let nh = c.bgp.unwrap().peers[0].next_hop;
    assert_eq!((nh.v4, nh.v6), (Some("192.0.2.1".parse().unwrap()), None));
    let c = parse(
        &with_peer("next_hop = [\"2001:db8::1\", \"192.0.2.1\"]", VIP6),
        file(),
    )
    .unwrap();
    let nh = c.bgp.unwrap().peers[0].next_hop;
    assert_eq!(
        (nh.v4, nh.v6),
        (
            Some("192.0.2.1".parse().unwrap()),
            Some("2001:db8::1".parse().unwrap())
        )
    );
    let p = one_problem(
        &with_peer("next_hop = [\"192.0.2.1\", \"192.0.2.2\"]", ""),
        "bgp.peers[0].next_hop",
        "two addresses of one family (192.0.2.1 and 192.0.2.2)",
    );
    assert!(p.location.is_some());
    one_problem(
        &with_peer("next_hop = [\"192.0.2.1\", \"ff02::1\"]", ""),
        "bgp.peers[0].next_hop",
        "ff02::1 is not a unicast address",
    );
    one_problem(
        &with_peer("next_hop = \"fe80::1\"", ""),
        "bgp.peers[0].next_hop",
        "link-local",
    );
    one_problem(
        &with_peer("next_hop = 7", ""),
        "bgp.peers[0].next_hop",
        "one address, or a list",
    );
}

#[test]
fn every_static_vip_family_needs_a_next_hop() {
    // An IPv4 session without an IPv6 next hop cannot announce an IPv6 VIP.
    let p = one_problem(
        &with_peer("", VIP6),
        "vips[1].address",
        "2001:db8:100::10 would never be announced: no BGP peer has an IPv6 next hop",
    );
    assert!(p.location.is_some());
    // Nor with an IPv4 next hop only.
    one_problem(
        &with_peer("next_hop = \"192.0.2.1\"", VIP6),
        "vips[1].address",
        "no BGP peer has an IPv6 next hop",
    );
    // An IPv6 next hop alone serves both: IPv4 routes take the session's address.
    parse(&with_peer("next_hop = \"2001:db8::1\"", VIP6), file()).unwrap();
    // So does a second session over IPv6.
    let second = "[[bgp.peers]]\naddress = \"2001:db8::fe\"\nremote_as = 65000\n";
    parse(&with_peer("", &format!("{second}\n{VIP6}")), file()).unwrap();
    // An IPv6 session without an IPv4 next hop cannot announce MINIMAL's IPv4 VIP.
    one_problem(
        &with_peer("", "").replace("\"192.0.2.254\"", "\"2001:db8::fe\""),
        "vips[0].address",
        "203.0.113.10 would never be announced: no BGP peer has an IPv4 next hop",
    );
    // Without peers nothing is announced, and nothing is missing.
    parse(
        &format!("{MINIMAL}\n[bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n\n{VIP6}"),
        file(),
    )
    .unwrap();
    // A pool's IPv6 range is held to the same rule.
    one_problem(
        &with_peer(
            "",
            "[kubernetes]\naddress_pool = [\"203.0.113.128/28\", \"2001:db8:200::/120\"]\n",
        ),
        "kubernetes.address_pool[1]",
        "its IPv6 addresses would never be announced",
    );
}

/// A link-local peer address names no host without an interface (the session's connect
/// failed with EINVAL, retried forever), so it is refused, naming the field; and such a
/// peer does not count as one that gives IPv6 VIPs a next hop. Both used to pass.
#[test]
fn a_link_local_peer_is_refused_and_carries_no_ipv6_route() {
    let text = with_peer("", VIP6).replace("\"192.0.2.254\"", "\"fe80::1\"");
    let ps = problems(&text);
    let found = |path: &str| {
        ps.iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {ps:#?}"))
    };
    let peer = found("bgp.peers[0].address");
    assert!(peer.message.contains("fe80::1 is link-local"), "{ps:#?}");
    assert!(peer.location.is_some());
    // The IPv6 VIP has no next hop now (MINIMAL's IPv4 one never had).
    let vip6 = found("vips[1].address");
    assert!(
        vip6.message.contains("no BGP peer has an IPv6 next hop"),
        "{ps:#?}"
    );
    found("vips[0].address");
    assert_eq!(ps.len(), 3, "{ps:#?}");
    // Nor may a session be bound to a link-local address.
    let bound = with_peer(
        "local_address = \"fe80::2\"\nnext_hop = [\"192.0.2.1\", \"2001:db8::1\"]",
        "",
    );
    one_problem(
        &bound.replace("\"192.0.2.254\"", "\"2001:db8::fe\""),
        "bgp.peers[0].local_address",
        "fe80::2 is link-local",
    );
}

/// `min_hold_time`: 0 (the default) or from 3 s, and never above the hold time we
/// propose, since the session runs on the lower of the two proposals.
#[test]
fn min_hold_time_is_checked_against_the_hold_time() {
    let c = parse(&with_peer("", ""), file()).unwrap();
    assert_eq!(c.bgp.unwrap().peers[0].min_hold_time, Duration::ZERO);
    let c = parse(&with_peer("min_hold_time = \"30s\"", ""), file()).unwrap();
    assert_eq!(
        c.bgp.unwrap().peers[0].min_hold_time,
        Duration::from_secs(30)
    );
    for (lines, needle) in [
        ("min_hold_time = \"2s\"", "from 3s to 65535s"),
        ("min_hold_time = \"3500ms\"", "from 3s to 65535s"),
        ("min_hold_time = \"91s\"", "91s is above hold_time (90s)"),
        (
            "hold_time = \"0s\"\nmin_hold_time = \"3s\"",
            "3s is above hold_time (0s)",
        ),
    ] {
        one_problem(&with_peer(lines, ""), "bgp.peers[0].min_hold_time", needle);
    }
}

/// The warnings of a valid config, as (path, message).
fn warnings(text: &str) -> Vec<(String, String)> {
    let c = parse(text, file()).unwrap_or_else(|e| panic!("refused: {e}"));
    c.warnings
        .into_iter()
        .map(|w| (w.path, w.message))
        .collect()
}

#[test]
fn a_vip_without_a_health_check_is_a_warning_not_an_error() {
    let w = warnings(MINIMAL);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].0, "vips[0].health");
    assert!(w[0].1.contains("no health check"), "{w:#?}");
    let c = parse(MINIMAL, file()).unwrap();
    // Located at the VIP's table (the field is missing), so `dsrgate check` can point there.
    assert_eq!(c.warnings[0].location.map(|l| l.0), Some(5));
    let checked = format!("{MINIMAL}\n[vips.health]\ntype = \"tcp\"\n");
    assert_eq!(warnings(&checked), []);
}

#[test]
fn the_example_config_has_no_warnings() {
    assert_eq!(warnings(EXAMPLE), []);
}

#[test]
fn too_few_weighted_backends_to_announce_is_a_warning() {
    let text = |w1: u32, w2: u32, min: u32| {
        format!(
            "[dataplane]\nupstream_interface = \"eth0\"\n\n[[vips]]\naddress = \"203.0.113.10\"\nport = 80\nmin_healthy_backends = {min}\n[vips.health]\ntype = \"tcp\"\n\n[[vips.backends]]\naddress = \"10.0.0.1\"\nweight = {w1}\n\n[[vips.backends]]\naddress = \"10.0.0.2\"\nweight = {w2}\n"
        )
    };
    assert_eq!(warnings(&text(1, 1, 2)), []);
    assert_eq!(warnings(&text(0, 1, 1)), []);
    for (w1, w2, min, active) in [(0, 0, 1, 0), (1, 0, 2, 1)] {
        let w = warnings(&text(w1, w2, min));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].0, "vips[0].backends");
        assert!(
            w[0].1
                .starts_with(&format!("{active} of 2 backends have nonzero weight")),
            "{w:#?}"
        );
    }
}

#[test]
fn a_maglev_table_under_100_slots_per_backend_is_a_warning() {
    let text = |m: u32| {
        format!(
            "[dataplane]\nupstream_interface = \"eth0\"\nmaglev = {{ m = {m} }}\n\n[[vips]]\naddress = \"203.0.113.10\"\nport = 80\n[vips.health]\ntype = \"tcp\"\n\n[[vips.backends]]\naddress = \"10.0.0.1\"\n\n[[vips.backends]]\naddress = \"10.0.0.2\"\n\n[[vips.backends]]\naddress = \"10.0.0.3\"\nweight = 0\n"
        )
    };
    // Two backends with weight: 200 slots are enough, 199 are not; 211 is the next prime.
    assert_eq!(warnings(&text(211)), []);
    let w = warnings(&text(199));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].0, "vips[0].backends");
    assert!(
        w[0].1
            .contains("2 backends share a Maglev table of 199 slots"),
        "{w:#?}"
    );
    assert!(w[0].1.contains("(e.g. 211)"), "{w:#?}");
}

#[test]
fn a_udp_vips_check_on_its_own_port_is_a_warning() {
    let text = |proto: &str, health: &str| {
        format!(
            "[dataplane]\nupstream_interface = \"eth0\"\n\n[[vips]]\naddress = \"203.0.113.10\"\nprotocol = \"{proto}\"\nports = [514, 515]\n[vips.health]\n{health}\n\n[[vips.backends]]\naddress = \"10.0.0.1\"\n"
        )
    };
    for kind in ["tcp", "http"] {
        let w = warnings(&text("udp", &format!("type = \"{kind}\"")));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].0, "vips[0].health.port");
        assert!(
            w[0].1.contains("to TCP port 514 (the VIP's first port)"),
            "{w:#?}"
        );
    }
    // A port of its own, or a TCP VIP, is what was meant.
    assert_eq!(warnings(&text("udp", "type = \"tcp\"\nport = 8080")), []);
    assert_eq!(warnings(&text("tcp", "type = \"http\"")), []);
}

#[test]
fn an_outer_source_prefix_over_a_vip_a_backend_or_the_pool_is_a_warning() {
    let text = |prefix: &str, kube: &str| {
        format!(
            "[dataplane]\nupstream_interface = \"eth0\"\nouter_source_prefix = [\"{prefix}\", \"2001:db8:ff::/64\"]\n\n[[vips]]\naddress = \"203.0.113.10\"\nport = 80\n[vips.health]\ntype = \"tcp\"\n\n[[vips.backends]]\naddress = \"10.0.0.1\"\n\n[[vips.backends]]\naddress = \"10.0.0.2\"\n{kube}"
        )
    };
    let pool = "\n[kubernetes]\naddress_pool = [\"198.51.100.128/26\"]\n";
    assert_eq!(warnings(&text("192.0.2.0/24", pool)), []);
    for (prefix, kube, needle) in [
        (
            "203.0.113.0/24",
            "",
            "contains the VIP 203.0.113.10 (vips[0])",
        ),
        (
            "10.0.0.2/32",
            "",
            "contains the backend 10.0.0.2 (vips[0].backends[1])",
        ),
        (
            "198.51.100.0/24",
            pool,
            "contains addresses of the Kubernetes address pool (kubernetes.address_pool[0])",
        ),
    ] {
        let w = warnings(&text(prefix, kube));
        assert_eq!(w.len(), 1, "{prefix}: {w:#?}");
        assert_eq!(w[0].0, "dataplane.outer_source_prefix");
        assert!(w[0].1.contains(needle), "{w:#?}");
        assert!(w[0].1.contains("martian"), "{w:#?}");
    }
}
