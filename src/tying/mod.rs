//! Dynamic layer tying: tie table, slot store, Q-agent, static policies.
pub mod slots;
