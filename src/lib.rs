//! dyntie: training GPT-2-style transformers with dynamic layer tying.
//!
//! The layers, bottom to top: `mem` (dtypes, views, buffers, memory), `ops`
//! (the op contracts, their validation and registry, and the `Backend`
//! trait), `cpu` (the reference backend) and `cuda` (devices, kernels,
//! launchers, launch limits), `autograd` (the tape), `tying` (tie table,
//! slot store, Q-agent, policies), `model` (GPT-2 over slots), `optim`
//! (AdamW), `data`, `config` (a run's configuration), `train`, and
//! `commands` (one per subcommand, with `cli` their flags).

pub mod autograd;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conformance;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod doctor;
pub mod experiment;
pub mod mem;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod precision;
pub mod report;
pub mod rng;
pub mod train;
pub mod tying;
