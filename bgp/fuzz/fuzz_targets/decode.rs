//! The BGP decoder on arbitrary bytes: framing a stream, then parsing each message in
//! both AS-number widths. It must return, never panic, and whatever it accepts must
//! encode again.
#![no_main]

use bgp::wire::{frame, Context, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, len))) = frame(rest) {
        let (msg, tail) = rest.split_at(len);
        for four_octet_as in [false, true] {
            let ctx = Context { four_octet_as };
            match Message::parse(msg, ctx) {
                Ok(m) => {
                    assert!(m.to_bytes(ctx).is_ok(), "{m:?}");
                }
                Err(e) => {
                    let _ = e.notification();
                }
            }
        }
        rest = tail;
    }
});
