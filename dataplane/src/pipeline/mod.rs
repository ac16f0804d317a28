//! Frame in, verdict out. Pure: no I/O, no clock (the caller passes `now` once per batch).
//!
//! A [`Worker`] owns one RX queue's state: its flow table and its counters. For each batch
//! [`Worker::process`] makes up to three passes. The first parses every frame, finds its VIP,
//! hashes its flow and starts loading its flow-table tags (for a SYN also its Maglev slot);
//! the second reads the tags and starts loading the one entry line each flow will touch; the
//! third, by which time those lines are in cache, looks the flows up, picks backends and
//! rewrites the frames. While few flows are live (their lines stay cached) the first pass
//! loads the flows' home slots instead and the second is skipped (see [`crate::flow`]).
//!
//! # Which backend
//! - A TCP SYN (without ACK) always takes the current Maglev choice, and (re)records it.
//! - A packet of a known flow goes to the recorded backend while that backend is still in the
//!   VIP's set, even with weight 0 (draining). A flow whose backend was removed is re-hashed
//!   through the current table and re-recorded.
//! - Any other packet takes the Maglev choice and records it, so a flow that arrives at this
//!   gateway mid-connection (ECMP change, another gateway lost) sticks from then on.
//! - ICMP errors for a flow follow the flow but never create one.
//!
//! # Hash and fragments
//! The flow hash covers (source, destination, protocol, source port, destination port) by
//! default. A VIP in [`HashMode::ThreeTuple`] picks the Maglev slot by a hash without either
//! port, so a client's connections share a backend, on every port of the VIP's address whose
//! backend set is the same (those ports have identical tables); each connection still has a
//! flow entry of its own, so a client's new connection after a table change takes the current
//! choice without moving the connections it has open (one entry for the client would let the
//! new SYN re-point them all).
//!
//! Two seeds key the hash. The Maglev pick uses the snapshot's (`hash_seed`), so it agrees
//! with every gateway's current choice. The flow table's place of a flow, and what else must
//! stay fixed for a flow's life (the outer source bits, GUE source port and IPv6 flow label),
//! use the flow table's own seed, which is the first snapshot's and never changes: a reload
//! that changes the seed then still finds every recorded flow. While the two are equal (no
//! seed change since the worker started) the pick reuses the flow hash. ICMP errors look up
//! the flow table with the swapped tuple, so by its seed, like the flow's own packets.
//!
//! IPv4 and IPv6 fragments are keyed and hashed without the source port, and since a later
//! fragment carries no destination port either, every fragment is attributed to the
//! *fragment VIP* of its (address, protocol): the VIP with the lowest port (see
//! [`Snapshot::lookup_vip`]), whose port stands in for the missing one. So the first and the
//! later fragments of a datagram compute the same key and reach the same backend, on every
//! gateway, in any order, with no reassembly state. An IPv6 datagram whose Fragmentable Part
//! opens with an extension header (Destination Options, AH) names its upper protocol in the
//! first fragment only, so all its fragments are attributed as UDP (see
//! [`crate::wire::ipv6ext::Upper::keyed_proto`]). The trade-off: a datagram that is
//! fragmented may reach a different backend than the same flow's unfragmented datagrams, and
//! one that is for another port of that address is balanced by the fragment VIP's backend
//! set. Not when the fragment VIP is 3-tuple: its fragments then pick by addresses and
//! protocol, as the unfragmented packets to every 3-tuple port of the address with the same
//! backend set (and weights) do; a port with another set, or in 5-tuple mode, can still
//! differ. Fragmented UDP is rare and is mostly one-shot (DNS, IKE); TCP avoids fragmentation
//! with PMTU discovery, which the Path MTU handling supports.
//!
//! # TTL
//! A packet for a VIP that arrives with TTL (hop limit) 0 or 1 is dropped
//! ([`DropReason::TtlExhausted`]). The gateway is a routed hop: the router forwarded the
//! packet to it, and forwarding it again with an exhausted TTL would let a routing loop
//! through a gateway live forever. Other packets are not decremented: the inner header stays
//! untouched, so the node sees exactly what the client sent (as Katran and Maglev do).
//!
//! # Encapsulation
//! The backend's family picks the outer header: IPv4-in-IPv4 (protocol 4), IPv6-in-IPv6 and
//! IPv4-in-IPv6 (next header 41 / 4); a VIP with [`Encap::Gue`](crate::snapshot::Encap) adds
//! UDP to the configured port and a 4-byte GUE variant-0 header ([`crate::wire::gue`]). The
//! headers are written into the headroom in front of the received packet ([`MIN_HEADROOM`]
//! covers the largest case); Ethernet padding is dropped. Outer fields: TTL / hop limit 64,
//! DSCP and ECN copied, IPv4 DF set and ID 0 (the pipeline enforces the tunnel MTU itself),
//! IPv6 flow label, GUE source port (49152-65535) and the host bits of the outer source
//! prefix from the flow hash (see [`encap::Tunnel`] for which bits), so the fabric's ECMP
//! and the node's RSS spread flows while each flow keeps one path. The next-hop MAC comes from the snapshot; an
//! unresolved one is [`DropReason::NoNextHop`], and a backend of a family with no outer source
//! configured is [`DropReason::NoTunnelSource`]. With an egress VLAN configured, frames toward
//! the nodes carry that tag whatever tag they arrived with.
//!
//! # Path MTU
//! A packet whose encapsulation would exceed the tunnel MTU gets a "too big" reply from the VIP
//! ([`Verdict::Reply`]: ICMPv4 fragmentation needed for IPv4 with DF, ICMPv6 Packet Too Big
//! for IPv6) carrying the MTU that fits, MACs swapped and VLAN tag kept, rate-limited per
//! worker ([`WorkerConfig::icmp_per_sec`]). Without DF, for a later fragment, for an ICMP error
//! or toward a non-unicast source it is dropped ([`DropReason::TooBig`]). ICMP errors addressed
//! to a VIP are parsed to the header they quote and follow the flow of the swapped tuple.
//!
//! # What is not ours
//! Non-IP frames, stacked VLAN tags, and traffic to anything but a configured (address,
//! protocol, port) are [`Verdict::Pass`], as is non-error ICMP (echo, neighbour discovery) even
//! to a VIP address. So are frames to a broadcast or multicast MAC address (a router forwards
//! no link-layer broadcast, RFC 1812 §5.3.4, and sends no ICMP error about one, RFC 1122
//! §3.2.2), and IPv6 packets to an IPv4-mapped address `::ffff:a.b.c.d` (no destination on the
//! wire, RFC 4291 §2.5.5.2; not the IPv4 VIP a.b.c.d, though IPv4 VIPs are keyed so). An IPv6
//! packet for a VIP from an IPv4-mapped source is [`DropReason::BadSource`]. Other protocols
//! to a VIP address, and fragmented ICMP, are [`DropReason::Unsupported`].

mod encap;
mod icmp;
mod parse;

use crate::flow::{FlowKey, FlowTable, FlowTimeouts, SlotHint, TimeoutClass, DEFAULT_CAPACITY};
use crate::snapshot::{encap_overhead, BackendSlot, HashMode, Snapshot, Vip};
use crate::wire::IPV4_HEADER_LEN;
use encap::Tunnel;
pub(crate) use encap::{encapsulate_ipip, OuterTemplate};
use parse::{Early, Kind, Parsed, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Up to this many live flows (about 270 KB of entries) the flow table's lines stay in the
/// caches: prefetching the home slots is enough, and the two-stage prefetch measured ~10 ns
/// a packet slower there.
const CACHED_FLOWS: usize = 4096;

/// Frames processed together (a call with more runs them in batches of this size); the
/// AF_XDP workers take this many from RX at a time.
pub const BATCH: usize = 64;

/// Headroom (bytes in front of `Frame::offset`) the largest rewrite needs: IPv6 + UDP + GUE
/// headers plus a VLAN tag that the received frame did not have.
pub const MIN_HEADROOM: usize = 40 + 8 + 4 + 4;

/// One received frame inside its buffer. `buf` is the whole buffer (for AF_XDP, the UMEM
/// chunk); the packet occupies `buf[offset..offset + len]`, and the bytes in front of
/// `offset` are headroom that encapsulation may grow into.
pub struct Frame<'a> {
    pub buf: &'a mut [u8],
    pub offset: usize,
    pub len: usize,
}

/// What to do with a frame after processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `buf[offset..offset + len]` toward the nodes (the frame was rewritten in place).
    Tx { offset: usize, len: usize },
    /// Transmit `buf[offset..offset + len]` back out of the receiving interface (an ICMP error
    /// to the client). In a one-arm topology this is the same interface as `Tx`.
    Reply { offset: usize, len: usize },
    /// Not ours: hand it to the kernel unchanged.
    Pass,
    /// Drop it, counted under the reason.
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $label:literal,)*) => {
        /// Why a frame was dropped. Each reason has its own counter.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons (the length of [`Counters::drops`]).
            pub const COUNT: usize = DropReason::ALL.len();

            /// A stable snake_case name for metrics labels.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The frame ends before a header it needs (Ethernet, VLAN tag, IP, TCP/UDP, ICMP), or
    /// the frame does not fit its buffer.
    Truncated = "truncated",
    /// The IP version field disagrees with the EtherType.
    BadVersion = "bad_version",
    /// IPv4 header length below 20 bytes or beyond the total length.
    BadIhl = "bad_ihl",
    /// A length field (IPv4 total length, IPv6 payload length, TCP data offset, UDP length)
    /// is inconsistent with the frame.
    BadLength = "bad_length",
    /// IPv4 header checksum mismatch.
    BadChecksum = "bad_checksum",
    /// A protocol other than TCP, UDP or ICMP sent to a VIP address, or a fragmented ICMP
    /// message (only a whole ICMP error is followed to its flow).
    Unsupported = "unsupported",
    /// More IPv6 extension headers than the parser walks.
    TooManyExtHeaders = "too_many_ext_headers",
    /// TTL or hop limit 0 or 1 on arrival (see the module docs).
    TtlExhausted = "ttl_exhausted",
    /// The VIP has no backend with nonzero weight, and the flow has no live one recorded.
    NoBackend = "no_backend",
    /// The chosen backend's next-hop MAC is not resolved yet.
    NoNextHop = "no_next_hop",
    /// No outer source address of the chosen backend's family is configured on this
    /// gateway. The backend keeps its Maglev slots, so that this gateway's table stays the
    /// one every other gateway builds.
    NoTunnelSource = "no_tunnel_source",
    /// Too big for the tunnel and not allowed a "too big" reply: IPv4 without DF, a later
    /// fragment, an ICMP error, or a sender address no reply may go to.
    TooBig = "too_big",
    /// Too big for the tunnel; the "too big" reply was suppressed by the rate limit.
    IcmpRateLimited = "icmp_rate_limited",
    /// Not enough headroom in front of the frame to encapsulate or reply.
    NoHeadroom = "no_headroom",
    /// An ICMP error to a VIP whose quoted header is malformed or not from that VIP.
    BadIcmp = "bad_icmp",
    /// An IPv6 packet for a VIP from an IPv4-mapped source `::ffff:a.b.c.d` (or an ICMPv6
    /// error about a packet to one): no source on the wire (RFC 4291 §2.5.5.2, RFC 6890),
    /// which Linux discards on receipt (`ip6_rcv_core`), and its flow key would be the IPv4
    /// client a.b.c.d's.
    BadSource = "bad_source",
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketBytes {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketBytes {
    #[inline]
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// One worker's counters. Plain integers: only the worker writes them; whoever publishes
/// them reads a copy between batches.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
    /// Frames sent toward the nodes (bytes as transmitted, after encapsulation).
    pub tx: PacketBytes,
    /// "Too big" replies sent back to clients.
    pub reply: PacketBytes,
    /// Frames handed to the kernel.
    pub pass: u64,
    /// Per VIP, by snapshot index: frames received for it that reached balancing (bytes as
    /// received); one dropped before that (bad checksum, TTL exhausted, bad source) is only
    /// in `drops`. VIPs past the capacity chosen at creation are not counted.
    pub vips: Box<[PacketBytes]>,
    /// Per backend slot, by snapshot index: frames sent to it (bytes as transmitted).
    pub backends: Box<[PacketBytes]>,
}

impl Counters {
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Writes verdict `v` and counts it. Called where each verdict is decided, with `v` a
    /// known variant there, so the match folds to one counter update and the verdict is
    /// stored in place (a verdict returned up through a merge point went through the stack).
    #[inline(always)]
    fn emit(&mut self, out: &mut Verdict, v: Verdict) {
        match v {
            Verdict::Pass => self.pass += 1,
            Verdict::Drop(r) => self.drops[r as usize] += 1,
            Verdict::Tx { len, .. } => self.tx.add(len),
            Verdict::Reply { len, .. } => self.reply.add(len),
        }
        *out = v;
    }

    /// Adds `n` to VIP `vip`'s counter (if it has one).
    #[inline]
    fn add_vip(&mut self, vip: u32, n: PacketBytes) {
        if let Some(c) = self.vips.get_mut(vip as usize) {
            c.packets += n.packets;
            c.bytes += n.bytes;
        }
    }
}

/// What a worker is created with.
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Flow-table slots (fixed for the worker's life).
    pub flow_capacity: usize,
    pub timeouts: FlowTimeouts,
    /// Capacity of the per-VIP counters.
    pub max_vips: usize,
    /// Capacity of the per-backend-slot counters.
    pub max_backends: usize,
    /// "Too big" replies per second this worker may send (token bucket), like a router's ICMP
    /// rate limit: a flood of oversized packets must not become a flood of replies.
    pub icmp_per_sec: u32,
    /// Burst of that token bucket.
    pub icmp_burst: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            flow_capacity: DEFAULT_CAPACITY,
            timeouts: FlowTimeouts::default(),
            max_vips: 4096,
            max_backends: 65536,
            icmp_per_sec: 1000,
            icmp_burst: 100,
        }
    }
}

/// What a flow entry records: the backend's address, which identifies it across snapshots,
/// and its slot in the snapshot that last used the entry, so the common case is one compare.
#[derive(Clone, Copy, Debug)]
pub struct FlowValue {
    addr: [u8; 16],
    slot: u32,
}

/// A frame between the passes: parsed in place, its key adjusted to the VIP's hash mode.
#[derive(Clone, Copy, Default)]
struct Pending {
    p: Parsed,
    vip: u32,
    /// The flow's hash by the flow table's seed: its flow-table place, outer source, GUE
    /// port and flow label.
    hash: u64,
    /// The hash its Maglev slot is picked by, by the snapshot's seed: `hash` while the seeds
    /// are equal, without the ports for a [`HashMode::ThreeTuple`] VIP.
    pick: u64,
    /// Where the flow table expects the flow (from the prefetch pass).
    slot: SlotHint,
    /// [`is_syn`], decided once in pass 1.
    syn: bool,
}

/// One RX queue's pipeline state. See the module docs. Its flow table is keyed by the hash
/// seed of the first snapshot it processes, for its life.
pub struct Worker {
    state: State,
    /// Per-frame scratch for the two passes, reused by every batch.
    pending: [Pending; BATCH],
}

/// What outlives a batch.
struct State {
    flows: FlowTable<FlowValue>,
    /// The seed `flows` is keyed by: the first snapshot's `hash_seed`, for the worker's life
    /// (see the module docs). `None` until the first batch.
    flow_seed: Option<u64>,
    counters: Counters,
    icmp: TokenBucket,
}

impl Worker {
    /// Allocates everything the worker will ever use.
    pub fn new(cfg: WorkerConfig) -> Worker {
        Worker {
            state: State {
                flows: FlowTable::new(cfg.flow_capacity, cfg.timeouts),
                flow_seed: None,
                counters: Counters {
                    vips: vec![PacketBytes::default(); cfg.max_vips].into_boxed_slice(),
                    backends: vec![PacketBytes::default(); cfg.max_backends].into_boxed_slice(),
                    ..Counters::default()
                },
                icmp: TokenBucket::new(cfg.icmp_per_sec, cfg.icmp_burst),
            },
            pending: [Pending::default(); BATCH],
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn flows(&self) -> &FlowTable<FlowValue> {
        &self.state.flows
    }

    /// Frees idle flow entries in the next `max_buckets` buckets; call between batches.
    pub fn expire_flows(&mut self, now_ns: u64, max_buckets: usize) -> usize {
        self.state.flows.expire(now_ns, max_buckets)
    }

    /// Processes `frames` in place, writing one verdict per frame into `verdicts` (which must
    /// be at least as long; extra frames are left untouched). Any number of frames may be
    /// passed; they are processed in batches of [`BATCH`].
    pub fn process(
        &mut self,
        snap: &Snapshot,
        now_ns: u64,
        frames: &mut [Frame<'_>],
        verdicts: &mut [Verdict],
    ) {
        let n = frames.len().min(verdicts.len());
        for (f, v) in frames[..n]
            .chunks_mut(BATCH)
            .zip(verdicts[..n].chunks_mut(BATCH))
        {
            self.batch(snap, now_ns, f, v);
        }
    }

    fn batch(
        &mut self,
        snap: &Snapshot,
        now_ns: u64,
        frames: &mut [Frame<'_>],
        verdicts: &mut [Verdict],
    ) {
        let st = &mut self.state;
        st.icmp.refill(now_ns);
        let seed = *st.flow_seed.get_or_insert(snap.hash_seed);
        // Pass 1: parse, find the VIP, hash, and start loading the flow's tag lines (a SYN
        // inserts, which reads them, and takes the current Maglev choice: also its Maglev
        // slot), or while few flows are live its home slots.
        let cached = st.flows.len() <= CACHED_FLOWS;
        let mut todo: u64 = 0;
        let mut last = None;
        for (i, (f, w)) in frames.iter().zip(self.pending.iter_mut()).enumerate() {
            match classify(snap, seed, f, w, &mut last) {
                Ok(()) => {
                    let syn = is_syn(&w.p);
                    w.syn = syn;
                    if !cached || syn {
                        st.flows.prefetch_tags(w.hash);
                    }
                    if cached {
                        st.flows.prefetch_homes(w.hash);
                    }
                    w.slot = SlotHint::UNPROBED;
                    if syn {
                        if let Some(v) = snap.vips().get(w.vip as usize) {
                            v.maglev().prefetch(w.pick);
                        }
                    }
                    todo |= 1 << i;
                }
                Err(Early::Pass) => st.counters.emit(&mut verdicts[i], Verdict::Pass),
                Err(Early::Drop(r)) => st.counters.emit(&mut verdicts[i], Verdict::Drop(r)),
            }
        }
        // Pass 2: by now the tags are in cache; start loading the one entry line each flow
        // will touch.
        let mut m = if cached { 0 } else { todo };
        while m != 0 {
            let w = &mut self.pending[m.trailing_zeros() as usize];
            w.slot = st.flows.prefetch_slot(w.hash);
            m &= m - 1;
        }
        // Pass 3: flow lookup, backend choice, rewrite. Per-VIP counts accumulate over runs
        // of one VIP (usually the whole batch) and are added once per run.
        let mut run = (u32::MAX, PacketBytes::default());
        while todo != 0 {
            let i = todo.trailing_zeros() as usize;
            todo &= todo - 1;
            let w = &self.pending[i];
            if w.vip != run.0 {
                st.counters.add_vip(run.0, run.1);
                run = (w.vip, PacketBytes::default());
            }
            run.1.add(frames[i].len);
            st.forward(snap, now_ns, &mut frames[i], w, &mut verdicts[i]);
        }
        st.counters.add_vip(run.0, run.1);
    }
}

/// The last service lookup of a batch, (address, protocol, port) and its answer: a batch is
/// mostly one service's traffic (or one stream that is none), so most frames repeat it and
/// skip the hash and the probe of [`Snapshot::lookup_vip`].
#[derive(Clone, Copy)]
struct LastVip {
    addr: [u8; 16],
    proto: u8,
    port: u16,
    vip: Option<u32>,
}

/// Pass 1 for one frame: everything up to the flow lookup. `Ok` leaves `w` ready for it.
/// `seed` is the flow table's; `last` carries the previous frame's service lookup within the
/// batch (same snapshot).
#[inline]
fn classify(
    snap: &Snapshot,
    seed: u64,
    f: &Frame<'_>,
    w: &mut Pending,
    last: &mut Option<LastVip>,
) -> Result<(), Early> {
    let end = f.offset.checked_add(f.len).ok_or(DropReason::Truncated)?;
    let pkt = f.buf.get(f.offset..end).ok_or(DropReason::Truncated)?;
    // The tail is inlined into each arm. The fast path keeps the parsed fields as values and
    // stores them in the scratch slot that pass 3 reads only once the frame is ours (a frame
    // for no VIP never is): `pass` 117 to 98 instructions a packet (callgrind), 8.2 to 6.8 ns
    // at best in twelve alternated runs. The general parser writes into the slot directly
    // (through a local, it was copied twice).
    let (vip, hash, pick) = match parse::fast_v4(pkt) {
        Some(mut q) => {
            let r = classify_parsed(snap, seed, pkt, &mut q, last)?;
            w.p = q;
            r
        }
        None => {
            parse::parse_general(pkt, &mut w.p)?;
            classify_parsed(snap, seed, pkt, &mut w.p, last)?
        }
    };
    w.vip = vip;
    w.hash = hash;
    w.pick = pick;
    Ok(())
}

/// [`classify`] after parsing `pkt` into `p`: its VIP, flow hash (by the flow table's `seed`)
/// and Maglev hash (see [`Pending`]), `p.key` adjusted for a fragment.
#[inline(always)]
fn classify_parsed(
    snap: &Snapshot,
    seed: u64,
    pkt: &[u8],
    p: &mut Parsed,
    last: &mut Option<LastVip>,
) -> Result<(u32, u64, u64), Early> {
    if p.kind == Kind::Other {
        return Err(if snap.is_vip_addr(&p.key.dst) {
            Early::Drop(DropReason::Unsupported)
        } else {
            Early::Pass
        });
    }
    let port = if p.fragment { 0 } else { p.key.dst_port };
    let (addr, proto) = (p.key.dst, p.key.proto);
    let vip = match *last {
        Some(l) if l.port == port && l.proto == proto && l.addr == addr => l.vip,
        _ => {
            let vip = snap.lookup_vip(&addr, proto, port);
            *last = Some(LastVip {
                addr,
                proto,
                port,
                vip,
            });
            vip
        }
    }
    .ok_or(Early::Pass)?;
    // From here on the frame is ours: validate what a router would.
    if !p.v6 && !ipv4_checksum_ok(pkt, usize::from(p.l3)) {
        return Err(DropReason::BadChecksum.into());
    }
    if p.v6 && parse::is_v4_mapped(&p.key.src) {
        return Err(DropReason::BadSource.into());
    }
    if p.ttl <= 1 {
        return Err(DropReason::TtlExhausted.into());
    }
    let v = snap.vips().get(vip as usize).ok_or(Early::Pass)?;
    // Both ports are stored unconditionally, so the hash below takes them as values. Stored
    // in a branch, they were read back as one 4-byte load over two 2-byte stores, which store
    // forwarding cannot serve: the load waited for both stores to reach the cache, on the
    // hash's path to the flow-table prefetch (`tcp4_hit_hot` 38.5 to 31.4 ns, minimum of
    // fifteen alternated runs; `tcp4_syn` 95.2 to 82.6).
    (p.key.src_port, p.key.dst_port) = if p.fragment {
        (0, v.key.port)
    } else {
        (p.key.src_port, p.key.dst_port)
    };
    let hash = p.key.hash(seed);
    // A second hash for a 3-tuple VIP or after a seed change; the flow entry keeps the whole
    // key either way.
    let pick = if v.hash == HashMode::ThreeTuple || seed != snap.hash_seed {
        let three = v.hash == HashMode::ThreeTuple;
        FlowKey {
            src_port: if three { 0 } else { p.key.src_port },
            dst_port: if three { 0 } else { p.key.dst_port },
            ..p.key
        }
        .hash(snap.hash_seed)
    } else {
        hash
    };
    Ok((vip, hash, pick))
}

/// A TCP SYN without ACK: a new connection, which always takes the current Maglev choice.
#[inline]
fn is_syn(p: &Parsed) -> bool {
    // Flags first: they rule out almost every packet in one test.
    p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && p.key.proto == TCP
        && !p.fragment
        && p.kind == Kind::Flow
}

/// Whether `p` has a TCP header of its own (not a fragment's, not an ICMP error's quote).
#[inline]
fn own_tcp(p: &Parsed) -> bool {
    p.key.proto == TCP && !p.fragment && p.kind == Kind::Flow
}

/// The idle-timeout class a flow entry gets when `p` creates it: closing on a FIN,
/// unconfirmed on a SYN or a RST, else established (a flow met mid-way, e.g. after another
/// gateway failed).
#[inline]
fn timeout_class(p: &Parsed) -> TimeoutClass {
    let f = if own_tcp(p) { p.tcp_flags } else { 0 };
    if p.key.proto != TCP {
        TimeoutClass::Udp
    } else if f & TCP_FIN != 0 {
        TimeoutClass::TcpClosing
    } else if f & (TCP_SYN | TCP_RST) != 0 {
        TimeoutClass::TcpUnconfirmed
    } else {
        TimeoutClass::TcpEstablished
    }
}

/// The class a recorded TCP flow in class `now` moves to when `p` hits it, if it moves.
/// A FIN closes it for good: after its own FIN a client sends only ACKs, and the last one
/// must not bring back the long timeout. A RST makes an open flow unconfirmed, not closing:
/// a RST the server ignored (out of window, RFC 5961 §3) is followed by ordinary packets,
/// which confirm the flow again, while after one that took effect the client sends nothing
/// more on it. An ordinary packet confirms an unconfirmed flow.
#[inline]
fn next_class(p: &Parsed, now: TimeoutClass) -> Option<TimeoutClass> {
    let f = p.tcp_flags;
    // The common case first, in two tests: an ordinary packet of a confirmed flow.
    if f & (TCP_FIN | TCP_RST) == 0 && now != TimeoutClass::TcpUnconfirmed {
        return None;
    }
    if !own_tcp(p) {
        return None;
    }
    match now {
        TimeoutClass::TcpEstablished | TimeoutClass::TcpUnconfirmed if f & TCP_FIN != 0 => {
            Some(TimeoutClass::TcpClosing)
        }
        TimeoutClass::TcpEstablished if f & TCP_RST != 0 => Some(TimeoutClass::TcpUnconfirmed),
        TimeoutClass::TcpUnconfirmed if f & (TCP_SYN | TCP_RST) == 0 => {
            Some(TimeoutClass::TcpEstablished)
        }
        _ => None,
    }
}

/// RFC 1071 over the IPv4 header at `pkt[l3..]` (its length already validated).
#[inline]
fn ipv4_checksum_ok(pkt: &[u8], l3: usize) -> bool {
    let Some(ip) = pkt.get(l3..) else {
        return false;
    };
    let hl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
    // The usual header without options as a fixed-size sum, which unrolls to a few adds.
    if let (IPV4_HEADER_LEN, Some(h)) = (hl, ip.first_chunk::<IPV4_HEADER_LEN>()) {
        return crate::wire::checksum_ok(h);
    }
    match ip.get(..hl) {
        Some(hdr) => crate::wire::checksum_ok(hdr),
        None => false,
    }
}

impl State {
    /// Pass 3 for one frame: writes and counts its verdict (see [`Counters::emit`]).
    #[inline]
    fn forward(
        &mut self,
        snap: &Snapshot,
        now_ns: u64,
        f: &mut Frame<'_>,
        w: &Pending,
        out: &mut Verdict,
    ) {
        let p = &w.p;
        let mut c = |st: &mut Self, v| st.counters.emit(out, v);
        let Some(vip) = snap.vips().get(w.vip as usize) else {
            return c(self, Verdict::Pass);
        };
        let Some((slot, b)) = self.choose(snap, vip, now_ns, w) else {
            return c(self, Verdict::Drop(DropReason::NoBackend));
        };
        let Some(dst_mac) = b.mac else {
            let why = if b.sourced {
                DropReason::NoNextHop
            } else {
                DropReason::NoTunnelSource
            };
            return c(self, Verdict::Drop(why));
        };
        let outer_v6 = !b.is_v4;
        let overhead = encap_overhead(outer_v6, vip.encap);
        let ip_len = usize::from(p.ip_len);
        if ip_len + overhead > usize::from(snap.tunnel_mtu) {
            let v = self.too_big(f, p, snap.tunnel_mtu - overhead as u16);
            return c(self, v);
        }
        let src = if outer_v6 {
            snap.src_v6.pick(w.hash, false)
        } else {
            snap.src_v4.pick(w.hash, true)
        };
        let ip_start = f.offset + usize::from(p.l3);
        let done = match &b.outer {
            Some(o) => encap::encapsulate_ipip(f.buf, ip_start, ip_len, p.tos, o, src, w.hash),
            None => {
                let t = Tunnel {
                    outer_v6,
                    encap: vip.encap,
                    src,
                    dst: b.addr,
                    dst_mac,
                    src_mac: snap.local_mac,
                    vlan: snap.egress_vlan,
                    hash: w.hash,
                };
                encap::encapsulate(f.buf, ip_start, ip_len, p.v6, p.tos, &t)
            }
        };
        match done {
            Some((offset, len)) => {
                let (offset, len) = (offset as usize, len as usize);
                if let Some(b) = self.counters.backends.get_mut(slot as usize) {
                    b.add(len);
                }
                c(self, Verdict::Tx { offset, len })
            }
            None => c(self, Verdict::Drop(DropReason::NoHeadroom)),
        }
    }

    /// The backend for a pending frame, as its slot in the snapshot and the slot's entry,
    /// applying the flow-table semantics of the module docs; `None` if the VIP has no
    /// backend to give.
    #[inline]
    fn choose<'s>(
        &mut self,
        snap: &'s Snapshot,
        vip: &Vip,
        now_ns: u64,
        w: &Pending,
    ) -> Option<(u32, &'s BackendSlot)> {
        let p = &w.p;
        let maglev = || {
            let slot = vip.backends().start + vip.maglev().lookup(w.pick)?;
            Some((slot, snap.backends().get(slot as usize)?))
        };
        let record = |(slot, b): (u32, &BackendSlot)| FlowValue { addr: b.addr, slot };
        if !w.syn {
            let refresh = p.kind == Kind::Flow;
            if let Some(e) = self
                .flows
                .lookup_at(&p.key, w.hash, w.slot, now_ns, refresh)
            {
                let chosen = match resolve(snap, vip.backends(), &e.value) {
                    Some(c) => {
                        // Same backend, another slot number: remember the new one.
                        if c.0 != e.value.slot {
                            e.value.slot = c.0;
                        }
                        c
                    }
                    // The backend was removed: re-hash and re-record.
                    None => {
                        let c = maglev()?;
                        e.value = record(c);
                        c
                    }
                };
                if let Some(c) = next_class(p, e.class()) {
                    e.set_class(c);
                }
                return Some(chosen);
            }
        }
        let chosen = maglev()?;
        if p.kind == Kind::Flow {
            self.flows
                .insert(&p.key, w.hash, record(chosen), timeout_class(p), now_ns);
        }
        Some(chosen)
    }

    #[cold]
    fn too_big(&mut self, f: &mut Frame<'_>, p: &Parsed, mtu: u16) -> Verdict {
        let may_reply = (p.v6 || p.df)
            && p.kind == Kind::Flow
            && !p.later_fragment
            && unicast_source(&p.key.src, p.v6);
        if !may_reply {
            return Verdict::Drop(DropReason::TooBig);
        }
        if !self.icmp.take() {
            return Verdict::Drop(DropReason::IcmpRateLimited);
        }
        match icmp::too_big(f.buf, f.offset, p, mtu) {
            Some((offset, len)) => Verdict::Reply { offset, len },
            None => Verdict::Drop(DropReason::NoHeadroom),
        }
    }
}

/// The recorded backend's slot in this snapshot and the backend, if it is still in the VIP's
/// set. Checked by address, never trusted from the entry: snapshots do not have to be
/// numbered right for a flow to stay on its backend.
#[inline]
fn resolve<'s>(
    snap: &'s Snapshot,
    range: std::ops::Range<u32>,
    v: &FlowValue,
) -> Option<(u32, &'s BackendSlot)> {
    let slots = snap
        .backends()
        .get(range.start as usize..range.end as usize)?;
    // Usually the slot the entry remembers (same snapshot, or the set did not move).
    if let Some(b) = slots.get(v.slot.wrapping_sub(range.start) as usize) {
        if b.addr == v.addr {
            return Some((v.slot, b));
        }
    }
    // Otherwise search: slots are sorted by address, as Maglev sorts them.
    let i = slots.binary_search_by(|b| b.addr.cmp(&v.addr)).ok()?;
    Some((range.start + i as u32, &slots[i]))
}

/// Whether a "too big" reply may go to `src`: no ICMP error goes to a source that does not
/// name a single host (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)). IPv4: not
/// 0.0.0.0/8 ("this network", the unspecified address included), 127.0.0.0/8 (loopback),
/// 224.0.0.0/4 (multicast) nor 240.0.0.0/4 (reserved, the limited broadcast included).
/// IPv6: not multicast, unspecified, loopback, nor IPv4-mapped (`::ffff:0:0/96`, no address
/// on the wire: RFC 4291 §2.5.5.2).
fn unicast_source(src: &[u8; 16], v6: bool) -> bool {
    if v6 {
        let a = std::net::Ipv6Addr::from(*src);
        !(a.is_multicast() || a.is_unspecified() || a.is_loopback() || parse::is_v4_mapped(src))
    } else {
        !matches!(src[12], 0 | 127 | 224..=255)
    }
}

/// A token bucket on the caller's clock.
struct TokenBucket {
    tokens: u64,
    burst: u64,
    ns_per_token: u64,
    last_ns: u64,
}

impl TokenBucket {
    fn new(per_sec: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: u64::from(burst),
            burst: u64::from(burst),
            ns_per_token: if per_sec == 0 {
                u64::MAX
            } else {
                1_000_000_000 / u64::from(per_sec)
            },
            last_ns: 0,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let n = now_ns.saturating_sub(self.last_ns) / self.ns_per_token.max(1);
        if n > 0 {
            self.tokens = (self.tokens + n).min(self.burst);
            // Keep the part of a token's interval already elapsed: with batches more often
            // than one interval, restarting it at `now_ns` lost up to half the rate.
            self.last_ns += n * self.ns_per_token;
        }
    }

    fn take(&mut self) -> bool {
        let ok = self.tokens > 0;
        self.tokens -= u64::from(ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::unicast_source;
    use std::net::IpAddr;

    /// The blocks no "too big" reply goes to, at their edges, and their unicast neighbours.
    #[test]
    fn unicast_sources() {
        let ok = |s: &str| {
            let (key, v6) = match s.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), false),
                IpAddr::V6(a) => (a.octets(), true),
            };
            unicast_source(&key, v6)
        };
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "0.255.255.255",
            "127.0.0.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "::ffff:203.0.113.7",
            "::ffff:0.0.0.0",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        for good in [
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "203.0.113.7",
            "2001:db8::7",
            "::fffe:203.0.113.7",
            "::1:ffff:203.0.113.7",
            "64:ff9b::203.0.113.7",
        ] {
            assert!(ok(good), "{good}");
        }
    }
}
