//! The GPT-2 model: configuration, checkpoints, parameters on the GPU, forward and backward.

pub mod checkpoint;
pub mod config;

pub use checkpoint::Checkpoint;
pub use config::{GptConfig, Heads};
