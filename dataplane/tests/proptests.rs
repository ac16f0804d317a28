//! Property tests: the pipeline never panics on any bytes, and encapsulation round-trips.

mod common;

use std::net::IpAddr;
use std::sync::LazyLock;

use common::*;
use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot};
use dataplane::wire::{gue::GueHeader, ipv6ext, vlan::VlanTag};
use proptest::prelude::*;

const FIXTURES: &str = include_str!("../fixtures/pipeline.txt");

/// Built once: Maglev builds are slow in debug builds.
fn snapshots() -> &'static [Snapshot] {
    static SNAPS: LazyLock<Vec<Snapshot>> = LazyLock::new(build_snapshots);
    &SNAPS
}

fn build_snapshots() -> Vec<Snapshot> {
    let vips = [
        ("10.0.0.1", Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
        (
            "10.0.0.1",
            Proto::Udp,
            53,
            HashMode::ThreeTuple,
            Encap::Gue { port: 6080 },
        ),
        (
            "10.0.0.3",
            Proto::Tcp,
            80,
            HashMode::FiveTuple,
            Encap::Gue { port: 6080 },
        ),
        (
            "2001:db8::1",
            Proto::Udp,
            443,
            HashMode::FiveTuple,
            Encap::IpIp,
        ),
        (
            "2001:db8::2",
            Proto::Tcp,
            80,
            HashMode::FiveTuple,
            Encap::Gue { port: 6080 },
        ),
    ];
    let v4: Vec<(IpAddr, u32)> = (0..5).map(|i| (backend_addr(i), 1)).collect();
    let v6: Vec<(IpAddr, u32)> = (0..5)
        .map(|i| (ip(&format!("fd00:10::{}", i + 1)), 1))
        .collect();
    vec![snapshot(1, &vips[..3], &v4), snapshot(2, &vips, &v6)]
}

fn fixture_inputs() -> Vec<Vec<u8>> {
    FIXTURES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(' ').nth(3))
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// Runs `frame` at `offset` in a buffer with `tail` spare bytes; checks the verdict's range.
fn run_at(w: &mut Worker, s: &Snapshot, frame: &[u8], offset: usize, tail: usize) -> Verdict {
    let mut buf = vec![0x55; offset + frame.len() + tail];
    buf[offset..offset + frame.len()].copy_from_slice(frame);
    let n = buf.len();
    let mut frames = [Frame {
        buf: &mut buf,
        offset,
        len: frame.len(),
    }];
    let mut v = [Verdict::Pass];
    w.process(s, 1, &mut frames, &mut v);
    if let Verdict::Tx { offset, len } | Verdict::Reply { offset, len } = v[0] {
        assert!(
            offset + len <= n && len >= 14,
            "verdict {:?} outside a {n}-byte buffer",
            v[0]
        );
    }
    v[0]
}

fn small_worker() -> Worker {
    Worker::new(WorkerConfig {
        flow_capacity: 256,
        max_vips: 4,
        max_backends: 8,
        ..WorkerConfig::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600), offset in 0usize..300, s in 0usize..2) {
        let snaps = snapshots();
        let mut w = small_worker();
        run_at(&mut w, &snaps[s], &bytes, offset, 0);
    }

    #[test]
    fn ip_shaped_bytes_never_panic(v6 in any::<bool>(), vlan in any::<bool>(), rest in proptest::collection::vec(any::<u8>(), 0..200), s in 0usize..2) {
        // An Ethernet header that sends random bytes into the IP parsers.
        let mut f = GW_MAC.to_vec();
        f.extend_from_slice(&ROUTER_MAC);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        f.extend_from_slice(&rest);
        let snaps = snapshots();
        run_at(&mut small_worker(), &snaps[s], &f, 128, 0);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        case in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        offset in 0usize..200,
        s in 0usize..2,
    ) {
        let inputs = fixture_inputs();
        let mut f = case.get(&inputs).clone();
        for (i, b) in edits {
            let at = i.index(f.len());
            f[at] = b;
        }
        f.truncate(cut.index(f.len() + 1));
        let snaps = snapshots();
        run_at(&mut small_worker(), &snaps[s], &f, offset, 0);
    }

    #[test]
    fn encapsulation_round_trips(
        v6 in any::<bool>(),
        vip in 0usize..3,
        client in any::<u32>(),
        sport in 1u16..,
        tos in any::<u8>(),
        syn in any::<bool>(),
        len in 0usize..1500,
    ) {
        let snaps = snapshots();
        // IPv4 VIPs through the IPv4 snapshot (IPv4-in-IPv4, GUE), IPv6 and IPv4 through
        // the IPv6 one (IPv6-in-IPv6, IPv4-in-IPv6, GUE over IPv6).
        // Encapsulation overhead: outer IP header, plus UDP and GUE for the GUE VIPs.
        let (s, dst, dport, proto, overhead) = match (v6, vip) {
            (false, 0) => (&snaps[0], "10.0.0.1", 80, 6, 20),
            (false, 1) => (&snaps[0], "10.0.0.1", 53, 17, 32),
            (false, _) => (&snaps[1], "10.0.0.3", 80, 6, 52),
            (true, 0) | (true, 1) => (&snaps[1], "2001:db8::1", 443, 17, 40),
            (true, _) => (&snaps[1], "2001:db8::2", 80, 6, 52),
        };
        let flags = if syn { SYN } else { ACK };
        let body = l4(proto, sport, dport, flags, &vec![0xab; len]);
        let src = if dst.contains(':') {
            IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | u128::from(client)))
        } else {
            IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 | (client & 0x00ff_ffff)))
        };
        let inner = match src {
            IpAddr::V4(_) => ipv4(src, ip(dst), proto, tos, None, 7, &body),
            IpAddr::V6(_) => ipv6(src, ip(dst), proto, tos, None, &body),
        };
        let mut w = small_worker();
        let (v, out) = run(&mut w, s, 1, &ether(&inner));
        match v {
            Verdict::Tx { .. } => {
                let d = decap(&out);
                prop_assert_eq!(&d.inner, &inner);
                prop_assert_eq!((d.ttl, d.tos), (64, tos));
                prop_assert_eq!(out.len() - 14, inner.len() + overhead);
                prop_assert!(out.len() - 14 <= 1500, "outer packet fits the tunnel MTU");
            }
            Verdict::Reply { .. } => {
                prop_assert!(inner.len() + overhead > 1500, "a reply only when too big");
                // The reply quotes the start of the packet that was too big.
                let hdr = if src.is_ipv4() { 14 + 28 } else { 14 + 48 };
                prop_assert_eq!(&out[hdr..], &inner[..out.len() - hdr]);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// A batch gives every frame the verdict and the bytes it gets when processed alone, in
    /// the same order: what a batch keeps between frames (prefetch hints, the last service
    /// lookup) only saves work. The frames mix services that share an address and differ in
    /// protocol or port, addresses that are no VIP, and the fixtures (ICMP errors,
    /// fragments, malformed frames).
    #[test]
    fn a_batch_equals_its_frames_one_by_one(
        picks in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), 0usize..3, 0usize..4, 0u16..6),
            1..150,
        ),
        s in 0usize..2,
    ) {
        let inputs = fixture_inputs();
        let services = [("10.0.0.1", 80, 6), ("10.0.0.1", 53, 17), ("10.0.0.1", 80, 17), ("10.0.0.1", 53, 6)];
        let frames: Vec<Vec<u8>> = picks
            .iter()
            .map(|&(fixture, take_fixture, dst, service, client)| {
                if take_fixture {
                    return fixture.get(&inputs).clone();
                }
                let (_, port, proto) = services[service];
                let dst = ["10.0.0.1", "10.0.0.3", "10.0.0.9"][dst];
                let src = ip(&format!("11.0.0.{}", client + 1));
                flow_frame(src, 1000 + client, ip(dst), port, proto, if client % 2 == 0 { SYN } else { ACK })
            })
            .collect();
        let snap = &snapshots()[s];
        let offset = 128;
        // A frame in a buffer with headroom in front of it.
        let framed = |f: &Vec<u8>| {
            let mut buf = vec![0x55; offset + f.len()];
            buf[offset..].copy_from_slice(f);
            buf
        };
        let mut alone = small_worker();
        let singles: Vec<(Verdict, Vec<u8>)> = frames
            .iter()
            .map(|f| {
                let mut buf = framed(f);
                let mut one = [Frame { buf: &mut buf, offset, len: f.len() }];
                let mut v = [Verdict::Pass];
                alone.process(snap, 1, &mut one, &mut v);
                (v[0], buf)
            })
            .collect();
        let mut bufs: Vec<Vec<u8>> = frames.iter().map(framed).collect();
        let mut batch: Vec<Frame> = bufs
            .iter_mut()
            .zip(&frames)
            .map(|(buf, f)| Frame { buf, offset, len: f.len() })
            .collect();
        let mut verdicts = vec![Verdict::Pass; batch.len()];
        small_worker().process(snap, 1, &mut batch, &mut verdicts);
        for (i, ((v, buf), (single, single_buf))) in verdicts.iter().zip(&bufs).zip(&singles).enumerate() {
            prop_assert_eq!(v, single, "frame {}", i);
            prop_assert_eq!(buf, single_buf, "frame {}", i);
        }
    }

    #[test]
    fn wire_views_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), next in any::<u8>()) {
        let _ = ipv6ext::walk(&bytes, next);
        if let Some(g) = GueHeader::new_checked(&bytes[..]) {
            let _ = (g.version(), g.control(), g.proto(), g.flags(), g.payload().len());
        }
        if let Some(t) = VlanTag::new_checked(&bytes[..]) {
            let _ = (t.tci(), t.vid(), t.ethertype(), t.payload().len());
        }
    }
}
