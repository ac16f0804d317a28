//! The gateway's XDP steering program: only VIP traffic (by address, protocol and port;
//! fragments and ICMP errors about it) is redirected toward the AF_XDP sockets, a real
//! AF_XDP socket receives it, everything else reaches the kernel, and nothing stays
//! attached afterwards.

use dataplane::bpf::{AttachMode, BpfError, Steer, SteerCounters, Vip};
use dsrgate_tests::frames::*;
use dsrgate_tests::netns::{unique_prefix, Net, Port, Topology, VIP4, VIP6};
use dsrgate_tests::require_privileges;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const GW4: &str = "10.88.0.2";
const GW6: &str = "fd88::2";
const CL4: &str = "10.88.0.1";
const CL6: &str = "fd88::1";
const CLIENT4: &str = "203.0.113.10";
const CLIENT6: &str = "2001:db8:c::10";
/// A unicast MAC address of no interface here.
const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

struct Gw {
    net: Net,
    gw_mac: [u8; 6],
    cl_mac: [u8; 6],
}

impl Gw {
    fn new() -> Gw {
        Gw::with_queues(None)
    }

    /// With `queues` TX and RX queues on both veth ends (veth's default is one).
    fn with_queues(queues: Option<u32>) -> Gw {
        let mut t = Topology::default();
        let cl = t.ns("cl");
        cl.addresses.push(("eth0".into(), format!("{CL4}/24")));
        cl.addresses.push(("eth0".into(), format!("{CL6}/64")));
        let gw = t.ns("gw");
        gw.addresses.push(("eth0".into(), format!("{GW4}/24")));
        gw.addresses.push(("eth0".into(), format!("{GW6}/64")));
        let (mut cl_port, mut gw_port) =
            (Port::new("cl", "eth0").tx_off(), Port::new("gw", "eth0"));
        if let Some(n) = queues {
            (cl_port, gw_port) = (cl_port.queues(n), gw_port.queues(n));
        }
        t.link(cl_port, gw_port, None);
        let net = t.build(&unique_prefix()).expect("building the topology");
        let gw_mac = net.ns("gw").mac("eth0").unwrap();
        let cl_mac = net.ns("cl").mac("eth0").unwrap();
        Gw {
            net,
            gw_mac,
            cl_mac,
        }
    }

    fn attach(&self, mode: Option<AttachMode>) -> Steer {
        let mut steer = self
            .net
            .ns("gw")
            .enter(|| Steer::attach_with("eth0", mode))
            .unwrap()
            .unwrap();
        steer
            .set_vips(&[
                Vip::tcp(v4(VIP4).into(), 80),
                Vip::udp(v4(VIP4).into(), 53),
                Vip::tcp(v6(VIP6).into(), 80),
            ])
            .unwrap();
        steer
    }

    fn send(&self, frames: &[Vec<u8>]) {
        self.net
            .ns("cl")
            .enter(|| {
                let sock = PacketSocket::open("eth0").unwrap();
                for f in frames {
                    sock.send(f).unwrap();
                }
            })
            .unwrap();
    }

    fn eth4(&self, ip: &[u8]) -> Vec<u8> {
        eth(self.gw_mac, self.cl_mac, ETH_IPV4, ip)
    }

    fn eth6(&self, ip: &[u8]) -> Vec<u8> {
        eth(self.gw_mac, self.cl_mac, ETH_IPV6, ip)
    }

    fn xdp_shown(&self) -> String {
        let link = self
            .net
            .ns("gw")
            .ip(&["-o", "link", "show", "dev", "eth0"])
            .unwrap();
        link.split_whitespace()
            .filter(|w| matches!(*w, "xdp" | "xdpgeneric" | "xdpoffload" | "xdpmulti"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn tcp4(dst: &str, dport: u16) -> Vec<u8> {
    let t = tcp_syn(v4(CLIENT4).into(), v4(dst).into(), 40000, dport);
    ipv4(v4(CLIENT4), v4(dst), PROTO_TCP, &t)
}

fn udp4(dst: &str, dport: u16) -> Vec<u8> {
    let u = udp(v4(CLIENT4).into(), v4(dst).into(), 40000, dport, b"hello");
    ipv4(v4(CLIENT4), v4(dst), PROTO_UDP, &u)
}

fn tcp6(dst: &str, dport: u16) -> Vec<u8> {
    let t = tcp_syn(v6(CLIENT6).into(), v6(dst).into(), 40000, dport);
    ipv6(v6(CLIENT6), v6(dst), PROTO_TCP, &t)
}

/// A packet a VIP sent (reply direction) as quoted in an ICMP error: header + 8 bytes.
fn quoted4(proto: u8, sport: u16) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend(40000u16.to_be_bytes());
    l4.extend([0, 0, 0, 1]);
    let mut ip = ipv4(v4(VIP4), v4(CLIENT4), proto, &l4);
    ip[2..4].copy_from_slice(&1500u16.to_be_bytes()); // the original was longer
    ip
}

fn quoted6(proto: u8, sport: u16) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend(40000u16.to_be_bytes());
    l4.extend([0, 0, 0, 1]);
    ipv6(v6(VIP6), v6(CLIENT6), proto, &l4)
}

/// An ICMPv4 error from a router on the path back to the VIP.
fn icmp4_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let m = icmp4(kind, code, [0, 0, 0x05, 0xdc], quoted);
    ipv4(v4("198.18.0.1"), v4(VIP4), PROTO_ICMP, &m)
}

fn icmp6_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let src = v6("2001:db8:ffff::1");
    let m = icmp6(src, v6(VIP6), kind, code, [0, 0, 0x05, 0x00], quoted);
    ipv6(src, v6(VIP6), PROTO_ICMPV6, &m)
}

/// IPv4 to the VIP's TCP service with IHL 3: unusable, so dropped by the program. Sent
/// after each case as a marker (to the MAC address the program steers): once it is
/// counted, the case before it has been too (one veth queue keeps order).
fn bad_ihl() -> Vec<u8> {
    let mut p = tcp4(VIP4, 80);
    p[0] = 0x43;
    p
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Steer,
    Pass,
    Drop,
}

fn wait_for(steer: &Steer, done: impl Fn(&SteerCounters) -> bool) -> SteerCounters {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = steer.counters().unwrap();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends each case followed by the marker and checks exactly how it was counted.
fn check_cases(gw: &Gw, steer: &Steer, cases: &[(&str, Vec<u8>, Want)]) {
    for (name, frame, want) in cases {
        let before = steer.counters().unwrap();
        let marker = eth(steer.mac(), gw.cl_mac, ETH_IPV4, &bad_ihl());
        gw.send(&[frame.clone(), marker]);
        let extra_drop = u64::from(*want == Want::Drop);
        wait_for(steer, |c| c.dropped > before.dropped + extra_drop);
        // Counted before the marker, or not at all; the pause catches a case that was
        // counted as a drop (which would have released the wait early).
        std::thread::sleep(Duration::from_millis(30));
        let after = steer.counters().unwrap();
        let steered = after.no_socket + after.redirected - before.no_socket - before.redirected;
        let dropped = after.dropped - before.dropped - 1;
        let got = match (steered, dropped) {
            (1, 0) => Want::Steer,
            (0, 1) => Want::Drop,
            (0, 0) => Want::Pass,
            _ => panic!("{name}: steered {steered}, dropped {dropped} ({before:?} -> {after:?})"),
        };
        assert_eq!(got, *want, "{name}");
        if got == Want::Pass {
            assert!(
                after.passed > before.passed,
                "{name}: not counted as passed"
            );
        }
    }
}

#[test]
fn steers_exactly_the_vip_traffic() {
    if !require_privileges("steer test") {
        return;
    }
    let gw = Gw::new();
    let steer = gw.attach(None);
    assert_eq!(steer.mode(), AttachMode::Driver, "veth supports native XDP");
    let (c4, c6): (IpAddr, IpAddr) = (v4(CLIENT4).into(), v6(CLIENT6).into());
    let (vip4, vip6): (IpAddr, IpAddr) = (v4(VIP4).into(), v6(VIP6).into());

    let mut qinq = vec![0x00, 0x64, 0x81, 0x00, 0x00, 0xc8, 0x08, 0x00];
    qinq.extend(tcp4(VIP4, 80));
    let mut random = gw.gw_mac.to_vec();
    let mut x: u32 = 0x1234_5678;
    random.extend((0..58).map(|_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    }));
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend(gw.cl_mac);
    arp.extend(v4(CL4).octets());
    arp.extend([0; 6]);
    arp.extend(v4(GW4).octets());
    let mut tot_len_too_big = tcp4(VIP4, 80);
    tot_len_too_big[2..4].copy_from_slice(&200u16.to_be_bytes());
    let mut truncated_l4 = ipv4(v4(CLIENT4), v4(VIP4), PROTO_TCP, &[0x9c]);
    truncated_l4.truncate(21);
    let mut v6_too_short = tcp6(VIP6, 80);
    v6_too_short[4..6].copy_from_slice(&400u16.to_be_bytes());
    let frag4 = |offset, more, proto| {
        let l4 = udp(c4, vip4, 40000, 9999, &[7u8; 16]);
        ipv4_frag(v4(CLIENT4), v4(VIP4), proto, (offset, more), &l4)
    };
    let frag6 = ipv6(
        v6(CLIENT6),
        v6(VIP6),
        44,
        &ipv6_frag_hdr(PROTO_TCP, 185, false, &[7u8; 24]),
    );
    let dstopts6 = ipv6(
        v6(CLIENT6),
        v6(VIP6),
        60,
        &ipv6_dstopts(PROTO_TCP, &tcp_syn(c6, vip6, 40000, 80)),
    );

    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        // VIP services.
        ("tcp4 to vip:80", gw.eth4(&tcp4(VIP4, 80)), Want::Steer),
        ("udp4 to vip:53", gw.eth4(&udp4(VIP4, 53)), Want::Steer),
        ("tcp6 to vip:80", gw.eth6(&tcp6(VIP6, 80)), Want::Steer),
        ("tcp6 behind dest options", gw.eth6(&dstopts6), Want::Steer),
        (
            "802.1Q tcp4 to vip:80",
            eth_vlan(gw.gw_mac, gw.cl_mac, 100, ETH_IPV4, &tcp4(VIP4, 80)),
            Want::Steer,
        ),
        // Another host's unicast MAC (veth filters nothing): the kernel's, which drops it
        // as PACKET_OTHERHOST. A router forwards only what is sent to it.
        (
            "tcp4 to vip:80, another host's MAC",
            eth(OTHER_MAC, gw.cl_mac, ETH_IPV4, &tcp4(VIP4, 80)),
            Want::Pass,
        ),
        (
            "802.1Q tcp4 to vip:80, another host's MAC",
            eth_vlan(OTHER_MAC, gw.cl_mac, 100, ETH_IPV4, &tcp4(VIP4, 80)),
            Want::Pass,
        ),
        (
            "ihl 3 to vip:80, another host's MAC",
            eth(OTHER_MAC, gw.cl_mac, ETH_IPV4, &bad_ihl()),
            Want::Pass,
        ),
        // Stacked tags are the kernel's, as in the pipeline (a worker could not give the
        // frame back).
        (
            "QinQ tcp4 to vip:80",
            eth(gw.gw_mac, gw.cl_mac, 0x88a8, &qinq),
            Want::Pass,
        ),
        // Fragments go by address and protocol.
        (
            "first v4 fragment",
            gw.eth4(&frag4(0, true, PROTO_UDP)),
            Want::Steer,
        ),
        (
            "later v4 fragment",
            gw.eth4(&frag4(185, false, PROTO_UDP)),
            Want::Steer,
        ),
        ("v6 fragment", gw.eth6(&frag6), Want::Steer),
        (
            "v4 fragment, protocol not served",
            gw.eth4(&frag4(185, false, 132)),
            Want::Pass,
        ),
        // ICMP errors about what a VIP sent.
        (
            "icmp4 frag needed",
            gw.eth4(&icmp4_error(3, 4, &quoted4(PROTO_TCP, 80))),
            Want::Steer,
        ),
        (
            "icmp4 time exceeded",
            gw.eth4(&icmp4_error(11, 0, &quoted4(PROTO_UDP, 53))),
            Want::Steer,
        ),
        (
            "icmp6 packet too big",
            gw.eth6(&icmp6_error(2, 0, &quoted6(PROTO_TCP, 80))),
            Want::Steer,
        ),
        (
            "icmp6 unreachable",
            gw.eth6(&icmp6_error(1, 4, &quoted6(PROTO_TCP, 80))),
            Want::Steer,
        ),
        (
            "icmp4 error about port 81",
            gw.eth4(&icmp4_error(3, 4, &quoted4(PROTO_TCP, 81))),
            Want::Pass,
        ),
        (
            "icmp6 error about udp",
            gw.eth6(&icmp6_error(2, 0, &quoted6(PROTO_UDP, 80))),
            Want::Pass,
        ),
        (
            "icmp4 echo to vip",
            gw.eth4(&ipv4(
                v4(CLIENT4),
                v4(VIP4),
                PROTO_ICMP,
                &icmp4(8, 0, [0, 1, 0, 1], b"ping"),
            )),
            Want::Pass,
        ),
        // Not VIP services.
        ("tcp4 to vip:81", gw.eth4(&tcp4(VIP4, 81)), Want::Pass),
        ("udp4 to vip:80", gw.eth4(&udp4(VIP4, 80)), Want::Pass),
        ("tcp6 to vip:443", gw.eth6(&tcp6(VIP6, 443)), Want::Pass),
        (
            "tcp4 to the gateway's ssh",
            gw.eth4(&tcp4(GW4, 22)),
            Want::Pass,
        ),
        ("arp", eth(gw.gw_mac, gw.cl_mac, 0x0806, &arp), Want::Pass),
        ("random bytes", random, Want::Pass),
        ("bare ethernet header", gw.eth4(&[]), Want::Pass),
        // Addressed to a VIP service but unusable.
        ("ihl 3", gw.eth4(&bad_ihl()), Want::Drop),
        (
            "total length beyond the frame",
            gw.eth4(&tot_len_too_big),
            Want::Drop,
        ),
        ("no room for ports", gw.eth4(&truncated_l4), Want::Drop),
        (
            "v6 payload length beyond the frame",
            gw.eth6(&v6_too_short),
            Want::Drop,
        ),
    ];
    check_cases(&gw, &steer, &cases);

    // The VIP set changes at runtime: the old service passes, the new one is steered.
    let mut steer = steer;
    steer.set_vips(&[Vip::tcp(vip4, 81)]).unwrap();
    check_cases(
        &gw,
        &steer,
        &[
            (
                "tcp4 to vip:81 after update",
                gw.eth4(&tcp4(VIP4, 81)),
                Want::Steer,
            ),
            (
                "tcp4 to vip:80 after update",
                gw.eth4(&tcp4(VIP4, 80)),
                Want::Pass,
            ),
            (
                "udp4 fragment after update",
                gw.eth4(&frag4(185, false, PROTO_UDP)),
                Want::Pass,
            ),
        ],
    );
}

#[test]
fn non_vip_traffic_reaches_the_kernel() {
    if !require_privileges("steer test") {
        return;
    }
    let gw = Gw::new();
    let steer = gw.attach(None);
    let before = steer.counters().unwrap();

    // ping (and with it ARP and neighbour discovery) in both families.
    let cl = gw.net.ns("cl");
    cl.exec(&["ping", "-c2", "-i0.2", "-W2", GW4]).unwrap();
    cl.exec(&["ping", "-c2", "-i0.2", "-W2", GW6]).unwrap();

    // A TCP connection to a local port of the gateway.
    let listener = gw
        .net
        .ns("gw")
        .enter(|| TcpListener::bind((v4(GW4), 2222)).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let echoed = cl
        .enter(|| {
            let mut s = TcpStream::connect_timeout(&(v4(GW4), 2222).into(), Duration::from_secs(3))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    assert_eq!(&echoed, b"hello");
    server.join().unwrap();

    let after = steer.counters().unwrap();
    assert!(
        after.passed >= before.passed + 4 + 3,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        (after.redirected, after.no_socket, after.dropped),
        (before.redirected, before.no_socket, before.dropped)
    );
}

/// A minimal AF_XDP receiver on queue 0 (xdpilone, copy mode).
struct XskRx {
    rx: xdpilone::RingRx,
    _device: xdpilone::DeviceQueue,
    _umem: xdpilone::Umem,
    area: Mapping,
}

struct Mapping(std::ptr::NonNull<[u8]>);

const FRAMES: u32 = 16;
const FRAME: u32 = 4096;

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the anonymous mapping made in XskRx::bind, after the
        // socket and rings (earlier fields) are gone.
        unsafe { libc::munmap(self.0.as_ptr().cast(), self.0.len()) };
    }
}

impl XskRx {
    fn bind(ifname: &str) -> XskRx {
        use xdpilone::{IfInfo, Socket, SocketConfig, Umem, UmemConfig};
        let len = (FRAMES * FRAME) as usize;
        // SAFETY: anonymous private mapping, checked below; page aligned by construction.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let area = Mapping(std::ptr::NonNull::slice_from_raw_parts(
            std::ptr::NonNull::new(ptr.cast()).unwrap(),
            len,
        ));
        let cfg = UmemConfig {
            fill_size: FRAMES,
            complete_size: FRAMES,
            frame_size: FRAME,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page aligned, FRAMES * FRAME long, and outlives the Umem
        // (it is the last field of XskRx).
        let umem = unsafe { Umem::new(cfg, area.0) }.unwrap();
        let mut info = IfInfo::invalid();
        info.from_name(&std::ffi::CString::new(ifname).unwrap())
            .unwrap();
        info.set_queue(0);
        let sock = Socket::with_shared(&info, &umem).unwrap();
        let mut device = umem.fq_cq(&sock).unwrap();
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: std::num::NonZeroU32::new(FRAMES),
                    tx_size: None,
                    bind_flags: 0,
                },
            )
            .unwrap();
        let rx = user.map_rx().unwrap();
        umem.bind(&user).unwrap();
        let n = {
            let mut fill = device.fill(FRAMES);
            let n = fill.insert((0..FRAMES).map(|i| u64::from(i * FRAME)));
            fill.commit();
            n
        };
        assert_eq!(n, FRAMES);
        XskRx {
            rx,
            _device: device,
            _umem: umem,
            area,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by the socket in self, which outlives the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.rx.as_raw_fd()) }
    }

    /// Frames received within `wait` (not recycled: the test needs fewer than FRAMES).
    fn receive(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            let mut batch = self.rx.receive(FRAMES);
            while let Some(desc) = batch.read() {
                let base = self.area.0.as_ptr() as *const u8;
                // SAFETY: the kernel wrote desc.len bytes at desc.addr inside the area.
                let data = unsafe {
                    std::slice::from_raw_parts(base.add(desc.addr as usize), desc.len as usize)
                };
                out.push(data.to_vec());
            }
            batch.release();
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }
}

#[test]
fn vip_traffic_arrives_on_a_real_af_xdp_socket() {
    if !require_privileges("steer test (AF_XDP)") {
        return;
    }
    let gw = Gw::new();
    let mut steer = gw.attach(None);
    // The socket binds to the interface by index, so it is made inside the namespace,
    // and the test runs there (the rings are not Send).
    gw.net
        .ns("gw")
        .enter(|| {
            let mut xsk = XskRx::bind("eth0");
            steer.set_socket(0, &xsk.fd()).unwrap();

            let vip = gw.eth4(&udp4(VIP4, 53));
            let other = gw.eth4(&udp4(GW4, 53));
            let before = steer.counters().unwrap();
            gw.send(&[other.clone(), vip.clone(), other]);
            let got = xsk.receive(Duration::from_millis(300));
            assert_eq!(
                got,
                vec![vip.clone()],
                "exactly the VIP frame, byte for byte"
            );
            let after = steer.counters().unwrap();
            assert_eq!(after.redirected, before.redirected + 1);
            assert_eq!(after.no_socket, before.no_socket);

            // Without a socket for the queue, VIP traffic falls back to the kernel.
            steer.clear_socket(0).unwrap();
            gw.send(&[vip]);
            assert_eq!(
                xsk.receive(Duration::from_millis(200)),
                Vec::<Vec<u8>>::new()
            );
            let last = wait_for(&steer, |c| c.no_socket > after.no_socket);
            assert_eq!(last.no_socket, after.no_socket + 1);
            assert_eq!(last.redirected, after.redirected);
        })
        .unwrap();
}

#[test]
fn an_overloaded_queue_has_its_vip_traffic_shed_and_only_that() {
    if !require_privileges("steer test (shedding)") {
        return;
    }
    let gw = Gw::new();
    let steer = gw.attach(None);
    let flags = steer.shed_flags().expect("mapping xsk_shed");
    let vip = gw.eth4(&udp4(VIP4, 53));
    // A datagram for a kernel socket on the gateway, from the client's on-link address.
    let local = gw
        .net
        .ns("gw")
        .enter(|| UdpSocket::bind((v4(GW4), 5353)))
        .unwrap()
        .unwrap();
    local
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let payload = b"not for a VIP";
    let u = udp(v4(CL4).into(), v4(GW4).into(), 40000, 5353, payload);
    let other = gw.eth4(&ipv4(v4(CL4), v4(GW4), PROTO_UDP, &u));

    // Queue 0 (veth has one) overloaded: VIP frames are dropped and counted as shed,
    // other traffic still reaches the kernel.
    flags.set(0, true);
    let before = steer.counters().unwrap();
    gw.send(&[vip.clone(), other, vip.clone()]);
    let mut buf = [0u8; 64];
    let n = local
        .recv(&mut buf)
        .expect("the non-VIP datagram reaches its kernel socket while shedding");
    assert_eq!(&buf[..n], payload);
    // Passed also counts whatever else the kernel sends on the link (e.g. IPv6 ND), so
    // only the VIP counters are exact.
    let c = wait_for(&steer, |c| c.shed >= before.shed + 2);
    assert_eq!(c.shed, before.shed + 2, "{c:?}");
    assert!(c.passed > before.passed, "{c:?}");
    assert_eq!(
        c.redirected + c.no_socket,
        before.redirected + before.no_socket
    );

    // Another queue's flag does not touch queue 0.
    flags.set(0, false);
    flags.set(1, true);
    gw.send(&[vip]);
    let d = wait_for(&steer, |d| d.no_socket > c.no_socket);
    assert_eq!(
        d.no_socket,
        c.no_socket + 1,
        "steered again (no socket bound)"
    );
    assert_eq!(d.shed, c.shed);
}

/// The program steers frames to the interface's MAC address, and follows it when it
/// changes: after [`Steer::refresh_mac`], frames to the new address are steered and frames
/// to the old one are the kernel's.
#[test]
fn only_frames_to_the_interfaces_mac_are_steered_and_a_new_mac_is_followed() {
    if !require_privileges("steer test (MAC)") {
        return;
    }
    let gw = Gw::new();
    let mut steer = gw.attach(None);
    assert_eq!(steer.mac(), gw.gw_mac);
    // Read in the gateway's namespace, where the interface is.
    let refresh = |steer: &mut Steer| gw.net.ns("gw").enter(|| steer.refresh_mac()).unwrap();
    assert_eq!(refresh(&mut steer).unwrap(), None, "unchanged");
    let to = |mac| eth(mac, gw.cl_mac, ETH_IPV4, &tcp4(VIP4, 80));
    check_cases(
        &gw,
        &steer,
        &[
            ("to the interface's MAC", to(gw.gw_mac), Want::Steer),
            ("to another host's MAC", to(OTHER_MAC), Want::Pass),
        ],
    );

    gw.net
        .ns("gw")
        .ip(&["link", "set", "dev", "eth0", "address", "02:00:00:00:00:99"])
        .unwrap();
    assert_eq!(refresh(&mut steer).unwrap(), Some(OTHER_MAC));
    assert_eq!(steer.mac(), OTHER_MAC);
    check_cases(
        &gw,
        &steer,
        &[
            ("to the new MAC", to(OTHER_MAC), Want::Steer),
            ("to the old MAC", to(gw.gw_mac), Want::Pass),
        ],
    );
}

/// The CPUs online on this host as a sysfs CPU mask: comma-separated 32-bit hex groups,
/// most significant first (what `xps_cpus` takes).
fn online_cpu_mask() -> String {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut cpus = Vec::new();
    for range in online.trim().split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    let mut words = vec![0u32; cpus.iter().max().unwrap() / 32 + 1];
    for c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    words
        .iter()
        .rev()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Gw {
    /// Makes the client send every frame on its TX queue `queue` (of `queues`), which veth
    /// delivers on the gateway's RX queue of the same number: XPS maps every CPU to that
    /// queue alone.
    fn send_on_queue(&self, queue: u32, queues: u32, frames: &[Vec<u8>]) {
        let all = online_cpu_mask();
        let cl = self.net.ns("cl");
        // Clear the others first, so that no CPU ever maps to two queues (which XPS would
        // spread by hash).
        for q in (0..queues).filter(|&q| q != queue).chain([queue]) {
            let mask = if q == queue { all.as_str() } else { "0" };
            cl.exec(&[
                "sh",
                "-c",
                &format!("echo {mask} > /sys/class/net/eth0/queues/tx-{q}/xps_cpus"),
            ])
            .unwrap();
        }
        self.send(frames);
    }
}

/// Each RX queue has its own overload flag: the flags a worker sets through the mapping are
/// the elements the program reads (the kernel stores them 8 bytes apart, not 4), and the
/// program sheds exactly the flagged queue's VIP traffic.
#[test]
fn each_rx_queue_has_its_own_shed_flag() {
    if !require_privileges("steer test (per-queue shedding)") {
        return;
    }
    const QUEUES: u32 = 4;
    let gw = Gw::with_queues(Some(QUEUES));
    let steer = gw.attach(None);
    let flags = steer.shed_flags().expect("mapping xsk_shed");
    let read = || -> Vec<bool> { (0..QUEUES).map(|q| steer.shed_flag(q).unwrap()).collect() };
    assert_eq!(read(), [false; 4]);
    flags.set(1, true);
    assert_eq!(read(), [false, true, false, false], "queue 1's flag");
    flags.set(2, true);
    assert_eq!(read(), [false, true, true, false], "queues 1 and 2");
    flags.set(1, false);
    assert_eq!(read(), [false, false, true, false], "queue 2's flag alone");

    // Queue 2 alone is flagged: its VIP frame is shed, every other queue's is steered (to
    // no socket: none is bound).
    let vip = gw.eth4(&udp4(VIP4, 53));
    for q in 0..QUEUES {
        let before = steer.counters().unwrap();
        gw.send_on_queue(q, QUEUES, std::slice::from_ref(&vip));
        let c = wait_for(&steer, |c| {
            c.shed + c.no_socket + c.redirected > before.shed + before.no_socket + before.redirected
        });
        let got = (c.shed - before.shed, c.no_socket - before.no_socket);
        let want = if q == 2 { (1, 0) } else { (0, 1) };
        assert_eq!(
            got, want,
            "RX queue {q}: (shed, steered): {before:?} -> {c:?}"
        );
    }
}

#[test]
fn nothing_stays_attached_after_drop() {
    if !require_privileges("steer test") {
        return;
    }
    let gw = Gw::new();
    let steer = gw.attach(None);
    assert_eq!(gw.xdp_shown(), "xdp");
    drop(steer);
    assert_eq!(gw.xdp_shown(), "", "still attached after drop");

    let generic = gw.attach(Some(AttachMode::Skb));
    assert_eq!(generic.mode(), AttachMode::Skb);
    assert_eq!(gw.xdp_shown(), "xdpgeneric");
    generic.detach().unwrap();
    assert_eq!(gw.xdp_shown(), "");

    let err = gw.net.ns("gw").enter(|| Steer::attach("nosuch0")).unwrap();
    assert!(err.is_err());
}

/// An interface that runs another XDP program is refused before anything is loaded, with
/// the program named; the program stays. (The kernel's "busy" came only after a load and a
/// verifier run, and named nothing.)
#[test]
fn an_interface_with_another_xdp_program_is_refused_and_left_alone() {
    if !require_privileges("steer test") {
        return;
    }
    let gw = Gw::new();
    let first = gw.attach(None);
    let Err(err) = gw.net.ns("gw").enter(|| Steer::attach("eth0")).unwrap() else {
        panic!("a second program attached over the first");
    };
    let text = err.to_string();
    assert!(
        matches!(err, BpfError::Foreign { ref name, .. } if name == "xdp_steer"),
        "{text}"
    );
    assert!(
        text.starts_with("eth0 runs XDP program \"xdp_steer\" (id "),
        "{text}"
    );
    let still = gw.net.ns("gw").enter(|| first.attached()).unwrap();
    assert!(still.unwrap(), "the running program was replaced");
    assert_eq!(gw.xdp_shown(), "xdp");
}
