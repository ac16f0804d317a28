//! The dsrgate daemon's control plane: it wires the dataplane and the BGP speaker together.
pub mod api;
pub mod caps;
pub mod config;
pub mod daemon;
pub mod health;
pub mod neigh;
pub mod policy;
pub mod publish;
pub mod sources;
pub mod status;
