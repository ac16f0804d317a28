//! The per-worker flow table: which backend each recent flow was sent to.
//!
//! A fixed-capacity, set-associative hash table. Every slot is allocated (and its pages
//! touched) in [`FlowTable::new`]; after that nothing allocates, so memory is bounded by
//! `capacity × BYTES_PER_ENTRY` and every operation is O(1): one bucket of [`WAYS`] slots,
//! picked by the low bits of the flow hash, is all a lookup or insert ever reads.
//!
//! Eviction is LRU inside the bucket: an insert into a full bucket first reuses an entry
//! that has been idle past its class timeout, and otherwise evicts the least recently seen
//! one (counted in [`FlowTable::evictions`]). Idle timeouts are per [`TimeoutClass`]; an
//! entry idle past its timeout is a miss and its slot is free for reuse. Timestamps are the
//! caller's `now_ns` (read once per batch); the table never reads a clock.

/// A flow's 5-tuple. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so one key
/// type serves both families. For 3-tuple hashing (per-VIP option, and fragments, which have
/// no ports) the caller zeroes the ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// Multiply two words and fold the 128-bit product (the wyhash/foldhash mixing step): one
/// `mul` that spreads every input bit over the output.
#[inline(always)]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

// Arbitrary odd constants (digits of pi), so an all-zero key still mixes.
const K: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

impl FlowKey {
    /// A seeded 64-bit hash of the whole key, used both to pick the Maglev slot and the flow
    /// table bucket. It is a fixed function of the key bytes and the seed (little-endian
    /// loads, no per-process randomness), so every gateway with the same seed hashes a flow
    /// the same way, which is what lets a flow survive the loss of a gateway.
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        let w = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let ports =
            (self.src_port as u64) | (self.dst_port as u64) << 16 | (self.proto as u64) << 32;
        let a = fold_mul(w(&self.src, 0) ^ seed ^ K[0], w(&self.src, 8) ^ K[1]);
        let b = fold_mul(w(&self.dst, 0) ^ seed ^ K[2], w(&self.dst, 8) ^ K[3]);
        let c = fold_mul(a ^ ports ^ K[1], b ^ K[0]);
        fold_mul(c ^ K[2], seed ^ K[3])
    }
}

/// Which idle timeout applies to a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutClass {
    TcpEstablished,
    /// After a FIN or RST: the flow only needs to outlive the retransmits of its close.
    TcpClosing,
    Udp,
}

/// Idle timeouts per class, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_established_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
}

impl Default for FlowTimeouts {
    /// 300 s for established TCP (Maglev and IPVS use minutes: long enough for idle
    /// keepalive-free connections, short enough that a full table recycles), 10 s for a
    /// closing TCP flow (covers FIN/ACK retransmits, like IPVS's FIN_WAIT/CLOSE states), and
    /// 60 s for UDP (DNS, QUIC and most request/response protocols finish well inside it;
    /// QUIC's default idle timeout is 30 s).
    fn default() -> Self {
        FlowTimeouts {
            tcp_established_ns: 300_000_000_000,
            tcp_closing_ns: 10_000_000_000,
            udp_ns: 60_000_000_000,
        }
    }
}

impl FlowTimeouts {
    #[inline]
    fn of(&self, class: TimeoutClass) -> u64 {
        match class {
            TimeoutClass::TcpEstablished => self.tcp_established_ns,
            TimeoutClass::TcpClosing => self.tcp_closing_ns,
            TimeoutClass::Udp => self.udp_ns,
        }
    }
}

/// The default: 1,048,576 flows per worker.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Slots per bucket. Four keeps a bucket within five cache lines for a ~24-byte value, so
/// one [`FlowTable::prefetch`] covers everything a lookup reads.
pub const WAYS: usize = 4;

/// One flow's state.
#[derive(Clone, Copy, Debug)]
pub struct FlowEntry<V> {
    pub value: V,
    key: FlowKey,
    class: TimeoutClass,
    last_seen_ns: u64,
}

impl<V> FlowEntry<V> {
    pub fn class(&self) -> TimeoutClass {
        self.class
    }

    /// Changes the idle timeout that applies from now on (e.g. to `TcpClosing` on a FIN).
    pub fn set_class(&mut self, c: TimeoutClass) {
        self.class = c;
    }

    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    #[inline]
    fn expired(&self, now_ns: u64, t: &FlowTimeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > t.of(self.class)
    }
}

/// A bucket: `WAYS` slots, each empty (`None`) or a flow. `Option` costs no space here:
/// it uses `TimeoutClass`'s spare bit patterns. 32-byte alignment keeps a bucket of
/// 288 bytes (the ~24-byte value case) within 5 cache lines wherever it starts.
#[repr(C, align(32))]
struct Bucket<V> {
    slots: [Option<FlowEntry<V>>; WAYS],
}

/// A fixed-capacity flow table for one worker. See the module docs.
pub struct FlowTable<V: Copy> {
    buckets: Box<[Bucket<V>]>,
    mask: u64,
    timeouts: FlowTimeouts,
    len: usize,
    evictions: u64,
    /// Next bucket [`FlowTable::expire`] examines.
    hand: usize,
}

impl<V: Copy> FlowTable<V> {
    /// Bytes of memory per flow slot (the bucket size divided by [`WAYS`]): the table uses
    /// `capacity() × BYTES_PER_ENTRY` bytes, fixed at construction. For a 24-byte, 8-aligned
    /// value that is 72 bytes (value 24, key 38, class 1, padding 1, last-seen 8), so the
    /// default 1,048,576 flows take 72 MiB per worker.
    pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Bucket<V>>() / WAYS;

    /// A table of at least `capacity` slots (rounded up to a power-of-two number of
    /// buckets, at least one). All memory is allocated and touched here, never later.
    ///
    /// A set-associative table starts evicting before it is full (a bucket can fill while
    /// others have room): size it at about 1.5–2× the flows you expect to hold at once.
    pub fn new(capacity: usize, timeouts: FlowTimeouts) -> Self {
        let n = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        let mut v: Vec<Bucket<V>> = Vec::with_capacity(n);
        advise_huge_pages(
            v.as_mut_ptr() as *mut u8,
            n * std::mem::size_of::<Bucket<V>>(),
        );
        v.resize_with(n, || Bucket {
            slots: [None; WAYS],
        });
        FlowTable {
            buckets: v.into_boxed_slice(),
            mask: (n - 1) as u64,
            timeouts,
            len: 0,
            evictions: 0,
            hand: 0,
        }
    }

    #[inline]
    fn bucket_index(&self, hash: u64) -> usize {
        // Low bits pick the bucket; Maglev's fast-range uses the high bits of the same hash.
        (hash & self.mask) as usize
    }

    /// Asks the CPU to start loading the bucket `hash` maps to, so a later `lookup` or
    /// `insert` finds it in cache. Call it for a whole batch first, then look up.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let b = &self.buckets[self.bucket_index(hash)];
        prefetch_range(
            b as *const Bucket<V> as *const u8,
            std::mem::size_of::<Bucket<V>>(),
        );
    }

    /// The live entry for `key`, its last-seen time refreshed to `now_ns`. An entry idle past
    /// its class timeout is removed and reported as a miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u64, now_ns: u64) -> Option<&mut FlowEntry<V>> {
        let i = self.bucket_index(hash);
        let timeouts = self.timeouts;
        let bucket = &mut self.buckets[i];
        let w = bucket
            .slots
            .iter()
            .position(|s| matches!(s, Some(e) if e.key == *key))?;
        let slot = &mut bucket.slots[w];
        if slot.as_ref().is_some_and(|e| e.expired(now_ns, &timeouts)) {
            *slot = None;
            self.len -= 1;
            return None;
        }
        let e = slot.as_mut()?;
        e.last_seen_ns = now_ns;
        Some(e)
    }

    /// Inserts `key` (or overwrites it if present) with `value` and `class`, seen at `now_ns`.
    /// In a full bucket the slot is, in order of preference: the key's own, an empty one, an
    /// expired one, or the least recently seen one (an eviction, counted).
    pub fn insert(
        &mut self,
        key: &FlowKey,
        hash: u64,
        value: V,
        class: TimeoutClass,
        now_ns: u64,
    ) -> &mut FlowEntry<V> {
        let i = self.bucket_index(hash);
        let timeouts = self.timeouts;
        let bucket = &mut self.buckets[i];
        let mut target = None;
        let mut empty = None;
        let mut expired = None;
        let mut lru = 0;
        let mut lru_seen = u64::MAX;
        for (w, s) in bucket.slots.iter().enumerate() {
            match s {
                Some(e) if e.key == *key => {
                    target = Some(w);
                    break;
                }
                Some(e) if e.expired(now_ns, &timeouts) => {
                    expired.get_or_insert(w);
                }
                Some(e) => {
                    if e.last_seen_ns < lru_seen {
                        lru_seen = e.last_seen_ns;
                        lru = w;
                    }
                }
                None => {
                    empty.get_or_insert(w);
                }
            }
        }
        let w = match (target, empty, expired) {
            (Some(w), _, _) => w,
            (None, Some(w), _) => {
                self.len += 1;
                w
            }
            (None, None, Some(w)) => w,
            (None, None, None) => {
                self.evictions += 1;
                lru
            }
        };
        bucket.slots[w].insert(FlowEntry {
            value,
            key: *key,
            class,
            last_seen_ns: now_ns,
        })
    }

    /// Removes `key`'s entry; false if there was none.
    pub fn remove(&mut self, key: &FlowKey, hash: u64) -> bool {
        let i = self.bucket_index(hash);
        let bucket = &mut self.buckets[i];
        match bucket
            .slots
            .iter_mut()
            .find(|s| matches!(s, Some(e) if e.key == *key))
        {
            Some(s) => {
                *s = None;
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    /// Frees the expired entries of the next `max_buckets` buckets (a clock hand that wraps
    /// around), so `len` stays meaningful when flows go idle and are never looked up again.
    /// Returns how many were freed. Call it off the per-packet path, e.g. once per poll loop.
    pub fn expire(&mut self, now_ns: u64, max_buckets: usize) -> usize {
        let timeouts = self.timeouts;
        let mut freed = 0;
        for _ in 0..max_buckets.min(self.buckets.len()) {
            for s in self.buckets[self.hand].slots.iter_mut() {
                if s.as_ref().is_some_and(|e| e.expired(now_ns, &timeouts)) {
                    *s = None;
                    freed += 1;
                }
            }
            self.hand = (self.hand + 1) & self.mask as usize;
        }
        self.len -= freed;
        freed
    }

    /// Slots in the table (fixed at construction).
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Occupied slots, including entries that have expired but whose slot has not been
    /// reused or freed yet (see [`FlowTable::expire`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live entries pushed out of a full bucket to make room for a new flow.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn timeouts(&self) -> FlowTimeouts {
        self.timeouts
    }
}

/// Asks for transparent huge pages on the not-yet-touched allocation at `ptr`: a 1M-flow
/// table spans ~72 MiB, far more than the 4 KiB-page TLB covers, so without them nearly
/// every lookup also pays a page walk. Best effort: failure only costs speed.
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: madvise only changes the paging policy of [start, end), which lies inside
            // the allocation we own and have not handed out; it never touches its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Prefetches every cache line of `[p, p + len)` into all cache levels.
#[inline(always)]
fn prefetch_range(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let first = p as usize & !63;
        let last = (p as usize + len - 1) & !63;
        let mut a = first;
        while a <= last {
            // SAFETY: prefetch is a hint that never faults, whatever the address; all of these
            // lines belong to the bucket anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    a as *const i8,
                )
            };
            a += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SEED: u64 = 0x5eed;
    const S: u64 = 1_000_000_000;

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey {
            src: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1],
            dst: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 1],
            src_port: 1024,
            dst_port: 443,
            proto: 6,
        };
        k.src[12..].copy_from_slice(&i.to_be_bytes());
        k.src_port = i as u16;
        k
    }

    fn table(cap: usize) -> FlowTable<u64> {
        FlowTable::new(cap, FlowTimeouts::default())
    }

    /// Keys that all land in the bucket of `key(0)` in a table with `mask`.
    fn same_bucket(mask: u64, n: usize) -> Vec<FlowKey> {
        let b = key(0).hash(SEED) & mask;
        (0..)
            .map(key)
            .filter(|k| k.hash(SEED) & mask == b)
            .take(n)
            .collect()
    }

    #[test]
    fn hash_is_a_fixed_function() {
        // Golden values: a change here means gateways of different versions disagree.
        let k = key(7);
        assert_eq!(k.hash(0), k.hash(0));
        assert_ne!(k.hash(0), k.hash(1));
        assert_eq!(FlowKey::default().hash(0), GOLDEN_ZERO);
        assert_eq!(k.hash(SEED), GOLDEN_KEY7);
        // Every field matters.
        let mut f = [k; 5];
        f[0].src[0] ^= 1;
        f[1].dst[15] ^= 0x80;
        f[2].src_port ^= 1;
        f[3].dst_port ^= 0x100;
        f[4].proto = 17;
        for g in f {
            assert_ne!(g.hash(SEED), k.hash(SEED));
        }
    }
    const GOLDEN_ZERO: u64 = 13_709_744_990_740_924_246;
    const GOLDEN_KEY7: u64 = 4_372_215_005_729_207_947;

    /// Pearson's chi-square of `n` hashes over 256 bins picked by `bin`.
    fn chi2(hashes: impl Iterator<Item = u64>, bin: impl Fn(u64) -> usize) -> f64 {
        let mut c = [0u32; 256];
        let mut n = 0;
        for h in hashes {
            c[bin(h)] += 1;
            n += 1;
        }
        let e = n as f64 / 256.0;
        c.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
    }

    #[test]
    fn hash_spreads_structured_keys_over_buckets_and_slots() {
        // Sequential source ports from one client, sequential clients on one port, and
        // sequential IPv6 clients: none may cluster in the low bits (flow buckets) or the
        // high bits (Maglev's fast range). For 255 degrees of freedom chi-square has mean 255
        // and deviation 22.6; 400 is more than 6 deviations out.
        let ports = |p: u32| {
            let mut k = key(1);
            k.src_port = p as u16;
            k
        };
        let clients = |i: u32| {
            let mut k = key(i);
            k.src_port = 40000;
            k
        };
        let v6 = |i: u32| {
            let mut k = key(0);
            k.src = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            k.src[12..].copy_from_slice(&i.to_be_bytes());
            k
        };
        let gens: [&dyn Fn(u32) -> FlowKey; 3] = [&ports, &clients, &v6];
        for (g, make) in gens.iter().enumerate() {
            let hashes = || (0..1u32 << 16).map(|i| make(i).hash(SEED));
            let lo = chi2(hashes(), |h| (h & 255) as usize);
            let hi = chi2(hashes(), |h| (h >> 56) as usize);
            assert!(
                lo < 400.0 && hi < 400.0,
                "generator {g}: chi2 low {lo:.0} high {hi:.0}"
            );
        }
    }

    #[test]
    fn hit_miss_and_overwrite() {
        let mut t = table(64);
        let k = key(1);
        let h = k.hash(SEED);
        assert!(t.lookup(&k, h, 0).is_none());
        t.insert(&k, h, 11, TimeoutClass::TcpEstablished, 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&k, h, 1).map(|e| e.value), Some(11));
        assert!(t.lookup(&key(2), key(2).hash(SEED), 1).is_none());
        let e = t.insert(&k, h, 12, TimeoutClass::Udp, 2);
        assert_eq!(
            (e.value, e.class(), e.last_seen_ns()),
            (12, TimeoutClass::Udp, 2)
        );
        assert_eq!(t.len(), 1, "overwrite does not grow");
        t.lookup(&k, h, 3).unwrap().value = 13;
        assert_eq!(t.lookup(&k, h, 4).map(|e| e.value), Some(13));
        assert_eq!(t.lookup(&k, h, 4).map(|e| *e.key()), Some(k));
        assert!(t.remove(&k, h));
        assert!(!t.remove(&k, h));
        assert_eq!(t.len(), 0);
        assert!(t.is_empty());
        assert!(t.lookup(&k, h, 5).is_none());
    }

    #[test]
    fn per_class_timeouts_on_a_virtual_clock() {
        let to = FlowTimeouts {
            tcp_established_ns: 300 * S,
            tcp_closing_ns: 10 * S,
            udp_ns: 60 * S,
        };
        let mut t: FlowTable<u8> = FlowTable::new(64, to);
        let (a, b, c) = (key(1), key(2), key(3));
        let (ha, hb, hc) = (a.hash(SEED), b.hash(SEED), c.hash(SEED));
        t.insert(&a, ha, 1, TimeoutClass::TcpEstablished, 0);
        t.insert(&b, hb, 2, TimeoutClass::TcpClosing, 0);
        t.insert(&c, hc, 3, TimeoutClass::Udp, 0);
        // Exactly at the timeout is still alive; one nanosecond later is not.
        assert!(t.lookup(&b, hb, 10 * S).is_some());
        assert!(t.lookup(&b, hb, 20 * S + 1).is_none());
        assert_eq!(t.len(), 2, "an expired hit frees its slot");
        assert!(t.lookup(&c, hc, 60 * S).is_some());
        // The lookup at 60 s refreshed last-seen: alive until 120 s.
        assert!(t.lookup(&c, hc, 120 * S).is_some());
        assert!(t.lookup(&c, hc, 180 * S + 1).is_none());
        assert!(t.lookup(&a, ha, 300 * S).is_some());
        // Moving to closing shortens the timeout from then on.
        t.lookup(&a, ha, 301 * S)
            .unwrap()
            .set_class(TimeoutClass::TcpClosing);
        assert_eq!(
            t.lookup(&a, ha, 302 * S).unwrap().class(),
            TimeoutClass::TcpClosing
        );
        assert!(t.lookup(&a, ha, 312 * S + 1).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn clock_going_backwards_does_not_expire() {
        let mut t = table(8);
        let k = key(1);
        let h = k.hash(SEED);
        t.insert(&k, h, 1, TimeoutClass::TcpClosing, 100 * S);
        assert!(t.lookup(&k, h, 50 * S).is_some());
    }

    #[test]
    fn full_bucket_evicts_the_least_recently_seen_and_counts_it() {
        let mut t = table(64);
        let ks = same_bucket(t.mask, WAYS + 1);
        for (i, k) in ks[..WAYS].iter().enumerate() {
            t.insert(
                k,
                k.hash(SEED),
                i as u64,
                TimeoutClass::TcpEstablished,
                i as u64,
            );
        }
        // Touch the oldest so the second-oldest becomes the LRU.
        assert!(t.lookup(&ks[0], ks[0].hash(SEED), 10).is_some());
        t.insert(&ks[WAYS], ks[WAYS].hash(SEED), 99, TimeoutClass::Udp, 11);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.len(), WAYS);
        assert!(
            t.lookup(&ks[1], ks[1].hash(SEED), 12).is_none(),
            "LRU evicted"
        );
        for k in [&ks[0], &ks[2], &ks[3], &ks[WAYS]] {
            assert!(t.lookup(k, k.hash(SEED), 12).is_some());
        }
    }

    #[test]
    fn full_bucket_reuses_an_expired_entry_before_evicting() {
        let mut t = table(64);
        let ks = same_bucket(t.mask, WAYS + 1);
        for (i, k) in ks[..WAYS].iter().enumerate() {
            // ks[2] is the newest but closing: it expires first.
            let class = if i == 2 {
                TimeoutClass::TcpClosing
            } else {
                TimeoutClass::TcpEstablished
            };
            t.insert(k, k.hash(SEED), 0, class, i as u64 * S);
        }
        t.insert(&ks[WAYS], ks[WAYS].hash(SEED), 1, TimeoutClass::Udp, 30 * S);
        assert_eq!(
            t.evictions(),
            0,
            "reusing an expired slot is not an eviction"
        );
        assert_eq!(t.len(), WAYS);
        assert!(t.lookup(&ks[2], ks[2].hash(SEED), 30 * S).is_none());
        assert!(t.lookup(&ks[0], ks[0].hash(SEED), 30 * S).is_some());
    }

    #[test]
    fn capacity_is_fixed_and_len_bounded() {
        let mut t = table(1000);
        assert_eq!(t.capacity(), 1024);
        let cap = t.capacity();
        for i in 0..10_000 {
            let k = key(i);
            t.insert(
                &k,
                k.hash(SEED),
                i as u64,
                TimeoutClass::TcpEstablished,
                i as u64,
            );
            assert!(t.len() <= cap);
        }
        assert_eq!(t.capacity(), cap);
        assert_eq!(t.len(), cap, "every bucket ends up full");
        assert_eq!(t.evictions(), 10_000 - cap as u64);
        // The most recent inserts survived.
        let k = key(9_999);
        assert_eq!(
            t.lookup(&k, k.hash(SEED), 10_000).map(|e| e.value),
            Some(9_999)
        );
        assert_eq!(
            FlowTable::<u64>::new(0, FlowTimeouts::default()).capacity(),
            WAYS
        );
        assert_eq!(
            FlowTable::<u64>::new(DEFAULT_CAPACITY, FlowTimeouts::default()).capacity(),
            DEFAULT_CAPACITY
        );
    }

    #[test]
    fn expire_sweeps_idle_entries() {
        let mut t = table(256);
        for i in 0..100 {
            let k = key(i);
            let class = if i % 2 == 0 {
                TimeoutClass::Udp
            } else {
                TimeoutClass::TcpEstablished
            };
            t.insert(&k, k.hash(SEED), 0, class, 0);
        }
        let n = t.len();
        let buckets = t.capacity() / WAYS;
        assert_eq!(
            t.expire(61 * S, buckets / 2) + t.expire(61 * S, buckets),
            n - 50
        );
        assert_eq!(t.len(), 50);
        assert_eq!(t.expire(61 * S, buckets), 0);
        let k = key(1);
        assert!(t.lookup(&k, k.hash(SEED), 61 * S).is_some());
    }

    #[test]
    fn entry_size_is_as_documented() {
        #[derive(Clone, Copy)]
        #[allow(dead_code)]
        struct V24(u64, u64, u64);
        assert_eq!(FlowTable::<V24>::BYTES_PER_ENTRY, 72);
        assert_eq!(std::mem::size_of::<Option<FlowEntry<V24>>>(), 72);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32, bool),
        Lookup(u8),
        Remove(u8),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..48, any::<u32>(), any::<bool>()).prop_map(|(k, v, u)| Op::Insert(k, v, u)),
            (0u8..48).prop_map(Op::Lookup),
            (0u8..48).prop_map(Op::Remove),
            (0u64..20 * S).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Against a HashMap model, with at most 48 keys in 256 slots: mostly no bucket
        /// overflows; when one does (evictions > 0) the case is discarded.
        #[test]
        fn behaves_like_a_map_when_nothing_is_evicted(ops in proptest::collection::vec(op(), 1..200)) {
            let to = FlowTimeouts { tcp_established_ns: 50 * S, tcp_closing_ns: 10 * S, udp_ns: 30 * S };
            let mut t: FlowTable<u32> = FlowTable::new(256, to);
            let mut model: HashMap<FlowKey, (u32, TimeoutClass, u64)> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(k, v, udp) => {
                        let key = key(k as u32);
                        let class = if udp { TimeoutClass::Udp } else { TimeoutClass::TcpEstablished };
                        t.insert(&key, key.hash(SEED), v, class, now);
                        model.insert(key, (v, class, now));
                    }
                    Op::Lookup(k) => {
                        let key = key(k as u32);
                        let want = match model.get_mut(&key) {
                            Some(e) if now - e.2 <= to.of(e.1) => { e.2 = now; Some(e.0) }
                            Some(_) => { model.remove(&key); None }
                            None => None,
                        };
                        prop_assert_eq!(t.lookup(&key, key.hash(SEED), now).map(|e| e.value), want);
                    }
                    Op::Remove(k) => {
                        let key = key(k as u32);
                        prop_assert_eq!(t.remove(&key, key.hash(SEED)), model.remove(&key).is_some());
                    }
                    Op::Tick(d) => now += d,
                }
                prop_assume!(t.evictions() == 0);
                // The table may already have reused the slot of an expired entry the model
                // still holds; it never holds less than the model's live entries.
                let live = model.values().filter(|e| now - e.2 <= to.of(e.1)).count();
                prop_assert!(live <= t.len() && t.len() <= model.len());
            }
        }
    }
}
