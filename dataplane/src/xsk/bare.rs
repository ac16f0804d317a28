//! Forwarders with no balancing logic: rewrite the Ethernet addresses (and, for
//! [`TunnelForwarder`], add a fixed IP-in-IP header) and send every frame on. They are the
//! AF_XDP I/O ceilings that `dsrgate-bench forward` compares the pipeline against;
//! [`BareForwarder`] is also the processor the worker tests use.

use std::net::Ipv4Addr;

use super::{Processor, ENCAP_HEADROOM};
use crate::pipeline::{encapsulate_ipip, DropReason, Frame, OuterTemplate, Verdict};

const ETH_HLEN: usize = 14;

/// Sends every frame of at least an Ethernet header out as `Verdict::Tx`, from `src` to `dst`.
#[derive(Clone, Copy, Debug)]
pub struct BareForwarder {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

impl Processor for BareForwarder {
    fn process(&mut self, _now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            let Some(eth) = f
                .offset
                .checked_add(ETH_HLEN)
                .filter(|&end| f.len >= ETH_HLEN && end <= f.buf.len())
                .map(|end| &mut f.buf[f.offset..end])
            else {
                *v = Verdict::Drop(DropReason::Truncated);
                continue;
            };
            eth[..6].copy_from_slice(&self.dst);
            eth[6..12].copy_from_slice(&self.src);
            *v = Verdict::Tx {
                offset: f.offset,
                len: f.len,
            };
        }
    }
}

/// The bare forwarder plus one fixed outer IPv4 header (IP-in-IP, protocol 4) from `src` to
/// `dst`: the same bytes on the wire as the pipeline's IP-in-IP encapsulation, with none of
/// its logic. Set beside [`BareForwarder`] it tells what the 20 extra bytes cost the kernel's
/// copies apart from what parsing, lookup and balancing cost. Every frame is taken to carry
/// an untagged IPv4 packet (it is a measuring tool; the traffic is the generator's).
#[derive(Clone, Copy, Debug)]
pub struct TunnelForwarder {
    outer: OuterTemplate,
    src: u128,
}

impl TunnelForwarder {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        TunnelForwarder {
            outer: OuterTemplate::new(
                false,
                false,
                dst.to_ipv6_mapped().octets(),
                dst_mac,
                src_mac,
                None,
            ),
            src: u128::from(src.to_ipv6_mapped()),
        }
    }
}

impl Processor for TunnelForwarder {
    fn process(&mut self, _now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            let (Some(ip_start), Some(ip_len)) =
                (f.offset.checked_add(ETH_HLEN), f.len.checked_sub(ETH_HLEN))
            else {
                *v = Verdict::Drop(DropReason::Truncated);
                continue;
            };
            // The inner TOS, copied to the outer header as the pipeline does.
            let tos = f.buf.get(ip_start + 1).copied().unwrap_or(0);
            *v = match encapsulate_ipip(f.buf, ip_start, ip_len, tos, &self.outer, self.src, 0) {
                Some((offset, len)) => Verdict::Tx {
                    offset: offset as usize,
                    len: len as usize,
                },
                None => Verdict::Drop(DropReason::NoHeadroom),
            };
        }
    }

    fn headroom_written(&self) -> usize {
        ENCAP_HEADROOM as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4Packet, IPPROTO_IPIP};

    #[test]
    fn rewrites_macs_and_drops_runts() {
        let mut a = [0u8; 128];
        let mut b = [0u8; 128];
        a[20..34].copy_from_slice(&[1; 14]);
        let mut frames = [
            Frame {
                buf: &mut a,
                offset: 20,
                len: 60,
            },
            Frame {
                buf: &mut b,
                offset: 20,
                len: 13,
            },
        ];
        let mut v = [Verdict::Pass; 2];
        let mut fw = BareForwarder {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        fw.process(0, &mut frames, &mut v);
        assert_eq!(
            v[0],
            Verdict::Tx {
                offset: 20,
                len: 60
            }
        );
        assert_eq!(v[1], Verdict::Drop(DropReason::Truncated));
        assert_eq!(&a[20..32], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&a[32..34], &[1, 1]);
    }

    #[test]
    fn tunnel_forwarder_prepends_an_ipip_header() {
        let inner: [u8; 20] = [
            0x45, 0xb8, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 9, 9,
        ];
        let mut a = [0u8; 160];
        a[64..78].copy_from_slice(&[0xee; 14]);
        a[78..98].copy_from_slice(&inner);
        let (mut b, mut c, mut d) = ([0u8; 160], [0u8; 160], [0u8; 160]);
        let mut frames = [
            Frame {
                buf: &mut a,
                offset: 64,
                len: 34,
            },
            Frame {
                buf: &mut b,
                offset: 64,
                len: 13,
            },
            // Bounds no worker produces must still drop, never panic or wrap.
            Frame {
                buf: &mut c,
                offset: usize::MAX - 4,
                len: 34,
            },
            Frame {
                buf: &mut d,
                offset: 10,
                len: 34,
            },
        ];
        let mut v = [Verdict::Pass; 4];
        let (src, dst) = (Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 1, 1));
        let mut fw = TunnelForwarder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst);
        fw.process(0, &mut frames, &mut v);
        assert_eq!(
            v[0],
            Verdict::Tx {
                offset: 44,
                len: 54
            }
        );
        assert_eq!(v[1], Verdict::Drop(DropReason::Truncated));
        assert_eq!(v[2], Verdict::Drop(DropReason::Truncated));
        assert_eq!(v[3], Verdict::Drop(DropReason::NoHeadroom));
        assert_eq!(
            &a[44..58],
            &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]
        );
        let outer = Ipv4Packet::new_checked(&a[58..98]).expect("outer IPv4 header");
        assert!(outer.verify_checksum());
        assert_eq!(u8::from(outer.next_header()), IPPROTO_IPIP);
        assert_eq!(outer.total_len(), 40);
        assert_eq!(outer.dscp() << 2 | outer.ecn(), 0xb8);
        assert_eq!(outer.src_addr().octets(), src.octets());
        assert_eq!(outer.dst_addr().octets(), dst.octets());
        assert_eq!(&a[78..98], &inner, "the inner packet is untouched");
    }
}
