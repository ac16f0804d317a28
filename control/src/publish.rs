//! Turns the control plane's view (services, health, next hops) into one dataplane
//! [`Snapshot`] and publishes it to the workers with a single `ArcSwap::store`.
//!
//! [`desired`] is pure: for every service port it takes the backends the snapshot carries
//! (healthy; those at weight 0 drain: the Maglev table lists them but gives them no slot, so
//! the flows recorded to them stay and no new flow goes there) and the next-hop MACs known
//! for them. A healthy backend
//! whose next hop is unresolved, or of a family this gateway has no outer source address
//! for, stays in the Maglev set, so that every gateway keeps the same table; the workers
//! drop and count its packets (`no_next_hop`, `no_tunnel_source`), and the announce policy
//! does not count it as usable. [`Publisher`] compares the result with what is live,
//! builds the Maglev tables (the expensive step, here on the control thread, never in a
//! worker; unchanged VIPs share the live snapshot's tables, neither rebuilt nor copied) only
//! when something changed, and swaps the result in. Workers load the snapshot once per batch, so the next batch runs on it. Each
//! rebuilt table is diffed against the one it replaces ([`MaglevChange`]): the share of a
//! VIP's slots that changed backend is the share of its flows a gateway without their
//! state (a new one, or one whose flows expired) now sends elsewhere.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dataplane::maglev::MAX_BACKENDS;
use dataplane::snapshot::{
    BackendConfig, Encap as DpEncap, HashMode as DpHash, Proto, Snapshot, SnapshotConfig,
    SnapshotError, SourcePrefix, VipConfig, VipKey,
};

use crate::config::{HashMode, Protocol};
use crate::sources::{BackendSpec, Encap, ServiceSet};

/// The parts of a snapshot that come from the config and the egress interface, not from
/// the services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub maglev_size: u32,
    pub maglev_seed: u64,
    pub tunnel_mtu: u16,
    pub outer_src_v4: Option<SourcePrefix<Ipv4Addr>>,
    pub outer_src_v6: Option<SourcePrefix<Ipv6Addr>>,
    /// MAC of the interface tunnelled frames leave on.
    pub local_mac: [u8; 6],
}

impl Params {
    /// Whether a packet for `vip` can be tunnelled to `backend` from this gateway: the
    /// families fit ([`families_fit`]) and an outer source address of the backend's family
    /// is configured. The second part is this gateway's own matter, so it decides only
    /// whether the backend counts toward announcing, never whether it is in the table.
    pub fn can_tunnel(&self, vip: IpAddr, backend: IpAddr) -> bool {
        families_fit(vip, backend)
            && match backend {
                IpAddr::V4(_) => self.outer_src_v4.is_some(),
                IpAddr::V6(_) => self.outer_src_v6.is_some(),
            }
    }
}

/// Whether a tunnel can carry `vip`'s packets to `backend` at all: IPv4 in IPv4 or IPv6,
/// IPv6 in IPv6, not IPv6 in IPv4. The same on every gateway.
pub fn families_fit(vip: IpAddr, backend: IpAddr) -> bool {
    !(vip.is_ipv6() && backend.is_ipv4())
}

/// Where snapshot VIP `i` came from: `services.vips[spec]`, port `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub spec: usize,
    pub port: u16,
}

/// What [`desired`] computes: the snapshot's content (generation 0) and each VIP's origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub config: SnapshotConfig,
    pub origins: Vec<Origin>,
}

/// The snapshot content for `services`, whose backends' current usable weights come from
/// `usable` (see [`crate::sources::VipSpec::serving_backends`]: draining ones at weight 0,
/// which keep their flows), with next-hop MACs from
/// `next_hops`. Backends no tunnel can carry (an IPv4 backend of an IPv6 VIP) are left out
/// with a warning, and so are those
/// beyond what one Maglev table holds (see [`fit_one_table`]: a Cluster Service on more nodes
/// than that keeps the lowest addresses, the same on every gateway),
/// so that one bad Kubernetes object cannot block every other update.
pub fn desired(
    services: &ServiceSet,
    usable: impl Fn(usize) -> Vec<BackendSpec>,
    next_hops: &HashMap<IpAddr, [u8; 6]>,
    params: &Params,
) -> Desired {
    let mut vips = Vec::new();
    let mut origins = Vec::new();
    for (i, spec) in services.vips.iter().enumerate() {
        let mut backends: Vec<BackendConfig> = usable(i)
            .into_iter()
            .filter(|b| {
                let ok = families_fit(spec.addr, b.addr);
                if !ok {
                    tracing::warn!(vip = %spec.name, backend = %b.addr,
                        "backend left out: an IPv6 VIP cannot be tunnelled over IPv4");
                }
                ok
            })
            .map(|b| BackendConfig {
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        let offered = backends.len();
        if fit_one_table(&mut backends, params.maglev_size) {
            tracing::warn!(vip = %spec.name, backends = offered, kept = backends.len(),
                "more backends than one Maglev table holds; the lowest addresses are kept, \
                 serving ones before draining ones, and the rest are left out");
        }
        for &port in &spec.ports {
            vips.push(VipConfig {
                key: VipKey {
                    addr: spec.addr,
                    proto: proto(spec.proto),
                    port,
                },
                backends: backends.clone(),
                hash: match spec.hash {
                    HashMode::FiveTuple => DpHash::FiveTuple,
                    HashMode::ThreeTuple => DpHash::ThreeTuple,
                },
                encap: match spec.encap {
                    Encap::Ipip => DpEncap::IpIp,
                    Encap::Gue { port } => DpEncap::Gue { port },
                },
            });
            origins.push(Origin { spec: i, port });
        }
    }
    let used: std::collections::HashSet<IpAddr> = vips
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.addr))
        .collect();
    let config = SnapshotConfig {
        generation: 0,
        vips,
        maglev_size: params.maglev_size,
        maglev_seed: params.maglev_seed,
        // The flow hash must agree across gateways just like the Maglev seed does.
        hash_seed: params.maglev_seed,
        tunnel_mtu: params.tunnel_mtu,
        outer_src_v4: params.outer_src_v4,
        outer_src_v6: params.outer_src_v6,
        local_mac: params.local_mac,
        next_hops: next_hops
            .iter()
            .filter(|(a, _)| used.contains(a))
            .map(|(a, m)| (*a, *m))
            .collect(),
        egress_vlan: None,
    };
    Desired { config, origins }
}

/// Cuts `backends` to what one Maglev table of `size` slots holds, if it must: at most
/// `size` serving backends (each needs a slot) and [`MAX_BACKENDS`] in all. Serving ones are
/// kept before draining ones, since a cut draining backend only loses its old flows while a
/// cut serving one takes new flows away from a node that is up; within each group the lowest
/// addresses are kept, so every gateway cuts alike. Returns whether anything was cut.
fn fit_one_table(backends: &mut Vec<BackendConfig>, size: u32) -> bool {
    let serving = backends.iter().filter(|b| b.weight > 0).count();
    let serving_room = MAX_BACKENDS.min(size as usize);
    if serving <= serving_room && backends.len() <= MAX_BACKENDS {
        return false;
    }
    // Serving first (weight 0 sorts last), then by address.
    backends.sort_unstable_by_key(|b| (b.weight == 0, b.addr));
    let kept_serving = serving.min(serving_room);
    let kept_draining = (backends.len() - serving).min(MAX_BACKENDS - kept_serving);
    backends.drain(kept_serving..serving);
    backends.truncate(kept_serving + kept_draining);
    true
}

/// The address families whose serving backends (nonzero weight) `config` has no outer
/// source for, each with how many distinct such backends there are: they keep their Maglev
/// slots, and their packets are dropped as `no_tunnel_source`.
pub fn unsourced(config: &SnapshotConfig) -> Vec<(&'static str, usize)> {
    let families = [
        ("IPv4", true, config.outer_src_v4.is_none()),
        ("IPv6", false, config.outer_src_v6.is_none()),
    ];
    families
        .into_iter()
        .filter(|(_, _, missing)| *missing)
        .filter_map(|(family, v4, _)| {
            let backends: std::collections::HashSet<IpAddr> = config
                .vips
                .iter()
                .flat_map(|v| &v.backends)
                .filter(|b| b.weight > 0 && b.addr.is_ipv4() == v4)
                .map(|b| b.addr)
                .collect();
            (!backends.is_empty()).then_some((family, backends.len()))
        })
        .collect()
}

/// The snapshot protocol of a config protocol.
pub fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

/// What one publish did.
#[derive(Clone, Debug)]
pub struct Published {
    pub generation: u64,
    /// Building the snapshot (Maglev tables, VIP table).
    pub build: Duration,
    /// When the new snapshot was stored: from then on every batch a worker starts sees it.
    pub live_at: Instant,
    /// The VIPs whose Maglev table was rebuilt, in snapshot order (new VIPs are not listed).
    pub maglev: Vec<MaglevChange>,
}

/// One VIP's rebuilt Maglev table against the table it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChange {
    pub key: VipKey,
    /// Slots now holding another backend ([`dataplane::maglev::MaglevTable::diff`]).
    pub changed_slots: u32,
    pub table_size: u32,
}

/// Per service port of the live snapshot: its origin, the generation its backend set last
/// changed in, and the Maglev slots each backend holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveVip {
    pub key: VipKey,
    pub origin: Origin,
    pub generation: u64,
    pub table_size: u32,
    pub slots: HashMap<IpAddr, u32>,
}

/// The live snapshot, in the cell the workers load it from, and the snapshots it replaced
/// that a worker may still hold. A worker holds the snapshot it loaded until its batch ends;
/// were that the last reference, the worker would free the snapshot (its Maglev tables: the
/// allocator's lock, perhaps an munmap) on the packet path. So a replaced snapshot is kept
/// here until every worker is past it ([`Live::release`], with what the workers report in
/// [`dataplane::xsk::PipelineStats::oldest_held`]), and freed on the control thread.
/// Clones share both.
#[derive(Clone)]
pub struct Live {
    cell: Arc<ArcSwap<Snapshot>>,
    /// Replaced snapshots, oldest first. Only the control thread touches it (the mutex
    /// just lets the publisher and the dataplane share it); the workers never do.
    retired: Arc<Mutex<Vec<Arc<Snapshot>>>>,
}

impl Live {
    fn new(first: Snapshot) -> Live {
        Live {
            cell: Arc::new(ArcSwap::from_pointee(first)),
            retired: Arc::default(),
        }
    }

    /// The cell the workers load from.
    pub fn cell(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.cell
    }

    /// Makes `next` live, keeping the snapshot it replaces until [`Live::release`].
    fn store(&self, next: Snapshot) {
        let old = self.cell.swap(Arc::new(next));
        self.retired().push(old);
    }

    /// Drops the replaced snapshots older than `oldest_held`, the oldest generation a
    /// worker may still hold (the least [`dataplane::xsk::PipelineStats::oldest_held`] of
    /// the running workers; `u64::MAX` when none runs). Returns how many it dropped; this
    /// is the last reference to each unless something on the control side holds one too.
    pub fn release(&self, oldest_held: u64) -> usize {
        let mut retired = self.retired();
        let before = retired.len();
        retired.retain(|s| s.generation() >= oldest_held);
        before - retired.len()
    }

    /// Replaced snapshots not released yet.
    pub fn retired_count(&self) -> usize {
        self.retired().len()
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Snapshot>>> {
        // Nothing that holds the lock can panic half way (a push, a retain), so a
        // poisoned lock still holds a consistent list.
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Owns the live snapshot and its generation counter.
pub struct Publisher {
    live: Live,
    generation: u64,
    /// The content of the live snapshot (generation 0), to detect changes.
    current: SnapshotConfig,
    vips: Vec<LiveVip>,
}

impl Publisher {
    /// A publisher whose first snapshot (generation 1) is built from `first`.
    pub fn new(first: Desired) -> Result<Publisher, SnapshotError> {
        let mut cfg = first.config.clone();
        cfg.generation = 1;
        let snap = Snapshot::new(&cfg)?;
        let vips = live_vips(&snap, &first.origins, None, &first.config, None, 1);
        Ok(Publisher {
            live: Live::new(snap),
            generation: 1,
            current: first.config,
            vips,
        })
    }

    /// The live snapshot, for the dataplane: its workers load from [`Live::cell`], and it
    /// releases the snapshots they are past ([`Live::release`]).
    pub fn handle(&self) -> Live {
        self.live.clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live snapshot's service ports, in snapshot order.
    pub fn vips(&self) -> &[LiveVip] {
        &self.vips
    }

    /// Builds and stores a snapshot for `next` if it differs from the live one. On error
    /// the live snapshot stays.
    pub fn publish(&mut self, next: Desired) -> Result<Option<Published>, SnapshotError> {
        if next.config == self.current {
            // Origins may still have moved (a service added before others).
            if next.origins.len() == self.vips.len() {
                for (v, o) in self.vips.iter_mut().zip(&next.origins) {
                    v.origin = *o;
                }
            }
            return Ok(None);
        }
        let generation = self.generation + 1;
        let mut cfg = next.config.clone();
        cfg.generation = generation;
        let started = Instant::now();
        // Unchanged VIPs share the live snapshot's Maglev tables: only changed ones are built.
        let prev = self.live.cell.load_full();
        let snap = Snapshot::rebuild(&cfg, Some(&prev))?;
        let build = started.elapsed();
        let maglev = maglev_changes(&prev, &snap);
        let vips = live_vips(
            &snap,
            &next.origins,
            Some((&prev, &self.vips)),
            &next.config,
            Some(&self.current),
            generation,
        );
        self.live.store(snap);
        let live_at = Instant::now();
        self.generation = generation;
        self.current = next.config;
        self.vips = vips;
        Ok(Some(Published {
            generation,
            build,
            live_at,
            maglev,
        }))
    }
}

/// The VIPs of `next` whose table was built anew (not shared with `prev`: its backends,
/// size or the Maglev seed changed), with the slots that changed. Shared tables are
/// skipped without a scan.
fn maglev_changes(prev: &Snapshot, next: &Snapshot) -> Vec<MaglevChange> {
    next.vips()
        .iter()
        .filter_map(|v| {
            let (new, old) = (v.maglev(), prev.vip(&v.key)?.maglev());
            if new.shares(old) {
                return None;
            }
            Some(MaglevChange {
                key: v.key,
                changed_slots: new.changed_slots(old) as u32,
                table_size: new.size(),
            })
        })
        .collect()
}

/// The per-port view of a freshly built snapshot, given the snapshot it replaces and that
/// one's view. A port keeps the generation of its last change when its backends, hash and
/// tunnel are as before, and the slot counts of its table when the table is shared.
fn live_vips(
    snap: &Snapshot,
    origins: &[Origin],
    prev: Option<(&Snapshot, &[LiveVip])>,
    cfg: &SnapshotConfig,
    prev_cfg: Option<&SnapshotConfig>,
    generation: u64,
) -> Vec<LiveVip> {
    snap.vips()
        .iter()
        .zip(cfg.vips.iter())
        .zip(origins)
        .map(|((vip, vc), origin)| {
            let table = vip.maglev();
            // The live view of this port, if the port was live.
            let before = prev.and_then(|(s, live)| {
                let i = s.vip_index(&vip.key)?;
                let v = live.get(i).filter(|v| v.key == vip.key)?;
                Some((s.vips().get(i)?, v))
            });
            let slots = match before {
                Some((pv, v)) if pv.maglev().shares(table) => v.slots.clone(),
                _ => slot_counts(table),
            };
            let unchanged = prev_cfg.and_then(|pc| {
                let i = pc.vips.iter().position(|p| p.key == vc.key)?;
                let same = pc.vips[i] == *vc
                    && pc.maglev_size == cfg.maglev_size
                    && pc.maglev_seed == cfg.maglev_seed;
                let prev = prev.map_or(&[][..], |(_, live)| live);
                same.then(|| prev.get(i).map(|p| p.generation))?
            });
            LiveVip {
                key: vc.key,
                origin: *origin,
                generation: unchanged.unwrap_or(generation),
                table_size: table.size(),
                slots,
            }
        })
        .collect()
}

/// The slots each backend of `table` holds, by address (a scan of the whole table).
fn slot_counts(table: &dataplane::maglev::MaglevTable) -> HashMap<IpAddr, u32> {
    let mut counts = vec![0u32; table.backends().len()];
    for s in 0..table.size() {
        if let Some(b) = table.slot(s) {
            if let Some(c) = counts.get_mut(b as usize) {
                *c += 1;
            }
        }
    }
    table
        .backends()
        .iter()
        .zip(counts)
        .map(|(b, n)| (b.addr, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VipBgp;
    use crate::sources::{Origin as SrcOrigin, VipSpec};

    fn params() -> Params {
        Params {
            maglev_size: 251,
            maglev_seed: 7,
            tunnel_mtu: 1500,
            outer_src_v4: Some(SourcePrefix {
                addr: "198.51.100.2".parse().unwrap(),
                len: 32,
            }),
            outer_src_v6: None,
            local_mac: [2, 0, 0, 0, 0, 1],
        }
    }

    fn services() -> ServiceSet {
        let b = |a: &str| BackendSpec {
            addr: a.parse().unwrap(),
            weight: 1,
        };
        ServiceSet {
            vips: vec![VipSpec {
                name: "web".into(),
                origin: SrcOrigin::Static,
                addr: "192.0.2.10".parse().unwrap(),
                proto: Protocol::Tcp,
                ports: vec![80, 443],
                hash: HashMode::FiveTuple,
                encap: Encap::Ipip,
                min_healthy: 1,
                bgp: VipBgp::default(),
                backends: vec![b("198.51.100.11"), b("198.51.100.12"), b("2001:db8::1")],
                health: None,
            }],
        }
    }

    /// A Cluster Service on more nodes than the table has slots used to fail the whole
    /// snapshot, and the policy then withdrew every VIP of the gateway.
    #[test]
    fn backends_beyond_one_table_are_left_out_and_the_snapshot_builds() {
        let mut s = services();
        let v = &mut s.vips[0];
        v.backends = (0..300u32)
            .rev()
            .map(|i| BackendSpec {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                weight: 1,
            })
            .collect();
        let d = desired(
            &s,
            |i| s.vips[i].backends.clone(),
            &HashMap::new(),
            &params(),
        );
        for v in &d.config.vips {
            assert_eq!(v.backends.len(), 251);
            assert_eq!(v.backends.last().unwrap().addr.to_string(), "10.0.0.250");
        }
        let mut publisher = Publisher::new(d).unwrap();
        assert_eq!(publisher.vips().len(), 2);
        // Back under the limit: every backend is taken again.
        s.vips[0].backends.truncate(200);
        let d = desired(
            &s,
            |i| s.vips[i].backends.clone(),
            &HashMap::new(),
            &params(),
        );
        assert_eq!(d.config.vips[0].backends.len(), 200);
        assert!(publisher.publish(d).unwrap().is_some());
    }

    /// A cut keeps serving backends before draining ones, whatever their addresses: draining
    /// ones need no slot, so they never take a serving one's place under the table size, and
    /// under [`MAX_BACKENDS`] they are the ones left out.
    #[test]
    fn a_cut_keeps_serving_backends_before_draining_ones() {
        let backend = |base: u32, i: u32, weight: u32| BackendSpec {
            addr: IpAddr::V4(Ipv4Addr::from(base + i)),
            weight,
        };
        let cut = |backends: Vec<BackendSpec>, maglev_size: u32| {
            let mut s = services();
            s.vips[0].backends = backends;
            let p = Params {
                maglev_size,
                ..params()
            };
            let d = desired(&s, |i| s.vips[i].backends.clone(), &HashMap::new(), &p);
            let kept = &d.config.vips[0].backends;
            let serving = kept.iter().filter(|b| b.weight > 0).count();
            (serving, kept.len() - serving, d)
        };
        // 300 serving over 251 slots, 5 draining at lower addresses: 251 serving stay (the
        // lowest), and all 5 draining ones, which take no slot.
        let draining_low = (0..5).map(|i| backend(0x0900_0000, i, 0));
        let serving = (0..300).map(|i| backend(0x0a00_0000, i, 1));
        let (s, d, desired) = cut(draining_low.chain(serving).collect(), 251);
        assert_eq!((s, d), (251, 5));
        assert!(desired.config.vips[0]
            .backends
            .iter()
            .any(|b| b.addr.to_string() == "10.0.0.250"));
        Publisher::new(desired).unwrap();
        // Over MAX_BACKENDS in all with every serving one fitting the table: the draining
        // ones are cut (the lowest kept), never a serving one.
        let serving = (0..MAX_BACKENDS as u32 - 5).map(|i| backend(0x0b00_0000, i, 1));
        let draining_low = (0..10).map(|i| backend(0x0900_0000, i, 0));
        let (s, d, desired) = cut(draining_low.chain(serving).collect(), 65537);
        assert_eq!((s, d), (MAX_BACKENDS - 5, 5));
        assert!(desired.config.vips[0]
            .backends
            .iter()
            .any(|b| b.addr.to_string() == "9.0.0.4"));
    }

    /// A healthy backend at weight 0 drains: it is in the snapshot (so its recorded flows
    /// stay) with no Maglev slot (so no new flow goes there). Setting a backend's weight to 0
    /// changes only the slots it held; removing it once drained changes none.
    #[test]
    fn a_weight_zero_backend_is_published_draining_with_no_slots() {
        let mut s = services();
        s.vips[0].ports = vec![80];
        s.vips[0].backends.truncate(2);
        let (a, b) = (s.vips[0].backends[0].addr, s.vips[0].backends[1].addr);
        let p = params();
        let mut publisher = Publisher::new(desired(
            &s,
            |i| s.vips[i].serving_backends(|_| None),
            &HashMap::new(),
            &p,
        ))
        .unwrap();
        let held = publisher.vips()[0].slots[&b];
        assert!(held > 0 && held < 251, "{held}");

        s.vips[0].backends[1].weight = 0;
        let d = desired(
            &s,
            |i| s.vips[i].serving_backends(|_| None),
            &HashMap::new(),
            &p,
        );
        assert_eq!(
            d.config.vips[0].backends,
            [
                BackendConfig { addr: a, weight: 1 },
                BackendConfig { addr: b, weight: 0 }
            ]
        );
        let key = d.config.vips[0].key;
        let done = publisher.publish(d).unwrap().unwrap();
        assert_eq!(
            done.maglev,
            [MaglevChange {
                key,
                changed_slots: held,
                table_size: 251
            }]
        );
        assert_eq!(publisher.vips()[0].slots, HashMap::from([(a, 251), (b, 0)]));
        let live = publisher.handle().cell().load_full();
        let table = live.vip(&key).unwrap().maglev().clone();
        assert_eq!(
            table.backends().len(),
            2,
            "the draining backend stays listed"
        );
        let ia = table.backends().iter().position(|x| x.addr == a).unwrap() as u32;
        assert!((0..251).all(|slot| table.slot(slot) == Some(ia)));

        // Down (or removed): it leaves the table, and no slot changes.
        let done = publisher
            .publish(desired(
                &s,
                |i| s.vips[i].backends[..1].to_vec(),
                &HashMap::new(),
                &p,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(done.maglev[0].changed_slots, 0);
        assert_eq!(publisher.vips()[0].slots, HashMap::from([(a, 251)]));
    }

    #[test]
    fn which_families_can_be_tunnelled() {
        let p = params();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.can_tunnel(ip("192.0.2.10"), ip("198.51.100.11")));
        assert!(
            !p.can_tunnel(ip("2001:db8:100::10"), ip("198.51.100.11")),
            "no IPv6 in IPv4"
        );
        assert!(
            !p.can_tunnel(ip("192.0.2.10"), ip("2001:db8::1")),
            "no IPv6 outer source"
        );
        let with_v6 = Params {
            outer_src_v6: Some(SourcePrefix {
                addr: "2001:db8::2".parse().unwrap(),
                len: 128,
            }),
            ..p
        };
        assert!(with_v6.can_tunnel(ip("192.0.2.10"), ip("2001:db8::1")));
        assert!(with_v6.can_tunnel(ip("2001:db8:100::10"), ip("2001:db8::1")));
    }

    #[test]
    fn one_snapshot_vip_per_port_and_unusable_families_left_out() {
        let mut s = services();
        let hops = HashMap::from([("198.51.100.11".parse().unwrap(), [2, 0, 0, 0, 0, 11])]);
        let d = desired(&s, |i| s.vips[i].backends.clone(), &hops, &params());
        assert_eq!(d.config.vips.len(), 2);
        assert_eq!(
            d.origins,
            [Origin { spec: 0, port: 80 }, Origin { spec: 0, port: 443 }]
        );
        assert_eq!(d.config.vips[0].backends.len(), 3);
        assert_eq!(d.config.next_hops.len(), 1);
        // An IPv6 VIP leaves its IPv4 backends out: no tunnel carries IPv6 in IPv4.
        s.vips[0].addr = "2001:db8:100::10".parse().unwrap();
        let d = desired(&s, |i| s.vips[i].backends.clone(), &hops, &params());
        assert_eq!(d.config.vips[0].backends.len(), 1);
    }

    /// Two gateways that differ only in whether they have an IPv6 outer source build the
    /// same tables: the one without counts its IPv6 backends as unusable instead (it was
    /// the one that left them out, and so sent their flows to other nodes).
    #[test]
    fn the_tables_do_not_depend_on_this_gateways_outer_sources() {
        let s = services();
        let with_v6 = Params {
            outer_src_v6: Some(SourcePrefix {
                addr: "2001:db8::2".parse().unwrap(),
                len: 128,
            }),
            ..params()
        };
        let a = desired(
            &s,
            |i| s.vips[i].backends.clone(),
            &HashMap::new(),
            &params(),
        );
        let b = desired(
            &s,
            |i| s.vips[i].backends.clone(),
            &HashMap::new(),
            &with_v6,
        );
        assert_eq!(a.config.vips, b.config.vips);
        // The gateway without says which family it cannot serve, and how many backends.
        assert_eq!(unsourced(&a.config), [("IPv6", 1)]);
        assert_eq!(unsourced(&b.config), []);
        let (pa, pb) = (Publisher::new(a).unwrap(), Publisher::new(b).unwrap());
        let maglev = |p: &Publisher| p.handle().cell().load().vips()[0].maglev().clone();
        assert_eq!(maglev(&pa), maglev(&pb));
        assert!(!params().can_tunnel(s.vips[0].addr, "2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn publishes_only_changes_and_tracks_per_port_generations() {
        let s = services();
        let p = params();
        let all = |_: usize| s.vips[0].backends[..2].to_vec();
        let mut publisher = Publisher::new(desired(&s, all, &HashMap::new(), &p)).unwrap();
        let handle = publisher.handle();
        assert_eq!(handle.cell().load().generation(), 1);
        assert!(publisher
            .publish(desired(&s, all, &HashMap::new(), &p))
            .unwrap()
            .is_none());
        let slots: u32 = publisher.vips()[0].slots.values().sum();
        assert_eq!(slots, 251);
        // Per port, the slots of the backend about to be removed: exactly the ones that
        // change when one backend is left.
        let second = s.vips[0].backends[1].addr;
        let held: Vec<u32> = publisher.vips().iter().map(|v| v.slots[&second]).collect();
        assert!(held.iter().all(|&n| n > 0 && n < 251), "{held:?}");

        let one = |_: usize| s.vips[0].backends[..1].to_vec();
        let done = publisher
            .publish(desired(&s, one, &HashMap::new(), &p))
            .unwrap()
            .unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(
            done.maglev,
            publisher
                .vips()
                .iter()
                .zip(&held)
                .map(|(v, &n)| MaglevChange {
                    key: v.key,
                    changed_slots: n,
                    table_size: 251,
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(handle.cell().load().generation(), 2);
        assert_eq!(publisher.vips()[0].generation, 2);
        assert_eq!(
            publisher.vips()[0].slots[&"198.51.100.11".parse::<IpAddr>().unwrap()],
            251
        );

        // A next-hop change republishes but leaves the ports' table generation alone.
        let hops = HashMap::from([("198.51.100.11".parse().unwrap(), [2, 0, 0, 0, 0, 11])]);
        let done = publisher
            .publish(desired(&s, one, &hops, &p))
            .unwrap()
            .unwrap();
        assert_eq!(done.generation, 3);
        assert_eq!(publisher.vips()[0].generation, 2);
        assert!(done.maglev.is_empty(), "{:?}", done.maglev);
    }

    #[test]
    fn a_publish_shares_the_tables_of_unchanged_vips() {
        let mut s = services();
        let mut b = s.vips[0].clone();
        b.name = "api".into();
        b.addr = "192.0.2.20".parse().unwrap();
        b.ports = vec![8443];
        s.vips[0].ports = vec![80];
        s.vips.push(b);
        let p = params();
        let keys: Vec<VipKey> = [("192.0.2.10", 80), ("192.0.2.20", 8443)]
            .map(|(a, port)| VipKey {
                addr: a.parse().unwrap(),
                proto: Proto::Tcp,
                port,
            })
            .into();
        let two = |_: usize| s.vips[0].backends[..2].to_vec();
        let mut publisher = Publisher::new(desired(&s, two, &HashMap::new(), &p)).unwrap();
        let handle = publisher.handle();
        let before = handle.cell().load_full();
        let live_before = publisher.vips().to_vec();

        // VIP A loses a backend; VIP B keeps both.
        let a_changes = |i: usize| s.vips[0].backends[..2 - usize::from(i == 0)].to_vec();
        let done = publisher
            .publish(desired(&s, a_changes, &HashMap::new(), &p))
            .unwrap()
            .unwrap();
        let after = handle.cell().load_full();
        let table = |snap: &Snapshot, k: &VipKey| snap.vip(k).unwrap().maglev().clone();
        assert!(!table(&after, &keys[0]).shares(&table(&before, &keys[0])));
        assert!(table(&after, &keys[1]).shares(&table(&before, &keys[1])));
        assert_eq!(
            done.maglev.iter().map(|c| c.key).collect::<Vec<_>>(),
            [keys[0]],
            "only A's table is diffed"
        );
        // B's view (slot counts, generation) carries over; A's is recounted.
        assert_eq!(publisher.vips()[1], live_before[1]);
        assert_eq!(publisher.vips()[0].slots.values().sum::<u32>(), 251);
        assert_eq!(publisher.vips()[0].slots.len(), 1);
    }

    /// A worker that holds the live snapshot in a batch while a new one is published does
    /// not drop the last reference to it when the batch ends: the publisher keeps it until
    /// the worker reports a later generation (after a batch, or idle), and it is freed on
    /// the control thread, by [`Live::release`].
    #[test]
    fn a_replaced_snapshot_outlives_the_batch_that_held_it_and_is_freed_on_release() {
        use dataplane::pipeline::WorkerConfig;
        use dataplane::xsk::{PipelineProcessor, Processor};
        let s = services();
        let p = params();
        let two = |_: usize| s.vips[0].backends[..2].to_vec();
        let one = |_: usize| s.vips[0].backends[..1].to_vec();
        let mut publisher = Publisher::new(desired(&s, two, &HashMap::new(), &p)).unwrap();
        let live = publisher.handle();
        let mut worker = PipelineProcessor::new(
            WorkerConfig {
                flow_capacity: 1024,
                ..WorkerConfig::default()
            },
            live.cell().clone(),
        );
        let stats = worker.stats();
        let oldest = || stats.oldest_held();
        assert_eq!(oldest(), 0, "nothing reported yet");

        // A batch holds generation 1 (as `process` does) while generation 2 is published.
        let first = Arc::downgrade(&live.cell().load_full());
        let batch = live.cell().load();
        publisher
            .publish(desired(&s, one, &HashMap::new(), &p))
            .unwrap()
            .unwrap();
        assert_eq!(live.retired_count(), 1);
        drop(batch);
        assert!(
            first.upgrade().is_some(),
            "the worker's batch dropped the last reference"
        );
        // Not past it yet: kept.
        assert_eq!(live.release(oldest()), 0);
        // The next batch runs on generation 2: generation 1 is freed, here.
        worker.process(1, &mut [], &mut []);
        assert_eq!(oldest(), 2);
        assert_eq!(live.release(oldest()), 1);
        assert!(first.upgrade().is_none(), "not freed by release");

        // An idle worker says so between batches (housekeeping, about once a second).
        let second = Arc::downgrade(&live.cell().load_full());
        let hops = HashMap::from([("198.51.100.11".parse().unwrap(), [2, 0, 0, 0, 0, 11])]);
        publisher
            .publish(desired(&s, one, &hops, &p))
            .unwrap()
            .unwrap();
        assert_eq!(live.release(oldest()), 0);
        assert!(second.upgrade().is_some());
        worker.housekeeping(2);
        assert_eq!(oldest(), 3);
        assert_eq!(live.release(oldest()), 1);
        assert!(second.upgrade().is_none());
        assert_eq!(live.retired_count(), 0);
    }
}
