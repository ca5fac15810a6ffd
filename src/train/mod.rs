//! Training a run: the [`Trainer`] and the jobs it is made of.
//!
//! One optimizer step is `grad_accum` micro-batches of forward + backward,
//! then clipping and AdamW over the unique live slots. With the dynamic
//! policy, every `agent_k` steps the agent closes its previous decision
//! (reward, Q-update, a line in `ties.jsonl`) and makes the next one for the
//! next block (1, 2, ..., L-1, then a new episode), editing the tie table.
//!
//! - `trainer`: the Trainer, building it for a new run or a resume, the run loop
//! - `setup`: what a run configuration resolves to (seed streams, dataset,
//!   first tie table, learning-rate schedule)
//! - `step`: one optimizer step
//! - `agent_driver`: closing and making tie decisions, rewards
//! - `eval`: loss and perplexity on a split
//! - `checkpoint`: the kept checkpoint folders, saving, finding the newest
//!   good one, restoring
//! - `run_dir`: the run folder, its marker and lock, and its config.toml
//! - `memory`: the memory a run needs, checked before anything is allocated
//! - `interrupt`: SIGINT and SIGTERM stop a run after a step, with a checkpoint
//! - `log`: metrics.jsonl, the progress bar, report.svg
//! - `replicas`: data-parallel replicas in one process (threads), the
//!   gradient all-reduce and the tie decisions shared from rank 0

mod agent_driver;
mod checkpoint;
mod eval;
pub mod interrupt;
mod log;
pub mod memory;
mod replicas;
pub mod run_dir;
mod setup;
mod step;
mod trainer;

pub use checkpoint::{checkpoint_dirs, load_model, parse_state_text};
pub use eval::evaluate_split;
pub use interrupt::Interrupted;
pub use log::write_report;
pub use replicas::{check_split, FaultKind, Join, ReplicaFault, Replicas};
pub use setup::{initial_table, open_dataset, open_run_dataset, synthetic_config};
pub use trainer::{Summary, Trainer};
