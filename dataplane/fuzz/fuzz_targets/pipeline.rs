//! Fuzzes `Worker::process`: any bytes, as one to four frames of a batch, through snapshots
//! with IPv4 and IPv6 backends, IP-in-IP and GUE, 5- and 3-tuple VIPs, and an egress VLAN.
//! The pipeline must never panic and every Tx/Reply must lie inside its buffer.
#![no_main]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use dataplane::snapshot::{
    BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
    VipKey,
};
use libfuzzer_sys::fuzz_target;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

fn snapshot(generation: u64, v6_backends: bool, egress_vlan: Option<u16>) -> Snapshot {
    let backends: Vec<BackendConfig> = (1..=4)
        .map(|i| BackendConfig {
            addr: if v6_backends {
                ip(&format!("fd00:10::{i}"))
            } else {
                ip(&format!("192.168.10.{i}"))
            },
            weight: i % 3,
        })
        .collect();
    let next_hops: HashMap<IpAddr, [u8; 6]> = backends
        .iter()
        .take(3)
        .map(|b| (b.addr, [2, 0, 0, 0, 1, 1]))
        .collect();
    let vip = |addr: &str, proto, port, hash, encap| VipConfig {
        key: VipKey {
            addr: ip(addr),
            proto,
            port,
        },
        backends: backends.clone(),
        hash,
        encap,
    };
    let mut vips = vec![
        vip("10.0.0.1", Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
        vip(
            "10.0.0.1",
            Proto::Udp,
            53,
            HashMode::ThreeTuple,
            Encap::Gue { port: 6080 },
        ),
    ];
    if v6_backends {
        vips.push(vip(
            "2001:db8::1",
            Proto::Udp,
            443,
            HashMode::FiveTuple,
            Encap::IpIp,
        ));
        vips.push(vip(
            "2001:db8::1",
            Proto::Tcp,
            80,
            HashMode::ThreeTuple,
            Encap::Gue { port: 6080 },
        ));
    }
    Snapshot::new(&SnapshotConfig {
        generation,
        vips,
        maglev_size: 251,
        outer_src_v4: Some(SourcePrefix {
            addr: "172.16.0.0".parse().expect("v4"),
            len: 24,
        }),
        outer_src_v6: Some(SourcePrefix {
            addr: "fd00:ff::".parse().expect("v6"),
            len: 64,
        }),
        local_mac: [2, 0, 0, 0, 0, 1],
        next_hops,
        egress_vlan,
        tunnel_mtu: 1400,
        ..SnapshotConfig::default()
    })
    .expect("fuzz snapshot")
}

struct State {
    snaps: [Snapshot; 2],
    worker: Worker,
}

fn state() -> &'static std::sync::Mutex<State> {
    static S: OnceLock<std::sync::Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        std::sync::Mutex::new(State {
            snaps: [snapshot(1, false, None), snapshot(2, true, Some(7))],
            worker: Worker::new(WorkerConfig {
                flow_capacity: 1024,
                max_vips: 2,
                max_backends: 8,
                ..WorkerConfig::default()
            }),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    // ctl: bit 0 picks the snapshot, bits 1-2 the number of frames, bits 3-7 the headroom.
    let snap = &st.snaps[usize::from(ctl & 1)];
    let nframes = 1 + usize::from((ctl >> 1) & 3);
    let headroom = usize::from(ctl >> 3) * 4;
    let chunk = rest.len().div_ceil(nframes).max(1);
    let mut bufs: Vec<Vec<u8>> = rest
        .chunks(chunk)
        .map(|c| {
            let mut b = vec![0u8; headroom + c.len()];
            b[headroom..].copy_from_slice(c);
            b
        })
        .collect();
    let mut frames: Vec<Frame> = bufs
        .iter_mut()
        .map(|b| {
            let len = b.len() - headroom;
            Frame {
                buf: b,
                offset: headroom,
                len,
            }
        })
        .collect();
    let mut verdicts = vec![Verdict::Pass; frames.len()];
    st.worker
        .process(snap, u64::from(ctl) << 20, &mut frames, &mut verdicts);
    for (f, v) in frames.iter().zip(&verdicts) {
        if let Verdict::Tx { offset, len } | Verdict::Reply { offset, len } = *v {
            assert!(offset + len <= f.buf.len(), "{v:?} outside its buffer");
        }
    }
});
