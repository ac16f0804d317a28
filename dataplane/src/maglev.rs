//! Maglev consistent hashing (Eisenbud et al., NSDI'16, §3.4), built off the hot path.
//!
//! Each backend gets a permutation of the `M` slots, `p(j) = (offset + j·skip) mod M`, from
//! two different seeded hashes of its stable key (its address, IPv4 as IPv4-mapped IPv6):
//! `offset = h1 mod M`, `skip = h2 mod (M − 1) + 1`. With `M` prime every skip is coprime to
//! `M`, so each permutation visits every slot. Backends take turns claiming the next free
//! slot of their permutation until the table is full (Algorithm 1 of the paper).
//!
//! Weights: a backend takes a turn in a round only when its accumulated weight reaches the
//! largest weight (Katran's `MaglevHashV2` rule), so slot counts follow the weights. Weight 0
//! means draining: the backend stays in [`MaglevTable::backends`] (existing flows keep
//! going to it) but owns no slot (new flows never pick it).
//!
//! Determinism: backends are sorted by their key before building, and hashing uses fixed
//! little-endian arithmetic, so any two gateways given the same backend set and seed build
//! byte-identical tables, whatever order the set arrived in.

use std::net::IpAddr;
use std::sync::Arc;

use crate::flow::fold_mul;

/// The default table size, a prime.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Largest table size accepted (2 bytes per slot: 32 MiB).
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// Most backends one table can hold (slots store a `u16` index; `u16::MAX` marks empty).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

const EMPTY: u16 = u16::MAX;

/// A backend node and its weight. Weight 0 = draining: no slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime")]
    SizeNotPrime(u32),
    #[error("Maglev table size {size} is larger than the maximum {max}")]
    SizeTooLarge { size: u32, max: u32 },
    #[error("Maglev table size {size} is smaller than the {backends} backends it must hold")]
    SizeTooSmall { size: u32, backends: usize },
    #[error("{count} backends exceed the maximum of {max} per table")]
    TooManyBackends { count: usize, max: usize },
    #[error("backend {0} appears more than once")]
    DuplicateBackend(IpAddr),
}

/// A built Maglev lookup table. Immutable once built.
///
/// Cloning shares the built table (two reference counts), so a snapshot rebuilt for one
/// changed VIP keeps the others' tables instead of copying their slots. The slots sit behind
/// an `Arc<[u16]>` held inline, not behind an `Arc<MaglevTable>`: a lookup through a
/// [`crate::snapshot::Vip`] then loads the slice pointer and the slot, as with a `Box`, and
/// no extra pointer in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    backends: Arc<[Backend]>,
    /// Slot → index into `backends`, or `EMPTY` (only when no backend has weight).
    entries: Arc<[u16]>,
}

/// The stable key Maglev hashes: the address as 16 bytes, IPv4 mapped into IPv6, so the
/// permutation of a backend does not depend on how its address was written.
fn backend_key(addr: &IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

// Two different seeds give the two independent hashes §3.4 asks for.
const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

fn key_hash(key: &[u8; 16], seed: u64) -> u64 {
    let lo = u64::from_le_bytes(key[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(key[8..].try_into().unwrap_or_default());
    let h = fold_mul(lo ^ seed, hi ^ 0x2545_f491_4f6c_dd1d);
    fold_mul(h ^ seed.rotate_left(32), 0x9fb2_1c65_1e98_df25)
}

/// Backend `index` claims the next free slot of its permutation, whose next position and
/// skip are `perm`. `pos < m` and `skip < m`, so stepping is one add and one conditional
/// subtract instead of the paper's `(offset + j·skip) mod M`.
#[inline(always)]
fn claim_next(entries: &mut [u16], perm: &mut (u32, u32), index: u16) {
    let m = entries.len() as u32;
    let (mut c, skip) = *perm;
    // Compare against m − skip rather than testing c + skip ≥ m: the compare, the add and
    // the subtract then run in parallel, leaving a 2-cycle dependency chain per probe.
    let wrap = m - skip;
    let step = |c: u32| if c >= wrap { c - wrap } else { c + skip };
    while entries[c as usize] != EMPTY {
        c = step(c);
    }
    entries[c as usize] = index;
    perm.0 = step(c);
}

/// Deterministic primality by trial division: M ≤ 2^24, so at most ~2,000 odd divisors.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl MaglevTable {
    /// Builds the table for `backends` with `size` slots (a prime) and hash `seed`.
    ///
    /// Sorts backends by their stable key (the address) so two gateways with the same set
    /// and seed build identical tables.
    pub fn build(backends: &[Backend], size: u32, seed: u64) -> Result<MaglevTable, MaglevError> {
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::SizeTooLarge {
                size,
                max: MAX_TABLE_SIZE,
            });
        }
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime(size));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends {
                count: backends.len(),
                max: MAX_BACKENDS,
            });
        }
        let mut sorted: Vec<([u8; 16], Backend)> = backends
            .iter()
            .map(|b| (backend_key(&b.addr), *b))
            .collect();
        sorted.sort_unstable_by_key(|(k, _)| *k);
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(MaglevError::DuplicateBackend(w[1].1.addr));
        }
        let active = sorted.iter().filter(|(_, b)| b.weight > 0).count();
        if active > size as usize {
            return Err(MaglevError::SizeTooSmall {
                size,
                backends: active,
            });
        }

        let m = size;
        // Collected from an exact-size iterator: one allocation, filled in place (the
        // `make_mut` below finds it unshared and does not copy).
        let mut entries: Arc<[u16]> = std::iter::repeat_n(EMPTY, m as usize).collect();
        if active > 0 {
            let slots = Arc::make_mut(&mut entries);
            // Per active backend: its index in `sorted`, weight, and (next position, skip) in
            // its permutation.
            let index: Vec<u16> = (0..sorted.len() as u16)
                .filter(|&i| sorted[i as usize].1.weight > 0)
                .collect();
            let mut perm: Vec<(u32, u32)> = index
                .iter()
                .map(|&i| {
                    let k = &sorted[i as usize].0;
                    let offset = (key_hash(k, seed ^ OFFSET_SEED) % m as u64) as u32;
                    // m ≥ 2 (it is prime), so skip ∈ [1, m − 1].
                    let skip = (key_hash(k, seed ^ SKIP_SEED) % (m as u64 - 1)) as u32 + 1;
                    (offset, skip)
                })
                .collect();
            let mut filled = 0u32;
            let mut claim = |t: usize| {
                claim_next(slots, &mut perm[t], index[t]);
                filled += 1;
                filled == m
            };
            let weights: Vec<u64> = index
                .iter()
                .map(|&i| sorted[i as usize].1.weight as u64)
                .collect();
            let max_weight = weights.iter().copied().max().unwrap_or(1);
            if weights.iter().all(|&w| w == max_weight) {
                // Equal weights: every backend takes a turn in every round (Algorithm 1).
                'equal: loop {
                    for t in 0..index.len() {
                        if claim(t) {
                            break 'equal;
                        }
                    }
                }
            } else {
                // A backend takes a turn when its accumulated weight reaches the largest.
                let mut credit = vec![0u64; index.len()];
                'weighted: loop {
                    for t in 0..index.len() {
                        credit[t] += weights[t];
                        if credit[t] >= max_weight {
                            credit[t] -= max_weight;
                            if claim(t) {
                                break 'weighted;
                            }
                        }
                    }
                }
            }
        }
        Ok(MaglevTable {
            backends: sorted.into_iter().map(|(_, b)| b).collect(),
            entries,
        })
    }

    /// Index into [`MaglevTable::backends`] for a flow hash; `None` only when no backend has
    /// nonzero weight.
    ///
    /// The slot is `hash × M / 2^64` (Lemire's fast range: one multiply, no division), i.e.
    /// the high bits of the hash; the flow table uses the low bits of the same hash.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        let slot = ((hash as u128 * self.entries.len() as u128) >> 64) as usize;
        match self.entries.get(slot) {
            Some(&e) if e != EMPTY => Some(e as u32),
            _ => None,
        }
    }

    /// Asks the CPU to start loading the slot [`MaglevTable::lookup`] reads for `hash`: a
    /// batch prefetches its new flows' slots first, then looks them up.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let slot = ((hash as u128 * self.entries.len() as u128) >> 64) as usize;
        if let Some(e) = self.entries.get(slot) {
            // An aligned 2-byte slot never straddles a line: its first byte's line is enough.
            crate::flow::prefetch_range(e as *const u16 as *const u8, 1);
        }
    }

    /// The backends, sorted by address (IPv4 as IPv4-mapped IPv6), draining ones included.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Whether this table holds exactly `backends` (addresses and weights, in any order), so
    /// that it can stand for a table built from them with its size and seed. Sorts a copy
    /// rather than searching: a publish asks this of every VIP, and a thousand backends
    /// searched one by one cost about a millisecond.
    pub fn holds(&self, backends: &[Backend]) -> bool {
        if backends.len() != self.backends.len() {
            return false;
        }
        let mut sorted = backends.to_vec();
        sorted.sort_unstable_by_key(|b| backend_key(&b.addr));
        *sorted == *self.backends
    }

    pub fn size(&self) -> u32 {
        self.entries.len() as u32
    }

    /// True if `self` and `other` are one build, shared (a clone, or a snapshot's table
    /// reused by [`crate::snapshot::Snapshot::rebuild`]): then they are equal without a
    /// look at their slots.
    pub fn shares(&self, other: &MaglevTable) -> bool {
        Arc::ptr_eq(&self.entries, &other.entries) && Arc::ptr_eq(&self.backends, &other.backends)
    }

    /// The backend index stored in `slot`, if any (what a publisher copies out).
    pub fn slot(&self, slot: u32) -> Option<u32> {
        match self.entries.get(slot as usize) {
            Some(&e) if e != EMPTY => Some(e as u32),
            _ => None,
        }
    }

    /// Slots whose backend (by address) differs from `prev`'s, in increasing order: what a
    /// publisher would rewrite. Tables of different sizes differ in every slot.
    pub fn diff<'a>(&'a self, prev: &'a MaglevTable) -> impl Iterator<Item = u32> + 'a {
        // Map prev's backend indices to ours (both lists are sorted by key): then a slot is
        // unchanged exactly when the mapped indices are equal.
        let mut map = vec![EMPTY; prev.backends.len()];
        let (mut i, mut j) = (0, 0);
        while i < prev.backends.len() && j < self.backends.len() {
            let (a, b) = (
                backend_key(&prev.backends[i].addr),
                backend_key(&self.backends[j].addr),
            );
            match a.cmp(&b) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    map[i] = j as u16;
                    i += 1;
                    j += 1;
                }
            }
        }
        let same_size = self.entries.len() == prev.entries.len();
        self.entries.iter().enumerate().filter_map(move |(s, &e)| {
            let unchanged = same_size && {
                let p = prev.entries[s];
                if p == EMPTY {
                    e == EMPTY
                } else {
                    map[p as usize] == e && e != EMPTY
                }
            };
            (!unchanged).then_some(s as u32)
        })
    }

    /// Slots whose backend (by address) differs from `prev`'s: what a publisher would rewrite.
    pub fn changed_slots(&self, prev: &MaglevTable) -> usize {
        self.diff(prev).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn set(n: u32) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                addr: v4(i),
                weight: 1,
            })
            .collect()
    }

    fn counts(t: &MaglevTable) -> Vec<usize> {
        let mut c = vec![0; t.backends().len()];
        for s in 0..t.size() {
            if let Some(b) = t.slot(s) {
                c[b as usize] += 1;
            }
        }
        c
    }

    fn max_over_mean(t: &MaglevTable) -> f64 {
        let c = counts(t);
        let active: Vec<_> = t
            .backends()
            .iter()
            .zip(&c)
            .filter(|(b, _)| b.weight > 0)
            .map(|(_, &n)| n)
            .collect();
        let mean = t.size() as f64 / active.len() as f64;
        *active.iter().max().unwrap() as f64 / mean
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(is_prime(16_777_213));
        assert!(!is_prime(16_777_215));
        assert!(!is_prime(4_294_967_295));
        assert!(is_prime(4_294_967_291));
    }

    #[test]
    fn clones_share_and_separate_builds_do_not() {
        let t = MaglevTable::build(&set(3), 251, 5).unwrap();
        let again = MaglevTable::build(&set(3), 251, 5).unwrap();
        assert!(t.clone().shares(&t));
        assert_eq!(t, again);
        assert!(!again.shares(&t), "equal, but two builds");
    }

    #[test]
    fn errors() {
        let b = set(3);
        assert_eq!(
            MaglevTable::build(&b, 65536, 0),
            Err(MaglevError::SizeNotPrime(65536))
        );
        assert_eq!(
            MaglevTable::build(&b, 1, 0),
            Err(MaglevError::SizeNotPrime(1))
        );
        assert_eq!(
            MaglevTable::build(&b, 0, 0),
            Err(MaglevError::SizeNotPrime(0))
        );
        assert_eq!(
            MaglevTable::build(&b, 2, 0),
            Err(MaglevError::SizeTooSmall {
                size: 2,
                backends: 3
            })
        );
        assert_eq!(
            MaglevTable::build(&b, 16_777_259, 0),
            Err(MaglevError::SizeTooLarge {
                size: 16_777_259,
                max: MAX_TABLE_SIZE
            })
        );
        let mut dup = set(3);
        dup.push(Backend {
            addr: v4(2),
            weight: 5,
        });
        assert_eq!(
            MaglevTable::build(&dup, 7, 0),
            Err(MaglevError::DuplicateBackend(v4(2)))
        );
        // The same node written as IPv4 and as IPv4-mapped IPv6 is one key.
        let mapped = vec![
            Backend {
                addr: v4(1),
                weight: 1,
            },
            Backend {
                addr: IpAddr::V6(Ipv4Addr::from(0x0a00_0001).to_ipv6_mapped()),
                weight: 1,
            },
        ];
        assert!(matches!(
            MaglevTable::build(&mapped, 7, 0),
            Err(MaglevError::DuplicateBackend(_))
        ));
        let many: Vec<_> = (0..=MAX_BACKENDS as u32)
            .map(|i| Backend {
                addr: v4(i),
                weight: 0,
            })
            .collect();
        assert_eq!(
            MaglevTable::build(&many, 65537, 0),
            Err(MaglevError::TooManyBackends {
                count: MAX_BACKENDS + 1,
                max: MAX_BACKENDS
            })
        );
        // Draining backends need no slot, so they don't count against the size.
        let mut drain = set(2);
        drain.extend((10..20).map(|i| Backend {
            addr: v4(i),
            weight: 0,
        }));
        assert!(MaglevTable::build(&drain, 3, 0).is_ok());
    }

    #[test]
    fn empty_and_all_draining_tables_have_no_choice() {
        let t = MaglevTable::build(&[], 13, 0).unwrap();
        assert_eq!(t.lookup(12345), None);
        assert!(t.backends().is_empty());
        let d = [
            Backend {
                addr: v4(1),
                weight: 0,
            },
            Backend {
                addr: v4(2),
                weight: 0,
            },
        ];
        let t = MaglevTable::build(&d, 13, 0).unwrap();
        assert_eq!(t.backends().len(), 2);
        assert!((0..1000u64).all(|h| t.lookup(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)).is_none()));
    }

    #[test]
    fn single_backend_owns_every_slot() {
        let t = MaglevTable::build(&set(1), 65537, 7).unwrap();
        assert_eq!(counts(&t), [65537]);
        assert_eq!(t.lookup(0), Some(0));
        assert_eq!(t.lookup(u64::MAX), Some(0));
    }

    #[test]
    fn permutation_matches_the_paper_on_a_small_table() {
        // Rebuild Algorithm 1 literally (with % on every step) and compare.
        let backends = set(3);
        let m = 13u32;
        let seed = 42;
        let t = MaglevTable::build(&backends, m, seed).unwrap();
        let perm: Vec<(u64, u64)> = t
            .backends()
            .iter()
            .map(|b| {
                let k = backend_key(&b.addr);
                (
                    key_hash(&k, seed ^ OFFSET_SEED) % m as u64,
                    key_hash(&k, seed ^ SKIP_SEED) % (m as u64 - 1) + 1,
                )
            })
            .collect();
        let mut next = [0u64; 3];
        let mut entry = [None; 13];
        let mut n = 0;
        'outer: loop {
            for i in 0..3 {
                let mut c = (perm[i].0 + next[i] * perm[i].1) % m as u64;
                while entry[c as usize].is_some() {
                    next[i] += 1;
                    c = (perm[i].0 + next[i] * perm[i].1) % m as u64;
                }
                entry[c as usize] = Some(i as u32);
                next[i] += 1;
                n += 1;
                if n == m {
                    break 'outer;
                }
            }
        }
        let got: Vec<_> = (0..m).map(|s| t.slot(s)).collect();
        assert_eq!(got, entry);
    }

    #[test]
    fn lookup_is_fast_range_of_the_hash() {
        let t = MaglevTable::build(&set(5), 13, 0).unwrap();
        for s in 0..13u64 {
            // The first hash of slot s's range: ceil(s · 2^64 / 13).
            let h = (((s as u128) << 64).div_ceil(13)) as u64;
            assert_eq!(t.lookup(h), t.slot(s as u32));
        }
        assert_eq!(t.lookup(u64::MAX), t.slot(12));
    }

    #[test]
    fn balance_when_m_is_at_least_100n() {
        for n in [10, 100, 655] {
            let t = MaglevTable::build(&set(n), 65537, 1).unwrap();
            let r = max_over_mean(&t);
            assert!(r <= 1.01, "n={n}: max/mean {r}");
        }
    }

    #[test]
    fn removing_one_backend_moves_few_slots() {
        // Exact Maglev is not minimal: the removed backend's M/N slots move, and refilling
        // them shifts some of the others'. The hard bound is 1% of M for N=1000; for
        // N=100 we hold it to twice the ideal. (For scale: over many removals, exact Maglev
        // moves ~450 slots on average for N=1000 and ~1025 for N=100, with our hash or with
        // Katran's; Katran's quoted 432 and 1004 are single removals from that spread.)
        for (n, bound) in [(1000u32, 655usize), (100, 2 * 655)] {
            let full = set(n);
            let before = MaglevTable::build(&full, 65537, 0).unwrap();
            for victim in [0, n as usize / 2, n as usize - 1] {
                let mut less = full.clone();
                less.remove(victim);
                let after = MaglevTable::build(&less, 65537, 0).unwrap();
                let moved = after.changed_slots(&before);
                assert!(moved <= bound, "n={n} victim={victim}: {moved} > {bound}");
                // Every slot the victim owned moves.
                assert!(moved >= counts(&before)[victim]);
            }
        }
    }

    #[test]
    fn diff_lists_exactly_the_changed_slots() {
        let a = MaglevTable::build(&set(20), 251, 3).unwrap();
        let mut s = set(20);
        s.remove(7);
        s.push(Backend {
            addr: v4(999),
            weight: 1,
        });
        let b = MaglevTable::build(&s, 251, 3).unwrap();
        let addr = |t: &MaglevTable, i: u32| t.slot(i).map(|x| t.backends()[x as usize].addr);
        let expect: Vec<u32> = (0..251).filter(|&i| addr(&a, i) != addr(&b, i)).collect();
        assert_eq!(b.diff(&a).collect::<Vec<_>>(), expect);
        assert_eq!(b.changed_slots(&a), expect.len());
        assert_eq!(a.changed_slots(&a), 0);
        // Draining a backend clears its slots; un-draining brings them back.
        let mut d = set(20);
        d[3].weight = 0;
        let c = MaglevTable::build(&d, 251, 3).unwrap();
        assert!(c.changed_slots(&a) >= counts(&a)[3]);
        let empty = MaglevTable::build(&[], 251, 3).unwrap();
        assert_eq!(empty.changed_slots(&a), 251);
        let other_size = MaglevTable::build(&set(20), 257, 3).unwrap();
        assert_eq!(other_size.changed_slots(&a), 257);
    }

    #[test]
    fn draining_backend_keeps_its_index_but_no_slot() {
        let mut b = set(4);
        b[2].weight = 0;
        let t = MaglevTable::build(&b, 101, 0).unwrap();
        assert_eq!(t.backends().len(), 4);
        assert_eq!(t.backends()[2], b[2]);
        let c = counts(&t);
        assert_eq!(c[2], 0);
        assert_eq!(c.iter().sum::<usize>(), 101);
    }

    #[test]
    fn ipv6_and_ipv4_backends_sort_by_key() {
        let b = vec![
            Backend {
                addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                weight: 1,
            },
            Backend {
                addr: v4(2),
                weight: 1,
            },
            Backend {
                addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                weight: 1,
            },
            Backend {
                addr: v4(1),
                weight: 1,
            },
        ];
        let t = MaglevTable::build(&b, 101, 0).unwrap();
        let keys: Vec<_> = t.backends().iter().map(|b| backend_key(&b.addr)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.backends()[0].addr, v4(1));
        assert!(counts(&t).iter().all(|&c| c > 0));
    }

    #[test]
    fn seed_changes_the_table() {
        let a = MaglevTable::build(&set(10), 1009, 1).unwrap();
        let b = MaglevTable::build(&set(10), 1009, 2).unwrap();
        assert!(b.changed_slots(&a) > 500);
    }

    #[test]
    fn known_table_is_stable_across_builds_and_machines() {
        // A fixed fingerprint: if this changes, gateways running different versions would
        // disagree about every flow. Change it only together with a release note.
        let t = MaglevTable::build(&set(3), 13, 0).unwrap();
        let got: Vec<_> = (0..13).map(|s| t.slot(s).unwrap()).collect();
        assert_eq!(got, GOLDEN);
    }
    const GOLDEN: [u32; 13] = [2, 0, 1, 1, 2, 2, 0, 1, 1, 2, 0, 0, 0];

    fn arb_backends(max: usize) -> impl Strategy<Value = Vec<Backend>> {
        proptest::collection::btree_map(any::<u32>(), 0u32..5, 1..max).prop_map(|m| {
            m.into_iter()
                .map(|(a, w)| Backend {
                    addr: IpAddr::V4(Ipv4Addr::from(a)),
                    weight: w,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn same_set_any_order_same_table(
            b in arb_backends(40),
            seed in any::<u64>(),
            shuffle in any::<u64>(),
        ) {
            let mut other = b.clone();
            // Deterministic Fisher-Yates from the drawn value.
            let mut x = shuffle | 1;
            for i in (1..other.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                other.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let t1 = MaglevTable::build(&b, 1009, seed).unwrap();
            let t2 = MaglevTable::build(&other, 1009, seed).unwrap();
            prop_assert_eq!(&t1, &t2);
            prop_assert_eq!(t2.changed_slots(&t1), 0);
        }

        #[test]
        fn no_empty_slot_and_weights_hold(b in arb_backends(30), seed in any::<u64>()) {
            let m = 10007;
            let t = MaglevTable::build(&b, m, seed).unwrap();
            let total: u64 = t.backends().iter().map(|b| b.weight as u64).sum();
            let c = counts(&t);
            if total == 0 {
                prop_assert!(c.iter().all(|&n| n == 0));
                prop_assert_eq!(t.lookup(seed), None);
            } else {
                prop_assert_eq!(c.iter().sum::<usize>(), m as usize);
                prop_assert!((0..m).all(|s| t.slot(s).is_some()));
                for (b, &n) in t.backends().iter().zip(&c) {
                    let want = m as f64 * b.weight as f64 / total as f64;
                    // Within 2% of the table, and zero exactly for draining backends.
                    prop_assert!((n as f64 - want).abs() <= 0.02 * m as f64,
                        "weight {} got {} want {}", b.weight, n, want);
                    prop_assert_eq!(n == 0, b.weight == 0);
                }
            }
        }

        #[test]
        fn lookup_always_in_range(b in arb_backends(30), h in any::<u64>()) {
            let t = MaglevTable::build(&b, 101, 9).unwrap();
            match t.lookup(h) {
                Some(i) => prop_assert!(t.backends()[i as usize].weight > 0),
                None => prop_assert!(t.backends().iter().all(|b| b.weight == 0)),
            }
        }
    }
}
