//! Interface queries by `ioctl` on a throwaway socket (MTU, link state, MAC address,
//! ethtool), in the calling thread's network namespace: what the packet path needs to know
//! about the interfaces it attaches to, without a netlink round trip.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Runs `request` on an `ifreq` naming `iface`, once `fill` has set its argument, and
/// returns the `ifreq` as the kernel left it.
fn ioctl(
    iface: &str,
    request: libc::Ioctl,
    fill: impl FnOnce(&mut libc::ifreq),
) -> io::Result<libc::ifreq> {
    // SAFETY: plain socket(2) call; checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounded by IFNAMSIZ - 1.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    fill(&mut ifr);
    // SAFETY: `request` is one of this module's interface requests: each reads the name
    // and writes within the live `ifr`, except SIOCETHTOOL, which reads and writes the
    // buffer `fill` pointed `ifru_data` at, kept alive by the caller for this call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifr)
}

/// The MTU of `iface` (`SIOCGIFMTU`).
pub fn mtu(iface: &str) -> io::Result<u32> {
    let ifr = ioctl(iface, libc::SIOCGIFMTU, |_| {})?;
    // SAFETY: SIOCGIFMTU succeeded, so the union holds the MTU.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// Whether `iface`'s link is up and running: `IFF_UP` (set up) and `IFF_RUNNING` (its
/// operational state is up, e.g. carrier; `ip link` shows `state UP`). False when it
/// cannot be read (it does not exist).
pub fn link_up(iface: &str) -> bool {
    let Ok(ifr) = ioctl(iface, libc::SIOCGIFFLAGS, |_| {}) else {
        return false;
    };
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    flags & want == want
}

/// The MAC address of `iface` (`SIOCGIFHWADDR`).
pub fn mac(iface: &str) -> io::Result<[u8; 6]> {
    let ifr = ioctl(iface, libc::SIOCGIFHWADDR, |_| {})?;
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds the hardware address.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, &b) in mac.iter_mut().zip(&sa.sa_data[..6]) {
        *m = b as u8;
    }
    Ok(mac)
}

/// Runs the ethtool command in `cmd` (a `struct ethtool_*` whose first field is its
/// command number) on `iface` (`SIOCETHTOOL`); the kernel fills in `cmd`.
///
/// # Safety
/// `T` must be the `#[repr(C)]` struct the kernel expects for the command it holds.
pub unsafe fn ethtool<T>(iface: &str, cmd: &mut T) -> io::Result<()> {
    let data: *mut T = cmd;
    ioctl(iface, libc::SIOCETHTOOL, |ifr| {
        ifr.ifr_ifru.ifru_data = data.cast();
    })
    .map(drop)
}
