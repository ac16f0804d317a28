//! `dsrgate-bench pipeline`: per-packet cost of [`Worker::process`] for flow hits (hot and
//! 1M flows), SYNs, IPv6 UDP hits and non-VIP passes.
//!
//! Each case runs repeated batches of 64 frames through one worker, the way an AF_XDP worker
//! does: 64 frames in 2 KiB UMEM-like chunks with 256 bytes of headroom. Before each batch the
//! frames are rewritten to their as-received bytes (as the NIC would deliver them), outside
//! the timed region; the reported figure is the median over batches of (batch time / 64).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use dataplane::flow::FlowTimeouts;
use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig, BATCH};
use dataplane::snapshot::{
    BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
    VipKey,
};

#[derive(clap::Args)]
pub struct Args {
    /// Timed batches per case.
    #[arg(long, default_value_t = 20_000)]
    batches: usize,
    /// Active flows in the `tcp4_hit_1m` case.
    #[arg(long, default_value_t = 1 << 20)]
    flows: usize,
    /// Backends per VIP.
    #[arg(long, default_value_t = 100)]
    backends: u32,
    /// Run only the named case (e.g. for a profiler).
    #[arg(long)]
    only: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct CaseResult {
    name: &'static str,
    ns_per_packet: f64,
}

#[derive(serde::Serialize)]
struct Report {
    cases: Vec<CaseResult>,
}

const CHUNK: usize = 2048;
const HEADROOM: usize = 256;
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn snapshot(backends: u32) -> anyhow::Result<Snapshot> {
    let v4: Vec<BackendConfig> = (0..backends)
        .map(|i| BackendConfig {
            addr: IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | (i + 1))),
            weight: 1,
        })
        .collect();
    let v6: Vec<BackendConfig> = (0..backends)
        .map(|i| BackendConfig {
            addr: IpAddr::V6(Ipv6Addr::from(0xfd00_0010_u128 << 96 | u128::from(i + 1))),
            weight: 1,
        })
        .collect();
    let next_hops: HashMap<IpAddr, [u8; 6]> = v4
        .iter()
        .chain(&v6)
        .map(|b| (b.addr, [2, 0, 0, 0, 1, 1]))
        .collect();
    let vip = |addr, proto, port, backends| VipConfig {
        key: VipKey { addr, proto, port },
        backends,
        hash: HashMode::FiveTuple,
        encap: Encap::IpIp,
    };
    Ok(Snapshot::new(&SnapshotConfig {
        generation: 1,
        vips: vec![
            vip(IpAddr::V4(VIP4), Proto::Tcp, 80, v4),
            vip(IpAddr::V6(VIP6), Proto::Udp, 443, v6),
        ],
        outer_src_v4: Some(SourcePrefix {
            addr: Ipv4Addr::new(172, 16, 0, 0),
            len: 24,
        }),
        outer_src_v6: Some(SourcePrefix {
            addr: "fd00:ff::".parse()?,
            len: 64,
        }),
        local_mac: GW_MAC,
        next_hops,
        ..SnapshotConfig::default()
    })?)
}

/// RFC 1071 checksum of an IPv4 header.
fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 64-byte IPv4 TCP frame (10 bytes of payload).
fn tcp4(src: u32, sport: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&[0x42; 10]);
    f
}

/// An 80-byte IPv6 UDP frame.
fn udp6(src: u128, sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 26, 17, 64]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&VIP6.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&443u16.to_be_bytes());
    f.extend_from_slice(&26u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x42; 18]);
    f
}

/// splitmix64: a deterministic random stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The client (source address, port) of flow `i`: 1024 ports on each of up to 2^22 addresses.
fn client(i: usize) -> (u32, u16) {
    (0x0b00_0000 + (i >> 10) as u32, 1024 + (i & 1023) as u16)
}

struct Bench {
    worker: Worker,
    snap: Snapshot,
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    verdicts: [Verdict; BATCH],
}

impl Bench {
    fn new(snap: Snapshot, flow_capacity: usize) -> Bench {
        Bench {
            worker: Worker::new(WorkerConfig {
                flow_capacity,
                timeouts: FlowTimeouts::default(),
                ..WorkerConfig::default()
            }),
            snap,
            bufs: (0..BATCH).map(|_| vec![0u8; CHUNK]).collect(),
            lens: [0; BATCH],
            verdicts: [Verdict::Pass; BATCH],
        }
    }

    /// Writes frame `i` of the next batch, as received.
    fn put(&mut self, i: usize, frame: &[u8]) {
        self.bufs[i][HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.lens[i] = frame.len();
    }

    /// Processes the batch; returns its duration in ns.
    fn process(&mut self, now_ns: u64) -> u64 {
        let lens = self.lens;
        let mut frames: [Frame<'_>; BATCH] = {
            let mut it = self.bufs.iter_mut().zip(lens);
            std::array::from_fn(|_| {
                let (buf, len) = it.next().expect("BATCH buffers");
                Frame {
                    buf: buf.as_mut_slice(),
                    offset: HEADROOM,
                    len,
                }
            })
        };
        let t = Instant::now();
        self.worker
            .process(&self.snap, now_ns, &mut frames, &mut self.verdicts);
        t.elapsed().as_nanos() as u64
    }

    fn check(&self, case: &str, want: fn(&Verdict) -> bool) -> anyhow::Result<()> {
        match self.verdicts.iter().find(|v| !want(v)) {
            Some(v) => anyhow::bail!("{case}: unexpected verdict {v:?}"),
            None => Ok(()),
        }
    }
}

fn is_tx(v: &Verdict) -> bool {
    matches!(v, Verdict::Tx { .. })
}

fn median_ns_per_packet(mut batch_ns: Vec<u64>) -> f64 {
    batch_ns.sort_unstable();
    batch_ns[batch_ns.len() / 2] as f64 / BATCH as f64
}

/// Sends one SYN per flow so the flows exist.
fn establish(b: &mut Bench, frames: impl Iterator<Item = Vec<u8>>, now: u64) -> anyhow::Result<()> {
    let mut i = 0;
    for f in frames {
        b.put(i, &f);
        i += 1;
        if i == BATCH {
            b.process(now);
            b.check("establish", is_tx)?;
            i = 0;
        }
    }
    anyhow::ensure!(i == 0, "flow count must be a multiple of {BATCH}");
    Ok(())
}

/// Hits on `flows` established flows: `frame(i, flags)` builds flow i's frame.
fn hits(
    name: &'static str,
    a: &Args,
    flows: usize,
    random: bool,
    frame: fn(usize, u8) -> Vec<u8>,
) -> anyhow::Result<CaseResult> {
    let mut b = Bench::new(snapshot(a.backends)?, (flows * 2).max(1 << 16));
    let now = 1_000_000_000;
    establish(&mut b, (0..flows).map(|i| frame(i, SYN)), now)?;
    // The as-received frames, prebuilt for the hot case; the 1M case builds each batch's
    // frames from random flow numbers (outside the timed region).
    let hot: Vec<Vec<u8>> = if random {
        Vec::new()
    } else {
        (0..flows).map(|i| frame(i, ACK)).collect()
    };
    let mut rng = Rng(42);
    let mut times = Vec::with_capacity(a.batches);
    for n in 0..a.batches + a.batches / 10 {
        for i in 0..BATCH {
            if random {
                let f = frame(rng.next() as usize % flows, ACK);
                b.put(i, &f);
            } else {
                let f = &hot[(n * BATCH + i) % flows];
                b.bufs[i][HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                b.lens[i] = f.len();
            }
        }
        let ns = b.process(now + n as u64);
        if n >= a.batches / 10 {
            times.push(ns);
        }
    }
    b.check(name, is_tx)?;
    Ok(CaseResult {
        name,
        ns_per_packet: median_ns_per_packet(times),
    })
}

fn tcp4_flow(i: usize, flags: u8) -> Vec<u8> {
    let (src, sport) = client(i);
    tcp4(src, sport, VIP4, flags)
}

fn udp6_flow(i: usize, _flags: u8) -> Vec<u8> {
    let (src, sport) = client(i);
    udp6(0x2001_0db8_00c0_u128 << 80 | u128::from(src), sport)
}

/// New flows only: every packet is a SYN from a new client (Maglev lookup and insert into
/// a full table, which evicts).
fn syns(a: &Args) -> anyhow::Result<CaseResult> {
    let mut b = Bench::new(snapshot(a.backends)?, dataplane::flow::DEFAULT_CAPACITY);
    let mut rng = Rng(7);
    let mut times = Vec::with_capacity(a.batches);
    for n in 0..a.batches + a.batches / 10 {
        for i in 0..BATCH {
            let r = rng.next();
            let f = tcp4(
                0x0b00_0000 | (r as u32 & 0x00ff_ffff),
                (r >> 32) as u16 | 1024,
                VIP4,
                SYN,
            );
            b.put(i, &f);
        }
        let ns = b.process(1_000_000_000 + n as u64);
        if n >= a.batches / 10 {
            times.push(ns);
        }
    }
    b.check("tcp4_syn", is_tx)?;
    Ok(CaseResult {
        name: "tcp4_syn",
        ns_per_packet: median_ns_per_packet(times),
    })
}

/// Traffic for an address that is no VIP: parse, one VIP-table miss, `Pass`.
fn pass(a: &Args) -> anyhow::Result<CaseResult> {
    let mut b = Bench::new(snapshot(a.backends)?, 1 << 16);
    let frames: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            tcp4(
                0x0b00_0000 + i as u32,
                1024,
                Ipv4Addr::new(10, 9, 9, 9),
                ACK,
            )
        })
        .collect();
    let mut times = Vec::with_capacity(a.batches);
    for n in 0..a.batches + a.batches / 10 {
        for (i, f) in frames.iter().enumerate() {
            b.put(i, f);
        }
        let ns = b.process(1_000_000_000);
        if n >= a.batches / 10 {
            times.push(ns);
        }
    }
    b.check("pass", |v| *v == Verdict::Pass)?;
    Ok(CaseResult {
        name: "pass",
        ns_per_packet: median_ns_per_packet(times),
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.batches >= 10, "--batches must be at least 10");
    anyhow::ensure!(
        a.flows >= BATCH && a.flows.is_multiple_of(BATCH) && a.flows <= 1 << 32,
        "--flows must be a multiple of {BATCH}"
    );
    anyhow::ensure!(a.backends >= 1, "--backends must be at least 1");
    type Case = fn(&Args) -> anyhow::Result<CaseResult>;
    let all: [(&str, Case); 5] = [
        ("tcp4_hit_hot", |a| {
            hits("tcp4_hit_hot", a, 256, false, tcp4_flow)
        }),
        ("tcp4_hit_1m", |a| {
            hits("tcp4_hit_1m", a, a.flows, true, tcp4_flow)
        }),
        ("tcp4_syn", syns),
        ("udp6_hit_hot", |a| {
            hits("udp6_hit_hot", a, 256, false, udp6_flow)
        }),
        ("pass", pass),
    ];
    if let Some(o) = &a.only {
        anyhow::ensure!(all.iter().any(|(n, _)| n == o), "--only: no case named {o}");
    }
    let mut cases = Vec::new();
    for (name, case) in all {
        if a.only.as_deref().is_none_or(|o| o == name) {
            cases.push(case(&a)?);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&Report { cases })?);
    } else {
        println!("{:<14} {:>14}", "case", "ns/packet");
        for c in &cases {
            println!("{:<14} {:>14.1}", c.name, c.ns_per_packet);
        }
    }
    Ok(())
}
