//! One worker's sockets: its UMEM area, the socket on the uplink queue (fill, completion, RX
//! and TX rings) and, in a two-arm topology, a TX socket on the downlink that shares the UMEM.
//!
//! Sharing one UMEM across both devices lets a frame received on the uplink be transmitted on
//! the downlink by handing its descriptor over, with no copy in user space. The kernel requires
//! a fill and completion ring per (device, queue) even for a socket that never receives, so the
//! downlink gets both; its fill ring stays empty because no XDP program redirects to it.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use xdpilone::{
    CompletionQueue, FillQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig,
    User,
};

use super::XskError;

/// `SOL_XDP` socket options and flags (`linux/if_xdp.h`). Debian 12's libc and uapi headers
/// predate `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17), so the values are spelled out here.
const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// Bytes the kernel leaves in front of a received packet inside its chunk, on top of the
/// `XDP_PACKET_HEADROOM` (256) it always keeps: room for the largest encapsulation dsrgate
/// adds (outer IPv6 40 + UDP 8 + GUE 4) rounded up, so the pipeline can grow the frame
/// forward in place.
pub const ENCAP_HEADROOM: u32 = 64;

/// `XDP_PACKET_HEADROOM` (`linux/bpf.h`): bytes the kernel keeps in front of every frame it
/// receives into a UMEM chunk, before [`ENCAP_HEADROOM`].
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// The longest frame (Ethernet header and all) a socket whose UMEM chunks are `frame_size`
/// bytes can receive: the chunk less the kernel's headroom and ours (the kernel's
/// `xsk_pool_get_rx_frame_size`). The kernel drops a longer one before the worker sees it
/// (counted only in the socket's `rx_dropped`).
pub fn max_rx_frame(frame_size: u32) -> u32 {
    frame_size.saturating_sub(XDP_PACKET_HEADROOM + ENCAP_HEADROOM)
}

/// How the kernel moves frames between the device and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies each frame (the only mode veth offers).
    Copy,
}

impl std::fmt::Display for XskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XskMode::ZeroCopy => "zero-copy",
            XskMode::Copy => "copy",
        })
    }
}

/// The page-aligned memory a worker registers as its UMEM. Anonymous and private: only this
/// worker and the kernel touch it.
pub(crate) struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by exactly one `Area` and is moved, never shared, between threads
// (the worker thread owns it once started); the raw pointer carries no thread affinity.
unsafe impl Send for Area {}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Area { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; the sockets that registered the
        // area are closed before this runs (field order in `WorkerIo`), and nothing else holds
        // pointers into it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One bound AF_XDP socket and its rings.
pub(crate) struct Port {
    pub(crate) fq: FillQueue,
    pub(crate) cq: CompletionQueue,
    /// Only the uplink socket receives.
    pub(crate) rx: Option<RingRx>,
    pub(crate) tx: RingTx,
    /// Entries in each of its rings.
    pub(crate) ring_size: u32,
    /// Keeps the socket's rings configuration alive; also the socket's fd.
    user: User,
}

impl Port {
    pub(crate) fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// Free slots in the TX ring, as the kernel's consumer head currently says.
    pub(crate) fn tx_free(&self) -> u32 {
        self.ring_size.saturating_sub(self.tx.pending())
    }
}

/// Where a worker's sockets go.
pub(crate) struct Placement<'a> {
    pub(crate) uplink: &'a str,
    pub(crate) downlink: Option<&'a str>,
    pub(crate) queue: u32,
    pub(crate) frames: u32,
    pub(crate) frame_size: u32,
    pub(crate) ring_size: u32,
    pub(crate) tx_skb_budget: u32,
}

/// Everything one worker owns for I/O. Field order is drop order: sockets close before the
/// UMEM area is unmapped.
pub(crate) struct WorkerIo {
    pub(crate) up: Port,
    pub(crate) down: Option<Port>,
    pub(crate) mode: XskMode,
    pub(crate) frame_size: u32,
    pub(crate) frames: u32,
    /// Chunk addresses not in any ring (initially those beyond the fill ring's size).
    pub(crate) initial_stash: Vec<u64>,
    pub(crate) area: Area,
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().abs())
}

fn sock_err<'a>(
    iface: &'a str,
    queue: u32,
    op: &'static str,
) -> impl FnOnce(xdpilone::Errno) -> XskError + 'a {
    move |e| XskError::Socket {
        iface: iface.to_string(),
        queue,
        op,
        source: errno(e),
    }
}

pub(crate) fn ifindex(name: &str) -> Result<u32, XskError> {
    let c =
        CString::new(name).map_err(|_| XskError::Config(format!("bad interface name {name:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(XskError::Iface {
            iface: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

fn if_info(name: &str, queue: u32) -> Result<IfInfo, XskError> {
    let idx = ifindex(name)?;
    let mut info = IfInfo::invalid();
    info.from_ifindex(idx).map_err(|e| XskError::Iface {
        iface: name.to_string(),
        source: errno(e),
    })?;
    info.set_queue(queue);
    Ok(info)
}

fn getsockopt_u32(fd: RawFd, opt: libc::c_int) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes passed.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, opt, (&mut v as *mut u32).cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// `XDP_STATISTICS` (the v2 layout, Linux 5.9+).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// The RX ring was full: the worker is slower than the offered load.
    pub rx_ring_full: u64,
    /// The fill ring was empty: frames are held elsewhere (or leaked).
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

pub(crate) fn xdp_stats(fd: RawFd) -> io::Result<XdpStats> {
    let mut s = XdpStats::default();
    let mut len = std::mem::size_of::<XdpStats>() as libc::socklen_t;
    // SAFETY: `s` is a repr(C) struct of u64s matching `struct xdp_statistics`; the kernel
    // writes at most `len` bytes and reports the size written.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_STATISTICS,
            (&mut s as *mut XdpStats).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Raise the number of frames one `sendto` may transmit in copy mode (default 32). Older
/// kernels lack the option: that is logged, not fatal.
fn set_tx_budget(fd: RawFd, iface: &str, budget: u32) {
    // SAFETY: a u32 option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::info!(
            iface,
            budget,
            error = %io::Error::last_os_error(),
            "XDP_MAX_TX_SKB_BUDGET not applied (needs Linux 6.17+ and a TX ring at least that large)"
        );
    }
}

fn port(
    umem: &Umem,
    sock: &Socket,
    iface: &str,
    queue: u32,
    p: &Placement<'_>,
    receive: bool,
    bind_flags: u16,
) -> Result<Port, XskError> {
    let dev = umem
        .fq_cq(sock)
        .map_err(sock_err(iface, queue, "fill/completion rings"))?;
    let ring =
        NonZeroU32::new(p.ring_size).ok_or_else(|| XskError::Config("ring size 0".into()))?;
    let user = umem
        .rx_tx(
            sock,
            &SocketConfig {
                rx_size: receive.then_some(ring),
                tx_size: Some(ring),
                bind_flags,
            },
        )
        .map_err(sock_err(iface, queue, "rx/tx rings"))?;
    let rx = if receive {
        Some(
            user.map_rx()
                .map_err(sock_err(iface, queue, "map rx ring"))?,
        )
    } else {
        None
    };
    let tx = user
        .map_tx()
        .map_err(sock_err(iface, queue, "map tx ring"))?;
    umem.bind(&user).map_err(sock_err(iface, queue, "bind"))?;
    set_tx_budget(user.as_raw_fd(), iface, p.tx_skb_budget);
    let (fq, cq) = dev.into_parts();
    Ok(Port {
        fq,
        cq,
        rx,
        tx,
        ring_size: p.ring_size,
        user,
    })
}

/// The bind flags of a worker's uplink socket: `need_wakeup`, and in a two-arm topology
/// copy mode. One-arm, the kernel picks zero-copy when the driver has it.
///
/// Two-arm is held to copy mode because a socket that shares its UMEM on another device
/// (the downlink's) gets the first socket's mode, and zero-copy there would need what the
/// downlink does not have: its driver would transmit only with an XDP program attached (ice,
/// i40e and mlx5 refuse the wakeup otherwise, so nothing would leave), and the queues bound
/// to the UMEM would receive only into its fill ring, which stays empty (the kernel's
/// traffic on those downlink queues, ARP and health-check replies among it, would be
/// dropped). A downlink driver without zero-copy would fail the bind outright. None of this
/// can be tried without a zero-copy NIC; copy mode is what veth offers and what is tested.
pub(crate) fn uplink_bind_flags(two_arm: bool) -> u16 {
    let copy = if two_arm {
        SocketConfig::XDP_BIND_COPY
    } else {
        0
    };
    SocketConfig::XDP_BIND_NEED_WAKEUP | copy
}

/// Create and bind one worker's sockets. One-arm, the kernel picks zero-copy when the
/// driver supports it and falls back to copy mode otherwise; two-arm is copy mode (see
/// [`uplink_bind_flags`]). The mode obtained is read back and reported.
pub(crate) fn open(p: &Placement<'_>) -> Result<WorkerIo, XskError> {
    if !p.frame_size.is_power_of_two() || p.frame_size < 2048 {
        return Err(XskError::Config(format!(
            "frame size {} must be a power of two >= 2048",
            p.frame_size
        )));
    }
    if !p.ring_size.is_power_of_two() || p.frames < 2 * p.ring_size {
        return Err(XskError::Config(format!(
            "ring size {} must be a power of two and frames ({}) at least twice it",
            p.ring_size, p.frames
        )));
    }
    let area = Area::new(p.frames as usize * p.frame_size as usize).map_err(XskError::Umem)?;
    let cfg = UmemConfig {
        fill_size: p.ring_size,
        complete_size: p.ring_size,
        frame_size: p.frame_size,
        headroom: ENCAP_HEADROOM,
        flags: 0,
    };
    // SAFETY: `area` is page-aligned (mmap), `frames * frame_size` bytes long, and outlives
    // every socket using it (it is the last field of `WorkerIo`).
    let umem =
        unsafe { Umem::new(cfg, area.as_slice_ptr()) }.map_err(|e| XskError::Umem(errno(e)))?;

    let up_info = if_info(p.uplink, p.queue)?;
    let up_sock =
        Socket::with_shared(&up_info, &umem).map_err(sock_err(p.uplink, p.queue, "socket"))?;
    let up = port(
        &umem,
        &up_sock,
        p.uplink,
        p.queue,
        p,
        true,
        uplink_bind_flags(p.downlink.is_some()),
    )?;
    let opts = getsockopt_u32(up.fd(), XDP_OPTIONS).map_err(|source| XskError::Socket {
        iface: p.uplink.to_string(),
        queue: p.queue,
        op: "XDP_OPTIONS",
        source,
    })?;
    let mode = if opts & XDP_OPTIONS_ZEROCOPY != 0 {
        XskMode::ZeroCopy
    } else {
        XskMode::Copy
    };

    let down = match p.downlink {
        Some(dl) => {
            let info = if_info(dl, p.queue)?;
            let sock = Socket::new(&info).map_err(sock_err(dl, p.queue, "socket"))?;
            // A socket sharing another's UMEM may not pass bind flags: it inherits them.
            Some(port(&umem, &sock, dl, p.queue, p, false, 0)?)
        }
        None => None,
    };
    drop(umem);

    let fs = u64::from(p.frame_size);
    let initial_stash = (0..u64::from(p.frames)).map(|i| i * fs).collect();
    Ok(WorkerIo {
        up,
        down,
        mode,
        frame_size: p.frame_size,
        frames: p.frames,
        initial_stash,
        area,
    })
}

/// `struct ethtool_channels` (`linux/ethtool.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// The RX queues that channel counts make: each combined channel has one, and so does each
/// RX-only channel (`rx_count` counts only those), as the kernel counts them in
/// `ethtool_set_channels`. At least 1: a device always has a queue 0.
fn rx_queue_count(ch: &EthtoolChannels) -> u32 {
    ch.combined_count.saturating_add(ch.rx_count).max(1)
}

/// Number of RX queues of `iface`, from `ETHTOOL_GCHANNELS` (combined plus RX-only
/// channels); 1 when the driver does not report channels. [`Workers::start`] starts this
/// many workers unless told otherwise.
///
/// [`Workers::start`]: super::Workers::start
pub fn rx_queues(iface: &str) -> u32 {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: `EthtoolChannels` is the kernel's `struct ethtool_channels`, holding
    // ETHTOOL_GCHANNELS.
    if unsafe { crate::iface::ethtool(iface, &mut ch) }.is_err() {
        return 1;
    }
    rx_queue_count(&ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_arm_binds_in_copy_mode_and_one_arm_lets_the_kernel_choose() {
        let wakeup = SocketConfig::XDP_BIND_NEED_WAKEUP;
        assert_eq!(uplink_bind_flags(false), wakeup);
        assert_eq!(
            uplink_bind_flags(true),
            wakeup | SocketConfig::XDP_BIND_COPY
        );
    }

    #[test]
    fn rx_queues_count_combined_and_rx_only_channels() {
        let ch = |rx_count, combined_count| EthtoolChannels {
            rx_count,
            combined_count,
            tx_count: 3,
            ..Default::default()
        };
        // `ethtool -L eth0 combined 8 rx 8`: 16 RX queues.
        assert_eq!(rx_queue_count(&ch(8, 8)), 16);
        assert_eq!(rx_queue_count(&ch(0, 4)), 4);
        // RX-only channels alone (TX-only ones beside them).
        assert_eq!(rx_queue_count(&ch(2, 0)), 2);
        // A driver that reports no channels still has queue 0.
        assert_eq!(rx_queue_count(&ch(0, 0)), 1);
    }
}
