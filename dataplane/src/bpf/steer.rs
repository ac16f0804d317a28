//! Loader for `bpf/steer.c`: attaches it to a gateway interface, keeps the VIP maps and
//! the XSKMAP up to date, and reads its counters. Detaches on drop; since it is attached
//! through a bpf_link, the kernel also detaches it if the process dies.

use super::{addr16, ifindex, objects, sum_counters, AttachMode, BpfError, Result};
use aya::maps::{HashMap, MapData, XskMap};
use aya::programs::XdpMode;
use aya::{Ebpf, Pod};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const PROGRAM: &str = "xdp_steer";
/// `MAX_QUEUES` in steer.c: entries of the XSKMAP and of `xsk_shed`, so the RX queues
/// (0 to `MAX_QUEUES - 1`) whose VIP traffic can be steered to a socket.
pub const MAX_QUEUES: usize = 256;

/// Most service ports (address, protocol, port) a gateway steers. `vips` and `vip_addrs` in
/// steer.c hold twice as many (`2 * MAX_VIPS` there), because [`Steer::set_vips`] adds the
/// new entries before it removes the stale ones: a full set replaced by another full set
/// never overflows them.
pub const MAX_VIPS: usize = 4096;

/// One service: traffic to `addr`, IP protocol `proto` (6 TCP or 17 UDP: what the pipeline
/// balances), and destination `port` is steered to the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub addr: IpAddr,
    pub proto: u8,
    pub port: u16,
}

impl Vip {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    pub fn tcp(addr: IpAddr, port: u16) -> Vip {
        Vip {
            addr,
            proto: Self::TCP,
            port,
        }
    }

    pub fn udp(addr: IpAddr, port: u16) -> Vip {
        Vip {
            addr,
            proto: Self::UDP,
            port,
        }
    }
}

/// `struct vip_key` in steer.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VipKey {
    addr: [u8; 16],
    port_be: u16,
    proto: u8,
    pad: u8,
}

// SAFETY: VipKey is repr(C), made only of integers, with no implicit padding (16+2+1+1
// bytes), so every bit pattern is valid and no uninitialised bytes reach the kernel.
unsafe impl Pod for VipKey {}

impl VipKey {
    fn service(v: &Vip) -> VipKey {
        VipKey {
            addr: addr16(v.addr),
            port_be: v.port.to_be(),
            proto: v.proto,
            pad: 0,
        }
    }

    /// The `vip_addrs` key: address and protocol, port 0 (fragments, which carry no port).
    fn address(v: &Vip) -> VipKey {
        VipKey {
            port_be: 0,
            ..Self::service(v)
        }
    }
}

/// Summed per-CPU counters of the steering program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerCounters {
    /// VIP traffic handed to the AF_XDP socket of its RX queue: `bpf_redirect_map` found
    /// the queue's entry in the XSKMAP. Not a count of deliveries: the kernel can still drop
    /// the frame after the program returns, and then the worker never sees it. Its RX ring
    /// full (the worker's `rx_ring_full`), a frame longer than a UMEM frame holds (its
    /// `rx_dropped`) or no free frame in its fill ring (`rx_dropped` and
    /// `rx_fill_ring_empty_descs`), a socket bound to another device than the one the frame
    /// arrived on (a bond's port in native mode; counted by no socket counter, at most as
    /// an XDP redirect error by the driver). So `redirected` minus the workers' `rx` is
    /// what the kernel lost on the way.
    pub redirected: u64,
    /// VIP traffic that found no socket bound for its queue, so went to the kernel.
    pub no_socket: u64,
    /// Not VIP traffic: passed to the kernel.
    pub passed: u64,
    /// Addressed to a VIP address and protocol but with truncated or inconsistent
    /// headers: dropped.
    pub dropped: u64,
    /// VIP traffic dropped because its queue's worker was overloaded ([`ShedFlags`]).
    pub shed: u64,
}

/// The steering program's per-queue overload flags (`xsk_shed` in steer.c), mapped into
/// this process. A worker whose RX ring stays nearly full sets its queue's flag, and the
/// program then drops that queue's VIP traffic before the kernel copies it into the UMEM
/// (in copy mode the copy happens before the kernel finds the ring full). Setting a flag
/// is one store: no syscall. The mapping keeps the map alive on its own, so the flags stay
/// valid after the program is detached (when nothing reads them any more).
///
/// The mapping shows the array as the kernel stores it: element `i` at byte
/// `i * round_up(value_size, 8)` (`array_map_alloc`). The values are `__u64`, so the
/// stride is their size and flag `q` is the `q`th `AtomicU64`.
pub struct ShedFlags {
    /// `MAX_QUEUES` flags, 8 bytes apart.
    ptr: std::ptr::NonNull<AtomicU64>,
}

// SAFETY: the mapping is shared memory accessed only through `AtomicU64`s; the pointer is
// valid until `drop` unmaps it, and `&self` methods never hand out references to it.
unsafe impl Send for ShedFlags {}
// SAFETY: as above; concurrent atomic stores from several workers (to different queues,
// or even the same one) are data-race free.
unsafe impl Sync for ShedFlags {}

impl ShedFlags {
    /// Bytes of the mapping: `MAX_QUEUES` elements of `STRIDE` bytes.
    const BYTES: usize = MAX_QUEUES * Self::STRIDE;
    /// Bytes from one element of `xsk_shed` to the next: its value size (`__u64` in
    /// steer.c), which the kernel would round up to a multiple of 8 if it were not one.
    const STRIDE: usize = std::mem::size_of::<u64>();

    fn map(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<ShedFlags> {
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array map of MAX_QUEUES
        // `__u64` values, which the kernel stores STRIDE (8) bytes apart from the start of
        // the mapping; its value area is at least `BYTES` long (rounded up to a page). We
        // own the returned mapping and unmap it in `drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(ShedFlags { ptr })
    }

    /// Sets or clears RX queue `queue`'s flag (ignored past the program's queue limit).
    /// `Relaxed` is enough: the flag orders nothing else, and the program reading it a few
    /// packets late only sheds (or admits) those packets.
    pub fn set(&self, queue: u32, shed: bool) {
        if (queue as usize) < MAX_QUEUES {
            // SAFETY: element `queue` of the live mapping: `queue * STRIDE` bytes in, within
            // `BYTES`. AtomicU64 has u64's size (STRIDE) and alignment, and the mapping is
            // page-aligned, so the element is aligned.
            unsafe { &*self.ptr.as_ptr().add(queue as usize) }
                .store(u64::from(shed), Ordering::Relaxed);
        }
    }
}

impl Drop for ShedFlags {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, which nothing references now.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::BYTES) };
    }
}

/// The steering program, attached to one interface.
pub struct Steer {
    ebpf: Ebpf,
    iface: String,
    ifindex: u32,
    /// The interface's MAC address as the program has it (`steer_mac`): only frames to it
    /// are steered.
    mac: [u8; 6],
    mode: AttachMode,
    /// The loaded program's kernel id, to tell it from whatever else an interface runs.
    prog_id: u32,
    link: Option<aya::programs::xdp::XdpLinkId>,
}

impl std::fmt::Debug for Steer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steer")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Steer {
    /// Loads the program and attaches it to `iface` (in the caller's network namespace)
    /// in native mode, falling back to generic mode. No VIPs are configured yet, so until
    /// [`Steer::set_vips`] everything passes. The program steers only frames to `iface`'s
    /// MAC address as read now: [`Steer::refresh_mac`] follows a change.
    pub fn attach(iface: &str) -> Result<Steer> {
        Self::attach_with(iface, None)
    }

    /// As [`Steer::attach`], but only in `mode` if one is given.
    ///
    /// An interface that already runs an XDP program is refused before anything is loaded
    /// ([`BpfError::Foreign`], naming it): dsrgate never replaces another program (the
    /// kernel would refuse the link anyway), and a daemon that retries a rebuild would
    /// otherwise load and verify its program on every attempt only to be told "busy".
    pub fn attach_with(iface: &str, mode: Option<AttachMode>) -> Result<Steer> {
        let ifindex = ifindex(iface)?;
        let present = super::netlink::xdp_program(ifindex).map_err(|source| BpfError::Netlink {
            iface: iface.into(),
            source,
        })?;
        if let Some((id, _)) = present {
            let name = aya::programs::loaded_programs()
                .filter_map(|p| p.ok())
                .find(|p| p.id() == id)
                .and_then(|p| p.name_as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            return Err(BpfError::Foreign {
                iface: iface.into(),
                name,
                id,
                expected: PROGRAM,
            });
        }
        let mut ebpf = load()?;
        let mac = crate::iface::mac(iface).map_err(|source| BpfError::Mac {
            iface: iface.into(),
            source,
        })?;
        set_mac(&mut ebpf, mac)?;
        let prog = super::xdp_program(&mut ebpf, PROGRAM)?;
        let prog_id = prog
            .info()
            .map_err(|source| BpfError::Program {
                program: PROGRAM,
                source,
            })?
            .id();

        let mut errors = [String::from("not tried"), String::from("not tried")];
        let mut obtained = None;
        for (i, (m, xm)) in [
            (AttachMode::Driver, XdpMode::Driver),
            (AttachMode::Skb, XdpMode::Skb),
        ]
        .into_iter()
        .enumerate()
        {
            if mode.is_some_and(|want| want != m) {
                continue;
            }
            match prog.attach_to_if_index(ifindex, xm) {
                Ok(link) => {
                    obtained = Some((m, link));
                    break;
                }
                Err(e) => errors[i] = e.to_string(),
            }
        }
        let Some((mode, link)) = obtained else {
            let [driver, generic] = errors;
            return Err(BpfError::Attach {
                program: PROGRAM,
                iface: iface.into(),
                driver,
                generic,
            });
        };
        tracing::info!(iface, %mode, "steering program attached");
        Ok(Steer {
            ebpf,
            iface: iface.into(),
            ifindex,
            mac,
            mode,
            prog_id,
            link: Some(link),
        })
    }

    /// Whether the interface still runs this program. Something else (`bpftool link
    /// detach`, another loader) may have removed or replaced it; the interface itself may
    /// be gone (an error then).
    pub fn attached(&self) -> Result<bool> {
        let now =
            super::netlink::xdp_program(self.ifindex).map_err(|source| BpfError::Netlink {
                iface: self.iface.clone(),
                source,
            })?;
        Ok(now.is_some_and(|(id, _)| id == self.prog_id))
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode actually obtained.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The MAC address frames must be sent to for the program to steer them.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads the interface's MAC address again and gives the program a new one (one map
    /// update), so that it keeps steering what the interface receives after an `ip link set
    /// address` or a bond's failover to a port with another MAC. Returns the new address if
    /// it changed. Until this runs, VIP frames to the new address go to the kernel (counted
    /// as `passed`), which does not own the VIP. The interface must still be the one the
    /// program was attached to (a re-created one gets a new program).
    pub fn refresh_mac(&mut self) -> Result<Option<[u8; 6]>> {
        let mac = crate::iface::mac(&self.iface).map_err(|source| BpfError::Mac {
            iface: self.iface.clone(),
            source,
        })?;
        if mac == self.mac {
            return Ok(None);
        }
        set_mac(&mut self.ebpf, mac)?;
        self.mac = mac;
        Ok(Some(mac))
    }

    /// Replaces the set of steered services. New entries are added before stale ones are
    /// removed, so a service present in both sets is never missing in between.
    ///
    /// A protocol other than TCP or UDP is refused: the pipeline would drop it as
    /// unsupported, and ICMP errors about it are not its to follow. So are more than
    /// [`MAX_VIPS`] service ports, before any entry changes.
    pub fn set_vips(&mut self, vips: &[Vip]) -> Result<()> {
        set_vips(&mut self.ebpf, vips)
    }

    fn xsks(&mut self) -> Result<XskMap<&mut MapData>> {
        XskMap::try_from(self.ebpf.map_mut("xsks").ok_or(BpfError::Missing("xsks"))?).map_err(
            |source| BpfError::Map {
                map: "xsks",
                source,
            },
        )
    }

    /// Steers VIP traffic arriving on RX queue `queue` into the AF_XDP socket `socket`.
    pub fn set_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<()> {
        self.xsks()?
            .set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| BpfError::Map {
                map: "xsks",
                source,
            })
    }

    /// Removes the socket of `queue`: its VIP traffic then goes to the kernel.
    pub fn clear_socket(&mut self, queue: u32) -> Result<()> {
        match self.xsks()?.unset(queue) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(BpfError::Map {
                map: "xsks",
                source,
            }),
        }
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<SteerCounters> {
        counters(&self.ebpf)
    }

    /// RX queue `queue`'s overload flag as the program reads it: looked up through the
    /// map (a syscall), not through the workers' mapping. For tests and diagnostics.
    pub fn shed_flag(&self, queue: u32) -> Result<bool> {
        const MAP: &str = "xsk_shed";
        let map_err = |source| BpfError::Map { map: MAP, source };
        let map = self.ebpf.map(MAP).ok_or(BpfError::Missing(MAP))?;
        let flags = aya::maps::Array::<&MapData, u64>::try_from(map).map_err(map_err)?;
        Ok(flags.get(&queue, 0).map_err(map_err)? != 0)
    }

    /// Maps the per-queue overload flags into this process, for the workers.
    pub fn shed_flags(&self) -> Result<Arc<ShedFlags>> {
        const MAP: &str = "xsk_shed";
        let map = self.ebpf.map(MAP).ok_or(BpfError::Missing(MAP))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(BpfError::Config(format!("{MAP} is not an array map")));
        };
        let flags = ShedFlags::map(data.fd().as_fd())
            .map_err(|source| BpfError::Mmap { map: MAP, source })?;
        Ok(Arc::new(flags))
    }

    /// Detaches now (also done on drop).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let prog = super::xdp_program(&mut self.ebpf, PROGRAM)?;
        prog.detach(link).map_err(|source| BpfError::Program {
            program: PROGRAM,
            source,
        })?;
        tracing::info!(iface = %self.iface, "steering program detached");
        Ok(())
    }
}

/// Loads steer.c's object and its program into the kernel (the verifier runs here), not
/// attached anywhere yet.
fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(objects::STEER).map_err(|source| BpfError::Load {
        object: "steer",
        source,
    })?;
    super::load_xdp(&mut ebpf, PROGRAM)?;
    Ok(ebpf)
}

/// `struct steer_mac` in steer.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SteerMac {
    addr: [u8; 6],
    pad: [u8; 2],
}

// SAFETY: SteerMac is repr(C), made only of bytes, with no implicit padding (6+2 bytes), so
// every bit pattern is valid and no uninitialised bytes reach the kernel.
unsafe impl Pod for SteerMac {}

/// Gives the program the MAC address frames must be sent to for it to steer them.
fn set_mac(ebpf: &mut Ebpf, mac: [u8; 6]) -> Result<()> {
    const MAP: &str = "steer_mac";
    let map_err = |source| BpfError::Map { map: MAP, source };
    let mut map = aya::maps::Array::<&mut MapData, SteerMac>::try_from(
        ebpf.map_mut(MAP).ok_or(BpfError::Missing(MAP))?,
    )
    .map_err(map_err)?;
    map.set(
        0,
        SteerMac {
            addr: mac,
            pad: [0; 2],
        },
        0,
    )
    .map_err(map_err)
}

/// See [`Steer::set_vips`].
fn set_vips(ebpf: &mut Ebpf, vips: &[Vip]) -> Result<()> {
    if let Some(v) = vips
        .iter()
        .find(|v| v.proto != Vip::TCP && v.proto != Vip::UDP)
    {
        return Err(BpfError::Config(format!(
            "VIP {} port {}: protocol {} is not balanced (only TCP and UDP)",
            v.addr, v.port, v.proto
        )));
    }
    let services: BTreeSet<VipKey> = vips.iter().map(VipKey::service).collect();
    if services.len() > MAX_VIPS {
        return Err(BpfError::Config(format!(
            "{} service ports to steer; the limit is {MAX_VIPS}",
            services.len()
        )));
    }
    let addresses: BTreeSet<VipKey> = vips.iter().map(VipKey::address).collect();
    replace_keys(ebpf, "vips", &services)?;
    replace_keys(ebpf, "vip_addrs", &addresses)
}

fn replace_keys(ebpf: &mut Ebpf, name: &'static str, want: &BTreeSet<VipKey>) -> Result<()> {
    let map_err = |source| BpfError::Map { map: name, source };
    let mut map: HashMap<&mut MapData, VipKey, u8> =
        HashMap::try_from(ebpf.map_mut(name).ok_or(BpfError::Missing(name))?).map_err(map_err)?;
    for k in want {
        map.insert(k, 1, 0).map_err(map_err)?;
    }
    let stale: Vec<VipKey> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !want.contains(k))
        .collect();
    for k in &stale {
        map.remove(k).map_err(map_err)?;
    }
    Ok(())
}

fn counters(ebpf: &Ebpf) -> Result<SteerCounters> {
    let map = ebpf
        .map("steer_stats")
        .ok_or(BpfError::Missing("steer_stats"))?;
    let [redirected, no_socket, passed, dropped, shed] = sum_counters::<5>(map, "steer_stats")?;
    Ok(SteerCounters {
        redirected,
        no_socket,
        passed,
        dropped,
        shed,
    })
}

impl Drop for Steer {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(iface = %self.iface, error = %e, "detaching the steering program");
        }
    }
}

#[cfg(test)]
mod tests;
