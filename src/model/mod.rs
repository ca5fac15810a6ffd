//! The language model over slots: the model configuration, the parameter layouts, the
//! activation plan, the memory accounting, the blocks, the loss head, the model itself and its
//! Hugging Face export.

pub mod accounting;
mod block;
pub mod config;
pub mod head;
pub mod hf;
pub mod layout;
pub mod lm;
pub mod plan;

pub use block::AttentionPath;
pub use config::{Arch, ModelConfig};
pub use layout::{BlockLayout, GlobalLayout, ParamEntry};
pub use lm::{GradReady, Model};
pub use plan::{activation_bytes, ActivationPlan};
