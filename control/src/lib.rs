//! The dsrgate daemon's control plane: it wires the dataplane and the BGP speaker together.
