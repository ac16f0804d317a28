//! dsrgate's BGP-4 speaker (RFC 4271): it announces VIP host routes and never installs
//! what it learns. [`wire`] is the codec, [`fsm`] the sans-IO session state machine, and
//! [`speaker`] the mio loop that owns sockets and timers and drives one FSM per peer.

pub mod fsm;
pub mod speaker;
pub mod wire;
