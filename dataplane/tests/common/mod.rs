//! Test helpers: a minimal packet builder and a decapsulator, written from the RFC layouts
//! (independently of the pipeline), plus a snapshot with many backends.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use dataplane::snapshot::{
    BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
    VipKey,
};
use dataplane::xsk::{ArcSwap, PipelineProcessor};

pub const HEADROOM: usize = 256;
pub const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// RFC 1071 ones'-complement sum, folded, not complemented.
pub fn sum16(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// An L4 header: TCP (20 bytes, with `flags`) or UDP (8 bytes), checksum left 0.
pub fn l4(proto: u8, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
    }
    v.extend_from_slice(payload);
    v
}

/// An IPv4 packet (DF set unless `frag` is given as (MF, offset in 8-byte units)).
pub fn ipv4(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    tos: u8,
    frag: Option<(bool, u16)>,
    ident: u16,
    body: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("not v4")
    };
    let flags_off = match frag {
        None => 0x4000,
        Some((mf, off)) => (u16::from(mf) << 13) | off,
    };
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    h.extend_from_slice(&ident.to_be_bytes());
    h.extend_from_slice(&flags_off.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    let c = !sum16(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// An IPv6 packet; with `frag` = (MF, offset in 8-byte units, ident) a fragment header first.
pub fn ipv6(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    tc: u8,
    frag: Option<(bool, u16, u32)>,
    body: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("not v6")
    };
    let mut ext = Vec::new();
    let nh = match frag {
        None => proto,
        Some((m, off, id)) => {
            ext.extend_from_slice(&[proto, 0]);
            ext.extend_from_slice(&((off << 3) | u16::from(m)).to_be_bytes());
            ext.extend_from_slice(&id.to_be_bytes());
            44
        }
    };
    let mut h = vec![0x60 | (tc >> 4), tc << 4, 0, 0];
    h.extend_from_slice(&((ext.len() + body.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[nh, 64]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&ext);
    h.extend_from_slice(body);
    h
}

pub fn ether(ip: &[u8]) -> Vec<u8> {
    let mut f = GW_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(if ip[0] >> 4 == 4 {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    f.extend_from_slice(ip);
    f
}

/// A TCP or UDP frame from `src:sport` to `dst:dport`.
pub fn flow_frame(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
    flags: u8,
) -> Vec<u8> {
    let body = l4(proto, sport, dport, flags, b"payload");
    ether(&match src {
        IpAddr::V4(_) => ipv4(src, dst, proto, 0, None, 1, &body),
        IpAddr::V6(_) => ipv6(src, dst, proto, 0, None, &body),
    })
}

/// What a node's decapsulator sees in a transmitted frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Decap {
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    pub ttl: u8,
    pub tos: u8,
    /// GUE (source port, destination port), if GUE.
    pub gue: Option<(u16, u16)>,
    pub inner: Vec<u8>,
}

/// Strips Ethernet, outer IP and (if present) UDP + GUE, checking lengths and the IPv4
/// header checksum on the way.
pub fn decap(frame: &[u8]) -> Decap {
    let dst_mac: [u8; 6] = frame[0..6].try_into().unwrap();
    let (mut et, mut o) = (u16::from_be_bytes([frame[12], frame[13]]), 14);
    let mut vlan = None;
    if et == 0x8100 {
        vlan = Some(u16::from_be_bytes([frame[14], frame[15]]) & 0xfff);
        et = u16::from_be_bytes([frame[16], frame[17]]);
        o = 18;
    }
    let ip = &frame[o..];
    let (src, dst, ttl, tos, proto, hl, total) = if et == 0x0800 {
        assert_eq!(ip[0], 0x45);
        assert_eq!(sum16(&ip[..20]), 0xffff, "outer IPv4 checksum");
        assert_eq!(
            u16::from_be_bytes([ip[6], ip[7]]),
            0x4000,
            "outer DF, not fragmented"
        );
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        (
            IpAddr::from(s),
            IpAddr::from(d),
            ip[8],
            ip[1],
            ip[9],
            20,
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        )
    } else {
        assert_eq!(et, 0x86dd);
        assert_eq!(ip[0] >> 4, 6);
        let s: [u8; 16] = ip[8..24].try_into().unwrap();
        let d: [u8; 16] = ip[24..40].try_into().unwrap();
        let tc = (ip[0] << 4) | (ip[1] >> 4);
        (
            IpAddr::from(s),
            IpAddr::from(d),
            ip[7],
            tc,
            ip[6],
            40,
            40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        )
    };
    assert_eq!(total, ip.len(), "outer length covers exactly the frame");
    let (gue, inner) = if proto == 17 {
        let u = &ip[hl..];
        assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), u.len());
        assert_eq!(u[8] & 0xc0, 0, "GUE version 0");
        let inner = &u[12..];
        assert_eq!(u[9], if inner[0] >> 4 == 4 { 4 } else { 41 });
        (
            Some((
                u16::from_be_bytes([u[0], u[1]]),
                u16::from_be_bytes([u[2], u[3]]),
            )),
            inner,
        )
    } else {
        (None, &ip[hl..])
    };
    if gue.is_none() {
        assert_eq!(proto, if inner[0] >> 4 == 4 { 4 } else { 41 });
    }
    Decap {
        dst_mac,
        vlan,
        outer_src: src,
        outer_dst: dst,
        ttl,
        tos,
        gue,
        inner: inner.to_vec(),
    }
}

pub fn backend_addr(i: usize) -> IpAddr {
    ip(&format!("192.168.{}.{}", 10 + i / 200, 1 + i % 200))
}

/// A snapshot with one VIP per (address, proto, port, mode, encap) and `backends` backends
/// each (weights all 1 unless overridden), every backend resolved.
pub fn snapshot(
    generation: u64,
    vips: &[(&str, Proto, u16, HashMode, Encap)],
    backends: &[(IpAddr, u32)],
) -> Snapshot {
    Snapshot::new(&snapshot_config(generation, vips, backends)).unwrap()
}

/// What [`snapshot`] builds from, for a test that changes a field.
pub fn snapshot_config(
    generation: u64,
    vips: &[(&str, Proto, u16, HashMode, Encap)],
    backends: &[(IpAddr, u32)],
) -> SnapshotConfig {
    SnapshotConfig {
        generation,
        vips: vips
            .iter()
            .map(|&(a, proto, port, hash, encap)| VipConfig {
                key: VipKey {
                    addr: ip(a),
                    proto,
                    port,
                },
                backends: backends
                    .iter()
                    .map(|&(addr, weight)| BackendConfig { addr, weight })
                    .collect(),
                hash,
                encap,
            })
            .collect(),
        outer_src_v4: Some(SourcePrefix {
            addr: "172.16.0.0".parse().unwrap(),
            len: 24,
        }),
        outer_src_v6: Some(SourcePrefix {
            addr: "fd00:ff::".parse().unwrap(),
            len: 64,
        }),
        local_mac: GW_MAC,
        next_hops: backends
            .iter()
            .map(|&(a, _)| (a, [2, 0, 0, 0, 1, 1]))
            .collect::<HashMap<_, _>>(),
        ..SnapshotConfig::default()
    }
}

/// Runs one frame through `w`; returns the verdict and the frame's bytes afterwards (the
/// output for Tx/Reply).
pub fn run(w: &mut Worker, snap: &Snapshot, now: u64, frame: &[u8]) -> (Verdict, Vec<u8>) {
    run_with(frame, |f, v| w.process(snap, now, f, v))
}

/// As [`run`], with `process` doing the processing (a worker's, a processor's).
pub fn run_with(
    frame: &[u8],
    process: impl FnOnce(&mut [Frame<'_>], &mut [Verdict]),
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    let mut frames = [Frame {
        buf: &mut buf,
        offset: HEADROOM,
        len: frame.len(),
    }];
    let mut v = [Verdict::Pass];
    process(&mut frames, &mut v);
    let out = match v[0] {
        Verdict::Tx { offset, len } | Verdict::Reply { offset, len } => {
            buf[offset..offset + len].to_vec()
        }
        _ => buf[HEADROOM..].to_vec(),
    };
    (v[0], out)
}

/// The backend a frame was sent to (outer destination), or `None` if it was not sent.
pub fn sent_to(w: &mut Worker, snap: &Snapshot, now: u64, frame: &[u8]) -> Option<IpAddr> {
    match run(w, snap, now, frame) {
        (Verdict::Tx { .. }, out) => Some(decap(&out).outer_dst),
        _ => None,
    }
}

/// A processor on `first`, which the test replaces through the returned handle as the
/// daemon does on a reload; its flow table has 4096 slots (the default's size is a
/// gateway's), its other limits as `limits` sets them.
pub fn processor(
    first: Snapshot,
    limits: impl FnOnce(&mut WorkerConfig),
) -> (Arc<ArcSwap<Snapshot>>, PipelineProcessor) {
    let mut cfg = WorkerConfig {
        flow_capacity: 1 << 12,
        ..WorkerConfig::default()
    };
    limits(&mut cfg);
    let current = Arc::new(ArcSwap::from_pointee(first));
    (current.clone(), PipelineProcessor::new(cfg, current))
}
