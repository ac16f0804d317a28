//! The config parser on arbitrary text (seed it with dsrgate.example.toml):
//! it must return, never panic, and every error must name the file and at
//! least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = control::config::parse(text, Path::new("fuzz.toml")) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        assert!(!e.problems().is_empty());
    }
});
