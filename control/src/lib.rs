//! The dsrgate daemon's control plane: it wires the dataplane and the BGP speaker together.
pub mod config;
pub mod policy;
pub mod caps;
pub mod neigh;
pub mod health;
pub mod api;
pub mod status;
pub mod sources;
