//! `dsrgate-bench pipeline`: per-packet cost of [`Worker::process`] for flow hits (hot and
//! 1M flows), SYNs, IPv6 UDP hits and non-VIP passes.
//!
//! Each case runs repeated batches of 64 frames through one worker, the way an AF_XDP worker
//! does: 64 frames in one page-aligned UMEM-like area of 2 KiB chunks, each frame 256 bytes
//! into its chunk (the headroom). A real UMEM has that fixed layout, and so does the harness:
//! separately allocated buffers would put the frames at whatever offsets the allocator
//! picks, which changes from build to build. Before each batch the
//! frames are rewritten to their as-received bytes (as the NIC would deliver them), outside
//! the timed region; the reported figure is the median over batches of (batch time / 64).
//!
//! The frames and the snapshot come from the dataplane's test helpers (the one packet
//! builder, written from the RFC layouts independently of the pipeline), included by path as
//! the criterion benches do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use dataplane::flow::FlowTimeouts;
use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig, BATCH};
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot};

#[path = "../../dataplane/tests/common/mod.rs"]
mod common;
use common::{flow_frame, ACK, HEADROOM, SYN};

#[derive(clap::Args)]
pub struct Args {
    /// Timed batches per case.
    #[arg(long, default_value_t = 20_000)]
    batches: usize,
    /// Active flows in the `tcp4_hit_1m` case, and live flows at the steady state of the
    /// `tcp4_syn` case (both in tables of twice as many slots).
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
const PAGE: usize = 4096;

/// One page of the UMEM-like area: `PAGE / CHUNK` chunks.
#[repr(C, align(4096))]
struct Page([u8; PAGE]);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Buckets the expiry sweep visits after each batch of the `tcp4_syn` case (untimed): the
/// table once per 8192 batches, half the TCP timeout on that case's clock. The AF_XDP worker
/// sweeps once per 5 s of real time, which on that clock would be far more often; sweeping
/// less leaves more idle entries for inserts to get past, so this errs against us.
const EXPIRE_BUCKETS: usize = 64;

/// A TCP VIP on port 80 with `backends` IPv4 backends, or (`v6`) a UDP VIP on port 443 with
/// as many IPv6 ones; IP-in-IP, every next hop resolved. (An IPv6 VIP cannot have IPv4
/// backends: there is no IPv6-in-IPv4.)
fn snapshot(backends: u32, v6: bool) -> Snapshot {
    let addrs: Vec<(IpAddr, u32)> = (0..backends)
        .map(|i| match v6 {
            false => (IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | (i + 1))), 1),
            true => (
                IpAddr::V6(Ipv6Addr::from(0xfd00_0010_u128 << 96 | u128::from(i + 1))),
                1,
            ),
        })
        .collect();
    let vip = match v6 {
        false => ("10.0.0.1", Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
        true => (
            "2001:db8::1",
            Proto::Udp,
            443,
            HashMode::FiveTuple,
            Encap::IpIp,
        ),
    };
    common::snapshot(1, &[vip], &addrs)
}

fn tcp4(src: u32, sport: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    flow_frame(IpAddr::V4(src.into()), sport, IpAddr::V4(dst), 80, 6, flags)
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
    /// `BATCH` chunks, contiguous and page-aligned.
    umem: Vec<Page>,
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
            umem: (0..BATCH * CHUNK / PAGE).map(|_| Page([0; PAGE])).collect(),
            lens: [0; BATCH],
            verdicts: [Verdict::Pass; BATCH],
        }
    }

    /// Chunk `i` of the UMEM-like area.
    fn chunk(&mut self, i: usize) -> &mut [u8] {
        let page = &mut self.umem[i * CHUNK / PAGE].0;
        let at = i * CHUNK % PAGE;
        &mut page[at..at + CHUNK]
    }

    /// Writes frame `i` of the next batch, as received.
    fn put(&mut self, i: usize, frame: &[u8]) {
        self.chunk(i)[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.lens[i] = frame.len();
    }

    /// Processes the batch; returns its duration in ns.
    fn process(&mut self, now_ns: u64) -> u64 {
        let lens = self.lens;
        let mut frames: [Frame<'_>; BATCH] = {
            let mut it = self
                .umem
                .iter_mut()
                .flat_map(|p| p.0.chunks_exact_mut(CHUNK))
                .zip(lens);
            std::array::from_fn(|_| {
                let (buf, len) = it.next().expect("BATCH buffers");
                Frame {
                    buf,
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
    v6: bool,
    frame: fn(usize, u8) -> Vec<u8>,
) -> anyhow::Result<CaseResult> {
    let mut b = Bench::new(snapshot(a.backends, v6), (flows * 2).max(1 << 16));
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
                b.put(i, &hot[(n * BATCH + i) % flows]);
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
    let src = IpAddr::V6((0x2001_0db8_00c0_u128 << 80 | u128::from(src)).into());
    flow_frame(src, sport, IpAddr::V6(VIP6), 443, 17, 0)
}

/// New flows only: every packet is a SYN from a client never seen before (Maglev lookup and
/// flow-table insert), at the steady state of a busy gateway: `--flows` flows live in a table
/// of twice as many slots (as in `tcp4_hit_1m`), and as many flows go idle as arrive. The
/// clock advances per batch so that the timeout of a flow only a SYN has been seen on (30 s,
/// `tcp_unconfirmed_ns`) spans `--flows` SYNs; the
/// table is filled that way before timing starts, so from then on each insert finds the
/// candidate buckets at the realistic mix of live, expired and empty slots (an expiry sweep
/// runs between batches, untimed: see [`EXPIRE_BUCKETS`]).
fn syns(a: &Args) -> anyhow::Result<CaseResult> {
    let timeouts = FlowTimeouts::default();
    let mut b = Bench::new(snapshot(a.backends, false), a.flows * 2);
    let step = timeouts.tcp_unconfirmed_ns * BATCH as u64 / a.flows as u64;
    let mut now = 1_000_000_000;
    let mut rng = Rng(7);
    let warmup = a.flows / BATCH;
    let mut times = Vec::with_capacity(a.batches);
    for n in 0..warmup + a.batches {
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
        let ns = b.process(now);
        b.worker.expire_flows(now, EXPIRE_BUCKETS);
        if n >= warmup {
            times.push(ns);
        }
        now += step;
    }
    b.check("tcp4_syn", is_tx)?;
    Ok(CaseResult {
        name: "tcp4_syn",
        ns_per_packet: median_ns_per_packet(times),
    })
}

/// Traffic for an address that is no VIP: parse, one VIP-table miss, `Pass`.
fn pass(a: &Args) -> anyhow::Result<CaseResult> {
    let mut b = Bench::new(snapshot(a.backends, false), 1 << 16);
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
            hits("tcp4_hit_hot", a, 256, false, false, tcp4_flow)
        }),
        ("tcp4_hit_1m", |a| {
            hits("tcp4_hit_1m", a, a.flows, true, false, tcp4_flow)
        }),
        ("tcp4_syn", syns),
        ("udp6_hit_hot", |a| {
            hits("udp6_hit_hot", a, 256, false, true, udp6_flow)
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
