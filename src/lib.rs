//! dyntie: training GPT-2-style transformers with dynamic layer tying.
//!
//! The layers, bottom to top: `device` (raw memory and kernel launches),
//! `backend` (the op set: a CPU reference and one kernel implementation),
//! `autograd` (the tape), `model` (GPT-2 over slots), `tying` (tie table,
//! slot store, Q-agent, policies), `optim` (AdamW), `data`, `train`.

pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conformance;
pub mod data;
pub mod device;
pub mod doctor;
pub mod experiment;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod report;
pub mod rng;
pub mod train;
pub mod tying;
