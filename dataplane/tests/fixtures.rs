//! Katran-style fixtures: input frame, expected output frame, expected verdict.
//!
//! The bytes come from `dataplane/fixtures/gen.py` (scapy), built from the packet formats,
//! not from this crate; see that script for what each case shows. The cases run in file order
//! through one worker, so later cases see the flows earlier ones created.

use std::collections::HashMap;
use std::net::IpAddr;

use dataplane::flow::FlowKey;
use dataplane::pipeline::{DropReason, Frame, Verdict, Worker, WorkerConfig};
use dataplane::snapshot::{
    BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
    VipKey,
};

const CASES: &str = include_str!("../fixtures/pipeline.txt");
const HASH_VECTORS: &str = include_str!("../fixtures/hash_vectors.txt");

/// Headroom in front of each received frame, as AF_XDP leaves it.
const HEADROOM: usize = 256;
const NOW: u64 = 1_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The snapshot gen.py assumes (its "The snapshot" section).
fn config(egress_vlan: Option<u16>) -> SnapshotConfig {
    let vip = |addr: &str, proto, port, backend: &str, weight, encap, hash| VipConfig {
        key: VipKey {
            addr: ip(addr),
            proto,
            port,
        },
        backends: vec![BackendConfig {
            addr: ip(backend),
            weight,
        }],
        hash,
        encap,
    };
    let (five, three) = (HashMode::FiveTuple, HashMode::ThreeTuple);
    let gue = Encap::Gue { port: 6080 };
    let (tcp, udp, ipip) = (Proto::Tcp, Proto::Udp, Encap::IpIp);
    SnapshotConfig {
        generation: 1 + u64::from(egress_vlan.is_some()),
        vips: vec![
            vip("10.0.0.1", tcp, 80, "192.168.10.11", 1, ipip, five),
            vip("10.0.0.1", udp, 53, "192.168.10.11", 1, ipip, five),
            vip("2001:db8::1", udp, 443, "fd00:10::11", 1, ipip, five),
            vip("10.0.0.2", tcp, 80, "fd00:10::11", 1, ipip, five),
            vip("10.0.0.3", tcp, 80, "192.168.10.11", 1, gue, five),
            vip("2001:db8::2", tcp, 80, "fd00:10::11", 1, gue, five),
            vip("10.0.0.4", tcp, 80, "192.168.10.99", 1, ipip, five),
            vip("10.0.0.5", tcp, 80, "192.168.10.11", 0, ipip, five),
            vip("10.0.0.6", tcp, 80, "192.168.10.11", 1, ipip, three),
        ],
        maglev_size: 65537,
        maglev_seed: 7,
        hash_seed: 0x5eed,
        tunnel_mtu: 1500,
        outer_src_v4: Some(SourcePrefix {
            addr: "172.16.0.1".parse().unwrap(),
            len: 32,
        }),
        outer_src_v6: Some(SourcePrefix {
            addr: "fd00:ff::1".parse().unwrap(),
            len: 128,
        }),
        local_mac: [2, 0, 0, 0, 0, 1],
        next_hops: HashMap::from([
            (ip("192.168.10.11"), [2, 0, 0, 0, 0x0a, 0x0b]),
            (ip("fd00:10::11"), [2, 0, 0, 0, 0x06, 0x11]),
        ]),
        egress_vlan,
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn pipeline_fixtures() {
    let base = Snapshot::new(&config(None)).unwrap();
    let vlan200 = Snapshot::new(&config(Some(200))).unwrap();
    let no_src6 = Snapshot::new(&SnapshotConfig {
        outer_src_v6: None,
        ..config(None)
    })
    .unwrap();
    let mut worker = Worker::new(WorkerConfig {
        flow_capacity: 4096,
        ..WorkerConfig::default()
    });
    let mut failures = Vec::new();
    let mut count = 0;
    // Verdicts seen, by kind: (tx, reply, pass, drop) packets, and tx and reply bytes.
    let mut seen = [0u64; 6];
    for line in CASES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split(' ').collect();
        let [name, cfg, verdict, input, output] = f[..] else {
            panic!("bad fixture line: {line}");
        };
        count += 1;
        let snap = match cfg {
            "base" => &base,
            "vlan200" => &vlan200,
            "no_src6" => &no_src6,
            other => panic!("{name}: unknown config {other}"),
        };
        let input = unhex(input);
        let mut buf = vec![0xaa; HEADROOM + input.len() + 64];
        buf[HEADROOM..HEADROOM + input.len()].copy_from_slice(&input);
        let mut frames = [Frame {
            buf: &mut buf,
            offset: HEADROOM,
            len: input.len(),
        }];
        let mut verdicts = [Verdict::Pass];
        worker.process(snap, NOW, &mut frames, &mut verdicts);
        let got = verdicts[0];
        match got {
            Verdict::Tx { len, .. } => (seen[0], seen[4]) = (seen[0] + 1, seen[4] + len as u64),
            Verdict::Reply { len, .. } => (seen[1], seen[5]) = (seen[1] + 1, seen[5] + len as u64),
            Verdict::Pass => seen[2] += 1,
            Verdict::Drop(_) => seen[3] += 1,
        }
        let (kind, range) = match got {
            Verdict::Tx { offset, len } => ("tx".to_string(), Some(offset..offset + len)),
            Verdict::Reply { offset, len } => ("reply".to_string(), Some(offset..offset + len)),
            Verdict::Pass => ("pass".to_string(), None),
            Verdict::Drop(r) => (format!("drop:{}", r.name()), None),
        };
        if kind != verdict {
            failures.push(format!("{name}: verdict {kind}, want {verdict}"));
            continue;
        }
        if let Some(r) = range {
            let out = &frames[0].buf[r];
            if hex(out) != output {
                failures.push(format!(
                    "{name}: output\n  got  {}\n  want {output}",
                    hex(out)
                ));
            }
        } else if frames[0].buf[HEADROOM..HEADROOM + input.len()] != input[..] {
            failures.push(format!("{name}: a {kind} frame was modified"));
        }
    }
    assert!(count >= 40, "only {count} fixture cases");
    assert!(
        failures.is_empty(),
        "{} of {count} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every fixture drop was counted under its reason.
    let c = worker.counters();
    assert_eq!(c.drop_count(DropReason::Truncated), 7);
    assert_eq!(c.drop_count(DropReason::TtlExhausted), 2);
    assert_eq!(c.drop_count(DropReason::TooBig), 3);
    assert_eq!(c.drop_count(DropReason::BadSource), 3);
    assert!(c.tx.packets > 0 && c.reply.packets == 2 && c.pass == 17);
    // And every verdict exactly once, where it was decided.
    let counted = [
        c.tx.packets,
        c.reply.packets,
        c.pass,
        c.drops.iter().sum(),
        c.tx.bytes,
        c.reply.bytes,
    ];
    assert_eq!(
        counted, seen,
        "(tx, reply, pass, drops, tx bytes, reply bytes)"
    );
}

#[test]
fn flow_hash_matches_reference_vectors() {
    for line in HASH_VECTORS.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        let mapped = |s: &str| match ip(s) {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let key = FlowKey {
            src: mapped(f[0]),
            dst: mapped(f[1]),
            src_port: f[2].parse().unwrap(),
            dst_port: f[3].parse().unwrap(),
            proto: f[4].parse().unwrap(),
        };
        let seed = u64::from_str_radix(f[5], 16).unwrap();
        let want = u64::from_str_radix(f[6], 16).unwrap();
        assert_eq!(key.hash(seed), want, "{line}");
    }
}
