//! Loader for `bpf/decap.c`, the node-side decapsulator for kernels without `ipip`.
//!
//! `dsrgate decap attach` must leave the program running after the CLI exits, so it is
//! attached the classic way over netlink (the interface then holds the program and its
//! maps), not through a bpf_link that would need a pin in a bpffs. This also works under
//! `ip netns exec`, which gives the process a private `/sys`. [`detach`] finds the
//! program again by the interface's XDP program id and removes it only if it is ours.

use super::netlink::{self, Attached};
use super::{addr16, ifindex, objects, sum_counters, AttachMode, BpfError, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::{loaded_programs, ProgramInfo};
use aya::{Ebpf, Pod};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

const PROGRAM: &str = "xdp_decap";

/// What to decapsulate: tunnel packets to one of `addresses`, and GUE on `gue_port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// The node's tunnel endpoint addresses (at most 64).
    pub addresses: Vec<IpAddr>,
    /// UDP port of GUE encapsulation; `None` decapsulates only IP-in-IP.
    pub gue_port: Option<u16>,
}

/// `struct decap_cfg` in decap.c.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RawConfig {
    gue_port_be: u16,
    pad: u16,
}

// SAFETY: repr(C), two u16 fields, no padding: every bit pattern is valid.
unsafe impl Pod for RawConfig {}

/// Summed per-CPU counters of an attached decap program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapCounters {
    /// Tunnel packets whose inner packet went on to the kernel.
    pub decapsulated: u64,
    /// Not tunnel packets for this node, or ones left to the kernel, which drops them (a bad
    /// outer IPv4 header checksum; GUE with a wrong UDP checksum or length, or over 9216
    /// bytes with a checksum; an outer length past the frame or ending before the inner
    /// packet; an outer IPv6 header of another version or to an IPv4-mapped address):
    /// passed unchanged.
    pub passed: u64,
    /// Tunnel packets for this node with an inner header that is not what the outer one
    /// announced (or an unknown GUE version or protocol), or marked congested (CE) outside
    /// with an inner packet that cannot carry the mark (RFC 6040 §4.2): dropped.
    pub dropped: u64,
}

fn netlink_err(iface: &str) -> impl FnOnce(std::io::Error) -> BpfError + '_ {
    move |source| BpfError::Netlink {
        iface: iface.into(),
        source,
    }
}

/// The program attached to `iface`, if it is our decap program; errors if it is another.
fn attached_decap(iface: &str, ifindex: u32) -> Result<Option<(ProgramInfo, Attached)>> {
    let Some((id, how)) = netlink::xdp_program(ifindex).map_err(netlink_err(iface))? else {
        return Ok(None);
    };
    // Listing programs needs CAP_SYS_ADMIN: without it every entry is an EPERM error, and
    // the program would seem to have vanished. (Other errors are programs unloaded while
    // listed.)
    let mut denied = None;
    let info = loaded_programs()
        .filter_map(|p| match p {
            Ok(p) => Some(p),
            Err(e) => {
                if matches!(&e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EPERM))
                {
                    denied.get_or_insert_with(|| e.to_string());
                }
                None
            }
        })
        .find(|p| p.id() == id);
    let Some(info) = info else {
        return Err(BpfError::Config(match denied {
            Some(e) => format!(
                "cannot look up XDP program id {id} on {iface} (listing BPF programs needs \
                 CAP_SYS_ADMIN): {e}"
            ),
            None => format!("XDP program id {id} on {iface} vanished"),
        }));
    };
    if info.name_as_str() != Some(PROGRAM) || how == Attached::Multi || how == Attached::Hardware {
        return Err(BpfError::Foreign {
            iface: iface.into(),
            name: info.name_as_str().unwrap_or("?").into(),
            id,
            expected: PROGRAM,
        });
    }
    Ok(Some((info, how)))
}

/// Loads the decap program with `cfg` and attaches it to `iface` (native mode, else
/// generic), replacing an earlier decap program there atomically. It stays attached
/// after this process exits, until [`detach`].
pub fn attach(iface: &str, cfg: &DecapConfig) -> Result<AttachMode> {
    if cfg.addresses.is_empty() || cfg.addresses.len() > 64 {
        return Err(BpfError::Config(format!(
            "decap needs 1 to 64 node addresses, got {}",
            cfg.addresses.len()
        )));
    }
    if cfg.gue_port == Some(0) {
        return Err(BpfError::Config("GUE port 0 is not a port".into()));
    }
    let idx = ifindex(iface)?;
    let existing = attached_decap(iface, idx)?;
    let mut ebpf = load(cfg)?;
    let prog = super::xdp_program(&mut ebpf, PROGRAM)?;
    let fd = prog.fd().map_err(|source| BpfError::Program {
        program: PROGRAM,
        source,
    })?;
    let raw_fd = fd.as_fd().as_raw_fd();

    let mode = if let Some((old, how)) = existing {
        let old_fd = old.fd().map_err(|source| BpfError::Program {
            program: PROGRAM,
            source,
        })?;
        let (flags, mode) = match how {
            Attached::Skb => (netlink::XDP_FLAGS_SKB_MODE, AttachMode::Skb),
            _ => (netlink::XDP_FLAGS_DRV_MODE, AttachMode::Driver),
        };
        netlink::set_xdp(idx, raw_fd, Some(old_fd.as_fd().as_raw_fd()), flags)
            .map_err(netlink_err(iface))?;
        mode
    } else {
        let noexist = netlink::XDP_FLAGS_UPDATE_IF_NOEXIST;
        match netlink::set_xdp(idx, raw_fd, None, noexist | netlink::XDP_FLAGS_DRV_MODE) {
            Ok(()) => AttachMode::Driver,
            Err(driver) => {
                match netlink::set_xdp(idx, raw_fd, None, noexist | netlink::XDP_FLAGS_SKB_MODE) {
                    Ok(()) => AttachMode::Skb,
                    Err(generic) => {
                        return Err(BpfError::Attach {
                            program: PROGRAM,
                            iface: iface.into(),
                            driver: driver.to_string(),
                            generic: generic.to_string(),
                        })
                    }
                }
            }
        }
    };
    tracing::info!(iface, %mode, "decap program attached");
    Ok(mode)
}

/// Loads decap.c with `cfg` in its maps, and its program into the kernel (the verifier runs
/// here), not attached anywhere yet.
fn load(cfg: &DecapConfig) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(objects::DECAP).map_err(|source| BpfError::Load {
        object: "decap",
        source,
    })?;
    {
        let map_err = |map| move |source| BpfError::Map { map, source };
        let mut conf: Array<&mut MapData, RawConfig> = Array::try_from(
            ebpf.map_mut("decap_cfg")
                .ok_or(BpfError::Missing("decap_cfg"))?,
        )
        .map_err(map_err("decap_cfg"))?;
        let raw = RawConfig {
            gue_port_be: cfg.gue_port.unwrap_or(0).to_be(),
            pad: 0,
        };
        conf.set(0, raw, 0).map_err(map_err("decap_cfg"))?;
        let mut addrs: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(
            ebpf.map_mut("decap_addrs")
                .ok_or(BpfError::Missing("decap_addrs"))?,
        )
        .map_err(map_err("decap_addrs"))?;
        for a in &cfg.addresses {
            addrs
                .insert(addr16(*a), 1, 0)
                .map_err(map_err("decap_addrs"))?;
        }
    }
    super::load_xdp(&mut ebpf, PROGRAM)?;
    Ok(ebpf)
}

/// Removes the decap program from `iface`. Errors if none is attached, or if the
/// interface runs some other XDP program (which is left alone).
pub fn detach(iface: &str) -> Result<()> {
    let idx = ifindex(iface)?;
    let (info, how) =
        attached_decap(iface, idx)?.ok_or_else(|| BpfError::NotAttached(iface.into()))?;
    let fd = info.fd().map_err(|source| BpfError::Program {
        program: PROGRAM,
        source,
    })?;
    let flags = if how == Attached::Skb {
        netlink::XDP_FLAGS_SKB_MODE
    } else {
        netlink::XDP_FLAGS_DRV_MODE
    };
    netlink::set_xdp(idx, -1, Some(fd.as_fd().as_raw_fd()), flags).map_err(netlink_err(iface))?;
    tracing::info!(iface, "decap program detached");
    Ok(())
}

/// The counters of the decap program attached to `iface`.
pub fn counters(iface: &str) -> Result<DecapCounters> {
    let idx = ifindex(iface)?;
    let (info, _) =
        attached_decap(iface, idx)?.ok_or_else(|| BpfError::NotAttached(iface.into()))?;
    let map_err = |source| BpfError::Map {
        map: "decap_stats",
        source,
    };
    let ids = info
        .map_ids()
        .map_err(|source| BpfError::Program {
            program: PROGRAM,
            source,
        })?
        .unwrap_or_default();
    for id in ids {
        let data = MapData::from_id(id).map_err(map_err)?;
        if data.info().map_err(map_err)?.name_as_str() == Some("decap_stats") {
            let [decapsulated, passed, dropped] =
                sum_counters::<3>(&Map::PerCpuArray(data), "decap_stats")?;
            return Ok(DecapCounters {
                decapsulated,
                passed,
                dropped,
            });
        }
    }
    Err(BpfError::Missing("decap_stats"))
}

/// The global (non-link-local) addresses of `iface`: the default tunnel endpoints.
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>> {
    ifindex(iface)?;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(BpfError::Config(format!(
            "getifaddrs: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sa.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        match addr {
            Some(IpAddr::V6(a)) if (a.segments()[0] & 0xffc0) == 0xfe80 => {}
            Some(a) => out.push(a),
            None => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests;
