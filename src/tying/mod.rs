//! Dynamic layer tying: tie table, slot store, Q-agent, static policies.

pub mod agent;
pub mod policy;
pub mod reward;
pub mod settings;
pub mod slots;
pub mod table;
