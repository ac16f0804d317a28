//! Workers on real AF_XDP sockets over veth, in namespaces from the shared builder:
//!
//! ```text
//!   gen eth0 ──veth── eth0 gw eth1 ──veth── eth0 sink
//! ```
//!
//! Frames are sent from `gen` and captured with AF_PACKET sockets; the gateway runs the
//! steering program (one UDP VIP) and the workers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use dsrgate_tests::frames::{self, PacketCapture, PacketSocket};
use dsrgate_tests::netns::{unique_prefix, Net, Port, Topology};

use super::*;
use crate::bpf::{Steer, Vip};
use crate::pipeline::{Frame, Verdict};

const GEN_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const VIP_PORT: u16 = 9;

/// gen ─ gw (two-arm) ─ sink, every veth end with `queues` TX and RX queues, gen ─ gw with
/// `mtu` if given.
fn topology(queues: u32, mtu: Option<u32>) -> Topology {
    let port = |ns: &str, ifname: &str| Port::new(ns, ifname).queues(queues);
    let mut t = Topology::default();
    t.ns("gen")
        .addresses
        .push(("eth0".into(), format!("{GEN_IP}/24")));
    let gw = t.ns("gw");
    gw.addresses.push(("eth0".into(), "198.19.0.2/24".into()));
    gw.addresses.push(("eth1".into(), "198.19.1.2/24".into()));
    t.ns("sink")
        .addresses
        .push(("eth0".into(), "198.19.1.1/24".into()));
    t.link(port("gen", "eth0"), port("gw", "eth0"), mtu);
    t.link(port("gw", "eth1"), port("sink", "eth0"), None);
    t
}

/// An Ethernet/IPv4/UDP frame to the VIP from source port `sport`, `len` bytes long.
fn udp_frame(dst: [u8; 6], src: [u8; 6], sport: u16, len: usize) -> Vec<u8> {
    let payload = vec![0x5a; len - 14 - 20 - 8];
    let udp = frames::udp(
        IpAddr::V4(GEN_IP),
        IpAddr::V4(VIP),
        sport,
        VIP_PORT,
        &payload,
    );
    let f = frames::eth(
        dst,
        src,
        0x0800,
        &frames::ipv4(GEN_IP, VIP, frames::PROTO_UDP, &udp),
    );
    assert_eq!(f.len(), len);
    f
}

/// Send `frames` in bursts of 32 with a short pause: well below what the worker handles, so
/// nothing may be lost.
fn send_all(s: &PacketSocket, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        s.send(f).expect("send");
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A captured frame: (dst MAC, src MAC, UDP source port, outer destination if the frame
/// is the VIP packet inside an IP-in-IP header).
type Seen = ([u8; 6], [u8; 6], u16, Option<Ipv4Addr>);

/// Sends `frames` 32 at a time, and after each 32 waits until `cap` has shown `expect(sent)`
/// frames (UDP to the VIP) for the frames sent so far: the sender never runs ahead of
/// a worker or a capture socket that a loaded machine's scheduler holds back, so load slows
/// the test down instead of overflowing a ring. Once a wait times out (a frame really is
/// lost) the rest is sent without waiting, and the caller's assertion reports it.
fn exchange(
    s: &PacketSocket,
    frames: &[Vec<u8>],
    cap: &PacketCapture,
    expect: impl Fn(usize) -> usize,
) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut in_step = true;
    let mut sent = 0;
    for chunk in frames.chunks(32) {
        for f in chunk {
            s.send(f).expect("send");
        }
        sent += chunk.len();
        if in_step {
            let deadline = Instant::now() + Duration::from_secs(2);
            in_step = capture_into(cap, &mut out, expect(sent), deadline);
        }
    }
    capture_into(
        cap,
        &mut out,
        expect(sent),
        Instant::now() + Duration::from_secs(5),
    );
    out
}

/// Adds to `out` the frames captured on `cap` that are UDP to the VIP, until `out` holds
/// `want` of them (true) or the deadline passes (false).
fn capture_into(cap: &PacketCapture, out: &mut Vec<Seen>, want: usize, deadline: Instant) -> bool {
    let mut buf = [0u8; 2048];
    while out.len() < want && Instant::now() < deadline {
        let Some(f) = cap.recv(&mut buf) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if f.len() < 14 || f[12..14] != [8, 0] {
            continue;
        }
        // The VIP packet, bare or behind one 20-byte IP-in-IP header.
        let (inner, outer) = match f.get(23) {
            Some(&4) if f.len() >= 34 => (34, Some(Ipv4Addr::new(f[30], f[31], f[32], f[33]))),
            _ => (14, None),
        };
        let Some(ip) = f.get(inner..inner + 24) else {
            continue;
        };
        if ip[9] == 17 && ip[16..20] == VIP.octets() && ip[22..24] == VIP_PORT.to_be_bytes() {
            let mut d = [0; 6];
            let mut s = [0; 6];
            d.copy_from_slice(&f[0..6]);
            s.copy_from_slice(&f[6..12]);
            out.push((d, s, u16::from_be_bytes([ip[20], ip[21]]), outer));
        }
    }
    out.len() >= want
}

struct Lab {
    net: Net,
    gen_mac: [u8; 6],
    gw_up_mac: [u8; 6],
    gw_down_mac: [u8; 6],
    sink_mac: [u8; 6],
}

impl Lab {
    fn new() -> Lab {
        Lab::with_queues(1)
    }

    fn with_queues(queues: u32) -> Lab {
        Lab::build(topology(queues, None))
    }

    fn build(topology: Topology) -> Lab {
        let net = topology.build(&unique_prefix()).expect("topology");
        Lab {
            gen_mac: net.ns("gen").mac("eth0").unwrap(),
            gw_up_mac: net.ns("gw").mac("eth0").unwrap(),
            gw_down_mac: net.ns("gw").mac("eth1").unwrap(),
            sink_mac: net.ns("sink").mac("eth0").unwrap(),
            net,
        }
    }

    /// Two-arm workers that forward every frame, unchanged but for its MACs, to the sink.
    fn forward_to_sink(&self) -> Workers<Steer> {
        let (src, dst) = (self.gw_down_mac, self.sink_mac);
        self.start(true, move |_| BareForwarder { src, dst })
    }

    /// Workers on the uplink (and with `downlink`, eth1) running `make`'s processors,
    /// behind the steering program for the VIP.
    fn start<P, F>(&self, downlink: bool, make: F) -> Workers<Steer>
    where
        P: Processor + 'static,
        F: FnMut(usize) -> P + Send,
    {
        self.start_with(config(downlink.then_some("eth1")), |steer| steer, make)
    }

    /// [`Lab::start`] with `cfg`, and the steering program as `steering` wraps it.
    fn start_with<S, P, F>(
        &self,
        cfg: XskConfig,
        steering: impl FnOnce(Steer) -> S + Send,
        make: F,
    ) -> Workers<S>
    where
        S: Steering,
        P: Processor + 'static,
        F: FnMut(usize) -> P + Send,
    {
        self.net
            .ns("gw")
            .enter(move || {
                let mut steer = Steer::attach("eth0").expect("steering program");
                steer
                    .set_vips(&[Vip::udp(IpAddr::V4(VIP), VIP_PORT)])
                    .unwrap();
                Workers::start(&cfg, steering(steer), make).expect("workers")
            })
            .unwrap()
    }

    fn frames(&self, n: u16) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| udp_frame(self.gw_up_mac, self.gen_mac, 10_000 + i, 60))
            .collect()
    }

    fn socket(&self, ns: &str) -> PacketCapture {
        self.net
            .ns(ns)
            .enter(|| PacketCapture::open(Some("eth0")))
            .unwrap()
            .expect("capture socket")
    }

    fn sender(&self) -> PacketSocket {
        self.net
            .ns("gen")
            .enter(|| PacketSocket::open("eth0"))
            .unwrap()
            .expect("packet socket")
    }
}

/// The workers' config on the gateway's eth0 (and `downlink`), with a small UMEM (1024
/// frames and 512-entry rings: 4 MiB a worker rather than the default's 16), enough for the
/// few thousand frames a test sends.
fn config(downlink: Option<&str>) -> XskConfig {
    let mut cfg = XskConfig::new("eth0");
    cfg.downlink = downlink.map(str::to_string);
    cfg.frames = 1024;
    cfg.ring_size = 512;
    cfg
}

/// Passes (to nowhere: the frame is in user space) every frame with an odd UDP source
/// port, forwards the rest.
struct PassOdd(BareForwarder);

impl Processor for PassOdd {
    fn process(&mut self, now: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        self.0.process(now, frames, verdicts);
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            if f.buf[f.offset + 35] & 1 == 1 {
                *v = Verdict::Pass;
            }
        }
    }
}

/// No AF_XDP socket left in the namespace (`ss --xdp` lists them via sock_diag).
fn assert_no_xsk(ns: &dsrgate_tests::netns::Netns) {
    let out = ns.exec(&["ss", "-H", "--xdp", "-a"]).unwrap();
    assert!(out.trim().is_empty(), "AF_XDP sockets left: {out}");
}

/// Each of the `n` frames sent (one source port each) arrived, and only once.
fn assert_each_once(got: &[Seen], n: u16) {
    let mut ports: Vec<u16> = got.iter().map(|g| g.2).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), n as usize, "each frame exactly once");
}

/// The worker received and sent all `n` frames and dropped none.
fn assert_forwarded_all(s: &WorkerStats, n: u16) {
    assert_eq!(s.rx, u64::from(n));
    assert_eq!(s.tx, u64::from(n));
    assert_eq!(s.dropped(), 0);
}

fn assert_all_frames_home(census: &[Census]) {
    for c in census {
        assert_eq!(c.accounted(), c.total, "frames lost: {c:?}");
    }
}

#[test]
fn two_arm_forwards_every_frame_out_of_the_downlink() {
    if !dsrgate_tests::require_privileges("AF_XDP two-arm worker test") {
        return;
    }
    let lab = Lab::new();
    let workers = lab.forward_to_sink();
    let sink = lab.socket("sink");
    let n = 3000;
    let got = exchange(&lab.sender(), &lab.frames(n), &sink, |k| k);
    assert_eq!(got.len(), n as usize, "frames delivered to the sink");
    assert!(
        got.iter()
            .all(|&(d, s, _, o)| d == lab.sink_mac && s == lab.gw_down_mac && o.is_none()),
        "MACs rewritten"
    );
    assert_each_once(&got, n);

    let stats = workers.stats();
    assert_eq!(stats.len(), 1, "veth has one RX queue");
    assert_eq!(
        stats[0].mode,
        Some(XskMode::Copy),
        "veth offers copy mode only"
    );
    assert_forwarded_all(&stats[0], n);
    assert_all_frames_home(&workers.stop().unwrap());
}

/// Two-arm with the real pipeline: every VIP frame from the uplink leaves the downlink
/// inside an IP-in-IP header to one of the VIP's two backends (both get flows), from the
/// downlink's MAC to the backends' next hop, and the workers drop nothing.
#[test]
fn two_arm_pipeline_encapsulates_every_frame_out_of_the_downlink() {
    if !dsrgate_tests::require_privileges("AF_XDP two-arm pipeline test") {
        return;
    }
    use crate::pipeline::WorkerConfig;
    use crate::snapshot::{
        BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
        VipKey,
    };
    let lab = Lab::new();
    let backends = [Ipv4Addr::new(198, 19, 1, 10), Ipv4Addr::new(198, 19, 1, 11)];
    let cfg = SnapshotConfig {
        generation: 1,
        vips: vec![VipConfig {
            key: VipKey {
                addr: IpAddr::V4(VIP),
                proto: Proto::Udp,
                port: VIP_PORT,
            },
            backends: backends
                .iter()
                .map(|&b| BackendConfig {
                    addr: IpAddr::V4(b),
                    weight: 1,
                })
                .collect(),
            hash: HashMode::FiveTuple,
            encap: Encap::IpIp,
        }],
        outer_src_v4: Some(SourcePrefix {
            addr: Ipv4Addr::new(198, 19, 1, 2),
            len: 32,
        }),
        local_mac: lab.gw_down_mac,
        next_hops: backends
            .iter()
            .map(|&b| (IpAddr::V4(b), lab.sink_mac))
            .collect(),
        ..SnapshotConfig::default()
    };
    let snap = Arc::new(ArcSwap::from_pointee(Snapshot::new(&cfg).unwrap()));
    let workers = lab.start(true, move |_| {
        PipelineProcessor::new(
            WorkerConfig {
                flow_capacity: 1 << 12,
                max_vips: 4,
                max_backends: 8,
                ..WorkerConfig::default()
            },
            snap.clone(),
        )
    });
    let sink = lab.socket("sink");
    let n = 2000;
    let got = exchange(&lab.sender(), &lab.frames(n), &sink, |k| k);
    assert_eq!(got.len(), n as usize, "frames delivered to the sink");
    let (src, dst) = (lab.gw_down_mac, lab.sink_mac);
    assert!(
        got.iter().all(|&(d, s, _, _)| d == dst && s == src),
        "MACs of the downlink and the next hop"
    );
    for b in backends {
        let to_b = got.iter().filter(|g| g.3 == Some(b)).count();
        assert!(to_b > 0, "no flow tunnelled to {b}");
    }
    assert!(
        got.iter()
            .all(|g| g.3.is_some_and(|o| backends.contains(&o))),
        "every frame tunnelled to a backend"
    );
    assert_each_once(&got, n);
    let stats = workers.stats();
    assert_forwarded_all(&stats[0], n);
    assert_all_frames_home(&workers.stop().unwrap());
}

#[test]
fn every_rx_queue_gets_its_own_worker_and_all_of_them_forward() {
    if !dsrgate_tests::require_privileges("AF_XDP multi-queue worker test") {
        return;
    }
    let lab = Lab::with_queues(2);
    // No queue count configured: the workers follow the uplink's (ETHTOOL_GCHANNELS).
    let workers = lab.forward_to_sink();
    let sink = lab.socket("sink");
    let n = 2000;
    // The sender's TX queue, and so the gateway's RX queue, follows each flow's hash.
    let got = exchange(&lab.sender(), &lab.frames(n), &sink, |k| k);
    assert_each_once(&got, n);

    let stats = workers.stats();
    assert_eq!(stats.len(), 2, "one worker per RX queue");
    let queues: Vec<u32> = stats.iter().map(|s| s.queue).collect();
    assert_eq!(queues, [0, 1]);
    for s in &stats {
        assert!(s.rx > 0, "queue {} received nothing: {stats:?}", s.queue);
        assert_eq!(s.tx, s.rx, "queue {} forwarded all it received", s.queue);
    }
    assert_eq!(stats.iter().map(|s| s.rx).sum::<u64>(), u64::from(n));
    assert_all_frames_home(&workers.stop().unwrap());
}

#[test]
fn one_arm_sends_back_out_of_the_uplink_and_drops_pass_verdicts() {
    if !dsrgate_tests::require_privileges("AF_XDP one-arm worker test") {
        return;
    }
    let lab = Lab::new();
    let (src, dst) = (lab.gw_up_mac, lab.gen_mac);
    let workers = lab.start(false, move |_| PassOdd(BareForwarder { src, dst }));
    let back = lab.socket("gen");
    let n = 2000;
    // The generator's own socket sees its outgoing frames too, and of the first k frames
    // (source ports from 10,000) the k.div_ceil(2) even ones come back: keep only those.
    let got: Vec<_> = exchange(&lab.sender(), &lab.frames(n), &back, |k| k + k.div_ceil(2))
        .into_iter()
        .filter(|&(d, s, _, _)| d == dst && s == src)
        .collect();
    assert_eq!(got.len(), n as usize / 2, "even source ports come back");
    assert!(got.iter().all(|g| g.2 % 2 == 0));
    let s = &workers.stats()[0];
    assert_eq!(s.rx, u64::from(n));
    assert_eq!(s.tx, u64::from(n) / 2);
    assert_eq!(s.pass_dropped, u64::from(n) / 2);
    assert_all_frames_home(&workers.stop().unwrap());
}

#[test]
fn stop_detaches_steering_and_closes_sockets() {
    if !dsrgate_tests::require_privileges("AF_XDP stop test") {
        return;
    }
    let lab = Lab::new();
    let workers = lab.forward_to_sink();
    let gw = lab.net.ns("gw");
    assert!(gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    assert_all_frames_home(&workers.stop().unwrap());
    assert!(!gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    assert_no_xsk(gw);
}

/// Polls `f` until it returns something, for at most 5 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Forwards like [`BareForwarder`], or, in the worker chosen to fail, panics on its first
/// frame.
struct PanicsIn {
    forward: BareForwarder,
    panics: bool,
}

impl Processor for PanicsIn {
    fn process(&mut self, now: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        assert!(!self.panics, "test processor fails on its first frame");
        self.forward.process(now, frames, verdicts);
    }
}

#[test]
fn a_worker_that_panics_is_reported_and_stop_still_detaches_everything() {
    if !dsrgate_tests::require_privileges("AF_XDP panicking worker test") {
        return;
    }
    let lab = Lab::with_queues(2);
    let (src, dst) = (lab.gw_down_mac, lab.sink_mac);
    let workers = lab.start(true, move |i| PanicsIn {
        forward: BareForwarder { src, dst },
        panics: i == 1,
    });
    let gw = lab.net.ns("gw");
    assert_eq!(workers.ended(), None, "every worker runs before traffic");
    // Flows spread over both RX queues by hash (as in the multi-queue test above).
    send_all(&lab.sender(), &lab.frames(200));
    let ended = wait_for("a worker reported as ended", || workers.ended());
    assert_eq!(
        ended,
        Ended {
            worker: 1,
            thread: "xsk-eth0-q1".into()
        }
    );
    assert!(ended.to_string().contains("xsk-eth0-q1"), "{ended}");
    // The healthy worker forwards its queue's share.
    wait_for("worker 0 forwarding", || {
        (workers.stats()[0].tx > 0).then_some(())
    });
    // Nothing but stop takes the program away: the caller has to act on the report.
    assert!(gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    match workers.stop() {
        Err(XskError::Panicked { worker: 1, message }) => {
            assert!(message.contains("first frame"), "{message}")
        }
        other => panic!("stop after a panic returned {other:?}"),
    }
    assert!(!gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    assert_no_xsk(gw);
}

/// A worker whose TX cannot drain (the downlink is down: every kick fails) is stalled, not
/// idle: it counts no idle polls, receives and completes nothing, while its failed kicks
/// grow. The daemon's stall detector counts only those three. Once the downlink is up
/// again, the queued frames leave.
#[test]
fn a_worker_whose_kicks_fail_counts_no_idle_polls() {
    if !dsrgate_tests::require_privileges("AF_XDP stalled TX test") {
        return;
    }
    let lab = Lab::new();
    let workers = lab.forward_to_sink();
    let gw = lab.net.ns("gw");
    gw.ip(&["link", "set", "dev", "eth1", "down"]).unwrap();
    let n = 10;
    send_all(&lab.sender(), &lab.frames(n));
    let stuck = wait_for("frames stuck behind failed kicks", || {
        let s = workers.stats().remove(0);
        (s.rx == u64::from(n) && s.kick_errors > 0).then_some(s)
    });
    // An idle worker polls every 1024 empty turns (about 20 ms apart when idle): over this
    // wait a worker counting its failed turns as idle would count several.
    let before = workers.stats().remove(0);
    std::thread::sleep(Duration::from_millis(300));
    let after = workers.stats().remove(0);
    assert!(after.kick_errors > before.kick_errors, "{after:?}");
    assert_eq!(
        (after.rx, after.completed, after.idle_polls),
        (before.rx, before.completed, before.idle_polls),
        "{stuck:?}"
    );
    assert_eq!(after.tx, u64::from(n), "queued, not sent");

    gw.ip(&["link", "set", "dev", "eth1", "up"]).unwrap();
    wait_for("the queued frames completed", || {
        (workers.stats()[0].completed == u64::from(n)).then_some(())
    });
    assert_all_frames_home(&workers.stop().unwrap());
}

/// The frame limit the daemon checks the uplink's MTU against is the kernel's: on a link
/// with room for larger frames, a frame of [`max_rx_frame`] bytes reaches the worker and one
/// a byte longer is dropped by the kernel (`rx_dropped`), unseen by the worker.
#[test]
fn the_kernel_receives_frames_up_to_max_rx_frame_and_drops_longer_ones() {
    if !dsrgate_tests::require_privileges("AF_XDP frame size test") {
        return;
    }
    let lab = Lab::build(topology(1, Some(4000)));
    let cfg = config(None);
    assert_eq!(max_rx_frame(cfg.frame_size), 3776);
    assert_eq!(cfg.max_mtu(), 3776 - 18);
    // Native XDP on veth takes no frame this large: the program runs generic.
    let (gw_mac, gen_mac) = (lab.gw_up_mac, lab.gen_mac);
    let workers = lab.start_with(
        cfg,
        |steer| steer,
        move |_| BareForwarder {
            src: gw_mac,
            dst: gen_mac,
        },
    );
    let sender = lab.sender();
    let longest = max_rx_frame(XskConfig::new("eth0").frame_size) as usize;
    sender
        .send(&udp_frame(gw_mac, gen_mac, 10_000, longest))
        .unwrap();
    wait_for("the longest frame at the worker", || {
        (workers.stats()[0].rx == 1).then_some(())
    });
    sender
        .send(&udp_frame(gw_mac, gen_mac, 10_001, longest + 1))
        .unwrap();
    // The kernel's counters reach the stats once a second.
    let s = wait_for("a frame dropped by the kernel", || {
        let s = workers.stats().remove(0);
        (s.kernel.rx_dropped > 0).then_some(s)
    });
    assert_eq!((s.rx, s.kernel.rx_dropped), (1, 1), "{s:?}");
    assert_all_frames_home(&workers.stop().unwrap());
}

/// The real steering program, but with an XSKMAP of `max` entries: like the kernel for an
/// index past a map's end, inserting a socket for a later queue fails with E2BIG.
struct Capped {
    steer: Steer,
    max: u32,
}

impl Steering for Capped {
    fn insert_xsk(&mut self, queue: u32, fd: RawFd) -> std::io::Result<()> {
        if queue >= self.max {
            return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        }
        self.steer.insert_xsk(queue, fd)
    }

    fn max_queues(&self) -> u32 {
        self.max
    }
}

/// An uplink with more RX queues than the steering program can steer to starts with a
/// worker for each queue it can serve, rather than failing on the first one it cannot.
#[test]
fn queues_past_the_steering_limit_get_no_worker_and_the_rest_run() {
    if !dsrgate_tests::require_privileges("AF_XDP queue limit test") {
        return;
    }
    let lab = Lab::with_queues(2);
    let (src, dst) = (lab.gw_down_mac, lab.sink_mac);
    let workers = lab.start_with(
        config(Some("eth1")),
        |steer| Capped { steer, max: 1 },
        move |_| BareForwarder { src, dst },
    );
    let stats = workers.stats();
    assert_eq!(stats.iter().map(|s| s.queue).collect::<Vec<_>>(), [0]);
    // Queue 0's share of the flows is forwarded.
    send_all(&lab.sender(), &lab.frames(200));
    wait_for("worker 0 forwarding", || {
        (workers.stats()[0].tx > 0).then_some(())
    });
    assert_all_frames_home(&workers.stop().unwrap());
}

const HOLD_ENV: &str = "DSRGATE_XSK_HOLD";

/// Not a test on its own: the child process of `sigkill_leaves_nothing_attached`, which runs
/// it inside the gateway namespace. Attaches, says "ready", and waits to be killed.
#[test]
#[ignore = "helper process for sigkill_leaves_nothing_attached"]
fn hold_attached_until_killed() {
    if std::env::var(HOLD_ENV).is_err() {
        return;
    }
    let steer = Steer::attach("eth0").expect("steering program");
    let workers = Workers::start(&config(None), steer, |_| BareForwarder {
        src: [0; 6],
        dst: [0; 6],
    })
    .expect("workers");
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
    drop(workers);
}

/// SIGKILL gives the process no chance to clean up. The steering program is attached through
/// a bpf_link, whose last reference is the process's fd, and AF_XDP sockets are fds too: the
/// kernel releases both when the process dies.
#[test]
fn sigkill_leaves_nothing_attached() {
    if !dsrgate_tests::require_privileges("AF_XDP SIGKILL test") {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let lab = Lab::new();
    let gw = lab.net.ns("gw");
    let mut cmd = gw.command(std::env::current_exe().unwrap().to_str().unwrap());
    cmd.args([
        "--exact",
        "xsk::tests::hold_attached_until_killed",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HOLD_ENV, "1")
    .stdout(Stdio::piped());
    let mut child = gw.spawn_command(cmd).unwrap();
    let out = child.child().stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "helper did not come up");
    assert!(gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp"));
    child.signal(libc::SIGKILL).unwrap();
    let _ = child.child().wait();
    wait_for("the XDP program detached after SIGKILL", || {
        (!gw.ip(&["link", "show", "eth0"]).unwrap().contains("xdp")).then_some(())
    });
    assert_no_xsk(gw);
}

/// The CPUs this process may run on, and the first CPU below 1024 it may not.
fn cpus() -> (Vec<usize>, usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY (both): every `cpu` is below CPU_SETSIZE (1024).
    let allowed = (0..1024)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let not = (0..1024)
        .rev()
        .find(|&cpu| !unsafe { libc::CPU_ISSET(cpu, &set) })
        .expect("a host with 1024 CPUs");
    (allowed, not)
}

/// A worker's stats name the core it runs on only when it could be pinned there: a worker
/// whose core this process may not run on runs unpinned, and says so (`core: None`),
/// rather than reporting the core it was given.
#[test]
fn only_a_pinned_worker_reports_its_core() {
    if !dsrgate_tests::require_privileges("AF_XDP worker pinning test") {
        return;
    }
    let lab = Lab::with_queues(2);
    let (allowed, unavailable) = cpus();
    let mut cfg = config(None);
    cfg.cores = vec![allowed[0], unavailable];
    let workers = lab.start_with(
        cfg,
        |steer| steer,
        |_| BareForwarder {
            src: [0; 6],
            dst: [0; 6],
        },
    );
    let stats = workers.stats();
    workers.stop().expect("stop");
    let cores: Vec<Option<usize>> = stats.iter().map(|s| s.core).collect();
    assert_eq!(
        cores,
        [Some(allowed[0]), None],
        "core {unavailable} cannot be pinned"
    );
}
