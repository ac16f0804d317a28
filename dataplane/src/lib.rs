//! dsrgate's packet path.
//!
//! A frame's way through this crate: [`xsk`] receives it, [`pipeline`] turns it into a
//! verdict using [`wire`] views, the per-worker [`flow`] table and the [`maglev`] tables
//! held in an immutable [`snapshot`], and [`xsk`] transmits it. [`bpf`] holds the XDP
//! programs (steering on the gateway, decapsulation on nodes) and their loader.
//!
//! `wire`, `maglev`, `flow`, `snapshot` and `pipeline` are pure: no sockets, threads or clocks.

// Lets unit tests include the integration tests' helpers (`tests/common`), which name the
// crate `dataplane`.
#[cfg(test)]
extern crate self as dataplane;

pub mod bpf;
pub mod flow;
pub mod iface;
pub mod maglev;
pub mod pipeline;
pub mod snapshot;
pub mod wire;
pub mod xsk;
