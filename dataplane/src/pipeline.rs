//! Frame in, verdict out. Pure: no I/O, no clock (the caller passes `now` once per batch).

/// Most frames one call processes; the AF_XDP workers use the same batch size.
pub const BATCH: usize = 64;

/// One received frame inside its buffer. `buf` is the whole buffer (for AF_XDP, the UMEM
/// chunk); the packet occupies `buf[offset..offset + len]`, and the bytes in front of
/// `offset` are headroom that encapsulation may grow into.
pub struct Frame<'a> {
    pub buf: &'a mut [u8],
    pub offset: usize,
    pub len: usize,
}

/// What to do with a frame after processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `buf[offset..offset + len]` toward the nodes (the frame was rewritten in place).
    Tx { offset: usize, len: usize },
    /// Transmit `buf[offset..offset + len]` back out of the receiving interface (an ICMP error
    /// to the client). In a one-arm topology this is the same interface as `Tx`.
    Reply { offset: usize, len: usize },
    /// Not ours: hand it to the kernel unchanged.
    Pass,
    /// Drop it, counted under the reason.
    Drop(DropReason),
}

/// Why a frame was dropped. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    Truncated,
}
