//! Just enough rtnetlink to attach an XDP program the classic way (`IFLA_XDP` in
//! `RTM_SETLINK`), which, unlike a bpf_link, stays attached after the process exits, and
//! to ask which program an interface runs. Used for the node-side decap program, which
//! `dsrgate decap attach` leaves behind on purpose.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

pub(crate) const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub(crate) const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// `IFLA_XDP_ATTACHED` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attached {
    Driver,
    Skb,
    Hardware,
    Multi,
}

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;

struct Request {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    fn new(msg_type: u16, flags: u16, ifindex: u32) -> Request {
        let mut buf = vec![0u8; NLMSG_HDR + IFINFOMSG];
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
                                                         // struct ifinfomsg { family: u8, pad: u8, type: u16, index: i32, flags: u32, change: u32 }
        buf[NLMSG_HDR] = libc::AF_UNSPEC as u8;
        buf[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        Request {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn begin_nest(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[]);
    }

    fn end_nest(&mut self) {
        let start = self.nests.pop().expect("nest opened");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request and returns the first non-error reply message (or `None` for an
/// ACK). Kernel errors come back as `io::Error`s.
fn transact(msg: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let sock = socket()?;
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and addr are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    if reply.len() < NLMSG_HDR {
        return Err(bad());
    }
    let len = u32::from_ne_bytes(reply[0..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes(reply[4..6].try_into().expect("2 bytes"));
    let msg = reply.get(..len).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes(
            msg.get(16..20)
                .ok_or_else(bad)?
                .try_into()
                .expect("4 bytes"),
        );
        return if code == 0 {
            Ok(None)
        } else {
            Err(io::Error::from_raw_os_error(-code))
        };
    }
    Ok(Some(msg.to_vec()))
}

/// Attaches `prog_fd` to `ifindex` (or detaches with `prog_fd = -1`). With `expected`,
/// only if the interface currently runs that program (`XDP_FLAGS_REPLACE`).
pub(crate) fn set_xdp(
    ifindex: u32,
    prog_fd: i32,
    expected: Option<i32>,
    mut flags: u32,
) -> io::Result<()> {
    let mut req = Request::new(libc::RTM_SETLINK, libc::NLM_F_ACK as u16, ifindex);
    req.begin_nest(IFLA_XDP);
    req.attr(IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    if let Some(old) = expected {
        flags |= XDP_FLAGS_REPLACE;
        req.attr(IFLA_XDP_EXPECTED_FD, &old.to_ne_bytes());
    }
    req.attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    req.end_nest();
    transact(&req.finish()).map(drop)
}

/// The XDP program attached to `ifindex`: its id and how it is attached.
pub(crate) fn xdp_program(ifindex: u32) -> io::Result<Option<(u32, Attached)>> {
    let req = Request::new(libc::RTM_GETLINK, 0, ifindex);
    let Some(msg) = transact(&req.finish())? else {
        return Ok(None);
    };
    let Some(xdp) =
        attrs(msg.get(NLMSG_HDR + IFINFOMSG..).unwrap_or_default()).find(|(k, _)| *k == IFLA_XDP)
    else {
        return Ok(None);
    };
    let mut attached = 0u8;
    let mut id = 0u32;
    for (kind, payload) in attrs(xdp.1) {
        match kind {
            IFLA_XDP_ATTACHED => attached = payload.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID if payload.len() >= 4 => {
                id = u32::from_ne_bytes(payload[..4].try_into().expect("4 bytes"));
            }
            _ => {}
        }
    }
    let mode = match attached {
        1 => Attached::Driver,
        2 => Attached::Skb,
        3 => Attached::Hardware,
        4 => Attached::Multi,
        _ => return Ok(None),
    };
    Ok(Some((id, mode)))
}

/// Iterates over netlink attributes: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_xdp_request() {
        let mut req = Request::new(libc::RTM_SETLINK, 0, 7);
        req.begin_nest(IFLA_XDP);
        req.attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        req.attr(IFLA_XDP_FLAGS, &XDP_FLAGS_SKB_MODE.to_ne_bytes());
        req.end_nest();
        let msg = req.finish();
        assert_eq!(msg.len(), 16 + 16 + 4 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        let top: Vec<_> = attrs(&msg[32..]).collect();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, IFLA_XDP);
        let inner: Vec<_> = attrs(top[0].1).collect();
        assert_eq!(
            inner,
            vec![
                (IFLA_XDP_FD, &[0xff; 4][..]),
                (IFLA_XDP_FLAGS, &2u32.to_ne_bytes()[..])
            ]
        );
    }

    #[test]
    fn attrs_stop_at_garbage() {
        assert_eq!(attrs(&[3, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 0]).count(), 0);
        assert_eq!(attrs(&[]).count(), 0);
    }
}
