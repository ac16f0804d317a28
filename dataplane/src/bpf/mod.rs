//! The XDP programs (C sources in `dataplane/bpf/`, compiled by `build.rs`) and their
//! loaders: [`steer`] on the gateway, [`decap`] on nodes without an `ipip` module.

pub mod decap;
mod netlink;
pub mod steer;

use aya::maps::{Map, MapData, PerCpuArray};
use std::net::IpAddr;

pub use decap::{DecapConfig, DecapCounters};
pub use steer::{ShedFlags, Steer, SteerCounters, Vip};

/// The compiled BPF objects, one `pub static` per `dataplane/bpf/<name>.c` (upper-case
/// name, e.g. [`objects::STEER`]), and [`objects::by_name`].
pub mod objects {
    include!(concat!(env!("OUT_DIR"), "/bpf_objects.rs"));
}

/// Where an XDP program runs: in the driver (native) or in the generic SKB path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "generic",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },
    #[error("BPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    #[error("no network interface {0:?} in this namespace")]
    NoInterface(String),
    #[error("attaching {program} to {iface}: native mode: {driver}; generic mode: {generic}")]
    Attach {
        program: &'static str,
        iface: String,
        driver: String,
        generic: String,
    },
    #[error("netlink request for {iface}: {source}")]
    Netlink {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the MAC address of {iface}: {source}")]
    Mac {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no XDP program is attached to {0}")]
    NotAttached(String),
    #[error(
        "{iface} runs XDP program {name:?} (id {id}), not dsrgate's {expected}; leaving it alone"
    )]
    Foreign {
        iface: String,
        name: String,
        id: u32,
        expected: &'static str,
    },
    #[error("memory-mapping BPF map {map}: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = BpfError> = std::result::Result<T, E>;

/// An address as the programs' 16-byte key: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub(crate) fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The interface index of `iface` in the caller's network namespace.
/// The XDP program `name` of a loaded object.
pub(crate) fn xdp_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Xdp> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing(name))?
        .try_into()
        .map_err(|source| BpfError::Program {
            program: name,
            source,
        })
}

/// Loads the XDP program `name` of `ebpf` into the kernel (the verifier runs here).
pub(crate) fn load_xdp(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<()> {
    xdp_program(ebpf, name)?
        .load()
        .map_err(|source| BpfError::Program {
            program: name,
            source,
        })
}

pub(crate) fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| BpfError::NoInterface(iface.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(BpfError::NoInterface(iface.into())),
        i => Ok(i),
    }
}

/// Sums each slot of a per-CPU `u64` counter array.
pub(crate) fn sum_counters<const N: usize>(map: &Map, name: &'static str) -> Result<[u64; N]> {
    let arr = PerCpuArray::<&MapData, u64>::try_from(map)
        .map_err(|source| BpfError::Map { map: name, source })?;
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = arr
            .get(&(i as u32), 0)
            .map_err(|source| BpfError::Map { map: name, source })?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_embedded_and_aligned() {
        for name in ["steer", "decap"] {
            let obj = objects::by_name(name).unwrap();
            assert_eq!(&obj[..4], b"\x7fELF", "{name}");
            assert_eq!(obj.as_ptr() as usize % 4, 0);
        }
        assert!(objects::by_name("nope").is_none());
    }

    #[test]
    fn v4_keys_are_v4_mapped() {
        let k = addr16("192.0.2.10".parse().unwrap());
        assert_eq!(k, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10]);
        let k = addr16("2001:db8::1".parse().unwrap());
        assert_eq!(&k[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    }
}
