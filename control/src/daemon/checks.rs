//! What the daemon checks of a config against the host and against the running config:
//! at start, that this process has the capabilities the daemon needs, that its interfaces
//! exist and its worker cores are ones this process may run on ([`host_problems`], which
//! `dsrgate check --host` runs too); at reload, that nothing only a restart applies has
//! changed. Each error names the file and the field, as `FILE: `field`: message`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Result};
use bgp::speaker::Speaker;
use dataplane::iface;
use dataplane::xsk::{max_rx_frame, XskConfig};

use super::forwarding::Fixed;
use crate::caps;
use crate::config::{Bgp, Config, Topology};

/// An error about `fields` (dotted paths, e.g. `dataplane.upstream_interface`) of `file`.
pub fn field_error(file: &Path, fields: &[String], message: impl Display) -> anyhow::Error {
    let fields: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    anyhow!("{}: {}: {message}", file.display(), fields.join(", "))
}

/// Everything about this host that stops the daemon from starting with `config` (from
/// `file`), one line each, naming the file (and the field): capabilities this process
/// lacks, configured interfaces missing from this network namespace or an uplink MTU too
/// large ([`interfaces`]), worker cores this process may not run on ([`worker_cores`]),
/// listening addresses that are not this host's ([`listen_addresses`]). All of them, not
/// only the first, so that an operator sees everything to fix at once: the daemon's start
/// refuses with them all, and `dsrgate check --host` prints them.
pub fn host_problems(file: &Path, config: &Config) -> Vec<String> {
    let fixed = Fixed::of(config);
    let caps = caps::require(&super::required_caps(config))
        .err()
        .map(|e| anyhow!("{}: {e:#}", file.display()));
    caps.into_iter()
        .chain(interfaces(file, &fixed))
        .chain(worker_cores(file, &fixed.cores))
        .chain(listen_addresses(file, config))
        .map(|e| format!("{e:#}"))
        .collect()
}

/// A problem, naming the fields, for each address the BGP listeners or the API would
/// listen at that cannot be bound in this namespace (not one of its addresses: EADDRNOTAVAIL;
/// an IPv6 one on a host without IPv6). Only the address is tried, with a UDP socket on
/// port 0, which nothing else holds: whether the port is free is not checked, since the
/// daemon itself holds its ports while it runs (and `dsrgate check --host` is run before a
/// restart or a reload). `[::]` and `0.0.0.0` are every address, so not tried.
fn listen_addresses(file: &Path, config: &Config) -> Vec<anyhow::Error> {
    let bindable = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            return Ok(());
        }
        std::net::UdpSocket::bind((addr.ip(), 0)).map(drop)
    };
    let bgp = config.bgp.iter().flat_map(|bgp| {
        super::routes::speaker_config(bgp)
            .listen
            .into_iter()
            .filter_map(|addr| {
                let e = bindable(addr).err()?;
                let message = format!("cannot listen for BGP on {addr}: {e}");
                Some(field_error(file, &listen_fields(bgp, addr), message))
            })
    });
    let api = config.api.listen;
    let api = bindable(api).err().map(|e| {
        field_error(
            file,
            &["api.listen".to_owned()],
            format!("cannot listen on {api}: {e}"),
        )
    });
    bgp.chain(api).collect()
}

/// A problem, naming the field, for each configured interface that does not exist in this
/// namespace, and for an upstream interface whose MTU is larger than the AF_XDP workers
/// can receive ([`uplink_mtu`]).
fn interfaces(file: &Path, fixed: &Fixed) -> Vec<anyhow::Error> {
    let missing = |field: &str, iface: &str| {
        super::ifindex(iface)
            .err()
            .map(|e| field_error(file, &[format!("dataplane.{field}")], format!("{e:#}")))
    };
    let mut problems = Vec::new();
    match missing("upstream_interface", &fixed.uplink) {
        Some(e) => problems.push(e),
        // Only an uplink that exists has an MTU to check.
        None => match iface::mtu(&fixed.uplink) {
            Ok(mtu) => {
                let xsk = XskConfig::new(&fixed.uplink);
                problems.extend(uplink_mtu(file, &fixed.uplink, mtu, &xsk).err());
            }
            Err(e) => problems.push(field_error(
                file,
                &["dataplane.upstream_interface".to_owned()],
                format!("reading the MTU of {}: {e}", fixed.uplink),
            )),
        },
    }
    if let Some(downlink) = &fixed.downlink {
        problems.extend(missing("downstream_interface", downlink));
    }
    problems
}

/// Fails, naming the field, if `mtu`, the upstream interface `iface`'s, is larger than the
/// IP packets the workers (configured as `xsk`) receive whole ([`XskConfig::max_mtu`]):
/// the kernel would drop a larger VIP packet before a worker saw it, so it would get no
/// "too big" reply either. The downstream interface only transmits (the workers' frames,
/// which came in on the upstream one), so its MTU has no such limit.
pub fn uplink_mtu(file: &Path, iface: &str, mtu: u32, xsk: &XskConfig) -> Result<()> {
    let limit = xsk.max_mtu();
    if mtu <= limit {
        return Ok(());
    }
    Err(field_error(
        file,
        &["dataplane.upstream_interface".to_owned()],
        format!(
            "{iface} has MTU {mtu}, more than the {limit} the AF_XDP workers can receive (a \
             {}-byte UMEM frame less {} bytes of headroom, an Ethernet header and one VLAN \
             tag): the kernel would drop larger VIP packets before any worker saw them, with \
             no \"too big\" reply; set the MTU of {iface} to {limit} or less",
            xsk.frame_size,
            xsk.frame_size - max_rx_frame(xsk.frame_size),
        ),
    ))
}

/// A problem, naming its field, for each worker core that is not one of `allowed` (the
/// CPUs this process may run on): its worker could not be pinned there.
fn cores(file: &Path, cores: &[usize], allowed: &[usize]) -> Vec<anyhow::Error> {
    cores
        .iter()
        .enumerate()
        .filter(|(_, core)| !allowed.contains(core))
        .map(|(i, core)| {
            field_error(
                file,
                &[format!("dataplane.worker_cores[{i}]")],
                format!(
                    "core {core} is not available (this process may run on {})",
                    cpu_list(allowed)
                ),
            )
        })
        .collect()
}

/// [`cores`] against this process's CPUs ([`allowed_cpus`]). No cores (unpinned workers,
/// one per RX queue, however many there are) is nothing to check.
fn worker_cores(file: &Path, worker_cores: &[usize]) -> Vec<anyhow::Error> {
    if worker_cores.is_empty() {
        return Vec::new();
    }
    match allowed_cpus() {
        Ok(allowed) => cores(file, worker_cores, &allowed),
        Err(e) => vec![anyhow::Error::new(e)
            .context("reading the CPUs this process may run on (sched_getaffinity)")],
    }
}

/// The CPUs this process may run on (its affinity mask, `sched_getaffinity`).
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    const WORD: usize = libc::c_ulong::BITS as usize;
    // A mask of CPU_SETSIZE bits, doubled while the kernel's is larger (EINVAL).
    let mut words = libc::CPU_SETSIZE as usize / WORD;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        let bytes = words * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: `mask` is `bytes` long and writable; the kernel writes at most that many
        // bytes (cpu_set_t is an array of unsigned longs, so any length of them is one).
        let r = unsafe { libc::sched_getaffinity(0, bytes, mask.as_mut_ptr().cast()) };
        if r == 0 {
            return Ok((0..words * WORD)
                .filter(|&cpu| mask[cpu / WORD] & (1 << (cpu % WORD)) != 0)
                .collect());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || words >= 1 << 16 {
            return Err(e);
        }
        words *= 2;
    }
}

/// CPUs as ranges: `0-3,6,8-9`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut cpus = cpus.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for c in cpus {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => ranges.push((c, c)),
        }
    }
    if ranges.is_empty() {
        return "no CPU".to_owned();
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The settings of `new` that differ from the running `old` and that only a restart
/// applies (the interfaces, the worker cores, the flow table's size): one error line for
/// each, naming the field and both values.
pub fn restart_only_changes(file: &Path, old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.dataplane, &new.dataplane);
    let topology = |t: Topology| match t {
        Topology::OneArm => "one-arm",
        Topology::TwoArm => "two-arm",
    };
    let iface = |i: &Option<String>| {
        i.as_ref()
            .map_or_else(|| "none".to_owned(), |i| format!("{i:?}"))
    };
    let mut changes = Vec::new();
    let mut changed = |field: &str, from: String, to: String| {
        if from != to {
            changes.push(
                field_error(
                    file,
                    &[format!("dataplane.{field}")],
                    format!("changed from {from} to {to}: only a restart applies it"),
                )
                .to_string(),
            );
        }
    };
    changed(
        "topology",
        topology(o.topology).into(),
        topology(n.topology).into(),
    );
    changed(
        "upstream_interface",
        format!("{:?}", o.upstream_interface),
        format!("{:?}", n.upstream_interface),
    );
    changed(
        "downstream_interface",
        iface(&o.downstream_interface),
        iface(&n.downstream_interface),
    );
    changed(
        "worker_cores",
        format!("{:?}", o.worker_cores),
        format!("{:?}", n.worker_cores),
    );
    changed(
        "flow_table_size",
        o.flow_table_size.to_string(),
        n.flow_table_size.to_string(),
    );
    debug_assert!(
        !changes.is_empty() || Fixed::of(old) == Fixed::of(new),
        "a restart-only setting is not compared"
    );
    changes
}

/// The fields of `bgp` that ask for a listener on `addr`: the `local_address` of each
/// passive peer awaited there, or the `port` of each awaited on every address (`[::]`).
pub fn listen_fields(bgp: &Bgp, addr: SocketAddr) -> Vec<String> {
    let fields: Vec<String> = bgp
        .peers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.passive && p.port == addr.port())
        .filter_map(|(i, p)| match p.local_address {
            Some(a) if a == addr.ip() => Some(format!("bgp.peers[{i}].local_address")),
            None if addr.ip().is_unspecified() => Some(format!("bgp.peers[{i}].port")),
            _ => None,
        })
        .collect();
    if fields.is_empty() {
        vec!["bgp.peers".to_owned()]
    } else {
        fields
    }
}

/// Fails if no BGP speaker runs while `[bgp]` is configured (`configured`): its thread
/// ended (its event loop failed, or it panicked: its sessions are closed, though its last
/// status still shows them), or it could not be started again after a failed restart.
/// Nothing is announced then, and only a restart of the daemon brings it back.
pub fn speaker(speaker: Option<&Speaker>, configured: bool) -> Result<()> {
    match speaker {
        Some(s) if s.ended() => Err(anyhow!(
            "the BGP speaker thread ended (see the error or panic logged before): \
             its sessions are closed"
        )),
        None if configured => Err(anyhow!(
            "no BGP speaker runs: it could not be started again with the running settings \
             (see the error logged before)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const BASE: &str = "[dataplane]\nupstream_interface = \"eth0\"\nflow_table_size = 4096\n";

    fn parse(text: &str) -> Config {
        config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn lines(problems: Vec<anyhow::Error>) -> Vec<String> {
        problems.iter().map(|e| format!("{e:#}")).collect()
    }

    #[test]
    fn cpu_lists_are_ranges() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "no CPU");
    }

    #[test]
    fn a_core_this_process_may_not_run_on_is_named() {
        let file = Path::new("/etc/dsrgate.toml");
        assert!(cores(file, &[0, 1], &[0, 1]).is_empty());
        assert_eq!(
            lines(cores(file, &[1, 1000, 0, 1001], &[0, 1])),
            [
                "/etc/dsrgate.toml: `dataplane.worker_cores[1]`: core 1000 is not available \
                 (this process may run on 0-1)",
                "/etc/dsrgate.toml: `dataplane.worker_cores[3]`: core 1001 is not available \
                 (this process may run on 0-1)",
            ]
        );
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.len() <= std::thread::available_parallelism().unwrap().get());
    }

    /// Both arms missing: both named, and no MTU read of the missing uplink.
    #[test]
    fn each_missing_interface_is_named_with_its_field() {
        let c = parse(&BASE.replace(
            "upstream_interface = \"eth0\"",
            "topology = \"two-arm\"\nupstream_interface = \"nosuch0\"\n\
             downstream_interface = \"nosuch1\"",
        ));
        let e = lines(interfaces(Path::new("/etc/d.toml"), &Fixed::of(&c)));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("/etc/d.toml: `dataplane.upstream_interface`: ")
                && e[0].contains("nosuch0"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("/etc/d.toml: `dataplane.downstream_interface`: ")
                && e[1].contains("nosuch1"),
            "{e:?}"
        );
    }

    #[test]
    fn an_uplink_mtu_the_workers_cannot_receive_is_named_with_its_limit() {
        let file = Path::new("/etc/d.toml");
        let xsk = XskConfig::new("eth0");
        assert!(uplink_mtu(file, "eth0", 1500, &xsk).is_ok());
        assert!(uplink_mtu(file, "eth0", 3758, &xsk).is_ok());
        let e = uplink_mtu(file, "eth0", 3759, &xsk)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/d.toml: `dataplane.upstream_interface`: eth0 has MTU 3759, more than the \
             3758 the AF_XDP workers can receive (a 4096-byte UMEM frame less 320 bytes of \
             headroom, an Ethernet header and one VLAN tag): the kernel would drop larger VIP \
             packets before any worker saw them, with no \"too big\" reply; set the MTU of \
             eth0 to 3758 or less"
        );
    }

    /// The check reads the real interface: `lo` (MTU 65536) is refused as an uplink.
    #[test]
    fn the_start_check_reads_the_uplink_mtu() {
        let c = parse(&BASE.replace("eth0", "lo"));
        let e = lines(interfaces(Path::new("/etc/d.toml"), &Fixed::of(&c)));
        assert!(
            e.len() == 1
                && e[0]
                    .starts_with("/etc/d.toml: `dataplane.upstream_interface`: lo has MTU 65536, ")
                && e[0].ends_with("set the MTU of lo to 3758 or less"),
            "{e:?}"
        );
    }

    /// At the limit the uplink is accepted, one byte over it is refused: a veth in a
    /// scratch namespace.
    #[test]
    fn an_uplink_at_the_mtu_limit_starts_and_one_byte_over_does_not() {
        use dsrgate_tests::netns::{unique_prefix, Port, Topology};
        if !dsrgate_tests::require_privileges("uplink MTU check") {
            return;
        }
        let mut t = Topology::default();
        t.ns("a");
        t.ns("b");
        t.link(Port::new("a", "up0"), Port::new("b", "eth0"), Some(3758));
        let net = t.build(&unique_prefix()).unwrap();
        let c = parse(&BASE.replace("eth0", "up0"));
        let a = net.ns("a");
        let check = || {
            a.enter(|| lines(interfaces(Path::new("d.toml"), &Fixed::of(&c))))
                .unwrap()
        };
        assert_eq!(check(), Vec::<String>::new());
        a.ip(&["link", "set", "dev", "up0", "mtu", "3759"]).unwrap();
        let e = check();
        assert!(
            e.len() == 1 && e[0].contains("up0 has MTU 3759, more than the 3758"),
            "{e:?}"
        );
    }

    /// Only the address is tried: a port in use (as a running daemon's are) is no problem,
    /// nor is `[::]`; an address this host lacks is, named by the fields that ask for it.
    #[test]
    fn a_listening_address_this_host_lacks_is_named() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let c = parse(&format!(
            "{BASE}\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nremote_as = 65000\npassive = true\n\
             [[bgp.peers]]\naddress = \"192.0.2.3\"\nremote_as = 65000\npassive = true\n\
             port = 1179\nlocal_address = \"192.0.2.99\"\n"
        ));
        assert_eq!(
            lines(listen_addresses(Path::new("d.toml"), &c)),
            [
                "d.toml: `bgp.peers[1].local_address`: cannot listen for BGP on \
                 192.0.2.99:1179: Cannot assign requested address (os error 99)"
            ]
        );
    }

    #[test]
    fn restart_only_changes_are_named() {
        let file = Path::new("d.toml");
        let old = parse(BASE);
        assert!(restart_only_changes(file, &old, &old).is_empty());
        let new = parse(
            &BASE
                .replace("eth0", "eth1")
                .replace("4096", "8192\nworker_cores = [1]"),
        );
        assert_eq!(
            restart_only_changes(file, &old, &new),
            [
                "d.toml: `dataplane.upstream_interface`: changed from \"eth0\" to \"eth1\": \
                 only a restart applies it",
                "d.toml: `dataplane.worker_cores`: changed from [] to [1]: only a restart \
                 applies it",
                "d.toml: `dataplane.flow_table_size`: changed from 4096 to 8192: only a \
                 restart applies it",
            ]
        );
        let two = parse(&BASE.replace(
            "upstream_interface = \"eth0\"",
            "topology = \"two-arm\"\nupstream_interface = \"eth0\"\ndownstream_interface = \"eth1\"",
        ));
        let changes = restart_only_changes(file, &old, &two);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes[0].contains("`dataplane.topology`: changed from one-arm to two-arm"));
        assert!(changes[1].contains("`dataplane.downstream_interface`: changed from none"));
    }

    #[test]
    fn a_listener_is_named_by_the_peers_that_ask_for_it() {
        let c = parse(&format!(
            "{BASE}\n[bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nremote_as = 65000\npassive = true\n\
             local_address = \"192.0.2.99\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.3\"\nremote_as = 65000\npassive = true\n\
             port = 1179\n\
             [[bgp.peers]]\naddress = \"192.0.2.4\"\nremote_as = 65000\n"
        ));
        let bgp = c.bgp.as_ref().unwrap();
        let at = |a: &str| listen_fields(bgp, a.parse().unwrap());
        assert_eq!(at("192.0.2.99:179"), ["bgp.peers[0].local_address"]);
        assert_eq!(at("[::]:1179"), ["bgp.peers[1].port"]);
    }

    #[test]
    fn a_speaker_that_ended_or_is_missing_fails_the_loop() {
        assert!(speaker(None, false).is_ok(), "no [bgp], no speaker");
        let e = speaker(None, true).unwrap_err().to_string();
        assert!(e.contains("no BGP speaker runs"), "{e}");

        let mut s = Speaker::spawn(bgp::speaker::Config::default()).unwrap();
        assert!(speaker(Some(&s), true).is_ok(), "a running speaker");
        s.shutdown("test");
        let e = speaker(Some(&s), true).unwrap_err().to_string();
        assert!(e.contains("the BGP speaker thread ended"), "{e}");
    }
}
