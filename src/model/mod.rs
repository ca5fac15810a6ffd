//! GPT-2 over slots: the model configuration, the parameter layouts, the
//! activation plan, the memory accounting, the model itself and its
//! Hugging Face export.

pub mod accounting;
pub mod config;
pub mod gpt2;
pub mod hf;
pub mod layout;
pub mod plan;

pub use config::ModelConfig;
pub use gpt2::Gpt2;
pub use layout::{BlockLayout, GlobalLayout, ParamEntry};
pub use plan::{activation_bytes, ActivationPlan};
