//! The Robust Parameter Server algorithm: roles, blocks and the per-step exchange.
//!
//! [`Layout`] says which ranks are workers and servers and how the flat parameter
//! vector is cut into blocks; [`exchange::Exchange`] runs steps 2–5 of RPS (uplink,
//! server average, downlink, keep-own-block-on-loss) over any [`crate::comm::Transport`].

pub mod exchange;
pub mod layout;

pub use exchange::Exchange;
pub use layout::{Layout, LayoutError, Mode};
