//! The GPT-2 model: configuration, checkpoints, parameters on the GPU, forward and backward.

pub mod checkpoint;
pub mod config;
pub mod gpt;

pub use checkpoint::Checkpoint;
pub use config::{GptConfig, Heads};
pub use gpt::{Activations, Batch, Model, Params};
