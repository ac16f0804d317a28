//! Shared by the integration tests, the lab and the benchmarks: the network-namespace
//! topology builder (one definition, used everywhere) and test prerequisites.

pub mod netns;
