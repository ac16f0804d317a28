//! A forwarder with no balancing logic: rewrite the Ethernet addresses and send every frame on.
//! It is the AF_XDP I/O ceiling that `dsrgate-bench forward` compares the pipeline against,
//! and the processor the worker tests use.

use super::Processor;
use crate::pipeline::{DropReason, Frame, Verdict};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
