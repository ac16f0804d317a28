//! A health check's HTTP response head, as a node (or anything listening on its port)
//! sends it: judging it must return, never panic, and a weight read from the
//! endpoint-weight header never exceeds what a configured backend may have.
#![no_main]

use control::config::MAX_WEIGHT;
use control::health::{evaluate_response, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, head) = data.split_first().unwrap_or((&0, &[]));
    let (weight_header, eof) = (flags & 1 != 0, flags & 2 != 0);
    match evaluate_response(head, weight_header, eof) {
        Some(Outcome::Pass { weight: Some(w) }) => {
            assert!(weight_header && w <= MAX_WEIGHT, "weight {w}")
        }
        None => assert!(!eof, "a complete read left undecided"),
        _ => {}
    }
});
