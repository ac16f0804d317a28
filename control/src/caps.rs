//! The Linux capabilities the daemon needs, checked at startup so that a missing one is
//! named in one clear error instead of surfacing later as an `EPERM` from deep inside a
//! BPF or socket call.

use std::fmt;

/// A capability the daemon may need, with the reason it is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Attach XDP programs, configure interfaces, read the neighbour table over netlink.
    NetAdmin = 12,
    /// Create AF_XDP sockets.
    NetRaw = 13,
    /// Lock UMEM pages for AF_XDP (beyond `RLIMIT_MEMLOCK`).
    IpcLock = 14,
    /// Load BPF programs and create maps.
    Bpf = 39,
    /// Let the verifier accept the steering program's packet-pointer arithmetic with a
    /// variable offset (the VLAN-dependent header start), which it allows only to
    /// "privileged" loaders: without it `BPF_PROG_LOAD` fails with EACCES ("pointer
    /// arithmetic with it prohibited for !root"). Found by running the daemon as `nobody`.
    Perfmon = 38,
    /// Listen on a port below 1024: BGP's 179 for a passive peer, or an `[api] listen` port.
    NetBindService = 10,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::IpcLock => "CAP_IPC_LOCK",
            Cap::Bpf => "CAP_BPF",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::NetBindService => "CAP_NET_BIND_SERVICE",
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the dataplane always needs.
pub const DATAPLANE: &[Cap] = &[
    Cap::NetAdmin,
    Cap::NetRaw,
    Cap::IpcLock,
    Cap::Bpf,
    Cap::Perfmon,
];

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no CapEff line in /proc/self/status",
        )
    })
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The capabilities of `required` that `effective` lacks.
pub fn missing(effective: u64, required: &[Cap]) -> Vec<Cap> {
    required
        .iter()
        .copied()
        .filter(|c| effective & (1u64 << *c as u32) == 0)
        .collect()
}

/// Fails with a message naming every missing capability.
pub fn require(required: &[Cap]) -> anyhow::Result<()> {
    let lacking = missing(effective()?, required);
    if lacking.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = lacking.iter().map(|c| c.name()).collect();
    anyhow::bail!(
        "missing capabilities: {} (run as root, or grant them, e.g. with the shipped systemd unit's AmbientCapabilities)",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tdsrgate\nCapInh:\t0000000000000000\nCapEff:\t000000c00000e000\n";
        let eff = parse_cap_eff(status).unwrap();
        assert_eq!(missing(eff, DATAPLANE), vec![Cap::NetAdmin]);
        assert_eq!(missing(eff | 1 << 12, DATAPLANE), vec![]);
        assert_eq!(
            missing(0, &[Cap::NetBindService]),
            vec![Cap::NetBindService]
        );
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn reads_own_capabilities() {
        // Every process has a CapEff line; whatever it holds, the check must not fail to read it.
        effective().unwrap();
    }
}
